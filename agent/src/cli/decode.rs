//! `vitalgate decode`: device bytes to the FHIR resources delivery would send, offline.

use std::io::Write as _;

use crate::clock::{Clock, SystemClock};
use crate::fhir::decode::{self, DecodeCommandError};
use crate::fhir::{GatewayInfo, GatewayTime};
use anyhow::Result;
use clap::Subcommand;
use vitalgate_drivers::ble;

use crate::cli::exit;

#[derive(Debug, Subcommand)]
pub enum DecodeCommand {
    /// Decode one Bluetooth GATT characteristic value and print the FHIR Bundle (type
    /// `collection`) of the Observations and Devices it maps to, with a placeholder subject.
    Ble {
        /// The characteristic: 16-bit UUID (2A35, 0x2A35) or the full base UUID.
        characteristic: String,
        /// The value as hex bytes (spaces, colons or dashes allowed between bytes).
        hex: String,
        /// The device's Bluetooth address, for the Device identifier.
        #[arg(long, default_value = "00:00:00:00:00:00")]
        address: String,
        /// `collection` (default) or `transaction`: the Bundle delivery would POST, every
        /// entry a conditional create.
        #[arg(long, default_value = "collection", value_parser = ["collection", "transaction"])]
        bundle: String,
        /// When the gateway received the bytes (RFC 3339, e.g. 2026-03-01T08:00:00Z): the
        /// time of a reading that carries none. Default: now, by this machine's clock, taken
        /// as right even when it reports itself unsynchronised (said on stderr).
        #[arg(long, value_name = "TIME")]
        received_at: Option<String>,
        /// The value answered a record download (RACP): it comes from the device's memory.
        /// Without it, the value is taken as notified on its own.
        #[arg(long)]
        stored: bool,
        /// The device's System ID (0x2A23) as read, 8 hex bytes: the Device is then
        /// identified by it (SYSID), as it would be after a connection.
        #[arg(long, value_name = "HEX")]
        system_id: Option<String>,
        /// A Glucose Measurement Context (0x2A34) that followed the 0x2A18 value: joined to
        /// it, as the transport joins them.
        #[arg(long, value_name = "HEX")]
        context: Option<String>,
    },
    /// Decode a captured device-to-host byte stream of a serial protocol and print the FHIR
    /// Bundle its readings map to (streams are not reduced).
    Serial {
        /// taidoc, nonin-df2, nonin-df7, nonin-ascii, contec or astm.
        protocol: vitalgate_drivers::serial::Protocol,
        /// The bytes, as hex (one or more arguments, joined; spaces, colons and 0x ignored).
        #[arg(required = true, num_args = 1..)]
        hex: Vec<String>,
        /// Print the readings as the store keeps them (MDC codes, exact decimals, device
        /// time, dedup key) and the problems met, instead of the Bundle.
        #[arg(long)]
        readings: bool,
        /// `collection` (default) or `transaction`.
        #[arg(long, default_value = "collection", value_parser = ["collection", "transaction"])]
        bundle: String,
        /// When the gateway received the bytes (RFC 3339): the time of readings that carry
        /// none (live streams). Default: now, by this machine's clock.
        #[arg(long, value_name = "TIME")]
        received_at: Option<String>,
    },
}

/// What `decode` takes from the configuration: the gateway id and the identifier namespace.
#[derive(Debug, Clone)]
pub struct DecodeGateway {
    pub id: String,
    pub namespace: crate::fhir::IdentifierNamespace,
}

/// The gateway facts the mapping needs, from the configuration and the reception time
/// `decode` assumes: `--received-at`, else this machine's clock. Either is taken as
/// synchronised (decoding bytes on a workstation is not delivering them), and what was
/// assumed is said on stderr, so a reading placed at that time is never mistaken for one
/// that carried its own.
pub fn gateway_now(
    gateway: &DecodeGateway,
    received_at: Option<&str>,
) -> Result<(GatewayInfo, GatewayTime)> {
    let mut now = SystemClock::new().receipt();
    match received_at {
        Some(t) => {
            let at = humantime::parse_rfc3339_weak(t)
                .or_else(|_| humantime::parse_rfc3339(t))
                .map_err(|e| anyhow::anyhow!("--received-at {t:?} is not an RFC 3339 time: {e}"))?;
            let ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| anyhow::anyhow!("--received-at {t:?} is before 1970"))?
                .as_millis() as i64;
            now.wall_ms = ms;
            eprintln!(
                "vitalgate: note: readings without a device time are placed at the --received-at time {t}"
            );
        }
        None if !now.clock_synchronized => eprintln!(
            "vitalgate: note: this machine's clock reports itself unsynchronised; readings \
             without a device time are placed at its current time (give --received-at to \
             choose another)"
        ),
        None => {}
    }
    now.clock_synchronized = true;
    Ok((
        GatewayInfo {
            id: gateway.id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            namespace: gateway.namespace.clone(),
            system_id: crate::fhir::device::gateway_system_id(),
        },
        GatewayTime {
            now,
            utc_offset_s: crate::fhir::time::local_utc_offset_s(),
        },
    ))
}

/// Prints a decoded Bundle, and on stderr every reading left out of it with the reason.
pub fn print_decoded(d: &decode::Decoded) -> Result<()> {
    use std::io::Write;
    for l in &d.left_out {
        eprintln!("vitalgate: {l}");
    }
    let text = serde_json::to_string_pretty(&d.bundle)?;
    // A closed pipe (`| head`) is the reader's choice, not an error.
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    Ok(())
}

pub fn decode_cmd(gateway: &DecodeGateway, cmd: DecodeCommand) -> Result<u8> {
    match cmd {
        DecodeCommand::Serial {
            protocol,
            hex,
            readings,
            bundle,
            received_at,
        } => crate::cli::decode::decode_serial(
            protocol,
            &hex,
            gateway,
            readings,
            bundle == "transaction",
            received_at.as_deref(),
        ),
        DecodeCommand::Ble {
            characteristic,
            hex,
            address,
            bundle,
            received_at,
            stored,
            system_id,
            context,
        } => {
            let (gw, time) = match gateway_now(gateway, received_at.as_deref()) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("vitalgate: error: {e}");
                    return Ok(exit::USAGE);
                }
            };
            let parsed = (|| {
                let uuid = decode::parse_characteristic(&characteristic)?;
                let bytes = decode::parse_hex(&hex)?;
                let mut device = decode::placeholder_ble_device(&address);
                if let Some(hex) = &system_id {
                    let id = ble::dis::decode_system_id(&decode::parse_hex(hex)?)?;
                    ble::dis::apply_system_id(&mut device, &id);
                }
                let mut readings = decode::ble_readings(uuid, &bytes, &device, time.now, stored)?;
                if let Some(hex) = &context {
                    decode::join_glucose_context(&mut readings, &decode::parse_hex(hex)?)?;
                }
                decode::bundle_for_readings(&readings, &gw, &time, bundle == "transaction")
            })();
            match parsed {
                Ok(d) => {
                    print_decoded(&d)?;
                    Ok(exit::OK)
                }
                Err(e @ (DecodeCommandError::Characteristic(_) | DecodeCommandError::Hex(_))) => {
                    eprintln!("vitalgate: error: {e}");
                    Ok(exit::USAGE)
                }
                Err(e) => {
                    eprintln!("vitalgate: error: {e}");
                    Ok(exit::DATAERR)
                }
            }
        }
    }
}

/// What decode needs from the configuration; nothing else is read.
pub fn decode_gateway(config: &crate::config::Config) -> DecodeGateway {
    DecodeGateway {
        id: config.gateway.id.to_string(),
        namespace: config.fhir.identifier_namespace.clone(),
    }
}

/// Why `decode` could not decode: the input is bad data (exit 65).
#[derive(Debug, thiserror::Error)]
pub enum DecodeFailure {
    #[error("the input is not hex: {0}")]
    Hex(String),
    #[error(transparent)]
    Serial(#[from] vitalgate_drivers::serial::SerialError),
}

/// `decode serial`: by default the FHIR Bundle the readings map to (like `decode ble`), with
/// any problems met on the way on stderr; `readings_only` prints the readings as the store
/// keeps them instead, with the problems, for protocol debugging.
pub(crate) fn decode_serial(
    protocol: vitalgate_drivers::serial::Protocol,
    hex_args: &[String],
    gateway: &crate::cli::decode::DecodeGateway,
    readings_only: bool,
    transaction: bool,
    received_at: Option<&str>,
) -> Result<u8> {
    // A bad --received-at is bad usage, as for `decode ble`.
    let (gw, time) = match crate::cli::decode::gateway_now(gateway, received_at) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("vitalgate: error: {e}");
            return Ok(exit::USAGE);
        }
    };
    let text: String = hex_args
        .iter()
        .map(|a| a.trim().trim_start_matches("0x").trim_start_matches("0X"))
        .collect::<Vec<_>>()
        .join("")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':' && *c != ',')
        .collect();
    let bytes = hex::decode(&text).map_err(|e| DecodeFailure::Hex(e.to_string()))?;
    let report = vitalgate_drivers::serial::decode_capture(protocol, &bytes)
        .map_err(DecodeFailure::Serial)?;
    if readings_only {
        let text = serde_json::to_string_pretty(&decode_json(protocol, &report))?;
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = writeln!(std::io::stdout().lock(), "{text}");
        return Ok(exit::OK);
    }
    for p in &report.problems {
        eprintln!("vitalgate: {p}");
    }
    // A live stream carries no device time: its samples are stamped with the reception time
    // decode assumes (they are sent as they are taken, which is what makes that time theirs).
    let readings = if report.readings.is_empty() {
        Vec::new()
    } else {
        report
            .readings
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.receipt = time.now;
                r
            })
            .collect()
    };
    match crate::fhir::decode::bundle_for_readings(&readings, &gw, &time, transaction) {
        Ok(d) => {
            crate::cli::decode::print_decoded(&d)?;
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("vitalgate: error: {e}");
            Ok(exit::DATAERR)
        }
    }
}

/// The JSON `decode` prints. Each reading keeps the model's exact form (`measurement`, with
/// mantissa and exponent) beside a rendered value, so nothing is lost and it is still legible.
fn decode_json(
    protocol: vitalgate_drivers::serial::Protocol,
    report: &vitalgate_drivers::serial::CaptureReport,
) -> serde_json::Value {
    use serde_json::json;
    use vitalgate_drivers::time::DeviceTimestamp;
    let readings: Vec<serde_json::Value> = report
        .readings
        .iter()
        .map(|r| {
            let m = &r.measurement;
            let device_time = match &m.device_time {
                Some(DeviceTimestamp::Local { time, .. }) => Some(time.to_string()),
                Some(DeviceTimestamp::Ticks {
                    ticks,
                    resolution_us,
                }) => Some(format!("{ticks} ticks of {resolution_us} us")),
                None => None,
            };
            json!({
                "code": m.kind.0,
                "value": m.value.map(|v| v.to_string()),
                "unit": m.unit.as_ref().map(|u| u.ucum.clone()),
                "components": m.components.iter().map(|c| json!({
                    "code": c.kind.0,
                    "value": c.value.to_string(),
                    "unit": c.unit.ucum,
                })).collect::<Vec<_>>(),
                "device_time": device_time,
                "dedup_key": r.dedup_key(),
                "raw": hex::encode_upper(&r.raw),
                "measurement": m,
            })
        })
        .collect();
    json!({
        "protocol": protocol.as_str(),
        "device": {
            "manufacturer": report.device.manufacturer,
            "model": report.device.model,
            "serial_number": report.device.serial_number,
            "firmware": report.device.firmware,
        },
        "readings": readings,
        "problems": report.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    })
}
