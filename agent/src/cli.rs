//! Subcommands: argument definitions and what each one does.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use vitalgate::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR};
use vitalgate::store::{self, Keying, StoreReader, StoreStatus};
use vitalgate::supervisor::{StopWhen, Supervisor};

use crate::exit;

/// Vitalgate: remote-patient-monitoring gateway agent.
#[derive(Debug, Parser)]
#[command(name = "vitalgate", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (under systemd: Type=notify, watchdog, SIGTERM to stop).
    Run(StateDirArg),
    /// Run the pipeline on simulated devices, with a state directory of its own.
    Demo {
        #[command(flatten)]
        state: StateDirArg,
        /// How many stored records the simulated cuff holds.
        #[arg(long, default_value_t = 48)]
        records: u32,
        /// Deliver to this FHIR R4 base URL instead of starting a local server.
        #[arg(long, value_name = "BASE_URL")]
        fhir: Option<String>,
        /// Stop after this many seconds of live readings (default: run until Ctrl-C).
        #[arg(long = "for", value_name = "SECONDS")]
        run_for: Option<u64>,
        /// Only store the cuff's records: no FHIR server, no delivery, no live readings.
        #[arg(long, conflicts_with_all = ["fhir", "run_for"])]
        offline: bool,
        /// Where the local FHIR server lives (default: tests/fhir-server found upwards).
        #[arg(long, value_name = "DIR")]
        fhir_server_dir: Option<PathBuf>,
    },
    /// Deliver now: one delivery round per destination, with per-destination results.
    Sync {
        #[command(flatten)]
        state: StateDirArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show reading counts, backlog, devices and alarms from the store.
    Status {
        #[command(flatten)]
        state: StateDirArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also check every page of the store (reads the whole file).
        #[arg(long)]
        verify: bool,
    },
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Decode device bytes and print the FHIR resources they map to.
    #[command(subcommand)]
    Decode(crate::cli_fhir::DecodeCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file without starting anything.
    Check,
}

#[derive(Debug, Args)]
struct StateDirArg {
    /// State directory (the store and, for the demo, its key).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

pub fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Config(ConfigCommand::Check) => config_check(cli.config.as_deref()),
        Command::Decode(cmd) => {
            let config = load_config(cli.config.as_deref(), Required::IfPresent)?;
            crate::cli_fhir::decode_cmd(&crate::cli_fhir::gateway_id(&config), cmd)
        }
        Command::Run(s) => {
            let config = load_config(cli.config.as_deref(), Required::Yes)?;
            vitalgate::logging::init(&config.log);
            let keying = find_key(&config, &s.state_dir, CreateKey::No)?;
            runtime()?.block_on(async {
                Supervisor::new(config, s.state_dir, keying)
                    .stop_when(StopWhen::Signal)
                    .run()
                    .await
            })?;
            Ok(exit::OK)
        }
        Command::Demo {
            state,
            records,
            fhir,
            run_for,
            offline,
            fhir_server_dir,
        } => crate::cli_fhir::demo(
            cli.config.as_deref(),
            &state.state_dir,
            crate::cli_fhir::DemoArgs {
                records,
                fhir,
                run_for: run_for.map(Duration::from_secs),
                offline,
                fhir_server_dir,
            },
        ),
        Command::Sync { state, json } => {
            let config = load_config(cli.config.as_deref(), Required::Yes)?;
            vitalgate::logging::init(&config.log);
            let keying = find_key(&config, &state.state_dir, CreateKey::No)?;
            crate::cli_fhir::sync_cmd(&config, &state.state_dir, keying, json)
        }
        Command::Status {
            state,
            json,
            verify,
        } => status(cli.config.as_deref(), &state.state_dir, json, verify),
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    // Two workers: gateways have few cores, and the store writer has a thread of its own.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

#[derive(PartialEq, Eq)]
pub(crate) enum Required {
    Yes,
    /// Use defaults when no `--config` is given and the default file does not exist.
    IfPresent,
}

pub(crate) fn load_config(explicit: Option<&Path>, required: Required) -> Result<Config> {
    match explicit {
        Some(p) => Ok(Config::load(p)?),
        None => {
            let p = Path::new(DEFAULT_CONFIG_PATH);
            if required == Required::IfPresent && !p.exists() {
                Ok(Config::default())
            } else {
                Ok(Config::load(p)?)
            }
        }
    }
}

fn config_check(explicit: Option<&Path>) -> Result<u8> {
    let path = explicit.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
    let config = Config::load(path)?;
    println!(
        "{}: OK (gateway {}, {} destination(s))",
        path.display(),
        config.gateway.id,
        config.destinations.len()
    );
    Ok(exit::OK)
}

#[derive(PartialEq, Eq)]
pub(crate) enum CreateKey {
    Yes,
    No,
}

/// The key: the systemd credential, then the configured key file, then `db.key` in the state
/// directory (where `demo` creates one when there is none).
pub(crate) fn find_key(config: &Config, state_dir: &Path, create: CreateKey) -> Result<Keying> {
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let local = state_dir.join("db.key");
    let first = store::key::load_key(
        creds.as_deref(),
        &config.store.key_credential,
        &config.store.key_file,
    );
    let (key, source) = match first {
        Ok(found) => found,
        Err(store::KeyError::Missing { .. }) if local.exists() => (
            store::key::read_key_file(&local)?,
            store::KeySource::File(local),
        ),
        Err(store::KeyError::Missing { .. }) if create == CreateKey::Yes => {
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(state_dir)
                    .with_context(|| format!("cannot create {}", state_dir.display()))?;
            }
            let key = store::key::create_key_file(&local)?;
            println!(
                "Created a new database key at {} (mode 0600). Keep it: the store cannot be read without it.",
                local.display()
            );
            (key, store::KeySource::File(local))
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(%source, "Database key loaded.");
    Ok(Keying::Encrypted(key))
}

fn status(explicit: Option<&Path>, state_dir: &Path, json: bool, verify: bool) -> Result<u8> {
    let config = load_config(explicit, Required::IfPresent)?;
    let keying = find_key(&config, state_dir, CreateKey::No)?;
    let path = config.store_path(state_dir);
    if verify {
        store::verify(&path, &keying)?;
    }
    let status = StoreReader::open(&path, &keying)?.status()?;
    let delivery = crate::cli_fhir::destination_summaries(&config, &path, &keying)?;
    if json {
        let mut v = serde_json::to_value(&status)?;
        v["verified"] = serde_json::Value::Bool(verify);
        v["delivery"] = serde_json::to_value(&delivery)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_status(&status);
        crate::cli_fhir::print_delivery(&delivery, store::now_ms());
        if verify {
            println!("Integrity: every page verified.");
        }
    }
    Ok(exit::OK)
}

pub(crate) fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(crate) fn print_status(s: &StoreStatus) {
    let r = &s.readings;
    println!(
        "Store:    {} (schema {}, {})",
        s.path.display(),
        s.schema_version,
        bytesize::ByteSize::b(s.store_bytes)
    );
    println!(
        "Readings: {} total: {} pending, {} delivered, {} quarantined, {} unrouted",
        r.total, r.pending, r.delivered, r.quarantined, r.unrouted
    );
    match s.oldest_undelivered_ms {
        Some(ms) => println!("Oldest undelivered: received {}", when(ms)),
        None => println!("Oldest undelivered: none"),
    }
    if s.destinations.is_empty() {
        println!("Destinations: none have readings routed to them");
    } else {
        println!("Destinations:");
        for d in &s.destinations {
            println!(
                "  {:<16} pending {:>8}  delivered {:>8}  quarantined {:>6}  last delivery {}",
                d.id,
                d.pending,
                d.delivered,
                d.quarantined,
                d.last_delivery_ms
                    .map(when)
                    .unwrap_or_else(|| "never".into())
            );
        }
    }
    println!("Devices ({}):", s.devices.len());
    for d in &s.devices {
        println!(
            "  {:<6} {:<24} {:<28} last seen {}  {} readings",
            d.transport,
            d.address,
            format!(
                "{} {}",
                d.manufacturer.as_deref().unwrap_or("?"),
                d.model.as_deref().unwrap_or("?")
            ),
            when(d.last_seen_ms),
            d.readings
        );
    }
    if s.alarms.is_empty() {
        println!("Alarms:   none");
    } else {
        println!("Alarms:");
        for a in &s.alarms {
            println!("  {} {} {}", when(a.at_ms), a.kind, a.detail);
        }
    }
}
