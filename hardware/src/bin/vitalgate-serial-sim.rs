//! `vitalgate-serial-sim`: runs one simulated serial device on a pseudo-terminal.
//!
//! It prints `PTY <link> <slave>` when the device is plugged in (again after every replug),
//! `UNPLUGGED`, `STALLED <ms>` and `INFO <text>` as things happen, one per line, and reads
//! commands from standard input: `unplug`, `replug`, `stall <ms>`, `send` (ASTM: transmit
//! again), `quit`. It exits when standard input closes.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vitalgate_drivers::serial::Protocol;
use vitalgate_drivers::time::LocalDateTime;
use vitalgate_hardware::serial::{self, Control, DeviceOptions, Faults, Simulator};

#[derive(Debug, Parser)]
#[command(name = "vitalgate-serial-sim", about)]
struct Args {
    /// taidoc, nonin-df2, nonin-df7, nonin-ascii, contec or astm.
    #[arg(long)]
    protocol: Protocol,
    /// The stable path the agent is configured with (a symlink to the PTY, like
    /// /dev/serial/by-id/...).
    #[arg(long)]
    link: PathBuf,
    /// Stored records (TaiDoc, ASTM) or samples per stored session (Contec).
    #[arg(long, default_value_t = 10)]
    records: u32,
    /// Stored sessions (Contec).
    #[arg(long, default_value_t = 1)]
    sessions: u32,
    /// TaiDoc model: TD-4277 (glucose), TD-3128 (BP), TD-1241 (thermometer).
    #[arg(long, default_value = "TD-4277")]
    model: String,
    /// Stream rate per second (Nonin packets/lines, Contec live packets). Default: 3 for
    /// Nonin DF2/DF7, 1 for Nonin ASCII, 60 for Contec.
    #[arg(long)]
    rate: Option<u32>,
    /// Answer each request only the second time it is sent.
    #[arg(long)]
    second_try: bool,
    /// Contec: the legacy 19200 8O1 protocol.
    #[arg(long)]
    legacy: bool,
    /// Damage every Nth frame (checksum, or framing where there is none).
    #[arg(long, value_name = "N")]
    bad_checksum_every: Option<u32>,
    /// Garbage before every Nth frame.
    #[arg(long, value_name = "N")]
    garbage_every: Option<u32>,
    /// Stall once after N frames...
    #[arg(long, value_name = "N")]
    stall_after: Option<u32>,
    /// ...for this many milliseconds.
    #[arg(long, default_value_t = 4000)]
    stall_ms: u64,
    /// Unplug once after N frames...
    #[arg(long, value_name = "N")]
    unplug_after: Option<u32>,
    /// ...and plug back in after this many milliseconds.
    #[arg(long, value_name = "MS")]
    replug_after_ms: Option<u64>,
    /// The device clock at start: "now" (this machine's local time) or
    /// YYYY-MM-DDTHH:MM:SS. Stored records are dated back from it.
    #[arg(long, default_value = "now")]
    clock: String,
    /// TaiDoc: the serial number the meter reports (16 hex digits); "none" for a meter that
    /// does not answer the serial-number requests.
    #[arg(long, default_value = "5A1B2C3D4E5F6071")]
    serial_number: String,
    /// Add flagged records (TaiDoc: HI, LO, control solution, irregular heartbeat, averaged,
    /// an impossible date).
    #[arg(long)]
    flagged: bool,
}

/// This machine's local wall time.
fn local_now() -> Option<LocalDateTime> {
    let utc = vitalgate_core::time::now_ms().div_euclid(1000);
    let offset = vitalgate_core::time::local_utc_offset_s(utc);
    LocalDateTime::from_epoch_seconds(utc + offset).ok()
}

fn parse_clock(s: &str) -> Option<LocalDateTime> {
    if s == "now" {
        return local_now();
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u16>().ok();
    if s.len() != 19 {
        return None;
    }
    let t = LocalDateTime {
        year: Some(n(0..4)?),
        month: Some(u8::try_from(n(5..7)?).ok()?),
        day: Some(u8::try_from(n(8..10)?).ok()?),
        hour: u8::try_from(n(11..13)?).ok()?,
        minute: u8::try_from(n(14..16)?).ok()?,
        second: u8::try_from(n(17..19)?).ok()?,
        millis: None,
    };
    t.epoch_seconds().ok().map(|_| t)
}

fn main() -> ExitCode {
    let a = Args::parse();
    let Some(clock) = parse_clock(&a.clock) else {
        eprintln!(
            "vitalgate-serial-sim: --clock {:?} is not \"now\" or YYYY-MM-DDTHH:MM:SS",
            a.clock
        );
        return ExitCode::from(64);
    };
    let rate = a.rate.unwrap_or(match a.protocol {
        Protocol::NoninAscii => 1,
        Protocol::Contec => 60,
        _ => 3,
    });
    let options = DeviceOptions {
        records: a.records,
        sessions: a.sessions,
        model: a.model.clone(),
        rate,
        second_try: a.second_try,
        legacy: a.legacy,
        clock,
        serial_number: (a.serial_number != "none").then(|| a.serial_number.clone()),
        flagged: a.flagged,
    };
    let faults = Faults {
        bad_checksum_every: a.bad_checksum_every,
        garbage_every: a.garbage_every,
        stall_after: a.stall_after,
        stall_ms: a.stall_ms,
        unplug_after: a.unplug_after,
        replug_after_ms: a.replug_after_ms,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            match line.parse::<Control>() {
                Ok(c) => {
                    if tx.send(c).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("vitalgate-serial-sim: {e}"),
            }
        }
        // stdin closed: stop.
        let _ = tx.send(Control::Quit);
    });
    let sim = Simulator::new(serial::device(a.protocol, &options), &a.link, faults, |r| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{r}");
        let _ = out.flush();
    });
    match sim.run(rx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vitalgate-serial-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
