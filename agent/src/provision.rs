//! `vitalgate provision`: one enrollment file, prepared at a depot, turned into a gateway's
//! configuration, its secret files and its patient bindings.
//!
//! This module owns the enrollment file's schema (documented with a sample in
//! `packaging/enrollment.sample.toml`), its validation, and the plan of files it produces.
//! Everything is validated before anything is written: the enrollment's values go through the
//! same checked types and cross-field checks as the configuration file, certificates and keys
//! are parsed, and the configuration that would be written is parsed back. Only then are the
//! files written, each atomically (temporary file, fsync, rename), secrets before the
//! configuration that names them, so a half-done provisioning never leaves a configuration
//! pointing at files that do not exist.
//!
//! Secrets (passwords, tokens, client keys) go to their own files, mode 0600; certificates
//! are public (0644); the configuration holds no secret and is 0644. Patient references are
//! written to the encrypted store only, never to the configuration, and never printed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vitalgate_drivers::Transport;

use crate::config::destination::{AuthConfig, RouteConfig, SecretSource, SigningAlgorithm};
use crate::config::{
    BrokerUrl, BtAddr, Config, DEFAULT_GATEWAY_ID, DestinationConfig, EndpointUrl, GatewayId, Name,
};
use vitalgate_core::PatientRef;
use vitalgate_core::ids::user_index;

/// The account the service runs as; secret files are handed to it when provisioning as root.
pub const SERVICE_USER: &str = "vitalgate";
/// Where secret and certificate files go unless `--credentials-dir` says otherwise.
pub const DEFAULT_CREDENTIALS_DIR: &str = "/etc/vitalgate/credentials";

/// Why an enrollment file cannot be used, or provisioning could not finish.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{}: cannot read the enrollment file: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {key}: {message}", .path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error(
        "{} already holds the configuration of gateway {gateway:?}; provisioning again \
         replaces it: pass --force (the old file is kept as {}.bak)",
        .path.display(), .path.display()
    )]
    Exists { path: PathBuf, gateway: String },
    #[error(
        "{} exists but its key {} does not: restore the key (a new key cannot open it), or \
         move the store aside",
        .store.display(), .key.display()
    )]
    StoreWithoutKey { store: PathBuf, key: PathBuf },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A PEM document: inline, or a file (relative paths are resolved against the enrollment
/// file's folder, so a USB stick can carry the file and its certificates together).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pem {
    #[serde(default)]
    pub pem: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// The enrollment file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    pub gateway: EnrollGateway,
    #[serde(default)]
    pub fleet: Option<EnrollFleet>,
    #[serde(default, rename = "destination")]
    pub destinations: Vec<EnrollDestination>,
    #[serde(default, rename = "binding")]
    pub bindings: Vec<EnrollBinding>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollGateway {
    pub id: GatewayId,
}

/// `[fleet]`: the broker, its CA, and either a client certificate and key or a username
/// with a one-time enrollment token (or password).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollFleet {
    pub broker: BrokerUrl,
    #[serde(default)]
    pub ca: Option<Pem>,
    #[serde(default)]
    pub client_cert: Option<Pem>,
    #[serde(default)]
    pub client_key: Option<Pem>,
    #[serde(default)]
    pub username: Option<String>,
    /// The password or one-time enrollment token.
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollDestination {
    pub id: Name,
    pub base_url: EndpointUrl,
    #[serde(default)]
    pub ca: Option<Pem>,
    #[serde(default)]
    pub client_cert: Option<Pem>,
    #[serde(default)]
    pub client_key: Option<Pem>,
    #[serde(default)]
    pub auth: EnrollAuth,
    #[serde(default)]
    pub route: RouteConfig,
}

/// A destination's authentication, with its secret material inline: it is written to a
/// secret file and the configuration names the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "kebab-case")]
pub enum EnrollAuth {
    #[default]
    None,
    Bearer {
        token: String,
    },
    ClientCredentials {
        token_url: EndpointUrl,
        client_id: String,
        client_secret: String,
        #[serde(default)]
        scope: Option<String>,
    },
    SmartBackend {
        token_url: EndpointUrl,
        client_id: String,
        private_key: Pem,
        algorithm: SigningAlgorithm,
        key_id: String,
        #[serde(default)]
        scope: Option<String>,
    },
}

/// A device (and user of a multi-user device) bound to an opaque patient reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollBinding {
    /// "ble" (default) or "serial".
    #[serde(default = "default_transport")]
    pub transport: String,
    /// BLE: "AA:BB:CC:DD:EE:FF". Serial: the configured port path or `usb:VID:PID[:SERIAL]`.
    pub address: String,
    /// The user of a multi-user device (0 to 254); absent binds every user.
    #[serde(default)]
    pub user_index: Option<i64>,
    /// The opaque patient reference the FHIR side resolves, e.g. "Patient/8f3a".
    pub patient: String,
}

fn default_transport() -> String {
    "ble".into()
}

/// Where provisioning writes.
#[derive(Debug, Clone)]
pub struct Targets {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub credentials_dir: PathBuf,
}

impl Targets {
    /// The database key sits beside the configuration (`/etc/vitalgate/db.key`), where the
    /// package's install creates it and the service unit's `LoadCredential=` reads it.
    pub fn key_file(&self) -> PathBuf {
        self.config
            .parent()
            .unwrap_or(Path::new("."))
            .join("db.key")
    }
}

/// One file to write.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    /// Secret: 0600 and owned by the service user; otherwise 0644.
    pub secret: bool,
    /// What it is, for the summary.
    pub what: String,
}

/// A validated binding, ready for the store.
#[derive(Clone)]
pub struct PlannedBinding {
    pub transport: Transport,
    pub address: String,
    pub user_index: i64,
    pub patient: PatientRef,
}

impl std::fmt::Debug for PlannedBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedBinding")
            .field("transport", &self.transport)
            .field("address", &self.address)
            .field("user_index", &self.user_index)
            .finish_non_exhaustive()
    }
}

/// Everything provisioning will do, computed and checked without writing anything.
#[derive(Debug, Clone)]
pub struct Plan {
    pub config: Config,
    pub config_text: String,
    pub files: Vec<PlannedFile>,
    pub bindings: Vec<PlannedBinding>,
}

/// Reads and validates an enrollment file and works out the files it produces. `base` is
/// the configuration to start from (the existing one, so local settings such as serial
/// ports survive), or the defaults.
pub fn plan(enrollment: &Path, targets: &Targets, base: Config) -> Result<Plan, ProvisionError> {
    let text = std::fs::read_to_string(enrollment).map_err(|source| ProvisionError::Read {
        path: enrollment.to_owned(),
        source,
    })?;
    let invalid = |key: &str, message: String| ProvisionError::Invalid {
        path: enrollment.to_owned(),
        key: key.to_owned(),
        message,
    };
    let de = toml::de::Deserializer::parse(&text)
        .map_err(|e| invalid(&location(&text, e.span()), e.message().trim().to_owned()))?;
    let e: Enrollment = serde_path_to_error::deserialize(de).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        // Serde's messages may quote the offending value; that is the installer's own file
        // on the installer's own screen, but a patient reference is still kept out of it.
        invalid(&key, inner.message().trim().to_owned())
    })?;
    let folder = enrollment.parent().unwrap_or(Path::new("."));
    plan_from(&e, folder, targets, base).map_err(|(key, message)| invalid(&key, message))
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(s) => {
            let before = &text[..s.start.min(text.len())];
            format!("line {}", before.matches('\n').count() + 1)
        }
        None => "file".into(),
    }
}

type Bad = (String, String);

fn pem_text(p: &Pem, folder: &Path, key: &str) -> Result<String, Bad> {
    match (&p.pem, &p.file) {
        (Some(t), None) => Ok(t.clone()),
        (None, Some(f)) => {
            let path = if f.is_absolute() {
                f.clone()
            } else {
                folder.join(f)
            };
            std::fs::read_to_string(&path).map_err(|e| {
                (
                    key.to_owned(),
                    format!("cannot read {}: {e}", path.display()),
                )
            })
        }
        _ => Err((key.to_owned(), "give exactly one of `pem` or `file`".into())),
    }
}

/// Parses one or more certificates, checking each one's DER structure.
fn check_certs(text: &str, key: &str) -> Result<usize, Bad> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let bad = |m: String| (key.to_owned(), m);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs.iter() {
        roots
            .add(c.clone())
            .map_err(|e| bad(format!("certificate does not parse: {e}")))?;
    }
    Ok(certs.len())
}

/// Parses a PEM private key (PKCS#8, PKCS#1 or SEC1) that rustls can sign with.
fn check_key(text: &str, key: &str) -> Result<(), Bad> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject as _;
    let bad = |m: String| (key.to_owned(), m);
    let der = PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|e| bad(format!("not a PEM private key: {e}")))?;
    rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| bad(format!("unusable private key: {e}")))?;
    Ok(())
}

/// A secret string: non-empty, one line, no surrounding whitespace lost silently.
fn check_secret_line(s: &str, key: &str) -> Result<(), Bad> {
    if s.is_empty() || s.contains('\n') || s.contains('\r') || s.trim() != s {
        return Err((
            key.to_owned(),
            "must be one non-empty line without surrounding spaces".into(),
        ));
    }
    Ok(())
}

fn plan_from(e: &Enrollment, folder: &Path, targets: &Targets, base: Config) -> Result<Plan, Bad> {
    if e.gateway.id.as_str() == DEFAULT_GATEWAY_ID {
        return Err((
            "gateway.id".into(),
            format!("{DEFAULT_GATEWAY_ID:?} is the placeholder of an unprovisioned gateway"),
        ));
    }
    let mut files = CredentialFiles {
        dir: &targets.credentials_dir,
        planned: Vec::new(),
    };
    let mut config = base;
    config.gateway.id = e.gateway.id.clone();
    // A configuration outside /etc/vitalgate (tests, development) keeps its key beside it
    // rather than at the system path; a key file set on purpose is kept.
    if config.store.key_file == Path::new(crate::config::DEFAULT_KEY_FILE) {
        config.store.key_file = targets.key_file();
    }
    config.fleet = plan_fleet(e.fleet.as_ref(), &config.fleet, folder, &mut files)?;
    let mut destinations = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, d) in e.destinations.iter().enumerate() {
        if !ids.insert(d.id.clone()) {
            return Err((
                format!("destination[{i}].id"),
                format!("{:?} is listed twice", d.id.as_str()),
            ));
        }
        let existing = config.destinations.iter().find(|x| x.id == d.id);
        destinations.push(plan_destination(i, d, existing, folder, &mut files)?);
    }
    config.destinations = destinations;
    let bindings = plan_bindings(&e.bindings, &mut config)?;
    let (config, config_text) = render(config, targets)?;
    Ok(Plan {
        config,
        config_text,
        files: files.planned,
        bindings,
    })
}

/// The files of secrets and certificates a plan writes into the credentials folder.
struct CredentialFiles<'a> {
    dir: &'a Path,
    planned: Vec<PlannedFile>,
}

impl CredentialFiles<'_> {
    /// Plans `name` with `contents` (a final newline added); returns its path.
    fn add(&mut self, name: String, contents: String, secret: bool, what: String) -> PathBuf {
        let path = self.dir.join(name);
        let mut contents = contents.into_bytes();
        if !contents.ends_with(b"\n") {
            contents.push(b'\n');
        }
        self.planned.push(PlannedFile {
            path: path.clone(),
            contents,
            secret,
            what,
        });
        path
    }
}

/// `[fleet]`: the enrolled broker and its credentials over the local tuning of `base`.
fn plan_fleet(
    enrolled: Option<&EnrollFleet>,
    base: &crate::config::FleetConfig,
    folder: &Path,
    files: &mut CredentialFiles<'_>,
) -> Result<crate::config::FleetConfig, Bad> {
    let mut fleet = crate::config::FleetConfig {
        // Local tuning (intervals, timeouts) survives; identity and credentials are replaced.
        ..base.clone()
    };
    fleet.broker = None;
    fleet.ca_file = None;
    fleet.client_cert_file = None;
    fleet.client_key_file = None;
    fleet.username = None;
    fleet.password_file = None;
    if let Some(f) = enrolled {
        fleet.broker = Some(f.broker.clone());
        let tls = f.broker.as_url().scheme() == "mqtts";
        if let Some(ca) = &f.ca {
            let pem = pem_text(ca, folder, "fleet.ca")?;
            check_certs(&pem, "fleet.ca")?;
            fleet.ca_file = Some(files.add("mqtt-ca.pem".into(), pem, false, "broker CA".into()));
        }
        match (&f.client_cert, &f.client_key) {
            (Some(c), Some(k)) => {
                if !tls {
                    return Err((
                        "fleet.client_cert".into(),
                        "a client certificate needs an mqtts:// broker".into(),
                    ));
                }
                let cert = pem_text(c, folder, "fleet.client_cert")?;
                check_certs(&cert, "fleet.client_cert")?;
                let key = pem_text(k, folder, "fleet.client_key")?;
                check_key(&key, "fleet.client_key")?;
                fleet.client_cert_file = Some(files.add(
                    "mqtt-client.pem".into(),
                    cert,
                    false,
                    "broker client certificate".into(),
                ));
                fleet.client_key_file = Some(files.add(
                    "mqtt-client.key".into(),
                    key,
                    true,
                    "broker client key".into(),
                ));
            }
            (None, None) => {}
            _ => {
                return Err((
                    "fleet.client_cert".into(),
                    "client_cert and client_key go together".into(),
                ));
            }
        }
        match (&f.username, &f.password) {
            (Some(u), Some(p)) => {
                check_secret_line(p, "fleet.password")?;
                fleet.username = Some(u.clone());
                fleet.password_file = Some(files.add(
                    "mqtt-password".into(),
                    p.clone(),
                    true,
                    "broker password".into(),
                ));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err((
                    "fleet.password".into(),
                    "a username needs its password or enrollment token".into(),
                ));
            }
            (None, Some(_)) => {
                return Err((
                    "fleet.username".into(),
                    "a password needs a username".into(),
                ));
            }
        }
        if fleet.username.is_none() && fleet.client_cert_file.is_none() {
            return Err((
                "fleet".into(),
                "give the broker credentials: client_cert + client_key, or username + password"
                    .into(),
            ));
        }
    }
    Ok(fleet)
}

/// One `[[destination]]`: the enrolled endpoint and credentials over the local delivery
/// tuning of the destination of the same id, if the configuration has one.
fn plan_destination(
    i: usize,
    d: &EnrollDestination,
    existing: Option<&DestinationConfig>,
    folder: &Path,
    files: &mut CredentialFiles<'_>,
) -> Result<DestinationConfig, Bad> {
    let key = |k: &str| format!("destination[{i}].{k}");
    let id = d.id.as_str();
    let ca_file = match &d.ca {
        Some(ca) => {
            let pem = pem_text(ca, folder, &key("ca"))?;
            check_certs(&pem, &key("ca"))?;
            Some(files.add(format!("{id}-ca.pem"), pem, false, format!("{id} CA")))
        }
        None => None,
    };
    let (client_cert_file, client_key_file) = match (&d.client_cert, &d.client_key) {
        (Some(c), Some(k)) => {
            let cert = pem_text(c, folder, &key("client_cert"))?;
            check_certs(&cert, &key("client_cert"))?;
            let pk = pem_text(k, folder, &key("client_key"))?;
            check_key(&pk, &key("client_key"))?;
            (
                Some(files.add(
                    format!("{id}-client.pem"),
                    cert,
                    false,
                    format!("{id} client certificate"),
                )),
                Some(files.add(
                    format!("{id}-client.key"),
                    pk,
                    true,
                    format!("{id} client key"),
                )),
            )
        }
        (None, None) => (None, None),
        _ => {
            return Err((
                key("client_cert"),
                "client_cert and client_key go together".into(),
            ));
        }
    };
    let auth = plan_auth(&key, id, &d.auth, folder, files)?;
    // Keep the local delivery tuning of a destination that stays.
    let mut dc = match existing {
        Some(old) => old.clone(),
        None => DestinationConfig {
            id: d.id.clone(),
            base_url: d.base_url.clone(),
            auth: AuthConfig::None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            proxy: None,
            batch_max: crate::config::destination::DEFAULT_BATCH_MAX,
            batch_linger: crate::config::destination::DEFAULT_BATCH_LINGER,
            request_timeout: crate::config::destination::DEFAULT_REQUEST_TIMEOUT,
            retry_base: crate::config::destination::DEFAULT_RETRY_BASE,
            retry_max: crate::config::destination::DEFAULT_RETRY_MAX,
            route: RouteConfig::default(),
        },
    };
    dc.base_url = d.base_url.clone();
    dc.auth = auth;
    dc.ca_file = ca_file;
    dc.client_cert_file = client_cert_file;
    dc.client_key_file = client_key_file;
    dc.route = d.route.clone();
    Ok(dc)
}

/// A destination's authentication: each secret goes to a file of its own, which the
/// configuration names.
fn plan_auth(
    key: &dyn Fn(&str) -> String,
    id: &str,
    auth: &EnrollAuth,
    folder: &Path,
    files: &mut CredentialFiles<'_>,
) -> Result<AuthConfig, Bad> {
    let file = |p: PathBuf| SecretSource {
        credential: None,
        file: Some(p),
    };
    Ok(match auth {
        EnrollAuth::None => AuthConfig::None,
        EnrollAuth::Bearer { token } => {
            check_secret_line(token, &key("auth.token"))?;
            AuthConfig::Bearer {
                token: file(files.add(
                    format!("{id}-token"),
                    token.clone(),
                    true,
                    format!("{id} bearer token"),
                )),
            }
        }
        EnrollAuth::ClientCredentials {
            token_url,
            client_id,
            client_secret,
            scope,
        } => {
            check_secret_line(client_secret, &key("auth.client_secret"))?;
            AuthConfig::ClientCredentials {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: file(files.add(
                    format!("{id}-client-secret"),
                    client_secret.clone(),
                    true,
                    format!("{id} client secret"),
                )),
                scope: scope.clone(),
            }
        }
        EnrollAuth::SmartBackend {
            token_url,
            client_id,
            private_key,
            algorithm,
            key_id,
            scope,
        } => {
            let pem = pem_text(private_key, folder, &key("auth.private_key"))?;
            crate::sync::auth::check_signing_key(*algorithm, pem.as_bytes())
                .map_err(|m| (key("auth.private_key"), m))?;
            AuthConfig::SmartBackend {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                private_key: file(files.add(
                    format!("{id}-smart-key.pem"),
                    pem,
                    true,
                    format!("{id} SMART signing key"),
                )),
                algorithm: *algorithm,
                key_id: key_id.clone(),
                scope: scope.clone(),
            }
        }
    })
}

/// `[[binding]]`: each checked against the configuration; a BLE device bound at the depot is
/// allowlisted so it connects without a pairing window.
fn plan_bindings(
    enrolled: &[EnrollBinding],
    config: &mut Config,
) -> Result<Vec<PlannedBinding>, Bad> {
    let mut bindings = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, b) in enrolled.iter().enumerate() {
        let key = |k: &str| format!("binding[{i}].{k}");
        let transport = Transport::parse(&b.transport).ok_or_else(|| {
            (
                key("transport"),
                format!("{:?} is not \"ble\" or \"serial\"", b.transport),
            )
        })?;
        let address = match transport {
            Transport::Ble => {
                let a: BtAddr = b.address.parse().map_err(|m| (key("address"), m))?;
                if !config.ble.allow.contains(&a) {
                    // Depot pre-provisioning: a bound device connects without a pairing window.
                    config.ble.allow.push(a);
                }
                a.to_string()
            }
            Transport::Serial => {
                let known: Vec<String> = config.serial.iter().map(|s| s.address()).collect();
                if !known.contains(&b.address) {
                    return Err((
                        key("address"),
                        format!(
                            "{:?} is not a configured serial port (configured: {})",
                            b.address,
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
                b.address.clone()
            }
        };
        let user_index = user_index(b.user_index).map_err(|m| (key("user_index"), m))?;
        // The message never repeats the reference: it is patient data.
        let patient = PatientRef::parse(&b.patient).map_err(|m| (key("patient"), m))?;
        if !seen.insert((transport.as_str(), address.clone(), user_index)) {
            return Err((
                key("address"),
                "this device and user index are bound twice".into(),
            ));
        }
        bindings.push(PlannedBinding {
            transport,
            address,
            user_index,
            patient,
        });
    }

    Ok(bindings)
}

/// The configuration file as it will be written, and the configuration it parses back to: it
/// must pass the very checks `config check` and the daemon apply.
fn render(config: Config, targets: &Targets) -> Result<(Config, String), Bad> {
    let body = toml::to_string(&config).map_err(|e| ("config".into(), e.to_string()))?;
    let config_text = format!(
        "# Written by `vitalgate provision` for gateway {}.\n\
         # Secrets are not in this file: it names the files that hold them.\n\
         # Check it with: vitalgate config check --config {}\n\n{body}",
        config.gateway.id,
        targets.config.display()
    );
    let parsed = Config::parse(&targets.config, &config_text)
        .map_err(|e| ("config".into(), format!("the resulting configuration: {e}")))?;
    Ok((parsed, config_text))
}

/// The uid and gid of `user` from the password database, if it exists.
pub fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == user).then_some(())?;
        let _pw = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// Who files should belong to: the service user when running as root (the daemon must read
/// its secrets), otherwise whoever runs this (tests, development).
pub fn service_owner() -> Option<(u32, u32)> {
    if rustix::process::geteuid().is_root() {
        lookup_user(SERVICE_USER)
    } else {
        None
    }
}

/// Writes `contents` to `path` atomically with exactly `mode`, owned by `owner`.
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), ProvisionError> {
    vitalgate_core::fs::write_atomic_with(
        path,
        contents,
        vitalgate_core::fs::Ownership { mode, owner },
    )
    .map_err(|source| ProvisionError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Gives `path` to `uid:gid` without following a symbolic link: opened with `O_NOFOLLOW` and
/// changed through the descriptor (`fchown`), so a link planted in a directory the service
/// user controls cannot turn root's chown against another file.
pub fn hand_over(path: &Path, uid: u32, gid: u32) -> Result<(), ProvisionError> {
    use rustix::fs::{Gid, Mode, OFlags, Uid};
    let err = |source: std::io::Error| ProvisionError::Write {
        path: path.to_owned(),
        source,
    };
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| {
        if e == rustix::io::Errno::LOOP {
            err(std::io::Error::other(
                "it is a symbolic link; refusing to change its owner",
            ))
        } else {
            err(e.into())
        }
    })?;
    let kind = rustix::fs::fstat(&fd).map_err(|e| err(e.into()))?.st_mode & libc::S_IFMT;
    if kind != libc::S_IFREG && kind != libc::S_IFDIR {
        return Err(err(std::io::Error::other(
            "not a regular file or directory; refusing to change its owner",
        )));
    }
    rustix::fs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| err(e.into()))
}

/// Creates a folder (and its parents) with `mode` if it does not exist.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<(), ProvisionError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| ProvisionError::Write {
            path: path.to_owned(),
            source,
        })
}

/// Whether an existing configuration may be replaced: it is absent, still the shipped
/// unprovisioned default, or `force` is given. Returns the gateway id it held, if any.
pub fn check_replace(path: &Path, force: bool) -> Result<Option<Config>, ProvisionError> {
    if !path.exists() {
        return Ok(None);
    }
    let existing = Config::load(path).ok();
    let gateway = existing
        .as_ref()
        .map(|c| c.gateway.id.to_string())
        .unwrap_or_else(|| "(unreadable)".into());
    if !force && gateway != DEFAULT_GATEWAY_ID {
        return Err(ProvisionError::Exists {
            path: path.to_owned(),
            gateway,
        });
    }
    Ok(existing)
}

/// Writes the secret and certificate files, then the configuration (keeping a backup of an
/// existing one as `<config>.bak`). Returns the backup's path when one was made.
pub fn write_files(plan: &Plan, targets: &Targets) -> Result<Option<PathBuf>, ProvisionError> {
    let owner = service_owner();
    ensure_dir(&targets.credentials_dir, 0o750)?;
    if let Some((_, gid)) = owner {
        // The service's group may enter the folder; each secret is still 0600.
        std::os::unix::fs::chown(&targets.credentials_dir, Some(0), Some(gid)).map_err(
            |source| ProvisionError::Write {
                path: targets.credentials_dir.clone(),
                source,
            },
        )?;
    }
    for f in &plan.files {
        let mode = if f.secret { 0o600 } else { 0o644 };
        write_atomic(&f.path, &f.contents, mode, owner.filter(|_| f.secret))?;
    }
    if let Some(dir) = targets.config.parent() {
        ensure_dir(dir, 0o755)?;
    }
    let mut backup = None;
    if targets.config.exists() {
        let mut b = targets.config.as_os_str().to_owned();
        b.push(".bak");
        let b = PathBuf::from(b);
        let old = std::fs::read(&targets.config).map_err(|source| ProvisionError::Write {
            path: targets.config.clone(),
            source,
        })?;
        write_atomic(&b, &old, 0o644, None)?;
        backup = Some(b);
    }
    write_atomic(&targets.config, plan.config_text.as_bytes(), 0o644, None)?;
    Ok(backup)
}

/// Records the bindings in the store (created if missing), each with an audit entry whose
/// actor is `provision`, through the same store code as the fleet's `bind` command.
pub async fn record_bindings(
    config: &Config,
    store_path: &Path,
    keying: crate::store::Keying,
    bindings: &[PlannedBinding],
) -> Result<(), crate::store::StoreError> {
    use crate::fleet::store::{FleetStore as _, SqlFleetStore};
    let opts = crate::daemon::writer_options(config, store_path.to_owned(), &keying);
    let (handle, thread) = tokio::task::spawn_blocking(move || crate::store::writer::start(opts))
        .await
        .map_err(|_| crate::store::StoreError::WriterStopped)??;
    let store = SqlFleetStore::new(handle.clone(), keying);
    let mut result = Ok(());
    for b in bindings {
        if let Err(e) = store
            .bind(
                b.transport,
                &b.address,
                b.user_index,
                &b.patient,
                "provision",
            )
            .await
        {
            result = Err(e);
            break;
        }
    }
    handle.shutdown().await;
    drop(store);
    drop(handle);
    let joined = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|_| crate::store::StoreError::WriterStopped)?;
    result.and(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root hands the store to the service user after recording bindings. A symbolic link
    /// the service user planted in its own directory (to `/etc/shadow`, say) is refused, and
    /// the file it points at keeps its owner.
    #[test]
    fn handing_over_refuses_a_planted_symlink() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"x").expect("write");
        let before = std::fs::metadata(&outside).expect("stat");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("mkdir");
        let planted = state.join("vitalgate.db-wal");
        std::os::unix::fs::symlink(&outside, &planted).expect("symlink");
        // Whoever runs the test can give a file to itself; the link must fail all the same.
        let (uid, gid) = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        let target = if uid == 0 { 65534 } else { uid };
        let e =
            hand_over(&planted, target, if uid == 0 { 65534 } else { gid }).expect_err("a symlink");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let after = std::fs::metadata(&outside).expect("stat");
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        // A regular file and the directory itself are handed over.
        let db = state.join("vitalgate.db");
        std::fs::write(&db, b"").expect("write");
        hand_over(&db, target, if uid == 0 { 65534 } else { gid }).expect("a file");
        hand_over(&state, target, if uid == 0 { 65534 } else { gid }).expect("a directory");
        assert_eq!(std::fs::metadata(&db).expect("stat").uid(), target);
    }

    const CERT: &str = include_str!("../testdata/enroll-ca.pem");
    const KEY: &str = include_str!("../testdata/enroll-client.key");

    fn targets(dir: &Path) -> Targets {
        Targets {
            config: dir.join("etc/vitalgate.toml"),
            state_dir: dir.join("state"),
            credentials_dir: dir.join("etc/credentials"),
        }
    }

    fn plan_text(dir: &Path, text: &str) -> Result<Plan, ProvisionError> {
        let p = dir.join("enroll.toml");
        std::fs::write(&p, text).expect("write enrollment");
        plan(&p, &targets(dir), Config::default())
    }

    fn base(extra: &str) -> String {
        format!(
            "[gateway]\nid = \"gw-7\"\n[fleet]\nbroker = \"mqtts://broker.example.org:8883\"\n\
             username = \"gw-7\"\npassword = \"one-time-token\"\nca = {{ pem = \"\"\"\n{CERT}\"\"\" }}\n{extra}"
        )
    }

    #[test]
    fn a_full_enrollment_plans_secret_files_and_a_config_without_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = base(&format!(
            "[[destination]]\nid = \"hospital\"\nbase_url = \"https://fhir.example.org/r4\"\n\
             [destination.auth]\ntype = \"bearer\"\ntoken = \"tok-123\"\n\
             [[binding]]\naddress = \"00:1c:05:ff:e8:74\"\nuser_index = 1\npatient = \"Patient/p-1\"\n\
             [[binding]]\naddress = \"00:1C:05:FF:E8:74\"\nuser_index = 2\npatient = \"Patient/p-2\"\n\
             [fleet.client_cert]\npem = \"\"\"\n{CERT}\"\"\"\n[fleet.client_key]\npem = \"\"\"\n{KEY}\"\"\"\n"
        ));
        let plan = plan_text(dir.path(), &text).expect("valid");
        assert_eq!(plan.config.gateway.id.as_str(), "gw-7");
        assert_eq!(plan.bindings.len(), 2);
        assert_eq!(plan.bindings[0].address, "00:1C:05:FF:E8:74");
        assert_eq!(
            plan.config.ble.allow.len(),
            1,
            "bound device is allowed once"
        );
        for secret in ["one-time-token", "tok-123", "Patient/p-1", "BEGIN CERT"] {
            assert!(
                !plan.config_text.contains(secret),
                "config holds {secret:?}:\n{}",
                plan.config_text
            );
        }
        let secret_names: Vec<String> = plan
            .files
            .iter()
            .filter(|f| f.secret)
            .map(|f| {
                f.path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into()
            })
            .collect();
        assert_eq!(
            secret_names,
            ["mqtt-client.key", "mqtt-password", "hospital-token"]
        );
        assert!(plan.config.fleet.client_cert_file.is_some());
        assert_eq!(
            plan.config.store.key_file,
            dir.path().join("etc/db.key"),
            "the key sits beside the config"
        );
    }

    #[test]
    fn everything_is_validated_and_errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: Vec<(String, &str)> = vec![
            (
                "[gateway]\nid = \"gw/7\"\n".into(),
                "gateway.id",
            ),
            (
                "[gateway]\nid = \"unprovisioned\"\n".into(),
                "placeholder",
            ),
            (
                "[gateway]\nid = \"g\"\n[fleet]\nbroker = \"mqtt://broker.example.org\"\nusername = \"u\"\npassword = \"p\"\n".into(),
                "use mqtts",
            ),
            (
                base("[[destination]]\nid = \"h\"\nbase_url = \"http://fhir.example.org/r4\"\n"),
                "plain http",
            ),
            (
                base("[[destination]]\nid = \"h\"\nbase_url = \"https://fhir.example.org/r4\"\n"),
                "needs authentication",
            ),
            (
                "[gateway]\nid = \"g\"\n[fleet]\nbroker = \"mqtts://b.example.org\"\nusername = \"u\"\npassword = \"p\"\nca = { pem = \"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n\" }\n".into(),
                "fleet.ca",
            ),
            (
                "[gateway]\nid = \"g\"\n[fleet]\nbroker = \"mqtts://b.example.org\"\n".into(),
                "broker credentials",
            ),
            (
                base("[[binding]]\naddress = \"00:1C:05\"\npatient = \"Patient/1\"\n"),
                "binding[0].address",
            ),
            (
                base("[[binding]]\naddress = \"00:1C:05:FF:E8:74\"\nuser_index = 300\npatient = \"Patient/1\"\n"),
                "binding[0].user_index",
            ),
            (
                base("[[binding]]\naddress = \"00:1C:05:FF:E8:74\"\npatient = \"Jane Doe\"\n"),
                "binding[0].patient",
            ),
            (
                base("[[binding]]\ntransport = \"serial\"\naddress = \"/dev/ttyX\"\npatient = \"Patient/1\"\n"),
                "not a configured serial port",
            ),
            (
                base("[gateway2]\n"),
                "unknown field",
            ),
        ];
        for (text, want) in cases {
            let e = plan_text(dir.path(), &text).expect_err(&text).to_string();
            assert!(e.contains(want), "{text}\n→ {e}");
            assert!(!e.contains("Jane Doe"), "patient text echoed: {e}");
        }
    }

    #[test]
    fn files_are_written_atomically_with_their_modes_and_a_backup() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let t = targets(dir.path());
        let plan = plan_text(dir.path(), &base("")).expect("valid");
        assert!(check_replace(&t.config, false).expect("absent").is_none());
        assert!(write_files(&plan, &t).expect("write").is_none());
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&t.config), 0o644);
        assert_eq!(mode(&t.credentials_dir.join("mqtt-password")), 0o600);
        assert_eq!(mode(&t.credentials_dir.join("mqtt-ca.pem")), 0o644);
        assert_eq!(
            std::fs::read_to_string(t.credentials_dir.join("mqtt-password")).expect("read"),
            "one-time-token\n"
        );
        Config::load(&t.config).expect("written config loads");

        let e = check_replace(&t.config, false).expect_err("provisioned");
        assert!(e.to_string().contains("--force"), "{e}");
        check_replace(&t.config, true).expect("forced");
        let backup = write_files(&plan, &t).expect("write").expect("backup");
        assert!(backup.exists());
        let leftovers: Vec<_> = std::fs::read_dir(t.config.parent().expect("dir"))
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}
