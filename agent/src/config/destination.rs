//! `[[destination]]`: one FHIR R4 endpoint (a hospital EHR, a state Medicaid gateway), how to
//! authenticate to it, how to reach it, how to batch, and which readings it gets.
//!
//! Secrets are never inline: each is a file path or a systemd credential name (looked up in
//! `$CREDENTIALS_DIRECTORY` first). Plain `http` is refused except to loopback (checked by
//! [`EndpointUrl`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::types::{EndpointUrl, Name};

pub const DEFAULT_BATCH_MAX: usize = 100;
pub const DEFAULT_BATCH_LINGER: Duration = Duration::from_millis(200);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_millis(500);
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(300);
pub const DEFAULT_TIME_HOLD_RETRY: Duration = Duration::from_secs(30);
pub const DEFAULT_TOKEN_SKEW: Duration = Duration::from_secs(30);

/// One FHIR endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// A short name, used in the store, status output and telemetry.
    pub id: Name,
    /// The FHIR R4 base URL. `https`, or `http` to a loopback host only.
    pub base_url: EndpointUrl,
    /// How to authenticate. Default: none (only allowed to a loopback host).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Extra trusted CA certificates (PEM), added to the built-in web roots. Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS. Needs `client_key_file`. Default: none.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS. Default: none.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// HTTP(S) proxy for this destination, e.g. `http://proxy.clinic.lan:3128`. Default: none
    /// (no proxy; environment variables are ignored so behaviour is what the file says).
    #[serde(default)]
    pub proxy: Option<url::Url>,
    /// Most readings in one transaction Bundle. Default: 100.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// How long a reading may wait for others to fill a batch. Default: 200ms.
    #[serde(default = "default_batch_linger", with = "humantime_serde")]
    pub batch_linger: Duration,
    /// Per-request timeout. Default: 30s.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First retry delay; doubles per failure (full jitter). Default: 500ms.
    #[serde(default = "default_retry_base", with = "humantime_serde")]
    pub retry_base: Duration,
    /// Longest retry delay (unless the server's Retry-After asks for more). Default: 5m.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// Which readings go here. Default: all.
    #[serde(default)]
    pub route: RouteConfig,
}

fn default_batch_max() -> usize {
    DEFAULT_BATCH_MAX
}
fn default_batch_linger() -> Duration {
    DEFAULT_BATCH_LINGER
}
fn default_request_timeout() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}
fn default_retry_base() -> Duration {
    DEFAULT_RETRY_BASE
}
fn default_retry_max() -> Duration {
    DEFAULT_RETRY_MAX
}

/// A secret: a file, or a systemd credential name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// The systemd credential holding it (`LoadCredential=`), tried first.
    #[serde(default)]
    pub credential: Option<String>,
    /// A file holding it; must not be readable by group or others.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// `[destination.auth]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "kebab-case")]
pub enum AuthConfig {
    /// No authentication: development against a loopback server only.
    #[default]
    None,
    /// `Authorization: Bearer <token>` with a static token.
    Bearer { token: SecretSource },
    /// OAuth 2.0 client credentials with a client secret (HTTP Basic to the token endpoint).
    ClientCredentials {
        token_url: EndpointUrl,
        client_id: String,
        client_secret: SecretSource,
        #[serde(default)]
        scope: Option<String>,
    },
    /// SMART Backend Services: client credentials with a private_key_jwt assertion signed
    /// with RS384 or ES384 (a fresh `jti` per token request).
    SmartBackend {
        token_url: EndpointUrl,
        client_id: String,
        /// The PEM private key (RSA for RS384, P-384 EC for ES384).
        private_key: SecretSource,
        algorithm: SigningAlgorithm,
        /// The `kid` of the key in the JWKS registered with the server.
        key_id: String,
        #[serde(default)]
        scope: Option<String>,
    },
}

impl AuthConfig {
    /// The secrets this authentication reads.
    pub fn secrets(&self) -> Vec<&SecretSource> {
        match self {
            AuthConfig::None => vec![],
            AuthConfig::Bearer { token } => vec![token],
            AuthConfig::ClientCredentials { client_secret, .. } => vec![client_secret],
            AuthConfig::SmartBackend { private_key, .. } => vec![private_key],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    RS384,
    ES384,
}

/// `[destination.route]`: every list given must match; an empty list matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Patient bindings (`Patient/<id>` or `<system>|<value>`) whose readings go here.
    pub patients: Vec<String>,
    /// Device types: bp, pulse-oximeter, thermometer, scale, body-composition, glucose,
    /// cgm, generic.
    pub device_types: Vec<String>,
    /// Measurement MDC codes, e.g. 150020 for blood pressure.
    pub measurements: Vec<u32>,
}

pub const DEVICE_TYPES: &[&str] = &[
    "bp",
    "pulse-oximeter",
    "thermometer",
    "scale",
    "body-composition",
    "glucose",
    "cgm",
    "generic",
];

impl DestinationConfig {
    /// Checks what the types alone cannot: returns the key and the problem.
    pub fn check(&self, index: usize) -> Result<(), (String, String)> {
        let key = |k: &str| format!("destination[{index}].{k}");
        let loopback = self.base_url.as_url().host().is_some_and(|h| match h {
            url::Host::Domain(d) => d == "localhost",
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
        });
        if self.auth == AuthConfig::None && !loopback {
            return Err((
                key("auth"),
                "a destination other than loopback needs authentication".into(),
            ));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err((
                key("client_cert_file"),
                "client_cert_file and client_key_file go together".into(),
            ));
        }
        if self.batch_max == 0 || self.batch_max > 1000 {
            return Err((key("batch_max"), "must be 1..=1000".into()));
        }
        if self.retry_base.is_zero() || self.retry_max < self.retry_base {
            return Err((
                key("retry_max"),
                "retry_base must be positive and at most retry_max".into(),
            ));
        }
        if let Some(p) = &self.proxy
            && !matches!(p.scheme(), "http" | "https")
        {
            return Err((
                key("proxy"),
                "must be an http:// or https:// proxy URL".into(),
            ));
        }
        for t in &self.route.device_types {
            if !DEVICE_TYPES.contains(&t.as_str()) {
                return Err((
                    key("route.device_types"),
                    format!("{t:?} is not one of {}", DEVICE_TYPES.join(", ")),
                ));
            }
        }
        for s in self.auth.secrets() {
            if s.credential.is_none() && s.file.is_none() {
                return Err((
                    key("auth"),
                    "a secret needs `credential` or `file` (never inline)".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("t.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn destinations_parse_with_defaults_and_every_auth_kind() {
        let c = parse(
            "[[destination]]\nid = \"local\"\nbase_url = \"http://127.0.0.1:8080/fhir\"\n\
             [[destination]]\nid = \"payer\"\nbase_url = \"https://payer.example/r4\"\n\
             proxy = \"http://proxy.lan:3128\"\nca_file = \"/etc/ca.pem\"\n\
             [destination.auth]\ntype = \"smart-backend\"\ntoken_url = \"https://payer.example/token\"\n\
             client_id = \"gw\"\nalgorithm = \"ES384\"\nkey_id = \"k1\"\n\
             [destination.auth.private_key]\nfile = \"/etc/vitalgate/k.pem\"\n\
             [destination.route]\ndevice_types = [\"bp\"]\nmeasurements = [150020]\n",
        )
        .expect("valid");
        let local = &c.destinations[0];
        assert_eq!(local.auth, super::AuthConfig::None);
        assert_eq!(local.batch_max, super::DEFAULT_BATCH_MAX);
        assert_eq!(local.batch_linger, super::DEFAULT_BATCH_LINGER);
        let payer = &c.destinations[1];
        assert!(matches!(
            payer.auth,
            super::AuthConfig::SmartBackend {
                algorithm: super::SigningAlgorithm::ES384,
                ..
            }
        ));
        assert_eq!(payer.route.measurements, [150020]);
    }

    #[test]
    fn unsafe_or_inconsistent_destinations_are_refused_with_their_key() {
        let cases = [
            (
                "[[destination]]\nid = \"h\"\nbase_url = \"https://h.example/r4\"\n",
                "destination[0].auth",
            ),
            (
                "[[destination]]\nid = \"h\"\nbase_url = \"http://h.example/r4\"\n",
                "plain http",
            ),
            (
                "[[destination]]\nid = \"h\"\nbase_url = \"https://h.example/r4\"\n\
                 [destination.auth]\ntype = \"bearer\"\n[destination.auth.token]\n",
                "never inline",
            ),
            (
                "[[destination]]\nid = \"h\"\nbase_url = \"https://h.example/r4\"\n\
                 [destination.auth]\ntype = \"bearer\"\ntoken = \"s3cret\"\n",
                "destination",
            ),
            (
                "[[destination]]\nid = \"l\"\nbase_url = \"http://localhost/r4\"\n\
                 client_cert_file = \"/c.pem\"\n",
                "client_key_file go together",
            ),
            (
                "[[destination]]\nid = \"l\"\nbase_url = \"http://localhost/r4\"\n\
                 [destination.route]\ndevice_types = [\"toaster\"]\n",
                "not one of",
            ),
            (
                "[[destination]]\nid = \"l\"\nbase_url = \"http://localhost/r4\"\nbatch_max = 0\n",
                "batch_max",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).expect_err(text);
            assert!(e.contains(want), "{text}\n→ {e}");
        }
    }
}
