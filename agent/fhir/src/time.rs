//! The PHD IG's time rules (HL7 PHD IG 2.0.0: PhdBaseObservation notes, "Identifier" and
//! "Timestamp: effective[x]"; PhdCoincidentTimeStampObservation notes), as pure functions:
//! which instant an Observation's `effective[x]` gets, and the timestamp part of the
//! conditional-create identifier, which is built from the device's own report only.
//!
//! The rules, for Bluetooth SIG devices (Date Time has no zone), following the PHD IG's
//! PhdBaseObservation notes ("Timestamp: effective[x]"):
//! - no device time stamp at all: the reception time (the IG's rule), unless the record was
//!   read back from the device's memory, whose reception says nothing about when it was
//!   taken ([`TimeHold::StoredWithoutTime`]);
//! - a device time stamp that cannot be placed (a time fault, an unknown year/month/day, a
//!   counter with no start): the IG throws such observations away. A value the device sent
//!   as it was taken (a live stream) takes its reception time; anything else is held out of
//!   the patient's record with the reason ([`TimeHold::DeviceTimeUnusable`]), never given
//!   the download time;
//! - device time with a zone: that instant; not synchronised and an offset measured this
//!   connection: shifted onto the gateway's timeline by the offset;
//! - device time without a zone: shifted by the measured offset when there is one (the offset
//!   is "device wall clock read as if it were UTC, minus gateway UTC", so it carries the zone
//!   difference too); without one, the PHG assumes the device shares its zone;
//! - anything that needs the gateway clock (reception time, an offset measured against it)
//!   while that clock was not synchronised: placed from the monotonic clock once the clock
//!   is synchronised in the same boot, otherwise held; never invented;
//! - after a reboot that monotonic anchor is gone. A reading that carries a usable device
//!   timestamp then keeps the device's own time, as if no offset had been measured (the
//!   offset was taken against a clock known to be wrong, so applying it would place the
//!   reading on no timeline at all): released. A reading whose only time was the
//!   gateway's reception time has no time anyone can establish: it can never be delivered
//!   ([`TimeHold::UnplaceableAfterReboot`]) and delivery quarantines it, with an event,
//!   rather than hold it forever or give it an invented time.

use vitalgate_drivers::model::{Origin, TimeProblem};
use vitalgate_drivers::time::civil_from_days;
use vitalgate_drivers::time::{DeviceTimestamp, LocalDateTime};
use vitalgate_drivers::{Measurement, Receipt};

/// Seconds from 1970-01-01 to 2000-01-01, the PHD identifier epoch.
const EPOCH_2000_S: i64 = 946_684_800;

/// Why a reading has no usable time yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeHold {
    /// The gateway clock was not synchronised at reception and still cannot place it.
    #[error("the gateway clock is not synchronised yet; delivery waits until time is known")]
    GatewayClockUnsynchronised,
    /// Received unsynchronised in an earlier boot with no device time of its own: the
    /// monotonic anchor is gone and no time can ever be established. Final: delivery
    /// quarantines such a reading.
    #[error(
        "received while the gateway clock was unsynchronised, in an earlier boot, with no \
         device time stamp: its time cannot be established"
    )]
    UnplaceableAfterReboot,
    /// A record read back from the device's memory whose own time stamp cannot place it
    /// (the device flagged its clock, the date is incomplete, a CGM session start is
    /// unknown). The PHD IG throws such observations away "since there is no way to give
    /// them a correct timestamp"; the reception time would be a lie about a stored record.
    /// Final: delivery quarantines the reading with this reason, keeping it in the store.
    #[error(
        "the device's own time stamp is unusable ({0}) and the record is not live: its time cannot be established"
    )]
    DeviceTimeUnusable(Problem),
    /// A record read back from the device's memory with no time stamp at all: its reception
    /// time says nothing about when it was taken. Final, as above.
    #[error("a stored record with no device time stamp: its time cannot be established")]
    StoredWithoutTime,
}

/// [`TimeProblem`] with the wording the quarantine reason and `decode` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem(pub TimeProblem);

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            TimeProblem::ClockFault => "the device reports a clock fault",
            TimeProblem::IncompleteDate => "the date is incomplete or not a calendar date",
            TimeProblem::NoAnchor => "a relative time with no known start",
        })
    }
}

impl TimeHold {
    /// Whether waiting can never end this hold: delivery quarantines the reading then.
    pub fn is_final(self) -> bool {
        !matches!(self, TimeHold::GatewayClockUnsynchronised)
    }

    /// A stable name for events and counts.
    pub fn kind(self) -> &'static str {
        match self {
            TimeHold::GatewayClockUnsynchronised => "gateway-clock-unsynchronised",
            TimeHold::UnplaceableAfterReboot => "unplaceable-after-reboot",
            TimeHold::DeviceTimeUnusable(Problem(TimeProblem::ClockFault)) => "device-clock-fault",
            TimeHold::DeviceTimeUnusable(Problem(TimeProblem::IncompleteDate)) => {
                "device-date-incomplete"
            }
            TimeHold::DeviceTimeUnusable(Problem(TimeProblem::NoAnchor)) => {
                "device-time-unanchored"
            }
            TimeHold::StoredWithoutTime => "stored-without-time",
        }
    }
}

/// What the gateway's clock says now (at mapping time) and its zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayTime {
    pub now: Receipt,
    /// The gateway's UTC offset in seconds, used when a device reports local time with no
    /// zone and no offset was measured (the PHG may assume the PHD shares its zone).
    pub utc_offset_s: i32,
}

/// An Observation's time: an instant (ms since the Unix epoch) and the UTC offset to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub utc_ms: i64,
    pub offset_s: i32,
    /// Where the time came from.
    pub source: TimeSource,
}

/// Where an Observation's time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// The device's own time stamp; `corrected` when the offset measured against the
    /// gateway's clock this connection moved it (the coincident time stamp then explains
    /// how, and the Observation links to it).
    Device { corrected: bool },
    /// The gateway's reception time: the device sent no time stamp (or an unusable one) with
    /// a value it sent as it was taken.
    Reception,
}

/// Where the reading's gateway reception time lies on the synchronised timeline.
pub fn reception_ms(rx: &Receipt, gw: &GatewayTime) -> Result<i64, TimeHold> {
    if rx.clock_synchronized {
        return Ok(rx.wall_ms);
    }
    if !gw.now.clock_synchronized {
        return Err(TimeHold::GatewayClockUnsynchronised);
    }
    if gw.now.boot_id != rx.boot_id {
        return Err(TimeHold::UnplaceableAfterReboot);
    }
    let ago_ms = (gw.now.monotonic_ns.saturating_sub(rx.monotonic_ns) / 1_000_000) as i64;
    Ok(gw.now.wall_ms - ago_ms)
}

/// Milliseconds of a complete local date time read as if it were UTC.
pub fn naive_ms(t: &LocalDateTime) -> Option<i64> {
    let secs = t.epoch_seconds().ok()?;
    Some(secs * 1000 + i64::from(t.millis.unwrap_or(0)))
}

/// The usable device time of a reading, if any: complete, not faulted, on a wall clock.
fn usable(ts: Option<&DeviceTimestamp>, time_fault: bool) -> Option<(i64, Option<i32>)> {
    if time_fault {
        return None;
    }
    match ts? {
        DeviceTimestamp::Local { time, zone, dst } => {
            let naive = naive_ms(time)?;
            let zone_s = zone.map(|z| (z.minutes() + dst.map_or(0, |d| d.minutes())) * 60);
            Some((naive, zone_s))
        }
        DeviceTimestamp::Ticks { .. } => None,
    }
}

/// The effective time of a reading per the rules in the module doc and the PHD IG
/// (PhdBaseObservation notes, "Timestamp: effective[x]"): the device's own time where it can
/// be placed; the reception time only for a value with no time stamp, or one the device
/// sent as it was taken; otherwise no time at all (a final hold).
pub fn effective(
    m: &Measurement,
    offset_ms: Option<i64>,
    rx: &Receipt,
    gw: &GatewayTime,
) -> Result<Effective, TimeHold> {
    let reception = || {
        Ok(Effective {
            utc_ms: reception_ms(rx, gw)?,
            offset_s: gw.utc_offset_s,
            source: TimeSource::Reception,
        })
    };
    let live = m.qualifiers.origin == Origin::Live;
    let Some((naive, zone_s)) = usable(m.device_time.as_ref(), m.clock.time_fault) else {
        return match (m.time_problem(), m.device_time.is_some()) {
            (_, _) if live => reception(),
            (Some(p), _) => Err(TimeHold::DeviceTimeUnusable(Problem(p))),
            // A clock fault flagged on a reading without a time stamp says nothing about
            // one the reading does not have.
            (None, false) if m.qualifiers.origin == Origin::Stored => {
                Err(TimeHold::StoredWithoutTime)
            }
            _ => reception(),
        };
    };
    let print_offset = zone_s.unwrap_or(gw.utc_offset_s);
    let device_synchronized = m.clock.synchronized;
    let (utc_ms, corrected) = match (zone_s, offset_ms) {
        (Some(z), _) if device_synchronized => (naive - i64::from(z) * 1000, false),
        (_, Some(off)) => match reception_ms(rx, gw) {
            // The offset was measured against the gateway clock: if that clock was not
            // synchronised then, the offset is off by the clock's own error.
            Ok(placed) => (naive - off + (placed - rx.wall_ms), true),
            // That error can no longer be known: the device's own report is the only time
            // left, read as when no offset is known.
            Err(TimeHold::UnplaceableAfterReboot) => (
                naive - i64::from(zone_s.unwrap_or(gw.utc_offset_s)) * 1000,
                false,
            ),
            Err(hold) => return Err(hold),
        },
        (Some(z), None) => (naive - i64::from(z) * 1000, false),
        (None, None) => (naive - i64::from(gw.utc_offset_s) * 1000, false),
    };
    Ok(Effective {
        utc_ms,
        offset_s: print_offset,
        source: TimeSource::Device { corrected },
    })
}

/// The timestamp part of the PHD conditional-create identifier (IG 2.0.0,
/// GeneratingtheReportedTimeStampIdentifier): seconds since 2000-01-01 of the device's own
/// report at its resolution, then the device's zone+DST in signed 15-minute units when it
/// reported one. Bluetooth Date Time has one-second resolution, so no fraction is printed
/// (Exact Time 256 / ASTM milliseconds print three digits). `None`: the device gave no
/// usable timestamp, and the identifier cannot follow the IG recipe.
pub fn identifier_timestamp(ts: Option<&DeviceTimestamp>, time_fault: bool) -> Option<String> {
    if time_fault {
        return None;
    }
    match ts? {
        DeviceTimestamp::Local { time, zone, dst } => {
            let naive = naive_ms(time)?;
            let secs = naive.div_euclid(1000) - EPOCH_2000_S;
            let mut s = match time.millis {
                Some(ms) => format!("{secs}.{ms:03}"),
                None => secs.to_string(),
            };
            if let Some(z) = zone {
                let q = i32::from(z.quarter_hours) + dst.map_or(0, |d| d.minutes() / 15);
                s.push_str(&format!("{q:+}"));
            }
            Some(s)
        }
        DeviceTimestamp::Ticks {
            ticks,
            resolution_us,
        } => {
            // Tick counters: seconds at the counter's resolution ("12345678" ms → "12345.678").
            let total_us = u128::from(*ticks) * u128::from(*resolution_us);
            let digits = match resolution_us {
                r if r % 1_000_000 == 0 => 0,
                r if r % 1000 == 0 => 3,
                _ => 6,
            };
            let secs = total_us / 1_000_000;
            let frac = total_us % 1_000_000;
            Some(match digits {
                0 => secs.to_string(),
                3 => format!("{secs}.{:03}", frac / 1000),
                _ => format!("{secs}.{frac:06}"),
            })
        }
    }
}

/// An instant as a FHIR `dateTime`/`instant` with the given UTC offset and one-second
/// precision (milliseconds when not whole).
pub fn format_date_time(utc_ms: i64, offset_s: i32) -> String {
    let local_ms = utc_ms + i64::from(offset_s) * 1000;
    let secs = local_ms.div_euclid(1000);
    let ms = local_ms.rem_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let (h, mi, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    let frac = if ms == 0 {
        String::new()
    } else {
        format!(".{ms:03}")
    };
    let zone = if offset_s == 0 {
        "Z".to_owned()
    } else {
        let sign = if offset_s < 0 { '-' } else { '+' };
        let a = offset_s.unsigned_abs();
        format!("{sign}{:02}:{:02}", a / 3600, a % 3600 / 60)
    };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{zone}")
}

/// The gateway's current UTC offset from the C library's view of the local zone (TZ,
/// /etc/localtime). Gateways usually run in UTC, giving 0.
pub fn local_utc_offset_s() -> i32 {
    vitalgate_core::time::local_utc_offset_now_s()
}
