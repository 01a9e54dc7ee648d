//! Subcommands: argument definitions and what each one does.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vitalgate::clock::Clock;
use vitalgate::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR};
use vitalgate::store::{self, Batch, CursorUpdate, Keying, StoreHandle, StoreReader, StoreStatus};
use vitalgate::supervisor::{ReadingSource, SourceError, StopWhen, Supervisor};
use vitalgate_hardware::sim::BpCuffMemory;

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
        #[command(flatten)]
        fleet: DemoFleetArgs,
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
    /// Decode captured device bytes into the readings the agent would store.
    #[command(subcommand)]
    Decode(DecodeCommand),
    /// Signed software update: keys, signing, applying, status.
    #[command(subcommand)]
    Update(crate::cli_update::UpdateCommand),
}

#[derive(Debug, Subcommand)]
enum DecodeCommand {
    /// A device-to-host byte stream of a serial protocol, as hex ("51 26 69 00 00 40 A5 C5";
    /// spaces, colons and a 0x prefix are ignored). Prints JSON: the readings with MDC codes,
    /// UCUM units, exact decimals and device timestamps, and any problems met on the way.
    Serial {
        /// taidoc, nonin-df2, nonin-df7, nonin-ascii, contec or astm.
        protocol: vitalgate_drivers::serial::Protocol,
        /// The bytes, as hex (one or more arguments, joined).
        #[arg(required = true, num_args = 1..)]
        hex: Vec<String>,
    },
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

pub fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Config(ConfigCommand::Check) => config_check(cli.config.as_deref()),
        Command::Decode(DecodeCommand::Serial { protocol, hex }) => decode_serial(protocol, &hex),
        Command::Run(s) => {
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
            ))
        }
        Command::Demo {
            state,
            records,
            fleet,
        } => demo(cli.config.as_deref(), &state.state_dir, records, fleet),
        Command::Status {
            state,
            json,
            verify,
        } => status(cli.config.as_deref(), &state.state_dir, json, verify),
        Command::Update(u) => crate::cli_update::dispatch(u, || {
            load_config(cli.config.as_deref(), Required::IfPresent)
        }),
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

fn decode_serial(protocol: vitalgate_drivers::serial::Protocol, hex_args: &[String]) -> Result<u8> {
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
    let text = serde_json::to_string_pretty(&decode_json(protocol, &report))?;
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    Ok(exit::OK)
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
enum Required {
    Yes,
    /// Use defaults when no `--config` is given and the default file does not exist.
    IfPresent,
}

fn load_config(explicit: Option<&Path>, required: Required) -> Result<Config> {
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
enum CreateKey {
    Yes,
    No,
}

/// The key: the systemd credential, then the configured key file, then `db.key` in the state
/// directory (where `demo` creates one when there is none).
fn find_key(config: &Config, state_dir: &Path, create: CreateKey) -> Result<Keying> {
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
    if json {
        let mut v = serde_json::to_value(&status)?;
        v["verified"] = serde_json::Value::Bool(verify);
        v["fleet"] = serde_json::to_value(&fleet)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_status(&status);
        print_fleet(fleet.as_ref());
        if verify {
            println!("Integrity: every page verified.");
        }
    }
    Ok(exit::OK)
}

fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn print_status(s: &StoreStatus) {
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

fn demo(
    explicit: Option<&Path>,
    state_dir: &Path,
    records: u32,
    fleet: DemoFleetArgs,
) -> Result<u8> {
    let mut config = load_config(explicit, Required::IfPresent)?;
    let watch_broker = fleet.mqtt.is_some();
    if let Some(url) = fleet.mqtt {
        config.fleet.broker = Some(url);
        // A newcomer watching the topics should not wait a minute for the first figures.
        config.fleet.telemetry_interval = Duration::from_secs(5);
        config.fleet.reconnect_min = Duration::from_secs(1);
    }
    if let Some(id) = fleet.gateway_id {
        config.gateway.id = id;
    }
    vitalgate::logging::init(&config.log);
    let keying = find_key(&config, state_dir, CreateKey::Yes)?;
    println!("Vitalgate demo: state in {}", state_dir.display());
    let cuff = BpCuffMemory::new("00:1C:05:FF:E8:74", records);
    if watch_broker {
        println!(
            "Connecting to the broker as gateway {}; watch with: mosquitto_sub -t 'vitalgate/{}/#' -v. \
             Ctrl-C stops the demo.",
            config.gateway.id, config.gateway.id
        );
    }
    let summary = runtime()?.block_on(async {
        Supervisor::new(config.clone(), state_dir.to_owned(), keying.clone())
            .with_source(Box::new(SimulatedCuff { memory: cuff }))
            .stop_when(if watch_broker {
                StopWhen::Signal
            } else {
                StopWhen::SourcesDone
            })
            .run()
            .await
    })?;
    if summary.sources_failed > 0 {
        anyhow::bail!("{} simulated device(s) failed", summary.sources_failed);
    }
    let status = StoreReader::open(&summary.store_path, &keying)?.status()?;
    println!();
    print_status(&status);
    println!();
    println!(
        "What ran: a simulated blood-pressure cuff downloaded {records} stored records into the \
         encrypted store, committed in batches, each batch acknowledged (cursor advanced) only \
         after its commit. Run the demo again: the records are recognised and not stored twice."
    );
    println!(
        "Serial devices (TaiDoc, Nonin, Contec, ASTM) are read by `vitalgate run` from \
         `[[serial]]` entries; try one on a simulated device with `vitalgate-serial-sim`."
    );
    println!(
        "Not in this build yet: the Bluetooth LE driver with its simulator, and \
         delivery of FHIR Observations to a local FHIR server. Readings stay in the store."
    );
    Ok(exit::OK)
}

/// A simulated cuff whose memory is downloaded the way a RACP download works: chunks of
/// records, each committed (with the cursor) before the next is requested.
struct SimulatedCuff {
    memory: BpCuffMemory,
}

impl ReadingSource for SimulatedCuff {
    fn name(&self) -> String {
        "simulated-bp-cuff".into()
    }

    fn run(
        self: Box<Self>,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>> {
        Box::pin(async move {
            const CHUNK: u32 = 16;
            let mut next = 0;
            while next < self.memory.records {
                if cancel.is_cancelled() {
                    break;
                }
                let end = (next + CHUNK).min(self.memory.records);
                let readings = (next..end)
                    .map(|i| self.memory.record(i, clock.receipt()))
                    .collect();
                let receipt = store
                    .commit(Batch {
                        readings,
                        cursor: Some(CursorUpdate {
                            transport: self.memory.identity.transport,
                            address: self.memory.identity.address.clone(),
                            stream: "racp-2A35".into(),
                            value: (end - 1).to_string(),
                        }),
                    })
                    .await?;
                tracing::info!(
                    inserted = receipt.inserted(),
                    duplicates = receipt.duplicates(),
                    "Simulated cuff batch committed; device acknowledged."
                );
                next = end;
            }
            Ok(())
        })
    }
}
