//! Simulated device memories: deterministic readings as a real device would report them
//! (its own sequence numbers and clock), for the demo and for store tests.

use uuid::Uuid;
use vitalgate_drivers::ieee11073::{Value, encode_sfloat};
use vitalgate_drivers::mdc::{self, Unit};
use vitalgate_drivers::time::{DeviceTimestamp, LocalDateTime};
use vitalgate_drivers::{Component, DeviceIdentity, Measurement, Reading, Receipt, Transport};

/// A blood-pressure cuff's stored memory: one record a day at 08:00 device time.
#[derive(Debug, Clone)]
pub struct BpCuffMemory {
    pub identity: DeviceIdentity,
    pub records: u32,
}

impl BpCuffMemory {
    pub fn new(address: &str, records: u32) -> Self {
        let mut identity = DeviceIdentity::new(Transport::Ble, address);
        identity.manufacturer = Some("Simulated Medical".into());
        identity.model = Some("SIM-BP-1".into());
        identity.serial_number = Some(format!("SIM{}", address.replace(':', "")));
        identity.firmware = Some("1.0.0".into());
        identity.system_id = Some([0x74, 0xE8, 0xFF, 0xFE, 0xFF, 0x05, 0x1C, 0x00]);
        Self { identity, records }
    }

    /// Record `index` (0-based) as the device would report it, received at `receipt`.
    pub fn record(&self, index: u32, receipt: Receipt) -> Reading {
        // A gentle, deterministic variation, so a demo store looks like a real one.
        let systolic = 112 + (index * 7 % 25) as i64;
        let diastolic = 70 + (index * 5 % 15) as i64;
        let mean = (systolic + 2 * diastolic) / 3;
        let c = |kind, v| Component {
            kind,
            value: Value::number(v, 0),
            unit: Unit::mmhg(),
        };
        let mut m = Measurement::compound(
            mdc::PRESS_BLD_NONINV,
            vec![
                c(mdc::PRESS_BLD_NONINV_SYS, systolic),
                c(mdc::PRESS_BLD_NONINV_DIA, diastolic),
                c(mdc::PRESS_BLD_NONINV_MEAN, mean),
            ],
        );
        let day = index % 28 + 1;
        let month = (index / 28) % 12 + 1;
        let year = 2026 + (index / (28 * 12)) as u16;
        m.device_time = Some(DeviceTimestamp::Local {
            time: LocalDateTime {
                year: Some(year),
                month: Some(month as u8),
                day: Some(day as u8),
                hour: 8,
                minute: (index % 60) as u8,
                second: 0,
                millis: None,
            },
            zone: None,
            dst: None,
        });
        m.sequence = Some(index);
        m.user_index = Some(1);
        // The 0x2A35 bytes such a record would arrive in (flags: time stamp + user id).
        let mut raw = vec![0x0A];
        for v in [systolic, diastolic, mean] {
            let word = encode_sfloat(Value::number(v, 0)).unwrap_or(0x07FF);
            raw.extend_from_slice(&word.to_le_bytes());
        }
        raw.extend_from_slice(&year.to_le_bytes());
        raw.extend_from_slice(&[month as u8, day as u8, 8, (index % 60) as u8, 0, 1]);
        Reading {
            device: self.identity.clone(),
            measurement: m,
            receipt,
            device_clock_offset_ms: Some(0),
            instance: Uuid::new_v4(),
            raw,
        }
    }
}
