//! Current Time Service 0x1805 (Bluetooth SIG Current Time Service; layouts as in the GATT
//! Specification Supplement): Current Time 0x2A2B, read and notified by the device and
//! written by the gateway to set the device clock, and Local Time Information 0x2A0F.

use super::{Reader, Writer, bit_struct};
use crate::DecodeError;
use crate::time::{
    DstOffset, LocalDateTime, TimeError, TimeZone, decode_dst_offset, decode_time_zone,
};

const CURRENT_TIME: &str = "2A2B";
const LOCAL_TIME_INFORMATION: &str = "2A0F";

bit_struct! {
    /// Adjust Reason of 0x2A2B.
    AdjustReason: u8 {
        manual_time_update = 0,
        external_reference_time_update = 1,
        change_of_time_zone = 2,
        change_of_dst = 3,
    }
}

/// Current Time (0x2A2B): Exact Time 256 plus Adjust Reason, 10 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CurrentTime {
    pub time: LocalDateTime,
    /// 1 = Monday … 7 = Sunday; `None` = unknown (0).
    pub day_of_week: Option<u8>,
    /// Fractions of a second in 1/256 s.
    pub fractions256: u8,
    pub adjust_reason: AdjustReason,
}

impl CurrentTime {
    /// The value the gateway writes to set a device clock: `time` with its computed day of
    /// week, no fractions and no adjust reason (the payload openScale's
    /// `buildCurrentTimePayload` writes).
    pub fn for_write(time: LocalDateTime) -> Result<Self, TimeError> {
        Ok(Self {
            day_of_week: Some(time.day_of_week()?),
            time,
            fractions256: 0,
            adjust_reason: AdjustReason::default(),
        })
    }

    /// The 10 bytes to write.
    pub fn encode(&self) -> [u8; 10] {
        let mut w = Writer::default();
        w.date_time(&self.time);
        w.u8(self.day_of_week.unwrap_or(0));
        w.u8(self.fractions256);
        w.u8(self.adjust_reason.raw);
        let mut out = [0u8; 10];
        for (o, b) in out.iter_mut().zip(&w.bytes) {
            *o = *b;
        }
        out
    }
}

/// Decodes Current Time (0x2A2B).
pub fn decode_current_time(bytes: &[u8]) -> Result<CurrentTime, DecodeError> {
    let mut r = Reader::new(CURRENT_TIME, bytes);
    let time = r.date_time()?;
    let dow_at = r.offset();
    let day_of_week = match r.u8()? {
        0 => None,
        d @ 1..=7 => Some(d),
        other => {
            return Err(r.invalid(dow_at, format!("day of week {other} is not 0..=7")));
        }
    };
    let fractions256 = r.u8()?;
    let adjust_reason = AdjustReason::from_bits(r.u8()?);
    r.finish()?;
    Ok(CurrentTime {
        time,
        day_of_week,
        fractions256,
        adjust_reason,
    })
}

/// Local Time Information (0x2A0F): time zone and DST offset, each possibly unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalTimeInformation {
    pub zone: Option<TimeZone>,
    pub dst: Option<DstOffset>,
}

/// Decodes Local Time Information (0x2A0F), 2 bytes.
pub fn decode_local_time_information(bytes: &[u8]) -> Result<LocalTimeInformation, DecodeError> {
    let mut r = Reader::new(LOCAL_TIME_INFORMATION, bytes);
    let zone = decode_time_zone(LOCAL_TIME_INFORMATION, 0, r.u8()?)?;
    let dst = decode_dst_offset(LOCAL_TIME_INFORMATION, 1, r.u8()?)?;
    r.finish()?;
    Ok(LocalTimeInformation { zone, dst })
}
