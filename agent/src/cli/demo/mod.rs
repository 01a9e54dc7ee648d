//! `vitalgate-demo`: the real pipeline on simulated devices, with a state directory of its
//! own. Built only with the `demo` feature, into its own binary: the gateway's `vitalgate`
//! carries no simulator.

pub mod devices;

/// Vitalgate's demo: the gateway's pipeline on simulated Bluetooth LE and serial devices,
/// delivering to a local FHIR server, with a state directory of its own.
#[derive(Debug, clap::Parser)]
#[command(name = "vitalgate-demo", version, about)]
pub struct DemoCli {
    /// Configuration file (default: none; the demo's own settings).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// State directory of the demo's own store and key. Never the gateway's: the demo
    /// refuses the directory `run` uses by default.
    #[arg(long, value_name = "DIR", default_value = "vitalgate-demo-state")]
    state_dir: std::path::PathBuf,
    /// How many stored records the simulated cuff holds.
    #[arg(long, default_value_t = 48)]
    records: u32,
    /// Broker to connect the demo gateway to, e.g. mqtt://127.0.0.1:1883 (watch it with
    /// `mosquitto_sub -t 'vitalgate/#' -v`). The demo then runs until interrupted.
    #[arg(long, value_name = "URL")]
    mqtt: Option<crate::config::BrokerUrl>,
    /// Gateway id for the demo's topics (default: the configured one).
    #[arg(long, value_name = "ID", requires = "mqtt")]
    gateway_id: Option<crate::config::GatewayId>,
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
    fhir_server_dir: Option<std::path::PathBuf>,
}

/// The process entry point of `vitalgate-demo`.
pub fn main() -> std::process::ExitCode {
    crate::cli::run_main("vitalgate-demo", |cli: DemoCli| {
        demo(
            cli.config.as_deref(),
            &cli.state_dir,
            DemoArgs {
                records: cli.records,
                fhir: cli.fhir,
                run_for: cli.run_for.map(Duration::from_secs),
                offline: cli.offline,
                fhir_server_dir: cli.fhir_server_dir,
                mqtt: cli.mqtt,
                gateway_id: cli.gateway_id,
            },
        )
    })
}

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::daemon::{ReadingSource, SourceError, StopWhen, Supervisor};
use crate::fhir::decode::{self};
use crate::store::{Batch, CursorUpdate, StoreHandle, WriterOptions};
use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;
use vitalgate_drivers::ieee11073::{Value, encode_sfloat};
use vitalgate_drivers::{DeviceIdentity, Transport};
use vitalgate_hardware::sim::BpCuffMemory;

use crate::cli::exit;

use crate::cli::demo::devices::PATIENT_SYSTEM as DEMO_PATIENT_SYSTEM;
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
    pub mqtt: Option<crate::config::BrokerUrl>,
    pub gateway_id: Option<crate::config::GatewayId>,
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
                        cs.iter()
                            .any(|c| c["code"]["coding"][0]["system"] == crate::fhir::ASN1_SYSTEM)
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

/// Binds the demo devices to their patients before any source runs, so no reading waits for
/// its binding.
async fn bind_devices(
    opts: WriterOptions,
    devices: &[crate::cli::demo::devices::DemoDevice],
) -> Result<()> {
    let (store, writer) = tokio::task::spawn_blocking(move || crate::store::writer::start(opts))
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
    let gateway = Path::new(crate::config::DEFAULT_STATE_DIR);
    let same = match (state_dir.canonicalize(), gateway.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => state_dir == gateway,
    };
    if same {
        return Err(crate::cli::pair::BadArgument(format!(
            "{} is the gateway's state directory; the demo keeps its own (--state-dir DIR)",
            state_dir.display()
        ))
        .into());
    }
    Ok(())
}

pub fn demo(explicit: Option<&Path>, state_dir: &Path, args: DemoArgs) -> Result<u8> {
    use crate::cli::status::print_status;
    use crate::cli::sync::{destination_summaries, print_delivery, writer_options};
    use crate::cli::{CreateKey, Required, find_key, load_config};
    // First of all, while this process has one thread (see `start_bus`).
    let bus = (!args.offline).then(crate::cli::demo::devices::start_bus);
    let mut config = load_config(explicit, Required::IfPresent)?;
    // The demo never touches what a gateway's configuration points at: not the gateway's
    // state directory (its store and its patients' bindings), no serial port, no GPIO line,
    // and no broker unless `--mqtt` names one, then without the gateway's credentials. Only
    // the store's tunables and key, the destinations (which the offline demo routes its
    // readings to, delivering nothing), the FHIR identifier namespace and the log settings
    // are used.
    refuse_gateway_state_dir(state_dir)?;
    // The store is the demo's own, in its state directory, whatever the file says.
    config.store.path = std::path::PathBuf::from(crate::config::DEFAULT_STORE_FILE);
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
    crate::logging::init(&config.log);
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
        let status = crate::store::StoreReader::open(&summary.store_path, &keying)?.status()?;
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
    let serial = match crate::cli::demo::devices::serial_devices(&dir) {
        Ok((sims, devs, t)) => {
            println!(
                "Serial: a FORA TD-3128 BP meter ({} stored records, a noisy line) and a Nonin \
                 oximeter (streaming), on pseudo-terminals in {}",
                crate::cli::demo::devices::TAIDOC_RECORDS,
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
            let (specs, devs) = crate::cli::demo::devices::ble_peripherals(args.records);
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
                devices.push(crate::cli::demo::devices::DemoDevice::in_memory(
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
                crate::cli::demo::devices::add_flagged_readings(&emu).await;
                supervisor = supervisor.with_source(Box::new(crate::ble::BleSource::new(
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
        let conductor = crate::cli::demo::devices::Conductor {
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
    let status = crate::store::StoreReader::open(&summary.store_path, &keying)?.status()?;
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
