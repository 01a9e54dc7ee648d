//! What `vitalgate decode` prints: device bytes, decoded, as a FHIR `collection` Bundle of
//! exactly the resources delivery would send (Observations, the PHD and PHG Devices), with a
//! placeholder subject. Transport-neutral: [`bundle_for_readings`] takes the readings any
//! decoder produced (BLE here, serial protocols through the same function).

use serde_json::Value;
use vitalgate_drivers::ble::{self, DecodeContext};
use vitalgate_drivers::model::Origin;
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
    /// Nothing the bytes carry would be sent; each reading's reason.
    #[error("nothing would be sent: {}", left_out_text(.0))]
    NothingSent(Vec<LeftOut>),
}

/// A reading that decoded but would not be sent, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LeftOut {
    pub index: usize,
    pub kind: u32,
    pub reason: MapError,
}

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reading {} (MDC {}) is not sent: {}",
            self.index, self.kind, self.reason
        )
    }
}

fn left_out_text(v: &[LeftOut]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the bytes map to: the Bundle, and the readings left out of it with their reasons.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub bundle: Value,
    pub left_out: Vec<LeftOut>,
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
///
/// `stored`: the value answered a record download (RACP), so it comes from the device's
/// memory; otherwise it was notified on its own, as the transport would take it.
pub fn ble_readings(
    characteristic: u16,
    bytes: &[u8],
    device: &DeviceIdentity,
    receipt: Receipt,
    stored: bool,
) -> Result<Vec<Reading>, DecodeCommandError> {
    let decoded = ble::decode(characteristic, bytes, &DecodeContext::default())?;
    let mut ms = decoded.measurements();
    if ms.is_empty() {
        return Err(DecodeCommandError::NoMeasurement(characteristic));
    }
    for m in &mut ms {
        if stored {
            m.qualifiers.origin = Origin::Stored;
        } else if m.qualifiers.origin == Origin::Unknown {
            m.qualifiers.origin = ble::notified_origin(characteristic);
        }
    }
    // One value's readings are one report, as on the transport.
    let instance = uuid::Uuid::new_v4();
    Ok(ms
        .into_iter()
        .map(|m| Reading {
            device: device.clone(),
            measurement: m,
            receipt,
            device_clock_offset_ms: None,
            instance,
            raw: bytes.to_vec(),
        })
        .collect())
}

/// Joins a Glucose Measurement Context (0x2A34) to the glucose readings with its sequence
/// number, as the transport does.
pub fn join_glucose_context(
    readings: &mut [Reading],
    context: &[u8],
) -> Result<(), DecodeCommandError> {
    let c = ble::glucose::decode_context(context)?;
    for r in readings {
        c.join(&mut r.measurement);
    }
    Ok(())
}

/// A placeholder BLE device for bytes given on a command line.
pub fn placeholder_ble_device(address: &str) -> DeviceIdentity {
    DeviceIdentity::new(Transport::Ble, address)
}

/// The Bundle for readings from any transport, with a placeholder subject: a `collection`,
/// or (`transaction`) exactly what delivery would POST. Readings that would not be sent (a
/// control-solution test, a stored record whose time cannot be established, ...) are left
/// out and listed with the reason; it is an error only when nothing is left to send.
pub fn bundle_for_readings(
    readings: &[Reading],
    gw: &GatewayInfo,
    time: &GatewayTime,
    transaction: bool,
) -> Result<Decoded, DecodeCommandError> {
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
    let left_out: Vec<LeftOut> = assembly
        .items
        .iter()
        .enumerate()
        .filter_map(|(index, item)| {
            item.as_ref().err().map(|reason| LeftOut {
                index,
                kind: readings[index].measurement.kind.0,
                reason: reason.clone(),
            })
        })
        .collect();
    if !readings.is_empty() && left_out.len() == readings.len() {
        return Err(DecodeCommandError::NothingSent(left_out));
    }
    // The entries of left-out readings were never added, so the assembly holds exactly what
    // delivery would send.
    Ok(Decoded {
        bundle: if transaction {
            assembly.transaction()
        } else {
            assembly.collection()
        },
        left_out,
    })
}
