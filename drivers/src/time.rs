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

/// Why calendar arithmetic on a [`LocalDateTime`] could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The device reported year, month or day as "unknown" (0), so there is no calendar date
    /// to count from.
    #[error("the date has an unknown year, month or day")]
    UnknownDate,
    /// The fields do not name a real date and time (e.g. 31 February, which Date Time's
    /// per-field ranges let through, or hour 25).
    #[error("{0} is not a calendar date and time")]
    InvalidDate(LocalDateTime),
    /// The result falls outside the years Bluetooth Date Time can carry (1582..=9999).
    #[error("the result is outside the years 1582..=9999")]
    OutOfRange,
}

/// Days in `month` of `year` in the proleptic Gregorian calendar.
pub fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Gregorian leap year rule: every 4th year, except centuries not divisible by 400.
pub fn is_leap_year(year: u16) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's `days_from_civil`; exact for any
/// Gregorian date, which is all integer arithmetic and so never rounds).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl LocalDateTime {
    /// The date as `(year, month, day)` when all three are known and name a real day, and
    /// the time of day is one (a leap second 60 allowed): device protocols whose fields are
    /// wider than their range (TaiDoc's 5-bit hour) can carry neither.
    fn checked_date(&self) -> Result<(u16, u8, u8), TimeError> {
        let (Some(year), Some(month), Some(day)) = (self.year, self.month, self.day) else {
            return Err(TimeError::UnknownDate);
        };
        if !(1..=12).contains(&month)
            || day == 0
            || day > days_in_month(year, month)
            || self.hour > 23
            || self.minute > 59
            || self.second > 60
        {
            return Err(TimeError::InvalidDate(*self));
        }
        Ok((year, month, day))
    }

    /// This time plus `minutes` (which may be negative), on the calendar: month and year
    /// rollover and leap years are exact. Seconds and milliseconds are kept as they are.
    ///
    /// Glucose "base time + time offset" and CGM "session start + time offset" use it. It
    /// refuses a date with an unknown field rather than guess one.
    pub fn add_minutes(&self, minutes: i64) -> Result<LocalDateTime, TimeError> {
        // Through the minute boundary, so that a device's second (even a leap second 60) and
        // milliseconds come back exactly as they were.
        let start = self.epoch_seconds()? - i64::from(self.second);
        let secs = minutes
            .checked_mul(60)
            .and_then(|m| m.checked_add(start))
            .ok_or(TimeError::OutOfRange)?;
        Ok(LocalDateTime {
            second: self.second,
            millis: self.millis,
            ..Self::from_epoch_seconds(secs)?
        })
    }

    /// Seconds since 1970-01-01T00:00:00 of this wall time read as if it were UTC. Serial
    /// devices keep local time with no zone; the caller adds the zone it knows.
    pub fn epoch_seconds(&self) -> Result<i64, TimeError> {
        let (year, month, day) = self.checked_date()?;
        let days = days_from_civil(i64::from(year), i64::from(month), i64::from(day));
        Ok(days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second))
    }

    /// The inverse of [`LocalDateTime::epoch_seconds`] (no milliseconds).
    pub fn from_epoch_seconds(secs: i64) -> Result<LocalDateTime, TimeError> {
        let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        let year = u16::try_from(y)
            .ok()
            .filter(|y| (1582..=9999).contains(y))
            .ok_or(TimeError::OutOfRange)?;
        let narrow = |v: i64| u8::try_from(v).map_err(|_| TimeError::OutOfRange);
        Ok(LocalDateTime {
            year: Some(year),
            month: Some(narrow(mo)?),
            day: Some(narrow(d)?),
            hour: narrow(sod / 3600)?,
            minute: narrow(sod / 60 % 60)?,
            second: narrow(sod % 60)?,
            millis: None,
        })
    }

    /// This time plus `seconds` on the calendar (stored oximeter samples are 1 s apart).
    pub fn add_seconds(&self, seconds: i64) -> Result<LocalDateTime, TimeError> {
        let start = self.epoch_seconds()?;
        let mut t =
            Self::from_epoch_seconds(start.checked_add(seconds).ok_or(TimeError::OutOfRange)?)?;
        t.millis = self.millis;
        Ok(t)
    }

    /// ISO day of the week, 1 = Monday … 7 = Sunday (the Bluetooth Day of Week coding).
    pub fn day_of_week(&self) -> Result<u8, TimeError> {
        let (year, month, day) = self.checked_date()?;
        let days = days_from_civil(i64::from(year), i64::from(month), i64::from(day));
        // 1970-01-01 was a Thursday (4).
        let dow = (days + 3).rem_euclid(7) + 1;
        u8::try_from(dow).map_err(|_| TimeError::OutOfRange)
    }
}

/// Encodes a Bluetooth Date Time (0x2A08): the inverse of [`decode_date_time`]. Unknown
/// fields are written as 0, as the specification asks.
pub fn encode_date_time(t: &LocalDateTime) -> [u8; 7] {
    let [y0, y1] = t.year.unwrap_or(0).to_le_bytes();
    [
        y0,
        y1,
        t.month.unwrap_or(0),
        t.day.unwrap_or(0),
        t.hour,
        t.minute,
        t.second,
    ]
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

/// A device wall-clock time without zone or DST information (Bluetooth Date Time, and the
/// serial protocols' clocks, carry neither).
pub fn zoneless(time: LocalDateTime) -> DeviceTimestamp {
    DeviceTimestamp::Local {
        time,
        zone: None,
        dst: None,
    }
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

    // drivers/docs/test-vectors.md, "Encodings" vector 7.
    #[test]
    fn date_time_today() {
        let t = decode_date_time("2A08", 0, &[0xE2, 0x07, 0x04, 0x11, 0x0F, 0x33, 0x00])
            .expect("valid date time");
        assert_eq!(t.to_string(), "2018-04-17T15:51:00");
        assert!(t.is_complete());
    }

    // test-vectors.md, "Encodings" vector 8.
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

    fn dt(y: u16, mo: u8, d: u8, h: u8, mi: u8) -> LocalDateTime {
        LocalDateTime {
            year: Some(y),
            month: Some(mo),
            day: Some(d),
            hour: h,
            minute: mi,
            second: 30,
            millis: None,
        }
    }

    #[test]
    fn add_minutes_rolls_over_days_months_years_and_leap_days() {
        let add = |t: LocalDateTime, m| t.add_minutes(m).map(|t| t.to_string());
        // test-vectors.md, "Glucose" vector 24: base 2019-02-27 11:10:30, offset -5 min.
        assert_eq!(
            add(dt(2019, 2, 27, 11, 10), -5),
            Ok("2019-02-27T11:05:30".into())
        );
        assert_eq!(
            add(dt(2019, 12, 31, 23, 59), 1),
            Ok("2020-01-01T00:00:30".into())
        );
        assert_eq!(
            add(dt(2020, 2, 28, 23, 30), 60),
            Ok("2020-02-29T00:30:30".into())
        );
        assert_eq!(
            add(dt(2100, 2, 28, 23, 30), 60),
            Ok("2100-03-01T00:30:30".into())
        );
        assert_eq!(
            add(dt(2000, 3, 1, 0, 0), -1),
            Ok("2000-02-29T23:59:30".into())
        );
        assert_eq!(
            add(dt(2021, 1, 1, 0, 0), -1),
            Ok("2020-12-31T23:59:30".into())
        );
        // A CGM session of two weeks, in minutes.
        assert_eq!(
            add(dt(2024, 2, 20, 8, 0), 14 * 1440),
            Ok("2024-03-05T08:00:30".into())
        );
        assert_eq!(
            add(dt(2024, 5, 1, 0, 0), 0),
            Ok("2024-05-01T00:00:30".into())
        );
    }

    #[test]
    fn add_minutes_refuses_unknown_or_impossible_dates() {
        let mut t = dt(2019, 2, 27, 11, 10);
        t.year = None;
        assert_eq!(t.add_minutes(5), Err(TimeError::UnknownDate));
        let mut t = dt(2019, 2, 27, 11, 10);
        t.day = None;
        assert_eq!(t.add_minutes(0), Err(TimeError::UnknownDate));
        let feb30 = dt(2019, 2, 30, 0, 0);
        assert_eq!(feb30.add_minutes(1), Err(TimeError::InvalidDate(feb30)));
        assert_eq!(
            dt(9999, 12, 31, 23, 59).add_minutes(1),
            Err(TimeError::OutOfRange)
        );
        assert_eq!(
            dt(1582, 1, 1, 0, 0).add_minutes(-1),
            Err(TimeError::OutOfRange)
        );
        assert_eq!(
            dt(2000, 1, 1, 0, 0).add_minutes(i64::MAX),
            Err(TimeError::OutOfRange)
        );
    }

    #[test]
    fn day_of_week_and_date_time_encoding() {
        assert_eq!(dt(2018, 4, 17, 0, 0).day_of_week(), Ok(2)); // a Tuesday
        assert_eq!(dt(2000, 1, 1, 0, 0).day_of_week(), Ok(6)); // a Saturday
        assert_eq!(dt(2024, 3, 3, 0, 0).day_of_week(), Ok(7)); // a Sunday
        let bytes = [0xE2, 0x07, 0x04, 0x11, 0x0F, 0x33, 0x00];
        let t = decode_date_time("2A08", 0, &bytes).expect("valid");
        assert_eq!(encode_date_time(&t), bytes);
        let unknown = [0, 0, 0, 0, 0x12, 0x1A, 0x20];
        let t = decode_date_time("2A08", 0, &unknown).expect("valid");
        assert_eq!(encode_date_time(&t), unknown);
    }

    proptest::proptest! {
        #[test]
        fn add_minutes_is_invertible(
            y in 1600u16..9000, mo in 1u8..=12, d in 1u8..=28, h in 0u8..24, mi in 0u8..60,
            delta in -10_000_000i64..10_000_000,
        ) {
            let t = dt(y, mo, d, h, mi);
            let there = t.add_minutes(delta).expect("in range");
            proptest::prop_assert_eq!(there.add_minutes(-delta), Ok(t));
            let day = there.day.unwrap_or(0);
            proptest::prop_assert!(day >= 1 && day <= days_in_month(there.year.unwrap_or(0), there.month.unwrap_or(0)));
        }
    }

    // test-vectors.md, "Encodings" vector 9: DST 00/02/04/08/FF/11 and TZ 01, 80, 3C.
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
