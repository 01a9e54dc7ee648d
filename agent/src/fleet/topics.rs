//! The topic layout under `vitalgate/<gateway-id>/`. Every topic the gateway publishes or
//! subscribes to is built here, so the ACL an operator writes matches this one place.

use crate::config::GatewayId;

/// The root of every gateway's topics.
pub const ROOT: &str = "vitalgate";

/// Topics of one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(gateway: &GatewayId) -> Self {
        Self {
            base: format!("{ROOT}/{}", gateway.as_str()),
        }
    }

    /// Retained: online/offline, version, config version, uptime. Also the last will.
    pub fn state(&self) -> String {
        format!("{}/state", self.base)
    }
    pub fn telemetry(&self) -> String {
        format!("{}/telemetry", self.base)
    }
    pub fn events(&self) -> String {
        format!("{}/events", self.base)
    }
    /// Retained, written by IT.
    pub fn config_desired(&self) -> String {
        format!("{}/config/desired", self.base)
    }
    /// Retained, written by the gateway.
    pub fn config_reported(&self) -> String {
        format!("{}/config/reported", self.base)
    }
    /// The subscription filter for commands: one level, so results are not echoed back.
    pub fn command_filter(&self) -> String {
        format!("{}/cmd/+", self.base)
    }
    pub fn command(&self, id: &str) -> String {
        format!("{}/cmd/{id}", self.base)
    }
    pub fn command_result(&self, id: &str) -> String {
        format!("{}/cmd/{id}/result", self.base)
    }

    /// What an incoming topic is, if it is one the gateway listens to.
    pub fn classify<'a>(&self, topic: &'a str) -> Incoming<'a> {
        let Some(rest) = topic
            .strip_prefix(self.base.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return Incoming::Other;
        };
        if rest == "config/desired" {
            return Incoming::Desired;
        }
        match rest.strip_prefix("cmd/") {
            Some(id) if !id.contains('/') => Incoming::Command(id),
            _ => Incoming::Other,
        }
    }
}

/// An incoming message's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    Desired,
    Command(&'a str),
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_classification() {
        let t = Topics::new(&"gw-1".parse().expect("id"));
        assert_eq!(t.state(), "vitalgate/gw-1/state");
        assert_eq!(t.command_result("c1"), "vitalgate/gw-1/cmd/c1/result");
        assert_eq!(t.command_filter(), "vitalgate/gw-1/cmd/+");
        assert_eq!(
            t.classify("vitalgate/gw-1/config/desired"),
            Incoming::Desired
        );
        assert_eq!(
            t.classify("vitalgate/gw-1/cmd/abc"),
            Incoming::Command("abc")
        );
        assert_eq!(t.classify("vitalgate/gw-1/cmd/abc/result"), Incoming::Other);
        assert_eq!(t.classify("vitalgate/gw-10/cmd/abc"), Incoming::Other);
        assert_eq!(t.classify("vitalgate/gw-1"), Incoming::Other);
        assert_eq!(
            t.classify("vitalgate/gw-1/config/reported"),
            Incoming::Other
        );
    }
}
