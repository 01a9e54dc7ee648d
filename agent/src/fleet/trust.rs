//! Which fleet documents must be signed by an operator, and the check that they are.
//!
//! The broker is not trusted: anyone who can publish on a gateway's topics (a broker
//! administrator, a compromised broker, a leaked gateway credential) could otherwise decide
//! where readings go or whose they are. So a desired configuration, and every command that
//! changes data flow or identity ([`SIGNED_COMMANDS`]), must carry an Ed25519 signature
//! ([`crate::signed`], the update manifest's form) by a key in `[fleet] operator_keys`, and
//! must name the gateway it is for (`"gateway"`) and, for a command, its own id (`"id"`, the
//! last level of its topic). Both are inside the signed bytes, so a signed document cannot be
//! replayed to another gateway or under another command id; a command id is run once.
//!
//! The other commands may come unsigned because they cannot move or re-attribute patient
//! data: `sync-now` (delivers sooner, to the same destinations), `diagnostics` (counts and
//! versions), `set-log-level` (the journal stays on the gateway), `restart` (the broker can
//! already cut the connection), and `update`, whose manifest carries its own signature by an
//! update key, and `update-trust`, whose document carries a root key's. A signature that is
//! present is checked whatever the type.
//!
//! Pure: no I/O.

use serde_json::Value;

use crate::signed::{self, PublicKey};

/// Command types that must be signed.
pub const SIGNED_COMMANDS: &[&str] = &["bind", "unbind", "open-pairing-window"];
pub use crate::signed::GATEWAY;
/// The member of a signed command naming its id.
pub const ID: &str = "id";

/// The operator keys and this gateway's id.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    keys: Vec<PublicKey>,
    gateway: String,
}

impl Verifier {
    pub fn new(keys: Vec<PublicKey>, gateway: &str) -> Self {
        Self {
            keys,
            gateway: gateway.to_owned(),
        }
    }

    /// The operator keys `[fleet]` names, less those an update trust document revoked. A key
    /// file that cannot be read trusts nothing (documents are then refused with the reason);
    /// the error says why.
    pub fn load(
        fleet: &crate::config::FleetConfig,
        update: Option<&crate::config::update::UpdateConfig>,
        gateway: &str,
    ) -> (Self, Option<String>) {
        let (mut keys, error) = match fleet.operator_public_keys() {
            Ok(k) => (k, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        if let Some(u) = update {
            let trust = crate::update::applied_trust(u);
            keys.retain(|k| !trust.is_revoked(k.id()));
        }
        (Self::new(keys, gateway), error)
    }

    /// Stops trusting the keys with these ids (an update trust document revoked them).
    pub fn revoke(&mut self, key_ids: &[String]) {
        self.keys
            .retain(|k| !key_ids.iter().any(|r| r.eq_ignore_ascii_case(k.id())));
    }

    /// Checks a desired configuration (as parsed JSON); returns the signer's key id.
    pub fn desired(&self, doc: &Value) -> Result<String, String> {
        signed_at_all(doc, "desired configuration")?;
        self.addressed(doc)?;
        signed::verify(doc, &self.keys).map_err(|e| refusal("desired configuration", &e))
    }

    /// Checks a command of type `kind` received under `id`; returns the signer's key id, or
    /// `None` for an unsigned command of a type that may be unsigned.
    pub fn command(&self, id: &str, kind: &str, doc: &Value) -> Result<Option<String>, String> {
        let required = SIGNED_COMMANDS.contains(&kind);
        if !required && doc.get(signed::SIGNATURES).is_none() {
            return Ok(None);
        }
        let what = format!("{kind} command");
        signed_at_all(doc, &what)?;
        self.addressed(doc)?;
        if doc.get(ID).and_then(Value::as_str) != Some(id) {
            return Err(format!(
                "a signed command names its own id in \"{ID}\", and it must be the id of the \
                 topic it was published on"
            ));
        }
        signed::verify(doc, &self.keys)
            .map(Some)
            .map_err(|e| refusal(&what, &e))
    }

    fn addressed(&self, doc: &Value) -> Result<(), String> {
        match doc.get(GATEWAY).and_then(Value::as_str) {
            Some(g) if g == self.gateway => Ok(()),
            Some(_) => Err(format!(
                "signed for another gateway (\"{GATEWAY}\" is not this gateway's id)"
            )),
            None => Err(format!(
                "a signed document names the gateway it is for in \"{GATEWAY}\""
            )),
        }
    }
}

/// An unsigned document is refused for that, before anything else about it.
fn signed_at_all(doc: &Value, what: &str) -> Result<(), String> {
    match doc.get(signed::SIGNATURES) {
        Some(Value::Array(list)) if !list.is_empty() => Ok(()),
        Some(Value::Array(_)) | None => Err(refusal(what, &signed::SignatureError::Unsigned)),
        Some(_) => Err(format!("{what} refused: `signatures` is not a list")),
    }
}

fn refusal(what: &str, e: &signed::SignatureError) -> String {
    match e {
        signed::SignatureError::NoTrustedKeys => format!(
            "{what} refused: no operator keys are configured ([fleet] operator_keys), so \
             nothing may change where readings go or whose they are"
        ),
        other => format!("{what} refused: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::signed::PrivateKey;

    fn operator() -> PrivateKey {
        PrivateKey::from_seed(&[9; 32])
    }

    fn signed(mut doc: Value, key: &PrivateKey) -> Value {
        signed::add_signature(&mut doc, key).expect("sign");
        doc
    }

    fn verifier() -> Verifier {
        Verifier::new(vec![operator().public()], "gw-1")
    }

    #[test]
    fn a_desired_document_needs_the_operators_signature_and_this_gateways_id() {
        let v = verifier();
        let doc = signed(json!({"version": 3, "gateway": "gw-1"}), &operator());
        assert_eq!(v.desired(&doc), Ok(operator().public().id().to_owned()));
        let e = v
            .desired(&json!({"version": 3, "gateway": "gw-1"}))
            .expect_err("unsigned");
        assert!(e.contains("no signature"), "{e}");
        let other = signed(json!({"version": 3, "gateway": "gw-2"}), &operator());
        assert!(
            v.desired(&other)
                .expect_err("other")
                .contains("another gateway")
        );
        let nameless = signed(json!({"version": 3}), &operator());
        assert!(v.desired(&nameless).is_err());
        let stranger = signed(
            json!({"version": 3, "gateway": "gw-1"}),
            &PrivateKey::from_seed(&[1; 32]),
        );
        assert!(
            v.desired(&stranger)
                .expect_err("stranger")
                .contains("untrusted")
        );
        // Changing any member after signing breaks it: a signed document cannot be edited.
        let mut edited = doc.clone();
        edited["version"] = json!(4);
        assert!(
            v.desired(&edited)
                .expect_err("edited")
                .contains("does not verify")
        );
        let none = Verifier::new(vec![], "gw-1");
        assert!(
            none.desired(&doc)
                .expect_err("no keys")
                .contains("operator_keys")
        );
    }

    #[test]
    fn data_flow_commands_need_a_signature_bound_to_their_id() {
        let v = verifier();
        let bind = json!({"type": "bind", "gateway": "gw-1", "id": "c-1",
                          "device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"},
                          "patient_ref": "pr-1", "expires_at": "2030-01-01T00:00:00Z"});
        for kind in SIGNED_COMMANDS {
            let e = v.command("c-1", kind, &bind).expect_err("unsigned");
            assert!(e.contains("no signature"), "{kind}: {e}");
        }
        let ok = signed(bind.clone(), &operator());
        assert!(v.command("c-1", "bind", &ok).expect("signed").is_some());
        // The same signed body under another command id is a replay.
        assert!(
            v.command("c-2", "bind", &ok)
                .expect_err("replay")
                .contains("names its own id")
        );
        // Harmless commands may come unsigned; a signature that is there is still checked.
        assert_eq!(
            v.command("c-3", "sync-now", &json!({"type": "sync-now"})),
            Ok(None)
        );
        let forged = json!({"type": "sync-now", "gateway": "gw-1", "id": "c-3",
                            "signatures": [{"key_id": "0011223344556677", "signature": "AA=="}]});
        assert!(v.command("c-3", "sync-now", &forged).is_err());
    }
}
