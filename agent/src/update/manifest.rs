//! The signed update manifest: its schema, its canonical (signed) form, Ed25519 signatures
//! with key ids, and the checks that decide whether this gateway may install it.
//!
//! Pure: no I/O, no clock (the caller passes "now"), so every rule is unit-tested and fuzzed.
//!
//! # Canonical form
//! The bytes that are signed are the manifest JSON object **without its `signatures` member**,
//! serialized the way RFC 8785 (JSON Canonicalization Scheme) does for the subset manifests
//! use: object members sorted by key (UTF-16 code units, which for the ASCII keys of a
//! manifest is plain byte order), no whitespace, strings with the minimal JSON escapes
//! (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other control characters as lowercase `\u00xx`,
//! everything else literal UTF-8), integers in plain decimal. Floating-point numbers are
//! refused (no manifest field is fractional), and so are integers above 2^53, so the form is
//! exactly JCS. Signing therefore does not depend on how the JSON file was formatted, and
//! any JCS library can reproduce the signed bytes.
//!
//! # Key ids
//! A key id is the first 16 hex digits of SHA-256 over the raw 32-byte Ed25519 public key.
//! It only selects which trusted key to try; the signature is what is trusted.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The only manifest format this agent understands.
pub const FORMAT: u32 = 1;
/// Manifests larger than this are refused before parsing (a manifest is a few hundred bytes).
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Largest integer JCS (and so our canonical form) represents exactly.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

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

/// One signature over the canonical manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The signing key's id (see the module docs).
    pub key_id: String,
    /// Base64 (standard alphabet, padded) of the 64-byte Ed25519 signature.
    pub signature: String,
}

/// A trusted public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, ManifestError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| ManifestError::BadKey {
            detail: "not a valid Ed25519 public key".into(),
        })?;
        Ok(Self {
            id: key_id(bytes),
            key,
        })
    }

    /// Parses the text form: base64 of the raw 32-byte key (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, ManifestError> {
        let raw = B64.decode(text.trim()).map_err(|e| ManifestError::BadKey {
            detail: format!("not base64: {e}"),
        })?;
        let bytes: [u8; 32] = raw.try_into().map_err(|v: Vec<u8>| ManifestError::BadKey {
            detail: format!("an Ed25519 public key has 32 bytes, got {}", v.len()),
        })?;
        Self::from_bytes(&bytes)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.key.as_bytes())
    }
}

/// A private signing key, held offline by IT.
pub struct PrivateKey(SigningKey);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.public().id())
    }
}

impl PrivateKey {
    /// A key from 32 bytes of seed (which must come from a CSPRNG).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// Parses the text form: base64 of the 32-byte seed.
    pub fn from_base64(text: &str) -> Result<Self, ManifestError> {
        let raw = B64.decode(text.trim()).map_err(|e| ManifestError::BadKey {
            detail: format!("private key is not base64: {e}"),
        })?;
        let seed: [u8; 32] = raw.try_into().map_err(|v: Vec<u8>| ManifestError::BadKey {
            detail: format!("an Ed25519 private key has 32 bytes, got {}", v.len()),
        })?;
        Ok(Self::from_seed(&seed))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0.to_bytes())
    }

    pub fn public(&self) -> PublicKey {
        let key = self.0.verifying_key();
        PublicKey {
            id: key_id(key.as_bytes()),
            key,
        }
    }
}

fn key_id(public: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
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
    let (_, canonical) = parse_both(bytes)?;
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| ManifestError::Syntax {
        detail: e.to_string(),
    })?;
    let id = key.public().id;
    let sig = Signature {
        key_id: id.clone(),
        signature: B64.encode(key.0.sign(&canonical).to_bytes()),
    };
    let Some(map) = value.as_object_mut() else {
        return Err(ManifestError::Malformed {
            detail: "a manifest is a JSON object".into(),
        });
    };
    let sigs = map
        .entry("signatures")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(list) = sigs else {
        return Err(ManifestError::Malformed {
            detail: "`signatures` is not a list".into(),
        });
    };
    list.retain(|s| s.get("key_id").and_then(Value::as_str) != Some(id.as_str()));
    list.push(
        serde_json::to_value(sig).map_err(|e| ManifestError::Malformed {
            detail: e.to_string(),
        })?,
    );
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
    if trusted.is_empty() {
        return Err(ManifestError::NoTrustedKeys);
    }
    if manifest.signatures.is_empty() {
        return Err(ManifestError::Unsigned);
    }
    let mut bad = None;
    for sig in &manifest.signatures {
        let Some(key) = trusted.iter().find(|k| k.id == sig.key_id) else {
            continue;
        };
        let ok = B64
            .decode(&sig.signature)
            .ok()
            .and_then(|raw| <[u8; 64]>::try_from(raw).ok())
            .map(|raw| ed25519_dalek::Signature::from_bytes(&raw))
            .is_some_and(|s| key.key.verify_strict(canonical, &s).is_ok());
        if ok {
            let key_id = key.id.clone();
            return Ok(Verified { manifest, key_id });
        }
        bad = Some(sig.key_id.clone());
    }
    Err(match bad {
        Some(key_id) => ManifestError::BadSignature { key_id },
        None => ManifestError::UntrustedKey {
            key_ids: manifest
                .signatures
                .iter()
                .map(|s| s.key_id.as_str())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", "),
        },
    })
}

/// Whether this gateway may install the (verified) manifest now.
pub fn check_applicable(
    manifest: &Manifest,
    platform: &Platform,
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
    if let Some(expiry) = manifest.expiry()?
        && now >= expiry
    {
        return Err(ManifestError::Expired {
            expires: manifest.expires.clone().unwrap_or_default(),
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
        std::cmp::Ordering::Equal => Err(ManifestError::SameVersion {
            version: manifest.version.clone(),
        }),
        std::cmp::Ordering::Less if !manifest.allow_downgrade => Err(ManifestError::Downgrade {
            version: manifest.version.clone(),
            running: platform.version.clone(),
        }),
        _ => Ok(()),
    }
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
    let Value::Object(map) = value else {
        return Err(ManifestError::Malformed {
            detail: "a manifest is a JSON object".into(),
        });
    };
    let mut out = Vec::with_capacity(512);
    write_object(
        &mut out,
        map.iter().filter(|(k, _)| k.as_str() != "signatures"),
    )?;
    Ok(out)
}

fn write_object<'a>(
    out: &mut Vec<u8>,
    members: impl Iterator<Item = (&'a String, &'a Value)>,
) -> Result<(), ManifestError> {
    let mut members: Vec<_> = members.collect();
    members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    out.push(b'{');
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, k);
        out.push(b':');
        write_value(out, v)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<(), ManifestError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) if u <= MAX_SAFE_INTEGER => {
                out.extend_from_slice(u.to_string().as_bytes())
            }
            (None, Some(i)) if i.unsigned_abs() <= MAX_SAFE_INTEGER => {
                out.extend_from_slice(i.to_string().as_bytes())
            }
            _ => {
                return Err(ManifestError::Malformed {
                    detail: format!("number {n} is not an integer of at most 2^53"),
                });
            }
        },
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map.iter())?,
    }
    Ok(())
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests;
