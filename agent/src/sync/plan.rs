//! The delivery plan: which destinations run and which readings each one takes. It is the
//! file configuration overlaid by the last applied desired configuration (fleet management),
//! computed and validated as a whole before anything of it is used.
//!
//! Overlay rules (the root-owned file pins where readings may go):
//! - a desired `destinations` list chooses among the file's destinations: it replaces the
//!   file's list with the entries it names, each the file's destination whole (URL,
//!   credentials, TLS, proxy, batching, route). Its `base_url` may be left out or repeat the
//!   file's, never change it, and an id the file does not have is refused, so a credential is
//!   only ever sent to the server the file names, and a desired configuration never names a
//!   secret. A new server is a change to `vitalgate.toml` (root), by design.
//! - a desired `routing` adds a device filter on top of each destination's own route: a
//!   reading of a device listed in `routing.devices` goes to that entry's destinations, any
//!   other reading to `routing.default`.
//! - absent fields leave the file's choice in force.
//!
//! [`DeliveryControl`] swaps a plan in while running: the store writer's routing set first
//! (readings committed after that get outbox rows for the new set), then the delivery tasks.

use std::sync::Arc;

use tokio::sync::watch;
use vitalgate_drivers::{DeviceIdentity, Transport};

use crate::config::desired::DesiredConfig;
use crate::config::{Config, DestinationConfig};
use crate::store::{StoreError, StoreHandle};

/// The fleet's device routing: destination ids per device, and for every other device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRouting {
    pub default: Vec<String>,
    pub devices: Vec<(Transport, String, Vec<String>)>,
}

impl DeviceRouting {
    /// Whether `destination` takes readings of `device`.
    pub fn wants(&self, destination: &str, device: &DeviceIdentity) -> bool {
        let list = self
            .devices
            .iter()
            .find(|(t, a, _)| *t == device.transport && a.eq_ignore_ascii_case(&device.address))
            .map_or(&self.default, |(_, _, d)| d);
        list.iter().any(|d| d == destination)
    }
}

/// What the delivery engine runs.
#[derive(Debug, Clone, Default)]
pub struct DeliveryPlan {
    /// The applied desired configuration's version; `None` for the file alone.
    pub version: Option<u64>,
    pub destinations: Vec<DestinationConfig>,
    pub routing: Option<Arc<DeviceRouting>>,
}

impl DeliveryPlan {
    /// The file configuration alone.
    pub fn from_file(config: &Config) -> Self {
        Self {
            version: None,
            destinations: config.destinations.clone(),
            routing: None,
        }
    }

    /// The file configuration overlaid by `desired`; an error names what is wrong.
    pub fn overlay(config: &Config, desired: &DesiredConfig) -> Result<Self, String> {
        let mut plan = Self::from_file(config);
        plan.version = Some(desired.version);
        if let Some(list) = &desired.destinations {
            let mut out = Vec::with_capacity(list.len());
            for (i, d) in list.iter().enumerate() {
                let Some(file) = config.destinations.iter().find(|f| f.id == d.id) else {
                    return Err(format!(
                        "destinations[{i}].id: {:?} is not a destination of vitalgate.toml; a \
                         desired configuration chooses among the file's destinations",
                        d.id.as_str()
                    ));
                };
                if d.base_url.as_ref().is_some_and(|url| url != &file.base_url) {
                    return Err(format!(
                        "destinations[{i}].base_url: destination {:?} is pinned to its \
                         base_url in vitalgate.toml; a desired configuration cannot move it",
                        d.id.as_str()
                    ));
                }
                let cfg = file.clone();
                cfg.check(i).map_err(|(key, msg)| {
                    format!("{}: {msg}", key.replace("destination", "destinations"))
                })?;
                out.push(cfg);
            }
            plan.destinations = out;
        }
        if let Some(r) = &desired.routing {
            let ids: Vec<&str> = plan.destinations.iter().map(|d| d.id.as_str()).collect();
            let known = |n: &crate::config::Name| ids.contains(&n.as_str());
            if let Some(n) = r
                .default
                .iter()
                .chain(r.devices.iter().flat_map(|(_, _, d)| d))
                .find(|n| !known(n))
            {
                return Err(format!(
                    "routing: destination {:?} is not a destination of this gateway",
                    n.as_str()
                ));
            }
            let names = |v: &[crate::config::Name]| v.iter().map(|n| n.to_string()).collect();
            plan.routing = Some(Arc::new(DeviceRouting {
                default: names(&r.default),
                devices: r
                    .devices
                    .iter()
                    .map(|(t, a, d)| (*t, a.clone(), names(d)))
                    .collect(),
            }));
        }
        Ok(plan)
    }

    /// Whether running `other` instead would change anything delivery does.
    pub fn same_delivery(&self, other: &Self) -> bool {
        let key = |p: &Self| serde_json::to_value(&p.destinations).ok();
        self.routing == other.routing && key(self) == key(other)
    }

    /// The destination ids new readings get outbox rows for.
    pub fn ids(&self) -> Vec<String> {
        self.destinations.iter().map(|d| d.id.to_string()).collect()
    }
}

/// What [`DeliveryControl::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanChange {
    pub added: Vec<String>,
    /// Destinations no longer delivered to, each with the readings still pending for it:
    /// they stay in the store (and in the backlog telemetry) until the destination returns.
    pub removed: Vec<(String, Option<u64>)>,
}

/// The running delivery engine's controls, lent to fleet management.
#[derive(Debug)]
pub struct DeliveryControl {
    file: Config,
    store: StoreHandle,
    plan: watch::Sender<Arc<DeliveryPlan>>,
    sync_now: watch::Sender<u64>,
}

impl DeliveryControl {
    pub fn new(file: Config, store: StoreHandle, plan: DeliveryPlan) -> Self {
        Self {
            file,
            store,
            plan: watch::channel(Arc::new(plan)).0,
            sync_now: watch::channel(0).0,
        }
    }

    /// Validates `desired` against the file configuration without applying anything.
    pub fn plan_for(&self, desired: &DesiredConfig) -> Result<DeliveryPlan, String> {
        DeliveryPlan::overlay(&self.file, desired)
    }

    pub fn current(&self) -> Arc<DeliveryPlan> {
        self.plan.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<DeliveryPlan>> {
        self.plan.subscribe()
    }

    pub fn sync_requests(&self) -> watch::Receiver<u64> {
        self.sync_now.subscribe()
    }

    /// Asks every running destination for a forced round now; returns how many there are.
    /// A `watch` counter rather than a `Notify`: a destination busy with a round when asked
    /// still sees the request when it next waits.
    pub fn sync_now(&self) -> usize {
        self.sync_now.send_modify(|n| *n = n.wrapping_add(1));
        self.sync_now.receiver_count()
    }

    /// Like [`Self::sync_now`], but when the plan has destinations and none is running yet
    /// (the engine is still starting them: a command can arrive the moment the broker
    /// connection is up), waits up to `patience` for one to start first.
    pub async fn sync_now_when_started(&self, patience: std::time::Duration) -> usize {
        let until = tokio::time::Instant::now() + patience;
        while self.sync_now.receiver_count() == 0
            && !self.current().destinations.is_empty()
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.sync_now()
    }

    /// Swaps `plan` in: the store's routing set, then the delivery tasks (which are only
    /// restarted when the plan changes what they do).
    pub async fn apply(&self, plan: DeliveryPlan) -> Result<PlanChange, StoreError> {
        let current = self.current();
        if current.same_delivery(&plan) {
            self.plan.send_if_modified(|p| {
                *p = Arc::new(DeliveryPlan {
                    version: plan.version,
                    ..(**p).clone()
                });
                false
            });
            return Ok(PlanChange::default());
        }
        let old = current.ids();
        let new = plan.ids();
        self.store.set_destinations(new.clone()).await?;
        self.plan.send_replace(Arc::new(plan));
        let added = new.iter().filter(|d| !old.contains(d)).cloned().collect();
        let mut removed = Vec::new();
        for id in old.into_iter().filter(|d| !new.contains(d)) {
            // The switch is done; a count that cannot be read is reported as unknown.
            let pending = match self.store.pending_count(&id).await {
                Ok(n) => Some(n),
                Err(error) => {
                    tracing::warn!(destination = %id, %error, "Cannot count the removed destination's pending readings.");
                    None
                }
            };
            removed.push((id, pending));
        }
        Ok(PlanChange { added, removed })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::desired;

    fn doc(text: &str) -> DesiredConfig {
        desired::parse(text.as_bytes()).expect("valid document")
    }

    fn two() -> Config {
        Config::parse(
            Path::new("t.toml"),
            "[[destination]]\nid = \"hospital\"\nbase_url = \"http://127.0.0.1:9/fhir\"\nbatch_max = 7\n\
             [[destination]]\nid = \"medicaid\"\nbase_url = \"https://medicaid.example/fhir\"\n\
             [destination.auth]\ntype = \"bearer\"\ntoken = { credential = \"medicaid-token\" }\n",
        )
        .expect("config")
    }

    #[test]
    fn desired_destinations_choose_among_the_files_and_keep_all_of_their_settings() {
        let plan = DeliveryPlan::overlay(
            &two(),
            &doc(r#"{"version": 4, "destinations": [
                {"id": "medicaid"}, {"id": "hospital", "base_url": "http://127.0.0.1:9/fhir"}]}"#),
        )
        .expect("plan");
        assert_eq!(plan.version, Some(4));
        assert_eq!(plan.ids(), ["medicaid", "hospital"]);
        assert_eq!(plan.destinations[1].batch_max, 7);
        let as_json = |d: &[DestinationConfig]| serde_json::to_value(d).expect("json");
        let file = two().destinations;
        assert_eq!(
            as_json(&plan.destinations),
            as_json(&[file[1].clone(), file[0].clone()])
        );
        assert!(plan.routing.is_none());
        // Without destinations in the document, the file's stay.
        let plan = DeliveryPlan::overlay(&two(), &doc(r#"{"version": 5}"#)).expect("plan");
        assert_eq!(plan.ids(), ["hospital", "medicaid"]);
        // Choosing one removes the other from delivery.
        let plan = DeliveryPlan::overlay(
            &two(),
            &doc(r#"{"version": 6, "destinations": [{"id": "hospital"}]}"#),
        )
        .expect("plan");
        assert_eq!(plan.ids(), ["hospital"]);
    }

    #[test]
    fn a_desired_document_cannot_move_a_destination_or_add_a_server() {
        // Moving a file destination would send its token (and every reading) elsewhere.
        let e = DeliveryPlan::overlay(
            &two(),
            &doc(r#"{"version": 4, "destinations": [{"id": "medicaid", "base_url": "https://attacker.example/fhir"}]}"#),
        )
        .expect_err("pinned");
        assert!(
            e.contains("destinations[0].base_url") && e.contains("pinned"),
            "{e}"
        );
        let e = DeliveryPlan::overlay(
            &two(),
            &doc(r#"{"version": 4, "destinations": [{"id": "x", "base_url": "https://x.example/r4"}]}"#),
        )
        .expect_err("unknown id");
        assert!(
            e.contains("destinations[0].id") && e.contains("vitalgate.toml"),
            "{e}"
        );
    }

    #[test]
    fn routing_sends_listed_devices_to_their_destinations_and_the_rest_to_default() {
        let plan = DeliveryPlan::overlay(
            &two(),
            &doc(r#"{"version": 4, "destinations": [{"id": "hospital"}, {"id": "medicaid"}],
              "routing": {"default": ["hospital"], "devices": [
                {"device": {"transport": "ble", "address": "00:1c:05:ff:e8:74"}, "destinations": ["medicaid"]}]}}"#),
        )
        .expect("plan");
        let r = plan.routing.expect("routing");
        let cuff = DeviceIdentity::new(Transport::Ble, "00:1C:05:FF:E8:74");
        let other = DeviceIdentity::new(Transport::Ble, "00:1C:05:FF:E8:75");
        assert!(r.wants("medicaid", &cuff) && !r.wants("hospital", &cuff));
        assert!(r.wants("hospital", &other) && !r.wants("medicaid", &other));
    }
}
