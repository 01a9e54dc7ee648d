//! Per-destination HTTP client and credentials: rustls with the web roots plus an optional
//! CA bundle, an optional client certificate (mutual TLS), an optional proxy; and the
//! `Authorization` header for none, a static bearer token, OAuth 2.0 client credentials, or
//! SMART Backend Services (private_key_jwt, RS384/ES384, a fresh `jti` per token request,
//! tokens cached until shortly before they expire).
//!
//! Secrets come from `$CREDENTIALS_DIRECTORY/<credential>` or a file that only its owner can
//! read, are held in memory only, and are never logged (errors name the file, not content).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::DestinationConfig;
use crate::config::destination::{AuthConfig, SecretSource, SigningAlgorithm};
use crate::secret::Secret;

/// Why a destination cannot be reached or authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("destination {destination}: secret {what}: {detail}")]
    Secret {
        destination: String,
        what: String,
        detail: String,
    },
    #[error("destination {destination}: {what} {}: {source}", .path.display())]
    File {
        destination: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("destination {destination}: TLS or proxy setup: {detail}")]
    Client { destination: String, detail: String },
    /// The token endpoint could not be reached (retry later).
    #[error("token endpoint unreachable: {0}")]
    TokenTransient(String),
    /// The token endpoint refused us (configuration or registration problem).
    #[error("token endpoint refused the request: HTTP {status} {error}")]
    TokenRefused { status: u16, error: String },
}

/// Reads a secret: the systemd credential first, then the file (which must not be readable
/// by group or others).
pub fn read_secret(destination: &str, what: &str, s: &SecretSource) -> Result<Vec<u8>, AuthError> {
    let err = |detail: String| AuthError::Secret {
        destination: destination.to_owned(),
        what: what.to_owned(),
        detail,
    };
    if let (Some(name), Some(dir)) = (&s.credential, std::env::var_os("CREDENTIALS_DIRECTORY")) {
        let p = Path::new(&dir).join(name);
        if p.exists() {
            return std::fs::read(&p).map_err(|e| err(format!("{}: {e}", p.display())));
        }
    }
    let Some(file) = &s.file else {
        return Err(err(format!(
            "credential {:?} is not in $CREDENTIALS_DIRECTORY and no file is configured",
            s.credential.as_deref().unwrap_or("")
        )));
    };
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).map_err(|e| err(format!("{}: {e}", file.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "{} is readable by group or others; chmod 600 it",
            file.display()
        )));
    }
    std::fs::read(file).map_err(|e| err(format!("{}: {e}", file.display())))
}

fn read_file(destination: &str, what: &'static str, p: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(p).map_err(|source| AuthError::File {
        destination: destination.to_owned(),
        what,
        path: p.to_owned(),
        source,
    })
}

/// Largest token-endpoint response read (a token response is a few hundred bytes).
const MAX_TOKEN_RESPONSE: usize = 64 << 10;

/// Reads a response body of at most `limit` bytes; a longer one is an error, read no further.
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("response body larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("response body larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The HTTP client for one destination.
pub fn client(cfg: &DestinationConfig) -> Result<reqwest::Client, AuthError> {
    use vitalgate_core::http::{self, ClientOptions, Trust};
    let id = cfg.id.to_string();
    let fail = |detail: String| AuthError::Client {
        destination: id.clone(),
        detail,
    };
    let mut o = ClientOptions::new(
        "vitalgate",
        cfg.request_timeout.min(Duration::from_secs(10)),
    );
    o.timeout = Some(cfg.request_timeout);
    // Servers close idle keep-alive connections (Node after 5 s, others later); reusing one
    // just as it is closed fails the request. Dropping ours first avoids the race.
    o.pool = Some((2, Duration::from_secs(4)));
    // A redirect would take readings and the Authorization header to wherever the server
    // says; the configuration names the server, so none is followed (a 3xx is an answer).
    o.follow_redirects = false;
    // An https destination never falls back to plain http, on any request it makes.
    o.https_only = cfg.base_url.as_url().scheme() == "https";
    if let Some(ca) = &cfg.ca_file {
        // `ca_file` adds to the built-in roots (a hospital's private CA beside public ones).
        let pem = read_file(&id, "CA bundle", ca)?;
        let what = format!("CA bundle {}", ca.display());
        o.trust = Trust::BuiltInAnd(
            http::pem_certificates(&pem, &what).map_err(|e| fail(e.to_string()))?,
        );
    }
    if let (Some(cert), Some(key)) = (&cfg.client_cert_file, &cfg.client_key_file) {
        let mut pem = read_file(&id, "client certificate", cert)?;
        pem.push(b'\n');
        pem.extend(read_secret(
            &id,
            "client key",
            &SecretSource {
                credential: None,
                file: Some(key.clone()),
            },
        )?);
        o.identity = Some(
            reqwest::Identity::from_pem(&pem)
                .map_err(|e| fail(format!("client certificate/key: {e}")))?,
        );
    }
    if let Some(p) = &cfg.proxy {
        o.proxy = Some(reqwest::Proxy::all(p.as_str()).map_err(|e| fail(format!("proxy: {e}")))?);
    }
    http::client(o).map_err(|e| fail(e.to_string()))
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    access_token: Secret<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Debug)]
struct Cached {
    token: Secret<String>,
    refresh_at: Instant,
}

/// The credentials of one destination, with its token cache.
#[derive(Debug)]
pub struct Credentials {
    destination: String,
    auth: AuthConfig,
    static_token: Option<Secret<String>>,
    secret: Option<Secret<Vec<u8>>>,
    cache: Mutex<Option<Cached>>,
    skew: Duration,
    /// Token requests made (for tests and status).
    pub minted: std::sync::atomic::AtomicU64,
}

impl Credentials {
    /// Loads the secrets the configuration names (once, at start).
    pub fn load(cfg: &DestinationConfig) -> Result<Self, AuthError> {
        let id = cfg.id.to_string();
        let (static_token, secret) = match &cfg.auth {
            AuthConfig::None => (None, None),
            AuthConfig::Bearer { token } => {
                let raw = Secret::new(read_secret(&id, "bearer token", token)?);
                let t = std::str::from_utf8(raw.expose())
                    .map_err(|_| AuthError::Secret {
                        destination: id.clone(),
                        what: "bearer token".into(),
                        detail: "not UTF-8".into(),
                    })?
                    .trim()
                    .to_owned();
                (Some(Secret::new(t)), None)
            }
            AuthConfig::ClientCredentials { client_secret, .. } => (
                None,
                Some(Secret::new(read_secret(
                    &id,
                    "client secret",
                    client_secret,
                )?)),
            ),
            AuthConfig::SmartBackend {
                private_key,
                algorithm,
                ..
            } => {
                let pem = Secret::new(read_secret(&id, "private key", private_key)?);
                // Parse now, so a bad key is a start-up error rather than a delivery one.
                encoding_key(*algorithm, pem.expose()).map_err(|detail| AuthError::Secret {
                    destination: id.clone(),
                    what: "private key".into(),
                    detail,
                })?;
                (None, Some(pem))
            }
        };
        Ok(Self {
            destination: id,
            auth: cfg.auth.clone(),
            static_token,
            secret,
            cache: Mutex::new(None),
            skew: crate::config::destination::DEFAULT_TOKEN_SKEW,
            minted: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The `Authorization` header value, minting a token when none is cached.
    pub async fn header(&self, http: &reqwest::Client) -> Result<Option<String>, AuthError> {
        match &self.auth {
            AuthConfig::None => Ok(None),
            AuthConfig::Bearer { .. } => Ok(self
                .static_token
                .as_ref()
                .map(|t| format!("Bearer {}", t.expose()))),
            AuthConfig::ClientCredentials { .. } | AuthConfig::SmartBackend { .. } => {
                let mut cache = self.cache.lock().await;
                if let Some(c) = cache.as_ref()
                    && Instant::now() < c.refresh_at
                {
                    return Ok(Some(format!("Bearer {}", c.token.expose())));
                }
                let fresh = self.mint(http).await?;
                let header = format!("Bearer {}", fresh.token.expose());
                *cache = Some(fresh);
                Ok(Some(header))
            }
        }
    }

    /// Forgets the cached token (after a 401), so the next request mints a new one.
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    /// Whether a 401 can be cured by a new token.
    pub fn can_refresh(&self) -> bool {
        matches!(
            self.auth,
            AuthConfig::ClientCredentials { .. } | AuthConfig::SmartBackend { .. }
        )
    }

    async fn mint(&self, http: &reqwest::Client) -> Result<Cached, AuthError> {
        let secret = self
            .secret
            .as_ref()
            .map(|s| s.expose().as_slice())
            .unwrap_or_default();
        let req = match &self.auth {
            AuthConfig::ClientCredentials {
                token_url,
                client_id,
                scope,
                ..
            } => {
                let mut form = vec![("grant_type", "client_credentials".to_owned())];
                if let Some(s) = scope {
                    form.push(("scope", s.clone()));
                }
                http.post(token_url.as_url().clone())
                    .basic_auth(client_id, Some(String::from_utf8_lossy(secret).trim()))
                    .form(&form)
            }
            AuthConfig::SmartBackend {
                token_url,
                client_id,
                algorithm,
                key_id,
                scope,
                ..
            } => {
                let assertion = client_assertion(
                    *algorithm,
                    secret,
                    key_id,
                    client_id,
                    token_url.as_url().as_str(),
                    now_s(),
                )
                .map_err(|detail| AuthError::Secret {
                    destination: self.destination.clone(),
                    what: "private key".into(),
                    detail,
                })?;
                let mut form = vec![
                    ("grant_type", "client_credentials".to_owned()),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                    ),
                    ("client_assertion", assertion),
                ];
                if let Some(s) = scope {
                    form.push(("scope", s.clone()));
                }
                http.post(token_url.as_url().clone()).form(&form)
            }
            AuthConfig::None | AuthConfig::Bearer { .. } => {
                return Err(AuthError::TokenRefused {
                    status: 0,
                    error: "no token endpoint configured".into(),
                });
            }
        };
        let resp = req
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| AuthError::TokenTransient(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        let body = read_capped(resp, MAX_TOKEN_RESPONSE)
            .await
            .map_err(AuthError::TokenTransient)?;
        if status >= 500 || status == 429 || status == 408 {
            return Err(AuthError::TokenTransient(format!("HTTP {status}")));
        }
        if !(200..300).contains(&status) {
            // OAuth errors are `{"error": "invalid_client", ...}`: the code only.
            // The code is echoed into logs and events: only a well-formed OAuth error code
            // (RFC 6749 section 5.2: printable ASCII) of sensible length passes.
            let error = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .filter(|e| {
                    e.len() <= 64
                        && e.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                })
                .unwrap_or_default();
            return Err(AuthError::TokenRefused { status, error });
        }
        let t: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| AuthError::TokenRefused {
                status,
                error: format!("unreadable token response: {e}"),
            })?;
        self.minted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The server's `expires_in` is untrusted: clamped, so a huge one cannot overflow the
        // refresh time and a zero one cannot make every request mint a token.
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(300).clamp(10, 24 * 3600));
        // Refresh a little early; for very short tokens, at half their life.
        let early = self.skew.min(lifetime / 2);
        tracing::info!(destination = %self.destination, expires_in_s = lifetime.as_secs(), "Access token obtained.");
        Ok(Cached {
            token: t.access_token,
            refresh_at: Instant::now() + lifetime - early,
        })
    }
}

fn now_s() -> u64 {
    vitalgate_core::time::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks that `pem` is a signing key for `alg` (provisioning validates before it writes).
pub fn check_signing_key(alg: SigningAlgorithm, pem: &[u8]) -> Result<(), String> {
    encoding_key(alg, pem).map(drop)
}

fn encoding_key(
    alg: SigningAlgorithm,
    pem: &[u8],
) -> Result<(jsonwebtoken::Algorithm, jsonwebtoken::EncodingKey), String> {
    match alg {
        SigningAlgorithm::RS384 => jsonwebtoken::EncodingKey::from_rsa_pem(pem)
            .map(|k| (jsonwebtoken::Algorithm::RS384, k))
            .map_err(|e| format!("not an RSA private key in PEM: {e}")),
        SigningAlgorithm::ES384 => jsonwebtoken::EncodingKey::from_ec_pem(pem)
            .map(|k| (jsonwebtoken::Algorithm::ES384, k))
            .map_err(|e| format!("not a P-384 EC private key in PEM (PKCS#8): {e}")),
    }
}

/// The SMART authentication JWT: `iss` = `sub` = client id, `aud` = the token endpoint,
/// `exp` four minutes ahead (SMART allows at most five), a fresh `jti`, `kid` and
/// `typ: JWT` in the header.
pub fn client_assertion(
    alg: SigningAlgorithm,
    pem: &[u8],
    kid: &str,
    client_id: &str,
    token_url: &str,
    now: u64,
) -> Result<String, String> {
    let (algorithm, key) = encoding_key(alg, pem)?;
    let mut header = jsonwebtoken::Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    header.typ = Some("JWT".to_owned());
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + 240,
        "iat": now,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())
}
