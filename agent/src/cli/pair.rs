//! `vitalgate pair`, `unpair` and `devices`.
//!
//! `pair` does not touch the Bluetooth adapter itself: the daemon owns it (its scan and its
//! connections run all the time), so `pair` records a pairing window in the store, exactly as
//! the `open-pairing-window` fleet command does, and follows the daemon's progress on it
//! there. One code path pairs, whoever opened the window. `unpair` removes the bond in BlueZ
//! directly (a single call that does not disturb the daemon, which then lets the device go at
//! its next allowlist refresh) and the binding and allowlist entry in the store, audited.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ble::pairing::{WindowReader, policy, record_window, remove_bond};
use crate::config::BtAddr;
use crate::fleet::command::MAX_PAIRING_WINDOW_S;
use crate::store::{self, devices};
use anyhow::{Context, Result, bail};
use clap::Args;
use vitalgate_core::PatientRef;
use vitalgate_core::{Pin, WindowRequest};
use vitalgate_drivers::Transport;

use crate::cli::exit;
use crate::cli::{CreateKey, Required, find_key, load_config, when};

/// How long `pair` waits for the daemon to take the window up before saying it is not running.
const PICKUP: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub(crate) struct PairArgs {
    /// State directory (where the store is).
    #[arg(long, value_name = "DIR", default_value = crate::config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Opaque patient reference the device is bound to (never a name).
    #[arg(long, value_name = "REF")]
    patient: String,
    /// The user of a multi-user device (BP cuff, scale) to bind, 0 to 254; every user when
    /// absent.
    #[arg(long, value_name = "N")]
    user_index: Option<i64>,
    /// How long the window stays open.
    #[arg(long, value_name = "N", default_value_t = 120)]
    seconds: u32,
    /// The PIN or passkey the device shows. Without it, `pair` asks for it on a terminal
    /// (press Enter for a device that shows none).
    #[arg(long, value_name = "PIN")]
    pin: Option<String>,
    /// Only this device (AA:BB:CC:DD:EE:FF) may pair; when it is already paired, this binds
    /// another user index of it.
    #[arg(long, value_name = "ADDRESS")]
    device: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct UnpairArgs {
    /// State directory (where the store is).
    #[arg(long, value_name = "DIR", default_value = crate::config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The device's Bluetooth address.
    address: String,
}

#[derive(Debug, Args)]
pub(crate) struct DevicesArgs {
    /// State directory (where the store is).
    #[arg(long, value_name = "DIR", default_value = crate::config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Bad arguments to `pair` or `unpair` (exit 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadArgument(pub String);

fn read_pin_from_terminal() -> Result<Option<Pin>> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Ok(None);
    }
    eprint!("PIN or passkey shown on the device (Enter if it shows none): ");
    let _ = std::io::stderr().flush();
    // Not echoed: someone may be looking over the patient's shoulder.
    let saved = rustix::termios::tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_modes -= rustix::termios::LocalModes::ECHO;
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet);
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = &saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, t);
    }
    eprintln!();
    read.context("cannot read the PIN")?;
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    Ok(Some(Pin::parse(line).map_err(BadArgument)?))
}

fn bt_address(s: &str) -> Result<String> {
    Ok(s.parse::<BtAddr>().map_err(BadArgument)?.to_string())
}

pub(crate) fn pair(config: Option<&Path>, a: PairArgs) -> Result<u8> {
    let patient =
        PatientRef::parse(&a.patient).map_err(|e| BadArgument(format!("--patient: {e}")))?;
    let user_index = vitalgate_core::ids::user_index(a.user_index)
        .map_err(|e| BadArgument(format!("--user-index: {e}")))?;
    if a.seconds == 0 || a.seconds > MAX_PAIRING_WINDOW_S {
        bail!(BadArgument(format!(
            "--seconds must be between 1 and {MAX_PAIRING_WINDOW_S}"
        )));
    }
    let device = a.device.as_deref().map(bt_address).transpose()?;
    let pin = match &a.pin {
        Some(p) => Some(Pin::parse(p).map_err(|e| BadArgument(format!("--pin: {e}")))?),
        None => read_pin_from_terminal()?,
    };
    let config = load_config(config, Required::IfPresent)?;
    let keying = find_key(&config, &a.state_dir, CreateKey::No)?;
    let path = config.store_path(&a.state_dir);
    if !path.exists() {
        return Err(store::StoreError::NotFound { path }.into());
    }
    let reader = WindowReader::open(&path, &keying)?;
    if let Some(p) = policy(&reader)?
        && p.mode == crate::config::desired::PairingMode::AllowlistOnly
    {
        eprintln!(
            "vitalgate: pairing is off on this gateway: its fleet pairing policy is allowlist-only (ask IT to add the device)"
        );
        return Ok(exit::NOPERM);
    }
    let until_ms = vitalgate_core::time::now_ms() + i64::from(a.seconds) * 1000;
    let id = record_window(
        &path,
        &keying,
        &WindowRequest {
            until_ms,
            patient: Some(patient),
            user_index,
            device: device.clone(),
            pin,
            actor: "cli:pair".into(),
        },
    )?;
    println!(
        "Pairing window open until {}. Put the device in pairing mode near the gateway{}.",
        when(until_ms),
        device.map(|d| format!(" ({d})")).unwrap_or_default()
    );
    let started = std::time::Instant::now();
    let mut announced = false;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let Some(w) = reader.window(id)? else {
            bail!("the pairing window disappeared from the store");
        };
        if w.started_ms.is_some() && !announced {
            announced = true;
            println!("The gateway is looking for the device.");
        }
        if w.closed_ms.is_some() {
            return Ok(report_outcome(w.outcome.as_ref()));
        }
        if w.started_ms.is_none() && started.elapsed() > PICKUP {
            eprintln!(
                "vitalgate: the daemon has not taken the window up: is `vitalgate run` (the vitalgate service) running? The window stays recorded until {}.",
                when(w.until_ms)
            );
            return Ok(exit::TEMPFAIL);
        }
        if vitalgate_core::time::now_ms() > w.until_ms + 30_000 {
            eprintln!("vitalgate: the window ended but the daemon did not report on it");
            return Ok(exit::TEMPFAIL);
        }
    }
}

fn report_outcome(outcome: Option<&serde_json::Value>) -> u8 {
    let o = outcome.cloned().unwrap_or_default();
    let failures = o["failures"].as_array().cloned().unwrap_or_default();
    for f in &failures {
        println!(
            "  {} did not pair: {}",
            f["address"].as_str().unwrap_or("?"),
            f["error"].as_str().unwrap_or("?")
        );
    }
    match o["result"].as_str() {
        Some("paired") => {
            let users = match o["user_index"].as_i64() {
                Some(u) if u >= 0 => format!(" (user {u})"),
                _ => String::new(),
            };
            println!(
                "Paired {}: allowlisted and bound to the patient{users}. Its readings now flow.",
                o["address"].as_str().unwrap_or("?")
            );
            exit::OK
        }
        Some("refused") => {
            eprintln!(
                "vitalgate: pairing refused: {}",
                o["reason"].as_str().unwrap_or("by policy")
            );
            exit::NOPERM
        }
        Some("ambiguous") => {
            let n = o["candidates"].as_array().map_or(0, Vec::len);
            eprintln!(
                "vitalgate: {n} devices are in pairing mode and nothing tells which is meant: \
                 none was paired. Run `vitalgate pair --device <address>`, or take the others \
                 out of pairing mode."
            );
            exit::TEMPFAIL
        }
        Some("expired") if failures.is_empty() => {
            eprintln!(
                "vitalgate: the window expired before a device was found; was it in pairing mode?"
            );
            exit::TEMPFAIL
        }
        Some("expired") => {
            eprintln!(
                "vitalgate: no device paired (a wrong PIN gives org.bluez.Error.AuthenticationFailed); try again"
            );
            exit::TEMPFAIL
        }
        other => {
            eprintln!(
                "vitalgate: the window was closed: {}",
                other.unwrap_or("unknown")
            );
            exit::TEMPFAIL
        }
    }
}

pub(crate) fn unpair(config: Option<&Path>, a: UnpairArgs) -> Result<u8> {
    let address = bt_address(&a.address)?;
    let config = load_config(config, Required::IfPresent)?;
    let keying = find_key(&config, &a.state_dir, CreateKey::No)?;
    let path = config.store_path(&a.state_dir);
    if !path.exists() {
        return Err(store::StoreError::NotFound { path }.into());
    }
    let adapter = config.ble.adapter.clone();
    let bond = crate::cli::runtime()?.block_on(remove_bond(&adapter, &address));
    let bond_removed = matches!(bond, Ok(true));
    let forgotten = devices::forget(
        &path,
        &keying,
        Transport::Ble,
        &address,
        "cli:unpair",
        bond_removed,
    )?;
    match &bond {
        Ok(true) => println!("{address}: bond removed from the Bluetooth adapter."),
        Ok(false) => println!("{address}: the Bluetooth adapter has no bond with it."),
        Err(e) => eprintln!("vitalgate: {address}: cannot reach BlueZ to remove the bond: {e}"),
    }
    println!(
        "{address}: {} binding(s) removed{}; its readings are kept.",
        forgotten.bindings_removed,
        if forgotten.was_allowed {
            ", off the allowlist"
        } else {
            ""
        }
    );
    if config.ble.allow.iter().any(|a| a.to_string() == address) {
        println!(
            "{address}: still listed in [ble] allow in the configuration; remove it there too."
        );
    }
    if bond.is_err() {
        return Ok(exit::TEMPFAIL);
    }
    if !bond_removed && !forgotten.was_allowed && forgotten.bindings_removed == 0 {
        eprintln!("vitalgate: {address} was not paired with or bound on this gateway");
        return Ok(exit::NOINPUT);
    }
    Ok(exit::OK)
}

pub(crate) fn devices(config: Option<&Path>, a: DevicesArgs) -> Result<u8> {
    let config = load_config(config, Required::IfPresent)?;
    let keying = find_key(&config, &a.state_dir, CreateKey::No)?;
    let path = config.store_path(&a.state_dir);
    if !path.exists() {
        return Err(store::StoreError::NotFound { path }.into());
    }
    let list = devices::list(&path, &keying)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(exit::OK);
    }
    if list.is_empty() {
        println!("No devices: pair one with `vitalgate pair --patient <ref>`.");
        return Ok(exit::OK);
    }
    println!(
        "{:<6} {:<17} {:<15} {:<20} {:<20} {:>7}  BINDING",
        "TRANSP", "ADDRESS", "KIND", "LAST SEEN", "LAST READING", "BATTERY"
    );
    for d in &list {
        let binding = if d.bindings.is_empty() {
            "unbound".to_owned()
        } else {
            d.bindings
                .iter()
                .map(|b| {
                    if b.user_index < 0 {
                        b.patient_ref.clone()
                    } else {
                        format!("user {}: {}", b.user_index, b.patient_ref)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{:<6} {:<17} {:<15} {:<20} {:<20} {:>7}  {binding}{}",
            d.transport,
            d.address,
            d.kind.as_deref().unwrap_or("-"),
            if d.last_seen_ms > 0 {
                when(d.last_seen_ms)
            } else {
                "never".into()
            },
            d.last_reading_ms.map_or_else(|| "-".into(), when),
            d.battery_percent
                .map_or_else(|| "-".into(), |b| format!("{b}%")),
            if d.allowed { "" } else { " (not allowlisted)" }
        );
        if let Some(p) = &d.pseudonym {
            println!("       on MQTT: {p}");
        }
        if d.control_tests > 0 {
            println!(
                "       {} control-solution test(s): kept on the gateway, never sent",
                d.control_tests
            );
        }
        if d.held_unbound > 0 {
            let users: Vec<String> = d
                .unbound_users
                .iter()
                .map(|u| {
                    if *u < 0 {
                        "no user id".into()
                    } else {
                        format!("user {u}")
                    }
                })
                .collect();
            println!(
                "       {} reading(s) held, not delivered: no binding for {} (bind with `vitalgate pair --device {} --user-index N`)",
                d.held_unbound,
                users.join(", "),
                d.address
            );
        }
    }
    Ok(exit::OK)
}
