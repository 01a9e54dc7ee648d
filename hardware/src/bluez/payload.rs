//! Characteristic payloads the virtual peripherals send, built byte by byte here (not with the
//! drivers' encoders) so the simulator is an independent check on the decoders. The first
//! stored record of several profiles is a test vector from the reference notes, bytes exactly
//! as published; the rest are generated from a record index with values a test can predict.

use vitalgate_drivers::crc::e2e_crc;
use vitalgate_drivers::time::{civil_from_days, days_from_civil};

/// A calendar time as the Bluetooth Date Time (0x2A08) carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl DateTime {
    pub fn encode(&self) -> [u8; 7] {
        let [y0, y1] = self.year.to_le_bytes();
        [
            y0,
            y1,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
        ]
    }

    /// Civil time of a Unix time in milliseconds (no zone: the device's wall clock).
    pub fn from_unix_ms(ms: i64) -> Self {
        let secs = ms.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        Self {
            year: y as u16,
            month: m as u8,
            day: d as u8,
            hour: (sod / 3600) as u8,
            minute: (sod % 3600 / 60) as u8,
            second: (sod % 60) as u8,
        }
    }

    /// Unix milliseconds of this civil time read as UTC.
    pub fn to_unix_ms(&self) -> i64 {
        let days = days_from_civil(
            i64::from(self.year),
            i64::from(self.month),
            i64::from(self.day),
        );
        (days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second))
            * 1000
    }

    /// ISO day of week, 1 = Monday.
    pub fn day_of_week(&self) -> u8 {
        let days = days_from_civil(
            i64::from(self.year),
            i64::from(self.month),
            i64::from(self.day),
        );
        ((days + 3).rem_euclid(7) + 1) as u8
    }
}

/// An SFLOAT with exponent `exp` (two's-complement nibble) and 12-bit mantissa.
pub fn sfloat(mantissa: i16, exp: i8) -> [u8; 2] {
    let word = ((exp as u16 & 0x0F) << 12) | (mantissa as u16 & 0x0FFF);
    word.to_le_bytes()
}

/// A 32-bit FLOAT with exponent `exp` and 24-bit mantissa.
pub fn float(mantissa: i32, exp: i8) -> [u8; 4] {
    let word = ((exp as u8 as u32) << 24) | (mantissa as u32 & 0x00FF_FFFF);
    word.to_le_bytes()
}

/// The time stamp of stored record `i`: 2026-03-01 08:00 plus `i` hours.
pub fn record_time(i: u32) -> DateTime {
    DateTime::from_unix_ms(
        DateTime {
            year: 2026,
            month: 3,
            day: 1,
            hour: 8,
            minute: 0,
            second: 0,
        }
        .to_unix_ms()
            + i64::from(i) * 3_600_000,
    )
}

/// Reference vector 11 (drivers/docs/test-vectors.md, "Blood pressure"): 138/88 mmHg, MAP 120,
/// pulse 60, user 1, status 0x0027, time stamp with an unknown year.
pub const BP_VECTOR: [u8; 19] = [
    0x1E, 0x8A, 0x00, 0x58, 0x00, 0x78, 0x00, 0x00, 0x00, 0x04, 0x11, 0x14, 0x29, 0x3B, 0x3C, 0x00,
    0x01, 0x27, 0x00,
];

/// Blood pressure record `i`: record 0 is [`BP_VECTOR`]; record i > 0 is
/// (120 + i) / (80 + i) mmHg, MAP 93 + i, pulse 70 + i, user 1, at [`record_time`].
pub fn blood_pressure(i: u32) -> Vec<u8> {
    if i == 0 {
        return BP_VECTOR.to_vec();
    }
    let n = i as i16;
    let mut b = vec![0x0E];
    b.extend_from_slice(&sfloat(120 + n, 0));
    b.extend_from_slice(&sfloat(80 + n, 0));
    b.extend_from_slice(&sfloat(93 + n, 0));
    b.extend_from_slice(&record_time(i).encode());
    b.extend_from_slice(&sfloat(70 + n, 0));
    b.push(1);
    b
}

/// Reference vector 17 (test-vectors.md, "Thermometer"): 37.60 °C, 2012-12-05 11:50:27, finger.
pub const THERMOMETER_VECTOR: [u8; 13] = [
    0x06, 0xB0, 0x0E, 0x00, 0xFE, 0xDC, 0x07, 0x0C, 0x05, 0x0B, 0x32, 0x1B, 0x04,
];

/// Temperature record `i`: record 0 is [`THERMOMETER_VECTOR`]; record i > 0 is
/// (3650 + i) × 10⁻² °C at [`record_time`], type 6 (mouth).
pub fn temperature(i: u32) -> Vec<u8> {
    if i == 0 {
        return THERMOMETER_VECTOR.to_vec();
    }
    let mut b = vec![0x06];
    b.extend_from_slice(&float(3650 + i as i32, -2));
    b.extend_from_slice(&record_time(i).encode());
    b.push(6);
    b
}

/// Weight record `i`: (15500 + 10 i) × 5 g (77.5 kg for record 0), user 1, at
/// [`record_time`].
pub fn weight(i: u32) -> Vec<u8> {
    let raw = 15_500u16 + 10 * i as u16;
    let mut b = vec![0x06];
    b.extend_from_slice(&raw.to_le_bytes());
    b.extend_from_slice(&record_time(i).encode());
    b.push(1);
    b
}

/// Body composition record `i`: body fat (235 + i) × 0.1 %, at [`record_time`], user 1.
pub fn body_composition(i: u32) -> Vec<u8> {
    let flags: u16 = 0x0006;
    let mut b = flags.to_le_bytes().to_vec();
    b.extend_from_slice(&(235u16 + i as u16).to_le_bytes());
    b.extend_from_slice(&record_time(i).encode());
    b.push(1);
    b
}

/// Glucose record with sequence number `seq` (1-based): (100 + seq) mg/dL sent as
/// (100 + seq) × 10⁻⁵ kg/L, capillary whole blood from a finger, at
/// [`record_time`]`(seq)`, time offset 0.
pub fn glucose(seq: u16) -> Vec<u8> {
    glucose_record(seq, 0, None)
}

/// A glucose record that must not be read as a plain value (GATT Specification Supplement,
/// Glucose Measurement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlucoseFlag {
    /// Sensor Status Annunciation bit 5, "result higher than the device can process", with
    /// the meter's limit, 600 mg/dL.
    High,
    /// Sample type 10 and location 4: a control-solution test.
    ControlSolution,
    /// Sensor Status Annunciation bit 11: the meter's clock is at fault.
    TimeFault,
    /// A Glucose Measurement Context follows (flag bit 4): before a meal, 45 g of
    /// carbohydrate at lunch.
    WithContext,
}

/// Glucose record `seq` of generation `generation` (the meter was reset that many times:
/// the same numbers name later records, 1000 hours on, with other values), with `flag`.
pub fn glucose_record(seq: u16, generation: u32, flag: Option<GlucoseFlag>) -> Vec<u8> {
    let hours = u32::from(seq) + generation * 1000;
    let mg = 100 + seq as i16 + (generation * 10) as i16;
    let (flags, value, type_location, status): (u8, [u8; 2], u8, Option<u16>) = match flag {
        None => (0x03, sfloat(mg, -5), 0x11, None),
        Some(GlucoseFlag::High) => (0x0B, sfloat(600, -5), 0x11, Some(1 << 5)),
        Some(GlucoseFlag::ControlSolution) => (0x03, sfloat(110, -5), 0x4A, None),
        Some(GlucoseFlag::TimeFault) => (0x0B, sfloat(mg, -5), 0x11, Some(1 << 11)),
        Some(GlucoseFlag::WithContext) => (0x13, sfloat(mg, -5), 0x11, None),
    };
    let mut b = vec![flags];
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&record_time(hours).encode());
    b.extend_from_slice(&0i16.to_le_bytes());
    b.extend_from_slice(&value);
    b.push(type_location);
    if let Some(s) = status {
        b.extend_from_slice(&s.to_le_bytes());
    }
    b
}

/// The Glucose Measurement Context of a [`GlucoseFlag::WithContext`] record: carbohydrate
/// (lunch, 45 g sent as 0.045 kg) and meal (preprandial).
pub fn glucose_context(seq: u16) -> Vec<u8> {
    let mut b = vec![0x03];
    b.extend_from_slice(&seq.to_le_bytes());
    b.push(2);
    b.extend_from_slice(&sfloat(45, -3));
    b.push(1);
    b
}

/// The expected glucose value of [`glucose`] record `seq`, in mg/dL.
pub fn glucose_mg_dl(seq: u16) -> i64 {
    100 + i64::from(seq)
}

/// PLX spot-check record `i`: SpO2 (97 - i % 3) %, pulse (72 + i) bpm, at [`record_time`].
pub fn plx_spot_check(i: u32) -> Vec<u8> {
    let mut b = vec![0x01];
    b.extend_from_slice(&sfloat(97 - (i % 3) as i16, 0));
    b.extend_from_slice(&sfloat(72 + i as i16, 0));
    b.extend_from_slice(&record_time(i).encode());
    b
}

/// A PLX spot check taken with the sensor off the finger, at [`record_time`]`(i)`: SpO2 and
/// pulse rate not a number (SFLOAT NaN), Device and Sensor Status bit 15 "sensor
/// disconnected" (GATT Specification Supplement, PLX Spot-check Measurement).
pub fn plx_sensor_disconnected(i: u32) -> Vec<u8> {
    let mut b = vec![0x05];
    b.extend_from_slice(&SFLOAT_NAN);
    b.extend_from_slice(&SFLOAT_NAN);
    b.extend_from_slice(&record_time(i).encode());
    b.extend_from_slice(&(1u32 << 15).to_le_bytes()[..3]);
    b
}

/// SFLOAT "not a number" (IEEE 11073-20601 special value 0x07FF).
const SFLOAT_NAN: [u8; 2] = [0xFF, 0x07];

/// Reference vector 35 (test-vectors.md, "Pulse oximeter"; PLX continuous): SpO2 100 %, pulse 90.
pub const PLX_CONTINUOUS_VECTOR: [u8; 5] = [0x00, 0x64, 0x00, 0x5A, 0x00];

/// Reference vector 22 (test-vectors.md, "Heart rate"): 85 bpm, contact detected, 50 kJ, one RR
/// interval of 33/1024 s.
pub const HEART_RATE_VECTOR: [u8; 6] = [0x1E, 0x55, 0x32, 0x00, 0x21, 0x00];

/// Heart rate notification `i`: (60 + i % 40) bpm, sensor contact detected.
pub fn heart_rate(i: u32) -> Vec<u8> {
    vec![0x06, 60 + (i % 40) as u8]
}

/// One CGM record (with E2E-CRC) for `time_offset` minutes: (90 + offset / 5) mg/dL.
pub fn cgm_record(time_offset: u16) -> Vec<u8> {
    cgm_record_of(time_offset, 0)
}

/// One CGM record of sensor session `generation` (0 the first): the value moves up by 7
/// mg/dL with every new session, so records with the same offset differ.
pub fn cgm_record_of(time_offset: u16, generation: u32) -> Vec<u8> {
    let mut b = vec![8, 0x00];
    b.extend_from_slice(&sfloat(
        (cgm_mg_dl(time_offset) + 7 * i64::from(generation)) as i16,
        0,
    ));
    b.extend_from_slice(&time_offset.to_le_bytes());
    let crc = e2e_crc(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The expected glucose of [`cgm_record`] at `time_offset`, in mg/dL.
pub fn cgm_mg_dl(time_offset: u16) -> i64 {
    90 + i64::from(time_offset / 5) % 200
}

/// CGM Feature (0x2AA8): E2E-CRC supported (bit 12), trend and quality not; capillary whole
/// blood / finger nibbles; its own CRC.
pub fn cgm_feature() -> Vec<u8> {
    let features: u32 = 1 << 12;
    let mut b = features.to_le_bytes()[..3].to_vec();
    b.push(0x19);
    let crc = e2e_crc(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// CGM Session Start Time (0x2AAA) with E2E-CRC: the given start, UTC, no DST.
pub fn cgm_session_start(start: DateTime) -> Vec<u8> {
    let mut b = start.encode().to_vec();
    b.push(0);
    b.push(0);
    let crc = e2e_crc(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Current Time (0x2A2B) for the device's wall clock `now`.
pub fn current_time(now_ms: i64, adjust_reason: u8) -> Vec<u8> {
    let t = DateTime::from_unix_ms(now_ms);
    let mut b = t.encode().to_vec();
    b.push(t.day_of_week());
    b.push(((now_ms.rem_euclid(1000)) * 256 / 1000) as u8);
    b.push(adjust_reason);
    b
}

/// Parses a Current Time or Date Time write into Unix milliseconds (wall clock read as UTC).
pub fn parse_clock_write(bytes: &[u8]) -> Option<i64> {
    if bytes.len() < 7 {
        return None;
    }
    let t = DateTime {
        year: u16::from_le_bytes([bytes[0], bytes[1]]),
        month: bytes[2],
        day: bytes[3],
        hour: bytes[4],
        minute: bytes[5],
        second: bytes[6],
    };
    if !(1582..=9999).contains(&t.year)
        || !(1..=12).contains(&t.month)
        || !(1..=31).contains(&t.day)
        || t.hour > 23
        || t.minute > 59
        || t.second > 59
    {
        return None;
    }
    Some(t.to_unix_ms())
}

/// The RACP response `06 00 <op> <code>`.
pub fn racp_response(request_op: u8, code: u8) -> Vec<u8> {
    vec![0x06, 0x00, request_op, code]
}

/// The RACP number-of-records response `05 00 <count u16>`.
pub fn racp_count(count: u16) -> Vec<u8> {
    let [a, b] = count.to_le_bytes();
    vec![0x05, 0x00, a, b]
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitalgate_drivers::ble::{DecodeContext, Decoded, decode, uuid};

    fn ok(c: u16, b: &[u8]) -> Decoded {
        decode(c, b, &DecodeContext::default()).unwrap_or_else(|e| panic!("{c:04X}: {e}"))
    }

    #[test]
    fn every_generated_payload_decodes() {
        for i in 0..50 {
            ok(uuid::BLOOD_PRESSURE_MEASUREMENT, &blood_pressure(i));
            ok(uuid::TEMPERATURE_MEASUREMENT, &temperature(i));
            ok(uuid::WEIGHT_MEASUREMENT, &weight(i));
            ok(uuid::BODY_COMPOSITION_MEASUREMENT, &body_composition(i));
            ok(uuid::GLUCOSE_MEASUREMENT, &glucose(i as u16 + 1));
            ok(uuid::PLX_SPOT_CHECK, &plx_spot_check(i));
            ok(uuid::HEART_RATE_MEASUREMENT, &heart_rate(i));
            ok(uuid::CGM_MEASUREMENT, &cgm_record(i as u16 * 5));
        }
        match ok(uuid::PLX_SPOT_CHECK, &plx_sensor_disconnected(3)) {
            Decoded::PlxSpotCheck(m) => {
                let status = m.device_sensor_status.expect("device and sensor status");
                assert!(status.sensor_disconnected && status.raw == 1 << 15);
            }
            other => panic!("{other:?}"),
        }
        ok(uuid::PLX_CONTINUOUS, &PLX_CONTINUOUS_VECTOR);
        ok(uuid::HEART_RATE_MEASUREMENT, &HEART_RATE_VECTOR);
        ok(uuid::CGM_FEATURE, &cgm_feature());
        ok(uuid::CURRENT_TIME, &current_time(1_780_000_000_123, 0));
        let start = record_time(0);
        ok(uuid::CGM_SESSION_START_TIME, &cgm_session_start(start));
        let mut three = cgm_record(0);
        three.extend(cgm_record(5));
        three.extend(cgm_record(10));
        match ok(uuid::CGM_MEASUREMENT, &three) {
            Decoded::Cgm(r) => assert_eq!(r.len(), 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn civil_time_round_trips() {
        for ms in [0i64, 951_782_400_000, 1_780_000_000_000, 4_102_444_799_000] {
            assert_eq!(DateTime::from_unix_ms(ms).to_unix_ms(), ms);
        }
        let t = DateTime::from_unix_ms(1_780_000_000_000);
        assert_eq!(parse_clock_write(&t.encode()), Some(1_780_000_000_000));
        assert_eq!(parse_clock_write(&[0; 7]), None);
    }
}
