//! The FHIR-side subcommands: `decode` (device bytes to the resources delivery would send)
//! and `sync` (one delivery round now). Kept apart from `cli.rs` so the argument definitions
//! there stay one line per command.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use tokio_util::sync::CancellationToken;
use vitalgate::clock::{Clock, SystemClock};
use vitalgate::config::Config;
use vitalgate::fhir::decode::{self, DecodeCommandError};
use vitalgate::fhir::{GatewayInfo, GatewayTime};
use vitalgate::store::outbox::{DestinationSummary, OutboxReader};
use vitalgate::store::{Batch, CursorUpdate, Keying, StoreHandle, WriterOptions};
use vitalgate::supervisor::{ReadingSource, SourceError, StopWhen, Supervisor};
use vitalgate::sync::{self, Destination, RoundReport};
use vitalgate_drivers::ieee11073::{Value, encode_sfloat};
use vitalgate_drivers::{DeviceIdentity, Transport};
use vitalgate_hardware::sim::BpCuffMemory;

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
        /// `collection` (default) or `transaction`: the Bundle delivery would POST, every
        /// entry a conditional create.
        #[arg(long, default_value = "collection", value_parser = ["collection", "transaction"])]
        bundle: String,
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
        DecodeCommand::Serial {
            protocol,
            hex,
            readings,
            bundle,
        } => crate::cli::decode_serial(
            protocol,
            &hex,
            gateway_id,
            readings,
            bundle == "transaction",
        ),
        DecodeCommand::Ble {
            characteristic,
            hex,
            address,
            bundle,
        } => {
            let parsed = (|| {
                let uuid = decode::parse_characteristic(&characteristic)?;
                let bytes = decode::parse_hex(&hex)?;
                let (gw, time) = gateway_now(gateway_id);
                let device = decode::placeholder_ble_device(&address);
                let readings = decode::ble_readings(uuid, &bytes, &device, time.now)?;
                decode::bundle_for_readings(&readings, &gw, &time, bundle == "transaction")
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

// --- sync and status ------------------------------------------------------------------

/// How often `vitalgate sync` retries a destination after a transient failure.
const SYNC_RETRIES: u32 = 3;

/// `vitalgate sync`: one forced delivery round per destination, results printed. Only one
/// process delivers at a time: while the daemon runs, it holds the delivery lock.
pub fn sync_cmd(config: &Config, state_dir: &Path, keying: Keying, json: bool) -> Result<u8> {
    if config.destinations.is_empty() {
        println!("No destinations configured; nothing to deliver.");
        return Ok(exit::OK);
    }
    let Some(_lock) = DeliveryLock::try_acquire(state_dir)? else {
        eprintln!(
            "vitalgate: the daemon is delivering (it holds {}); `vitalgate status` shows its progress",
            sync::lock_path(state_dir).display()
        );
        return Ok(exit::TEMPFAIL);
    };
    let store_path = config.store_path(state_dir);
    if !store_path.exists() {
        return Err(vitalgate::store::StoreError::NotFound { path: store_path }.into());
    }
    let c = config;
    let opts = WriterOptions {
        path: store_path.clone(),
        keying: keying.clone(),
        batch_max_readings: c.store.batch_max_readings,
        batch_linger: c.store.batch_linger,
        cache_size_kib: c.store.cache_size.as_u64() / 1024,
        channel_capacity: c.supervisor.channel_capacity,
        destinations: c.destinations.iter().map(|d| d.id.to_string()).collect(),
        retention: c.store.retention,
        disk_budget_bytes: c.store.disk_budget.as_u64(),
    };
    let reports = crate::cli::runtime()?.block_on(async {
        let (store, writer) =
            tokio::task::spawn_blocking(move || vitalgate::store::writer::start(opts))
                .await
                .context("store writer")??;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let cancel = CancellationToken::new();
        let mut reports = Vec::new();
        // The daemon's plan: the file overlaid by the fleet's desired configuration.
        let plan = sync::plan::effective(c, &store, &keying).await;
        for d in &plan.destinations {
            let report = match Destination::new(
                d.clone(),
                &store_path,
                &keying,
                store.clone(),
                clock.clone(),
                c.gateway.id.to_string(),
            )
            .map(|dest| dest.with_routing(plan.routing.clone()))
            {
                Ok(mut dest) => {
                    // A transient failure (network, 429, 5xx) is retried a few times, after
                    // the backoff delay (and Retry-After), before the round gives up.
                    let mut total = RoundReport {
                        destination: d.id.to_string(),
                        ..RoundReport::default()
                    };
                    for attempt in 0..=SYNC_RETRIES {
                        match dest.round(true, &cancel).await {
                            Ok(r) => {
                                total.delivered += r.delivered;
                                total.quarantined += r.quarantined;
                                total.held += r.held;
                                total.unrouted += r.unrouted;
                                total.requests += r.requests;
                                total.error = r.error;
                                match r.retry_in {
                                    Some(wait) if attempt < SYNC_RETRIES => {
                                        tokio::time::sleep(wait.min(Duration::from_secs(10))).await;
                                    }
                                    _ => break,
                                }
                            }
                            Err(e) => {
                                total.error = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    total
                }
                Err(e) => RoundReport {
                    destination: d.id.to_string(),
                    error: Some(e.to_string()),
                    ..RoundReport::default()
                },
            };
            reports.push(report);
        }
        store.shutdown().await;
        drop(store);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .context("store writer")??;
        anyhow::Ok(reports)
    })?;
    let reader = OutboxReader::open(&config.store_path(state_dir), &keying)?;
    let mut failed = false;
    let mut out = Vec::new();
    for r in &reports {
        let s = reader.summary(&r.destination)?;
        failed |= r.error.is_some();
        if json {
            out.push(serde_json::json!({ "round": r, "after": s }));
        } else {
            println!(
                "{:<16} delivered {:>6}  quarantined {:>4}  held {:>4}  requests {:>4}  backlog {:>6}  {}",
                r.destination,
                r.delivered,
                r.quarantined,
                r.held,
                r.requests,
                s.backlog,
                r.error
                    .as_deref()
                    .map_or("ok".to_owned(), |e| format!("error: {e}"))
            );
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(if failed { exit::TEMPFAIL } else { exit::OK })
}

/// Delivery state per configured destination, for `vitalgate status`.
pub fn destination_summaries(
    config: &Config,
    store_path: &Path,
    keying: &Keying,
) -> Result<Vec<DestinationSummary>> {
    let reader = OutboxReader::open(store_path, keying)?;
    let mut ids: Vec<String> = config
        .destinations
        .iter()
        .map(|d| d.id.to_string())
        .collect();
    // Destinations no longer (or never) in this configuration but with state in the store,
    // such as the demo's.
    for d in reader.destinations()? {
        if !ids.contains(&d) {
            ids.push(d);
        }
    }
    ids.iter().map(|d| Ok(reader.summary(d)?)).collect()
}

pub fn print_delivery(summaries: &[DestinationSummary], now_ms: i64) {
    if summaries.is_empty() {
        return;
    }
    println!("Delivery:");
    for s in summaries {
        let age = s
            .oldest_pending_ms
            .map(|ms| {
                humantime::format_duration(Duration::from_secs(
                    ((now_ms - ms).max(0) / 1000) as u64,
                ))
                .to_string()
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<16} backlog {:>8}  oldest undelivered {:<12} last success {}  last error {}",
            s.id,
            s.backlog,
            age,
            s.last_success_ms
                .map(crate::cli::when)
                .unwrap_or_else(|| "never".into()),
            match (&s.last_error, s.last_error_ms) {
                (Some(e), Some(ms)) => format!("{} ({e})", crate::cli::when(ms)),
                _ => "none".into(),
            }
        );
    }
}

/// An exclusive advisory lock on the state directory's delivery lock file, held while the
/// file stays open.
#[derive(Debug)]
pub struct DeliveryLock(#[allow(dead_code)] std::fs::File);

impl DeliveryLock {
    pub fn try_acquire(state_dir: &Path) -> Result<Option<Self>> {
        use std::os::fd::AsRawFd;
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        let path = sync::lock_path(state_dir);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if vitalgate::sync::try_lock(file.as_raw_fd()) {
            Ok(Some(Self(file)))
        } else {
            Ok(None)
        }
    }
}

// --- demo -------------------------------------------------------------------------------

/// The demo's patients: identifiers in this project's namespace, conditionally created on the
/// server. Not real people.
const DEMO_PATIENT_SYSTEM: &str = "https://vitalgate.example/fhir/sid/demo-patient";
const CUFF_ADDRESS: &str = "00:1C:05:FF:E8:74";
const OXIMETER_ADDRESS: &str = "00:1C:05:0A:B1:C2";

/// What the demo runs against.
#[derive(Debug)]
pub struct DemoArgs {
    pub records: u32,
    pub fhir: Option<String>,
    pub run_for: Option<Duration>,
    pub offline: bool,
    pub fhir_server_dir: Option<std::path::PathBuf>,
    /// Connect the demo gateway to this broker (`demo --mqtt`).
    pub mqtt: Option<vitalgate::config::BrokerUrl>,
    pub gateway_id: Option<vitalgate::config::GatewayId>,
}

/// A local FHIR server (tests/fhir-server) started for the demo, stopped when dropped.
#[derive(Debug)]
pub struct LocalFhirServer {
    child: std::process::Child,
    pub base_url: String,
}

impl LocalFhirServer {
    /// Starts `node server.mjs` from `dir` (or the first `tests/fhir-server` found from the
    /// current directory upwards) on a free loopback port.
    pub fn start(dir: Option<&Path>) -> Result<Self> {
        use std::io::BufRead;
        let dir = match dir {
            Some(d) => d.to_owned(),
            None => {
                let mut at = std::env::current_dir()?;
                loop {
                    let candidate = at.join("tests/fhir-server");
                    if candidate.join("server.mjs").exists() {
                        break candidate;
                    }
                    if !at.pop() {
                        anyhow::bail!(
                            "no tests/fhir-server found from here upwards: run the demo from the \
                             source tree (scripts/demo), pass --fhir-server-dir, or --fhir <base-url>"
                        );
                    }
                }
            }
        };
        if !dir.join("node_modules").exists() {
            anyhow::bail!(
                "{} has no node_modules: run scripts/fhir-server-install first",
                dir.display()
            );
        }
        let mut child = std::process::Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start node (install Node.js 20+)")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let port = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(p) = l.strip_prefix("LISTENING ") {
                        break p.trim().to_owned();
                    }
                }
                _ => {
                    let _ = child.kill();
                    anyhow::bail!("the local FHIR server exited before listening");
                }
            }
        };
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child,
            base_url: format!("http://127.0.0.1:{port}/fhir/R4"),
        })
    }
}

impl Drop for LocalFhirServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The simulated devices: a BP cuff's stored memory downloaded like a RACP download (each
/// chunk committed, then the cursor), then a pulse oximeter's live notifications decoded by
/// the real PLX decoder, one a second, until `until` or cancellation; then it waits (up to a
/// minute) for delivery to drain so the summary shows everything delivered.
struct DemoDevices {
    cuff: BpCuffMemory,
    live_until: Option<std::time::Instant>,
    drain: Option<(std::path::PathBuf, Keying, Vec<String>)>,
    bind: bool,
    bind_oximeter: bool,
}

impl ReadingSource for DemoDevices {
    fn name(&self) -> String {
        "demo-devices".into()
    }

    fn run(
        self: Box<Self>,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>> {
        Box::pin(async move {
            let oximeter = {
                let mut d = DeviceIdentity::new(Transport::Ble, OXIMETER_ADDRESS);
                d.manufacturer = Some("Simulated Medical".into());
                d.model = Some("SIM-PLX-1".into());
                d.serial_number = Some("SIMPLX0001".into());
                d
            };
            if self.bind {
                let cuff = DeviceIdentity::new(Transport::Ble, CUFF_ADDRESS);
                store
                    .bind(cuff, -1, format!("{DEMO_PATIENT_SYSTEM}|demo-patient-1"))
                    .await?;
            }
            if self.bind_oximeter {
                store
                    .bind(
                        oximeter.clone(),
                        -1,
                        format!("{DEMO_PATIENT_SYSTEM}|demo-patient-2"),
                    )
                    .await?;
            }
            const CHUNK: u32 = 16;
            let mut next = 0;
            while next < self.cuff.records && !cancel.is_cancelled() {
                let end = (next + CHUNK).min(self.cuff.records);
                let readings = (next..end)
                    .map(|i| self.cuff.record(i, clock.receipt()))
                    .collect();
                store
                    .commit(Batch {
                        readings,
                        cursor: Some(CursorUpdate {
                            transport: self.cuff.identity.transport,
                            address: self.cuff.identity.address.clone(),
                            stream: "racp-2A35".into(),
                            value: (end - 1).to_string(),
                        }),
                    })
                    .await?;
                next = end;
            }
            let mut i: u64 = 0;
            while !cancel.is_cancelled() {
                if let Some(until) = self.live_until
                    && std::time::Instant::now() >= until
                {
                    break;
                }
                if self.live_until.is_none() && self.drain.is_none() {
                    break; // offline demo: the stored records only
                }
                let spo2 = 94 + (i % 5) as i64;
                let pr = 620 + (i * 7 % 90) as i64; // tenths of a beat per minute
                let mut bytes = vec![0x00];
                for v in [Value::number(spo2, 0), Value::number(pr, -1)] {
                    let word = encode_sfloat(v).unwrap_or(0x07FF);
                    bytes.extend_from_slice(&word.to_le_bytes());
                }
                let receipt = clock.receipt();
                let readings =
                    decode::ble_readings(0x2A5F, &bytes, &oximeter, receipt).map_err(|e| {
                        SourceError::Failed {
                            source_name: "demo-oximeter".into(),
                            detail: e.to_string(),
                        }
                    })?;
                store
                    .commit(Batch {
                        readings,
                        cursor: None,
                    })
                    .await?;
                i += 1;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            if let Some((path, keying, destinations)) = &self.drain {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !cancel.is_cancelled() && std::time::Instant::now() < deadline {
                    let backlog: u64 = match OutboxReader::open(path, keying) {
                        Ok(r) => destinations
                            .iter()
                            .map(|d| r.summary(d).map(|s| s.backlog).unwrap_or(1))
                            .sum(),
                        Err(_) => 1,
                    };
                    if backlog == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Ok(())
        })
    }
}

/// What the FHIR server holds, by resource type, and whether any identifier is duplicated.
pub async fn server_summary(base_url: &str) -> Result<serde_json::Value> {
    let http = reqwest::Client::builder().use_rustls_tls().build()?;
    let mut out = serde_json::Map::new();
    for ty in ["Patient", "Device", "Observation"] {
        let mut url = format!("{base_url}/{ty}?_count=1000");
        let mut count = 0u64;
        let mut identifiers = std::collections::HashSet::new();
        let mut duplicates = 0u64;
        let mut by_code: std::collections::BTreeMap<String, u64> = Default::default();
        loop {
            let page: serde_json::Value = http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            for e in page["entry"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                count += 1;
                let r = &e["resource"];
                if let Some(id) = r["identifier"][0]["value"].as_str()
                    && !identifiers.insert(format!("{}|{id}", r["identifier"][0]["system"]))
                {
                    duplicates += 1;
                }
                if ty == "Observation" {
                    let code = r["code"]["coding"][0]["code"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned();
                    *by_code.entry(code).or_default() += 1;
                }
            }
            let next = page["link"]
                .as_array()
                .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
                .and_then(|l| l["url"].as_str())
                .map(str::to_owned);
            match next {
                Some(n) if n != url => url = n,
                _ => break,
            }
        }
        let mut v = serde_json::json!({ "count": count, "duplicate_identifiers": duplicates });
        if ty == "Observation" {
            v["by_mdc_code"] = serde_json::to_value(by_code)?;
        }
        out.insert(ty.to_owned(), v);
    }
    Ok(serde_json::Value::Object(out))
}

pub fn demo(explicit: Option<&Path>, state_dir: &Path, args: DemoArgs) -> Result<u8> {
    use crate::cli::{CreateKey, Required, find_key, load_config, print_status};
    let mut config = load_config(explicit, Required::IfPresent)?;
    let watch_broker = args.mqtt.is_some();
    if let Some(url) = args.mqtt {
        config.fleet.broker = Some(url);
        // A newcomer watching the topics should not wait a minute for the first figures.
        config.fleet.telemetry_interval = Duration::from_secs(5);
        config.fleet.reconnect_min = Duration::from_secs(1);
    }
    if let Some(id) = args.gateway_id {
        config.gateway.id = id;
    }
    vitalgate::logging::init(&config.log);
    let keying = find_key(&config, state_dir, CreateKey::Yes)?;
    println!("Vitalgate demo: state in {}", state_dir.display());
    if watch_broker {
        println!(
            "Connecting to the broker as gateway {}; watch with: mosquitto_sub -t 'vitalgate/{}/#' -v",
            config.gateway.id, config.gateway.id
        );
    }
    let mut server = None;
    let base_url = if args.offline {
        None
    } else if let Some(u) = &args.fhir {
        Some(u.trim_end_matches('/').to_owned())
    } else {
        let s = LocalFhirServer::start(args.fhir_server_dir.as_deref())?;
        println!(
            "Local FHIR R4 server (validating, in memory): {}",
            s.base_url
        );
        let url = s.base_url.clone();
        server = Some(s);
        Some(url)
    };
    if let Some(url) = &base_url {
        let toml = format!(
            "[[destination]]\nid = \"demo\"\nbase_url = \"{url}\"\nbatch_linger = \"200ms\"\n"
        );
        let demo_dest: Config = Config::parse(Path::new("(demo destination)"), &toml)?;
        config.destinations = demo_dest.destinations;
    }
    let store_path = config.store_path(state_dir);
    let source = DemoDevices {
        cuff: BpCuffMemory::new(CUFF_ADDRESS, args.records),
        live_until: args.run_for.map(|d| std::time::Instant::now() + d),
        drain: base_url.as_ref().map(|_| {
            (
                store_path.clone(),
                keying.clone(),
                config
                    .destinations
                    .iter()
                    .map(|d| d.id.to_string())
                    .collect(),
            )
        }),
        bind: true,
        bind_oximeter: base_url.is_some(),
    };
    let stop = if args.offline || args.run_for.is_some() {
        StopWhen::SourcesDone
    } else {
        println!("Running until Ctrl-C.");
        StopWhen::Signal
    };
    let mut clock = SystemClock::new();
    if !clock.receipt().clock_synchronized {
        println!(
            "The kernel reports the wall clock as unsynchronised; the demo treats it as \
             synchronised (a gateway would hold delivery until it is)."
        );
        clock = SystemClock::assuming_synchronized();
    }
    let summary = crate::cli::runtime()?.block_on(async {
        Supervisor::new(config.clone(), state_dir.to_owned(), keying.clone())
            .with_clock(Arc::new(clock))
            .with_source(Box::new(source))
            .stop_when(stop)
            .run()
            .await
    })?;
    if summary.sources_failed > 0 {
        anyhow::bail!("{} simulated device(s) failed", summary.sources_failed);
    }
    let status = vitalgate::store::StoreReader::open(&summary.store_path, &keying)?.status()?;
    println!();
    print_status(&status);
    if let Some(url) = &base_url {
        print_delivery(
            &destination_summaries(&config, &summary.store_path, &keying)?,
            vitalgate::store::now_ms(),
        );
        let held = crate::cli::runtime()?.block_on(server_summary(url))?;
        println!();
        println!("The FHIR server at {url} holds:");
        for ty in ["Patient", "Device", "Observation"] {
            println!(
                "  {:<12} {:>6}  (duplicate identifiers: {})",
                ty, held[ty]["count"], held[ty]["duplicate_identifiers"]
            );
        }
        if let Some(codes) = held["Observation"]["by_mdc_code"].as_object() {
            let list: Vec<String> = codes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!("  Observations by MDC code: {}", list.join(", "));
        }
    }
    println!();
    println!(
        "What ran: a simulated blood-pressure cuff's {} stored records and a pulse oximeter's \
         live notifications went into the encrypted store{}. Run it again on the same state \
         directory: nothing is stored or sent twice.",
        args.records,
        if base_url.is_some() {
            ", then to the FHIR server as transaction Bundles of conditional creates"
        } else {
            " (offline: no delivery)"
        }
    );
    drop(server);
    Ok(exit::OK)
}
