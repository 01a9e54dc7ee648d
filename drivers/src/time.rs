//! Device time as devices report it: Bluetooth Date Time fields (any of which may be
//! "unknown"), time zone and DST offsets, and the clock-quality facts the PHD IG timestamp
//! rules need. Nothing here reads the host clock; gateway time lives in [`crate::model::Receipt`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::DecodeError;

/// A wall-clock date and time as the device reports it, with no time zone.
///
/// Bluetooth Date Time (0x2A08) allows year, month and day to be "unknown" (0); they are
/// `None` here rather than a made-up value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LocalDateTime {
    pub year: Option<u16>,
    pub month: Option<u8>,
    pub day: Option<u8>,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// Sub-second part in milliseconds, when the device reports one (Exact Time 256, ASTM).
    pub millis: Option<u16>,
}

impl LocalDateTime {
    /// True when every calendar field is known, so the value denotes one instant (given a zone).
    pub fn is_complete(&self) -> bool {
        self.year.is_some() && self.month.is_some() && self.day.is_some()
    }
}

impl fmt::Display for LocalDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.year {
            Some(y) => write!(f, "{y:04}")?,
            None => f.write_str("????")?,
        }
        match self.month {
            Some(m) => write!(f, "-{m:02}")?,
            None => f.write_str("-??")?,
        }
        match self.day {
            Some(d) => write!(f, "-{d:02}")?,
            None => f.write_str("-??")?,
        }
        write!(f, "T{:02}:{:02}:{:02}", self.hour, self.minute, self.second)?;
        if let Some(ms) = self.millis {
            write!(f, ".{ms:03}")?;
        }
        Ok(())
    }
}

/// Bluetooth Time Zone (0x2A0E): offset from UTC in 15-minute steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimeZone {
    pub quarter_hours: i8,
}

impl TimeZone {
    pub fn minutes(self) -> i32 {
        i32::from(self.quarter_hours) * 15
    }
}

/// Bluetooth DST Offset (0x2A0D).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DstOffset {
    Standard,
    HalfHour,
    OneHour,
    TwoHours,
}

impl DstOffset {
    pub fn minutes(self) -> i32 {
        match self {
            DstOffset::Standard => 0,
            DstOffset::HalfHour => 30,
            DstOffset::OneHour => 60,
            DstOffset::TwoHours => 120,
        }
    }
}

/// A timestamp reported by the device, and what the device says about its own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceTimestamp {
    /// Device wall-clock time (the usual case for Bluetooth SIG profiles and serial meters).
    Local {
        time: LocalDateTime,
        /// Offset from UTC, when the device reports one.
        zone: Option<TimeZone>,
        dst: Option<DstOffset>,
    },
    /// A relative time counter, e.g. CGM minutes since session start before the session start
    /// is known, or a GHS tick counter.
    Ticks {
        ticks: u64,
        /// Length of one tick in microseconds.
        resolution_us: u32,
    },
}

/// What the device reports about its clock for a given reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClockFlags {
    /// The device flagged its clock as not set, or a time fault (PLX flag bit 4, glucose
    /// status bit 11). The PHD IG treats such a timestamp as unusable.
    pub time_fault: bool,
    /// The device's clock is externally synchronised (e.g. set from the gateway this session).
    pub synchronized: bool,
}

/// Decodes a Bluetooth Date Time (0x2A08), 7 bytes: year u16, month, day, hours, minutes,
/// seconds. Zero year, month or day mean "unknown".
pub fn decode_date_time(
    characteristic: &'static str,
    offset: usize,
    bytes: &[u8],
) -> Result<LocalDateTime, DecodeError> {
    let b: &[u8; 7] =
        bytes
            .get(..7)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Truncated {
                characteristic,
                offset,
                needed: 7,
                available: bytes.len(),
            })?;
    let year = u16::from_le_bytes([b[0], b[1]]);
    let (month, day, hour, minute, second) = (b[2], b[3], b[4], b[5], b[6]);
    let invalid = |field: &'static str, at: usize, value: u32| DecodeError::Invalid {
        characteristic,
        offset: offset + at,
        reason: format!("{field} {value} is out of range"),
    };
    if year != 0 && !(1582..=9999).contains(&year) {
        return Err(invalid("year", 0, u32::from(year)));
    }
    if month > 12 {
        return Err(invalid("month", 2, u32::from(month)));
    }
    if day > 31 {
        return Err(invalid("day", 3, u32::from(day)));
    }
    if hour > 23 {
        return Err(invalid("hours", 4, u32::from(hour)));
    }
    if minute > 59 {
        return Err(invalid("minutes", 5, u32::from(minute)));
    }
    if second > 59 {
        return Err(invalid("seconds", 6, u32::from(second)));
    }
    Ok(LocalDateTime {
        year: (year != 0).then_some(year),
        month: (month != 0).then_some(month),
        day: (day != 0).then_some(day),
        hour,
        minute,
        second,
        millis: None,
    })
}

/// Decodes a Bluetooth Time Zone byte: `Ok(None)` for "unknown" (-128), an error outside
/// -48..=56.
pub fn decode_time_zone(
    characteristic: &'static str,
    offset: usize,
    byte: u8,
) -> Result<Option<TimeZone>, DecodeError> {
    let q = byte as i8;
    match q {
        -128 => Ok(None),
        -48..=56 => Ok(Some(TimeZone { quarter_hours: q })),
        _ => Err(DecodeError::Invalid {
            characteristic,
            offset,
            reason: format!("time zone {q} is outside -48..=56 quarter hours"),
        }),
    }
}

/// Decodes a Bluetooth DST Offset byte: `Ok(None)` for "unknown" (255).
pub fn decode_dst_offset(
    characteristic: &'static str,
    offset: usize,
    byte: u8,
) -> Result<Option<DstOffset>, DecodeError> {
    match byte {
        0 => Ok(Some(DstOffset::Standard)),
        2 => Ok(Some(DstOffset::HalfHour)),
        4 => Ok(Some(DstOffset::OneHour)),
        8 => Ok(Some(DstOffset::TwoHours)),
        255 => Ok(None),
        other => Err(DecodeError::Invalid {
            characteristic,
            offset,
            reason: format!("DST offset {other} is not one of 0, 2, 4, 8 or 255"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ble-health-profiles.md §4.1 vector 7.
    #[test]
    fn date_time_today() {
        let t = decode_date_time("2A08", 0, &[0xE2, 0x07, 0x04, 0x11, 0x0F, 0x33, 0x00])
            .expect("valid date time");
        assert_eq!(t.to_string(), "2018-04-17T15:51:00");
        assert!(t.is_complete());
    }

    // §4.1 vector 8.
    #[test]
    fn date_time_date_not_known() {
        let t = decode_date_time("2A08", 0, &[0, 0, 0, 0, 0x12, 0x1A, 0x20]).expect("valid");
        assert_eq!(t.year, None);
        assert_eq!(t.month, None);
        assert_eq!(t.day, None);
        assert_eq!((t.hour, t.minute, t.second), (18, 26, 32));
        assert!(!t.is_complete());
    }

    #[test]
    fn date_time_rejects_short_and_out_of_range() {
        let e = decode_date_time("2A35", 7, &[0xE2, 0x07, 0x04]).expect_err("short");
        assert_eq!(
            e.to_string(),
            "characteristic 2A35: need 7 bytes at offset 7, only 3 available"
        );
        let e = decode_date_time("2A35", 7, &[0xE2, 0x07, 13, 1, 0, 0, 0]).expect_err("month");
        assert!(e.to_string().contains("offset 9"), "{e}");
        assert!(decode_date_time("x", 0, &[0xE2, 0x07, 1, 1, 24, 0, 0]).is_err());
        assert!(decode_date_time("x", 0, &[0x01, 0x00, 1, 1, 0, 0, 0]).is_err());
    }

    // §4.1 vector 9: DST 00/02/04/08/FF/11 and TZ 01, 80, 3C.
    #[test]
    fn dst_and_time_zone_vectors() {
        let dst = |b| decode_dst_offset("2A0D", 0, b);
        assert_eq!(dst(0x00).map(|d| d.map(DstOffset::minutes)), Ok(Some(0)));
        assert_eq!(dst(0x02).map(|d| d.map(DstOffset::minutes)), Ok(Some(30)));
        assert_eq!(dst(0x04).map(|d| d.map(DstOffset::minutes)), Ok(Some(60)));
        assert_eq!(dst(0x08).map(|d| d.map(DstOffset::minutes)), Ok(Some(120)));
        assert_eq!(dst(0xFF), Ok(None));
        assert!(dst(0x11).is_err());

        let tz = |b| decode_time_zone("2A0E", 0, b);
        assert_eq!(tz(0x01).map(|z| z.map(TimeZone::minutes)), Ok(Some(15)));
        assert_eq!(tz(0x80), Ok(None));
        assert!(tz(0x3C).is_err());
        assert_eq!(tz(0xD0).map(|z| z.map(TimeZone::minutes)), Ok(Some(-720)));
    }
}
