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
use vitalgate_drivers::ble;
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
    pub namespace: vitalgate::fhir::IdentifierNamespace,
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
            system_id: vitalgate::fhir::device::gateway_system_id(),
        },
        GatewayTime {
            now,
            utc_offset_s: vitalgate::fhir::time::local_utc_offset_s(),
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
        } => crate::cli::decode_serial(
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
pub fn decode_gateway(config: &vitalgate::config::Config) -> DecodeGateway {
    DecodeGateway {
        id: config.gateway.id.to_string(),
        namespace: config.fhir.identifier_namespace.clone(),
    }
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
    let opts = writer_options(config, state_dir, &keying);
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
                c.fhir.identifier_namespace.clone(),
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
/// value lives.
#[derive(Debug)]
pub struct DeliveryLock(#[allow(dead_code)] vitalgate_core::fs::FileLock);

impl DeliveryLock {
    pub fn try_acquire(state_dir: &Path) -> Result<Option<Self>> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        let path = sync::lock_path(state_dir);
        let lock = vitalgate_core::fs::FileLock::try_acquire(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(lock.map(Self))
    }
}

// --- demo -------------------------------------------------------------------------------

use crate::cli_demo::PATIENT_SYSTEM as DEMO_PATIENT_SYSTEM;
/// The in-memory simulated cuff and oximeter (offline demo, and the fallback without
/// `dbus-daemon`).
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
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("node")
            // Not in the terminal's foreground group: Ctrl-C stops the demo, which still
            // asks the server what it holds before stopping it.
            .process_group(0)
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

/// The in-memory simulated devices, for the offline demo and the fallback when no private
/// D-Bus bus can be started: a BP cuff's stored memory committed like a RACP download (each
/// chunk, then the cursor), then (when `live`) a pulse oximeter's live notifications decoded
/// by the real PLX decoder, one a second, until `live_until` or cancellation. No transport.
struct DemoDevices {
    cuff: BpCuffMemory,
    live: bool,
    live_until: Option<std::time::Instant>,
    bind: bool,
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
            while self.live && !cancel.is_cancelled() {
                if let Some(until) = self.live_until
                    && std::time::Instant::now() >= until
                {
                    break;
                }
                let spo2 = 94 + (i % 5) as i64;
                let pr = 620 + (i * 7 % 90) as i64; // tenths of a beat per minute
                let mut bytes = vec![0x00];
                for v in [Value::number(spo2, 0), Value::number(pr, -1)] {
                    let word = encode_sfloat(v).unwrap_or(0x07FF);
                    bytes.extend_from_slice(&word.to_le_bytes());
                }
                let receipt = clock.receipt();
                let readings = decode::ble_readings(0x2A5F, &bytes, &oximeter, receipt, false)
                    .map_err(|e| SourceError::Failed {
                        source_name: "demo-oximeter".into(),
                        detail: e.to_string(),
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
            Ok(())
        })
    }
}

/// Follows a search's `next` links and returns every resource found.
async fn search_all(
    http: &reqwest::Client,
    base_url: &str,
    ty: &str,
) -> Result<Vec<serde_json::Value>> {
    let mut url = format!("{base_url}/{ty}?_count=1000");
    let mut out = Vec::new();
    loop {
        let mut page: serde_json::Value = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if let Some(entries) = page["entry"].as_array_mut() {
            out.extend(entries.iter_mut().map(|e| e["resource"].take()));
        }
        let next = page["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned);
        match next {
            Some(n) if n != url => url = n,
            _ => return Ok(out),
        }
    }
}

/// What the FHIR server holds: by resource type (with any duplicated identifier), the
/// Observations by MDC code, and the Observations per Device.
pub async fn server_summary(base_url: &str) -> Result<serde_json::Value> {
    let mut o = vitalgate_core::http::ClientOptions::new("vitalgate-demo", Duration::from_secs(10));
    o.https_only = false;
    let http = vitalgate_core::http::client(o)?;
    let mut out = serde_json::Map::new();
    let mut devices: std::collections::BTreeMap<String, String> = Default::default();
    for ty in ["Patient", "Device", "Observation"] {
        let all = search_all(&http, base_url, ty).await?;
        let mut identifiers = std::collections::HashSet::new();
        let mut duplicates = 0u64;
        let mut by_code: std::collections::BTreeMap<String, u64> = Default::default();
        let mut by_device: std::collections::BTreeMap<String, u64> = Default::default();
        let mut flagged: std::collections::BTreeMap<&str, u64> = Default::default();
        for r in &all {
            if let Some(id) = r["identifier"][0]["value"].as_str()
                && !identifiers.insert(format!("{}|{id}", r["identifier"][0]["system"]))
            {
                duplicates += 1;
            }
            match ty {
                "Device" => {
                    let name = r["deviceName"][0]["name"]
                        .as_str()
                        .or(r["modelNumber"].as_str())
                        .or(r["manufacturer"].as_str())
                        .unwrap_or("device");
                    let ident = r["identifier"][0]["value"].as_str().unwrap_or("?");
                    devices.insert(
                        format!("Device/{}", r["id"].as_str().unwrap_or("?")),
                        format!("{name} [{ident}]"),
                    );
                }
                "Observation" => {
                    let code = r["code"]["coding"][0]["code"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned();
                    *by_code.entry(code).or_default() += 1;
                    // What a clinician must not read as a plain value, as it arrived.
                    let asn1 = r["component"].as_array().is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c["code"]["coding"][0]["system"] == vitalgate::fhir::ASN1_SYSTEM
                        })
                    });
                    for (flag, set) in [
                        ("comparator", r["valueQuantity"]["comparator"].is_string()),
                        ("data_absent", r.get("dataAbsentReason").is_some()),
                        ("interpretation", r.get("interpretation").is_some()),
                        ("device_status", asn1),
                        ("not_final", r["status"] != "final"),
                    ] {
                        if set {
                            *flagged.entry(flag).or_default() += 1;
                        }
                    }
                    let dev = r["device"]["reference"].as_str().unwrap_or("none");
                    let label = devices.get(dev).cloned().unwrap_or_else(|| dev.to_owned());
                    *by_device.entry(label).or_default() += 1;
                }
                _ => {}
            }
        }
        let mut v = serde_json::json!({
            "count": all.len(),
            "duplicate_identifiers": duplicates,
        });
        if ty == "Observation" {
            v["by_mdc_code"] = serde_json::to_value(by_code)?;
            v["by_device"] = serde_json::to_value(by_device)?;
            v["flagged"] = serde_json::to_value(flagged)?;
        }
        out.insert(ty.to_owned(), v);
    }
    Ok(serde_json::Value::Object(out))
}

/// The store writer's options for a state directory.
fn writer_options(config: &Config, state_dir: &Path, keying: &Keying) -> WriterOptions {
    vitalgate::supervisor::writer_options(config, config.store_path(state_dir), keying)
}

/// Binds the demo devices to their patients before any source runs, so no reading waits for
/// its binding.
async fn bind_devices(opts: WriterOptions, devices: &[crate::cli_demo::DemoDevice]) -> Result<()> {
    let (store, writer) =
        tokio::task::spawn_blocking(move || vitalgate::store::writer::start(opts))
            .await
            .context("store writer")??;
    for d in devices {
        store.bind(d.identity(), -1, d.patient.clone()).await?;
    }
    store.shutdown().await;
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .context("store writer")??;
    Ok(())
}

/// How the demo's Bluetooth devices run.
enum BleMode {
    /// Emulated BlueZ peripherals, read through btleplug.
    Emulated {
        bus: vitalgate_hardware::bluez::PrivateBus,
        specs: Vec<vitalgate_hardware::bluez::PeripheralSpec>,
    },
    /// The in-memory cuff and oximeter, decoded without a transport.
    InMemory,
}

/// The demo's state directory must not be the gateway's (`run`'s default).
fn refuse_gateway_state_dir(state_dir: &Path) -> Result<()> {
    let gateway = Path::new(vitalgate::config::DEFAULT_STATE_DIR);
    let same = match (state_dir.canonicalize(), gateway.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => state_dir == gateway,
    };
    if same {
        return Err(crate::cli_pair::BadArgument(format!(
            "{} is the gateway's state directory; the demo keeps its own (--state-dir DIR)",
            state_dir.display()
        ))
        .into());
    }
    Ok(())
}

pub fn demo(explicit: Option<&Path>, state_dir: &Path, args: DemoArgs) -> Result<u8> {
    use crate::cli::{CreateKey, Required, find_key, load_config, print_status};
    // First of all, while this process has one thread (see `start_bus`).
    let bus = (!args.offline).then(crate::cli_demo::start_bus);
    let mut config = load_config(explicit, Required::IfPresent)?;
    // The demo never touches what a gateway's configuration points at: not the gateway's
    // state directory (its store and its patients' bindings), no serial port, no GPIO line,
    // and no broker unless `--mqtt` names one, then without the gateway's credentials. Only
    // the store's tunables and key, the destinations (which the offline demo routes its
    // readings to, delivering nothing), the FHIR identifier namespace and the log settings
    // are used.
    refuse_gateway_state_dir(state_dir)?;
    // The store is the demo's own, in its state directory, whatever the file says.
    config.store.path = std::path::PathBuf::from(vitalgate::config::DEFAULT_STORE_FILE);
    config.serial.clear();
    config.gpio = Default::default();
    config.fleet = Default::default();
    config.update = Default::default();
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
    let mut clock = SystemClock::new();
    if !clock.receipt().clock_synchronized {
        println!(
            "The kernel reports the wall clock as unsynchronised; the demo treats it as \
             synchronised (a gateway would hold delivery until it is)."
        );
        clock = SystemClock::assuming_synchronized();
    }
    if args.offline {
        println!(
            "Offline: the simulated cuff's memory goes straight into the encrypted store (no \
             transport, no FHIR server)."
        );
        let source = DemoDevices {
            cuff: BpCuffMemory::new(CUFF_ADDRESS, args.records),
            live: false,
            live_until: None,
            bind: true,
        };
        let summary = crate::cli::runtime()?.block_on(async {
            Supervisor::new(config.clone(), state_dir.to_owned(), keying.clone())
                .with_clock(Arc::new(clock))
                .with_source(Box::new(source))
                .deliver(false)
                .stop_when(StopWhen::SourcesDone)
                .run()
                .await
        })?;
        if summary.sources_failed > 0 {
            anyhow::bail!("{} simulated device(s) failed", summary.sources_failed);
        }
        let status = vitalgate::store::StoreReader::open(&summary.store_path, &keying)?.status()?;
        println!();
        print_status(&status);
        println!();
        println!(
            "What ran: a simulated blood-pressure cuff's {} stored records went into the \
             encrypted store (offline: no delivery). Run it again on the same state directory: \
             nothing is stored twice.",
            args.records
        );
        return Ok(exit::OK);
    }

    let mut server = None;
    let url = if let Some(u) = &args.fhir {
        u.trim_end_matches('/').to_owned()
    } else {
        let s = LocalFhirServer::start(args.fhir_server_dir.as_deref())?;
        println!(
            "Local FHIR R4 server (validating, in memory): {}",
            s.base_url
        );
        let url = s.base_url.clone();
        server = Some(s);
        url
    };

    // The simulated devices and the configuration that reads them.
    let dir = std::path::absolute(state_dir.join("demo-devices"))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut devices = Vec::new();
    let mut toml = format!(
        "[[destination]]\nid = \"demo\"\nbase_url = \"{url}\"\nbatch_linger = \"200ms\"\n\n"
    );
    let serial = match crate::cli_demo::serial_devices(&dir) {
        Ok((sims, devs, t)) => {
            println!(
                "Serial: a FORA TD-3128 BP meter ({} stored records, a noisy line) and a Nonin \
                 oximeter (streaming), on pseudo-terminals in {}",
                crate::cli_demo::TAIDOC_RECORDS,
                dir.display()
            );
            devices.extend(devs);
            toml.push_str(&t);
            sims
        }
        Err(e) => {
            println!("Serial: {e:#}; the demo goes on without its serial devices.");
            Vec::new()
        }
    };
    let ble = match bus {
        Some(Ok(bus)) => {
            let (specs, devs) = crate::cli_demo::ble_peripherals(args.records);
            let allow: Vec<String> = devs.iter().map(|d| format!("{:?}", d.address)).collect();
            // The live oximeter stream is reduced as the serial one is: a spot value every
            // 5 s, so a short demo delivers some at once.
            toml.push_str(&format!(
                "\n[ble]\nallow = [{}]\nstream = {{ policy = \"spot\", every = \"5s\" }}\n",
                allow.join(", ")
            ));
            println!(
                "Bluetooth LE: an emulated BlueZ on a private D-Bus bus with a BP cuff ({} \
                 stored records), a thermometer, a scale, a glucose meter, a CGM and a pulse \
                 oximeter, read through btleplug",
                args.records
            );
            devices.extend(devs);
            BleMode::Emulated { bus, specs }
        }
        Some(Err(e)) => {
            println!(
                "Bluetooth LE: {e}. Falling back to the in-memory simulated cuff and oximeter \
                 (decoded, without the Bluetooth transport)."
            );
            for (label, address, patient) in [
                ("in-memory cuff", CUFF_ADDRESS, 1),
                ("in-memory oximeter", OXIMETER_ADDRESS, 2),
            ] {
                devices.push(crate::cli_demo::DemoDevice::in_memory(
                    label, address, patient,
                ));
            }
            BleMode::InMemory
        }
        None => BleMode::InMemory,
    };
    let emulated = matches!(ble, BleMode::Emulated { .. });
    let demo_config: Config = Config::parse(Path::new("(demo devices)"), &toml)?;
    config.destinations = demo_config.destinations;
    config.serial = demo_config.serial;
    config.ble.allow = demo_config.ble.allow;
    config.ble.stream = demo_config.ble.stream;
    let store_path = config.store_path(state_dir);
    let destinations: Vec<String> = config
        .destinations
        .iter()
        .map(|d| d.id.to_string())
        .collect();

    let rt = crate::cli::runtime()?;
    rt.block_on(bind_devices(
        writer_options(&config, state_dir, &keying),
        &devices,
    ))?;
    let serial = Arc::new(serial);
    let stop = CancellationToken::new();
    if args.run_for.is_none() {
        println!("Running until Ctrl-C.");
    }
    let summary = rt.block_on(async {
        let mut supervisor = Supervisor::new(config.clone(), state_dir.to_owned(), keying.clone())
            .with_clock(Arc::new(clock))
            .stop_on(stop.clone())
            .stop_when(StopWhen::Signal);
        let emulator = match &ble {
            BleMode::Emulated { bus, specs } => {
                let emu = vitalgate_hardware::bluez::Emulator::start(bus.address(), specs.clone())
                    .await
                    .context("cannot start the emulated BlueZ")?;
                crate::cli_demo::add_flagged_readings(&emu).await;
                supervisor = supervisor.with_source(Box::new(vitalgate::ble::BleSource::new(
                    config.ble.clone(),
                    store_path.clone(),
                    keying.clone(),
                )));
                Some(emu)
            }
            BleMode::InMemory => {
                supervisor = supervisor.with_source(Box::new(DemoDevices {
                    cuff: BpCuffMemory::new(CUFF_ADDRESS, args.records),
                    live: true,
                    live_until: args.run_for.map(|d| std::time::Instant::now() + d),
                    bind: false,
                }));
                None
            }
        };
        let conductor = crate::cli_demo::Conductor {
            run_for: args.run_for,
            devices: devices.clone(),
            emulator: emulator.clone(),
            serial: serial.clone(),
            store_path: store_path.clone(),
            keying: keying.clone(),
            destinations: destinations.clone(),
            stop: stop.clone(),
        };
        let summary = supervisor.with_source(Box::new(conductor)).run().await?;
        drop(emulator);
        anyhow::Ok(summary)
    })?;
    drop(serial);
    if summary.sources_failed > 0 {
        anyhow::bail!("{} simulated device(s) failed", summary.sources_failed);
    }
    let status = vitalgate::store::StoreReader::open(&summary.store_path, &keying)?.status()?;
    println!();
    print_status(&status);
    print_delivery(
        &destination_summaries(&config, &summary.store_path, &keying)?,
        vitalgate_core::time::now_ms(),
    );
    let held = rt.block_on(server_summary(&url))?;
    // The runtime (and the emulator's D-Bus connection in it) goes before the bus does.
    drop(rt);
    drop(ble);
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
    let flagged = &held["Observation"]["flagged"];
    let n = |k: &str| flagged[k].as_u64().unwrap_or(0);
    println!(
        "  Flagged as the devices flagged them: {} beyond the device's range (comparator), {} \
         without a value (dataAbsentReason), {} with an interpretation, {} device-status \
         (ASN1ToHL7 components), {} not final",
        n("comparator"),
        n("data_absent"),
        n("interpretation"),
        n("device_status"),
        n("not_final")
    );
    if let Some(per) = held["Observation"]["by_device"].as_object() {
        println!("  Observations per device:");
        for (device, n) in per {
            println!("    {n:>6}  {device}");
        }
    }
    println!();

    println!(
        "What ran: simulated devices went into the encrypted store{}{}, then to the FHIR \
         server as transaction Bundles of conditional creates. Run it again on the same state \
         directory: nothing is stored or sent twice.\n\n\
         Flagged on purpose: a HI glucose, a control-solution test and a meter clock fault \
         (Bluetooth glucose meter), a new CGM sensor session mid-run, an oximeter spot check \
         with its sensor disconnected, and on the FORA meter an irregular heartbeat, an \
         averaged reading and a record with an impossible date. Control tests are counted, \
         never sent; readings whose time cannot be established are quarantined with the \
         reason (`vitalgate status`); the rest arrive with their flags.",
        if emulated {
            " through the real transports (Bluetooth LE: btleplug and BlueZ's D-Bus API"
        } else {
            " (Bluetooth LE: in memory, decoded without a transport"
        },
        if devices.iter().any(|d| d.transport == Transport::Serial) {
            "; serial: tokio-serial on pseudo-terminals, resynchronising past line noise)"
        } else {
            ")"
        }
    );
    drop(server);
    Ok(exit::OK)
}
