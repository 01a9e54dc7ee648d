//! Fleet benchmark: N simulated gateways in one process, each running the real fleet client
//! (`vitalgate::fleet::run`) with an in-memory store, against a local mosquitto with TLS and
//! a password file. Reports connect time, the spread of reconnects after a broker restart
//! (with jitter, and without as the baseline measured in the same run), and the broker's
//! message rates from its `$SYS` counters.
//!
//! `scripts/bench-fleet` runs it for N = 1,000 and 5,000.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio_util::sync::CancellationToken;
use vitalgate::clock::SystemClock;
use vitalgate::config::{FleetConfig, GatewayId, LogFilter};
use vitalgate::fleet::store::{Admission, FleetStore, OutEvent};
use vitalgate::fleet::{ConnectionEvent, FleetSetup, Hooks};
use vitalgate::store::{NewEvent, StoreError, StoreStatus};
use vitalgate_drivers::Transport as DeviceTransport;
use vitalgate_e2e::broker::Broker;

#[derive(Debug, Parser)]
struct Args {
    /// Simulated gateways.
    #[arg(long, default_value_t = 1000)]
    gateways: usize,
    /// `reconnect_min`: the window reconnects spread over after a broker restart.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Telemetry period of every gateway.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    telemetry: Duration,
    /// How long message rates are measured.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    rate_window: Duration,
    /// Skip the no-jitter baseline storm.
    #[arg(long)]
    no_baseline: bool,
}

/// The store stand-in: commands are remembered, nothing else is kept.
#[derive(Debug, Default)]
struct StubStore {
    seen: Mutex<std::collections::HashSet<String>>,
}

impl FleetStore for StubStore {
    async fn admit_command(
        &self,
        id: &str,
        _kind: &str,
        _expires_ms: i64,
        _status: &str,
        _reason: &str,
    ) -> Result<Admission, StoreError> {
        let new = self
            .seen
            .lock()
            .map_err(|_| StoreError::WriterStopped)?
            .insert(id.to_owned());
        Ok(if new {
            Admission::New
        } else {
            Admission::Seen {
                status: "succeeded".into(),
                reason: String::new(),
            }
        })
    }
    async fn finish_command(&self, _: &str, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn bind(
        &self,
        _: DeviceTransport,
        _: &str,
        _: i64,
        _: &vitalgate_core::PatientRef,
        _: &str,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn unbind(
        &self,
        _: DeviceTransport,
        _: &str,
        _: i64,
        _: &str,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn open_pairing_window(
        &self,
        _: &vitalgate_core::WindowRequest,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn applied_config(&self) -> Result<Option<(u64, String)>, StoreError> {
        Ok(None)
    }
    async fn apply_config(
        &self,
        _: u64,
        _: String,
        _: Option<Vec<vitalgate::config::desired::Binding>>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn record_event(&self, _: NewEvent) -> Result<(), StoreError> {
        Ok(())
    }
    async fn pending_events(&self, _: usize) -> Result<Vec<OutEvent>, StoreError> {
        Ok(Vec::new())
    }
    async fn mark_events_published(&self, _: i64) -> Result<(), StoreError> {
        Ok(())
    }
    async fn snapshot(&self) -> Result<StoreStatus, StoreError> {
        Ok(StoreStatus {
            path: PathBuf::from("/"),
            ..Default::default()
        })
    }
}

fn no_log_level(_: &LogFilter) -> Result<(), String> {
    Err("not in the benchmark".into())
}

type Log = Arc<Mutex<Vec<(usize, Instant, ConnectionEvent)>>>;

struct Fleet {
    cancel: CancellationToken,
    log: Log,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start_fleet(
    n: usize,
    prefix: &str,
    broker: &Broker,
    window: Duration,
    telemetry: Duration,
) -> Fleet {
    let pw = broker.dir.join("bench.password");
    std::fs::write(&pw, "bench-pw\n").expect("password file");
    vitalgate_e2e::broker::set_private(&pw);
    let config: FleetConfig = {
        let text = format!(
            "[fleet]\nbroker = \"{}\"\nca_file = \"{}\"\nusername = \"bench\"\npassword_file = \"{}\"\n\
             telemetry_interval = \"{}ms\"\nreconnect_min = \"{}ms\"\nreconnect_max = \"{}ms\"\n\
             keepalive = \"60s\"\nconnect_timeout = \"30s\"\n",
            broker.url(),
            broker.ca().display(),
            pw.display(),
            telemetry.as_millis(),
            window.as_millis(),
            (window * 8).as_millis(),
        );
        vitalgate::config::Config::parse(std::path::Path::new("bench.toml"), &text)
            .expect("bench config")
            .fleet
    };
    let cancel = CancellationToken::new();
    let log: Log = Arc::new(Mutex::new(Vec::with_capacity(n * 4)));
    let mut tasks = Vec::with_capacity(n * 2);
    let store = Arc::new(StubStore::default());
    for i in 0..n {
        let id = format!("{prefix}-{i:05}");
        let gateway: GatewayId = id.parse().expect("gateway id");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let setup = FleetSetup {
            gateway,
            client_id: id,
            config: config.clone(),
            credentials_dir: None,
            state_dir: None,
            store: store.clone(),
            hooks: Hooks {
                restart: CancellationToken::new(),
                delivery: None,
                clock: Arc::new(SystemClock::new()),
                set_log_level: no_log_level,
                update: None,
                update_reports: Default::default(),
            },
            observer: Some(tx),
        };
        let c = cancel.child_token();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = vitalgate::fleet::run(setup, c).await {
                eprintln!("gateway {i}: {e}");
            }
        }));
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            while let Some((at, ev)) = rx.recv().await {
                if let Ok(mut l) = log.lock() {
                    l.push((i, at, ev));
                }
            }
        }));
    }
    Fleet { cancel, log, tasks }
}

impl Fleet {
    /// Per gateway, the first time `pred` held at or after `since`.
    fn first_times(
        &self,
        n: usize,
        since: Instant,
        pred: impl Fn(&ConnectionEvent) -> bool,
    ) -> Vec<Option<Duration>> {
        let mut out = vec![None; n];
        for (i, at, ev) in self.log.lock().expect("log").iter() {
            if *at >= since && pred(ev) && out[*i].is_none() {
                out[*i] = Some(at.duration_since(since));
            }
        }
        out
    }

    async fn wait_all(
        &self,
        n: usize,
        since: Instant,
        pred: impl Fn(&ConnectionEvent) -> bool + Copy,
        limit: Duration,
    ) -> Vec<Duration> {
        let until = Instant::now() + limit;
        loop {
            let t = self.first_times(n, since, pred);
            let done = t.iter().filter(|x| x.is_some()).count();
            if done == n || Instant::now() >= until {
                if done < n {
                    eprintln!("only {done} of {n} gateways within {limit:?}");
                }
                let mut v: Vec<Duration> = t.into_iter().flatten().collect();
                v.sort();
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The shortest interval that holds 95% of the times.
fn spread95(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n < 2 {
        return Duration::ZERO;
    }
    let k = ((n as f64) * 0.95).ceil() as usize;
    let k = k.clamp(1, n);
    (0..=n - k)
        .map(|s| sorted[s + k - 1] - sorted[s])
        .min()
        .unwrap_or(Duration::ZERO)
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// A `$SYS` reader: the broker's own counters of messages received and sent.
async fn sys_counters(broker: &Broker) -> (AsyncClient, Arc<Mutex<(u64, u64)>>) {
    let mut o = MqttOptions::new("bench-sys", "127.0.0.1", broker.port);
    o.set_credentials("bench-it", "bench-it-pw");
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
        ca: std::fs::read(broker.ca()).expect("ca"),
        alpn: None,
        client_auth: None,
    }));
    let (client, mut el) = AsyncClient::new(o, 16);
    let counters = Arc::new(Mutex::new((0u64, 0u64)));
    let (c2, cl) = (counters.clone(), client.clone());
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = cl
                        .subscribe("$SYS/broker/messages/+", QoS::AtMostOnce)
                        .await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v: u64 = String::from_utf8_lossy(&p.payload)
                        .trim()
                        .parse()
                        .unwrap_or(0);
                    if let Ok(mut c) = c2.lock() {
                        if p.topic.ends_with(b"received") {
                            c.0 = v;
                        } else if p.topic.ends_with(b"sent") {
                            c.1 = v;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    (client, counters)
}

async fn storm(
    broker: &mut Broker,
    n: usize,
    window: Duration,
    telemetry: Duration,
    prefix: &str,
    measure_rates: Option<Duration>,
) -> (
    Duration,
    Vec<Duration>,
    Vec<Duration>,
    Vec<Duration>,
    Option<(f64, f64)>,
) {
    let t0 = Instant::now();
    let fleet = start_fleet(n, prefix, broker, window, telemetry);
    let ready = fleet
        .wait_all(
            n,
            t0,
            |e| *e == ConnectionEvent::Ready,
            Duration::from_secs(300),
        )
        .await;
    let all_ready = ready.last().copied().unwrap_or_default();

    let mut rates = None;
    if let Some(w) = measure_rates {
        let (_c, counters) = sys_counters(broker).await;
        // $SYS is published every second (sys_interval 1); two samples a window apart.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let a = *counters.lock().expect("counters");
        tokio::time::sleep(w).await;
        let b = *counters.lock().expect("counters");
        let s = w.as_secs_f64();
        rates = Some((
            b.0.saturating_sub(a.0) as f64 / s,
            b.1.saturating_sub(a.1) as f64 / s,
        ));
    }

    // Broker restart: every gateway loses its connection at once.
    let restart_at = Instant::now();
    broker.restart();
    let reconnects = fleet
        .wait_all(
            n,
            restart_at,
            |e| matches!(e, ConnectionEvent::Connected { .. }),
            window * 8 + Duration::from_secs(120),
        )
        .await;
    // When each gateway first planned to try again: the jitter itself, before the broker's
    // and the CPU's queues reshape it into CONNACK times.
    let mut planned: Vec<Duration> = {
        let log = fleet.log.lock().expect("log");
        let mut first = vec![None; n];
        for (i, at, ev) in log.iter() {
            if let ConnectionEvent::Lost { retry_in } = ev
                && *at >= restart_at
                && first[*i].is_none()
            {
                first[*i] = Some(at.duration_since(restart_at) + *retry_in);
            }
        }
        first.into_iter().flatten().collect()
    };
    planned.sort();
    fleet.stop().await;
    (all_ready, ready, reconnects, planned, rates)
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tmp = tempfile::tempdir().expect("tempdir");
        // The README's least-privilege ACL, by client id: the bench gateways share a user.
        let acl = "user bench-it\ntopic read $SYS/#\ntopic read vitalgate/#\n\n\
                   pattern read vitalgate/%c/config/desired\npattern read vitalgate/%c/cmd/+\n\
                   pattern write vitalgate/%c/state\npattern write vitalgate/%c/telemetry\n\
                   pattern write vitalgate/%c/events\npattern write vitalgate/%c/config/reported\n\
                   pattern write vitalgate/%c/cmd/+/result\n";
        let mut broker = Broker::start_with(
            &tmp.path().join("broker"),
            &[("bench", "bench-pw"), ("bench-it", "bench-it-pw")],
            &[],
            acl,
            "sys_interval 1\nmax_connections -1\n",
        );
        let n = args.gateways;
        println!(
            "fleet-bench: {n} gateways, TLS + password, telemetry every {}, reconnect window {}",
            secs(args.telemetry),
            secs(args.window)
        );
        let (all_ready, ready, reconnects, planned, rates) = storm(
            &mut broker,
            n,
            args.window,
            args.telemetry,
            "gw",
            Some(args.rate_window),
        )
        .await;
        println!(
            "connect (CONNACK+SUBACK+state, all {n} at once): p50 {} p95 {} all {}",
            secs(pct(&ready, 0.5)),
            secs(pct(&ready, 0.95)),
            secs(all_ready)
        );
        if let Some((rx, tx)) = rates {
            println!(
                "broker message rates ($SYS): received {rx:.0}/s, sent {tx:.0}/s (expected ~{:.0}/s telemetry received)",
                n as f64 / args.telemetry.as_secs_f64()
            );
        }
        let spread = spread95(&reconnects);
        println!(
            "reconnect storm after broker restart: {} of {n} back; first {} p50 {} p95 {} last {}; \
             95% of reconnects spread over {} (window {}, ratio {:.2})",
            reconnects.len(),
            secs(pct(&reconnects, 0.0)),
            secs(pct(&reconnects, 0.5)),
            secs(pct(&reconnects, 0.95)),
            secs(pct(&reconnects, 1.0)),
            secs(spread),
            secs(args.window),
            spread.as_secs_f64() / args.window.as_secs_f64()
        );
        let planned_spread = spread95(&planned);
        println!(
            "first reconnect attempts as planned by the backoff: 95% spread over {} (ratio {:.2})",
            secs(planned_spread),
            planned_spread.as_secs_f64() / args.window.as_secs_f64()
        );
        let jitter_ok = reconnects.len() == n
            && spread.as_secs_f64() >= 0.9 * args.window.as_secs_f64();
        if !args.no_baseline {
            // Baseline in the same run: the same fleet with a 10 ms window, i.e. without
            // meaningful jitter: everybody reconnects at once.
            let base_window = Duration::from_millis(10);
            let (_, _, base, _, _) =
                storm(&mut broker, n, base_window, args.telemetry, "base", None).await;
            let base_spread = spread95(&base);
            println!(
                "baseline without jitter (window 0.01s): {} of {n} back; 95% spread over {}; \
                 jitter spreads reconnects {:.0}x wider",
                base.len(),
                secs(base_spread),
                spread.as_secs_f64() / base_spread.as_secs_f64().max(0.001)
            );
        }
        println!(
            "{} 95% of reconnects spread over at least 0.9x the configured window (uniform jitter gives 0.95x)",
            if jitter_ok { "PASS" } else { "FAIL" }
        );
        drop(broker);
        if !jitter_ok {
            std::process::exit(1);
        }
    });
}
