use super::*;

fn layout() -> (tempfile::TempDir, Layout) {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = Layout::new(dir.path());
    (dir, l)
}

#[test]
fn install_copies_checks_and_is_idempotent() {
    let (dir, l) = layout();
    let art = dir.path().join("artifact");
    std::fs::write(&art, b"#!/bin/sh\necho new\n").expect("artifact");
    let sha = hash_file(&art).expect("hash");
    l.install(&art, "0.2.0", &sha).expect("install");
    l.install(&art, "0.2.0", &sha).expect("again");
    let bin = l.binary("0.2.0");
    assert_eq!(std::fs::read(&bin).expect("read"), b"#!/bin/sh\necho new\n");
    let mode = std::fs::metadata(&bin).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    // A copy that does not match the verified hash is refused and not left behind.
    let e = l
        .install(&art, "0.3.0", &"0".repeat(64))
        .expect_err("mismatch");
    assert!(matches!(e, InstallError::CopyMismatch { .. }), "{e}");
    assert!(!l.binary("0.3.0").exists());
}

#[test]
fn flip_replaces_the_symlink_and_none_removes_it() {
    let (_dir, l) = layout();
    assert_eq!(l.current_target().expect("read"), None);
    l.flip(Some(Path::new("versions/0.1.0"))).expect("flip");
    assert_eq!(
        l.current_target().expect("read"),
        Some(PathBuf::from("versions/0.1.0"))
    );
    l.flip(Some(Path::new("versions/0.2.0")))
        .expect("flip again");
    assert_eq!(
        l.current_target().expect("read"),
        Some(PathBuf::from("versions/0.2.0"))
    );
    assert!(!l.dir.join(".current.tmp").exists());
    l.flip(None).expect("remove");
    l.flip(None).expect("remove twice");
    assert_eq!(l.current_target().expect("read"), None);
}

#[test]
fn marker_and_rollback_note_round_trip() {
    let (_dir, l) = layout();
    assert_eq!(l.read_marker().expect("read"), None);
    let m = Marker {
        operation: "op-1".into(),
        new_version: "0.2.0".into(),
        previous_version: "0.1.0".into(),
        previous_target: String::new(),
        attempts_left: 3,
    };
    l.write_marker(&m).expect("write");
    assert_eq!(l.read_marker().expect("read"), Some(m));
    l.remove_marker().expect("remove");
    l.remove_marker().expect("remove twice");
    assert_eq!(l.read_marker().expect("read"), None);

    l.write_rollback_note("op-1", "health gate failed:\nbroker down")
        .expect("note");
    assert_eq!(l.rollback_reason("op-2").expect("other op"), None);
    assert_eq!(
        l.rollback_reason("op-1").expect("this op").as_deref(),
        Some("health gate failed: broker down")
    );
}

#[test]
fn prune_keeps_only_the_named_versions() {
    let (dir, l) = layout();
    let art = dir.path().join("a");
    std::fs::write(&art, b"x").expect("artifact");
    let sha = hash_file(&art).expect("hash");
    for v in ["0.1.0", "0.2.0", "0.3.0"] {
        l.install(&art, v, &sha).expect("install");
    }
    l.prune(&["0.3.0", "0.2.0"]).expect("prune");
    assert!(!l.version_dir("0.1.0").exists());
    assert!(l.binary("0.2.0").exists() && l.binary("0.3.0").exists());
}
