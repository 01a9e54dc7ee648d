//! The signed update manifest: its schema, its canonical (signed) form, Ed25519 signatures
//! with key ids, and the checks that decide whether this gateway may install it.
//!
//! Pure: no I/O, no clock (the caller passes "now"), so every rule is unit-tested and fuzzed.
//!
//! # Canonical form and signatures
//! Those of every signed fleet document ([`crate::signed`]): JCS (RFC 8785) of the manifest
//! object without its `signatures` member, Ed25519 signatures with key ids.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::signed::{self, MAX_SAFE_INTEGER, SignatureError};
pub use crate::signed::{PrivateKey, PublicKey, Signature};

/// The only manifest format this agent understands.
pub const FORMAT: u32 = 1;
/// Manifests larger than this are refused before parsing (a manifest is a few hundred bytes).
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// A manifest as IT writes and signs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: u32,
    /// The version being installed (semver).
    pub version: semver::Version,
    /// Debian architecture names the artifact runs on: `amd64`, `arm64`, `armhf`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// Rust target triples the artifact runs on, e.g. `aarch64-unknown-linux-gnu`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Where to download the artifact, tried in order. HTTPS only.
    pub urls: Vec<url::Url>,
    /// Artifact size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the artifact.
    pub sha256: String,
    /// Allows installing a version older than the running one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
    /// The oldest running version this update may be applied on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_from_version: Option<semver::Version>,
    /// RFC 3339 time after which the manifest is refused, e.g. `2026-12-31T00:00:00Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Signatures over the canonical form; not part of what is signed.
    #[serde(default)]
    pub signatures: Vec<Signature>,
}

/// Why a manifest was refused. Messages are safe for logs and MQTT (no secrets, no PHI).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {size} bytes, more than the {MAX_MANIFEST_BYTES} allowed")]
    TooLarge { size: usize },
    #[error("manifest is not valid JSON: {detail}")]
    Syntax { detail: String },
    #[error("manifest is malformed: {detail}")]
    Malformed { detail: String },
    #[error("manifest format {found} is not supported (this agent reads format {FORMAT})")]
    Format { found: u32 },
    #[error("manifest carries no signature")]
    Unsigned,
    #[error("no trusted update keys are configured: updates are refused")]
    NoTrustedKeys,
    #[error("manifest is signed only by untrusted keys ({key_ids})")]
    UntrustedKey { key_ids: String },
    #[error("signature by trusted key {key_id} does not verify")]
    BadSignature { key_id: String },
    #[error("bad key: {detail}")]
    BadKey { detail: String },
    #[error("artifact is for {wanted}, this gateway is {arch} ({target})")]
    WrongArchitecture {
        wanted: String,
        arch: String,
        target: String,
    },
    #[error("version {version} is already running")]
    SameVersion { version: semver::Version },
    #[error(
        "version {version} is older than the running {running}, and the manifest does not allow a downgrade"
    )]
    Downgrade {
        version: semver::Version,
        running: semver::Version,
    },
    #[error("this update needs version {min} or newer, {running} is running")]
    TooOld {
        min: semver::Version,
        running: semver::Version,
    },
    #[error("manifest expired at {expires}")]
    Expired { expires: String },
    #[error(
        "manifest has no `expires`: a manifest must expire (within {} days, {} hours for a downgrade), so a captured one cannot be replayed forever",
        MAX_LIFETIME.as_secs() / 86400,
        MAX_DOWNGRADE_LIFETIME.as_secs() / 3600
    )]
    NoExpiry,
    #[error("manifest expires more than {limit} ahead; sign it with a nearer `expires`")]
    ExpiresTooFar { limit: String },
    #[error(
        "version {version} is below this gateway's anti-rollback floor {floor} (the highest version it committed), and the manifest does not allow a downgrade"
    )]
    BelowFloor {
        version: semver::Version,
        floor: semver::Version,
    },
    #[error(
        "version {version} is below the minimum version {minimum} set by the update trust document; nothing older is installed"
    )]
    BelowMinimum {
        version: semver::Version,
        minimum: semver::Version,
    },
}

/// The furthest ahead a manifest may expire.
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 86400);
/// The furthest ahead a downgrade manifest (a version older than the running one) may expire.
pub const MAX_DOWNGRADE_LIFETIME: Duration = Duration::from_secs(72 * 3600);

/// The version floors an update must respect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Floors {
    /// The highest version ever committed on this gateway (persisted): nothing older is
    /// installed unless the manifest allows a downgrade, so an old signed manifest replayed
    /// cannot roll the gateway back.
    pub committed: Option<semver::Version>,
    /// The update trust document's `min_version`: nothing older, ever.
    pub minimum: Option<semver::Version>,
}

impl From<SignatureError> for ManifestError {
    fn from(e: SignatureError) -> Self {
        match e {
            SignatureError::Unsigned => Self::Unsigned,
            SignatureError::NoTrustedKeys => Self::NoTrustedKeys,
            SignatureError::UntrustedKey { key_ids } => Self::UntrustedKey { key_ids },
            SignatureError::BadSignature { key_id } => Self::BadSignature { key_id },
            SignatureError::BadKey { detail } => Self::BadKey { detail },
            SignatureError::Malformed { detail } => Self::Malformed { detail },
        }
    }
}

/// What the running agent is, for the compatibility checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub version: semver::Version,
    /// Debian architecture name.
    pub arch: String,
    /// Rust target triple.
    pub target: String,
}

impl Platform {
    /// The platform this binary was built for, with the given running version.
    pub fn this(version: semver::Version) -> Self {
        Self {
            version,
            arch: debian_arch().to_owned(),
            target: target_triple().to_owned(),
        }
    }
}

/// The Debian name of the architecture this binary was built for.
pub fn debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        // Gateways run hard-float ARMv7 (Raspberry Pi OS, Debian armhf).
        "arm" => "armhf",
        "x86" => "i386",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The target triple this binary was built for (the Linux targets the project ships).
pub fn target_triple() -> &'static str {
    if cfg!(all(target_arch = "x86_64", target_env = "musl")) {
        "x86_64-unknown-linux-musl"
    } else if cfg!(target_arch = "x86_64") {
        "x86_64-unknown-linux-gnu"
    } else if cfg!(all(target_arch = "aarch64", target_env = "musl")) {
        "aarch64-unknown-linux-musl"
    } else if cfg!(target_arch = "aarch64") {
        "aarch64-unknown-linux-gnu"
    } else if cfg!(all(target_arch = "arm", target_env = "musl")) {
        "armv7-unknown-linux-musleabihf"
    } else if cfg!(target_arch = "arm") {
        "armv7-unknown-linux-gnueabihf"
    } else {
        std::env::consts::ARCH
    }
}

/// A manifest whose signature has been checked against the trusted keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub manifest: Manifest,
    /// The trusted key that signed it.
    pub key_id: String,
}

impl Manifest {
    /// Parses a manifest without checking its signature.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        Ok(parse_both(bytes)?.0)
    }

    /// The expiry as a time, if there is one.
    pub fn expiry(&self) -> Result<Option<SystemTime>, ManifestError> {
        self.expires
            .as_deref()
            .map(|t| {
                humantime::parse_rfc3339(t).map_err(|e| ManifestError::Malformed {
                    detail: format!("`expires` is not an RFC 3339 time ({e})"),
                })
            })
            .transpose()
    }

    /// Structural rules serde cannot express.
    fn validate(&self) -> Result<(), ManifestError> {
        let bad = |detail: String| Err(ManifestError::Malformed { detail });
        if self.format != FORMAT {
            return Err(ManifestError::Format { found: self.format });
        }
        if self.architectures.is_empty() && self.targets.is_empty() {
            return bad("neither `architectures` nor `targets` is given".into());
        }
        if self.urls.is_empty() {
            return bad("`urls` is empty".into());
        }
        if let Some(u) = self.urls.iter().find(|u| u.scheme() != "https") {
            return bad(format!(
                "artifact URLs must be https, got scheme `{}`",
                u.scheme()
            ));
        }
        if self.size == 0 || self.size > MAX_SAFE_INTEGER {
            return bad(format!("`size` {} is out of range", self.size));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return bad("`sha256` must be 64 lowercase hex digits".into());
        }
        // The version names a directory on disk.
        if !self
            .version
            .to_string()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-+".contains(&b))
        {
            return bad("`version` has characters not allowed in a directory name".into());
        }
        self.expiry()?;
        Ok(())
    }
}

/// Parses `bytes` into the typed manifest and the canonical signed bytes.
fn parse_both(bytes: &[u8]) -> Result<(Manifest, Vec<u8>), ManifestError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge { size: bytes.len() });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ManifestError::Syntax {
        detail: e.to_string(),
    })?;
    // A signature covers the manifest as IT wrote it: canonicalize what was received, not a
    // re-serialization of what this version of the agent understood of it.
    let canonical = canonical_unsigned(&value)?;
    let manifest: Manifest = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ManifestError::Malformed {
            detail: format!("`{path}`: {}", e.into_inner()),
        }
    })?;
    manifest.validate()?;
    Ok((manifest, canonical))
}

/// The canonical (signed) bytes of a manifest, after checking that it is one.
pub fn canonical(bytes: &[u8]) -> Result<Vec<u8>, ManifestError> {
    Ok(parse_both(bytes)?.1)
}

/// Signs a manifest with `key`: returns the manifest JSON (pretty-printed, which the signature
/// does not depend on) with the signature added, replacing an earlier one by the same key.
/// Other signatures are kept, so a manifest can carry signatures by an old and a new key
/// while keys rotate.
pub fn sign(bytes: &[u8], key: &PrivateKey) -> Result<Vec<u8>, ManifestError> {
    parse_both(bytes)?;
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| ManifestError::Syntax {
        detail: e.to_string(),
    })?;
    signed::add_signature(&mut value, key)?;
    let mut out = serde_json::to_vec_pretty(&value).map_err(|e| ManifestError::Malformed {
        detail: e.to_string(),
    })?;
    out.push(b'\n');
    Ok(out)
}

/// Checks the signatures of `bytes` against `trusted` keys and parses it.
pub fn verify(bytes: &[u8], trusted: &[PublicKey]) -> Result<Verified, ManifestError> {
    let (manifest, canonical) = parse_both(bytes)?;
    verify_parsed(manifest, &canonical, trusted)
}

fn verify_parsed(
    manifest: Manifest,
    canonical: &[u8],
    trusted: &[PublicKey],
) -> Result<Verified, ManifestError> {
    let key_id = signed::verify_canonical(canonical, &manifest.signatures, trusted)?;
    Ok(Verified { manifest, key_id })
}

/// Whether this gateway may install the (verified) manifest now.
pub fn check_applicable(
    manifest: &Manifest,
    platform: &Platform,
    floors: &Floors,
    now: SystemTime,
) -> Result<(), ManifestError> {
    let arch_ok = manifest.architectures.contains(&platform.arch)
        || manifest.targets.contains(&platform.target);
    if !arch_ok {
        let wanted = manifest
            .architectures
            .iter()
            .chain(&manifest.targets)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ManifestError::WrongArchitecture {
            wanted,
            arch: platform.arch.clone(),
            target: platform.target.clone(),
        });
    }
    let Some(expiry) = manifest.expiry()? else {
        return Err(ManifestError::NoExpiry);
    };
    if now >= expiry {
        return Err(ManifestError::Expired {
            expires: manifest.expires.clone().unwrap_or_default(),
        });
    }
    // A downgrade is anything older than what this gateway runs or ever committed.
    let reference = match &floors.committed {
        Some(f) if f.cmp_precedence(&platform.version) == std::cmp::Ordering::Greater => f,
        _ => &platform.version,
    };
    let downgrade = manifest.version.cmp_precedence(reference) == std::cmp::Ordering::Less;
    let limit = if downgrade {
        MAX_DOWNGRADE_LIFETIME
    } else {
        MAX_LIFETIME
    };
    if expiry.duration_since(now).unwrap_or_default() > limit {
        return Err(ManifestError::ExpiresTooFar {
            limit: humantime::format_duration(limit).to_string(),
        });
    }
    if let Some(min) = &manifest.min_from_version
        && platform.version < *min
    {
        return Err(ManifestError::TooOld {
            min: min.clone(),
            running: platform.version.clone(),
        });
    }
    // Build metadata is ignored by semver precedence; two builds that differ only there are
    // the same version to us too.
    match manifest.version.cmp_precedence(&platform.version) {
        std::cmp::Ordering::Equal => {
            return Err(ManifestError::SameVersion {
                version: manifest.version.clone(),
            });
        }
        std::cmp::Ordering::Less if !manifest.allow_downgrade => {
            return Err(ManifestError::Downgrade {
                version: manifest.version.clone(),
                running: platform.version.clone(),
            });
        }
        _ => {}
    }
    if let Some(minimum) = &floors.minimum
        && manifest.version.cmp_precedence(minimum) == std::cmp::Ordering::Less
    {
        return Err(ManifestError::BelowMinimum {
            version: manifest.version.clone(),
            minimum: minimum.clone(),
        });
    }
    if let Some(floor) = &floors.committed
        && manifest.version.cmp_precedence(floor) == std::cmp::Ordering::Less
        && !manifest.allow_downgrade
    {
        return Err(ManifestError::BelowFloor {
            version: manifest.version.clone(),
            floor: floor.clone(),
        });
    }
    Ok(())
}

/// How long until the manifest expires (None: never).
pub fn time_left(manifest: &Manifest, now: SystemTime) -> Option<Duration> {
    manifest
        .expiry()
        .ok()
        .flatten()
        .map(|e| e.duration_since(now).unwrap_or_default())
}

/// The canonical form of a manifest object: JCS without the `signatures` member.
fn canonical_unsigned(value: &Value) -> Result<Vec<u8>, ManifestError> {
    if !value.is_object() {
        return Err(ManifestError::Malformed {
            detail: "a manifest is a JSON object".into(),
        });
    }
    Ok(signed::canonical_unsigned(value)?)
}

#[cfg(test)]
mod tests;
