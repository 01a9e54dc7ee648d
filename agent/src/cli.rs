//! Subcommands: argument definitions and what each one does.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use vitalgate::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR};
use vitalgate::store::{self, Keying, StoreReader, StoreStatus};

use crate::exit;

/// Vitalgate: remote-patient-monitoring gateway agent.
#[derive(Debug, Parser)]
#[command(
    name = "vitalgate",
    version,
    about,
    propagate_version = true,
    after_long_help = "Each command documents its own options: vitalgate <command> --help. \
        Configuration: /etc/vitalgate/vitalgate.toml (every key with its default). The \
        handbook: /usr/share/doc/vitalgate/README.md."
)]
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
    Run {
        #[command(flatten)]
        state: StateDirArg,
        /// Start on a store whose write-ahead log is damaged: keep every commit that can be
        /// read, record what could not (event `store-wal-damaged`), keep the log's copy.
        #[arg(long)]
        recover: bool,
    },
    /// Run the pipeline on simulated devices, with a state directory of its own.
    Demo {
        #[command(flatten)]
        state: DemoStateDirArg,
        /// How many stored records the simulated cuff holds.
        #[arg(long, default_value_t = 48)]
        records: u32,
        #[command(flatten)]
        fleet: DemoFleetArgs,
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
    /// Set the gateway up from an enrollment file: config, secret files, key, bindings.
    Provision(crate::cli_install::ProvisionArgs),
    /// Check adapter, serial ports, clock, disk, key, store, broker and FHIR endpoints.
    Doctor(crate::cli_install::DoctorArgs),
    /// Decode device bytes and print the FHIR resources they map to.
    #[command(subcommand)]
    Decode(crate::cli_fhir::DecodeCommand),
    /// Pair a home device with this gateway and bind it to a patient (the daemon pairs it).
    Pair(crate::cli_pair::PairArgs),
    /// Remove a device's bond, binding and allowlist entry (audited; readings are kept).
    Unpair(crate::cli_pair::UnpairArgs),
    /// List the devices this gateway has taken on, with their bindings.
    Devices(crate::cli_pair::DevicesArgs),
    /// Signed software update: keys, signing, applying, status.
    #[command(subcommand)]
    Update(crate::cli_update::UpdateCommand),
    /// Print a shell completion script (the package installs them; or `source` one).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page, vitalgate(8), as roff (the package installs it).
    #[command(hide = true)]
    Manual,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file without starting anything.
    Check,
}

/// `demo --mqtt`: connect the demo gateway to a broker and keep running until Ctrl-C.
#[derive(Debug, Args)]
struct DemoFleetArgs {
    /// Broker to connect the demo gateway to, e.g. mqtt://127.0.0.1:1883 (watch it with
    /// `mosquitto_sub -t 'vitalgate/#' -v`). The demo then runs until interrupted.
    #[arg(long, value_name = "URL")]
    mqtt: Option<vitalgate::config::BrokerUrl>,
    /// Gateway id for the demo's topics (default: the configured one).
    #[arg(long, value_name = "ID", requires = "mqtt")]
    gateway_id: Option<vitalgate::config::GatewayId>,
}

#[derive(Debug, Args)]
struct StateDirArg {
    /// State directory (the store and, for the demo, its key).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Debug, Args)]
struct DemoStateDirArg {
    /// State directory of the demo's own store and key. Never the gateway's: the demo
    /// refuses the directory `run` uses by default.
    #[arg(long, value_name = "DIR", default_value = "vitalgate-demo-state")]
    state_dir: PathBuf,
}

pub fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Config(ConfigCommand::Check) => config_check(cli.config.as_deref()),
        Command::Decode(cmd) => {
            let config = load_config(cli.config.as_deref(), Required::IfPresent)?;
            crate::cli_fhir::decode_cmd(&crate::cli_fhir::decode_gateway(&config), cmd)
        }
        Command::Run { state: s, recover } => {
            let config = load_config(cli.config.as_deref(), Required::Yes)?;
            vitalgate::logging::init(&config.log);
            let keying = find_key(&config, &s.state_dir, CreateKey::No)?;
            let ble = vitalgate::ble::BleSource::new(
                config.ble.clone(),
                config.store_path(&s.state_dir),
                keying.clone(),
            );
            runtime()?.block_on(crate::cli_update::run_daemon(
                config,
                s.state_dir,
                keying,
                vec![Box::new(ble)],
                recover,
            ))
        }
        Command::Demo {
            state,
            records,
            fleet,
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
                mqtt: fleet.mqtt,
                gateway_id: fleet.gateway_id,
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
        Command::Provision(a) => crate::cli_install::provision_cmd(cli.config.as_deref(), a),
        Command::Doctor(a) => crate::cli_install::doctor_cmd(cli.config.as_deref(), a),
        Command::Pair(a) => crate::cli_pair::pair(cli.config.as_deref(), a),
        Command::Unpair(a) => crate::cli_pair::unpair(cli.config.as_deref(), a),
        Command::Devices(a) => crate::cli_pair::devices(cli.config.as_deref(), a),
        Command::Update(u) => crate::cli_update::dispatch(u, || {
            load_config(cli.config.as_deref(), Required::IfPresent)
        }),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut cmd, "vitalgate", &mut text);
            print_bytes(&text)
        }
        Command::Manual => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_mangen::Man::new(cmd)
                .section("8")
                .render(&mut text)
                .context("cannot render the manual page")?;
            print_bytes(&text)
        }
    }
}

/// Writes generated text to stdout; a closed pipe (`| head`) is not an error.
fn print_bytes(text: &[u8]) -> Result<u8> {
    match std::io::stdout().lock().write_all(text) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(exit::OK),
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
    gateway: &crate::cli_fhir::DecodeGateway,
    readings_only: bool,
    transaction: bool,
    received_at: Option<&str>,
) -> Result<u8> {
    // A bad --received-at is bad usage, as for `decode ble`.
    let (gw, time) = match crate::cli_fhir::gateway_now(gateway, received_at) {
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
    match vitalgate::fhir::decode::bundle_for_readings(&readings, &gw, &time, transaction) {
        Ok(d) => {
            crate::cli_fhir::print_decoded(&d)?;
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
    let config = match explicit {
        Some(p) => Config::load(p)?,
        None => {
            let p = Path::new(DEFAULT_CONFIG_PATH);
            if required == Required::IfPresent && !p.exists() {
                Config::default()
            } else {
                Config::load(p)?
            }
        }
    };
    // Every command judges the clock by the same evidence as the daemon.
    vitalgate::clock::set_sync_marker(&config.gateway.clock_synchronized_file);
    Ok(config)
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
    let fleet = vitalgate::fleet::status::read(state_dir)
        .with_context(|| format!("cannot read the fleet state in {}", state_dir.display()))?;
    let delivery = crate::cli_fhir::destination_summaries(&config, &path, &keying)?;
    if json {
        let mut v = serde_json::to_value(&status)?;
        v["verified"] = serde_json::Value::Bool(verify);
        v["delivery"] = serde_json::to_value(&delivery)?;
        v["fleet"] = serde_json::to_value(&fleet)?;
        v["gateway_id"] = serde_json::Value::String(config.gateway.id.to_string());
        v["version"] = vitalgate::update::running_version().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "Gateway:  {} (vitalgate {})",
            config.gateway.id,
            vitalgate::update::running_version()
        );
        print_status(&status);
        crate::cli_fhir::print_delivery(&delivery, vitalgate_core::time::now_ms());
        print_fleet(fleet.as_ref());
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
    // As the daemon last saw it (it records every change).
    match &s.clock {
        Some(c) if c.synchronized => println!(
            "Clock:    synchronised (as of {}: {})",
            when(c.since_ms),
            c.why
        ),
        Some(c) => println!(
            "Clock:    NOT synchronised since {}: {}. Readings that need the gateway's time are held until it is.",
            when(c.since_ms),
            c.why
        ),
        None => println!("Clock:    not reported yet (the daemon has not run)"),
    }
    if r.held_unbound > 0 {
        println!(
            "Held:     {} reading(s) with no patient binding for their device or user (see `vitalgate devices`)",
            r.held_unbound
        );
    }
    if r.not_patient > 0 {
        println!(
            "Kept:     {} reading(s) that are not patient data (control-solution tests, device test data), never sent",
            r.not_patient
        );
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
            for q in &d.quarantine_reasons {
                println!("    quarantined {:>6}: {}", q.readings, q.reason);
            }
        }
    }
    println!("Devices ({}):", s.devices.len());
    for d in &s.devices {
        println!(
            "  {:<6} {:<24} {:<28} last seen {}  {} readings{}",
            d.transport,
            d.address,
            format!(
                "{} {}",
                d.manufacturer.as_deref().unwrap_or("?"),
                d.model.as_deref().unwrap_or("?")
            ),
            // A device bound at provisioning has not been seen yet.
            if d.last_seen_ms > 0 {
                when(d.last_seen_ms)
            } else {
                "never".to_owned()
            },
            d.readings,
            match d.bindings {
                0 => String::new(),
                1 => ", bound".to_owned(),
                n => format!(", {n} users bound"),
            }
        );
        if d.control_tests + d.device_tests > 0 {
            println!(
                "         {} control-solution test(s), {} device test reading(s): kept, never sent",
                d.control_tests, d.device_tests
            );
        }
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

fn print_fleet(fleet: Option<&vitalgate::fleet::status::FleetStatus>) {
    let Some(f) = fleet else {
        println!("Fleet:    not connected to a broker (no [fleet] broker, or never run)");
        return;
    };
    println!(
        "Fleet:    {} to {} as {} since {} ({} reconnects), config version {}",
        f.connection,
        f.broker,
        f.gateway_id,
        f.since,
        f.reconnects,
        f.config_version
            .map_or_else(|| "none".to_owned(), |v| v.to_string())
    );
    if let Some(e) = &f.last_error {
        println!("  last error: {e}");
    }
    match &f.last_command {
        Some(c) => println!(
            "  last command: {} {} {} at {}{}",
            c.id,
            c.kind,
            c.status,
            c.at,
            if c.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.reason)
            }
        ),
        None => println!("  last command: none"),
    }
}
