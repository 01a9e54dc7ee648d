//! The update trust document: how a leaked update signing key is retired over the air, a new
//! one added, and a minimum version set below which nothing is installed again.
//!
//! ```json
//! {"format": 1, "type": "update-trust", "sequence": 3,
//!  "update_keys": ["<base64 public key>"], "revoked": ["<key id>"],
//!  "min_version": "1.4.0", "signatures": [...]}
//! ```
//!
//! It is signed ([`crate::signed`]) by a **root key** from `[update] root_keys`: offline keys
//! that sign nothing but these documents, so a leaked update key cannot revoke the others or
//! lower the minimum. `sequence` only grows (a replayed older document is refused). The
//! document applies on top of the configuration: the trusted update keys are the file's plus
//! `update_keys`, less every `revoked` id (which also retires operator keys); `min_version`
//! is the absolute floor, which not even a signed downgrade passes.
//!
//! Pure: parsing and the rules. [`super::Updater`] persists the document (`trust.json` in the
//! download directory) and applies it.

use serde::{Deserialize, Serialize};

use crate::signed::{self, PublicKey, Signature};

/// The only format understood.
pub const FORMAT: u32 = 1;
/// The `type` member that tells a trust document from a manifest.
pub const TYPE: &str = "update-trust";
/// Largest document accepted.
pub const MAX_BYTES: usize = 64 * 1024;

/// A trust document as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustDocument {
    pub format: u32,
    #[serde(rename = "type")]
    pub kind: String,
    /// Strictly greater than the last applied document's.
    pub sequence: u64,
    /// Update signing keys trusted besides the configuration's (base64 public keys).
    #[serde(default)]
    pub update_keys: Vec<String>,
    /// Key ids no longer trusted, update and operator keys alike.
    #[serde(default)]
    pub revoked: Vec<String>,
    /// Nothing older is installed again, whatever a manifest allows.
    #[serde(default)]
    pub min_version: Option<semver::Version>,
    #[serde(default)]
    pub signatures: Vec<Signature>,
}

/// Why a trust document was refused. Safe for logs and MQTT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("trust document is {0} bytes, more than the {MAX_BYTES} allowed")]
    TooLarge(usize),
    #[error("trust document is malformed: {0}")]
    Malformed(String),
    #[error("trust document is not signed by a root key: {0}")]
    Signature(#[from] signed::SignatureError),
    #[error("trust document sequence {got} is not above the applied {applied}")]
    Stale { got: u64, applied: u64 },
}

impl TrustDocument {
    /// Parses `bytes` and checks the signature against the root keys.
    pub fn verify(bytes: &[u8], root_keys: &[PublicKey]) -> Result<(Self, String), TrustError> {
        if bytes.len() > MAX_BYTES {
            return Err(TrustError::TooLarge(bytes.len()));
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| TrustError::Malformed(e.to_string()))?;
        let canonical = signed::canonical_unsigned(&value)?;
        let doc: Self = serde_path_to_error::deserialize(value)
            .map_err(|e| TrustError::Malformed(format!("`{}`: {}", e.path(), e.inner())))?;
        if doc.format != FORMAT || doc.kind != TYPE {
            return Err(TrustError::Malformed(format!(
                "not a format {FORMAT} \"{TYPE}\" document"
            )));
        }
        for (i, k) in doc.update_keys.iter().enumerate() {
            PublicKey::from_base64(k)
                .map_err(|e| TrustError::Malformed(format!("update_keys[{i}]: {e}")))?;
        }
        if let Some(i) = doc
            .revoked
            .iter()
            .position(|id| id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(TrustError::Malformed(format!(
                "revoked[{i}] is not a key id (16 hex digits)"
            )));
        }
        let key_id = signed::verify_canonical(&canonical, &doc.signatures, root_keys)?;
        Ok((doc, key_id))
    }

    /// Whether this document may replace the applied one.
    pub fn follows(&self, applied: Option<&Self>) -> Result<(), TrustError> {
        match applied {
            Some(a) if self.sequence <= a.sequence => Err(TrustError::Stale {
                got: self.sequence,
                applied: a.sequence,
            }),
            _ => Ok(()),
        }
    }

    pub fn is_revoked(&self, key_id: &str) -> bool {
        self.revoked.iter().any(|r| r.eq_ignore_ascii_case(key_id))
    }

    /// The update keys to trust: the configuration's and the document's, less the revoked.
    pub fn update_keys(&self, configured: &[PublicKey]) -> Vec<PublicKey> {
        let mut keys: Vec<PublicKey> = configured.to_vec();
        for k in &self.update_keys {
            if let Ok(k) = PublicKey::from_base64(k)
                && !keys.iter().any(|have| have.id() == k.id())
            {
                keys.push(k);
            }
        }
        keys.retain(|k| !self.is_revoked(k.id()));
        keys
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::signed::PrivateKey;

    fn root() -> PrivateKey {
        PrivateKey::from_seed(&[0x70; 32])
    }

    fn doc(v: serde_json::Value, key: &PrivateKey) -> Vec<u8> {
        let mut v = v;
        signed::add_signature(&mut v, key).expect("sign");
        serde_json::to_vec(&v).expect("json")
    }

    #[test]
    fn a_root_signed_document_retires_a_key_adds_one_and_sets_the_minimum() {
        let old = PrivateKey::from_seed(&[1; 32]).public();
        let new = PrivateKey::from_seed(&[2; 32]).public();
        let bytes = doc(
            json!({"format": 1, "type": "update-trust", "sequence": 1,
                   "update_keys": [new.to_base64()], "revoked": [old.id()],
                   "min_version": "1.4.0"}),
            &root(),
        );
        let (d, by) = TrustDocument::verify(&bytes, &[root().public()]).expect("valid");
        assert_eq!(by, root().public().id());
        let keys = d.update_keys(std::slice::from_ref(&old));
        assert_eq!(keys, vec![new]);
        assert_eq!(d.min_version, Some(semver::Version::new(1, 4, 0)));
        // Only a later sequence replaces it.
        assert!(d.follows(None).is_ok());
        assert!(matches!(d.follows(Some(&d)), Err(TrustError::Stale { .. })));
    }

    #[test]
    fn an_update_key_cannot_sign_a_trust_document_and_junk_is_refused() {
        let update_key = PrivateKey::from_seed(&[1; 32]);
        let bytes = doc(
            json!({"format": 1, "type": "update-trust", "sequence": 9, "revoked": []}),
            &update_key,
        );
        assert!(matches!(
            TrustDocument::verify(&bytes, &[root().public()]),
            Err(TrustError::Signature(_))
        ));
        for bad in [
            json!({"format": 1, "type": "manifest", "sequence": 1}),
            json!({"format": 1, "type": "update-trust", "sequence": 1, "revoked": ["Jane Doe"]}),
            json!({"format": 1, "type": "update-trust", "sequence": 1, "update_keys": ["AAAA"]}),
            json!({"format": 1, "type": "update-trust", "sequence": 1, "extra": true}),
        ] {
            let e = TrustDocument::verify(&doc(bad.clone(), &root()), &[root().public()])
                .expect_err("refused");
            assert!(matches!(e, TrustError::Malformed(_)), "{bad}: {e}");
            assert!(!e.to_string().contains("Jane"), "{e}");
        }
        assert!(TrustDocument::verify(b"\xff", &[root().public()]).is_err());
    }
}
