//! Which Bluetooth devices the agent talks to, and what it does with each characteristic:
//! the health services it scans for, the characteristics it subscribes to, and the ones
//! whose records are downloaded with the Record Access Control Point.

use uuid::Uuid;

/// The health services scanned for (16-bit UUIDs as in the Bluetooth SIG Assigned Numbers).
pub const HEALTH_SERVICES: [u16; 8] = [
    0x1810, // Blood Pressure
    0x1809, // Health Thermometer
    0x181D, // Weight Scale
    0x181B, // Body Composition
    0x1808, // Glucose
    0x1822, // Pulse Oximeter
    0x180D, // Heart Rate
    0x181F, // Continuous Glucose Monitoring
];

/// Characteristics subscribed to when present: measurements (stored and live) and the RACP.
/// Intermediate values (0x2A36 cuff pressure, 0x2A1E temperature) are not stored, so not
/// subscribed either.
pub const SUBSCRIBE: [u16; 11] = [
    0x2A35, 0x2A1C, 0x2A9D, 0x2A9C, 0x2A18, 0x2A34, 0x2A5E, 0x2A5F, 0x2A37, 0x2AA7, 0x2A52,
];

/// Device Information characteristics read at every connection.
pub const DEVICE_INFORMATION: [u16; 7] = [0x2A29, 0x2A24, 0x2A25, 0x2A27, 0x2A26, 0x2A28, 0x2A23];

pub const RACP: u16 = 0x2A52;
/// Feature characteristics read at every connection: which status bits a device supports
/// (BP 0x2A49, glucose 0x2A51, PLX 0x2A60), and the CGM's (0x2AA8, also its E2E-CRC).
pub const FEATURES: [u16; 4] = [0x2A49, 0x2A51, 0x2A60, 0x2AA8];

pub const CURRENT_TIME: u16 = 0x2A2B;
/// Battery Level (Battery Service 0x180F): one byte, percent.
pub const BATTERY_LEVEL: u16 = 0x2A19;
/// A&D sets its clock with a Date Time write inside the BP or weight service (A&D's own
/// sample code, andengineering/AndroidSampleCode `ble/BleReceivedService.java`).
pub const DATE_TIME: u16 = 0x2A08;
pub const GLUCOSE_MEASUREMENT: u16 = 0x2A18;
pub const CGM_MEASUREMENT: u16 = 0x2AA7;
pub const CGM_FEATURE: u16 = 0x2AA8;
pub const CGM_SESSION_START: u16 = 0x2AAA;
pub const PLX_SPOT_CHECK: u16 = 0x2A5E;
/// The measurements a Record Access Control Point answers with, by service: CGM, glucose,
/// PLX spot-check storage. A device offers RACP in one of these services.
pub const RACP_MEASUREMENTS: [u16; 3] = [CGM_MEASUREMENT, GLUCOSE_MEASUREMENT, PLX_SPOT_CHECK];

const BASE_SUFFIX: u128 = 0x0000_1000_8000_0080_5F9B_34FB;

/// The 128-bit form of a 16-bit SIG UUID.
pub fn uuid(short: u16) -> Uuid {
    Uuid::from_u128((u128::from(short) << 96) | BASE_SUFFIX)
}

/// The 16-bit UUID of a SIG-base UUID, if it is one.
pub fn short(u: &Uuid) -> Option<u16> {
    let v = u.as_u128();
    let hi = v >> 96;
    (v & ((1u128 << 96) - 1) == BASE_SUFFIX && hi <= 0xFFFF).then_some(hi as u16)
}

/// Whether a device advertising these services is one the agent can read.
pub fn supported(services: &[Uuid]) -> bool {
    services
        .iter()
        .filter_map(short)
        .any(|s| HEALTH_SERVICES.contains(&s))
}

/// The cursor stream name in the store for a record-access download.
pub fn cursor_stream(measurement: u16) -> String {
    format!("racp-{measurement:04X}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sig_uuids_round_trip() {
        let u = uuid(0x2A35);
        assert_eq!(u.to_string(), "00002a35-0000-1000-8000-00805f9b34fb");
        assert_eq!(short(&u), Some(0x2A35));
        assert_eq!(short(&Uuid::from_u128(7)), None);
        assert!(supported(&[uuid(0x1800), uuid(0x1808)]));
        assert!(!supported(&[uuid(0x1800)]));
    }
}
