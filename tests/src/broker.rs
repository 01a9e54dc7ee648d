//! A real mosquitto for the fleet tests and the fleet benchmark: started on free loopback
//! ports with TLS (a CA, a server and client certificates made with the openssl CLI at test
//! time), a password file and an ACL; and an IT-side MQTT client that records everything it
//! sees.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{Client, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};

/// Users the broker knows, with their passwords. The ACL gives each gateway user its own
/// `vitalgate/<user>/#` and the `it` user everything under `vitalgate/`.
pub const IT_USER: (&str, &str) = ("it", "it-secret-pw");

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    pub dir: PathBuf,
    /// TLS, username and password.
    pub port: u16,
    /// TLS with a required client certificate whose CN is the username.
    pub mtls_port: u16,
    extra_conf: String,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    sh(Command::new("openssl").current_dir(dir).args(args));
}

/// Makes a CA, a server certificate for 127.0.0.1/localhost and client certificates with the
/// given common names (`<cn>.crt` / `<cn>.key`), all EC P-256 (fast to generate).
pub fn make_certs(dir: &Path, clients: &[&str]) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=vitalgate-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let leaf = |name: &str, ext: &str| {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-sha256",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
        set_private(&dir.join(format!("{name}.key")));
    };
    leaf(
        "server",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    );
    for c in clients {
        leaf(
            c,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        );
    }
}

pub fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// The ACL the README documents: IT may touch every gateway's topics; a gateway may only
/// read what IT writes to it and write its own reports, never its commands or its desired
/// configuration.
pub fn least_privilege_acl() -> String {
    format!(
        "user {it}\ntopic readwrite vitalgate/#\n\n\
         pattern read vitalgate/%u/config/desired\n\
         pattern read vitalgate/%u/cmd/+\n\
         pattern write vitalgate/%u/state\n\
         pattern write vitalgate/%u/telemetry\n\
         pattern write vitalgate/%u/events\n\
         pattern write vitalgate/%u/config/reported\n\
         pattern write vitalgate/%u/cmd/+/result\n",
        it = IT_USER.0
    )
}

/// The operator key the test gateways trust (`[fleet] operator_keys`).
pub fn operator_key() -> vitalgate::signed::PrivateKey {
    vitalgate::signed::PrivateKey::from_seed(&[0x4f; 32])
}

/// `doc` addressed to `gateway` (and, for a command, its id) and signed by `key`, as
/// `vitalgate update sign --gateway` writes it.
pub fn signed_with(
    key: &vitalgate::signed::PrivateKey,
    gateway: &str,
    command_id: Option<&str>,
    mut doc: serde_json::Value,
) -> serde_json::Value {
    doc["gateway"] = serde_json::Value::String(gateway.into());
    if let Some(id) = command_id {
        doc["id"] = serde_json::Value::String(id.into());
    }
    vitalgate::signed::add_signature(&mut doc, key).expect("sign");
    doc
}

/// [`signed_with`] the test operator key.
pub fn signed(
    gateway: &str,
    command_id: Option<&str>,
    doc: serde_json::Value,
) -> serde_json::Value {
    signed_with(&operator_key(), gateway, command_id, doc)
}

/// A command as IT's tooling sends it: signed when its type must be.
pub fn command_payload(gateway: &str, id: &str, body: serde_json::Value) -> serde_json::Value {
    let must_sign = body["type"]
        .as_str()
        .is_some_and(|t| vitalgate::fleet::trust::SIGNED_COMMANDS.contains(&t));
    if must_sign {
        signed(gateway, Some(id), body)
    } else {
        body
    }
}

impl Broker {
    /// Starts mosquitto in `dir` with the given password users (plus [`IT_USER`]) and
    /// client-certificate names.
    pub fn start(dir: &Path, users: &[(&str, &str)], cert_clients: &[&str]) -> Self {
        Self::start_with(dir, users, cert_clients, &least_privilege_acl(), "")
    }

    /// Like [`Broker::start`], with an ACL file and extra `mosquitto.conf` lines of the
    /// caller's (the benchmark's gateways share one user and are told apart by client id).
    pub fn start_with(
        dir: &Path,
        users: &[(&str, &str)],
        cert_clients: &[&str],
        acl: &str,
        extra_conf: &str,
    ) -> Self {
        std::fs::create_dir_all(dir).expect("broker dir");
        make_certs(dir, cert_clients);
        let passwd = dir.join("passwd");
        std::fs::write(&passwd, "").expect("passwd");
        for (u, p) in users.iter().chain(std::iter::once(&IT_USER)) {
            sh(Command::new("mosquitto_passwd")
                .arg("-b")
                .arg(&passwd)
                .arg(u)
                .arg(p));
        }
        set_private(&passwd);
        std::fs::write(dir.join("acl"), acl).expect("acl");
        let mut b = Self {
            dir: dir.to_owned(),
            port: free_port(),
            mtls_port: free_port(),
            extra_conf: extra_conf.to_owned(),
            child: None,
        };
        b.write_conf();
        b.spawn();
        b
    }

    fn write_conf(&self) {
        let d = self.dir.display();
        let conf = format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {d}/passwd\n\
             acl_file {d}/acl\npersistence false\nuser root\nlog_dest stderr\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             max_keepalive 65535\n\
             listener {p} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n\
             listener {m} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n\
             require_certificate true\nuse_identity_as_username true\n{extra}",
            p = self.port,
            m = self.mtls_port,
            extra = self.extra_conf,
        );
        std::fs::write(self.dir.join("mosquitto.conf"), conf).expect("mosquitto.conf");
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .expect("broker log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto (scripts/setup installs it)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        for port in [self.port, self.mtls_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < until,
                    "mosquitto did not listen on {port}: {}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Stops the broker (SIGKILL: no goodbye to clients, retained messages and sessions lost,
    /// as `persistence false` makes them).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes (`true`, SIGSTOP) or thaws (SIGCONT) the broker: its connections stay open but
    /// nothing is read or answered, as with a hung broker or a black-holed network.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("broker running").id();
        let sig = if frozen { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// Stops and starts the broker on the same ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    pub fn mtls_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.mtls_port)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The `[fleet]` section for a gateway that logs in with a password.
    pub fn fleet_toml(&self, user: &str, password: &str, extra: &str) -> String {
        let pw = self.dir.join(format!("{user}.password"));
        std::fs::write(&pw, format!("{password}\n")).expect("password file");
        set_private(&pw);
        format!(
            "[fleet]\nbroker = \"{}\"\nca_file = \"{}\"\nusername = \"{user}\"\npassword_file = \"{}\"\n\
             operator_keys = [\"{}\"]\n{extra}",
            self.url(),
            self.ca().display(),
            pw.display(),
            operator_key().public().to_base64()
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message as a client saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// An MQTT 5 client (rumqttc) that subscribes to a filter and records every message,
/// resubscribing after the broker restarts.
pub struct Recorder {
    pub client: Client,
    seen: Arc<Mutex<Vec<Seen>>>,
    suback: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn connect(url_port: u16, ca: &Path, user: (&str, &str), filter: &str) -> Self {
        let mut o = MqttOptions::new(
            format!("{}-{}", user.0, uuid::Uuid::new_v4().simple()),
            "127.0.0.1",
            url_port,
        );
        o.set_credentials(user.0, user.1);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca: std::fs::read(ca).expect("ca"),
            alpn: None,
            client_auth: None,
        }));
        let (client, mut connection) = Client::new(o, 256);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let suback = Arc::new(Mutex::new(Vec::new()));
        let (s, a, c, f) = (
            seen.clone(),
            suback.clone(),
            client.clone(),
            filter.to_owned(),
        );
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for ev in connection.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe(f.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        a.lock()
                            .expect("lock")
                            .push(format!("{:?}", ack.return_codes));
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => s.lock().expect("lock").push(Seen {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    }),
                    Ok(_) => {}
                    Err(rumqttc::v5::ConnectionError::RequestsDone) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("recorder subscribed");
        Self {
            client,
            seen,
            suback,
        }
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn subacks(&self) -> Vec<String> {
        self.suback.lock().expect("lock").clone()
    }

    /// Waits until a message on `topic` satisfies `pred`; returns it.
    pub fn wait_for(
        &self,
        topic: &str,
        deadline: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let until = Instant::now() + deadline;
        loop {
            if let Some(m) = self
                .all()
                .into_iter()
                .find(|m| m.topic == topic && pred(&m.json()))
            {
                return m.json();
            }
            assert!(
                Instant::now() < until,
                "no matching message on {topic} within {deadline:?}; saw: {:#?}",
                self.all()
                    .iter()
                    .map(|m| format!("{} {}", m.topic, String::from_utf8_lossy(&m.payload)))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn publish(&self, topic: &str, payload: &str, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .expect("publish");
    }
}
