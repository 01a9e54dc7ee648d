//! Optional GPIO on the gateway's board: a pairing button and a status LED, through the Linux
//! GPIO character device (uAPI v2, via `gpiocdev`). Off unless `[gpio] enabled = true`.
//!
//! This module owns the `[gpio]` configuration, the button's debounce, the LED's patterns,
//! and the task that ties them to the store. Debounce and patterns are pure functions of time
//! and input, tested without hardware; the lines themselves sit behind [`Lines`], so the task
//! runs against an in-memory fake in tests and against `/dev/gpiochipN` on a gateway.
//!
//! A button press opens a pairing window exactly as the fleet's `open-pairing-window` command
//! does (the same store call, a `pairing_windows` row and an audit entry); the BLE side acts on
//! open windows. The LED is solid when all is well, blinks while a pairing window is open,
//! and blinks fast when the gateway needs attention (disk full, store over budget, or an alarm
//! within the last hour).

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::config::gpio::GpioConfig;

/// An alarm this recent keeps the LED in "attention".
pub const ATTENTION_WINDOW_MS: i64 = 3600 * 1000;
const POLL: Duration = Duration::from_millis(10);
const STATE_REFRESH_MS: u64 = 1000;

/// Software debounce: the input must hold a new level for the whole period before the
/// debounced level follows. Reports a press on the debounced transition to pressed.
#[derive(Debug, Clone)]
pub struct Debouncer {
    period_ms: u64,
    stable: bool,
    candidate: bool,
    since_ms: u64,
}

impl Debouncer {
    pub fn new(period: Duration) -> Self {
        Self {
            period_ms: period.as_millis() as u64,
            stable: false,
            candidate: false,
            since_ms: 0,
        }
    }

    /// Feeds the raw (logical: true = pressed) level seen at `now_ms`; returns true once per
    /// debounced press.
    pub fn update(&mut self, pressed: bool, now_ms: u64) -> bool {
        if pressed != self.candidate {
            self.candidate = pressed;
            self.since_ms = now_ms;
        }
        if self.candidate != self.stable && now_ms.saturating_sub(self.since_ms) >= self.period_ms {
            self.stable = self.candidate;
            return self.stable;
        }
        false
    }
}

/// What the LED shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedMode {
    /// All good.
    Solid,
    /// A pairing window is open (1 Hz).
    Blink,
    /// The gateway needs attention (4 Hz).
    FastBlink,
}

impl LedMode {
    /// The mode for the gateway's state. An open pairing window wins over attention: the
    /// person at the gateway just pressed the button and needs to see that it worked.
    pub fn for_state(pairing_open: bool, attention: bool) -> Self {
        if pairing_open {
            LedMode::Blink
        } else if attention {
            LedMode::FastBlink
        } else {
            LedMode::Solid
        }
    }

    /// Whether the LED is lit at `now_ms`.
    pub fn lit(self, now_ms: u64) -> bool {
        match self {
            LedMode::Solid => true,
            LedMode::Blink => (now_ms / 500).is_multiple_of(2),
            LedMode::FastBlink => (now_ms / 125).is_multiple_of(2),
        }
    }
}

/// Why the GPIO lines could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("GPIO {}: {detail}", .chip.display())]
    Line { chip: PathBuf, detail: String },
}

/// The two lines, in logical levels (active-low already applied).
pub trait Lines: Send {
    /// Whether the button is pressed; `None` when there is no button.
    fn button(&mut self) -> Result<Option<bool>, GpioError>;
    /// Lights or darkens the LED; nothing when there is no LED.
    fn set_led(&mut self, lit: bool) -> Result<(), GpioError>;
}

/// The lines on a GPIO character device, requested once for the daemon's lifetime.
#[derive(Debug)]
pub struct ChipLines {
    chip: PathBuf,
    request: gpiocdev::Request,
    button: Option<u32>,
    led: Option<u32>,
}

impl ChipLines {
    pub fn open(cfg: &GpioConfig) -> Result<Self, GpioError> {
        use gpiocdev::line::{Bias, Value};
        let fail = |e: gpiocdev::Error| GpioError::Line {
            chip: cfg.chip.clone(),
            detail: e.to_string(),
        };
        let mut b = gpiocdev::Request::builder();
        b.on_chip(&cfg.chip).with_consumer("vitalgate");
        if let Some(line) = cfg.button_line {
            b.with_line(line).as_input();
            if cfg.button_active_low {
                b.as_active_low().with_bias(Bias::PullUp);
            } else {
                b.with_bias(Bias::PullDown);
            }
        }
        if let Some(line) = cfg.led_line {
            b.with_line(line).as_output(Value::Inactive);
            if cfg.led_active_low {
                b.as_active_low();
            }
        }
        let request = b.request().map_err(fail)?;
        Ok(Self {
            chip: cfg.chip.clone(),
            request,
            button: cfg.button_line,
            led: cfg.led_line,
        })
    }

    fn fail(&self, e: gpiocdev::Error) -> GpioError {
        GpioError::Line {
            chip: self.chip.clone(),
            detail: e.to_string(),
        }
    }
}

impl Lines for ChipLines {
    fn button(&mut self) -> Result<Option<bool>, GpioError> {
        let Some(line) = self.button else {
            return Ok(None);
        };
        let v = self.request.value(line).map_err(|e| self.fail(e))?;
        Ok(Some(v == gpiocdev::line::Value::Active))
    }

    fn set_led(&mut self, lit: bool) -> Result<(), GpioError> {
        let Some(line) = self.led else {
            return Ok(());
        };
        let v = if lit {
            gpiocdev::line::Value::Active
        } else {
            gpiocdev::line::Value::Inactive
        };
        self.request.set_value(line, v).map_err(|e| self.fail(e))?;
        Ok(())
    }
}

/// What the LED reflects, refreshed from the store about once a second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayState {
    pub pairing_open: bool,
    pub attention: bool,
}

/// The store as the GPIO task uses it.
pub trait GpioStore: Send + Sync {
    /// Opens a pairing window until `until_ms`, as the fleet command does.
    fn open_pairing_window(
        &self,
        id: &str,
        until_ms: i64,
    ) -> impl std::future::Future<Output = Result<(), crate::store::StoreError>> + Send;
    fn state(
        &self,
        now_ms: i64,
    ) -> impl std::future::Future<Output = Result<GatewayState, crate::store::StoreError>> + Send;
}

/// The encrypted store: windows are opened through the writer, the state is read through the
/// store's read-only pairing reader.
#[derive(Debug)]
pub struct SqlGpioStore {
    handle: crate::store::StoreHandle,
    reader: crate::store::pairing::WindowReader,
}

impl SqlGpioStore {
    pub fn new(
        handle: crate::store::StoreHandle,
        keying: crate::store::Keying,
        path: &Path,
    ) -> Result<Self, crate::store::StoreError> {
        Ok(Self {
            reader: crate::store::pairing::WindowReader::open(path, &keying)?,
            handle,
        })
    }
}

impl GpioStore for SqlGpioStore {
    async fn open_pairing_window(
        &self,
        id: &str,
        until_ms: i64,
    ) -> Result<(), crate::store::StoreError> {
        // A button has no keyboard: a device paired by it is bound to the gateway's patient
        // when the gateway serves exactly one (the home case). Otherwise it is only
        // allowlisted, and its readings are held until IT binds it (`bind` command or
        // `vitalgate pair --device`).
        let patient = self
            .reader
            .sole_patient()?
            .and_then(|p| vitalgate_core::PatientRef::parse(&p).ok());
        let request = vitalgate_core::WindowRequest {
            until_ms,
            patient,
            user_index: -1,
            device: None,
            pin: None,
            actor: id.to_owned(),
        };
        self.handle.open_pairing_window(&request).await.map(drop)
    }

    async fn state(&self, now_ms: i64) -> Result<GatewayState, crate::store::StoreError> {
        let health = self.handle.health().borrow().clone();
        let until = self.reader.latest_window_end()?;
        let alarms = self.reader.alarms_since(now_ms - ATTENTION_WINDOW_MS)?;
        Ok(GatewayState {
            pairing_open: until.is_some_and(|u| u > now_ms),
            attention: health.disk_full || health.over_budget || alarms > 0,
        })
    }
}

/// Runs the button and the LED until cancelled. Line errors end the task (logged by the
/// caller); store errors are logged and retried at the next refresh.
pub async fn run<S: GpioStore>(
    cfg: GpioConfig,
    mut lines: Box<dyn Lines>,
    store: S,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<(), GpioError> {
    let started = tokio::time::Instant::now();
    let mut debounce = Debouncer::new(cfg.button_debounce);
    let mut state = GatewayState::default();
    let mut refreshed_at: Option<u64> = None;
    let mut lit = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let t = started.elapsed().as_millis() as u64;
        let wall = vitalgate_core::time::now_ms();
        if let Some(pressed) = lines.button()?
            && debounce.update(pressed, t)
        {
            let until = wall + cfg.pairing_window.as_millis() as i64;
            match store
                .open_pairing_window(&format!("button-{wall}"), until)
                .await
            {
                Ok(()) => {
                    tracing::info!(
                        seconds = cfg.pairing_window.as_secs(),
                        "Pairing button pressed: pairing window open."
                    );
                    state.pairing_open = true;
                }
                Err(error) => {
                    tracing::warn!(%error, "Pairing button pressed, but the window could not be recorded.")
                }
            }
        }
        if refreshed_at.is_none_or(|r| t.saturating_sub(r) >= STATE_REFRESH_MS) {
            refreshed_at = Some(t);
            match store.state(wall).await {
                Ok(s) => state = s,
                Err(error) => tracing::debug!(%error, "GPIO: store state unavailable."),
            }
        }
        let want = LedMode::for_state(state.pairing_open, state.attention).lit(t);
        if lit != Some(want) {
            lines.set_led(want)?;
            lit = Some(want);
        }
    }
    // Dark when the agent is not running: a lit LED must mean a running gateway.
    let _ = lines.set_led(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_press_counts_once_and_only_after_the_debounce_period() {
        let mut d = Debouncer::new(Duration::from_millis(50));
        // Contact bounce: on and off within the period never counts.
        assert!(!d.update(true, 0));
        assert!(!d.update(false, 10));
        assert!(!d.update(true, 20));
        assert!(!d.update(true, 60), "held 40 ms only");
        assert!(d.update(true, 70), "held 50 ms: a press");
        assert!(!d.update(true, 500), "holding is one press");
        // Release bounce, then a clean release, then a second press.
        assert!(!d.update(false, 600));
        assert!(!d.update(true, 610));
        assert!(!d.update(false, 620));
        assert!(!d.update(false, 680), "release debounced, not a press");
        assert!(!d.update(true, 700));
        assert!(d.update(true, 750));
    }

    #[test]
    fn led_patterns() {
        assert_eq!(LedMode::for_state(false, false), LedMode::Solid);
        assert_eq!(LedMode::for_state(true, false), LedMode::Blink);
        assert_eq!(LedMode::for_state(false, true), LedMode::FastBlink);
        assert_eq!(LedMode::for_state(true, true), LedMode::Blink);
        assert!((0..2000).step_by(7).all(|t| LedMode::Solid.lit(t)));
        let toggles = |m: LedMode| (1..1000u64).filter(|t| m.lit(*t) != m.lit(t - 1)).count();
        assert_eq!(toggles(LedMode::Blink), 1, "1 Hz: one change per 500 ms");
        assert_eq!(
            toggles(LedMode::FastBlink),
            7,
            "4 Hz: a change every 125 ms"
        );
    }

    #[test]
    fn config_is_off_by_default_and_checked_when_on() {
        let parse = |t: &str| {
            crate::config::Config::parse(Path::new("t.toml"), t).map_err(|e| e.to_string())
        };
        let c = parse("").expect("defaults");
        assert!(!c.gpio.enabled);
        let c = parse("[gpio]\nenabled = true\nbutton_line = 17\nled_line = 27\n").expect("ok");
        assert_eq!(c.gpio.button_line, Some(17));
        assert!(c.gpio.button_active_low);
        for (text, want) in [
            ("[gpio]\nenabled = true\n", "gpio.enabled"),
            (
                "[gpio]\nenabled = true\nchip = \"/tmp/x\"\nled_line = 1\n",
                "gpio.chip",
            ),
            (
                "[gpio]\nenabled = true\nbutton_line = 4\nled_line = 4\n",
                "gpio.led_line",
            ),
            ("[gpio]\nenabled = true\nled_line = 5000\n", "gpio.led_line"),
            ("[gpio]\nenabled = true\nled_line = -1\n", "gpio.led_line"),
            (
                "[gpio]\nenabled = true\nbutton_line = 3\npairing_window = \"1s\"\n",
                "gpio.pairing_window",
            ),
            (
                "[gpio]\nenabled = true\nled_line = 1\nled_active_low = \"yes\"\n",
                "gpio.led_active_low",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(want), "{text}\n→ {e}");
        }
    }

    /// Lines driven by the test: a scripted button and a recorded LED.
    struct FakeLines {
        pressed: Arc<Mutex<bool>>,
        led: Arc<Mutex<Vec<bool>>>,
    }

    impl Lines for FakeLines {
        fn button(&mut self) -> Result<Option<bool>, GpioError> {
            Ok(Some(*self.pressed.lock().expect("lock")))
        }
        fn set_led(&mut self, lit: bool) -> Result<(), GpioError> {
            self.led.lock().expect("lock").push(lit);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct FakeStore {
        windows: Arc<Mutex<Vec<i64>>>,
        attention: Arc<Mutex<bool>>,
    }

    impl GpioStore for FakeStore {
        async fn open_pairing_window(
            &self,
            _id: &str,
            until_ms: i64,
        ) -> Result<(), crate::store::StoreError> {
            self.windows.lock().expect("lock").push(until_ms);
            Ok(())
        }
        async fn state(&self, now_ms: i64) -> Result<GatewayState, crate::store::StoreError> {
            Ok(GatewayState {
                pairing_open: self
                    .windows
                    .lock()
                    .expect("lock")
                    .iter()
                    .any(|u| *u > now_ms),
                attention: *self.attention.lock().expect("lock"),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_press_opens_one_window_and_the_led_follows_the_state() {
        let pressed = Arc::new(Mutex::new(false));
        let led = Arc::new(Mutex::new(Vec::new()));
        let store = FakeStore::default();
        let cancel = tokio_util::sync::CancellationToken::new();
        let cfg = GpioConfig {
            enabled: true,
            button_line: Some(17),
            led_line: Some(27),
            ..GpioConfig::default()
        };
        let task = tokio::spawn(run(
            cfg,
            Box::new(FakeLines {
                pressed: pressed.clone(),
                led: led.clone(),
            }),
            store.clone(),
            cancel.clone(),
        ));
        let advance = |ms| tokio::time::sleep(Duration::from_millis(ms));
        advance(300).await;
        assert_eq!(*led.lock().expect("lock"), [true], "solid: all good");
        // A 20 ms glitch is not a press.
        *pressed.lock().expect("lock") = true;
        advance(20).await;
        *pressed.lock().expect("lock") = false;
        advance(200).await;
        assert!(store.windows.lock().expect("lock").is_empty());
        // A real press opens one window, and the LED blinks.
        *pressed.lock().expect("lock") = true;
        advance(300).await;
        *pressed.lock().expect("lock") = false;
        advance(1500).await;
        assert_eq!(store.windows.lock().expect("lock").len(), 1);
        let changes = led.lock().expect("lock").len();
        assert!(changes >= 3, "blinking: {changes} LED changes");
        cancel.cancel();
        task.await.expect("join").expect("run");
        assert_eq!(
            led.lock().expect("lock").last(),
            Some(&false),
            "dark when stopped"
        );
    }

    #[tokio::test]
    async fn the_store_records_button_windows_like_the_fleet_and_reports_alarms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vitalgate.db");
        let keying = crate::store::Keying::Encrypted(crate::store::DbKey::generate());
        let c = crate::config::Config::default();
        let opts = crate::store::WriterOptions {
            path: path.clone(),
            keying: keying.clone(),
            batch_max_readings: c.store.batch_max_readings,
            batch_linger: c.store.batch_linger,
            cache_size_kib: 1024,
            channel_capacity: 16,
            destinations: Vec::new(),
            retention: c.store.retention,
            raw_stream_retention: c.store.raw_stream_retention,
            disk_budget_bytes: c.store.disk_budget.as_u64(),
        };
        let (handle, writer) = crate::store::writer::start(opts).expect("store");
        let store = SqlGpioStore::new(handle.clone(), keying.clone(), &path).expect("gpio store");
        let now = vitalgate_core::time::now_ms();
        assert_eq!(
            store.state(now).await.expect("state"),
            GatewayState::default()
        );
        store
            .open_pairing_window("button-1", now + 60_000)
            .await
            .expect("window");
        let s = store.state(now).await.expect("state");
        assert!(s.pairing_open && !s.attention, "{s:?}");
        assert!(
            !store.state(now + 61_000).await.expect("state").pairing_open,
            "expired"
        );
        handle
            .record_event(crate::store::NewEvent {
                severity: crate::store::Severity::Alarm,
                kind: "disk-budget-reached".into(),
                detail: serde_json::json!({}),
            })
            .await
            .expect("event");
        assert!(store.state(now).await.expect("state").attention);
        // The same row and audit entry as the fleet's open-pairing-window command.
        let reader = crate::store::pairing::WindowReader::open(&path, &keying).expect("reader");
        let windows = reader.open_windows().expect("windows");
        assert_eq!(windows.len(), 1, "{windows:?}");
        let audit = crate::store::devices::audit(&path, &keying, 10).expect("audit");
        assert_eq!(
            audit
                .iter()
                .filter(|e| e.action == "open-pairing-window" && e.actor == "button-1")
                .count(),
            1,
            "{audit:?}"
        );
        handle.shutdown().await;
        drop(store);
        drop(handle);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .expect("join")
            .expect("writer");
    }
}
