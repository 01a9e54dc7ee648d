//! The gateway's own clocks: wall time, a monotonic time that survives wall-clock steps, the
//! boot identity that scopes it, and whether the kernel considers the wall clock synchronised.
//! Gateways may boot without a real-time clock, so "synchronised" is asked, never assumed.

use uuid::Uuid;
use vitalgate_drivers::Receipt;

/// What the gateway knows about "now".
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn receipt(&self) -> Receipt;
}

/// Set to `1` to treat the wall clock as synchronised whatever the kernel says: containers
/// and some virtual machines report "unsynchronised" for a host-disciplined clock, and then
/// every reading that needs the gateway's time would be held.
pub const ASSUME_SYNCED_ENV: &str = "VITALGATE_ASSUME_CLOCK_SYNCED";

/// The system clocks.
#[derive(Debug, Clone)]
pub struct SystemClock {
    boot_id: Uuid,
    assume_synced: bool,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            boot_id: boot_id().unwrap_or_else(Uuid::new_v4),
            assume_synced: std::env::var(ASSUME_SYNCED_ENV).is_ok_and(|v| v == "1"),
        }
    }

    /// A clock whose wall time is taken as synchronised (the demo, on development machines).
    pub fn assuming_synchronized() -> Self {
        Self {
            assume_synced: true,
            ..Self::new()
        }
    }
}

impl Clock for SystemClock {
    fn receipt(&self) -> Receipt {
        Receipt {
            wall_ms: crate::store::now_ms(),
            monotonic_ns: boottime_ns(),
            boot_id: self.boot_id,
            clock_synchronized: self.assume_synced || wall_clock_synchronized(),
        }
    }
}

/// The kernel's boot id; monotonic times are only comparable within one boot.
pub fn boot_id() -> Option<Uuid> {
    let s = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Uuid::parse_str(s.trim()).ok()
}

/// CLOCK_BOOTTIME in nanoseconds: monotonic, and it keeps counting through suspend.
#[allow(unsafe_code)]
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the timespec we own; CLOCK_BOOTTIME exists on
    // every Linux kernel this runs on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Whether the kernel reports the wall clock as synchronised (NTP or another time source
/// has disciplined it). Read-only: `ntp_adjtime` with no mode bits set changes nothing.
#[allow(unsafe_code)]
pub fn wall_clock_synchronized() -> bool {
    // SAFETY: a zeroed timex with modes = 0 is a pure query; the kernel only writes into it.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: tx is a valid, exclusively borrowed timex.
    let state = unsafe { libc::ntp_adjtime(&mut tx) };
    state >= 0 && state != libc::TIME_ERROR && (tx.status & libc::STA_UNSYNC) == 0
}

/// A clock with fixed answers, for tests.
#[derive(Debug, Clone)]
pub struct FixedClock(pub Receipt);

impl Clock for FixedClock {
    fn receipt(&self) -> Receipt {
        self.0
    }
}
