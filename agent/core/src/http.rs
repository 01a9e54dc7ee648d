//! The one builder of the agent's HTTP clients (FHIR delivery, SMART token requests, software
//! downloads). Every client speaks TLS through rustls only, ignores the service's environment
//! proxies (the configuration says what happens), and states its trust anchors explicitly:
//! [`Trust`] names whether configured CA certificates are *added to* or *replace* the built-in
//! roots, so the two configuration keys that differ in that respect cannot be confused.

use std::time::Duration;

pub use reqwest::{Certificate, Client, Identity, Proxy};

/// Which certificate authorities a client trusts.
#[derive(Debug, Default)]
pub enum Trust {
    /// The built-in web roots (webpki) and the system's.
    #[default]
    BuiltIn,
    /// The built-in roots and these (a hospital's private CA beside public ones).
    BuiltInAnd(Vec<Certificate>),
    /// Only these (a pinned update server).
    Only(Vec<Certificate>),
}

/// What a client is for and how it behaves.
#[derive(Debug)]
pub struct ClientOptions {
    /// `product/version`, e.g. `vitalgate/0.1.0`.
    pub user_agent: String,
    pub connect_timeout: Duration,
    /// The whole request, headers to last body byte; `None` for a streamed download.
    pub timeout: Option<Duration>,
    /// Between two reads of a streamed body.
    pub read_timeout: Option<Duration>,
    /// Refuse plain `http://` on every request this client makes, redirects included.
    pub https_only: bool,
    /// Follow redirects (up to 10). Off wherever a redirect would carry readings or
    /// credentials somewhere the configuration did not name.
    pub follow_redirects: bool,
    pub trust: Trust,
    /// A client certificate and key for mutual TLS.
    pub identity: Option<Identity>,
    /// The configured proxy; without one, no proxy at all.
    pub proxy: Option<Proxy>,
    /// Idle connections kept per host, and for how long.
    pub pool: Option<(usize, Duration)>,
}

impl ClientOptions {
    /// Defaults for a client of `product` (the user agent carries the agent's version).
    pub fn new(product: &str, connect_timeout: Duration) -> Self {
        Self {
            user_agent: format!("{product}/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout,
            timeout: None,
            read_timeout: None,
            https_only: true,
            follow_redirects: false,
            trust: Trust::BuiltIn,
            identity: None,
            proxy: None,
            pool: None,
        }
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{what}: {detail}")]
    Pem { what: String, detail: String },
    #[error("HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// Builds the client `opts` describe.
#[allow(clippy::disallowed_methods)] // The one sanctioned client builder.
pub fn client(opts: ClientOptions) -> Result<Client, HttpError> {
    let mut b = Client::builder()
        .use_rustls_tls()
        .user_agent(opts.user_agent)
        .connect_timeout(opts.connect_timeout)
        .https_only(opts.https_only)
        .redirect(if opts.follow_redirects {
            reqwest::redirect::Policy::limited(10)
        } else {
            reqwest::redirect::Policy::none()
        });
    if let Some(t) = opts.timeout {
        b = b.timeout(t);
    }
    if let Some(t) = opts.read_timeout {
        b = b.read_timeout(t);
    }
    if let Some((idle, keep)) = opts.pool {
        b = b.pool_max_idle_per_host(idle).pool_idle_timeout(keep);
    }
    match opts.trust {
        Trust::BuiltIn => {}
        Trust::BuiltInAnd(certs) => {
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        Trust::Only(certs) => {
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
    }
    if let Some(id) = opts.identity {
        b = b.identity(id);
    }
    b = match opts.proxy {
        Some(p) => b.proxy(p),
        None => b.no_proxy(),
    };
    Ok(b.build()?)
}

/// The certificates of a PEM bundle; an unparsable or empty bundle is an error naming `what`.
pub fn pem_certificates(pem: &[u8], what: &str) -> Result<Vec<Certificate>, HttpError> {
    let certs = Certificate::from_pem_bundle(pem).map_err(|e| HttpError::Pem {
        what: what.to_owned(),
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(HttpError::Pem {
            what: what.to_owned(),
            detail: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_garbled_bundle_is_refused_by_name() {
        let e = pem_certificates(b"", "CA bundle /etc/ca.pem").expect_err("empty");
        assert_eq!(e.to_string(), "CA bundle /etc/ca.pem: holds no certificate");
        let e = pem_certificates(
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            "CA bundle x",
        )
        .expect_err("garbled");
        assert!(e.to_string().starts_with("CA bundle x: "), "{e}");
    }

    #[test]
    fn every_option_combination_builds() {
        let mut o = ClientOptions::new("vitalgate", Duration::from_secs(5));
        o.timeout = Some(Duration::from_secs(30));
        o.read_timeout = Some(Duration::from_secs(30));
        o.pool = Some((2, Duration::from_secs(4)));
        o.follow_redirects = true;
        o.trust = Trust::Only(Vec::new());
        o.proxy = Some(Proxy::all("http://proxy.lan:3128").expect("proxy"));
        assert!(client(o).is_ok());
    }
}
