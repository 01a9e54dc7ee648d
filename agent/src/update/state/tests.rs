use super::*;

fn op(state: State) -> Operation {
    Operation {
        id: "op-1".into(),
        command_id: "cmd-1".into(),
        manifest: "{}".into(),
        version: "0.2.0".into(),
        previous_version: "0.1.0".into(),
        previous_target: None,
        state,
        resumes: 0,
        reported: false,
        started_ms: 0,
        updated_ms: 0,
    }
}

fn seen(running: &str, note: Option<&str>) -> Observed {
    Observed {
        running: running.into(),
        rollback_reason: note.map(str::to_owned),
    }
}

#[test]
fn before_install_everything_restarts_from_verification() {
    for step in [
        Step::Verify,
        Step::DiskSpace,
        Step::Download,
        Step::VerifyArtifact,
    ] {
        assert_eq!(
            on_start(&op(State::Preparing { step }), &seen("0.1.0", None)),
            Resume::Prepare
        );
    }
    assert_eq!(
        on_start(&op(State::Installing), &seen("0.1.0", None)),
        Resume::Install
    );
}

#[test]
fn after_the_switch_the_running_version_decides() {
    for s in [State::Switching, State::Restarting, State::HealthGate] {
        assert_eq!(
            on_start(&op(s.clone()), &seen("0.2.0", None)),
            Resume::HealthGate,
            "{s:?}"
        );
        let Resume::End(State::RolledBack { reason, .. }) =
            on_start(&op(s.clone()), &seen("0.1.0", Some("crashed 3 times")))
        else {
            panic!("{s:?}: a rollback note ends the operation as rolled back");
        };
        assert_eq!(reason, "crashed 3 times");
    }
    // Killed between the marker and the restart: finish the switch.
    assert_eq!(
        on_start(&op(State::Switching), &seen("0.1.0", None)),
        Resume::Switch
    );
    // The previous version runs after the switch with no note: rolled back by someone.
    assert!(matches!(
        on_start(&op(State::Restarting), &seen("0.1.0", None)),
        Resume::End(State::RolledBack { .. })
    ));
    // A third version runs: failed, and says so.
    let Resume::End(State::Failed { reason, .. }) =
        on_start(&op(State::HealthGate), &seen("0.3.0", None))
    else {
        panic!("unexpected version");
    };
    assert!(reason.contains("0.3.0"), "{reason}");
}

#[test]
fn terminal_states_are_reported_once() {
    let mut o = op(State::Committed);
    assert_eq!(on_start(&o, &seen("0.2.0", None)), Resume::Report);
    o.reported = true;
    assert_eq!(on_start(&o, &seen("0.2.0", None)), Resume::Idle);
}

#[test]
fn transitions_only_move_forward() {
    let p = |step| State::Preparing { step };
    assert!(allowed(&p(Step::Verify), &p(Step::DiskSpace)));
    assert!(!allowed(&p(Step::Download), &p(Step::DiskSpace)));
    assert!(allowed(&p(Step::Download), &p(Step::Verify)));
    assert!(!allowed(&p(Step::Verify), &State::Switching));
    assert!(!allowed(&p(Step::Verify), &State::Committed));
    assert!(!allowed(&State::Committed, &p(Step::Verify)));
    assert!(!allowed(&State::Restarting, &State::Committed));
    assert!(allowed(&State::HealthGate, &State::Committed));
}

#[test]
fn operation_file_round_trips_atomically_and_rejects_illegal_moves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = OperationFile::new(dir.path());
    assert_eq!(f.load().expect("load"), None);
    let mut o = op(State::Preparing { step: Step::Verify });
    f.save(&o).expect("save");
    f.transition(
        &mut o,
        State::Preparing {
            step: Step::Download,
        },
        5,
    )
    .expect("forward");
    assert_eq!(f.load().expect("load"), Some(o.clone()));
    let e = f
        .transition(&mut o, State::Committed, 6)
        .expect_err("illegal");
    assert!(matches!(e, StateError::Illegal { .. }));
    // The illegal move changed neither memory nor disk.
    assert_eq!(
        o.state,
        State::Preparing {
            step: Step::Download
        }
    );
    assert_eq!(f.load().expect("load"), Some(o.clone()));
    // A leftover temporary file from a kill mid-write is ignored.
    std::fs::write(dir.path().join(".operation.json.tmp"), b"{trunc").expect("tmp");
    assert_eq!(f.load().expect("load"), Some(o));
    std::fs::write(f.path(), b"{trunc").expect("corrupt");
    assert!(matches!(f.load(), Err(StateError::Corrupt { .. })));
}

/// A model of the whole flow: the engine's persisted states in order, with what is on disk
/// (symlink flipped or not) at each. "Killing" the agent right after each persisted state
/// and starting whichever version the launcher then runs must always lead somewhere
/// consistent: before the flip the old version resumes the operation; after it, the new
/// version runs its health gate, or, if it keeps crashing, the launcher's note makes the old
/// version end the operation as rolled back. No kill point loses the operation or reports a
/// result that contradicts the running version.
#[test]
fn model_kill_at_every_step_ends_consistently() {
    // (persisted state, symlink flipped at that point)
    let timeline = [
        (State::Preparing { step: Step::Verify }, false),
        (
            State::Preparing {
                step: Step::DiskSpace,
            },
            false,
        ),
        (
            State::Preparing {
                step: Step::Download,
            },
            false,
        ),
        (
            State::Preparing {
                step: Step::VerifyArtifact,
            },
            false,
        ),
        (State::Installing, false),
        (State::Switching, false),
        (State::Switching, true),
        (State::Restarting, true),
        (State::HealthGate, true),
    ];
    for (state, flipped) in timeline {
        // Case 1: whatever the launcher starts is healthy.
        let running = if flipped { "0.2.0" } else { "0.1.0" };
        let o = op(state.clone());
        let action = on_start(&o, &seen(running, None));
        match (&state, flipped, &action) {
            (State::Preparing { .. }, false, Resume::Prepare)
            | (State::Installing, false, Resume::Install)
            | (State::Switching, false, Resume::Switch)
            | (_, true, Resume::HealthGate) => {}
            other => panic!("inconsistent resume {other:?}"),
        }
        // Case 2: after the flip the new version crashes until the launcher rolls back.
        if flipped {
            let action = on_start(&o, &seen("0.1.0", Some("new version failed to start")));
            let Resume::End(end) = action else {
                panic!("{state:?}: rollback not recorded");
            };
            assert!(matches!(end, State::RolledBack { .. }), "{end:?}");
            assert!(allowed(&state, &end), "{state:?} -> {end:?}");
        }
        // Every resume target is reachable from the persisted state by legal moves.
        if let Resume::End(end) = &action {
            assert!(allowed(&state, end), "{state:?} -> {end:?}");
        }
    }
}
