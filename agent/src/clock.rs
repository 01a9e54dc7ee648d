//! The gateway's own clocks: wall time, a monotonic time that survives wall-clock steps, the
//! boot identity that scopes it, and whether the kernel considers the wall clock synchronised.
//! Gateways may boot without a real-time clock, so "synchronised" is asked, never assumed.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use vitalgate_drivers::Receipt;

/// What the gateway knows about "now".
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn receipt(&self) -> Receipt;
}

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
            assume_synced: false,
        }
    }

    /// A clock whose wall time is taken as synchronised (the demo and `decode`, which say so,
    /// on development machines).
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
            wall_ms: vitalgate_core::time::now_ms(),
            monotonic_ns: boottime_ns(),
            boot_id: self.boot_id,
            clock_synchronized: self.assume_synced || sync_state().synchronized,
        }
    }
}

/// Where the packaged tmpfiles.d entry writes the boot id at every boot (`%b`), root-owned
/// and world-readable: the service's sandbox (`ProcSubset=pid`) hides `/proc/sys`, and a
/// service restart must not look like a reboot.
pub const BOOT_ID_FILE: &str = "/run/vitalgate-boot-id";

/// The kernel's boot id; monotonic times are only comparable within one boot. Read from
/// `/proc/sys/kernel/random/boot_id`, else from [`BOOT_ID_FILE`]: the same value, so the
/// daemon in its sandbox and a command run beside it agree.
pub fn boot_id() -> Option<Uuid> {
    boot_id_from(&[
        Path::new("/proc/sys/kernel/random/boot_id"),
        Path::new(BOOT_ID_FILE),
    ])
}

/// The first of `sources` that holds a boot id.
pub fn boot_id_from(sources: &[&Path]) -> Option<Uuid> {
    sources.iter().find_map(|p| {
        let s = std::fs::read_to_string(p).ok()?;
        Uuid::parse_str(s.trim()).ok()
    })
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

/// The default synchronisation marker: systemd-timesyncd touches it once it has
/// synchronised the clock in this boot (`/run` is empty at boot).
pub const DEFAULT_SYNC_MARKER: &str = "/run/systemd/timesync/synchronized";

/// The kernel's maximum error at or beyond which the clock is not synchronised: 16 s, the
/// kernel's NTP_PHASE_LIMIT, which systemd-timedated also compares against.
const MAX_ERROR_UNSYNCED_US: i64 = 16_000_000;

/// How long a judgement of the clock is reused before the sources are read again: every
/// reading asks.
const SYNC_CACHE: Duration = Duration::from_secs(5);

/// What the kernel answered to a read-only `adjtimex` query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelClock {
    /// The query worked: the estimated maximum error in microseconds, and whether the
    /// `STA_UNSYNC` status bit is set.
    Read { max_error_us: i64, sta_unsync: bool },
    /// EPERM: the caller may not even read the clock state (systemd's `ProtectClock=yes`
    /// filters `clock_adjtime` entirely, read-only queries too).
    NotPermitted,
    /// Any other failure, by errno.
    Failed(i32),
}

/// What systemd-timedated says of `NTPSynchronized` (it reads the kernel outside any
/// sandbox, whichever NTP client runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timedated {
    NotAsked,
    Says(bool),
    Unreachable(String),
}

/// Everything the clock's state is judged from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockSignals {
    pub kernel: KernelClock,
    /// The marker file, and whether it exists.
    pub marker: (PathBuf, bool),
    pub timedated: Timedated,
}

/// Whether the wall clock is synchronised, and on what evidence: what `status`, telemetry
/// and `doctor` say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSync {
    pub synchronized: bool,
    /// The evidence, or why there is none, in words.
    pub why: String,
}

/// Judges the clock from its signals. Any positive evidence counts: a kernel maximum error
/// under 16 s (systemd-timedated's rule; `STA_UNSYNC` alone misleads, since chrony keeps it
/// set by default and it returns hours after systemd-timesyncd's last update), the marker an
/// NTP client touches once synchronised, or timedated's own verdict. Without any, the clock
/// is not synchronised, and the reason names each source.
pub fn judge(s: &ClockSignals) -> ClockSync {
    let yes = |why: String| ClockSync {
        synchronized: true,
        why,
    };
    if let KernelClock::Read { max_error_us, .. } = s.kernel
        && max_error_us < MAX_ERROR_UNSYNCED_US
    {
        return yes(format!(
            "the kernel's maximum error is {} ms",
            max_error_us / 1000
        ));
    }
    let (marker, present) = &s.marker;
    if *present {
        return yes(format!("{} exists", marker.display()));
    }
    if s.timedated == Timedated::Says(true) {
        return yes("systemd-timedated reports NTPSynchronized".into());
    }
    let kernel = match s.kernel {
        KernelClock::Read {
            max_error_us,
            sta_unsync,
        } => format!(
            "the kernel's maximum error is {} s{}",
            max_error_us / 1_000_000,
            if sta_unsync { " (STA_UNSYNC set)" } else { "" }
        ),
        KernelClock::NotPermitted => {
            "the kernel's clock state cannot be read here (ProtectClock=)".into()
        }
        KernelClock::Failed(errno) => {
            format!("the kernel's clock state could not be read (errno {errno})")
        }
    };
    let timedated = match &s.timedated {
        Timedated::NotAsked => String::new(),
        Timedated::Says(_) => ", systemd-timedated reports it unsynchronised".into(),
        Timedated::Unreachable(e) => format!(", systemd-timedated cannot be asked ({e})"),
    };
    ClockSync {
        synchronized: false,
        why: format!("{kernel}, {} does not exist{timedated}", marker.display()),
    }
}

/// Queries the kernel's clock state, read-only: `adjtimex` with no mode bits changes nothing.
#[allow(unsafe_code)]
pub fn kernel_clock() -> KernelClock {
    // SAFETY: a zeroed timex with modes = 0 is a pure query; the kernel only writes into it.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: tx is a valid, exclusively borrowed timex.
    let state = unsafe { libc::ntp_adjtime(&mut tx) };
    if state < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return if errno == libc::EPERM {
            KernelClock::NotPermitted
        } else {
            KernelClock::Failed(errno)
        };
    }
    // `maxerror` is a C long: 32 bits on 32-bit ARM.
    #[allow(clippy::useless_conversion)]
    let max_error_us = i64::from(tx.maxerror);
    KernelClock::Read {
        max_error_us,
        sta_unsync: tx.status & libc::STA_UNSYNC != 0,
    }
}

/// Asks systemd-timedated whether the clock is synchronised (on the system bus, or
/// `DBUS_SYSTEM_BUS_ADDRESS`).
pub async fn ask_timedated() -> Timedated {
    let ask = async {
        let bus = crate::bus::Bus::system(Duration::from_secs(3)).await?;
        bus.get::<bool>(
            "org.freedesktop.timedate1",
            "/org/freedesktop/timedate1",
            "org.freedesktop.timedate1",
            "NTPSynchronized",
        )
        .await
    };
    match tokio::time::timeout(Duration::from_secs(3), ask).await {
        Ok(Ok(b)) => Timedated::Says(b),
        Ok(Err(e)) => Timedated::Unreachable(e.to_string()),
        Err(_) => Timedated::Unreachable("no answer within 3 s".into()),
    }
}

/// The process's clock judgement: its marker (from the configuration), the last timedated
/// answer (refreshed by [`watch_timedated`] where the kernel cannot be read) and a cache.
struct Probe {
    marker: Mutex<PathBuf>,
    timedated: Mutex<Timedated>,
    cache: Mutex<Option<(Instant, ClockSync)>>,
}

fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| Probe {
        marker: Mutex::new(PathBuf::from(DEFAULT_SYNC_MARKER)),
        timedated: Mutex::new(Timedated::NotAsked),
        cache: Mutex::new(None),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sets the synchronisation marker this process consults (`[gateway]
/// clock_synchronized_file`).
pub fn set_sync_marker(path: &Path) {
    let p = probe();
    *lock(&p.marker) = path.to_owned();
    *lock(&p.cache) = None;
}

/// The signals as they are now, with the last timedated answer.
pub fn signals() -> ClockSignals {
    let p = probe();
    let marker = lock(&p.marker).clone();
    let present = marker.exists();
    ClockSignals {
        kernel: kernel_clock(),
        marker: (marker, present),
        timedated: lock(&p.timedated).clone(),
    }
}

/// Whether the wall clock is synchronised, judged at most [`SYNC_CACHE`] ago.
pub fn sync_state() -> ClockSync {
    let p = probe();
    let mut cache = lock(&p.cache);
    if let Some((at, s)) = cache.as_ref()
        && at.elapsed() < SYNC_CACHE
    {
        return s.clone();
    }
    let s = judge(&signals());
    *cache = Some((Instant::now(), s.clone()));
    s
}

/// Whether the wall clock is synchronised (see [`sync_state`]).
pub fn wall_clock_synchronized() -> bool {
    sync_state().synchronized
}

/// Asks systemd-timedated again and keeps its answer for [`sync_state`] (the daemon does
/// it while the kernel's own state cannot be read and no marker settles the question).
pub async fn refresh_timedated() {
    let answer = ask_timedated().await;
    let p = probe();
    if *lock(&p.timedated) != answer {
        *lock(&p.timedated) = answer;
        *lock(&p.cache) = None;
    }
}

pub use vitalgate_core::time::local_utc_offset_s;

/// A clock with fixed answers, for tests.
#[derive(Debug, Clone)]
pub struct FixedClock(pub Receipt);

impl Clock for FixedClock {
    fn receipt(&self) -> Receipt {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(kernel: KernelClock, marker: bool, timedated: Timedated) -> ClockSignals {
        ClockSignals {
            kernel,
            marker: (PathBuf::from(DEFAULT_SYNC_MARKER), marker),
            timedated,
        }
    }

    const UNSYNCED_KERNEL: KernelClock = KernelClock::Read {
        max_error_us: 16_000_000,
        sta_unsync: true,
    };

    #[test]
    fn the_kernel_counts_by_its_maximum_error_not_sta_unsync() {
        // chrony keeps STA_UNSYNC set while it disciplines the clock: maxerror decides, as
        // in systemd-timedated.
        let chrony = KernelClock::Read {
            max_error_us: 250_000,
            sta_unsync: true,
        };
        let s = judge(&signals(chrony, false, Timedated::NotAsked));
        assert!(s.synchronized, "{s:?}");
        assert!(s.why.contains("250 ms"), "{}", s.why);
        // Hours after the last update maxerror has grown to 16 s: no longer synchronised,
        // whatever the status bit says.
        let stale = KernelClock::Read {
            max_error_us: 16_000_000,
            sta_unsync: false,
        };
        assert!(!judge(&signals(stale, false, Timedated::NotAsked)).synchronized);
        let s = judge(&signals(UNSYNCED_KERNEL, false, Timedated::NotAsked));
        assert!(!s.synchronized);
        assert!(s.why.contains("16 s (STA_UNSYNC set)"), "{}", s.why);
        assert!(s.why.contains("does not exist"), "{}", s.why);
    }

    #[test]
    fn under_protect_clock_the_marker_or_timedated_decides() {
        // EPERM: ProtectClock=yes filters even the read-only query.
        let s = judge(&signals(
            KernelClock::NotPermitted,
            false,
            Timedated::NotAsked,
        ));
        assert!(!s.synchronized);
        assert!(s.why.contains("ProtectClock"), "{}", s.why);
        // systemd-timesyncd's marker.
        let s = judge(&signals(
            KernelClock::NotPermitted,
            true,
            Timedated::NotAsked,
        ));
        assert!(s.synchronized);
        assert!(s.why.contains(DEFAULT_SYNC_MARKER), "{}", s.why);
        // timedated, for any NTP client.
        let s = judge(&signals(
            KernelClock::NotPermitted,
            false,
            Timedated::Says(true),
        ));
        assert!(s.synchronized && s.why.contains("timedated"), "{s:?}");
        let s = judge(&signals(
            KernelClock::NotPermitted,
            false,
            Timedated::Says(false),
        ));
        assert!(!s.synchronized && s.why.contains("timedated reports it unsynchronised"));
        let s = judge(&signals(
            KernelClock::NotPermitted,
            false,
            Timedated::Unreachable("no bus".into()),
        ));
        assert!(
            !s.synchronized && s.why.contains("cannot be asked (no bus)"),
            "{s:?}"
        );
        let s = judge(&signals(
            KernelClock::Failed(libc::EINVAL),
            false,
            Timedated::NotAsked,
        ));
        assert!(!s.synchronized && s.why.contains("errno"), "{s:?}");
    }

    #[test]
    fn the_marker_overrides_an_unsynchronised_kernel() {
        // A host-disciplined clock in a container or VM: the kernel says unsynchronised, the
        // NTP client's marker says otherwise.
        assert!(judge(&signals(UNSYNCED_KERNEL, true, Timedated::NotAsked)).synchronized);
    }

    #[test]
    fn boot_id_comes_from_the_first_readable_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hidden = dir.path().join("proc-boot-id");
        let file = dir.path().join("boot-id");
        let id = "0c3f6a5e-9a3d-4b8e-8f2a-1d2c3b4a5e6f";
        std::fs::write(&file, format!("{id}\n")).expect("write");
        // /proc hidden by ProcSubset=pid: the tmpfiles copy, the same value.
        assert_eq!(boot_id_from(&[&hidden, &file]), Uuid::parse_str(id).ok());
        std::fs::write(&hidden, "not a uuid").expect("write");
        assert_eq!(boot_id_from(&[&hidden, &file]), Uuid::parse_str(id).ok());
        assert_eq!(boot_id_from(&[&hidden]), None);
    }

    #[test]
    fn the_marker_is_read_from_the_configured_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("synced");
        set_sync_marker(&marker);
        assert!(!signals_now().marker.1);
        std::fs::write(&marker, b"").expect("marker");
        assert!(signals_now().marker.1);
        set_sync_marker(Path::new(DEFAULT_SYNC_MARKER));
    }

    fn signals_now() -> ClockSignals {
        super::signals()
    }
}
