//! PHD and PHG Device resources (HL7 PHD IG 2.0.0, PhdDevice and PhgDevice profiles and their
//! notes), and the device part of the conditional-create identifier.
//!
//! SYSID byte order (a choice the IG leaves open): the IG's own example Device
//! `phd-74E8FFFEFF051C00.001C05FFE874` prints the System ID characteristic in over-the-air
//! (LSO-first) order, `74-E8-FF-FE-FF-05-1C-00`, although the canonical EUI-64 would be
//! `00-1C-05-FF-FE-FF-E8-74`. We follow the example: the over-the-air order, uppercase,
//! dash-separated. This feeds every Observation identifier, so it must never change for an
//! installed fleet.

use serde_json::{Value, json};
use vitalgate_drivers::{DeviceIdentity, Transport};

use super::{GatewayInfo, IdentifierNamespace, codes, mdc_coding};

pub const SYSID_SYSTEM: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";
pub const BTMAC_SYSTEM: &str = "http://hl7.org/fhir/sid/eui-48/bluetooth";
/// Device identifier types, at the 2.0.0 canonical (CodeSystem.ContinuaDeviceIdentifiers.fsh).
pub const CONTINUA_IDS: &str = "http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers";
/// Devices with neither a System ID nor a Bluetooth address (serial meters): identified by
/// manufacturer, model and serial number (or port) within the configured identifier
/// namespace, under this name.
pub const SERIAL_DEVICE_NAME: &str = "serial-device";
/// The gateway (PHG) by its provisioned gateway id, under this name in the namespace.
pub const GATEWAY_NAME: &str = "gateway";
pub const PHD_DEVICE_PROFILE: &str = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdDevice";
pub const PHG_DEVICE_PROFILE: &str = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhgDevice";

/// A device identifier: system, printed value, and the Continua identifier type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId {
    pub system: String,
    pub value: String,
    pub continua_type: Option<&'static str>,
}

impl DeviceId {
    /// `identifier=<system>|<value>` for `ifNoneExist` and searches.
    pub fn search(&self) -> String {
        super::identifier_search(&self.system, &self.value)
    }
}

fn dashed(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join("-")
}

/// The Bluetooth address as EUI-48 `00-1C-05-FF-E8-74`, if the address is one.
fn btmac(identity: &DeviceIdentity) -> Option<String> {
    if identity.transport != Transport::Ble {
        return None;
    }
    let bytes: Vec<u8> = identity
        .address
        .split([':', '-'])
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    (bytes.len() == 6).then(|| dashed(&bytes))
}

/// Every identifier the device has, most specific first: SYSID, BTMAC, or the serial
/// namespace.
pub fn identifiers(
    identity: &DeviceIdentity,
    ns: &IdentifierNamespace,
    gateway_id: &str,
) -> Vec<DeviceId> {
    let mut out = Vec::new();
    if let Some(sysid) = identity.system_id {
        out.push(DeviceId {
            system: SYSID_SYSTEM.to_owned(),
            value: dashed(&sysid),
            continua_type: Some("SYSID"),
        });
    }
    if let Some(mac) = btmac(identity) {
        out.push(DeviceId {
            system: BTMAC_SYSTEM.to_owned(),
            value: mac,
            continua_type: Some("BTMAC"),
        });
    }
    if out.is_empty() {
        out.push(DeviceId {
            system: ns.system(SERIAL_DEVICE_NAME),
            value: serial_device_value(identity, gateway_id),
            continua_type: None,
        });
    }
    out
}

/// A device with neither a System ID nor a Bluetooth address (a serial meter): its serial
/// number with the manufacturer and model its protocol tells (TaiDoc both, Nonin the
/// manufacturer, an ASTM header the model), so the meter is the same Device on any port of
/// any gateway. What a protocol tells does not change from session to session, so neither
/// does the value. A meter that tells no serial number can only be known as "the one on this
/// port of this gateway": the gateway id and a digest of the port, never the port's path
/// itself (a path names the gateway's hardware, not the device, and changes with it).
fn serial_device_value(identity: &DeviceIdentity, gateway_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let maker = identity.manufacturer.as_deref();
    let model = identity.model.as_deref();
    match identity.serial_number.as_deref() {
        Some(sn) if maker.is_some() || model.is_some() => [maker, model, Some(sn)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("|"),
        _ => {
            let digest = Sha256::digest(identity.address.as_bytes());
            let short: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
            format!("{gateway_id}|port-{short}")
        }
    }
}

/// The device part of the Observation identifier: the primary identifier's value, uppercase,
/// without dashes (16 hex digits for a SYSID, 12 for a BTMAC).
pub fn identifier_part(identity: &DeviceIdentity, gateway_id: &str) -> String {
    // The value of a device identifier does not depend on the namespace.
    let id = identifiers(identity, &IdentifierNamespace::default(), gateway_id).remove(0);
    match id.continua_type {
        Some(_) => id.value.replace('-', "").to_uppercase(),
        // Serial namespace values may hold dashes and bars; both would blur the dash-separated
        // identifier, so they are dropped the same way.
        None => id
            .value
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect(),
    }
}

fn identifier_json(id: &DeviceId) -> Value {
    let mut v = json!({ "system": id.system, "value": id.value });
    if let Some(t) = id.continua_type {
        v["type"] = json!({ "coding": [{ "system": CONTINUA_IDS, "code": t }] });
    }
    v
}

/// A PhdDevice for a medical device; `kind` is a measurement code it reported, which picks
/// the specialization.
pub fn phd_device(
    identity: &DeviceIdentity,
    kind: vitalgate_drivers::mdc::MdcCode,
    ns: &IdentifierNamespace,
    gateway_id: &str,
) -> Value {
    // What the device offers (its services), else what this reading implies.
    let specs: Vec<u32> = if identity.specializations.is_empty() {
        vec![codes::specialization(kind).0]
    } else {
        identity.specializations.clone()
    };
    let specialization: Vec<Value> = specs
        .iter()
        .map(|s| {
            json!({
                "systemType": { "coding": [mdc_coding(*s, codes::specialization_name(*s))] },
                "version": "1"
            })
        })
        .collect();
    let mut d = json!({
        "resourceType": "Device",
        "identifier": identifiers(identity, ns, gateway_id).iter().map(identifier_json).collect::<Vec<_>>(),
        "type": { "coding": [mdc_coding(65573, "MDC_MOC_VMS_MDS_SIMP")] },
        "specialization": specialization,
    });
    if let Some(m) = &identity.manufacturer {
        d["manufacturer"] = json!(m);
    }
    if let Some(m) = &identity.model {
        d["modelNumber"] = json!(m);
    }
    if let Some(s) = &identity.serial_number {
        d["serialNumber"] = json!(s);
    }
    let versions: Vec<Value> = [
        (&identity.hardware, 531974, "MDC_ID_PROD_SPEC_HW"),
        (&identity.software, 531975, "MDC_ID_PROD_SPEC_SW"),
        (&identity.firmware, 531976, "MDC_ID_PROD_SPEC_FW"),
    ]
    .into_iter()
    .filter_map(|(v, code, name)| {
        v.as_ref()
            .map(|v| json!({ "type": { "coding": [mdc_coding(code, name)] }, "value": v }))
    })
    .collect();
    // The PhdDevice profile requires manufacturer, model number and at least one version
    // (PhdDevice FSH: manufacturer 1..1, modelNumber 1..1, version slice MDCType 1..*). A
    // device that did not tell all three is sent as a plain Device, claiming nothing.
    let complete =
        identity.manufacturer.is_some() && identity.model.is_some() && !versions.is_empty();
    if !versions.is_empty() {
        d["version"] = Value::Array(versions);
    }
    if complete {
        d["meta"] = json!({ "profile": [PHD_DEVICE_PROFILE] });
    }
    d
}

/// The gateway's identifier.
pub fn gateway_identifier(gw: &GatewayInfo) -> DeviceId {
    DeviceId {
        system: gw.namespace.system(GATEWAY_NAME),
        value: gw.id.clone(),
        continua_type: None,
    }
}

/// The gateway's EUI-64 system identifier, derived from the machine id (`/etc/machine-id`,
/// 32 hex digits, stable for the installation): the first 8 bytes of
/// SHA-256("vitalgate-phg-sysid:" + id), marked locally administered and unicast, as an
/// EUI-64 not assigned from an IEEE block must be. `None` for anything but a machine id.
pub fn system_id_from_machine_id(machine_id: &str) -> Option<[u8; 8]> {
    use sha2::{Digest, Sha256};
    let id = machine_id.trim();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let digest = Sha256::new()
        .chain_update(b"vitalgate-phg-sysid:")
        .chain_update(id.to_ascii_lowercase().as_bytes())
        .finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(digest.get(..8)?);
    out[0] = (out[0] | 0x02) & !0x01;
    Some(out)
}

/// This machine's gateway system identifier (see [`system_id_from_machine_id`]).
pub fn gateway_system_id() -> Option<[u8; 8]> {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .and_then(|id| system_id_from_machine_id(&id))
}

/// The PhgDevice for this gateway (PhgDevice profile; the IG's PhgDevice notes name the
/// system identifier and the time synchronization method as its required entries): type
/// MDC_MOC_VMS_MDS_AHD, the SYSID when known, its software version, and NTP as the way its
/// clock is set (the gateway synchronises with NTP; whether it is synchronised at a given
/// moment is told by each reading, not by the Device, which the server keeps).
pub fn phg_device(gw: &GatewayInfo) -> Value {
    let mut identifiers = vec![identifier_json(&gateway_identifier(gw))];
    if let Some(sysid) = gw.system_id {
        identifiers.push(identifier_json(&DeviceId {
            system: SYSID_SYSTEM.to_owned(),
            value: dashed(&sysid),
            continua_type: Some("SYSID"),
        }));
    }
    json!({
        "resourceType": "Device",
        "meta": { "profile": [PHG_DEVICE_PROFILE] },
        "identifier": identifiers,
        "manufacturer": "Vitalgate",
        "modelNumber": "vitalgate",
        "type": { "coding": [mdc_coding(531981, "MDC_MOC_VMS_MDS_AHD")] },
        "specialization": [{
            "systemType": { "coding": [mdc_coding(528457, "MDC_DEV_SPEC_PROFILE_GENERIC")] },
            "version": "1"
        }],
        "version": [{
            "type": { "coding": [mdc_coding(531975, "MDC_ID_PROD_SPEC_SW")] },
            "value": gw.version
        }],
        "property": [{
            "type": { "coding": [mdc_coding(68220, "MDC_TIME_SYNC_PROTOCOL")] },
            "valueCode": [{ "coding": [mdc_coding(532226, "MDC_TIME_SYNC_NTPV4")] }]
        }],
    })
}
