//! Fetching the artifact: disk-space check, HTTPS download (rustls; custom CA bundle and
//! proxy) resumable with `Range` requests into `<version>.part`, bounded retries with
//! jittered exponential backoff, and the size and SHA-256 check before anything is installed.

use std::io::{Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vitalgate_core::Backoff;

use tokio_util::sync::CancellationToken;

use super::install::hash_file;
use super::manifest::Manifest;
use crate::config::update::UpdateConfig;

/// Why the artifact could not be fetched or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("not enough disk space in {}: {available} bytes free, {needed} needed", .path.display())]
    NoSpace {
        path: PathBuf,
        available: u64,
        needed: u64,
    },
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up HTTPS: {0}")]
    Client(String),
    #[error("download failed after {attempts} attempt(s): {last}")]
    GaveUp { attempts: u32, last: String },
    #[error("artifact is {got} bytes, the manifest says {want}")]
    WrongSize { got: u64, want: u64 },
    #[error("artifact SHA-256 is {got}, the manifest says {want}")]
    WrongHash { got: String, want: String },
    #[error("cancelled")]
    Cancelled,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + use<> {
    let path = path.to_owned();
    move |source| DownloadError::Io { what, path, source }
}

/// Bytes available to an unprivileged user on the file system holding `path`.
pub fn available_bytes(path: &Path) -> Result<u64, DownloadError> {
    let s = rustix::fs::statvfs(path).map_err(|e| DownloadError::Io {
        what: "cannot statvfs",
        path: path.to_owned(),
        source: e.into(),
    })?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Checks that `need` bytes plus the margin fit on the file system of `path`.
pub fn check_space(path: &Path, need: u64, margin: u64) -> Result<(), DownloadError> {
    let available = available_bytes(path)?;
    let needed = need.saturating_add(margin);
    if available < needed {
        return Err(DownloadError::NoSpace {
            path: path.to_owned(),
            available,
            needed,
        });
    }
    Ok(())
}

/// The HTTPS client for downloads: the configured CA bundle *instead of* the built-in roots
/// when one is given, the configured proxy and no other. Redirects are followed (mirrors and
/// CDNs use them): what is downloaded is checked against the signed manifest's size and hash.
pub fn client(cfg: &UpdateConfig) -> Result<reqwest::Client, DownloadError> {
    use vitalgate_core::http::{self, ClientOptions, Trust};
    let mut o = ClientOptions::new("vitalgate-update", cfg.download_timeout);
    o.read_timeout = Some(cfg.download_timeout);
    o.follow_redirects = true;
    if let Some(bundle) = &cfg.ca_bundle {
        let pem = std::fs::read(bundle).map_err(io("cannot read CA bundle", bundle))?;
        o.trust = Trust::Only(
            http::pem_certificates(&pem, &bundle.display().to_string())
                .map_err(|e| DownloadError::Client(e.to_string()))?,
        );
    }
    if let Some(p) = &cfg.proxy {
        o.proxy = Some(
            reqwest::Proxy::https(p.as_str())
                .map_err(|e| DownloadError::Client(format!("proxy: {e}")))?,
        );
    }
    http::client(o).map_err(|e| DownloadError::Client(e.to_string()))
}

/// Where the artifact of `version` is downloaded to.
pub fn part_path(dir: &Path, version: &str) -> PathBuf {
    dir.join(format!("{version}.part"))
}

/// Downloads the artifact into its `.part` file, resuming what an earlier attempt (or an
/// earlier run of the agent) left, and retrying transient failures. Returns once the file
/// has exactly `manifest.size` bytes, fsynced. `progress` is told the bytes held so far.
pub async fn fetch(
    client: &reqwest::Client,
    manifest: &Manifest,
    part: &Path,
    retries: u32,
    cancel: &CancellationToken,
) -> Result<(), DownloadError> {
    let mut attempt = 0;
    // At least half of an exponential cap: 0.5-1 s, 1-2 s, ... up to 30-60 s.
    let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).at_least_half();
    loop {
        attempt += 1;
        let mut last = String::new();
        for url in &manifest.urls {
            match fetch_once(client, url, manifest.size, part, cancel).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => {
                    tracing::warn!(attempt, host = url.host_str().unwrap_or(""), reason = %why, "Artifact download interrupted; will resume.");
                    last = why;
                }
            }
        }
        if attempt > retries {
            return Err(DownloadError::GaveUp {
                attempts: attempt,
                last,
            });
        }
        let delay = retry.next_random_delay();
        tokio::select! {
            _ = cancel.cancelled() => return Err(DownloadError::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

enum Attempt {
    Retry(String),
    Fatal(DownloadError),
}

async fn fetch_once(
    client: &reqwest::Client,
    url: &url::Url,
    size: u64,
    part: &Path,
    cancel: &CancellationToken,
) -> Result<(), Attempt> {
    let fatal = Attempt::Fatal;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .map_err(|e| fatal(io("cannot open", part)(e)))?;
    let mut have = file
        .metadata()
        .map_err(|e| fatal(io("cannot stat", part)(e)))?
        .len();
    if have > size {
        // Longer than the artifact can be: start over.
        file.set_len(0)
            .map_err(|e| fatal(io("cannot truncate", part)(e)))?;
        have = 0;
    }
    if have == size {
        return Ok(());
    }
    let mut req = client.get(url.clone());
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let resp = tokio::select! {
        _ = cancel.cancelled() => return Err(fatal(DownloadError::Cancelled)),
        r = req.send() => r.map_err(|e| Attempt::Retry(describe(&e)))?,
    };
    let status = resp.status();
    if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
        file.set_len(0)
            .map_err(|e| fatal(io("cannot truncate", part)(e)))?;
        return Err(Attempt::Retry(
            "server refused the range; restarting".into(),
        ));
    }
    if status == reqwest::StatusCode::PARTIAL_CONTENT {
        let start = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok());
        if start != Some(have) {
            file.set_len(0)
                .map_err(|e| fatal(io("cannot truncate", part)(e)))?;
            return Err(Attempt::Retry(
                "server answered another range; restarting".into(),
            ));
        }
    } else if status.is_success() {
        // The whole file (a server without range support): start over.
        file.set_len(0)
            .map_err(|e| fatal(io("cannot truncate", part)(e)))?;
        have = 0;
    } else if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(Attempt::Retry(format!("HTTP {status}")));
    } else {
        // 403/404 on a presigned URL that expired is also here: the fleet must send a fresh
        // manifest, retrying the same URL cannot help.
        return Err(fatal(DownloadError::GaveUp {
            attempts: 1,
            last: format!("HTTP {status}"),
        }));
    }
    file.seek(std::io::SeekFrom::End(0))
        .map_err(|e| fatal(io("cannot seek", part)(e)))?;
    let mut resp = resp;
    loop {
        let chunk = tokio::select! {
            _ = cancel.cancelled() => None,
            c = resp.chunk() => Some(c),
        };
        let Some(chunk) = chunk else {
            let _ = file.sync_data();
            return Err(fatal(DownloadError::Cancelled));
        };
        match chunk {
            Ok(Some(bytes)) => {
                if have + bytes.len() as u64 > size {
                    file.set_len(0)
                        .map_err(|e| fatal(io("cannot truncate", part)(e)))?;
                    let _ = file.sync_data();
                    return Err(fatal(DownloadError::WrongSize {
                        got: have + bytes.len() as u64,
                        want: size,
                    }));
                }
                file.write_all(&bytes)
                    .map_err(|e| fatal(io("cannot write", part)(e)))?;
                have += bytes.len() as u64;
            }
            Ok(None) => break,
            Err(e) => {
                // Keep what arrived: the next attempt resumes after it.
                let _ = file.sync_data();
                return Err(Attempt::Retry(describe(&e)));
            }
        }
    }
    file.sync_data()
        .map_err(|e| fatal(io("cannot fsync", part)(e)))?;
    if have < size {
        return Err(Attempt::Retry(format!(
            "connection closed after {have} of {size} bytes"
        )));
    }
    Ok(())
}

/// An error's chain without the URL (which may carry a presigned token).
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.without_url_ref().to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut s = self.to_string();
        if let Some(u) = self.url() {
            s = s
                .replace(&format!(" ({u})"), "")
                .replace(u.as_str(), "<url>");
        }
        s
    }
}

/// Checks the downloaded file's size and SHA-256 against the manifest. A file that fails
/// is deleted, so the next attempt downloads it afresh.
pub fn verify_artifact(part: &Path, manifest: &Manifest) -> Result<(), DownloadError> {
    let len = std::fs::metadata(part)
        .map_err(io("cannot stat", part))?
        .len();
    if len != manifest.size {
        let _ = std::fs::remove_file(part);
        return Err(DownloadError::WrongSize {
            got: len,
            want: manifest.size,
        });
    }
    let got = hash_file(part).map_err(io("cannot read", part))?;
    if got != manifest.sha256 {
        let _ = std::fs::remove_file(part);
        return Err(DownloadError::WrongHash {
            got,
            want: manifest.sha256.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_for(bytes: &[u8]) -> Manifest {
        let v = serde_json::json!({
            "format": 1,
            "version": "0.2.0",
            "architectures": ["amd64"],
            "urls": ["https://updates.example.org/a"],
            "size": bytes.len(),
            "sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes)),
        });
        Manifest::parse(&serde_json::to_vec(&v).expect("json")).expect("manifest")
    }

    #[test]
    fn verify_artifact_accepts_the_right_bytes_and_deletes_wrong_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let part = dir.path().join("0.2.0.part");
        let m = manifest_for(b"the artifact");
        std::fs::write(&part, b"the artifact").expect("write");
        verify_artifact(&part, &m).expect("right bytes");
        std::fs::write(&part, b"the artifacT").expect("write");
        assert!(matches!(
            verify_artifact(&part, &m),
            Err(DownloadError::WrongHash { .. })
        ));
        assert!(!part.exists(), "a wrong artifact is deleted");
        std::fs::write(&part, b"the artif").expect("write");
        assert!(matches!(
            verify_artifact(&part, &m),
            Err(DownloadError::WrongSize { got: 9, want: 12 })
        ));
        assert!(!part.exists());
    }

    #[test]
    fn space_check_refuses_what_does_not_fit() {
        let dir = tempfile::tempdir().expect("tempdir");
        check_space(dir.path(), 1, 0).expect("one byte fits");
        let e = check_space(dir.path(), u64::MAX / 2, 0).expect_err("cannot fit");
        assert!(matches!(e, DownloadError::NoSpace { .. }), "{e}");
    }
}
