//! Domain identifiers that cross module lines. Each is validated where it is parsed, and those
//! that are patient-linked or secret redact themselves in `Debug` so a log line or a panic
//! message cannot carry them.

/// An opaque patient reference: only the FHIR side can resolve it. It is written to the
/// encrypted store and never published, logged at info, or echoed in a reason.
#[derive(Clone, PartialEq, Eq)]
pub struct PatientRef(String);

impl PatientRef {
    /// 1 to 128 of A-Z, a-z, 0-9, '.', '_', '-', ':', '/' (a FHIR logical id, a
    /// `Patient/<id>` reference, or an identifier `system|value`'s value part).
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err("patient_ref must be 1 to 128 of A-Z, a-z, 0-9, '.', '_', '-', ':', '/'".into())
        }
    }

    /// The reference itself, for the store and the FHIR side only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PatientRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PatientRef(<redacted>)")
    }
}

/// The user of a multi-user device (a scale, a BP cuff): 0 to 254, or -1 for every user when
/// absent. (The Bluetooth User Data Service gives 0xFF to an unknown user, which is never a
/// binding.)
pub fn user_index(v: Option<i64>) -> Result<i64, String> {
    match v {
        None => Ok(-1),
        Some(i) if (0..=254).contains(&i) => Ok(i),
        Some(_) => Err("user_index must be between 0 and 254".into()),
    }
}

/// A PIN or passkey for a device. Never logged or displayed: `Debug` redacts it, and it is
/// zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(String);

impl Pin {
    /// 1 to 16 ASCII letters and digits (a 6-digit passkey, or a legacy PIN code).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if (1..=16).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric()) {
            Ok(Self(s.to_owned()))
        } else {
            Err("the PIN must be 1 to 16 letters or digits".into())
        }
    }

    /// The PIN as a BLE passkey (0 to 999999), if it is one.
    pub fn passkey(&self) -> Option<u32> {
        if self.0.len() > 6 || !self.0.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        self.0.parse().ok()
    }

    /// The PIN itself, for the pairing agent only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

/// What a new pairing window asks for, wherever it was asked (the CLI, a fleet command, the
/// pairing button).
#[derive(Debug, Clone)]
pub struct WindowRequest {
    pub until_ms: i64,
    /// Bind what pairs to this patient; without one the device is only allowlisted.
    pub patient: Option<PatientRef>,
    /// The user of a multi-user device, or -1 for every user.
    pub user_index: i64,
    /// Only this device (upper-case address) may pair; it may already be bonded, which adds
    /// a binding for another user index.
    pub device: Option<String>,
    pub pin: Option<Pin>,
    /// Who opened it, for the audit log: `cli:pair`, `fleet:<command id>`, `button`.
    pub actor: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked_and_redacted() {
        let p = PatientRef::parse("Patient/abc-1").expect("valid");
        assert_eq!(p.expose(), "Patient/abc-1");
        assert_eq!(format!("{p:?}"), "PatientRef(<redacted>)");
        assert!(PatientRef::parse("").is_err());
        assert!(PatientRef::parse("a b").is_err());
        assert!(PatientRef::parse(&"x".repeat(129)).is_err());

        let pin = Pin::parse(" 123456 ").expect("valid");
        assert_eq!(pin.passkey(), Some(123_456));
        assert_eq!(format!("{pin:?}"), "Pin(<redacted>)");
        assert_eq!(Pin::parse("0000abc").expect("legacy").passkey(), None);
        assert!(Pin::parse("12-34").is_err());

        assert_eq!(user_index(None), Ok(-1));
        assert_eq!(user_index(Some(254)), Ok(254));
        assert!(user_index(Some(255)).is_err());
    }
}
