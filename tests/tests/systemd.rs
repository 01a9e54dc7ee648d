//! The package as deployed: the amd64 `.deb` installed with apt into a Debian root booted by a
//! real systemd (PID 1 of a `systemd-nspawn` container; `vitalgate_e2e::nspawn`), and
//! `vitalgate.service` run as shipped, unmodified, with all its hardening. What the service
//! may do is shown by what it does (readings reach the FHIR server, results reach the
//! broker) or by running a unit; the host's `nsenter` only sets things up and reads state.
//!
//! These tests need the `.deb` that `packaging/test-install` builds, root and
//! `systemd-nspawn`, so they are not part of the plain test run: `scripts/test` runs them
//! right after the package install test (`--run-ignored only`), and says so where nspawn
//! cannot run.

// The update tests use the rest of it.
#[allow(dead_code)]
#[path = "update_support/https.rs"]
mod https;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use https::{Fault, Server};
use vitalgate_e2e::broker::{Broker, IT_USER, Recorder};
use vitalgate_e2e::fhir::FhirServer;
use vitalgate_e2e::nspawn::{self, Container};
use vitalgate_e2e::{next_version, run, vitalgate_bin, vitalgate_cmd};

const RUNNING: &str = env!("CARGO_PKG_VERSION");
const GATEWAY: &str = "gw-ci";
const PATIENT: &str = "https://vitalgate.example/fhir/sid/demo-patient|ci-patient-1";
const MARKER: &str = "/run/systemd/timesync/synchronized";

/// The package `packaging/test-install` built (`VITALGATE_DEB` names another).
fn deb() -> PathBuf {
    let p = std::env::var_os("VITALGATE_DEB").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/debian/vitalgate_test_new.deb")
        },
        PathBuf::from,
    );
    assert!(
        p.exists(),
        "{} not found: packaging/test-install builds it (scripts/test runs it first)",
        p.display()
    );
    p
}

/// A gateway: a booted container with the package installed, the binaries of this build
/// that the tests feed it with (`/opt/ci/bin`), and the work directory on the host.
struct Gateway {
    c: Container,
    tmp: tempfile::TempDir,
}

impl Gateway {
    /// Takes systemd-timedated away: on a machine whose kernel clock is synchronised it
    /// would say so, and the service would never see an unsynchronised clock. The marker is
    /// then the only evidence, as the test sets it.
    fn without_timedated(&self) {
        self.c.ok("systemctl mask --now systemd-timedated.service");
    }

    fn install(name: &str) -> Self {
        if let Some(why) = nspawn::unavailable() {
            panic!("systemd-nspawn cannot run here ({why}); scripts/test skips these tests then");
        }
        let root = nspawn::rootfs();
        let tmp = tempfile::tempdir().expect("tempdir");
        let deb = deb();
        let bins = vitalgate_bin()
            .parent()
            .expect("target/<profile>")
            .to_owned();
        let c = Container::boot(
            &root,
            name,
            &[
                (deb.parent().expect("deb directory"), "/opt/ci/deb"),
                (&bins, "/opt/ci/bin"),
            ],
            &tmp.path().join("nspawn.log"),
        );
        let file = deb
            .file_name()
            .expect("deb name")
            .to_string_lossy()
            .into_owned();
        // As an installer would: apt, with the package's dependencies and recommends.
        c.ok(&format!(
            "cp /opt/ci/deb/{file} /root/vitalgate.deb && \
             DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/vitalgate.deb"
        ));
        Self { c, tmp }
    }

    fn host(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Replaces the configuration (root-owned, as `vitalgate provision` leaves it).
    fn configure(&self, toml: &str) {
        self.c.write(
            "/etc/vitalgate/vitalgate.toml",
            &format!("[gateway]\nid = \"{GATEWAY}\"\n\n{toml}"),
            "0644",
            "root:root",
        );
    }

    fn restart(&self) {
        self.c.ok("systemctl restart vitalgate.service");
        assert_eq!(self.c.prop("vitalgate.service", "ActiveState"), "active");
    }

    /// `vitalgate status --json` on the gateway's store.
    fn status(&self) -> serde_json::Value {
        let out = self
            .c
            .ok("vitalgate status --json --state-dir /var/lib/vitalgate");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status: {e}: {out}"))
    }

    fn main_pid(&self) -> String {
        self.c.prop("vitalgate.service", "MainPID")
    }

    fn journal(&self) -> String {
        self.c.journal("vitalgate.service")
    }

    /// Readings with no device time, as a live oximeter's would arrive, put in the store by
    /// a unit running as the service user with the key as its credential.
    fn add_live_readings(&self, n: u32) {
        let out = self.c.ok(&format!(
            "systemd-run --wait --pipe --quiet -p User=vitalgate -p Group=vitalgate \
             -p LoadCredential=key:/etc/vitalgate/db.key \
             sh -c 'exec /opt/ci/bin/live-readings --db /var/lib/vitalgate/vitalgate.db \
             --key-file \"$CREDENTIALS_DIRECTORY/key\" --destination hospital \
             --patient \"{PATIENT}\" --count {n}'"
        ));
        assert!(
            out.contains(&format!("COMMITTED {n} synchronised=false")),
            "{out}"
        );
    }
}

/// The shipped unit, hardened: `Type=notify` comes up, the process runs as `vitalgate` with no
/// capabilities and reads the key only through `LoadCredential=`, the exposure score stays
/// at most 2.5, `systemctl stop` commits and exits cleanly. The clock under
/// `ProtectClock=yes`: unsynchronised, readings whose only time is their reception are held
/// (and kept through a service restart, which is not a reboot), retention pauses, and
/// `status` says why; once systemd-timesyncd's marker appears the same readings reach the
/// FHIR server and retention runs again.
#[test]
#[ignore = "needs root, systemd-nspawn and the .deb: run by scripts/test after packaging/test-install"]
fn the_shipped_unit_holds_then_delivers_by_the_clock_it_can_see() {
    let gw = Gateway::install("vgci-clock");
    let server = FhirServer::start();
    gw.configure(&format!(
        "[store]\nretention_interval = \"1s\"\n\n\
         [[destination]]\nid = \"hospital\"\nbase_url = \"{}\"\nbatch_linger = \"100ms\"\n\
         retry_base = \"200ms\"\nretry_max = \"1s\"\n",
        server.base_url
    ));
    gw.without_timedated();
    gw.restart();
    let c = &gw.c;

    // Who runs, with what.
    let pid = gw.main_pid();
    let uid = c.ok("id -u vitalgate").trim().to_owned();
    let proc_status = c.ok(&format!("cat /proc/{pid}/status"));
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert!(field("Uid").iter().all(|u| *u == uid), "{proc_status}");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(caps), ["0000000000000000"], "{caps}: {proc_status}");
    }
    assert_eq!(field("NoNewPrivs"), ["1"]);
    // The key file is root's alone; the service got its copy from systemd.
    let read_as_service =
        c.sh("systemd-run --wait --pipe --quiet -p User=vitalgate cat /etc/vitalgate/db.key");
    assert!(
        !read_as_service.status.success(),
        "the service user can read the key file"
    );
    let environ = c.ok(&format!("tr '\\0' '\\n' < /proc/{pid}/environ"));
    assert!(
        environ.contains("CREDENTIALS_DIRECTORY=/run/credentials/vitalgate.service"),
        "{environ}"
    );
    // The exposure score of the live unit.
    let security = c.ok("systemd-analyze security --no-pager vitalgate.service");
    let score: f64 = security
        .lines()
        .find_map(|l| l.split("vitalgate.service:").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    assert!(score <= 2.5, "exposure {score}:\n{security}");

    // Unsynchronised, as the service sees it: the kernel's state is hidden from it
    // (ProtectClock=yes makes adjtimex EPERM) and no marker exists yet.
    c.ok(&format!("rm -f {MARKER}"));
    c.until("the clock reported", Duration::from_secs(30), |c| {
        c.journal("vitalgate.service")
            .contains("Wall clock not synchronised")
    });
    let st = gw.status();
    assert_eq!(st["clock"]["synchronized"], false, "{st:#}");
    let why = st["clock"]["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("ProtectClock") && why.contains(MARKER),
        "{why}"
    );
    c.until("retention paused", Duration::from_secs(30), |c| {
        c.journal("vitalgate.service").contains("Retention paused")
    });

    // systemctl stop: SIGTERM, a clean exit with everything committed.
    c.ok("systemctl stop vitalgate.service");
    assert_eq!(c.prop("vitalgate.service", "Result"), "success");
    assert_eq!(c.prop("vitalgate.service", "ExecMainStatus"), "0");
    assert!(gw.journal().contains("Vitalgate stopped"));

    gw.add_live_readings(3);
    c.ok("systemctl start vitalgate.service");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        server.observations_with_code("150456"),
        0,
        "sent with no time"
    );
    // A restart is not a reboot: the readings stay held, never quarantined.
    gw.restart();
    std::thread::sleep(Duration::from_secs(3));
    let st = gw.status();
    assert_eq!(st["readings"]["pending"], 3, "{st:#}");
    assert_eq!(st["readings"]["quarantined"], 0, "{st:#}");
    assert_eq!(server.observations_with_code("150456"), 0);

    // systemd-timesyncd synchronises the clock and leaves its marker.
    c.ok(&format!("mkdir -p /run/systemd/timesync && touch {MARKER}"));
    let until = Instant::now() + Duration::from_secs(60);
    while server.observations_with_code("150456") < 3 {
        assert!(
            Instant::now() < until,
            "not delivered once synchronised:\n{}",
            gw.journal()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(server.observations_with_code("150456"), 3);
    let st = gw.status();
    assert_eq!(st["readings"]["delivered"], 3, "{st:#}");
    assert_eq!(st["readings"]["quarantined"], 0, "{st:#}");
    assert_eq!(st["clock"]["synchronized"], true, "{st:#}");
    assert!(
        st["clock"]["why"]
            .as_str()
            .unwrap_or_default()
            .contains(MARKER),
        "{st:#}"
    );
    c.until("retention running", Duration::from_secs(30), |c| {
        c.journal("vitalgate.service")
            .contains("Retention running again")
    });
}

/// The watchdog and the start limit, by systemd itself: a stopped process (its store writer
/// answers no ping) is killed and restarted; five failed starts in the window stop the
/// restarts and run `OnFailure=`, whose rollback unit does nothing when no update is on trial.
#[test]
#[ignore = "needs root, systemd-nspawn and the .deb: run by scripts/test after packaging/test-install"]
fn the_watchdog_and_the_start_limit_are_systemds() {
    let gw = Gateway::install("vgci-watchdog");
    let c = &gw.c;
    gw.configure("");
    gw.restart();
    let pid = gw.main_pid();
    c.ok(&format!("kill -STOP {pid}"));
    c.until("the watchdog restart", Duration::from_secs(90), |c| {
        c.prop("vitalgate.service", "NRestarts") == "1"
            && c.prop("vitalgate.service", "ActiveState") == "active"
    });
    assert!(
        gw.journal().contains("Watchdog timeout"),
        "{}",
        gw.journal()
    );
    assert_ne!(gw.main_pid(), pid);

    // A configuration that cannot load: every start fails in ExecStartPre.
    c.write(
        "/etc/vitalgate/vitalgate.toml",
        "[gateway]\nid = \"not valid!\"\n",
        "0644",
        "root:root",
    );
    c.sh("systemctl restart vitalgate.service");
    c.until("the start limit", Duration::from_secs(120), |c| {
        c.journal("vitalgate.service")
            .contains("Start request repeated too quickly")
    });
    assert_eq!(c.prop("vitalgate.service", "ActiveState"), "failed");
    c.until("the rollback unit", Duration::from_secs(30), |c| {
        c.journal("vitalgate-rollback.service")
            .contains("no update on trial")
    });
    let rollback = c.journal("vitalgate-rollback.service");
    assert!(!rollback.contains("rolling back"), "{rollback}");
    assert!(
        c.sh("test -e /var/lib/vitalgate/install/current")
            .status
            .code()
            == Some(1),
        "the rollback unit changed the install directory"
    );
}

/// The software update of the fleet tests, under the real unit: the `update` command over
/// MQTT downloads, installs and flips to `vitalgate-next`; the agent exits 75 and systemd
/// starts the new version, which passes its health gate and commits. Then a new version that
/// cannot start: systemd restarts it until the start limit and `OnFailure=` rolls it back;
/// the previous version runs again and reports the failure. Telemetry says why the clock is
/// not synchronised.
#[test]
#[ignore = "needs root, systemd-nspawn and the .deb: run by scripts/test after packaging/test-install"]
fn an_update_under_the_real_unit_commits_and_a_crashing_one_is_rolled_back() {
    let gw = Gateway::install("vgci-update");
    let c = &gw.c;
    let broker_dir = gw.host("broker");
    let password = "ci-gateway-password";
    let broker = Broker::start(&broker_dir, &[(GATEWAY, password)], &[]);
    let it = Recorder::connect(broker.port, &broker.ca(), IT_USER, "vitalgate/#");
    let server = Server::start();
    let ca = server.write_ca(gw.tmp.path());
    c.put(
        &broker.ca(),
        "/etc/vitalgate/broker-ca.pem",
        "0644",
        "root:root",
    );
    c.put(&ca, "/etc/vitalgate/update-ca.pem", "0644", "root:root");
    // As `vitalgate provision` leaves them: the folder root's and the service's group's.
    c.ok("install -d -m 0750 -o root -g vitalgate /etc/vitalgate/credentials");
    c.write(
        "/etc/vitalgate/credentials/mqtt-password",
        &format!("{password}\n"),
        "0600",
        "vitalgate:vitalgate",
    );
    let out = run({
        let mut cmd = vitalgate_cmd();
        cmd.args(["update", "keygen", "--out"]).arg(gw.host("it"));
        cmd
    });
    out.expect_code(0);
    let public = std::fs::read_to_string(gw.host("it.pub")).expect("public key");
    gw.configure(&format!(
        "[fleet]\nbroker = \"{}\"\nca_file = \"/etc/vitalgate/broker-ca.pem\"\n\
         username = \"{GATEWAY}\"\npassword_file = \"/etc/vitalgate/credentials/mqtt-password\"\n\
         reconnect_min = \"200ms\"\nreconnect_max = \"1s\"\ntelemetry_interval = \"2s\"\n\n\
         [update]\ntrusted_keys = [\"{}\"]\nca_bundle = \"/etc/vitalgate/update-ca.pem\"\n\
         health_window = \"3s\"\nhealth_interval = \"500ms\"\nattempts = 10\n\
         download_timeout = \"30s\"\nspace_margin = \"1 MiB\"\n",
        broker.url(),
        public.trim()
    ));
    gw.without_timedated();
    gw.restart();
    let online = |version: &str| {
        let topic = format!("vitalgate/{GATEWAY}/state");
        let until = Instant::now() + Duration::from_secs(60);
        while !it.all().iter().any(|m| {
            m.topic == topic && m.json()["status"] == "online" && m.json()["version"] == version
        }) {
            assert!(
                Instant::now() < until,
                "the gateway did not come online with {version}:\n{}",
                gw.journal()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    online(RUNNING);
    // The service cannot read the kernel's clock state; telemetry says so.
    let telemetry = it.wait_for(
        &format!("vitalgate/{GATEWAY}/telemetry"),
        Duration::from_secs(30),
        |v| v["clock_synchronized"].is_boolean(),
    );
    assert_eq!(telemetry["clock_synchronized"], false, "{telemetry}");
    let why = telemetry["clock_why"].as_str().unwrap_or_default();
    assert!(why.contains("ProtectClock"), "{why}");
    // A manifest must expire, and an expiry means nothing on an unsynchronised clock: the
    // updates below wait for systemd-timesyncd's marker, as a gateway in the field does.
    c.ok(&format!("mkdir -p /run/systemd/timesync && touch {MARKER}"));
    it.wait_for(
        &format!("vitalgate/{GATEWAY}/telemetry"),
        Duration::from_secs(30),
        |v| v["clock_synchronized"] == true,
    );

    let manifest = |version: &str, artifact: &Path, name: &str| -> serde_json::Value {
        let url = server.put_file(name, artifact, Fault::None);
        let m = serde_json::json!({
            "format": 1,
            "version": version,
            "architectures": [vitalgate::update::manifest::debian_arch()],
            "urls": [url],
            "size": std::fs::metadata(artifact).expect("artifact").len(),
            "sha256": vitalgate::update::install::hash_file(artifact).expect("hash"),
            "expires": humantime::format_rfc3339_seconds(
                std::time::SystemTime::now() + Duration::from_secs(86400)
            ).to_string(),
        });
        let p = gw.host(&format!("manifest-{name}.json"));
        std::fs::write(&p, serde_json::to_vec_pretty(&m).expect("json")).expect("manifest");
        let out = run({
            let mut cmd = vitalgate_cmd();
            cmd.args(["update", "sign"])
                .arg(&p)
                .arg("--key")
                .arg(gw.host("it.key"));
            cmd
        });
        out.expect_code(0);
        serde_json::from_slice(&std::fs::read(&p).expect("signed")).expect("json")
    };
    let send = |id: &str, m: &serde_json::Value| {
        let expires = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + Duration::from_secs(900),
        );
        it.publish(
            &format!("vitalgate/{GATEWAY}/cmd/{id}"),
            &serde_json::json!({"type": "update", "expires_at": expires.to_string(), "manifest": m})
                .to_string(),
            false,
        );
    };
    let final_result = |id: &str| {
        it.wait_for(
            &format!("vitalgate/{GATEWAY}/cmd/{id}/result"),
            Duration::from_secs(180),
            |v| v["status"] == "succeeded" || v["status"] == "failed",
        )
    };

    // The good update.
    let next = next_version();
    let artifact = gw.host("vitalgate-next");
    let st = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&artifact)
        .arg(vitalgate_bin().with_file_name("vitalgate-next"))
        .status()
        .expect("strip");
    assert!(st.success());
    let restarts_before: u32 = c
        .prop("vitalgate.service", "NRestarts")
        .parse()
        .unwrap_or(0);
    send("up-ci-good", &manifest(&next, &artifact, "next"));
    let done = final_result("up-ci-good");
    assert_eq!(done["status"], "succeeded", "{done}\n{}", gw.journal());
    assert_eq!(done["reason"], format!("version {next} committed"));
    online(&next);
    // systemd restarted the service (exit 75), and the new version is what runs.
    let restarts: u32 = c
        .prop("vitalgate.service", "NRestarts")
        .parse()
        .unwrap_or(0);
    assert!(restarts > restarts_before, "NRestarts {restarts}");
    let exe = c.ok(&format!("readlink /proc/{}/exe", gw.main_pid()));
    assert_eq!(
        exe.trim(),
        format!("/var/lib/vitalgate/install/versions/{next}/vitalgate")
    );
    assert_eq!(
        c.ok("readlink /var/lib/vitalgate/install/current").trim(),
        format!("versions/{next}")
    );

    // A version that cannot even start: systemd gives up, OnFailure= rolls it back.
    let crasher = gw.host("crasher");
    std::fs::write(&crasher, "#!/bin/sh\nexit 70\n").expect("crasher");
    send("up-ci-crash", &manifest("9.0.0", &crasher, "crasher"));
    let done = final_result("up-ci-crash");
    assert_eq!(done["status"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("rolled back"), "{reason}");
    assert!(reason.contains("systemd gave up"), "{reason}");
    online(&next);
    let rollback = c.journal("vitalgate-rollback.service");
    assert!(rollback.contains("rolling back from 9.0.0"), "{rollback}");
    assert_eq!(
        c.ok("readlink /var/lib/vitalgate/install/current").trim(),
        format!("versions/{next}")
    );
    assert_eq!(c.prop("vitalgate.service", "ActiveState"), "active");
    // The rollback wrote as the service user, never as root.
    assert_eq!(
        c.ok("stat -c %U /var/lib/vitalgate/install/current").trim(),
        "vitalgate"
    );
}
