//! Checked configuration value types. Each one validates while the file is deserialized, so a
//! bad value is reported with the file, line and key instead of failing later at run time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Deserializes any `FromStr` type from a TOML string, keeping its error text.
macro_rules! string_newtype_serde {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// The gateway's identity in MQTT topics and in the FHIR PHG Device: 1 to 64 characters of
/// `[A-Za-z0-9._-]`. It is assigned by IT and never derived from patient data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatewayId(String);

impl GatewayId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for GatewayId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!(
                "gateway id must be 1 to 64 characters, got {}",
                s.len()
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "gateway id may only contain letters, digits, '.', '_' and '-' (found {c:?}); \
                 it appears in MQTT topics"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for GatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype_serde!(GatewayId);

/// A Bluetooth device address, written `AA:BB:CC:DD:EE:FF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BtAddr(pub [u8; 6]);

impl FromStr for BtAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a Bluetooth address like \"AA:BB:CC:DD:EE:FF\"");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(out))
    }
}

impl fmt::Display for BtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}
string_newtype_serde!(BtAddr);

/// An HTTP(S) base URL for a FHIR endpoint. Plain `http` is accepted only for loopback hosts,
/// so patient data never crosses a network in clear text by a configuration slip.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointUrl(url::Url);

impl EndpointUrl {
    pub fn as_url(&self) -> &url::Url {
        &self.0
    }
}

impl FromStr for EndpointUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let u = url::Url::parse(s).map_err(|e| format!("{s:?} is not a valid URL: {e}"))?;
        match u.scheme() {
            "https" => {}
            "http" => {
                if !u.host().is_some_and(|h| is_loopback(&h)) {
                    return Err(format!(
                        "{s:?} uses plain http to a non-loopback host; use https"
                    ));
                }
            }
            other => return Err(format!("{s:?} has scheme {other:?}; expected https")),
        }
        if u.host().is_none() {
            return Err(format!("{s:?} has no host"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(format!(
                "{s:?} embeds credentials; put them in a credential file instead"
            ));
        }
        Ok(Self(u))
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
string_newtype_serde!(EndpointUrl);

/// Loopback check that also covers non-special schemes (`mqtt://`), whose hosts the URL
/// parser leaves as opaque names even when they are IP literals.
fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => {
            *d == "localhost"
                || d.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// An MQTT broker URL: `mqtts://host[:port]`, or `mqtt://` to a loopback host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerUrl(url::Url);

impl BrokerUrl {
    pub fn as_url(&self) -> &url::Url {
        &self.0
    }
}

impl FromStr for BrokerUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let u = url::Url::parse(s).map_err(|e| format!("{s:?} is not a valid URL: {e}"))?;
        let Some(host) = u.host() else {
            return Err(format!("{s:?} has no host"));
        };
        let loopback = is_loopback(&host);
        match u.scheme() {
            "mqtts" => {}
            "mqtt" if loopback => {}
            "mqtt" => {
                return Err(format!(
                    "{s:?} is unencrypted MQTT to a non-loopback host; use mqtts"
                ));
            }
            other => {
                return Err(format!(
                    "{s:?} has scheme {other:?}; expected mqtts (or mqtt on loopback)"
                ));
            }
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(format!(
                "{s:?} embeds credentials; put them in a credential file instead"
            ));
        }
        Ok(Self(u))
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
string_newtype_serde!(BrokerUrl);

/// A short identifier for a destination or other named entry: `[a-z0-9_-]{1,32}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a valid name: use 1 to 32 of a-z, 0-9, '_' and '-'"
            ))
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype_serde!(Name);

/// A log filter: a default level and per-module levels, such as `info` or
/// `info,vitalgate::store=debug` (`tracing_subscriber`'s `Targets` syntax). Span and field
/// filters are not accepted: the filter may come from the fleet, and a plain list of targets
/// and levels cannot make the daemon compile an expensive pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter(String);

impl LogFilter {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LogFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 1024 {
            return Err("the log filter is longer than 1024 characters".into());
        }
        // `Targets` would take a bare word (a mistyped level) as a target to trace: every
        // directive must be a level, or a module path, `=` and a level.
        let level = |l: &str| {
            ["off", "error", "warn", "info", "debug", "trace"]
                .iter()
                .any(|k| k.eq_ignore_ascii_case(l))
        };
        let module = |m: &str| {
            !m.is_empty()
                && m.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        for d in &parts {
            let ok = match d.split_once('=') {
                Some((m, l)) => module(m.trim()) && level(l.trim()),
                None => level(d),
            };
            if !ok {
                return Err(format!(
                    "{s:?} is not a valid log filter: each part must be a level (off, error, \
                     warn, info, debug, trace) or module=level"
                ));
            }
        }
        // Kept without spaces: `Targets` takes them as part of a target's name.
        let normal = parts
            .iter()
            .map(|d| match d.split_once('=') {
                Some((m, l)) => format!("{}={}", m.trim(), l.trim()),
                None => (*d).to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",");
        normal
            .parse::<tracing_subscriber::filter::Targets>()
            .map_err(|e| format!("{s:?} is not a valid log filter: {e}"))?;
        Ok(Self(normal))
    }
}

impl fmt::Display for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype_serde!(LogFilter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_are_levels_or_module_levels_only() {
        for ok in [
            "info",
            "WARN",
            "info,vitalgate::store=debug",
            "off, vitalgate=trace",
        ] {
            assert!(ok.parse::<LogFilter>().is_ok(), "{ok}");
        }
        // A mistyped level would otherwise become a target traced at every level.
        for bad in [
            "",
            "debg",
            "[[[",
            "vitalgate=loud",
            "info,",
            "x{y}=debug",
            "a b=info",
        ] {
            assert!(bad.parse::<LogFilter>().is_err(), "{bad}");
        }
        assert!("info,".repeat(300).parse::<LogFilter>().is_err());
        // Spaces around the parts are dropped, not taken into a target's name.
        let f: LogFilter = " info , vitalgate::store = debug ".parse().expect("spaced");
        assert_eq!(f.as_str(), "info,vitalgate::store=debug");
    }

    #[test]
    fn bluetooth_addresses() {
        let a: BtAddr = "00:1c:05:FF:E8:74".parse().expect("valid");
        assert_eq!(a.to_string(), "00:1C:05:FF:E8:74");
        for bad in [
            "",
            "00:1C:05:FF:E8",
            "00:1C:05:FF:E8:74:00",
            "0:1C:05:FF:E8:74",
            "GG:1C:05:FF:E8:74",
        ] {
            assert!(bad.parse::<BtAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_urls_refuse_clear_text_off_loopback() {
        assert!("https://fhir.example.org/r4".parse::<EndpointUrl>().is_ok());
        assert!(
            "http://127.0.0.1:8103/fhir/R4"
                .parse::<EndpointUrl>()
                .is_ok()
        );
        assert!("http://localhost/fhir".parse::<EndpointUrl>().is_ok());
        assert!("http://fhir.example.org/r4".parse::<EndpointUrl>().is_err());
        assert!("ftp://x/".parse::<EndpointUrl>().is_err());
        assert!("https://user:pw@x/".parse::<EndpointUrl>().is_err());
        assert!(
            "mqtts://broker.example.org:8883"
                .parse::<BrokerUrl>()
                .is_ok()
        );
        assert!("mqtt://broker.example.org".parse::<BrokerUrl>().is_err());
        assert!("mqtt://127.0.0.1:1883".parse::<BrokerUrl>().is_ok());
    }

    #[test]
    fn gateway_ids_are_topic_safe() {
        assert!("gw-0001.clinic_a".parse::<GatewayId>().is_ok());
        assert!("gw/0001".parse::<GatewayId>().is_err());
        assert!("gw+#".parse::<GatewayId>().is_err());
        assert!("".parse::<GatewayId>().is_err());
        assert!("a".repeat(65).parse::<GatewayId>().is_err());
    }
}
