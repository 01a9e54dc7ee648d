//! Device Information Service 0x180A (Bluetooth SIG Device Information Service; layouts as in
//! the GATT Specification Supplement): the identity strings, System ID 0x2A23 and PnP ID
//! 0x2A50, and folding them into a [`DeviceIdentity`].

use super::{Reader, code_enum, uuid};
use crate::DecodeError;
use crate::model::DeviceIdentity;

const SYSTEM_ID: &str = "2A23";
const PNP_ID: &str = "2A50";

/// Which Device Information string a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisField {
    ManufacturerName,
    ModelNumber,
    SerialNumber,
    HardwareRevision,
    FirmwareRevision,
    SoftwareRevision,
}

impl DisField {
    fn from_uuid(characteristic: u16) -> Option<(Self, &'static str)> {
        Some(match characteristic {
            uuid::MANUFACTURER_NAME => (DisField::ManufacturerName, "2A29"),
            uuid::MODEL_NUMBER => (DisField::ModelNumber, "2A24"),
            uuid::SERIAL_NUMBER => (DisField::SerialNumber, "2A25"),
            uuid::HARDWARE_REVISION => (DisField::HardwareRevision, "2A27"),
            uuid::FIRMWARE_REVISION => (DisField::FirmwareRevision, "2A26"),
            uuid::SOFTWARE_REVISION => (DisField::SoftwareRevision, "2A28"),
            _ => return None,
        })
    }
}

/// A Device Information string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DisString {
    pub field: DisField,
    pub value: String,
}

/// Decodes one of the Device Information strings (UTF-8). Trailing NUL bytes, which some
/// devices send as C-string padding, are dropped; invalid UTF-8 is an error at the first bad
/// byte.
pub fn decode_string(characteristic: u16, bytes: &[u8]) -> Result<DisString, DecodeError> {
    let (field, name) = DisField::from_uuid(characteristic).ok_or(DecodeError::Invalid {
        characteristic: "unknown",
        offset: 0,
        reason: format!("0x{characteristic:04X} is not a Device Information string"),
    })?;
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let text = bytes.get(..end).unwrap_or_default();
    let value = std::str::from_utf8(text).map_err(|e| DecodeError::Invalid {
        characteristic: name,
        offset: e.valid_up_to(),
        reason: "not valid UTF-8".into(),
    })?;
    Ok(DisString {
        field,
        value: value.to_owned(),
    })
}

/// System ID (0x2A23): a 40-bit manufacturer identifier, then a 24-bit OUI, LSO first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SystemId {
    /// The 8 bytes in over-the-air order, as the model stores them.
    pub raw: [u8; 8],
}

impl SystemId {
    /// The 40-bit manufacturer-defined identifier.
    pub fn manufacturer_identifier(&self) -> u64 {
        let [a, b, c, d, e, ..] = self.raw;
        u64::from_le_bytes([a, b, c, d, e, 0, 0, 0])
    }

    /// The 24-bit organizationally unique identifier.
    pub fn oui(&self) -> u32 {
        let [.., f, g, h] = self.raw;
        u32::from_le_bytes([f, g, h, 0])
    }

    /// The canonical EUI-64, most significant byte first: OUI ‖ manufacturer identifier
    /// (e.g. OUI 0x123456, identifier 0xFFFE9ABCDE → 12-34-56-FF-FE-9A-BC-DE). The PHD IG
    /// example Device `phd-74E8FFFEFF051C00.001C05FFE874` prints the over-the-air order
    /// instead; which one feeds the device identifier is the FHIR mapping's decision.
    pub fn eui64(&self) -> [u8; 8] {
        let mut out = self.raw;
        out.reverse();
        out
    }
}

/// Decodes System ID (0x2A23), exactly 8 bytes.
pub fn decode_system_id(bytes: &[u8]) -> Result<SystemId, DecodeError> {
    let mut r = Reader::new(SYSTEM_ID, bytes);
    let raw = r.take(8)?;
    r.finish()?;
    let mut out = [0u8; 8];
    for (o, b) in out.iter_mut().zip(raw) {
        *o = *b;
    }
    Ok(SystemId { raw: out })
}

code_enum! {
    /// Who assigned the PnP vendor id.
    VendorIdSource {
        BluetoothSig = 1,
        UsbImplementersForum = 2,
    }
}

/// PnP ID (0x2A50).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PnpId {
    pub vendor_id_source: VendorIdSource,
    pub vendor_id: u16,
    pub product_id: u16,
    pub product_version: u16,
}

/// Decodes PnP ID (0x2A50), exactly 7 bytes.
pub fn decode_pnp_id(bytes: &[u8]) -> Result<PnpId, DecodeError> {
    let mut r = Reader::new(PNP_ID, bytes);
    let id = PnpId {
        vendor_id_source: VendorIdSource::from_u8(r.u8()?),
        vendor_id: r.u16_le()?,
        product_id: r.u16_le()?,
        product_version: r.u16_le()?,
    };
    r.finish()?;
    Ok(id)
}

/// Records a decoded Device Information value in the device's identity.
pub fn apply_string(identity: &mut DeviceIdentity, s: &DisString) {
    let slot = match s.field {
        DisField::ManufacturerName => &mut identity.manufacturer,
        DisField::ModelNumber => &mut identity.model,
        DisField::SerialNumber => &mut identity.serial_number,
        DisField::HardwareRevision => &mut identity.hardware,
        DisField::FirmwareRevision => &mut identity.firmware,
        DisField::SoftwareRevision => &mut identity.software,
    };
    *slot = Some(s.value.clone());
}

/// Records the System ID in the device's identity (over-the-air order, as the model keeps it).
pub fn apply_system_id(identity: &mut DeviceIdentity, id: &SystemId) {
    identity.system_id = Some(id.raw);
}
