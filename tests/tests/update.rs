//! Signed software update, end to end: the real `vitalgate` (the running version) installs
//! `vitalgate-next` (the same agent built again under the next minor version), signed with a
//! key made by `vitalgate update keygen`, served over HTTPS on loopback by a rustls server
//! with a CA of its own.
//!
//! These tests cover the update engine's every step and failure quickly, so a test supervisor
//! stands in for systemd: it starts the service the way the unit does (`vitalgate-launch run
//! ...`, the very launcher the package installs), restarts it when it exits with a failure
//! (`Restart=on-failure`), and after too many failures runs `vitalgate-launch --rollback` and
//! starts it again (what `OnFailure=` and `vitalgate-rollback.service` do). The real unit under
//! a real systemd (its watchdog and start limit, `LoadCredential=`, the unprivileged service
//! user, an update and a rollback end to end) is `tests/systemd.rs`.
//!
//! The good update, the signature rejections and the health-gate rollback are driven the way
//! IT drives them: an `update` command published on `cmd/<id>` through a real mosquitto (TLS,
//! password, ACL; the fleet harness), with every result on `cmd/<id>/result` recorded and
//! asserted, including the final one published by the version that runs after the restart.
//! The remaining cases apply the manifest with `vitalgate update apply` while the service is
//! stopped (the clearest way to reach a given step, or to `kill -9` right after it); the
//! supervisor's restart then stands in for the command handler's own exit-and-restart.

#[path = "update_support/https.rs"]
mod https;

use std::fs::File;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use https::{Fault, Server};
use vitalgate_e2e::broker::{Broker, IT_USER, Recorder};
use vitalgate_e2e::{
    Finished, next_version, run, sigterm, vitalgate_bin, vitalgate_cmd, wait_deadline,
};

const RUNNING: &str = env!("CARGO_PKG_VERSION");

fn launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../systemd/vitalgate-launch")
}

/// The new version's artifact: `vitalgate-next`, stripped of debug info so downloads and
/// hashes stay quick. Stripping changes no code.
fn next_artifact(dir: &Path) -> PathBuf {
    let src = vitalgate_bin().with_file_name("vitalgate-next");
    assert!(
        src.exists(),
        "{} not found: run `cargo build --workspace --bins` first",
        src.display()
    );
    let out = dir.join("vitalgate-next");
    let st = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("strip (binutils) is installed");
    assert!(st.success(), "strip failed");
    out
}

struct Rig {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    server: Server,
    config: PathBuf,
    state: PathBuf,
    install: PathBuf,
    download: PathBuf,
    signing_key: PathBuf,
    log: PathBuf,
}

impl Rig {
    fn new(extra_toml: &str) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        let server = Server::start();
        let ca = server.write_ca(&root);
        let key_file = vitalgate_e2e::new_key(&root);
        let out = run({
            let mut c = vitalgate_cmd();
            c.args(["update", "keygen", "--out"]).arg(root.join("it"));
            c
        });
        out.expect_code(0);
        let public = std::fs::read_to_string(root.join("it.pub")).expect("public key");
        let install = root.join("install");
        let download = root.join("update");
        let config = vitalgate_e2e::write_config(
            &root,
            &key_file,
            &format!(
                "\n[update]\ntrusted_keys = [\"{}\"]\ninstall_dir = \"{}\"\ndownload_dir = \"{}\"\n\
                 health_window = \"2s\"\nhealth_interval = \"500ms\"\nattempts = 2\n\
                 download_retries = 2\ndownload_timeout = \"10s\"\nspace_margin = \"1 MiB\"\n\
                 ca_bundle = \"{}\"\n{extra_toml}",
                public.trim(),
                install.display(),
                download.display(),
                ca.display()
            ),
        );
        Self {
            state: root.join("state"),
            signing_key: root.join("it.key"),
            log: root.join("service.log"),
            _tmp: tmp,
            root,
            server,
            config,
            install,
            download,
        }
    }

    /// A manifest for `artifact` served at `url`, changed by `tweak`, signed with `key`
    /// through `vitalgate update sign`.
    fn manifest(
        &self,
        version: &str,
        url: &str,
        artifact: &Path,
        key: &Path,
        tweak: impl FnOnce(&mut serde_json::Value),
    ) -> PathBuf {
        let mut m = serde_json::json!({
            "format": 1,
            "version": version,
            "architectures": [vitalgate::update::manifest::debian_arch()],
            "urls": [url],
            "size": std::fs::metadata(artifact).expect("artifact").len(),
            "sha256": vitalgate::update::install::hash_file(artifact).expect("hash"),
            "expires": expires_in(Duration::from_secs(86400)),
        });
        tweak(&mut m);
        let p = self
            .root
            .join(format!("manifest-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&p, serde_json::to_vec_pretty(&m).expect("json")).expect("write manifest");
        let out = run({
            let mut c = vitalgate_cmd();
            c.args(["update", "sign"]).arg(&p).arg("--key").arg(key);
            c
        });
        out.expect_code(0);
        p
    }

    fn apply_cmd(&self, manifest: &Path) -> Command {
        let mut c = vitalgate_cmd();
        c.arg("--config")
            .arg(&self.config)
            .args(["update", "apply"])
            .arg(manifest);
        c
    }

    fn apply(&self, manifest: &Path) -> Finished {
        run(self.apply_cmd(manifest))
    }

    fn status(&self) -> serde_json::Value {
        let mut c = vitalgate_cmd();
        c.arg("--config")
            .arg(&self.config)
            .args(["update", "status", "--json"]);
        let out = run(c);
        out.expect_code(0);
        serde_json::from_str(&out.stdout).expect("status JSON")
    }

    fn op_state(&self) -> String {
        self.status()["operation"]["state"]["state"]
            .as_str()
            .unwrap_or("none")
            .to_owned()
    }

    /// Nothing was installed or switched: no version directory, no symlink, no marker.
    fn assert_nothing_installed(&self) {
        let versions = self.install.join("versions");
        let entries: Vec<_> = std::fs::read_dir(&versions)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(entries.is_empty(), "installed: {entries:?}");
        assert!(
            std::fs::symlink_metadata(self.install.join("current")).is_err(),
            "current exists"
        );
        assert!(
            !self.install.join("pending-update").exists(),
            "marker exists"
        );
    }

    fn current(&self) -> Option<PathBuf> {
        std::fs::read_link(self.install.join("current")).ok()
    }

    fn service_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

const WAIT: Duration = Duration::from_secs(15);
/// The gateway id `write_config` sets, and its broker login.
const GW: (&str, &str) = ("test-gw", "test-gw-pw");
const FAST_RECONNECT: &str = "reconnect_min = \"200ms\"\nreconnect_max = \"1s\"\nkeepalive = \"5s\"\nconnect_timeout = \"2s\"\n";

/// IT's side: a real mosquitto (the fleet tests' harness) and a client recording everything
/// under `vitalgate/`.
struct Fleet {
    _tmp: tempfile::TempDir,
    broker: Broker,
    it: Recorder,
}

impl Fleet {
    fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let broker = Broker::start(&tmp.path().join("broker"), &[GW], &[]);
        let it = Recorder::connect(broker.port, &broker.ca(), IT_USER, "vitalgate/#");
        Self {
            _tmp: tmp,
            broker,
            it,
        }
    }

    /// The gateway's `[fleet]` section.
    fn toml(&self) -> String {
        format!("\n{}", self.broker.fleet_toml(GW.0, GW.1, FAST_RECONNECT))
    }

    fn command_topic(&self, id: &str) -> String {
        format!("vitalgate/{}/cmd/{id}", GW.0)
    }

    fn result_topic(&self, id: &str) -> String {
        format!("vitalgate/{}/cmd/{id}/result", GW.0)
    }

    /// Runs the service until it reports itself online with `version`.
    fn wait_online(&self, sd: &mut TestSystemd<'_>, version: &str) {
        let topic = format!("vitalgate/{}/state", GW.0);
        sd.until("the gateway online", WAIT, || {
            self.it.all().iter().any(|m| {
                m.topic == topic && m.json()["status"] == "online" && m.json()["version"] == version
            })
        });
    }

    /// Publishes the `update` command `id` carrying the signed manifest in `manifest`.
    fn send_update(&self, id: &str, manifest: &Path) {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(manifest).expect("manifest")).expect("json");
        let expires = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + Duration::from_secs(600),
        );
        let body =
            serde_json::json!({"type": "update", "expires_at": expires.to_string(), "manifest": m});
        self.it
            .publish(&self.command_topic(id), &body.to_string(), false);
    }

    /// Every result published for command `id`, in order.
    fn results(&self, id: &str) -> Vec<serde_json::Value> {
        let t = self.result_topic(id);
        self.it
            .all()
            .iter()
            .filter(|m| m.topic == t)
            .map(|m| m.json())
            .collect()
    }

    /// (status, step) of every result of command `id`.
    fn steps(&self, id: &str) -> Vec<(String, String)> {
        self.results(id)
            .iter()
            .map(|v| {
                (
                    v["status"].as_str().unwrap_or("?").to_owned(),
                    v["step"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// Runs the service (restarting it like systemd) until command `id` has a final result.
    fn until_final(&self, sd: &mut TestSystemd<'_>, id: &str) {
        sd.until("a final command result", Duration::from_secs(60), || {
            self.results(id)
                .last()
                .is_some_and(|v| v["status"] == "succeeded" || v["status"] == "failed")
        });
    }
}

/// Stands in for systemd: runs the unit's ExecStart through the real launcher, restarts on
/// failure, and runs the OnFailure= rollback when the start limit is hit.
struct TestSystemd<'a> {
    rig: &'a Rig,
    child: Option<Child>,
    /// Failed exits before the "start limit" is hit.
    burst: u32,
    failures: u32,
    pub starts: u32,
    env: Vec<(String, String)>,
}

impl<'a> TestSystemd<'a> {
    fn new(rig: &'a Rig) -> Self {
        Self {
            rig,
            child: None,
            burst: 5,
            failures: 0,
            starts: 0,
            env: Vec::new(),
        }
    }

    fn start(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.rig.log)
            .expect("log");
        let mut c = Command::new("sh");
        c.arg(launcher())
            .arg("run")
            .arg("--config")
            .arg(&self.rig.config)
            .arg("--state-dir")
            .arg(&self.rig.state)
            .env("VITALGATE_INSTALL_DIR", &self.rig.install)
            .env("VITALGATE_FALLBACK_BIN", vitalgate_bin())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        self.child = Some(c.spawn().expect("start the launcher"));
        self.starts += 1;
    }

    /// Runs the service until `done` holds, restarting it like systemd would.
    fn until(&mut self, what: &str, timeout: Duration, done: impl Fn() -> bool) {
        let end = Instant::now() + timeout;
        loop {
            if done() {
                return;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; service log:\n{}",
                self.rig.service_log()
            );
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait().expect("wait")
            {
                self.child = None;
                if !status.success() {
                    self.failures += 1;
                    if self.failures >= self.burst {
                        // Start limit hit: OnFailure=vitalgate-rollback.service.
                        let st = Command::new("sh")
                            .arg(launcher())
                            .arg("--rollback")
                            .env("VITALGATE_INSTALL_DIR", &self.rig.install)
                            .status()
                            .expect("rollback helper");
                        assert!(st.success(), "rollback helper failed");
                        self.failures = 0;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    self.start();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take()
            && child.try_wait().expect("wait").is_none()
        {
            sigterm(&child);
            let st = wait_deadline(&mut child, Duration::from_secs(30));
            assert!(st.is_some(), "service did not stop on SIGTERM");
        }
    }
}

impl Drop for TestSystemd<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The version named by each "Vitalgate starting." line of the service log, in order.
fn versions_started(rig: &Rig) -> Vec<String> {
    rig.service_log()
        .lines()
        .filter(|l| l.contains("Vitalgate starting."))
        .filter_map(|l| l.split("version=").nth(1))
        .map(|v| {
            v.split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches('"')
                .to_owned()
        })
        .collect()
}

fn running_version_of_service(rig: &Rig) -> Option<String> {
    // The last "Vitalgate starting." line names the version that runs.
    versions_started(rig).pop()
}

/// Applies `manifest` with the service stopped, then lets the test systemd start it until
/// the operation is terminal.
fn apply_and_restart(rig: &Rig, manifest: &Path, sd: &mut TestSystemd<'_>) {
    let out = rig.apply(manifest);
    out.expect_code(0);
    assert!(out.stdout.contains("restart"), "{}", out.stdout);
    sd.start();
    sd.until("a terminal update state", Duration::from_secs(60), || {
        matches!(
            rig.op_state().as_str(),
            "committed" | "rolled_back" | "failed"
        )
    });
}

#[test]
fn good_update_over_mqtt_commits_and_keeps_the_previous_version() {
    let fleet = Fleet::start();
    let rig = Rig::new(&fleet.toml());
    let art = next_artifact(&rig.root);
    let url = rig.server.put_file("next", &art, Fault::None);
    let next = next_version();
    let m = rig.manifest(&next, &url, &art, &rig.signing_key, |_| {});
    let mut sd = TestSystemd::new(&rig);
    sd.start();
    fleet.wait_online(&mut sd, RUNNING);
    let key_before = std::fs::read(rig.root.join("db.key")).expect("key");

    fleet.send_update("up-good", &m);
    fleet.until_final(&mut sd, "up-good");
    assert_eq!(
        fleet.steps("up-good"),
        [
            ("accepted", ""),
            ("running", ""),
            ("running", "verify"),
            ("running", "disk_space"),
            ("running", "download"),
            ("running", "verify_artifact"),
            ("running", "install"),
            ("running", "restart"),
            ("running", "health_gate"),
            ("succeeded", "commit"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned())),
        "{:#?}",
        fleet.results("up-good")
    );
    let last = fleet.results("up-good").pop().expect("final");
    assert_eq!(last["detail"]["version"], next.as_str());
    assert_eq!(last["reason"], format!("version {next} committed"));
    // The final result is retained: a client subscribing now gets it.
    let late = Recorder::connect(
        fleet.broker.port,
        &fleet.broker.ca(),
        IT_USER,
        &fleet.result_topic("up-good"),
    );
    let retained = late.wait_for(&fleet.result_topic("up-good"), WAIT, |_| true);
    assert_eq!(retained["status"], "succeeded");

    let st = rig.status();
    assert_eq!(st["operation"]["state"]["state"], "committed", "{st:#}");
    assert_eq!(st["operation"]["command_id"], "up-good");
    assert_eq!(
        rig.current(),
        Some(PathBuf::from(format!("versions/{next}")))
    );
    assert!(st["pending"].is_null(), "marker left behind: {st:#}");
    // The new version is the one running, and it stays up after the commit.
    assert_eq!(
        running_version_of_service(&rig).as_deref(),
        Some(next.as_str())
    );
    assert!(
        sd.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("wait").is_none())
    );
    // The store and the key were not touched by the update.
    assert_eq!(
        std::fs::read(rig.root.join("db.key")).expect("key"),
        key_before
    );
    assert!(rig.state.join("vitalgate.db").exists());

    // The same command id again: refused as a replay, nothing runs again.
    let operation = st["operation"]["id"].clone();
    fleet.send_update("up-good", &m);
    let replay = fleet
        .it
        .wait_for(&fleet.result_topic("up-good"), WAIT, |v| {
            v["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("replayed"))
        });
    assert_eq!(replay["status"], "failed");
    assert_eq!(rig.status()["operation"]["id"], operation);
    sd.stop();
    // Restarting the committed version does not start anything again.
    sd.start();
    sd.until("the new version again", Duration::from_secs(30), || {
        rig.service_log().matches("Vitalgate starting.").count() >= 3
    });
    assert_eq!(rig.op_state(), "committed");
    sd.stop();
}

#[test]
fn bad_signatures_over_mqtt_are_rejected_before_download() {
    let fleet = Fleet::start();
    let rig = Rig::new(&fleet.toml());
    let art = next_artifact(&rig.root);
    let url = rig.server.put_file("next", &art, Fault::None);
    let mut sd = TestSystemd::new(&rig);
    sd.start();
    fleet.wait_online(&mut sd, RUNNING);
    // Signed by a key the gateway does not trust.
    run({
        let mut c = vitalgate_cmd();
        c.args(["update", "keygen", "--out"])
            .arg(rig.root.join("other"));
        c
    })
    .expect_code(0);
    let untrusted = rig.manifest(
        &next_version(),
        &url,
        &art,
        &rig.root.join("other.key"),
        |_| {},
    );
    // Signed by the trusted key, then altered (a different artifact URL).
    let tampered = rig.manifest(&next_version(), &url, &art, &rig.signing_key, |_| {});
    let text = std::fs::read_to_string(&tampered).expect("manifest");
    std::fs::write(&tampered, text.replace("/next", "/evil")).expect("tamper");
    // Unsigned.
    let unsigned = rig.root.join("unsigned.json");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v.as_object_mut().expect("obj").remove("signatures");
    std::fs::write(&unsigned, v.to_string()).expect("unsigned");

    for (id, m, words) in [
        ("up-untrusted", &untrusted, "untrusted"),
        ("up-tampered", &tampered, "does not verify"),
        ("up-unsigned", &unsigned, "no signature"),
    ] {
        fleet.send_update(id, m);
        fleet.until_final(&mut sd, id);
        assert_eq!(
            fleet.steps(id),
            [
                ("accepted", ""),
                ("running", ""),
                ("running", "verify"),
                ("failed", "verify"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned())),
            "{:#?}",
            fleet.results(id)
        );
        let last = fleet.results(id).pop().expect("final");
        let reason = last["reason"].as_str().unwrap_or("");
        assert!(reason.contains(words), "{id}: {reason}");
        let st = rig.status();
        assert_eq!(st["operation"]["command_id"], id, "{st:#}");
        assert_eq!(st["operation"]["state"]["state"], "failed", "{st:#}");
        rig.assert_nothing_installed();
    }
    assert!(rig.server.requests().is_empty(), "downloaded anyway");
    // An expired command is refused before anything runs.
    let before = rig.status()["operation"]["id"].clone();
    let body = serde_json::json!({
        "type": "update",
        "expires_at": "2020-01-01T00:00:00Z",
        "manifest": serde_json::from_slice::<serde_json::Value>(&std::fs::read(&untrusted).expect("m")).expect("json"),
    });
    fleet
        .it
        .publish(&fleet.command_topic("up-expired"), &body.to_string(), false);
    fleet.until_final(&mut sd, "up-expired");
    let last = fleet.results("up-expired").pop().expect("final");
    assert_eq!(last["status"], "failed");
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("expired")),
        "{last}"
    );
    assert_eq!(rig.status()["operation"]["id"], before);
    // The agent never restarted.
    assert_eq!(sd.starts, 1);
    sd.stop();
}

/// A refused update: `apply` fails at `step` with `words` in the reason and installs nothing.
/// An RFC 3339 time `after` from now.
fn expires_in(after: Duration) -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now() + after).to_string()
}

/// A key pair made by `vitalgate update keygen`: (private key file, public key text).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let out = run({
        let mut c = vitalgate_cmd();
        c.args(["update", "keygen", "--out"]).arg(dir.join(name));
        c
    });
    out.expect_code(0);
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).expect("public key");
    (dir.join(format!("{name}.key")), public.trim().to_owned())
}

/// Requirement (fleet trust, updates): a manifest without `expires` could be replayed
/// forever and is refused; the persisted anti-rollback floor (the highest version committed)
/// refuses an old manifest even where the running version is below it; an update trust
/// document signed by a root key revokes a leaked signing key, trusts its successor and sets a
/// minimum version that not even a signed downgrade passes; an older trust document, or one
/// signed by an update key, is refused.
#[test]
fn replays_old_versions_and_revoked_keys_are_refused() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (root_key, root_pub) = keygen(keys.path(), "root");
    let rig = Rig::new(&format!("root_keys = [\"{root_pub}\"]\n"));
    let art = next_artifact(&rig.root);
    // A mirror that breaks the download: a manifest that gets that far passed verification,
    // and nothing is installed.
    let url = rig.server.put_file("next", &art, Fault::Truncate(10));
    let next = next_version();

    let m = rig.manifest(&next, &url, &art, &rig.signing_key, |v| {
        v.as_object_mut().expect("object").remove("expires");
    });
    assert_refused(&rig, &m, "verify", "no `expires`");
    let m = rig.manifest(&next, &url, &art, &rig.signing_key, |v| {
        v["expires"] = expires_in(Duration::from_secs(90 * 86400)).into();
    });
    assert_refused(&rig, &m, "verify", "expires more than");

    // The floor survives in the download directory; an older manifest stays refused.
    let floor = rig.download.join("floor");
    assert_eq!(
        std::fs::read_to_string(&floor).expect("floor").trim(),
        RUNNING,
        "the running version is committed"
    );
    std::fs::write(&floor, "99.0.0\n").expect("floor");
    let m = rig.manifest(&next, &url, &art, &rig.signing_key, |_| {});
    assert_refused(&rig, &m, "verify", "anti-rollback floor");
    std::fs::write(&floor, format!("{RUNNING}\n")).expect("floor");

    // The signing key leaked: the root key retires it and trusts a new one.
    let leaked = vitalgate::signed::PublicKey::from_base64(
        &std::fs::read_to_string(rig.root.join("it.pub")).expect("it.pub"),
    )
    .expect("key");
    let (new_key, new_pub) = keygen(keys.path(), "next-signer");
    let trust_doc = |sequence: u64, signer: &Path| -> PathBuf {
        let p = keys.path().join(format!("trust-{sequence}.json"));
        let doc = serde_json::json!({"format": 1, "type": "update-trust", "sequence": sequence,
            "update_keys": [new_pub], "revoked": [leaked.id()], "min_version": RUNNING});
        std::fs::write(&p, doc.to_string()).expect("trust doc");
        run({
            let mut c = vitalgate_cmd();
            c.args(["update", "sign"]).arg(&p).arg("--key").arg(signer);
            c
        })
        .expect_code(0);
        p
    };
    let apply_trust = |p: &Path| {
        run({
            let mut c = vitalgate_cmd();
            c.arg("--config")
                .arg(&rig.config)
                .args(["update", "trust"])
                .arg(p);
            c
        })
    };
    let out = apply_trust(&trust_doc(1, &new_key));
    out.expect_code(65);
    assert!(
        out.stderr.contains("not signed by a root key"),
        "{}",
        out.stderr
    );
    let first = trust_doc(2, &root_key);
    apply_trust(&first).expect_code(0);
    let out = apply_trust(&first);
    out.expect_code(65);
    assert!(out.stderr.contains("not above"), "{}", out.stderr);

    let m = rig.manifest(&next, &url, &art, &rig.signing_key, |_| {});
    assert_refused(&rig, &m, "verify", "untrusted");
    assert!(
        rig.server.requests().is_empty(),
        "no refused manifest reached the mirror"
    );
    let m = rig.manifest(&next, &url, &art, &new_key, |_| {});
    assert_refused(&rig, &m, "download", "of");
    let fetched = rig.server.requests().len();
    assert!(fetched > 0);
    let m = rig.manifest("0.0.1", &url, &art, &new_key, |v| {
        v["allow_downgrade"] = true.into();
    });
    assert_refused(&rig, &m, "verify", "minimum version");
    assert_eq!(rig.server.requests().len(), fetched);
}

fn assert_refused(rig: &Rig, m: &Path, step: &str, words: &str) {
    let out = rig.apply(m);
    out.expect_code(65);
    assert!(
        out.stdout.contains(&format!("{step}: failed")) && out.stdout.contains(words),
        "expected {step} to fail with {words:?}:\n{}",
        out.stdout
    );
    let st = rig.status();
    assert_eq!(st["operation"]["state"]["state"], "failed", "{st:#}");
    assert_eq!(st["operation"]["state"]["step"], step, "{st:#}");
    rig.assert_nothing_installed();
}

#[test]
fn wrong_hash_is_rejected_before_install() {
    let rig = Rig::new("");
    let art = next_artifact(&rig.root);
    let url = rig.server.put_file("next", &art, Fault::WrongBytes);
    let m = rig.manifest(&next_version(), &url, &art, &rig.signing_key, |_| {});
    assert_refused(&rig, &m, "verify_artifact", "SHA-256");
    assert!(
        !rig.download
            .join(format!("{}.part", next_version()))
            .exists()
    );
}

#[test]
fn truncated_download_is_rejected_before_install() {
    let rig = Rig::new("");
    let art = next_artifact(&rig.root);
    let url = rig.server.put_file("next", &art, Fault::Truncate(100_000));
    let m = rig.manifest(&next_version(), &url, &art, &rig.signing_key, |_| {});
    assert_refused(&rig, &m, "download", "100000 of");
}

#[test]
fn wrong_architecture_is_rejected_before_download() {
    let rig = Rig::new("");
    let art = next_artifact(&rig.root);
    let url = rig.server.put_file("next", &art, Fault::None);
    let other = if vitalgate::update::manifest::debian_arch() == "armhf" {
        "arm64"
    } else {
        "armhf"
    };
    let m = rig.manifest(&next_version(), &url, &art, &rig.signing_key, |v| {
        v["architectures"] = serde_json::json!([other]);
    });
    assert_refused(&rig, &m, "verify", "artifact is for");
    assert!(rig.server.requests().is_empty());
}

#[test]
fn downgrade_is_refused_unless_allowed() {
    let rig = Rig::new("");
    let art = next_artifact(&rig.root);
    let url = rig.server.put_file("old", &art, Fault::Truncate(10));
    let m = rig.manifest("0.0.1", &url, &art, &rig.signing_key, |_| {});
    assert_refused(&rig, &m, "verify", "does not allow a downgrade");
    assert!(rig.server.requests().is_empty());
    // With the flag, verification passes (and this broken mirror fails the download).
    let m = rig.manifest("0.0.1", &url, &art, &rig.signing_key, |v| {
        v["allow_downgrade"] = serde_json::json!(true);
    });
    assert_refused(&rig, &m, "download", "of");
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let rig = Rig::new("");
    let art = next_artifact(&rig.root);
    let url = rig
        .server
        .put_file("next", &art, Fault::DropOnceAfter(1 << 20));
    let next = next_version();
    let m = rig.manifest(&next, &url, &art, &rig.signing_key, |_| {});
    let out = rig.apply(&m);
    out.expect_code(0);
    let reqs = rig.server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range, None);
    let from: u64 = reqs[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("second request is not a resume: {reqs:?}"));
    assert!(from > 0 && from <= 1 << 20, "resumed from {from}");
    assert_eq!(
        vitalgate::update::install::hash_file(
            &rig.install.join("versions").join(&next).join("vitalgate")
        )
        .expect("installed"),
        vitalgate::update::install::hash_file(&art).expect("artifact")
    );
    assert_eq!(rig.op_state(), "restarting");
}

#[test]
fn new_version_failing_its_health_gate_is_rolled_back_and_reports_it_over_mqtt() {
    // The broker goes away as soon as the old version reports the restart: the new version
    // cannot reach it, so its health gate fails and it rolls back. The previous version
    // then reports the outcome once the broker is back.
    let mut fleet = Fleet::start();
    let rig = Rig::new(&fleet.toml());
    let art = next_artifact(&rig.root);
    let url = rig.server.put_file("next", &art, Fault::None);
    let next = next_version();
    let m = rig.manifest(&next, &url, &art, &rig.signing_key, |_| {});
    let mut sd = TestSystemd::new(&rig);
    sd.start();
    fleet.wait_online(&mut sd, RUNNING);
    fleet.send_update("up-gate", &m);
    sd.until("the restart report", Duration::from_secs(60), || {
        fleet
            .steps("up-gate")
            .last()
            .is_some_and(|(_, step)| step == "restart")
    });
    fleet.broker.stop();
    sd.until("the rollback", Duration::from_secs(60), || {
        rig.op_state() == "rolled_back"
            && running_version_of_service(&rig).as_deref() == Some(RUNNING)
    });
    assert!(
        versions_started(&rig).contains(&next),
        "the new version never ran: {:?}",
        versions_started(&rig)
    );
    let st = rig.status();
    assert_eq!(st["operation"]["state"]["step"], "health_gate", "{st:#}");
    assert_eq!(
        rig.current(),
        None,
        "current still points at the new version"
    );
    assert!(st["pending"].is_null());
    let seen_before = fleet.results("up-gate").len();

    fleet.broker.restart();
    fleet.until_final(&mut sd, "up-gate");
    let results = fleet.results("up-gate");
    let last = results.last().expect("final");
    assert_eq!(last["status"], "failed", "{results:#?}");
    assert_eq!(last["step"], "health_gate");
    let reason = last["reason"].as_str().unwrap_or("");
    assert!(
        reason.starts_with(&format!("rolled back to {RUNNING}: health gate failed"))
            && reason.contains("broker"),
        "{reason}"
    );
    // Before the broker went away: every step up to the restart, in order.
    assert_eq!(
        fleet.steps("up-gate")[..seen_before],
        [
            ("accepted", ""),
            ("running", ""),
            ("running", "verify"),
            ("running", "disk_space"),
            ("running", "download"),
            ("running", "verify_artifact"),
            ("running", "install"),
            ("running", "restart"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    // After it: only the final result, from the previous version.
    assert_eq!(results.len(), seen_before + 1, "{results:#?}");
    assert_eq!(running_version_of_service(&rig).as_deref(), Some(RUNNING));
    sd.stop();
}

#[test]
fn new_version_crashing_at_start_is_rolled_back_by_the_launcher() {
    let rig = Rig::new("");
    let art = rig.root.join("crasher");
    std::fs::write(
        &art,
        "#!/bin/sh\necho 'new version: cannot start' >&2\nexit 70\n",
    )
    .expect("artifact");
    let url = rig.server.put_file("crasher", &art, Fault::None);
    let m = rig.manifest(&next_version(), &url, &art, &rig.signing_key, |_| {});
    let mut sd = TestSystemd::new(&rig);
    apply_and_restart(&rig, &m, &mut sd);
    let st = rig.status();
    assert_eq!(st["operation"]["state"]["state"], "rolled_back", "{st:#}");
    let reason = st["operation"]["state"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("start attempts"), "{reason}");
    // attempts = 2: two trial starts, then the launcher flips back on the third.
    assert_eq!(
        rig.service_log()
            .matches("new version: cannot start")
            .count(),
        2
    );
    assert_eq!(rig.current(), None);
    assert_eq!(running_version_of_service(&rig).as_deref(), Some(RUNNING));
    sd.stop();
}

#[test]
fn systemd_giving_up_triggers_the_rollback_unit() {
    // More attempts than the start limit allows: the OnFailure= helper rolls back.
    let rig = Rig::new("");
    let cfg = std::fs::read_to_string(&rig.config).expect("config");
    std::fs::write(&rig.config, cfg.replace("attempts = 2", "attempts = 10")).expect("config");
    let art = rig.root.join("crasher");
    std::fs::write(&art, "#!/bin/sh\nexit 70\n").expect("artifact");
    let url = rig.server.put_file("crasher", &art, Fault::None);
    let m = rig.manifest(&next_version(), &url, &art, &rig.signing_key, |_| {});
    let mut sd = TestSystemd::new(&rig);
    sd.burst = 3;
    apply_and_restart(&rig, &m, &mut sd);
    let st = rig.status();
    assert_eq!(st["operation"]["state"]["state"], "rolled_back", "{st:#}");
    let reason = st["operation"]["state"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("systemd gave up"), "{reason}");
    sd.stop();
}

/// `kill -9` right after the operation persisted `state`, then the service starts (as after
/// a power cut): the update must end committed, with the new version running.
fn killed_at(state: &str) {
    let rig = Rig::new("");
    let art = next_artifact(&rig.root);
    let url = rig.server.put_file("next", &art, Fault::None);
    let next = next_version();
    let m = rig.manifest(&next, &url, &art, &rig.signing_key, |_| {});
    let mut c = rig.apply_cmd(&m);
    c.env("VITALGATE_TEST_KILL_AT", state);
    let out = run(c);
    assert_eq!(
        out.status.signal(),
        Some(9),
        "not killed at {state}: {}",
        out.stdout
    );
    let mut sd = TestSystemd::new(&rig);
    sd.start();
    sd.until("a terminal update state", Duration::from_secs(90), || {
        matches!(
            rig.op_state().as_str(),
            "committed" | "rolled_back" | "failed"
        )
    });
    let st = rig.status();
    assert_eq!(st["operation"]["state"]["state"], "committed", "{st:#}");
    assert_eq!(
        rig.current(),
        Some(PathBuf::from(format!("versions/{next}")))
    );
    assert!(st["pending"].is_null());
    sd.until("the new version", Duration::from_secs(30), || {
        running_version_of_service(&rig).as_deref() == Some(next.as_str())
    });
    sd.stop();
}

#[test]
fn kill_9_mid_download_resumes_with_a_range_request_after_restart() {
    let rig = Rig::new("");
    let art = next_artifact(&rig.root);
    const FIRST: usize = 1 << 20;
    let url = rig
        .server
        .put_file("next", &art, Fault::StallOnceAfter(FIRST));
    let next = next_version();
    let m = rig.manifest(&next, &url, &art, &rig.signing_key, |_| {});
    let mut apply = rig.apply_cmd(&m);
    apply.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = apply.spawn().expect("apply");
    let part = rig.download.join(format!("{next}.part"));
    let end = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < FIRST as u64 {
        assert!(Instant::now() < end, "the first megabyte never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert_eq!(rig.op_state(), "preparing");
    let mut sd = TestSystemd::new(&rig);
    sd.start();
    sd.until("a terminal update state", Duration::from_secs(90), || {
        matches!(
            rig.op_state().as_str(),
            "committed" | "rolled_back" | "failed"
        )
    });
    assert_eq!(rig.op_state(), "committed", "{:#}", rig.status());
    let reqs = rig.server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(
        reqs[1].range.as_deref(),
        Some(format!("bytes={FIRST}-").as_str())
    );
    sd.stop();
}

macro_rules! kill_tests {
    ($($name:ident => $state:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                killed_at($state);
            }
        )*
    };
}

kill_tests! {
    kill_9_at_verify => "verify",
    kill_9_at_disk_space => "disk_space",
    kill_9_at_download => "download",
    kill_9_at_verify_artifact => "verify_artifact",
    kill_9_at_install => "installing",
    kill_9_at_switch => "switching",
    kill_9_at_restart => "restarting",
}

#[test]
fn kill_9_at_every_health_gate_start_rolls_back_truthfully() {
    // The new version dies each time it enters its health gate: it never proves itself, the
    // launcher's attempts run out, and the previous version reports the rollback.
    let rig = Rig::new("");
    let art = next_artifact(&rig.root);
    let url = rig.server.put_file("next", &art, Fault::None);
    let m = rig.manifest(&next_version(), &url, &art, &rig.signing_key, |_| {});
    let mut sd = TestSystemd::new(&rig);
    sd.env
        .push(("VITALGATE_TEST_KILL_AT".into(), "health_gate".into()));
    apply_and_restart(&rig, &m, &mut sd);
    let st = rig.status();
    assert_eq!(st["operation"]["state"]["state"], "rolled_back", "{st:#}");
    assert_eq!(st["operation"]["reported"], true);
    assert_eq!(rig.current(), None);
    assert_eq!(running_version_of_service(&rig).as_deref(), Some(RUNNING));
    sd.stop();
}

#[test]
fn the_unit_runs_the_launcher_and_rolls_back_on_failure() {
    let unit = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../systemd/vitalgate.service"),
    )
    .expect("unit");
    assert!(unit.contains("ExecStart=/usr/lib/vitalgate/vitalgate-launch run "));
    assert!(unit.contains("OnFailure=vitalgate-rollback.service"));
    assert!(unit.contains(&format!(
        "VITALGATE_INSTALL_DIR={}",
        vitalgate::config::update::DEFAULT_INSTALL_DIR
    )));
    let rollback = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../systemd/vitalgate-rollback.service"),
    )
    .expect("rollback unit");
    assert!(rollback.contains("ExecStart=/usr/lib/vitalgate/vitalgate-launch --rollback"));
}

/// The rollback helper writes only through names it creates (mktemp) and renames over the
/// old ones: links planted in the install directory are replaced, never followed, and a
/// marker naming anything but a version directory is not linked to.
#[test]
fn the_rollback_helper_never_writes_through_a_planted_link() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let install = tmp.path().join("install");
    std::fs::create_dir_all(install.join("versions/9.9.9")).expect("versions");
    let outside = tmp.path().join("outside");
    std::fs::write(&outside, "untouched\n").expect("outside");
    std::os::unix::fs::symlink("versions/9.9.9", install.join("current")).expect("current");
    let marker = |previous: &str| {
        std::fs::write(
            install.join("pending-update"),
            format!(
                "operation=op-1\nnew_version=9.9.9\nprevious_version=0.1.0\nprevious_target={previous}\nattempts_left=3\n"
            ),
        )
        .expect("marker");
    };
    marker("versions/0.1.0");
    // Where an older helper wrote its temporary files, and the note itself.
    for name in [
        "rolled-back",
        ".current.tmp",
        "rolled-back.tmp.1",
        "pending-update.tmp.1",
    ] {
        std::os::unix::fs::symlink(&outside, install.join(name)).expect("plant");
    }
    let rollback = || {
        let st = Command::new("sh")
            .arg(launcher())
            .arg("--rollback")
            .env("VITALGATE_INSTALL_DIR", &install)
            .status()
            .expect("rollback helper");
        assert!(st.success());
    };
    rollback();
    assert_eq!(
        std::fs::read_to_string(&outside).expect("outside"),
        "untouched\n"
    );
    let note = std::fs::symlink_metadata(install.join("rolled-back")).expect("note");
    assert!(note.file_type().is_file(), "the note is a file of its own");
    assert_eq!(
        std::fs::read_link(install.join("current")).expect("current"),
        PathBuf::from("versions/0.1.0")
    );
    assert!(!install.join("pending-update").exists());

    // A marker pointing outside the versions: no link to it; the packaged version runs.
    std::os::unix::fs::symlink("versions/9.9.9", install.join("current.new")).expect("link");
    std::fs::rename(install.join("current.new"), install.join("current")).expect("flip");
    marker("../../etc");
    rollback();
    assert!(std::fs::symlink_metadata(install.join("current")).is_err());
    // Not on trial: --on-trial says so (the rollback unit's ExecCondition).
    let st = Command::new("sh")
        .arg(launcher())
        .arg("--on-trial")
        .env("VITALGATE_INSTALL_DIR", &install)
        .status()
        .expect("on-trial");
    assert_eq!(st.code(), Some(1));
}
