//! `[gpio]`: the optional pairing button and status LED (the GPIO task is `crate::gpio`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_CHIP: &str = "/dev/gpiochip0";
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);
pub const DEFAULT_PAIRING_WINDOW: Duration = Duration::from_secs(120);

/// `[gpio]`: a pairing button and a status LED on the GPIO character device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpioConfig {
    /// Off by default: most gateways have neither.
    pub enabled: bool,
    /// The GPIO chip's character device.
    pub chip: PathBuf,
    /// Line offset of the pairing button on that chip. Unset: no button.
    pub button_line: Option<u32>,
    /// The button pulls the line low when pressed (the usual wiring, with a pull-up).
    pub button_active_low: bool,
    /// A press must be stable this long to count.
    #[serde(with = "humantime_serde")]
    pub button_debounce: Duration,
    /// How long a press keeps the pairing window open.
    #[serde(with = "humantime_serde")]
    pub pairing_window: Duration,
    /// Line offset of the status LED. Unset: no LED.
    pub led_line: Option<u32>,
    /// The LED lights when the line is driven low.
    pub led_active_low: bool,
}

impl Default for GpioConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            chip: PathBuf::from(DEFAULT_CHIP),
            button_line: None,
            button_active_low: true,
            button_debounce: DEFAULT_DEBOUNCE,
            pairing_window: DEFAULT_PAIRING_WINDOW,
            led_line: None,
            led_active_low: false,
        }
    }
}

impl GpioConfig {
    /// Cross-field checks; errors name the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((format!("gpio.{k}"), m.to_owned()));
        if !self.enabled {
            return Ok(());
        }
        let dev_chip = self.chip.starts_with("/dev")
            && self
                .chip
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("gpiochip"));
        if !dev_chip {
            return err(
                "chip",
                "must be a GPIO character device, e.g. /dev/gpiochip0",
            );
        }
        if self.button_line.is_none() && self.led_line.is_none() {
            return err("enabled", "needs button_line, led_line or both");
        }
        // The kernel's uAPI limit on lines per chip is far higher, but no gateway board has
        // more than a few hundred; a bigger number is a typo.
        for (k, v) in [
            ("button_line", self.button_line),
            ("led_line", self.led_line),
        ] {
            if v.is_some_and(|v| v >= 1024) {
                return err(k, "must be a line offset below 1024");
            }
        }
        if self.button_line.is_some() && self.button_line == self.led_line {
            return err("led_line", "must differ from button_line");
        }
        if self.button_debounce < Duration::from_millis(5)
            || self.button_debounce > Duration::from_secs(1)
        {
            return err("button_debounce", "must be between 5ms and 1s");
        }
        if self.pairing_window < Duration::from_secs(10)
            || self.pairing_window > Duration::from_secs(3600)
        {
            return err("pairing_window", "must be between 10s and 1h");
        }
        Ok(())
    }
}
