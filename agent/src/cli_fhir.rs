//! The FHIR-side subcommands: `decode` (device bytes to the resources delivery would send)
//! and `sync` (one delivery round now). Kept apart from `cli.rs` so the argument definitions
//! there stay one line per command.

use anyhow::Result;
use clap::Subcommand;
use vitalgate::clock::{Clock, SystemClock};
use vitalgate::fhir::decode::{self, DecodeCommandError};
use vitalgate::fhir::{GatewayInfo, GatewayTime};

use crate::exit;

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
    },
}

/// The gateway facts the mapping needs, from the configuration and the system clock.
pub fn gateway_now(gateway_id: &str) -> (GatewayInfo, GatewayTime) {
    let now = SystemClock::new().receipt();
    (
        GatewayInfo {
            id: gateway_id.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            clock_synchronized: now.clock_synchronized,
        },
        GatewayTime {
            now,
            utc_offset_s: vitalgate::fhir::time::local_utc_offset_s(),
        },
    )
}

pub fn decode_cmd(gateway_id: &str, cmd: DecodeCommand) -> Result<u8> {
    match cmd {
        DecodeCommand::Ble {
            characteristic,
            hex,
            address,
        } => {
            let parsed = (|| {
                let uuid = decode::parse_characteristic(&characteristic)?;
                let bytes = decode::parse_hex(&hex)?;
                let (gw, time) = gateway_now(gateway_id);
                let device = decode::placeholder_ble_device(&address);
                let readings = decode::ble_readings(uuid, &bytes, &device, time.now)?;
                decode::bundle_for_readings(&readings, &gw, &time)
            })();
            match parsed {
                Ok(bundle) => {
                    use std::io::Write;
                    let text = serde_json::to_string_pretty(&bundle)?;
                    // A closed pipe (`| head`) is the reader's choice, not an error.
                    let _ = writeln!(std::io::stdout().lock(), "{text}");
                    Ok(exit::OK)
                }
                Err(e @ (DecodeCommandError::Characteristic(_) | DecodeCommandError::Hex(_))) => {
                    eprintln!("vitalgate: error: {e}");
                    Ok(exit::USAGE)
                }
                Err(e @ DecodeCommandError::Map { .. }) => {
                    eprintln!("vitalgate: error: {e}");
                    Ok(exit::TEMPFAIL)
                }
                Err(e) => {
                    eprintln!("vitalgate: error: {e}");
                    Ok(exit::DATAERR)
                }
            }
        }
    }
}

/// Reads the configuration path only to find the gateway id; decode needs nothing else.
pub fn gateway_id(config: &vitalgate::config::Config) -> String {
    config.gateway.id.to_string()
}
