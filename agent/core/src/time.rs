//! The one place the gateway reads the wall clock and the local time zone. Everything else
//! asks here (or through the agent's `Clock`, which adds what is known about the clock's
//! synchronisation), so a test or a review finds every time source in one file.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The wall clock as a `SystemTime`.
#[allow(clippy::disallowed_methods)] // The one sanctioned reader of the wall clock.
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// The wall clock in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    to_ms(now())
}

/// A `SystemTime` in milliseconds since the Unix epoch (0 before it, saturating far after).
pub fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch as a `SystemTime` (the epoch for negative values).
pub fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The local time zone's offset from UTC at `utc_s` (seconds since the epoch), in seconds,
/// from the C library's view of the zone (TZ, /etc/localtime); 0 when it cannot be told.
/// Gateways usually run in UTC.
#[allow(unsafe_code)]
pub fn local_utc_offset_s(utc_s: i64) -> i64 {
    // `time_t` is 32 bits on 32-bit ARM: a time past 2038 wraps there, and the C library
    // answers for some other time, which only shifts an offset no gateway relies on then.
    #[allow(clippy::unnecessary_cast, clippy::cast_possible_truncation)]
    let t = utc_s as libc::time_t;
    // SAFETY: localtime_r writes only into the tm we own; a zeroed tm is a valid start.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call, and localtime_r (unlike
    // localtime) keeps no shared state, so concurrent calls are sound.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() {
        return 0;
    }
    // `tm_gmtoff` is a C long: 32 bits on 32-bit ARM, 64 on the others.
    #[allow(clippy::useless_conversion)]
    i64::from(tm.tm_gmtoff)
}

/// The local offset now, in seconds.
pub fn local_utc_offset_now_s() -> i32 {
    i32::try_from(local_utc_offset_s(now_ms().div_euclid(1000))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_trip_and_clamp_before_the_epoch() {
        assert_eq!(to_ms(from_ms(1_764_000_000_123)), 1_764_000_000_123);
        assert_eq!(to_ms(UNIX_EPOCH - Duration::from_secs(5)), 0);
        assert_eq!(from_ms(-5), UNIX_EPOCH);
        assert!(now_ms() > 1_700_000_000_000);
    }

    #[test]
    fn the_offset_is_within_a_day() {
        // The zone here is whatever the machine has; any real zone is within ±14 h.
        assert!(local_utc_offset_now_s().abs() <= 14 * 3600);
    }
}
