//! How a [`Measurement`] is laid out in the `readings.measurement` column.
//!
//! The column holds postcard, which is not self-describing: fields follow each other with no
//! names or lengths. Format 1 is the measurement as the first schema stored it. Everything
//! added later is appended after it ([`Measurement::qualifiers`] today), which keeps both
//! directions working without a migration:
//! - a row written before the addition ends where format 1 ends; decoding the whole
//!   measurement then runs out of bytes, and the row is read as format 1 with empty
//!   qualifiers;
//! - an older Vitalgate (after a rolled-back update) reads format 1 and ignores the bytes
//!   after it, as postcard does.
//!
//! So fields are only ever appended, never reordered or changed in place. The same holds for
//! the [`DeviceIdentity`] in `devices.identity`, whose format 1 ends before
//! [`DeviceIdentity::specializations`].

use serde::Deserialize;
use vitalgate_drivers::mdc::{MdcCode, Unit};
use vitalgate_drivers::time::{ClockFlags, DeviceTimestamp};
use vitalgate_drivers::{Component, DeviceIdentity, Measurement, StatusBits, Transport};

/// Format 1, field for field: what every row written before the qualifiers holds.
#[derive(Deserialize)]
struct Format1 {
    kind: MdcCode,
    value: Option<vitalgate_drivers::Value>,
    unit: Option<Unit>,
    components: Vec<Component>,
    supplemental: Vec<MdcCode>,
    status: Vec<StatusBits>,
    user_index: Option<u8>,
    sequence: Option<u32>,
    device_time: Option<DeviceTimestamp>,
    clock: ClockFlags,
}

/// Encodes a measurement for the store, appending to `out`.
pub fn encode(m: &Measurement, out: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(m, out)
}

/// Decodes a stored measurement of any format.
pub fn decode(bytes: &[u8]) -> Result<Measurement, postcard::Error> {
    match postcard::from_bytes::<Measurement>(bytes) {
        Ok(m) => Ok(m),
        Err(postcard::Error::DeserializeUnexpectedEnd) => {
            let f: Format1 = postcard::from_bytes(bytes)?;
            Ok(Measurement {
                kind: f.kind,
                value: f.value,
                unit: f.unit,
                components: f.components,
                supplemental: f.supplemental,
                status: f.status,
                user_index: f.user_index,
                sequence: f.sequence,
                device_time: f.device_time,
                clock: f.clock,
                qualifiers: Default::default(),
            })
        }
        Err(e) => Err(e),
    }
}

/// Identity format 1, field for field.
#[derive(Deserialize)]
struct Identity1 {
    transport: Transport,
    address: String,
    system_id: Option<[u8; 8]>,
    manufacturer: Option<String>,
    model: Option<String>,
    serial_number: Option<String>,
    firmware: Option<String>,
    hardware: Option<String>,
    software: Option<String>,
}

/// Encodes a device identity for the store.
pub fn encode_identity(d: &DeviceIdentity) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(d)
}

/// Decodes a stored device identity of any format.
pub fn decode_identity(bytes: &[u8]) -> Result<DeviceIdentity, postcard::Error> {
    match postcard::from_bytes::<DeviceIdentity>(bytes) {
        Ok(d) => Ok(d),
        Err(postcard::Error::DeserializeUnexpectedEnd) => {
            let f: Identity1 = postcard::from_bytes(bytes)?;
            Ok(DeviceIdentity {
                transport: f.transport,
                address: f.address,
                system_id: f.system_id,
                manufacturer: f.manufacturer,
                model: f.model,
                serial_number: f.serial_number,
                firmware: f.firmware,
                hardware: f.hardware,
                software: f.software,
                specializations: Vec::new(),
            })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitalgate_drivers::model::{Condition, Origin, OutOfRange};
    use vitalgate_drivers::{Value, mdc};

    /// A format-1 row as the first schema wrote it: an SpO2 reading with status bits, a
    /// sequence number and a clock flag (bytes from postcard's encoding of that version).
    fn format1_row() -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct V1<'a> {
            kind: MdcCode,
            value: Option<Value>,
            unit: Option<Unit>,
            components: &'a [Component],
            supplemental: &'a [MdcCode],
            status: &'a [StatusBits],
            user_index: Option<u8>,
            sequence: Option<u32>,
            device_time: Option<DeviceTimestamp>,
            clock: ClockFlags,
        }
        postcard::to_allocvec(&V1 {
            kind: mdc::PULS_OXIM_SAT_O2,
            value: Some(Value::number(97, 0)),
            unit: Some(Unit::percent()),
            components: &[],
            supplemental: &[mdc::MODALITY_SPOT],
            status: &[StatusBits {
                attribute: "2A5E".into(),
                bits: 1 << 14,
                width: 16,
            }],
            user_index: Some(1),
            sequence: Some(7),
            device_time: None,
            clock: ClockFlags {
                time_fault: true,
                synchronized: false,
            },
        })
        .expect("encode")
    }

    #[test]
    fn rows_from_before_the_qualifiers_decode_with_none() {
        let m = decode(&format1_row()).expect("format 1 decodes");
        assert_eq!(m.kind, mdc::PULS_OXIM_SAT_O2);
        assert_eq!(m.sequence, Some(7));
        assert_eq!(m.status[0].bits, 1 << 14);
        assert!(m.clock.time_fault);
        assert_eq!(m.qualifiers, Default::default());
    }

    #[test]
    fn new_rows_round_trip_and_start_with_format_1() {
        let mut m = decode(&format1_row()).expect("format 1");
        m.qualifiers.origin = Origin::Stored;
        m.qualifiers.range = Some(OutOfRange::Above);
        m.qualifiers.add(Condition::Questionable);
        m.qualifiers.record = Some("2024-01-02T03:04:05".into());
        let bytes = encode(&m, Vec::new()).expect("encode");
        assert_eq!(decode(&bytes).expect("decode"), m);
        // What an older Vitalgate reads from the same row: format 1, the rest ignored.
        assert!(bytes.starts_with(&format1_row()));
        let old: Format1 = postcard::from_bytes(&bytes).expect("an older reader");
        assert_eq!(old.sequence, Some(7));
    }

    #[test]
    fn identities_from_before_specializations_decode() {
        #[derive(serde::Serialize)]
        struct V1 {
            transport: Transport,
            address: String,
            system_id: Option<[u8; 8]>,
            manufacturer: Option<String>,
            model: Option<String>,
            serial_number: Option<String>,
            firmware: Option<String>,
            hardware: Option<String>,
            software: Option<String>,
        }
        let old = postcard::to_allocvec(&V1 {
            transport: Transport::Ble,
            address: "00:1C:05:FF:E8:74".into(),
            system_id: None,
            manufacturer: Some("Nonin".into()),
            model: None,
            serial_number: None,
            firmware: None,
            hardware: None,
            software: None,
        })
        .expect("encode");
        let d = decode_identity(&old).expect("format 1");
        assert_eq!(d.manufacturer.as_deref(), Some("Nonin"));
        assert!(d.specializations.is_empty());
        let mut new = d.clone();
        new.specializations = vec![528_399, 528_404];
        let bytes = encode_identity(&new).expect("encode");
        assert!(bytes.starts_with(&old));
        assert_eq!(decode_identity(&bytes).expect("decode"), new);
    }

    #[test]
    fn damaged_rows_are_errors_not_panics() {
        let row = format1_row();
        for cut in 0..row.len() {
            let _ = decode(&row[..cut]);
        }
        assert!(decode(&[0xFF; 3]).is_err());
    }
}
