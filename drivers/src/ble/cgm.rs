//! Continuous Glucose Monitoring Service 0x181F (Bluetooth SIG CGMS 1.0.1; layouts as in the
//! GATT Specification Supplement, GSS): CGM Measurement 0x2AA7 (several size-prefixed
//! records per notification, each optionally protected by an E2E-CRC), CGM Feature 0x2AA8
//! and CGM Session Start Time 0x2AAA.

use super::{
    DecodeContext, Reader, Writer, bit_struct, glucose::SampleLocation, glucose::SampleType,
};
use crate::DecodeError;
use crate::crc::e2e_crc;
use crate::ieee11073::Value;
use crate::mdc::{self, Unit};
use crate::model::{Condition, Measurement, OutOfRange, StatusBits};
use crate::time::{
    DeviceTimestamp, DstOffset, LocalDateTime, TimeZone, decode_dst_offset, decode_time_zone,
};

const MEASUREMENT: &str = "2AA7";
const FEATURE: &str = "2AA8";
const SESSION_START: &str = "2AAA";

/// The smallest record: Size, Flags, Glucose Concentration, Time Offset.
const MIN_RECORD: usize = 6;

/// One CGM Measurement record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgmMeasurement {
    /// mg/dL.
    pub glucose: Value,
    /// Minutes since the session start; also the record number RACP filters on.
    pub time_offset_minutes: u16,
    /// Sensor Status Annunciation, Warning octet (flag bit 5): bits 16-23 of the 24-bit
    /// annunciation.
    pub warning: Option<u8>,
    /// Cal/Temp octet (flag bit 6): bits 8-15.
    pub cal_temp: Option<u8>,
    /// Status octet (flag bit 7): bits 0-7.
    pub status: Option<u8>,
    /// Flag bit 0: (mg/dL)/min.
    pub trend: Option<Value>,
    /// Flag bit 1: percent.
    pub quality: Option<Value>,
    /// The E2E-CRC, when the record carried one (it has been checked).
    pub crc: Option<u16>,
    /// The session start this record counts from, when the context knew it.
    pub session_start: Option<CgmSessionStartTime>,
}

bit_struct! {
    /// The 24-bit CGM Sensor Status Annunciation: Status octet (bits 0-7), Cal/Temp octet
    /// (bits 8-15) and Warning octet (bits 16-23), as in CGM Status 0x2AA9.
    CgmSensorStatus: u32 {
        session_stopped = 0,
        device_battery_low = 1,
        sensor_type_incorrect = 2,
        sensor_malfunction = 3,
        device_specific_alert = 4,
        general_device_fault = 5,
        time_synchronization_required = 8,
        calibration_not_allowed = 9,
        calibration_recommended = 10,
        calibration_required = 11,
        sensor_temperature_too_high = 12,
        sensor_temperature_too_low = 13,
        result_lower_than_patient_low = 16,
        result_higher_than_patient_high = 17,
        result_lower_than_hypo = 18,
        result_higher_than_hyper = 19,
        rate_of_decrease_exceeded = 20,
        rate_of_increase_exceeded = 21,
        result_lower_than_device_can_process = 22,
        result_higher_than_device_can_process = 23,
    }
}

impl CgmMeasurement {
    /// The annunciation as named flags, when any octet was sent.
    pub fn sensor_status(&self) -> Option<CgmSensorStatus> {
        self.annunciation().map(CgmSensorStatus::from_bits)
    }

    /// The 24-bit Sensor Status Annunciation (status | cal/temp << 8 | warning << 16), when
    /// any octet was sent.
    pub fn annunciation(&self) -> Option<u32> {
        if self.warning.is_none() && self.cal_temp.is_none() && self.status.is_none() {
            return None;
        }
        Some(
            u32::from(self.status.unwrap_or(0))
                | u32::from(self.cal_temp.unwrap_or(0)) << 8
                | u32::from(self.warning.unwrap_or(0)) << 16,
        )
    }

    /// Session start + time offset as device local time (with the session's zone and DST),
    /// or the bare offset as a one-minute tick counter when the start is unknown or unusable.
    pub fn device_time(&self) -> DeviceTimestamp {
        let offset = self.time_offset_minutes;
        if let Some(start) = &self.session_start
            && let Ok(time) = start.time.add_minutes(i64::from(offset))
        {
            return DeviceTimestamp::Local {
                time,
                zone: start.zone,
                dst: start.dst,
            };
        }
        DeviceTimestamp::Ticks {
            ticks: u64::from(offset),
            resolution_us: 60_000_000,
        }
    }

    /// The readings of one record: the glucose (MDC_CONC_GLU_ISF, 160212, mg/dL) with the
    /// annunciation as its status, and the trend (MDC_CONC_GLU_TREND, (mg/dL)/min) derived
    /// from it when sent.
    ///
    /// The record number is the time offset, which restarts at 0 with every sensor session,
    /// so the session start (or, when it is unknown, the record's own bytes) qualifies it:
    /// a new session never collides with the old one. Annunciation bits 22 and 23 ("result
    /// lower/higher than the device can process") put the value beyond the device's range;
    /// both at once contradict each other and make the record a problem. A general device
    /// fault (bit 5), which has no status code in the PHD IG, makes the value questionable.
    /// The CGM Quality is the device's confidence in the value, in percent.
    pub fn measurements(&self) -> Vec<Measurement> {
        let mut m = Measurement::numeric(mdc::CONC_GLU_ISF, self.glucose, Unit::mg_per_dl());
        m.sequence = Some(u32::from(self.time_offset_minutes));
        m.device_time = Some(self.device_time());
        m.qualifiers.record = Some(match &self.session_start {
            Some(start) => format!("session {}", start.time),
            None => format!("record {}", hex_upper(&self.encode_fields())),
        });
        m.qualifiers.quality = self.quality;
        if let Some(bits) = self.annunciation() {
            m.status.push(StatusBits {
                attribute: MEASUREMENT.into(),
                bits,
                width: 24,
            });
            let s = CgmSensorStatus::from_bits(bits);
            match (
                s.result_lower_than_device_can_process,
                s.result_higher_than_device_can_process,
            ) {
                (true, true) => {
                    m.qualifiers.problem = Some(
                        "CGM status says the result is both below and above the device's range"
                            .into(),
                    );
                }
                (true, false) => m.qualifiers.range = Some(OutOfRange::Below),
                (false, true) => m.qualifiers.range = Some(OutOfRange::Above),
                (false, false) => {}
            }
            if s.general_device_fault {
                m.qualifiers.add(Condition::Questionable);
            }
        }
        let mut out = vec![m];
        if let Some(trend) = self.trend {
            let mut t = Measurement::numeric(mdc::CONC_GLU_TREND, trend, Unit::mg_per_dl_per_min());
            let g = &out[0];
            t.sequence = g.sequence;
            t.device_time = g.device_time;
            t.qualifiers.record = g.qualifiers.record.clone();
            t.qualifiers.derived_from = vec![mdc::CONC_GLU_ISF];
            out.push(t);
        }
        out
    }

    /// The record's fields as sent (no Size, no CRC): what identifies it when the session
    /// start is unknown.
    fn encode_fields(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let encoded = w.sfloat(self.glucose).is_ok();
        if !encoded {
            w.u16_le(0);
        }
        w.u16_le(self.time_offset_minutes);
        for o in [self.warning, self.cal_temp, self.status]
            .into_iter()
            .flatten()
        {
            w.u8(o);
        }
        for v in [self.trend, self.quality].into_iter().flatten() {
            if w.sfloat(v).is_err() {
                w.u16_le(0);
            }
        }
        w.bytes
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Decodes a CGM Measurement notification (0x2AA7): one or more records, each starting with
/// its own Size byte. Any record that is short, inconsistent with its Size, or fails its
/// E2E-CRC rejects the whole notification, naming the offset within it.
pub fn decode_measurements(
    bytes: &[u8],
    ctx: &DecodeContext,
) -> Result<Vec<CgmMeasurement>, DecodeError> {
    let mut records = Vec::new();
    let mut pos = 0;
    loop {
        let rest = bytes.get(pos..).unwrap_or_default();
        if rest.is_empty() && !records.is_empty() {
            return Ok(records);
        }
        let mut head = Reader::at(MEASUREMENT, rest, pos);
        let size = usize::from(head.u8()?);
        if size < MIN_RECORD {
            return Err(head.invalid(
                pos,
                format!("record size {size} is below the minimum of {MIN_RECORD}"),
            ));
        }
        let record = Reader::at(MEASUREMENT, rest, pos).take(size)?;
        records.push(decode_record(record, pos, ctx)?);
        pos += size;
    }
}

fn decode_record(
    record: &[u8],
    base: usize,
    ctx: &DecodeContext,
) -> Result<CgmMeasurement, DecodeError> {
    let mut r = Reader::at(MEASUREMENT, record, base);
    let size = r.u8()?;
    let flags = r.u8()?;
    let glucose = r.sfloat()?;
    let time_offset_minutes = r.u16_le()?;
    let warning = (flags & 0x20 != 0).then(|| r.u8()).transpose()?;
    let cal_temp = (flags & 0x40 != 0).then(|| r.u8()).transpose()?;
    let status = (flags & 0x80 != 0).then(|| r.u8()).transpose()?;
    let trend = (flags & 0x01 != 0).then(|| r.sfloat()).transpose()?;
    let quality = (flags & 0x02 != 0).then(|| r.sfloat()).transpose()?;
    let fields = r.consumed();
    let crc = check_crc(&mut r, record, fields, ctx.cgm_e2e_crc, |extra| {
        format!(
            "record size {size} does not match the {fields} bytes its flags describe ({extra} left over; an E2E-CRC is 2)"
        )
    })?;
    Ok(CgmMeasurement {
        glucose,
        time_offset_minutes,
        warning,
        cal_temp,
        status,
        trend,
        quality,
        crc,
        session_start: ctx.cgm_session_start,
    })
}

/// Reads and verifies an optional trailing E2E-CRC over `bytes[..fields]`. Whether it is
/// present comes from the feature (`expected`) or, when that is unknown, from the length.
fn check_crc(
    r: &mut Reader<'_>,
    bytes: &[u8],
    fields: usize,
    expected: Option<bool>,
    mismatch: impl FnOnce(usize) -> String,
) -> Result<Option<u16>, DecodeError> {
    let left = r.remaining();
    let present = match (expected, left) {
        (Some(true), _) | (None, 2) => true,
        (Some(false), _) | (None, 0) => false,
        (None, extra) => return Err(r.invalid(r.offset(), mismatch(extra))),
    };
    if !present {
        r.finish()?;
        return Ok(None);
    }
    let at = r.offset();
    let sent = r.u16_le()?;
    r.finish()?;
    let computed = e2e_crc(bytes.get(..fields).unwrap_or_default());
    if sent != computed {
        return Err(r.invalid(
            at,
            format!("E2E-CRC 0x{sent:04X} does not match the computed 0x{computed:04X}"),
        ));
    }
    Ok(Some(sent))
}

/// CGM Session Start Time (0x2AAA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CgmSessionStartTime {
    pub time: LocalDateTime,
    /// `None` = unknown (−128).
    pub zone: Option<TimeZone>,
    /// `None` = unknown (255).
    pub dst: Option<DstOffset>,
    /// The E2E-CRC, when sent (it has been checked).
    pub crc: Option<u16>,
}

/// Decodes CGM Session Start Time (0x2AAA): 9 bytes, or 11 with an E2E-CRC. The time zone is
/// in 15-minute steps (GSS, Time Zone; Nordic's `CGMSessionStartTimeDataCallback` wrongly
/// reads it as minutes).
pub fn decode_session_start_time(
    bytes: &[u8],
    ctx: &DecodeContext,
) -> Result<CgmSessionStartTime, DecodeError> {
    let mut r = Reader::new(SESSION_START, bytes);
    let time = r.date_time()?;
    let zone_at = r.offset();
    let zone = decode_time_zone(SESSION_START, zone_at, r.u8()?)?;
    let dst_at = r.offset();
    let dst = decode_dst_offset(SESSION_START, dst_at, r.u8()?)?;
    let fields = r.consumed();
    let crc = check_crc(&mut r, bytes, fields, ctx.cgm_e2e_crc, |extra| {
        format!("{extra} bytes after the 9-byte value; only a 2-byte E2E-CRC may follow")
    })?;
    Ok(CgmSessionStartTime {
        time,
        zone,
        dst,
        crc,
    })
}

impl CgmSessionStartTime {
    /// Encodes the value for writing (starting a session), with an E2E-CRC when `with_crc`.
    pub fn encode(&self, with_crc: bool) -> Vec<u8> {
        let mut w = super::Writer::default();
        w.date_time(&self.time);
        w.u8(self.zone.map_or(0x80, |z| z.quarter_hours as u8));
        w.u8(match self.dst {
            None => 255,
            Some(DstOffset::Standard) => 0,
            Some(DstOffset::HalfHour) => 2,
            Some(DstOffset::OneHour) => 4,
            Some(DstOffset::TwoHours) => 8,
        });
        if with_crc {
            let crc = e2e_crc(&w.bytes);
            w.u16_le(crc);
        }
        w.bytes
    }
}

bit_struct! {
    /// CGM Feature bits (24 bits).
    CgmFeatureBits: u32 {
        calibration = 0,
        patient_high_low_alerts = 1,
        hypo_alerts = 2,
        hyper_alerts = 3,
        rate_of_increase_decrease_alerts = 4,
        device_specific_alert = 5,
        sensor_malfunction_detection = 6,
        sensor_temperature_high_low_detection = 7,
        sensor_result_high_low_detection = 8,
        low_battery_detection = 9,
        sensor_type_error_detection = 10,
        general_device_fault = 11,
        e2e_crc = 12,
        multiple_bond = 13,
        multiple_sessions = 14,
        trend_information = 15,
        quality = 16,
    }
}

impl CgmFeatureBits {
    /// The Sensor Status Annunciation bits the CGM supports (CGM Feature and CGM Measurement
    /// in the GATT Specification Supplement). Session stopped (0) and time synchronization
    /// required (8) have no feature bit and are always supported.
    pub fn status_support(&self) -> u32 {
        let f = |bit: u32| self.raw & (1 << bit) != 0;
        let mut mask = 1 | 1 << 8;
        for (feature, status) in [
            (0, 0b111 << 9),
            (1, 0b11 << 16),
            (2, 1 << 18),
            (3, 1 << 19),
            (4, 0b11 << 20),
            (5, 1 << 4),
            (6, 1 << 3),
            (7, 0b11 << 12),
            (8, 0b11 << 22),
            (9, 1 << 1),
            (10, 1 << 2),
            (11, 1 << 5),
        ] {
            if f(feature) {
                mask |= status;
            }
        }
        mask
    }
}

/// CGM Feature (0x2AA8): feature bits, sample type and location, and an E2E-CRC field that
/// is always present (0xFFFF when the device does not support E2E-CRC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CgmFeature {
    pub features: CgmFeatureBits,
    pub sample_type: SampleType,
    pub location: SampleLocation,
    pub crc: u16,
}

/// Decodes CGM Feature (0x2AA8), 6 bytes; the CRC is checked when feature bit 12 says the
/// device supports E2E-CRC. Put `features.e2e_crc` into [`DecodeContext::cgm_e2e_crc`].
pub fn decode_feature(bytes: &[u8]) -> Result<CgmFeature, DecodeError> {
    let mut r = Reader::new(FEATURE, bytes);
    let features = CgmFeatureBits::from_bits(r.u24_le()?);
    let type_location = r.u8()?;
    let crc_at = r.offset();
    let crc = r.u16_le()?;
    r.finish()?;
    if features.e2e_crc {
        let computed = e2e_crc(bytes.get(..4).unwrap_or_default());
        if computed != crc {
            return Err(r.invalid(
                crc_at,
                format!("E2E-CRC 0x{crc:04X} does not match the computed 0x{computed:04X}"),
            ));
        }
    }
    Ok(CgmFeature {
        features,
        sample_type: SampleType::from_u8(type_location & 0x0F),
        location: SampleLocation::from_u8(type_location >> 4),
        crc,
    })
}
