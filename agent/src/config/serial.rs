//! `[[serial]]`: one serial medical device per entry (a meter's cable, an oximeter's cradle).
//!
//! A port is named by a stable path (`/dev/serial/by-id/...`, or the `/dev/vitalgate/...`
//! links the shipped udev rules create) or by the USB VID:PID of its bridge (optionally with
//! the bridge's serial number), never by `/dev/ttyUSB0`, whose number changes with the order
//! devices are plugged in.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vitalgate_drivers::serial::policy::StreamPolicy;
use vitalgate_drivers::serial::{LineSettings, Parity, Protocol};

/// What to do with a modem-control line (DTR or RTS) after the port opens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinePolicy {
    /// Assert it (some cables draw power from it, some USB-CDC devices only send while DTR
    /// is up).
    #[default]
    On,
    /// De-assert it.
    Off,
    /// Leave it as the driver set it on open.
    Leave,
}

/// A USB bridge to look for: `VID:PID`, optionally `VID:PID:SERIAL`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UsbId {
    pub vid: u16,
    pub pid: u16,
    pub serial: Option<String>,
}

impl FromStr for UsbId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a USB id like \"10c4:ea60\" or \"10c4:ea60:0001\"");
        let mut it = s.splitn(3, ':');
        let hex = |p: Option<&str>| {
            p.filter(|p| p.len() == 4)
                .and_then(|p| u16::from_str_radix(p, 16).ok())
                .ok_or_else(bad)
        };
        let vid = hex(it.next())?;
        let pid = hex(it.next())?;
        let serial = match it.next() {
            Some("") => return Err(bad()),
            Some(s) => Some(s.to_owned()),
            None => None,
        };
        Ok(Self { vid, pid, serial })
    }
}

impl std::fmt::Display for UsbId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vid, self.pid)?;
        if let Some(s) = &self.serial {
            write!(f, ":{s}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for UsbId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for UsbId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How a continuous stream (oximeters) is reduced before it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "lowercase", deny_unknown_fields)]
pub enum StreamConfig {
    /// The first valid sample of every period: `{ policy = "spot", every = "30s" }`.
    Spot {
        #[serde(with = "humantime_serde")]
        every: Duration,
    },
    /// The median SpO2 and pulse rate of every window: `{ policy = "median", window = "1m" }`.
    Median {
        #[serde(with = "humantime_serde")]
        window: Duration,
    },
    /// One reading once the values have stayed within the tolerances for the settling time,
    /// then none until the finger is lifted (a spot check):
    /// `{ policy = "stable", settle = "10s", spo2_tolerance = 1, pulse_tolerance = 3 }`.
    Stable {
        #[serde(with = "humantime_serde")]
        settle: Duration,
        spo2_tolerance: u8,
        pulse_tolerance: u16,
    },
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig::Median {
            window: Duration::from_secs(60),
        }
    }
}

impl StreamConfig {
    pub fn policy(&self) -> StreamPolicy {
        let ms = |d: &Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        match self {
            StreamConfig::Spot { every } => StreamPolicy::Spot {
                every_ms: ms(every),
            },
            StreamConfig::Median { window } => StreamPolicy::Median {
                window_ms: ms(window),
            },
            StreamConfig::Stable {
                settle,
                spo2_tolerance,
                pulse_tolerance,
            } => StreamPolicy::Stable {
                settle_ms: ms(settle),
                spo2_tolerance: *spo2_tolerance,
                pulse_tolerance: *pulse_tolerance,
            },
        }
    }
}

/// The default time between downloads of a request/response device that stays connected.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(300);

/// `[[serial]]`: one device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// The port's stable path, e.g. "/dev/serial/by-id/usb-Silicon_Labs_CP2102_0001-if00-port0".
    /// Give this or `usb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The USB bridge, "VID:PID" or "VID:PID:SERIAL" (hex ids), e.g. "10c4:ea60". The first
    /// matching tty is used. Give this or `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usb: Option<UsbId>,
    /// taidoc, nonin-df2, nonin-df7, nonin-ascii, contec or astm.
    pub protocol: Protocol,
    /// Overrides the protocol's baud rate (TaiDoc 19200, Contec 115200, others 9600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baud: Option<u32>,
    /// Overrides the parity: "none", "odd" or "even" (8 data bits, 1 stop bit always).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<Parity>,
    /// DTR after open: "on", "off" or "leave". Ports without modem lines (PTYs, some
    /// bridges) answer ENOTTY, which is logged once and is not an error.
    #[serde(default)]
    pub dtr: LinePolicy,
    /// RTS after open: "on", "off" or "leave".
    #[serde(default)]
    pub rts: LinePolicy,
    /// Stream reduction for oximeters (Nonin, Contec). Default: median of every minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamConfig>,
    /// Deliver every sample of a stream instead of applying `stream` (for studies only: a
    /// 3 Hz oximeter adds about 500,000 readings a day). The raw stream is kept in the store
    /// either way, at most one sample a second.
    #[serde(default)]
    pub keep_raw_stream: bool,
    /// TaiDoc: clear the device memory after a download the store has committed.
    #[serde(default)]
    pub clear_memory: bool,
    /// TaiDoc: set the device clock to the gateway's local time at every session (only
    /// while the gateway clock is synchronised).
    #[serde(default)]
    pub set_clock: bool,
    /// How long to wait before downloading again from a device that stays connected.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
}

fn default_poll_interval() -> Duration {
    DEFAULT_POLL_INTERVAL
}

impl SerialConfig {
    /// The line settings: the protocol's, with the overrides.
    pub fn line(&self) -> LineSettings {
        let d = self.protocol.default_line();
        LineSettings {
            baud: self.baud.unwrap_or(d.baud),
            parity: self.parity.unwrap_or(d.parity),
        }
    }

    /// The stream policy in force.
    pub fn stream_policy(&self) -> StreamPolicy {
        if self.keep_raw_stream {
            StreamPolicy::All
        } else {
            self.stream.unwrap_or_default().policy()
        }
    }

    /// The device's address in the store: its configured path, or `usb:VID:PID[:SERIAL]`.
    pub fn address(&self) -> String {
        match (&self.path, &self.usb) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(u)) => format!("usb:{u}"),
            (None, None) => String::new(),
        }
    }

    /// Cross-field checks; `index` is the entry's position, for the key in messages.
    pub(crate) fn validate(&self, index: usize) -> Result<(), (String, String)> {
        let key = |k: &str| format!("serial[{index}].{k}");
        match (&self.path, &self.usb) {
            (Some(_), Some(_)) => {
                return Err((key("usb"), "give either `path` or `usb`, not both".into()));
            }
            (None, None) => {
                return Err((
                    key("path"),
                    "every serial device needs a `path` or a `usb` id".into(),
                ));
            }
            (Some(p), None) if !p.is_absolute() => {
                return Err((
                    key("path"),
                    format!("{} is not an absolute path", p.display()),
                ));
            }
            _ => {}
        }
        if let Some(b) = self.baud
            && !(300..=4_000_000).contains(&b)
        {
            return Err((key("baud"), format!("{b} is not a usable baud rate")));
        }
        if self.clear_memory && self.protocol != Protocol::Taidoc {
            return Err((
                key("clear_memory"),
                format!(
                    "{} devices have no memory Vitalgate can clear",
                    self.protocol
                ),
            ));
        }
        if self.set_clock && self.protocol != Protocol::Taidoc {
            return Err((
                key("set_clock"),
                format!(
                    "Vitalgate cannot set the clock of {} devices",
                    self.protocol
                ),
            ));
        }
        if self.stream.is_some() && !self.protocol.is_stream() {
            return Err((
                key("stream"),
                format!("{} devices do not stream; remove `stream`", self.protocol),
            ));
        }
        match self.stream {
            Some(StreamConfig::Spot { every: d } | StreamConfig::Median { window: d })
                if d < Duration::from_secs(1) =>
            {
                return Err((key("stream"), "the period must be at least 1s".into()));
            }
            _ => {}
        }
        if self.poll_interval < Duration::from_secs(1) {
            return Err((key("poll_interval"), "must be at least 1s".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(Path::new("vitalgate.toml"), text)
    }

    #[test]
    fn full_entry_parses() {
        let c = parse(
            "[[serial]]\npath = \"/dev/serial/by-id/usb-FORA\"\nprotocol = \"taidoc\"\n\
             clear_memory = true\nset_clock = true\ndtr = \"off\"\nrts = \"leave\"\n\n\
             [[serial]]\nusb = \"10c4:ea60:0001\"\nprotocol = \"contec\"\nbaud = 115200\n\
             parity = \"none\"\nstream = { policy = \"spot\", every = \"30s\" }\n",
        )
        .expect("valid");
        assert_eq!(c.serial.len(), 2);
        assert_eq!(c.serial[0].line().baud, 19_200);
        assert_eq!(c.serial[0].dtr, LinePolicy::Off);
        assert_eq!(c.serial[0].address(), "/dev/serial/by-id/usb-FORA");
        assert_eq!(c.serial[1].address(), "usb:10c4:ea60:0001");
        assert_eq!(
            c.serial[1].stream_policy(),
            StreamPolicy::Spot { every_ms: 30_000 }
        );
        assert_eq!(c.serial[1].poll_interval, DEFAULT_POLL_INTERVAL);
    }

    #[test]
    fn mistakes_name_the_key_and_line() {
        let e = parse("[[serial]]\nprotocol = \"taidoc\"\n").expect_err("no port");
        assert!(e.to_string().contains("serial[0].path"), "{e}");
        let e = parse("[[serial]]\npath = \"/dev/x\"\nprotocol = \"modbus\"\n").expect_err("bad");
        assert_eq!(e.line(), Some(3), "{e}");
        assert!(e.to_string().contains("modbus"), "{e}");
        let e = parse("[[serial]]\nusb = \"10c4\"\nprotocol = \"astm\"\n").expect_err("usb");
        assert!(e.to_string().contains("USB id"), "{e}");
        let e =
            parse("[[serial]]\npath = \"/dev/x\"\nprotocol = \"nonin-df2\"\nclear_memory = true\n")
                .expect_err("clear");
        assert!(e.to_string().contains("serial[0].clear_memory"), "{e}");
        let e = parse("[[serial]]\npath = \"/dev/x\"\nprotocol = \"astm\"\nstream = { policy = \"median\", window = \"1m\" }\n")
            .expect_err("stream");
        assert!(e.to_string().contains("do not stream"), "{e}");
        let e = parse("[[serial]]\npath = \"/dev/x\"\nprotocol = \"contec\"\nstream = { policy = \"median\", every = \"1m\" }\n")
            .expect_err("field");
        assert!(e.to_string().contains("serial[0].stream"), "{e}");
        let e = parse("[[serial]]\npath = \"/dev/x\"\nprotocol = \"astm\"\n[[serial]]\npath = \"/dev/x\"\nprotocol = \"taidoc\"\n")
            .expect_err("twice");
        assert!(e.to_string().contains("listed twice"), "{e}");
    }

    #[test]
    fn raw_stream_overrides_the_policy() {
        let c = parse(
            "[[serial]]\npath = \"/dev/x\"\nprotocol = \"nonin-df2\"\nkeep_raw_stream = true\n",
        )
        .expect("valid");
        assert_eq!(c.serial[0].stream_policy(), StreamPolicy::All);
        let c = parse("[[serial]]\npath = \"/dev/x\"\nprotocol = \"nonin-df2\"\n").expect("valid");
        assert_eq!(
            c.serial[0].stream_policy(),
            StreamPolicy::Median { window_ms: 60_000 }
        );
    }
}
