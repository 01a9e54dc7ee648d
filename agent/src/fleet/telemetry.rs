//! Health telemetry: what the store, the disk, the clock and the process look like. Counts,
//! ages, sizes and devices (by pseudonym, applied when published) only: no patient identifier,
//! name or measurement value.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::command::format_rfc3339;
use crate::store::StoreStatus;

/// One telemetry message.
#[derive(Debug, Clone, Serialize)]
pub struct Telemetry {
    pub at: String,
    pub uptime_s: u64,
    pub config_version: Option<u64>,
    pub destinations: Vec<DestinationHealth>,
    /// Readings pending for some destination, and the age of the oldest of them.
    pub backlog: u64,
    pub oldest_undelivered_age_s: u64,
    pub last_successful_delivery: Option<String>,
    pub quarantine_size: u64,
    pub devices: Vec<DeviceHealth>,
    pub store_bytes: u64,
    pub disk_free_bytes: Option<u64>,
    pub clock_synchronized: bool,
    /// Why the clock is not synchronised; `None` when it is.
    pub clock_why: Option<String>,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub mqtt_reconnects: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DestinationHealth {
    pub id: String,
    pub backlog: u64,
    pub oldest_undelivered_age_s: u64,
    pub last_successful_delivery: Option<String>,
    pub quarantined: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceHealth {
    pub transport: String,
    pub address: String,
    pub model: Option<String>,
    /// `null` for a device bound but never seen.
    pub last_seen: Option<String>,
    /// The Battery Level last read (BLE Battery Service); `null` when the device has none.
    pub battery_percent: Option<u8>,
    /// Signal strength at the last BLE connection; `null` for serial devices.
    pub rssi_dbm: Option<i16>,
    /// Control-solution tests the device reported (kept on the gateway, never sent).
    pub control_tests: u64,
}

fn ms_to_time(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn age_s(now_ms: i64, then_ms: Option<i64>) -> u64 {
    then_ms.map_or(0, |t| ((now_ms - t).max(0) / 1000) as u64)
}

/// Process CPU since the previous sample.
#[derive(Debug)]
pub struct CpuSampler {
    last: Option<(Instant, u64)>,
    ticks_per_s: u64,
}

impl Default for CpuSampler {
    fn default() -> Self {
        Self {
            last: None,
            ticks_per_s: rustix::param::clock_ticks_per_second().max(1),
        }
    }
}

impl CpuSampler {
    /// Percent of one core used since the last call (`None` the first time).
    pub fn sample(&mut self) -> Option<f64> {
        let ticks = process_cpu_ticks()?;
        let now = Instant::now();
        let out = self.last.map(|(t, prev)| {
            let wall = now.duration_since(t).as_secs_f64();
            if wall <= 0.0 {
                0.0
            } else {
                let cpu = ticks.saturating_sub(prev) as f64 / self.ticks_per_s as f64;
                (cpu / wall * 1000.0).round() / 10.0
            }
        });
        self.last = Some((now, ticks));
        out
    }
}

/// utime + stime of this process, in clock ticks (fields 14 and 15 of /proc/self/stat).
fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_ticks(&stat)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size from /proc/self/status.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_rss(&status)
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Free space for unprivileged writers on the file system holding `path`.
pub fn disk_free(path: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// What the fleet loop knows beside the store.
#[derive(Debug, Clone)]
pub struct ProcessFacts {
    pub uptime: Duration,
    pub config_version: Option<u64>,
    pub disk_free_bytes: Option<u64>,
    pub clock_synchronized: bool,
    /// While the clock is not synchronised, why (the sources it was judged from); readings
    /// that need the gateway's time are held meanwhile. `null` when it is.
    pub clock_why: Option<String>,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub mqtt_reconnects: u64,
}

/// Builds the message from a store snapshot. Pure.
pub fn build(status: &StoreStatus, facts: ProcessFacts, now_ms: i64) -> Telemetry {
    let destinations: Vec<DestinationHealth> = status
        .destinations
        .iter()
        .map(|d| DestinationHealth {
            id: d.id.clone(),
            backlog: d.pending,
            oldest_undelivered_age_s: age_s(now_ms, d.oldest_pending_ms),
            last_successful_delivery: d.last_delivery_ms.map(|t| format_rfc3339(ms_to_time(t))),
            quarantined: d.quarantined,
        })
        .collect();
    let last_delivery = status
        .destinations
        .iter()
        .filter_map(|d| d.last_delivery_ms)
        .max();
    Telemetry {
        at: format_rfc3339(ms_to_time(now_ms)),
        uptime_s: facts.uptime.as_secs(),
        config_version: facts.config_version,
        destinations,
        backlog: status.readings.pending,
        oldest_undelivered_age_s: age_s(now_ms, status.oldest_undelivered_ms),
        last_successful_delivery: last_delivery.map(|t| format_rfc3339(ms_to_time(t))),
        quarantine_size: status.readings.quarantined,
        devices: status
            .devices
            .iter()
            .map(|d| DeviceHealth {
                transport: d.transport.clone(),
                address: d.address.clone(),
                model: d.model.clone(),
                last_seen: (d.last_seen_ms > 0).then(|| format_rfc3339(ms_to_time(d.last_seen_ms))),
                battery_percent: d.battery_percent,
                rssi_dbm: d.rssi_dbm,
                control_tests: d.control_tests,
            })
            .collect(),
        store_bytes: status.store_bytes,
        disk_free_bytes: facts.disk_free_bytes,
        clock_synchronized: facts.clock_synchronized,
        clock_why: facts.clock_why,
        cpu_percent: facts.cpu_percent,
        rss_bytes: facts.rss_bytes,
        mqtt_reconnects: facts.mqtt_reconnects,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::reader::{DestinationStatus, DeviceSummary, ReadingCounts};

    #[test]
    fn proc_parsing() {
        let stat = "1234 (vital gate (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(
            parse_rss("Name:\tx\nVmRSS:\t  5120 kB\nVmSwap: 0 kB\n"),
            Some(5120 * 1024)
        );
        assert_eq!(parse_rss("Name: x\n"), None);
        assert!(rss_bytes().is_some_and(|b| b > 0));
        assert!(disk_free(Path::new("/")).is_some());
    }

    #[test]
    fn build_reports_backlog_ages_and_devices() {
        let now = 1_800_000_000_000;
        let status = StoreStatus {
            store_bytes: 4096,
            readings: ReadingCounts {
                total: 10,
                pending: 4,
                quarantined: 1,
                delivered: 5,
                unrouted: 0,
                not_patient: 0,
                raw_samples: 0,
                held_unbound: 0,
            },
            oldest_undelivered_ms: Some(now - 90_000),
            destinations: vec![DestinationStatus {
                id: "hospital".into(),
                pending: 4,
                delivered: 5,
                quarantined: 1,
                oldest_pending_ms: Some(now - 90_000),
                last_delivery_ms: Some(now - 1000),
                quarantine_reasons: Vec::new(),
            }],
            devices: vec![
                DeviceSummary {
                    transport: "ble".into(),
                    address: "00:1C:05:FF:E8:74".into(),
                    manufacturer: None,
                    model: Some("UA-651".into()),
                    last_seen_ms: now - 5000,
                    readings: 10,
                    bindings: 1,
                    battery_percent: Some(87),
                    rssi_dbm: Some(-52),
                    control_tests: 0,
                    device_tests: 0,
                },
                DeviceSummary {
                    transport: "ble".into(),
                    address: "00:1C:05:FF:E8:75".into(),
                    manufacturer: None,
                    model: None,
                    last_seen_ms: 0,
                    readings: 0,
                    bindings: 0,
                    battery_percent: None,
                    rssi_dbm: None,
                    control_tests: 0,
                    device_tests: 0,
                },
            ],
            ..Default::default()
        };
        let facts = ProcessFacts {
            uptime: Duration::from_secs(42),
            config_version: Some(3),
            disk_free_bytes: Some(1 << 30),
            clock_synchronized: true,
            clock_why: None,
            cpu_percent: Some(0.5),
            rss_bytes: Some(1 << 20),
            mqtt_reconnects: 2,
        };
        let t = build(&status, facts.clone(), now);
        assert_eq!(t.backlog, 4);
        assert_eq!(t.oldest_undelivered_age_s, 90);
        assert_eq!(t.destinations[0].oldest_undelivered_age_s, 90);
        assert_eq!(t.quarantine_size, 1);
        assert!(t.last_successful_delivery.is_some());
        assert!(t.devices[0].last_seen.is_some());
        assert!(t.devices[1].last_seen.is_none());
        assert_eq!(
            (t.devices[0].battery_percent, t.devices[0].rssi_dbm),
            (Some(87), Some(-52))
        );
        assert_eq!(
            (t.devices[1].battery_percent, t.devices[1].rssi_dbm),
            (None, None)
        );
        let empty = build(&StoreStatus::default(), facts, now);
        assert_eq!((empty.backlog, empty.oldest_undelivered_age_s), (0, 0));
        assert!(empty.destinations.is_empty());
    }
}
