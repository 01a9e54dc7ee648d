//! Ed25519-signed JSON documents: keys and key ids, the canonical (signed) form, adding a
//! signature and checking one against trusted keys. Update manifests, desired configurations
//! and data-flow commands are all signed this way, so IT has one tool and one key format.
//!
//! Pure: no I/O, no clock.
//!
//! # Canonical form
//! The bytes that are signed are the document's JSON object **without its `signatures`
//! member**, serialized the way RFC 8785 (JSON Canonicalization Scheme) does for the subset
//! these documents use: object members sorted by key (UTF-16 code units), no whitespace,
//! strings with the minimal JSON escapes (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other
//! control characters as lowercase `\u00xx`, everything else literal UTF-8), integers in plain
//! decimal. Floating-point numbers and integers beyond ±2^53 are refused, so the form is
//! exactly JCS: signing does not depend on how the JSON was formatted, and any JCS library
//! reproduces the signed bytes.
//!
//! # Signatures
//! `"signatures": [{"key_id": "<16 hex>", "signature": "<base64 of 64 bytes>"}]`. A key id
//! is the first 16 hex digits of SHA-256 over the raw 32-byte public key; it only selects
//! which trusted key to try, the signature is what is trusted. Several signatures may be
//! present (an old and a new key while keys rotate); one that verifies by a trusted key is
//! enough.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The member that carries the signatures and is left out of the signed bytes.
pub const SIGNATURES: &str = "signatures";
/// The member naming the gateway a signed document is for.
pub const GATEWAY: &str = "gateway";
/// Largest integer JCS (and so the canonical form) represents exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// More signatures than this on one document are refused before any is checked.
const MAX_SIGNATURES: usize = 8;

/// One signature over the canonical document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The signing key's id (see the module docs).
    pub key_id: String,
    /// Base64 (standard alphabet, padded) of the 64-byte Ed25519 signature.
    pub signature: String,
}

/// Why a signature was not accepted. Messages are safe for logs and MQTT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the document carries no signature")]
    Unsigned,
    #[error("no trusted keys are configured for this kind of document")]
    NoTrustedKeys,
    #[error("signed only by untrusted keys ({key_ids})")]
    UntrustedKey { key_ids: String },
    #[error("signature by trusted key {key_id} does not verify")]
    BadSignature { key_id: String },
    #[error("bad key: {detail}")]
    BadKey { detail: String },
    #[error("{detail}")]
    Malformed { detail: String },
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
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, SignatureError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| SignatureError::BadKey {
            detail: "not a valid Ed25519 public key".into(),
        })?;
        Ok(Self {
            id: key_id(bytes),
            key,
        })
    }

    /// Parses the text form: base64 of the raw 32-byte key (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, SignatureError> {
        let raw = B64
            .decode(text.trim())
            .map_err(|e| SignatureError::BadKey {
                detail: format!("not base64: {e}"),
            })?;
        let bytes: [u8; 32] = raw
            .try_into()
            .map_err(|v: Vec<u8>| SignatureError::BadKey {
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

/// A private signing key, held offline by IT. The seed is zeroed when the key is dropped
/// (ed25519-dalek's `zeroize`), and `Debug` shows only the key id.
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
    pub fn from_base64(text: &str) -> Result<Self, SignatureError> {
        let raw = zeroize::Zeroizing::new(B64.decode(text.trim()).map_err(|e| {
            SignatureError::BadKey {
                detail: format!("private key is not base64: {e}"),
            }
        })?);
        let seed: zeroize::Zeroizing<[u8; 32]> =
            zeroize::Zeroizing::new(raw.as_slice().try_into().map_err(|_| {
                SignatureError::BadKey {
                    detail: format!("an Ed25519 private key has 32 bytes, got {}", raw.len()),
                }
            })?);
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

    fn sign_bytes(&self, bytes: &[u8]) -> String {
        B64.encode(self.0.sign(bytes).to_bytes())
    }
}

fn key_id(public: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// The canonical form of a document object: JCS without the `signatures` member.
pub fn canonical_unsigned(value: &Value) -> Result<Vec<u8>, SignatureError> {
    let Value::Object(map) = value else {
        return Err(SignatureError::Malformed {
            detail: "a signed document is a JSON object".into(),
        });
    };
    let mut out = Vec::with_capacity(512);
    write_object(
        &mut out,
        map.iter().filter(|(k, _)| k.as_str() != SIGNATURES),
    )?;
    Ok(out)
}

/// The signatures a document carries (none when the member is absent).
pub fn signatures_of(value: &Value) -> Result<Vec<Signature>, SignatureError> {
    match value.get(SIGNATURES) {
        None => Ok(Vec::new()),
        Some(v) => {
            let list: Vec<Signature> =
                serde_json::from_value(v.clone()).map_err(|e| SignatureError::Malformed {
                    detail: format!("`{SIGNATURES}` is not a list of signatures: {e}"),
                })?;
            if list.len() > MAX_SIGNATURES {
                return Err(SignatureError::Malformed {
                    detail: format!("more than {MAX_SIGNATURES} signatures"),
                });
            }
            Ok(list)
        }
    }
}

/// Adds `key`'s signature to the document object, replacing an earlier one by the same key
/// and keeping the others (so a document can carry an old and a new key while they rotate).
pub fn add_signature(value: &mut Value, key: &PrivateKey) -> Result<(), SignatureError> {
    let canonical = canonical_unsigned(value)?;
    let id = key.public().id;
    let sig = Signature {
        key_id: id.clone(),
        signature: key.sign_bytes(&canonical),
    };
    let Some(map) = value.as_object_mut() else {
        return Err(SignatureError::Malformed {
            detail: "a signed document is a JSON object".into(),
        });
    };
    let sigs = map
        .entry(SIGNATURES)
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(list) = sigs else {
        return Err(SignatureError::Malformed {
            detail: format!("`{SIGNATURES}` is not a list"),
        });
    };
    list.retain(|s| s.get("key_id").and_then(Value::as_str) != Some(id.as_str()));
    list.push(
        serde_json::to_value(sig).map_err(|e| SignatureError::Malformed {
            detail: e.to_string(),
        })?,
    );
    Ok(())
}

/// Checks `signatures` over `canonical` against `trusted`; returns the id of the trusted key
/// whose signature verified.
pub fn verify_canonical(
    canonical: &[u8],
    signatures: &[Signature],
    trusted: &[PublicKey],
) -> Result<String, SignatureError> {
    if trusted.is_empty() {
        return Err(SignatureError::NoTrustedKeys);
    }
    if signatures.is_empty() {
        return Err(SignatureError::Unsigned);
    }
    let mut bad = None;
    for sig in signatures {
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
            return Ok(key.id.clone());
        }
        bad = Some(sig.key_id.clone());
    }
    Err(match bad {
        Some(key_id) => SignatureError::BadSignature { key_id },
        None => SignatureError::UntrustedKey {
            key_ids: signatures
                .iter()
                // Key ids come from the sender: only well-formed ones are echoed.
                .map(|s| {
                    if s.key_id.len() == 16 && s.key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
                        s.key_id.as_str()
                    } else {
                        "(malformed id)"
                    }
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", "),
        },
    })
}

/// Checks a document object's own signatures against `trusted`.
pub fn verify(value: &Value, trusted: &[PublicKey]) -> Result<String, SignatureError> {
    let signatures = signatures_of(value)?;
    let canonical = canonical_unsigned(value)?;
    verify_canonical(&canonical, &signatures, trusted)
}

fn write_object<'a>(
    out: &mut Vec<u8>,
    members: impl Iterator<Item = (&'a String, &'a Value)>,
) -> Result<(), SignatureError> {
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

fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<(), SignatureError> {
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
                return Err(SignatureError::Malformed {
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
mod tests {
    use super::*;
    use serde_json::json;

    fn key(n: u8) -> PrivateKey {
        PrivateKey::from_seed(&[n; 32])
    }

    #[test]
    fn the_canonical_form_is_rfc_8785_for_integers_and_strings() {
        // RFC 8785 section 3.2.3: members sorted by UTF-16 code units; 3.2.2.2: minimal
        // string escapes, lowercase \u00xx for the other control characters.
        let v = json!({"b": [1, -2, true, null], "a": "\u{1}\n\"é", "signatures": []});
        assert_eq!(
            String::from_utf8(canonical_unsigned(&v).expect("canonical")).expect("utf8"),
            "{\"a\":\"\\u0001\\n\\\"é\",\"b\":[1,-2,true,null]}"
        );
        assert!(canonical_unsigned(&json!({"x": 1.5})).is_err());
        assert!(canonical_unsigned(&json!({"x": 9007199254740993u64})).is_err());
        assert!(canonical_unsigned(&json!([1])).is_err());
    }

    #[test]
    fn a_signature_verifies_by_its_key_only_and_over_every_member() {
        let mut doc = json!({"version": 2, "gateway": "gw-1"});
        add_signature(&mut doc, &key(1)).expect("sign");
        assert_eq!(
            verify(&doc, &[key(1).public()]).expect("verifies"),
            key(1).public().id()
        );
        assert!(matches!(
            verify(&doc, &[key(2).public()]),
            Err(SignatureError::UntrustedKey { .. })
        ));
        assert_eq!(verify(&doc, &[]), Err(SignatureError::NoTrustedKeys));
        let mut changed = doc.clone();
        changed["gateway"] = json!("gw-2");
        assert!(matches!(
            verify(&changed, &[key(1).public()]),
            Err(SignatureError::BadSignature { .. })
        ));
        assert_eq!(
            verify(&json!({"version": 2}), &[key(1).public()]),
            Err(SignatureError::Unsigned)
        );
        // A second signature by another key is added beside the first; re-signing replaces.
        add_signature(&mut doc, &key(2)).expect("sign");
        add_signature(&mut doc, &key(2)).expect("sign");
        assert_eq!(signatures_of(&doc).expect("sigs").len(), 2);
        assert!(verify(&doc, &[key(2).public()]).is_ok());
    }

    #[test]
    fn hostile_signature_lists_are_refused_without_echoing_them() {
        let doc = json!({"v": 1, "signatures": "x"});
        assert!(matches!(
            verify(&doc, &[key(1).public()]),
            Err(SignatureError::Malformed { .. })
        ));
        let many: Vec<_> = (0..9)
            .map(|_| json!({"key_id": "0011223344556677", "signature": "AA=="}))
            .collect();
        assert!(matches!(
            verify(&json!({"v": 1, "signatures": many}), &[key(1).public()]),
            Err(SignatureError::Malformed { .. })
        ));
        let doc = json!({"v": 1, "signatures": [{"key_id": "Jane Doe", "signature": "AA=="}]});
        let e = verify(&doc, &[key(1).public()]).expect_err("untrusted");
        assert!(!e.to_string().contains("Jane"), "{e}");
    }

    #[test]
    fn private_keys_never_show_in_debug() {
        let k = key(3);
        let shown = format!("{k:?}");
        assert!(shown.contains(k.public().id()) && !shown.contains(&k.to_base64()));
    }
}
