//! The base of the identifier systems this project defines itself, where the PHD IG has none.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The default identifier namespace. `vitalgate.example` is a reserved example domain: an
/// operator sets their own before the first delivery (see [`IdentifierNamespace`]).
pub const DEFAULT_IDENTIFIER_NAMESPACE: &str = "https://vitalgate.example/fhir/sid";

/// An absolute `https` (or `http`) URL with a host and no query, fragment, trailing slash,
/// `|`, `,` or whitespace (the systems it makes appear in `identifier=<system>|<value>`
/// searches). URNs are refused: `urn:oid:1.2.3/reading` would not be an OID.
/// Changing it after readings were delivered makes the server see new identifiers, and so
/// creates duplicates of what it already holds: set it once, before the first delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentifierNamespace(String);

impl IdentifierNamespace {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<namespace>/<name>`.
    pub fn system(&self, name: &str) -> String {
        format!("{}/{name}", self.0)
    }
}

impl Default for IdentifierNamespace {
    fn default() -> Self {
        Self(DEFAULT_IDENTIFIER_NAMESPACE.to_owned())
    }
}

impl FromStr for IdentifierNamespace {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(c) = s
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '|' | ',' | '?' | '#'))
        {
            return Err(format!(
                "identifier namespace must not contain {c:?} (it appears in identifier searches)"
            ));
        }
        if s.ends_with('/') {
            return Err("identifier namespace must not end with '/'".into());
        }
        let ok = (s.starts_with("https://") || s.starts_with("http://"))
            && url::Url::parse(s).is_ok_and(|u| {
                matches!(u.scheme(), "https" | "http")
                    && u.host_str().is_some_and(|h| !h.is_empty())
            });
        if !ok {
            return Err(format!(
                "identifier namespace must be an absolute https:// (or http://) URL, e.g. \
                 \"https://fhir.example-hospital.org/sid/vitalgate\", got {s:?}"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for IdentifierNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for IdentifierNamespace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for IdentifierNamespace {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_checked() {
        for good in [
            DEFAULT_IDENTIFIER_NAMESPACE,
            "https://fhir.example-hospital.org/sid/vitalgate",
            "http://localhost/sid",
        ] {
            let ns: IdentifierNamespace = good.parse().expect(good);
            assert_eq!(ns.system("reading"), format!("{good}/reading"));
        }
        for bad in [
            "",
            "vitalgate",
            "https://",
            "https://h/sid/",
            "https://h/sid?x=1",
            "https://h/s id",
            "https://h/a|b",
            "ftp://h/sid",
            "urn:oid:2.16.840.1.113883.3.9999",
            "https:relative",
        ] {
            assert!(
                bad.parse::<IdentifierNamespace>().is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
