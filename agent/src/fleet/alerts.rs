//! Events derived from the store's state at each telemetry period: a device not seen within
//! its expected schedule, and quarantine growth. Pure: it gets a snapshot and the time, keeps
//! what it has already raised, and returns the events to record.
//!
//! Each condition is raised once when it starts and once (as info) when it ends, not at
//! every period. What was raised is kept in memory only: after a restart a condition that
//! still holds is raised once more, which tells IT the gateway still sees it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::command::format_rfc3339;
use crate::store::{NewEvent, Severity, StoreStatus};

/// What has been raised so far.
#[derive(Debug, Default)]
pub struct Alerts {
    /// Overdue devices, by (transport, address), with the last-seen time they were raised for.
    overdue: BTreeMap<(String, String), i64>,
    /// Quarantine size at the previous check; `None` before the first.
    quarantined: Option<u64>,
}

impl Alerts {
    /// The events `snapshot` raises at `now_ms`. A device counts from its first reading
    /// (one bound but never seen is not overdue: it has no schedule yet).
    pub fn check(
        &mut self,
        snapshot: &StoreStatus,
        now_ms: i64,
        overdue_after: Duration,
    ) -> Vec<NewEvent> {
        let mut events = Vec::new();
        let limit = overdue_after.as_millis() as i64;
        for d in &snapshot.devices {
            let key = (d.transport.clone(), d.address.clone());
            let seen = d.last_seen_ms;
            let overdue = seen > 0 && now_ms.saturating_sub(seen) > limit;
            match (overdue, self.overdue.contains_key(&key)) {
                (true, false) => {
                    self.overdue.insert(key, seen);
                    events.push(NewEvent {
                        severity: Severity::Warning,
                        kind: "device-overdue".into(),
                        detail: json!({
                            "transport": d.transport,
                            "address": d.address,
                            "last_seen": format_rfc3339(to_time(seen)),
                            "overdue_after_s": overdue_after.as_secs(),
                        }),
                    });
                }
                (false, true) => {
                    self.overdue.remove(&key);
                    events.push(NewEvent {
                        severity: Severity::Info,
                        kind: "device-back".into(),
                        detail: json!({
                            "transport": d.transport,
                            "address": d.address,
                            "last_seen": format_rfc3339(to_time(seen)),
                        }),
                    });
                }
                _ => {}
            }
        }
        let q = snapshot.readings.quarantined;
        if let Some(before) = self.quarantined
            && q > before
        {
            events.push(NewEvent {
                severity: Severity::Warning,
                kind: "quarantine-grew".into(),
                detail: json!({ "from": before, "to": q }),
            });
        }
        self.quarantined = Some(q);
        events
    }
}

fn to_time(ms: i64) -> std::time::SystemTime {
    std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::reader::DeviceSummary;

    fn snapshot(last_seen_ms: i64, quarantined: u64) -> StoreStatus {
        let mut s = StoreStatus::default();
        s.devices.push(DeviceSummary {
            transport: "ble".into(),
            address: "00:1C:05:FF:E8:74".into(),
            manufacturer: None,
            model: None,
            last_seen_ms,
            readings: 3,
            bindings: 1,
            battery_percent: None,
            rssi_dbm: None,
            control_tests: 0,
            device_tests: 0,
        });
        s.readings.quarantined = quarantined;
        s
    }

    fn kinds(e: &[NewEvent]) -> Vec<&str> {
        e.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn an_overdue_device_is_raised_once_and_its_return_once() {
        let mut a = Alerts::default();
        let hour = Duration::from_secs(3600);
        let h = 3_600_000;
        assert!(
            a.check(&snapshot(10 * h, 0), 10 * h + 1000, hour)
                .is_empty()
        );
        let e = a.check(&snapshot(10 * h, 0), 12 * h, hour);
        assert_eq!(kinds(&e), ["device-overdue"]);
        assert_eq!(e[0].detail["address"], "00:1C:05:FF:E8:74");
        assert!(a.check(&snapshot(10 * h, 0), 13 * h, hour).is_empty());
        let e = a.check(&snapshot(13 * h, 0), 13 * h + 5, hour);
        assert_eq!(kinds(&e), ["device-back"]);
        // Overdue again later: a new period, raised again.
        assert_eq!(
            kinds(&a.check(&snapshot(13 * h, 0), 15 * h, hour)),
            ["device-overdue"]
        );
        // A device bound but never seen has no schedule yet.
        let mut a = Alerts::default();
        assert!(a.check(&snapshot(0, 0), 15 * h, hour).is_empty());
    }

    #[test]
    fn quarantine_growth_is_raised_when_the_count_rises() {
        let mut a = Alerts::default();
        let day = Duration::from_secs(86_400);
        assert!(a.check(&snapshot(1, 2), 2, day).is_empty(), "baseline");
        assert!(a.check(&snapshot(1, 2), 2, day).is_empty());
        let e = a.check(&snapshot(1, 5), 2, day);
        assert_eq!(kinds(&e), ["quarantine-grew"]);
        assert_eq!(
            (e[0].detail["from"].clone(), e[0].detail["to"].clone()),
            (2.into(), 5.into())
        );
        assert!(a.check(&snapshot(1, 5), 2, day).is_empty());
    }
}
