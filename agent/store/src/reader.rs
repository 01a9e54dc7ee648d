//! Read-only queries over the store. Readers use their own connections; in WAL mode they see
//! the last committed state and never block the writer.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use vitalgate_drivers::{DeviceIdentity, Measurement, Transport};

use super::{Keying, StoreError, schema, wal_path};

/// Reading counts and backlog, as `vitalgate status` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreStatus {
    pub path: PathBuf,
    pub schema_version: u32,
    pub store_bytes: u64,
    pub readings: ReadingCounts,
    /// Receipt time of the oldest reading still pending for some destination.
    pub oldest_undelivered_ms: Option<i64>,
    pub destinations: Vec<DestinationStatus>,
    pub devices: Vec<DeviceSummary>,
    pub alarms: Vec<EventSummary>,
    /// Whether the daemon last saw its wall clock synchronised, and why (the latest
    /// `clock-synchronised` / `clock-unsynchronised` event); `None` before a daemon ran.
    pub clock: Option<ClockStatus>,
}

/// The daemon's last view of its clock.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClockStatus {
    pub synchronized: bool,
    /// The evidence, or why there is none.
    pub why: String,
    pub since_ms: i64,
}

/// Readings by delivery state. Every reading is in exactly one of these.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReadingCounts {
    pub total: u64,
    /// Still to be delivered to at least one destination.
    pub pending: u64,
    /// Refused by at least one destination and not pending anywhere.
    pub quarantined: u64,
    /// Delivered to every destination it is routed to.
    pub delivered: u64,
    /// Routed to no destination (none configured when it arrived).
    pub unrouted: u64,
    /// Not the patient's (control-solution tests, the device's own test data): kept, never
    /// sent.
    pub not_patient: u64,
    /// Raw samples of continuous streams, kept beside the reduced readings that are sent.
    pub raw_samples: u64,
    /// Kept but held, whatever their delivery state: no binding for their device and user
    /// index, so no patient to deliver them to (`vitalgate devices` says which).
    pub held_unbound: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DestinationStatus {
    pub id: String,
    pub pending: u64,
    pub delivered: u64,
    pub quarantined: u64,
    pub oldest_pending_ms: Option<i64>,
    pub last_delivery_ms: Option<i64>,
    /// Why its quarantined readings were held out, most frequent first.
    pub quarantine_reasons: Vec<QuarantineReason>,
}

/// One reason readings were quarantined for a destination: the gateway's own (a reading
/// whose time cannot be established, one that cannot be mapped) or the server's refusal.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct QuarantineReason {
    pub reason: String,
    pub readings: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeviceSummary {
    pub transport: String,
    pub address: String,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// 0 for a device bound at provisioning and not seen since.
    pub last_seen_ms: i64,
    pub readings: u64,
    /// Users of the device bound to a patient (a whole-device binding counts as one).
    pub bindings: u64,
    /// Battery level (0-100) as last read from the device, if it has a Battery Service.
    pub battery_percent: Option<u8>,
    /// Signal strength at the last scan or connection, if the transport has one.
    pub rssi_dbm: Option<i16>,
    /// Control-solution tests among its readings (kept, never sent).
    pub control_tests: u64,
    /// Readings the device marked as its own test or demonstration data (kept, never sent).
    pub device_tests: u64,
}

/// A device's last-seen time, battery and signal, for `vitalgate devices` and telemetry.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DeviceStatus {
    /// 0 for a device bound but never seen.
    pub last_seen_ms: i64,
    pub battery_percent: Option<u8>,
    /// When the battery level was read.
    pub battery_ms: Option<i64>,
    pub rssi_dbm: Option<i16>,
    /// When the signal strength was measured.
    pub rssi_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventSummary {
    pub at_ms: i64,
    pub severity: String,
    pub kind: String,
    pub detail: String,
}

/// A stored reading, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReading {
    pub id: i64,
    pub transport: Transport,
    pub address: String,
    pub dedup_key: String,
    pub received_ms: i64,
    pub measurement: Measurement,
    pub raw: Vec<u8>,
    /// Device clock minus gateway clock at the connection the reading came in on, if known.
    pub clock_offset_ms: Option<i64>,
}

/// A read-only view of the store.
#[derive(Debug)]
pub struct StoreReader {
    conn: Connection,
    path: PathBuf,
}

impl StoreReader {
    /// Opens an existing store; never creates one.
    pub fn open(path: &Path, keying: &Keying) -> Result<Self, StoreError> {
        let conn = super::open_read_only(path, keying, 1024)?;
        let version = schema::version(&conn)
            .map_err(|e| StoreError::from_sqlite(path, "read schema version", e))?;
        if version < schema::LATEST_VERSION {
            // Only the writer migrates; a reader of an older store asks for it to run first.
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!(
                    "schema version {version} is older than {}: start `vitalgate run` once to migrate it",
                    schema::LATEST_VERSION
                ),
            });
        }
        conn.execute_batch("PRAGMA query_only = ON")
            .map_err(|e| StoreError::from_sqlite(path, "set query_only", e))?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    fn sql(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |e| StoreError::from_sqlite(&self.path, op, e)
    }

    /// Why readings are quarantined for `destination`: the gateway's reason as written, or
    /// the server's refusal by its HTTP status (its OperationOutcome stays in the store).
    /// Each reading counted once, by its latest quarantine.
    fn quarantine_reasons(&self, destination: &str) -> Result<Vec<QuarantineReason>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT CASE WHEN q.http_status IS NULL THEN coalesce(q.outcome, 'no reason recorded') \
                 ELSE 'refused by the server (HTTP ' || q.http_status || ')' END AS why, \
                 count(DISTINCT q.reading_id) FROM quarantine q \
                 JOIN deliveries d ON d.reading_id = q.reading_id AND d.destination = q.destination \
                 WHERE q.destination = ?1 AND d.state = 2 \
                 AND q.id = (SELECT max(id) FROM quarantine x WHERE x.reading_id = q.reading_id \
                 AND x.destination = q.destination) \
                 GROUP BY why ORDER BY 2 DESC, 1",
            )
            .map_err(self.sql("quarantine reasons"))?;
        let rows = stmt
            .query_map([destination], |r| {
                Ok(QuarantineReason {
                    reason: r.get(0)?,
                    readings: r.get::<_, i64>(1)? as u64,
                })
            })
            .map_err(self.sql("quarantine reasons"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.sql("quarantine reasons"))
    }

    pub fn status(&self) -> Result<StoreStatus, StoreError> {
        let c = &self.conn;
        let count = |q: &str| -> Result<u64, StoreError> {
            c.query_row(q, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(self.sql("count"))
        };
        let total = count("SELECT count(*) FROM readings")?;
        let not_patient = count(
            "SELECT count(*) FROM readings WHERE kept_as IN ('control-solution', 'device-test')",
        )?;
        let raw_samples = count("SELECT count(*) FROM readings WHERE kept_as = 'raw-sample'")?;
        let routed = count("SELECT count(DISTINCT reading_id) FROM deliveries")?;
        let pending = count("SELECT count(DISTINCT reading_id) FROM deliveries WHERE state = 0")?;
        let quarantined = count(
            "SELECT count(DISTINCT reading_id) FROM deliveries d WHERE state = 2 \
             AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.reading_id = d.reading_id AND p.state = 0)",
        )?;
        let readings = ReadingCounts {
            total,
            pending,
            quarantined,
            delivered: routed.saturating_sub(pending + quarantined),
            unrouted: total.saturating_sub(routed + not_patient + raw_samples),
            not_patient,
            raw_samples,
            held_unbound: count(
                "SELECT count(*) FROM readings r WHERE r.kept_as IS NULL AND NOT EXISTS (SELECT 1 FROM bindings b \
                 WHERE b.device_id = r.device_id AND b.user_index IN (coalesce(r.user_index, -1), -1))",
            )?,
        };

        let mut destinations: Vec<DestinationStatus> = Vec::new();
        {
            let mut stmt = c
                .prepare("SELECT destination, state, count(*) FROM deliveries GROUP BY destination, state")
                .map_err(self.sql("destination counts"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(self.sql("destination counts"))?;
            for row in rows {
                let (id, state, n) = row.map_err(self.sql("destination counts"))?;
                let pos = match destinations.iter().position(|d| d.id == id) {
                    Some(p) => p,
                    None => {
                        destinations.push(DestinationStatus {
                            id,
                            ..Default::default()
                        });
                        destinations.len() - 1
                    }
                };
                let d = &mut destinations[pos];
                match state {
                    0 => d.pending = n as u64,
                    1 => d.delivered = n as u64,
                    _ => d.quarantined += n as u64,
                }
            }
        }
        let mut oldest: Option<i64> = None;
        for d in &mut destinations {
            if d.quarantined > 0 {
                d.quarantine_reasons = self.quarantine_reasons(&d.id)?;
            }
            d.oldest_pending_ms = c
                .query_row(
                    "SELECT r.received_ms FROM readings r WHERE r.id = \
                     (SELECT min(reading_id) FROM deliveries WHERE state = 0 AND destination = ?1)",
                    [&d.id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.sql("oldest pending"))?;
            d.last_delivery_ms = c
                .query_row(
                    "SELECT max(delivered_ms) FROM deliveries WHERE state = 1 AND destination = ?1",
                    [&d.id],
                    |r| r.get(0),
                )
                .map_err(self.sql("last delivery"))?;
            if let Some(t) = d.oldest_pending_ms {
                oldest = Some(oldest.map_or(t, |o: i64| o.min(t)));
            }
        }

        let mut devices = Vec::new();
        {
            let mut stmt = c
                .prepare(
                    "SELECT d.transport, d.address, d.identity, d.last_seen_ms, \
                     (SELECT count(*) FROM readings r WHERE r.device_id = d.id), \
                     (SELECT count(*) FROM bindings b WHERE b.device_id = d.id), \
                     s.battery_percent, s.rssi_dbm, \
                     (SELECT count(*) FROM readings r WHERE r.device_id = d.id \
                      AND r.kept_as = 'control-solution'), \
                     (SELECT count(*) FROM readings r WHERE r.device_id = d.id \
                      AND r.kept_as = 'device-test') \
                     FROM devices d LEFT JOIN device_status s ON s.device_id = d.id \
                     ORDER BY d.last_seen_ms DESC",
                )
                .map_err(self.sql("devices"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, Option<u8>>(6)?,
                        r.get::<_, Option<i16>>(7)?,
                        r.get::<_, i64>(8)?,
                        r.get::<_, i64>(9)?,
                    ))
                })
                .map_err(self.sql("devices"))?;
            for row in rows {
                let (
                    transport,
                    address,
                    identity,
                    last_seen_ms,
                    n,
                    bound,
                    battery_percent,
                    rssi_dbm,
                    control_tests,
                    device_tests,
                ) = row.map_err(self.sql("devices"))?;
                let identity: Option<DeviceIdentity> =
                    super::codec::decode_identity(&identity).ok();
                devices.push(DeviceSummary {
                    transport,
                    address,
                    manufacturer: identity.as_ref().and_then(|i| i.manufacturer.clone()),
                    model: identity.and_then(|i| i.model),
                    last_seen_ms,
                    readings: n as u64,
                    bindings: bound as u64,
                    battery_percent,
                    rssi_dbm,
                    control_tests: control_tests as u64,
                    device_tests: device_tests as u64,
                });
            }
        }

        let alarms = self.query_events(Some("alarm"), 10)?;
        let clock = c
            .query_row(
                "SELECT at_ms, kind, detail FROM events \
                 WHERE kind IN ('clock-synchronised', 'clock-unsynchronised') \
                 ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(self.sql("clock state"))?
            .map(|(at_ms, kind, detail)| ClockStatus {
                synchronized: kind == "clock-synchronised",
                why: serde_json::from_str::<serde_json::Value>(&detail)
                    .ok()
                    .and_then(|d| d["why"].as_str().map(str::to_owned))
                    .unwrap_or_default(),
                since_ms: at_ms,
            });

        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        Ok(StoreStatus {
            path: self.path.clone(),
            schema_version: schema::version(c).map_err(self.sql("schema version"))?,
            store_bytes: size(&self.path) + size(&wal_path(&self.path)),
            readings,
            oldest_undelivered_ms: oldest,
            destinations,
            devices,
            alarms,
            clock,
        })
    }

    /// Every reading of one device, in id order.
    pub fn readings_for_device(
        &self,
        transport: Transport,
        address: &str,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT r.id, r.dedup_key, r.received_ms, r.measurement, r.raw, r.clock_offset_ms \
                 FROM readings r \
                 JOIN devices d ON d.id = r.device_id \
                 WHERE d.transport = ?1 AND d.address = ?2 ORDER BY r.id",
            )
            .map_err(self.sql("list readings"))?;
        let rows = stmt
            .query_map(params![transport.as_str(), address], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            })
            .map_err(self.sql("list readings"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, dedup_key, received_ms, body, raw, clock_offset_ms) =
                row.map_err(self.sql("list readings"))?;
            let measurement = super::codec::decode(&body).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("reading {id} cannot be decoded: {e}"),
            })?;
            out.push(StoredReading {
                id,
                transport,
                address: address.to_owned(),
                dedup_key,
                received_ms,
                measurement,
                raw,
                clock_offset_ms,
            });
        }
        Ok(out)
    }

    /// The stored cursor of a device stream.
    /// A device's last-seen time, battery level and signal strength; `None` for a device
    /// never seen nor bound. The one place other modules (fleet telemetry, `vitalgate
    /// devices`) read them from; [`StoreHandle::record_device_status`] writes them.
    ///
    /// [`StoreHandle::record_device_status`]: super::StoreHandle::record_device_status
    pub fn device_status(
        &self,
        transport: Transport,
        address: &str,
    ) -> Result<Option<DeviceStatus>, StoreError> {
        self.conn
            .query_row(
                "SELECT d.last_seen_ms, s.battery_percent, s.battery_ms, s.rssi_dbm, s.rssi_ms \
                 FROM devices d LEFT JOIN device_status s ON s.device_id = d.id \
                 WHERE d.transport = ?1 AND d.address = ?2",
                params![transport.as_str(), address],
                |r| {
                    Ok(DeviceStatus {
                        last_seen_ms: r.get(0)?,
                        battery_percent: r.get(1)?,
                        battery_ms: r.get(2)?,
                        rssi_dbm: r.get(3)?,
                        rssi_ms: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(self.sql("device status"))
    }

    pub fn cursor(
        &self,
        transport: Transport,
        address: &str,
        stream: &str,
    ) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT c.value FROM cursors c JOIN devices d ON d.id = c.device_id \
                 WHERE d.transport = ?1 AND d.address = ?2 AND c.stream = ?3",
                params![transport.as_str(), address, stream],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("read cursor"))
    }

    /// Addresses of the devices of one transport on this gateway's allowlist.
    pub fn allowed_addresses(&self, transport: Transport) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT address FROM devices WHERE transport = ?1 AND allowed = 1")
            .map_err(self.sql("allowlist"))?;
        let rows = stmt
            .query_map([transport.as_str()], |r| r.get(0))
            .map_err(self.sql("allowlist"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.sql("allowlist"))
    }

    /// Recent events, newest first.
    pub fn events(&self, limit: usize) -> Result<Vec<EventSummary>, StoreError> {
        self.query_events(None, limit)
    }

    /// Recent events of one severity (or all), newest first.
    fn query_events(
        &self,
        severity: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT at_ms, severity, kind, detail FROM events \
                 WHERE ?1 IS NULL OR severity = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(self.sql("events"))?;
        let rows = stmt
            .query_map(rusqlite::params![severity, limit as i64], |r| {
                Ok(EventSummary {
                    at_ms: r.get(0)?,
                    severity: r.get(1)?,
                    kind: r.get(2)?,
                    detail: r.get(3)?,
                })
            })
            .map_err(self.sql("events"))?;
        rows.collect::<Result<_, _>>().map_err(self.sql("events"))
    }
}
