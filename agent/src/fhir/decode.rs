//! What `vitalgate decode` prints: device bytes, decoded, as a FHIR `collection` Bundle of
//! exactly the resources delivery would send (Observations, the PHD and PHG Devices), with a
//! placeholder subject. Transport-neutral: [`bundle_for_readings`] takes the readings any
//! decoder produced (BLE here, serial protocols through the same function).

use serde_json::Value;
use vitalgate_drivers::ble::{self, DecodeContext};
use vitalgate_drivers::{DecodeError, DeviceIdentity, Reading, Receipt, Transport};

use super::{GatewayInfo, GatewayTime, MapError, MapItem, PatientRef, assemble};

/// Why bytes could not be turned into resources.
#[derive(Debug, thiserror::Error)]
pub enum DecodeCommandError {
    #[error(
        "{0:?} is not a characteristic: use a 16-bit UUID like 2A35 or 0x2A35, or the full Bluetooth base UUID"
    )]
    Characteristic(String),
    #[error("the value is not hex bytes: {0}")]
    Hex(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(
        "characteristic 0x{0:04X} carries no measurement (a feature, control point or device-information value)"
    )]
    NoMeasurement(u16),
    #[error("reading {index} cannot be mapped: {source}")]
    Map {
        index: usize,
        #[source]
        source: MapError,
    },
}

/// A characteristic as `2A35`, `0x2A35` or `00002a35-0000-1000-8000-00805f9b34fb`.
pub fn parse_characteristic(s: &str) -> Result<u16, DecodeCommandError> {
    let bad = || DecodeCommandError::Characteristic(s.to_owned());
    let t = s.trim();
    let short = if t.len() == 36 {
        let lower = t.to_ascii_lowercase();
        let rest = lower.get(8..).ok_or_else(bad)?;
        if rest != "-0000-1000-8000-00805f9b34fb" || !lower.starts_with("0000") {
            return Err(bad());
        }
        lower.get(4..8).ok_or_else(bad)?.to_owned()
    } else {
        t.trim_start_matches("0x")
            .trim_start_matches("0X")
            .to_owned()
    };
    if short.len() != 4 {
        return Err(bad());
    }
    u16::from_str_radix(&short, 16).map_err(|_| bad())
}

/// Hex with optional spaces, colons or dashes between bytes.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, DecodeCommandError> {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':' && *c != '-')
        .collect();
    hex::decode(clean).map_err(|e| DecodeCommandError::Hex(e.to_string()))
}

/// Decodes one BLE characteristic value into readings from `device`, received at `receipt`.
pub fn ble_readings(
    characteristic: u16,
    bytes: &[u8],
    device: &DeviceIdentity,
    receipt: Receipt,
) -> Result<Vec<Reading>, DecodeCommandError> {
    let decoded = ble::decode(characteristic, bytes, &DecodeContext::default())?;
    let ms = decoded.measurements();
    if ms.is_empty() {
        return Err(DecodeCommandError::NoMeasurement(characteristic));
    }
    Ok(ms
        .into_iter()
        .map(|m| Reading {
            device: device.clone(),
            measurement: m,
            receipt,
            device_clock_offset_ms: None,
            instance: uuid::Uuid::new_v4(),
            raw: bytes.to_vec(),
        })
        .collect())
}

/// A placeholder BLE device for bytes given on a command line.
pub fn placeholder_ble_device(address: &str) -> DeviceIdentity {
    DeviceIdentity::new(Transport::Ble, address)
}

/// The Bundle for readings from any transport, with a placeholder subject: a `collection`,
/// or (`transaction`) exactly what delivery would POST.
pub fn bundle_for_readings(
    readings: &[Reading],
    gw: &GatewayInfo,
    time: &GatewayTime,
    transaction: bool,
) -> Result<Value, DecodeCommandError> {
    let patient = PatientRef::placeholder();
    let items: Vec<MapItem<'_>> = readings
        .iter()
        .map(|reading| MapItem {
            reading,
            patient: &patient,
            stored_key: None,
        })
        .collect();
    let assembly = assemble(gw, time, &items);
    for (index, item) in assembly.items.iter().enumerate() {
        if let Err(source) = item {
            return Err(DecodeCommandError::Map {
                index,
                source: source.clone(),
            });
        }
    }
    Ok(if transaction {
        assembly.transaction()
    } else {
        assembly.collection()
    })
}
