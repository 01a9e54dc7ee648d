//! The virtual peripherals: which profile each one implements, what it advertises, and its
//! GATT database (services, characteristics with BlueZ's flag strings, CCCDs), laid out as the
//! Bluetooth SIG service specifications define them (which characteristics each service has,
//! with which properties).

use std::time::Duration;

/// The health profile a virtual peripheral implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Blood Pressure 0x1810, with A&D's Date Time (0x2A08) write inside the service.
    BloodPressure,
    /// Health Thermometer 0x1809.
    Thermometer,
    /// Weight Scale 0x181D plus Body Composition 0x181B.
    Scale,
    /// Glucose 0x1808 with RACP.
    Glucose,
    /// Pulse Oximeter 0x1822: stored spot checks and a continuous stream.
    PulseOximeter,
    /// Heart Rate 0x180D: a live stream.
    HeartRate,
    /// Continuous Glucose Monitoring 0x181F with RACP and E2E-CRC.
    Cgm,
}

impl Profile {
    pub const ALL: [Profile; 7] = [
        Profile::BloodPressure,
        Profile::Thermometer,
        Profile::Scale,
        Profile::Glucose,
        Profile::PulseOximeter,
        Profile::HeartRate,
        Profile::Cgm,
    ];

    /// The name used on the command line and in the control interface.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::BloodPressure => "bp",
            Profile::Thermometer => "thermometer",
            Profile::Scale => "scale",
            Profile::Glucose => "glucose",
            Profile::PulseOximeter => "plx",
            Profile::HeartRate => "hr",
            Profile::Cgm => "cgm",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The primary health services, as advertised.
    pub fn services(self) -> &'static [u16] {
        match self {
            Profile::BloodPressure => &[0x1810],
            Profile::Thermometer => &[0x1809],
            Profile::Scale => &[0x181D, 0x181B],
            Profile::Glucose => &[0x1808],
            Profile::PulseOximeter => &[0x1822],
            Profile::HeartRate => &[0x180D],
            Profile::Cgm => &[0x181F],
        }
    }

    /// Whether the device lets a client set its clock through Current Time (0x2A2B).
    pub fn cts_writable(self) -> bool {
        matches!(
            self,
            Profile::Thermometer | Profile::Scale | Profile::PulseOximeter
        )
    }

    /// The characteristics whose stored records are sent once indications are enabled.
    pub fn stored_characteristics(self) -> &'static [u16] {
        match self {
            Profile::BloodPressure => &[0x2A35],
            Profile::Thermometer => &[0x2A1C],
            Profile::Scale => &[0x2A9D, 0x2A9C],
            Profile::PulseOximeter => &[0x2A5E],
            _ => &[],
        }
    }

    /// The characteristic a live stream is notified on, if the profile has one.
    pub fn live_characteristic(self) -> Option<u16> {
        match self {
            Profile::HeartRate => Some(0x2A37),
            Profile::PulseOximeter => Some(0x2A5F),
            _ => None,
        }
    }

    fn short_name(self) -> &'static str {
        match self {
            Profile::BloodPressure => "BP",
            Profile::Thermometer => "Thermo",
            Profile::Scale => "Scale",
            Profile::Glucose => "Glucose",
            Profile::PulseOximeter => "Oximeter",
            Profile::HeartRate => "HR",
            Profile::Cgm => "CGM",
        }
    }
}

/// Device Information strings and the System ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub firmware: String,
    pub system_id: [u8; 8],
}

/// How a peripheral pairs, which decides what BlueZ asks the registered `org.bluez.Agent1`
/// (BlueZ `doc/org.bluez.Agent.rst`; SMP pairing methods, Core spec Vol 3 Part H §2.3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairingMethod {
    /// No user interaction: no agent call at all.
    JustWorks,
    /// The device shows a passkey that the user types on the gateway: `RequestPasskey`.
    /// Glucose meters with a display (Accu-Chek, Contour) work this way.
    Passkey(u32),
    /// Numeric comparison: `RequestConfirmation(device, passkey)`.
    Confirmation(u32),
    /// The gateway shows the passkey and the user types it on the device: `DisplayPasskey`.
    DisplayPasskey(u32),
    /// Legacy PIN code: `RequestPinCode`.
    PinCode(String),
}

impl PairingMethod {
    /// Parses the control interface's form: `just-works`, `passkey`, `confirmation`,
    /// `display`, `pin`, with the passkey (decimal, up to 999999) or PIN as `secret`.
    pub fn parse(method: &str, secret: &str) -> Option<Self> {
        let passkey = || secret.parse::<u32>().ok().filter(|p| *p <= 999_999);
        Some(match method {
            "just-works" => PairingMethod::JustWorks,
            "passkey" => PairingMethod::Passkey(passkey()?),
            "confirmation" => PairingMethod::Confirmation(passkey()?),
            "display" => PairingMethod::DisplayPasskey(passkey()?),
            "pin" if (1..=16).contains(&secret.len()) => PairingMethod::PinCode(secret.to_owned()),
            _ => return None,
        })
    }

    /// Whether the method needs an agent that can take input or show output.
    pub fn needs_agent(&self) -> bool {
        !matches!(self, PairingMethod::JustWorks)
    }
}

/// Everything that defines one virtual peripheral.
#[derive(Debug, Clone)]
pub struct PeripheralSpec {
    /// `AA:BB:CC:DD:EE:FF`, upper case.
    pub address: String,
    pub name: String,
    pub profile: Profile,
    pub info: DeviceInfo,
    /// Device clock minus host clock when the device starts, in milliseconds.
    pub clock_offset_ms: i64,
    /// Stored records: measurements for BP, thermometer, scale and PLX; RACP records for
    /// glucose (sequence numbers 1..=n) and CGM (time offsets 0, 5, ..., 5(n-1)).
    pub stored_records: u32,
    /// Period of the live stream (heart rate, PLX continuous); `None` disables it.
    pub live_interval: Option<Duration>,
    pub rssi: i16,
    /// Battery Level (0x2A19) of its Battery Service (0x180F).
    pub battery_percent: u8,
    /// Whether the device is already bonded with this adapter (paired earlier through
    /// BlueZ). Glucose meters and CGMs only serve the RACP over a bonded link.
    pub bonded: bool,
    /// How `Device1.Pair` proceeds.
    pub pairing: PairingMethod,
}

impl PeripheralSpec {
    /// A peripheral with defaults: three stored records, a clock 90 s fast, a live stream
    /// once a second.
    pub fn new(profile: Profile, address: &str) -> Self {
        let address = address.to_ascii_uppercase();
        let tail: String = address.chars().filter(|c| *c != ':').collect();
        let mut system_id = [0u8; 8];
        for (i, b) in system_id.iter_mut().enumerate() {
            *b = u8::from_str_radix(tail.get(i % 6 * 2..i % 6 * 2 + 2).unwrap_or("00"), 16)
                .unwrap_or(0);
        }
        system_id[3] = 0xFE;
        system_id[4] = 0xFF;
        Self {
            name: format!("Vitalgate Sim {}", profile.short_name()),
            info: DeviceInfo {
                manufacturer: "Vitalgate Simulated Devices".into(),
                model: format!("SIM-{}", profile.as_str().to_ascii_uppercase()),
                serial: format!("SN{tail}"),
                firmware: "2.1.0".into(),
                system_id,
            },
            address,
            profile,
            clock_offset_ms: 90_000,
            stored_records: 3,
            live_interval: Some(Duration::from_secs(1)),
            rssi: -52,
            battery_percent: 87,
            bonded: true,
            pairing: PairingMethod::JustWorks,
        }
    }

    pub fn with_records(mut self, n: u32) -> Self {
        self.stored_records = n;
        self
    }

    pub fn with_live_interval(mut self, every: Option<Duration>) -> Self {
        self.live_interval = every;
        self
    }

    pub fn with_battery(mut self, percent: u8) -> Self {
        self.battery_percent = percent;
        self
    }

    /// A device never bonded with this gateway.
    pub fn unbonded(mut self) -> Self {
        self.bonded = false;
        self
    }

    /// How the device pairs (implies nothing about whether it is bonded already).
    pub fn with_pairing(mut self, method: PairingMethod) -> Self {
        self.pairing = method;
        self
    }

    pub fn with_clock_offset_ms(mut self, ms: i64) -> Self {
        self.clock_offset_ms = ms;
        self
    }
}

/// One characteristic of the GATT database.
#[derive(Debug, Clone)]
pub struct CharDef {
    pub uuid: u16,
    pub flags: Vec<&'static str>,
}

/// One primary service of the GATT database.
#[derive(Debug, Clone)]
pub struct ServiceDef {
    pub uuid: u16,
    pub chars: Vec<CharDef>,
}

fn c(uuid: u16, flags: &[&'static str]) -> CharDef {
    CharDef {
        uuid,
        flags: flags.to_vec(),
    }
}

/// The GATT database of a profile: its health services, then Device Information, Current
/// Time and Battery.
pub fn gatt_database(profile: Profile) -> Vec<ServiceDef> {
    let s = |uuid, chars| ServiceDef { uuid, chars };
    let mut db = match profile {
        Profile::BloodPressure => vec![s(
            0x1810,
            vec![
                c(0x2A35, &["indicate"]),
                c(0x2A36, &["notify"]),
                c(0x2A49, &["read"]),
                c(0x2A08, &["write"]),
            ],
        )],
        Profile::Thermometer => vec![s(
            0x1809,
            vec![
                c(0x2A1C, &["indicate"]),
                c(0x2A1D, &["read"]),
                c(0x2A1E, &["notify"]),
            ],
        )],
        Profile::Scale => vec![
            s(0x181D, vec![c(0x2A9E, &["read"]), c(0x2A9D, &["indicate"])]),
            s(0x181B, vec![c(0x2A9B, &["read"]), c(0x2A9C, &["indicate"])]),
        ],
        Profile::Glucose => vec![s(
            0x1808,
            vec![
                c(0x2A18, &["notify"]),
                c(0x2A34, &["notify"]),
                c(0x2A51, &["read"]),
                c(0x2A52, &["write", "indicate"]),
            ],
        )],
        Profile::PulseOximeter => vec![s(
            0x1822,
            vec![
                c(0x2A5E, &["indicate"]),
                c(0x2A5F, &["notify"]),
                c(0x2A60, &["read"]),
            ],
        )],
        Profile::HeartRate => vec![s(
            0x180D,
            vec![c(0x2A37, &["notify"]), c(0x2A38, &["read"])],
        )],
        Profile::Cgm => vec![s(
            0x181F,
            vec![
                c(0x2AA7, &["notify"]),
                c(0x2AA8, &["read"]),
                c(0x2AAA, &["read", "write"]),
                c(0x2A52, &["write", "indicate"]),
            ],
        )],
    };
    db.push(s(
        0x180A,
        vec![
            c(0x2A29, &["read"]),
            c(0x2A24, &["read"]),
            c(0x2A25, &["read"]),
            c(0x2A26, &["read"]),
            c(0x2A23, &["read"]),
        ],
    ));
    let cts: &[&'static str] = if profile.cts_writable() {
        &["read", "write", "notify"]
    } else {
        &["read", "notify"]
    };
    db.push(s(0x1805, vec![c(0x2A2B, cts)]));
    db.push(s(0x180F, vec![c(0x2A19, &["read"])]));
    db
}

/// A 16-bit SIG UUID in BlueZ's 128-bit lowercase form.
pub fn uuid128(short: u16) -> String {
    format!("0000{short:04x}-0000-1000-8000-00805f9b34fb")
}

/// The 16-bit UUID of a 128-bit SIG-base UUID string, if it is one.
pub fn uuid16(long: &str) -> Option<u16> {
    let l = long.to_ascii_lowercase();
    if l.len() == 36 && l.starts_with("0000") && l.ends_with("-0000-1000-8000-00805f9b34fb") {
        u16::from_str_radix(&l[4..8], 16).ok()
    } else {
        None
    }
}
