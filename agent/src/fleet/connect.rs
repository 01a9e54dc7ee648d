//! MQTT connection options from `[fleet]`: broker address, TLS with a custom CA, client
//! certificate or username and password, the last will, keepalive and session expiry.
//! Secrets are read here, from files, and never logged.

use std::path::{Path, PathBuf};

use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
use rumqttc::{TlsConfiguration, Transport};

use super::topics::Topics;
use crate::config::{FleetConfig, GatewayId};

/// Why the connection options could not be built. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("[fleet] has no broker")]
    NoBroker,
    #[error("cannot read {what} {}: {source}", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is readable by group or others; `chmod 600` it", .path.display())]
    Insecure { path: PathBuf },
    #[error(
        "fleet.username is set but no password was found: provide the credential \
         {credential:?} or fleet.password_file"
    )]
    NoPassword { credential: String },
    #[error("password in {} is empty or not one line of UTF-8", .path.display())]
    BadPassword { path: PathBuf },
    #[error("TLS: {0}")]
    Tls(String),
}

/// The last will and the `offline` state payload: what the broker publishes, retained, when
/// the gateway vanishes without a clean disconnect.
pub fn offline_payload(reason: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "status": "offline",
        "reason": reason,
        "version": crate::update::running_version(),
    }))
    .unwrap_or_default()
}

/// Builds the options for `client_id` (the gateway id, or a simulated one in the bench).
pub fn mqtt_options(
    gateway: &GatewayId,
    client_id: &str,
    cfg: &FleetConfig,
    credentials_dir: Option<&Path>,
) -> Result<MqttOptions, ConnectError> {
    let url = cfg.broker.as_ref().ok_or(ConnectError::NoBroker)?.as_url();
    let tls = url.scheme() == "mqtts";
    let host = url
        .host_str()
        .unwrap_or("localhost")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(cfg.keepalive);
    o.set_connection_timeout(cfg.connect_timeout.as_secs().max(1));
    // A session the broker keeps while the gateway is briefly away: subscriptions survive
    // and QoS 1 commands sent meanwhile are queued. Whether the broker really kept it is
    // checked at every connect (session_present), and the gateway resubscribes if not.
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(
        cfg.session_expiry.as_secs().min(u32::MAX as u64) as u32
    ));
    o.set_max_packet_size(Some(512 * 1024));
    // rumqttc sizes its in-flight table by this bound before the broker's receive maximum is
    // known: unbounded (65,535 slots) it costs about 8 MB per connection. A gateway has a few
    // results and events in flight at most.
    o.set_outgoing_inflight_upper_limit(32);
    let topics = Topics::new(gateway);
    o.set_last_will(LastWill::new(
        topics.state(),
        offline_payload("connection lost"),
        QoS::AtLeastOnce,
        true,
        Some(LastWillProperties {
            delay_interval: None,
            payload_format_indicator: Some(1),
            message_expiry_interval: None,
            content_type: Some("application/json".into()),
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    ));
    if let Some(user) = &cfg.username {
        let password = read_password(cfg, credentials_dir)?;
        o.set_credentials(user.clone(), password);
    }
    if tls {
        let client_auth = match (&cfg.client_cert_file, &cfg.client_key_file) {
            (Some(cert), Some(key)) => {
                check_private(key)?;
                Some((
                    read_file("client certificate", cert)?,
                    zeroize::Zeroizing::new(read_file("client key", key)?),
                ))
            }
            _ => None,
        };
        let ca = match &cfg.ca_file {
            Some(ca) => read_file("CA file", ca)?,
            None => read_file("system CA bundle", Path::new(SYSTEM_CA_BUNDLE))?,
        };
        let config = client_config(
            &ca,
            client_auth
                .as_ref()
                .map(|(c, k)| (c.as_slice(), k.as_slice())),
        )?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            std::sync::Arc::new(config),
        )));
    }
    Ok(o)
}

const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The TLS client configuration, built here with rustls (and its maintained PEM parser)
/// rather than by rumqttc, whose own setup parses PEM with the unmaintained `rustls-pemfile`
/// and links `rustls-webpki` 0.102 (see `deny.toml`): neither runs for the gateway.
fn client_config(
    ca_pem: &[u8],
    client_auth: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, ConnectError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConnectError::Tls(format!("CA bundle: {e}")))?;
    // A PEM block that is not a certificate failed the bundle above (a CA file is the
    // operator's); a certificate webpki cannot use as an anchor is skipped rather than making
    // every other one unusable (system bundles hold a few).
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(ConnectError::Tls(
            "the CA bundle holds no certificate".into(),
        ));
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConnectError::Tls(e.to_string()))?
    .with_root_certificates(roots);
    match client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConnectError::Tls(format!("client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| ConnectError::Tls(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ConnectError::Tls(format!("client certificate/key: {e}")))
        }
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn check_private(path: &Path) -> Result<(), ConnectError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| ConnectError::Read {
        what: "secret file",
        path: path.to_owned(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ConnectError::Insecure {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The systemd credential first (systemd already made it private), then the password file.
fn read_password(cfg: &FleetConfig, creds: Option<&Path>) -> Result<String, ConnectError> {
    let candidate = creds
        .map(|d| d.join(&cfg.password_credential))
        .filter(|p| p.exists());
    let path = match (candidate, &cfg.password_file) {
        (Some(p), _) => p,
        (None, Some(file)) => {
            check_private(file)?;
            file.clone()
        }
        (None, None) => {
            return Err(ConnectError::NoPassword {
                credential: cfg.password_credential.clone(),
            });
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConnectError::Read {
        what: "password",
        path: path.clone(),
        source,
    })?;
    let pw = text.strip_suffix('\n').unwrap_or(&text);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() || pw.contains('\n') {
        return Err(ConnectError::BadPassword { path });
    }
    Ok(pw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> FleetConfig {
        let text = format!("[fleet]\nbroker = \"mqtt://127.0.0.1:18830\"\n{extra}");
        crate::config::Config::parse(Path::new("t.toml"), &text)
            .expect("config")
            .fleet
    }

    #[test]
    fn password_comes_from_the_credential_then_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = cfg(&format!(
            "username = \"gw\"\npassword_file = \"{}\"\n",
            file.display()
        ));
        let gw: GatewayId = "gw-1".parse().expect("id");
        let o = mqtt_options(&gw, "gw-1", &c, None).expect("options");
        assert_eq!(
            o.credentials().map(|l| l.password),
            Some("from-file".to_owned())
        );

        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).expect("mkdir");
        std::fs::write(creds.join("vitalgate-mqtt-password"), "from-cred").expect("write");
        let o = mqtt_options(&gw, "gw-1", &c, Some(&creds)).expect("options");
        assert_eq!(
            o.credentials().map(|l| l.password),
            Some("from-cred".to_owned())
        );

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = mqtt_options(&gw, "gw-1", &c, None).expect_err("world-readable");
        assert!(matches!(e, ConnectError::Insecure { .. }), "{e}");

        let c = cfg("username = \"gw\"\n");
        let e = mqtt_options(&gw, "gw-1", &c, None).expect_err("no password");
        assert!(matches!(e, ConnectError::NoPassword { .. }), "{e}");
    }

    #[test]
    fn last_will_is_a_retained_offline_state() {
        let gw: GatewayId = "gw-1".parse().expect("id");
        let o = mqtt_options(&gw, "gw-1", &cfg(""), None).expect("options");
        let will = o.last_will().expect("will");
        assert_eq!(&will.topic[..], b"vitalgate/gw-1/state");
        assert!(will.retain);
        let v: serde_json::Value = serde_json::from_slice(&will.message).expect("json");
        assert_eq!(v["status"], "offline");
        assert_eq!(o.broker_address(), ("127.0.0.1".to_owned(), 18830));
    }

    #[test]
    fn fleet_config_cross_checks() {
        let bad = |extra: &str| {
            crate::config::Config::parse(Path::new("t.toml"), &format!("[fleet]\n{extra}"))
                .expect_err(extra)
                .to_string()
        };
        assert!(bad("client_cert_file = \"/a\"\n").contains("client_key_file"));
        assert!(bad("password_file = \"/a\"\n").contains("username"));
        assert!(bad("reconnect_min = \"10s\"\nreconnect_max = \"1s\"\n").contains("reconnect_max"));
        assert!(bad("telemetry_interval = \"1ms\"\n").contains("telemetry_interval"));
    }
}
