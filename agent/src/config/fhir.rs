//! `[fhir]`: choices about the FHIR resources themselves (not about where they go, which is
//! `[[destination]]`'s).

use serde::{Deserialize, Serialize};

pub use vitalgate_fhir::{DEFAULT_IDENTIFIER_NAMESPACE, IdentifierNamespace};

/// `[fhir]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirConfig {
    /// The base of the identifier systems this project defines itself, where the PHD IG has
    /// none: `<namespace>/reading` (readings with no usable device timestamp, and coincident
    /// time stamps), `<namespace>/serial-device` (serial meters with no Bluetooth address or
    /// System ID) and `<namespace>/gateway` (the PHG Device). The PHD conditional-create
    /// identifier of the IG is not affected.
    pub identifier_namespace: IdentifierNamespace,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_parses_with_a_default_and_reports_bad_values() {
        let c: FhirConfig = toml::from_str("").expect("empty");
        assert_eq!(
            c.identifier_namespace.as_str(),
            DEFAULT_IDENTIFIER_NAMESPACE
        );
        let c: FhirConfig =
            toml::from_str("identifier_namespace = \"https://h.org/sid\"").expect("url");
        assert_eq!(
            c.identifier_namespace.system("gateway"),
            "https://h.org/sid/gateway"
        );
        let e = toml::from_str::<FhirConfig>("identifier_namespace = 7").expect_err("type");
        assert!(e.to_string().contains("string"), "{e}");
        let e = toml::from_str::<FhirConfig>("identifier_namespace = \"x\"").expect_err("bad");
        assert!(e.to_string().contains("absolute"), "{e}");
    }
}
