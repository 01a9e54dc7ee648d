//! `[update]`: signed software updates — which keys are trusted, where versions are
//! installed and downloaded, how long a new version has to prove itself, and how the
//! artifact is fetched (CA bundle, proxy).

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

pub const DEFAULT_INSTALL_DIR: &str = "/var/lib/vitalgate/install";
pub const DEFAULT_DOWNLOAD_DIR: &str = "/var/lib/vitalgate/update";
pub const DEFAULT_HEALTH_WINDOW: Duration = Duration::from_secs(120);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_ATTEMPTS: u32 = 3;
pub const DEFAULT_DOWNLOAD_RETRIES: u32 = 10;
pub const DEFAULT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_SPACE_MARGIN: ByteSize = ByteSize::mib(32);

/// `[update]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Trusted Ed25519 public keys, each the base64 of the raw 32-byte key (as written by
    /// `vitalgate update keygen`). Several keys allow rotation. No key: updates are refused.
    pub trusted_keys: Vec<String>,
    /// Files holding further trusted public keys, one base64 key per file.
    pub trusted_key_files: Vec<PathBuf>,
    /// Root keys (base64 Ed25519 public keys, kept offline) that sign update trust documents:
    /// revoking and adding update keys, setting the minimum version. None: trust documents
    /// are refused.
    pub root_keys: Vec<String>,
    /// Where versions are installed: `versions/<version>/vitalgate`, the `current` symlink,
    /// and the `pending-update` marker the launcher reads. Must match the launcher's
    /// `VITALGATE_INSTALL_DIR`.
    pub install_dir: PathBuf,
    /// Where artifacts are downloaded (`<version>.part` while incomplete) and the update
    /// operation is persisted.
    pub download_dir: PathBuf,
    /// How long a new version must stay healthy before the update is committed.
    #[serde(with = "humantime_serde")]
    pub health_window: Duration,
    /// How often the health checks run within the window.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// How many times the new version is started before the launcher rolls back.
    pub attempts: u32,
    /// How many times a download is retried (with jittered backoff) before the update fails.
    pub download_retries: u32,
    /// Connect and read timeout of the download.
    #[serde(with = "humantime_serde")]
    pub download_timeout: Duration,
    /// Free space to leave on the download and install file systems beyond the artifact.
    pub space_margin: ByteSize,
    /// PEM bundle of CA certificates trusted for downloads instead of the system roots.
    pub ca_bundle: Option<PathBuf>,
    /// HTTPS proxy for downloads, e.g. "http://proxy.example.org:3128".
    pub proxy: Option<url::Url>,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            trusted_keys: Vec::new(),
            trusted_key_files: Vec::new(),
            root_keys: Vec::new(),
            install_dir: PathBuf::from(DEFAULT_INSTALL_DIR),
            download_dir: PathBuf::from(DEFAULT_DOWNLOAD_DIR),
            health_window: DEFAULT_HEALTH_WINDOW,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            attempts: DEFAULT_ATTEMPTS,
            download_retries: DEFAULT_DOWNLOAD_RETRIES,
            download_timeout: DEFAULT_DOWNLOAD_TIMEOUT,
            space_margin: DEFAULT_SPACE_MARGIN,
            ca_bundle: None,
            proxy: None,
        }
    }
}

impl UpdateConfig {
    /// Checks that serde cannot express; `(key, message)` like the rest of the config.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (i, k) in self.trusted_keys.iter().enumerate() {
            if let Err(e) = crate::signed::PublicKey::from_base64(k) {
                return Err((format!("update.trusted_keys[{i}]"), e.to_string()));
            }
        }
        for (i, k) in self.root_keys.iter().enumerate() {
            if let Err(e) = crate::signed::PublicKey::from_base64(k) {
                return Err((format!("update.root_keys[{i}]"), e.to_string()));
            }
        }
        if !self.install_dir.is_absolute() {
            return Err((
                "update.install_dir".into(),
                "must be an absolute path".into(),
            ));
        }
        if !self.download_dir.is_absolute() {
            return Err((
                "update.download_dir".into(),
                "must be an absolute path".into(),
            ));
        }
        if self.attempts == 0 || self.attempts > 20 {
            return Err(("update.attempts".into(), "must be between 1 and 20".into()));
        }
        if self.health_interval.is_zero() || self.health_interval > self.health_window {
            return Err((
                "update.health_interval".into(),
                "must be non-zero and at most update.health_window".into(),
            ));
        }
        if self.download_timeout < Duration::from_secs(1) {
            return Err((
                "update.download_timeout".into(),
                "must be at least 1s".into(),
            ));
        }
        if let Some(p) = &self.proxy
            && !matches!(p.scheme(), "http" | "https")
        {
            return Err((
                "update.proxy".into(),
                format!("unsupported proxy scheme `{}`", p.scheme()),
            ));
        }
        Ok(())
    }
}
