//! `vitalgate-demo`'s simulated devices on the real transports. The Bluetooth devices are
//! peripherals of the emulated BlueZ (`vitalgate_hardware::bluez`, in this process) on a
//! private `dbus-daemon`, read by the real btleplug [`crate::ble::BleSource`]; the serial
//! devices are PTY simulators (`vitalgate_hardware::serial`, on threads of this process) read
//! by the real tokio-serial sources. Every device is bound to a demo patient, so every reading
//! can reach the FHIR server. The [`Conductor`] ends a `--for` demo: it waits until the stored
//! records are in, unplugs every device, waits for delivery to drain, then stops the run.
//!
//! Without `dbus-daemon` the Bluetooth part falls back to the in-memory simulated cuff and
//! oximeter (decoded, not transported), and says so.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::daemon::{ReadingSource, SourceError};
use crate::store::outbox::OutboxReader;
use crate::store::{Keying, StoreHandle, StoreReader};
use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;
use vitalgate_drivers::serial::Protocol;
use vitalgate_drivers::time::{DeviceTimestamp, LocalDateTime};
use vitalgate_drivers::{DeviceIdentity, Transport};
use vitalgate_hardware::bluez::{BusError, Emulator, PeripheralSpec, PrivateBus, Profile, payload};
use vitalgate_hardware::serial::{self as serial_sim, Control, DeviceOptions, Faults, Report};

/// The demo's patients: identifiers in this project's namespace, conditionally created on the
/// server. Not real people.
pub const PATIENT_SYSTEM: &str = "https://vitalgate.example/fhir/sid/demo-patient";

/// How long the conductor waits for the stored records, and then for delivery to drain.
const RECORDS_WITHIN: Duration = Duration::from_secs(90);
const DRAIN_WITHIN: Duration = Duration::from_secs(60);

/// The TaiDoc meter's clock at start-up: fixed, so its stored records (dated back from it)
/// are the same in every run and a second run stores and sends nothing twice. It is months
/// behind the gateway, which the agent measures and corrects for.
const TAIDOC_CLOCK: LocalDateTime = LocalDateTime {
    year: Some(2026),
    month: Some(3),
    day: Some(2),
    hour: 9,
    minute: 30,
    second: 0,
    millis: None,
};
pub const TAIDOC_RECORDS: u32 = 12;

/// The Bluetooth devices that also send flagged readings.
const GLUCOSE_METER: &str = "A0:DE:00:00:18:08";
const PULSE_OXIMETER: &str = "A0:DE:00:00:18:22";
const CGM: &str = "A0:DE:00:00:18:1F";
const PLX_RECORDS: u32 = 3;
const CGM_RECORDS: u32 = 6;
/// Records of the CGM's second sensor session.
const CGM_NEW_SESSION_RECORDS: u16 = 3;
/// The glucose meter's flagged records, after its ordinary ones: a HI, a control-solution
/// test, a record from a meter whose clock is at fault, and one with meal context.
const GLUCOSE_FLAGS: [payload::GlucoseFlag; 4] = [
    payload::GlucoseFlag::High,
    payload::GlucoseFlag::ControlSolution,
    payload::GlucoseFlag::TimeFault,
    payload::GlucoseFlag::WithContext,
];
const GLUCOSE_RECORDS: u32 = 5;

/// When a device has given what it holds.
#[derive(Debug, Clone)]
enum Done {
    /// A reading with this device time (the last stored record) is in the store.
    RecordAt(payload::DateTime),
    /// This many readings of the device are in the store.
    Readings(usize),
    /// The download cursor of this stream is in the store.
    Cursor(String),
    /// Any reading is in the store (live devices).
    AnyReading,
}

/// One simulated device, as the store knows it.
#[derive(Debug, Clone)]
pub struct DemoDevice {
    pub label: String,
    pub transport: Transport,
    pub address: String,
    pub patient: String,
    done: Done,
}

impl DemoDevice {
    fn new(label: &str, transport: Transport, address: &str, patient: u8, done: Done) -> Self {
        Self {
            label: label.to_owned(),
            transport,
            address: address.to_owned(),
            patient: format!("{PATIENT_SYSTEM}|demo-patient-{patient}"),
            done,
        }
    }

    /// A device of the in-memory fallback (no transport): waited for by any reading.
    pub fn in_memory(label: &str, address: &str, patient: u8) -> Self {
        Self::new(label, Transport::Ble, address, patient, Done::AnyReading)
    }

    /// The identity to bind (the transport fills in the rest when it meets the device).
    pub fn identity(&self) -> DeviceIdentity {
        DeviceIdentity::new(self.transport, &self.address)
    }

    fn is_done(&self, reader: &StoreReader) -> bool {
        match &self.done {
            Done::Cursor(stream) => matches!(
                reader.cursor(self.transport, &self.address, stream),
                Ok(Some(_))
            ),
            Done::AnyReading => reader
                .readings_for_device(self.transport, &self.address)
                .is_ok_and(|r| !r.is_empty()),
            Done::Readings(n) => reader
                .readings_for_device(self.transport, &self.address)
                .is_ok_and(|r| r.len() >= *n),
            Done::RecordAt(t) => reader
                .readings_for_device(self.transport, &self.address)
                .is_ok_and(|rs| {
                    rs.iter().any(|r| match &r.measurement.device_time {
                        Some(DeviceTimestamp::Local { time, .. }) => {
                            time.year == Some(t.year)
                                && time.month == Some(t.month)
                                && time.day == Some(t.day)
                                && (time.hour, time.minute, time.second)
                                    == (t.hour, t.minute, t.second)
                        }
                        _ => false,
                    })
                }),
        }
    }
}

/// Starts the private bus for the emulated BlueZ and points btleplug at it. Call it before
/// any other thread starts: the variable is read by libdbus in btleplug's own threads.
#[allow(unsafe_code)]
pub fn start_bus() -> Result<PrivateBus, BusError> {
    let bus = PrivateBus::start()?;
    // SAFETY: called at the start of the demo, while the process has a single thread, so no
    // other thread can be reading the environment.
    #[allow(clippy::disallowed_methods)] // The one sanctioned use; see the SAFETY note.
    unsafe {
        std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
    };
    Ok(bus)
}

/// The emulated Bluetooth peripherals: a BP cuff with `records` stored measurements, a
/// thermometer, a scale, a glucose meter (records over RACP, some flagged: see
/// [`add_flagged_readings`]), a CGM (records over RACP; the [`Conductor`] replaces its sensor
/// during the run) and a pulse oximeter (stored spot checks and a live stream).
pub fn ble_peripherals(records: u32) -> (Vec<PeripheralSpec>, Vec<DemoDevice>) {
    let records = records.max(1);
    let last = |n: u32| Done::RecordAt(payload::record_time(n));
    let plan = [
        (
            "blood-pressure cuff",
            Profile::BloodPressure,
            "A0:DE:00:00:18:10",
            1,
            records,
        ),
        (
            "thermometer",
            Profile::Thermometer,
            "A0:DE:00:00:18:09",
            1,
            3,
        ),
        ("weight scale", Profile::Scale, "A0:DE:00:00:18:1D", 1, 3),
        (
            "glucose meter",
            Profile::Glucose,
            GLUCOSE_METER,
            2,
            GLUCOSE_RECORDS,
        ),
        ("CGM", Profile::Cgm, CGM, 2, CGM_RECORDS),
        (
            "pulse oximeter",
            Profile::PulseOximeter,
            PULSE_OXIMETER,
            2,
            PLX_RECORDS,
        ),
    ];
    let mut specs = Vec::new();
    let mut devices = Vec::new();
    for (label, profile, address, patient, n) in plan {
        let live = (profile == Profile::PulseOximeter).then_some(Duration::from_secs(1));
        specs.push(
            PeripheralSpec::new(profile, address)
                .with_records(n)
                .with_live_interval(live),
        );
        // Glucose records are numbered from 1, and the flagged ones follow; the oximeter's
        // flagged spot check follows its records; the others are numbered from 0 (record 0 is
        // a reference vector with its own time stamp, so a one-record device is waited for by
        // any reading). The CGM is done when both sensor sessions are in.
        let done = match (profile, n) {
            (Profile::Glucose, n) => last(n + GLUCOSE_FLAGS.len() as u32),
            (Profile::PulseOximeter, n) => last(n),
            (Profile::Cgm, n) => Done::Readings((n + u32::from(CGM_NEW_SESSION_RECORDS)) as usize),
            (_, 1) => Done::AnyReading,
            (_, n) => last(n - 1),
        };
        devices.push(DemoDevice::new(
            &format!("BLE {label}"),
            Transport::Ble,
            address,
            patient,
            done,
        ));
    }
    (specs, devices)
}

/// Gives the emulated devices the readings a clinician must not read wrongly, after the
/// ordinary ones: the glucose meter a HI, a control-solution test, a record with its clock
/// at fault and one with meal context; the oximeter a spot check with its sensor
/// disconnected. Call it before any client connects.
pub async fn add_flagged_readings(emu: &Emulator) {
    emu.add_flagged_records(GLUCOSE_METER, &GLUCOSE_FLAGS);
    emu.store_measurement(
        PULSE_OXIMETER,
        vitalgate_drivers::ble::uuid::PLX_SPOT_CHECK,
        payload::plx_sensor_disconnected(PLX_RECORDS),
    )
    .await;
}

/// A serial simulator running on a thread of its own, on a PTY behind `link`.
#[derive(Debug)]
pub struct SerialSim {
    control: Sender<Control>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl SerialSim {
    fn start(
        protocol: Protocol,
        options: &DeviceOptions,
        faults: Faults,
        link: &Path,
    ) -> Result<Self> {
        let (plugged_tx, plugged_rx) = std::sync::mpsc::channel();
        let sim = serial_sim::Simulator::new(
            serial_sim::device(protocol, options),
            link,
            faults,
            move |r| {
                if let Report::Plugged { .. } = r {
                    let _ = plugged_tx.send(());
                }
            },
        );
        let (control, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("sim-{protocol}"))
            .spawn(move || sim.run(rx))
            .context("cannot start a serial simulator thread")?;
        let mut me = Self {
            control,
            thread: Some(thread),
        };
        if plugged_rx.recv_timeout(Duration::from_secs(5)).is_err() {
            let why = me.stop().err().map(|e| e.to_string());
            anyhow::bail!(
                "the {protocol} simulator found no pseudo-terminal{}",
                why.map(|w| format!(": {w}")).unwrap_or_default()
            );
        }
        Ok(me)
    }

    /// Pulls the cable: the port disappears until the simulator stops.
    fn unplug(&self) {
        let _ = self.control.send(Control::Unplug);
    }

    fn stop(&mut self) -> std::io::Result<()> {
        let _ = self.control.send(Control::Quit);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("the simulator thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for SerialSim {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The serial simulators: a FORA TD-3128 blood-pressure meter with stored records on a noisy
/// line (garbage between frames, a damaged frame now and then), and a Nonin oximeter
/// streaming. Returns them, their devices and the `[[serial]]` configuration.
pub fn serial_devices(dir: &Path) -> Result<(Vec<SerialSim>, Vec<DemoDevice>, String)> {
    let fora_link = dir.join("ttyFORA");
    let nonin_link = dir.join("ttyNONIN");
    let fora = SerialSim::start(
        Protocol::Taidoc,
        &DeviceOptions {
            records: TAIDOC_RECORDS,
            model: "TD-3128".into(),
            clock: TAIDOC_CLOCK,
            // An irregular heartbeat, an averaged reading and one record whose date the
            // meter's lost clock made impossible.
            flagged: true,
            ..DeviceOptions::default()
        },
        Faults {
            garbage_every: Some(5),
            bad_checksum_every: Some(11),
            ..Faults::default()
        },
        &fora_link,
    )?;
    let nonin = SerialSim::start(
        Protocol::NoninDf7,
        &DeviceOptions {
            rate: 3,
            ..DeviceOptions::default()
        },
        Faults::default(),
        &nonin_link,
    )?;
    let path = |p: &Path| p.display().to_string();
    let toml = format!(
        "[[serial]]\npath = {fora:?}\nprotocol = \"taidoc\"\n\n\
         [[serial]]\npath = {nonin:?}\nprotocol = \"nonin-df7\"\n\
         stream = {{ policy = \"spot\", every = \"5s\" }}\n",
        fora = path(&fora_link),
        nonin = path(&nonin_link),
    );
    let devices = vec![
        DemoDevice::new(
            "serial FORA TD-3128 BP meter",
            Transport::Serial,
            &path(&fora_link),
            1,
            Done::Cursor(format!("serial-{}", Protocol::Taidoc)),
        ),
        DemoDevice::new(
            "serial Nonin oximeter",
            Transport::Serial,
            &path(&nonin_link),
            2,
            Done::AnyReading,
        ),
    ];
    Ok((vec![fora, nonin], devices, toml))
}

/// Ends a `--for` demo (see the module doc); without `--for` it only waits for Ctrl-C.
#[allow(missing_debug_implementations)] // Holds the emulator and simulator handles.
pub struct Conductor {
    pub run_for: Option<Duration>,
    pub devices: Vec<DemoDevice>,
    pub emulator: Option<Emulator>,
    pub serial: Arc<Vec<SerialSim>>,
    pub store_path: PathBuf,
    pub keying: Keying,
    pub destinations: Vec<String>,
    pub stop: CancellationToken,
}

impl Conductor {
    fn reader(&self) -> Option<StoreReader> {
        StoreReader::open(&self.store_path, &self.keying).ok()
    }

    fn backlog(&self) -> u64 {
        match OutboxReader::open(&self.store_path, &self.keying) {
            Ok(r) => self
                .destinations
                .iter()
                .map(|d| r.summary(d).map(|s| s.backlog).unwrap_or(1))
                .sum(),
            Err(_) => 1,
        }
    }

    /// Polls `f` on a blocking thread until it holds, `within` passes or `cancel` fires.
    async fn wait_until(
        self: &Arc<Self>,
        within: Duration,
        cancel: &CancellationToken,
        f: fn(&Self) -> bool,
    ) -> bool {
        let until = Instant::now() + within;
        loop {
            let me = self.clone();
            if tokio::task::spawn_blocking(move || f(&me))
                .await
                .unwrap_or(false)
            {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Once the CGM's first sensor session is in, the patient puts on a new sensor: the
    /// transmitter's record numbers (minutes since the session started) start over, and
    /// both sessions must reach the server.
    async fn replace_cgm_sensor(self: Arc<Self>, emu: Emulator, cancel: CancellationToken) {
        let first_session_in = |c: &Self| {
            c.emulator
                .as_ref()
                .is_some_and(|e| !e.racp_requests(CGM).is_empty())
                && c.reader().is_some_and(|r| {
                    r.readings_for_device(Transport::Ble, CGM)
                        .is_ok_and(|rs| rs.len() >= CGM_RECORDS as usize)
                        && matches!(r.cursor(Transport::Ble, CGM, "racp-2AA7"), Ok(Some(_)))
                })
        };
        if self
            .wait_until(RECORDS_WITHIN, &cancel, first_session_in)
            .await
        {
            tracing::info!("Demo: the CGM's sensor is replaced; a new session starts.");
            emu.start_over(CGM, CGM_NEW_SESSION_RECORDS);
            emu.drop_link(CGM).await;
        }
    }

    fn pending_devices(&self) -> Vec<String> {
        let Some(reader) = self.reader() else {
            return self.devices.iter().map(|d| d.label.clone()).collect();
        };
        self.devices
            .iter()
            .filter(|d| !d.is_done(&reader))
            .map(|d| d.label.clone())
            .collect()
    }
}

impl ReadingSource for Conductor {
    fn name(&self) -> String {
        "demo-conductor".into()
    }

    fn run(
        self: Box<Self>,
        _store: StoreHandle,
        _clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>> {
        let me: Arc<Self> = Arc::from(self);
        Box::pin(async move {
            if let Some(emu) = me.emulator.clone() {
                tokio::spawn(me.clone().replace_cgm_sensor(emu, cancel.clone()));
            }
            let Some(run_for) = me.run_for else {
                cancel.cancelled().await;
                return Ok(());
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(run_for) => {}
            }
            if !me
                .wait_until(RECORDS_WITHIN, &cancel, |c| c.pending_devices().is_empty())
                .await
            {
                tracing::warn!(devices = ?me.pending_devices(), "Demo devices still downloading; stopping anyway.");
            }
            // Unplug everything, so the backlog can drain to nothing.
            if let Some(emu) = &me.emulator {
                for d in me.devices.iter().filter(|d| d.transport == Transport::Ble) {
                    emu.remove_device(&d.address).await;
                }
            }
            for s in me.serial.iter() {
                s.unplug();
            }
            // What the sessions held when their links went is committed by now.
            tokio::time::sleep(Duration::from_secs(2)).await;
            if !me.destinations.is_empty()
                && !me
                    .wait_until(DRAIN_WITHIN, &cancel, |c| c.backlog() == 0)
                    .await
            {
                tracing::warn!("Delivery did not drain in time; stopping anyway.");
            }
            me.stop.cancel();
            Ok(())
        })
    }
}
