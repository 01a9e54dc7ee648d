//! A pseudo-terminal that plays the device side of a serial cable: the master end is the
//! device, the slave end (`/dev/pts/N`, reached through a stable symlink, as udev's
//! `/dev/serial/by-id` links are) is what the agent opens with tokio-serial.
//!
//! The slave is put in raw mode at once (otherwise its line discipline would echo and edit
//! the device's bytes before the agent opens it) and kept open here, so the master never
//! reads EIO between two opens by the agent. Dropping the [`Pty`] closes both ends: the
//! agent's reads end (EOF/EIO/HUP), and the symlink is removed, which is what an unplugged
//! USB adapter looks like.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One plugged-in "cable".
#[derive(Debug)]
pub struct Pty {
    master: File,
    _slave: OwnedFd,
    /// The slave's real name, e.g. `/dev/pts/7`.
    pub slave_path: PathBuf,
    /// The stable symlink to it.
    pub link: PathBuf,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Pty {
    /// Opens a new pseudo-terminal and points `link` at its slave (replacing any old link).
    #[allow(unsafe_code)]
    pub fn open(link: &Path) -> io::Result<Self> {
        // SAFETY: plain libc calls on descriptors we own; every return value is checked
        // before use, and the buffers passed are ours and large enough.
        let (master, slave, slave_path) = unsafe {
            let m = check(libc::posix_openpt(
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            ))?;
            let master = OwnedFd::from_raw_fd(m);
            check(libc::grantpt(m))?;
            check(libc::unlockpt(m))?;
            let mut name = [0 as libc::c_char; 128];
            let rc = libc::ptsname_r(m, name.as_mut_ptr(), name.len());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            let cstr = std::ffi::CStr::from_ptr(name.as_ptr());
            let slave_path = PathBuf::from(cstr.to_string_lossy().into_owned());
            let s = check(libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            ))?;
            let slave = OwnedFd::from_raw_fd(s);
            let mut t: libc::termios = std::mem::zeroed();
            check(libc::tcgetattr(s, &mut t))?;
            libc::cfmakeraw(&mut t);
            check(libc::tcsetattr(s, libc::TCSANOW, &t))?;
            // The device never blocks on a cable nobody reads: output that does not fit is
            // lost, as on a real line with no one listening.
            let flags = check(libc::fcntl(m, libc::F_GETFL))?;
            check(libc::fcntl(m, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
            (master, slave, slave_path)
        };
        match std::fs::remove_file(link) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::os::unix::fs::symlink(&slave_path, link)?;
        Ok(Self {
            master: File::from(master),
            _slave: slave,
            slave_path,
            link: link.to_owned(),
        })
    }

    /// Waits until the host has written something, at most `timeout`.
    #[allow(unsafe_code)]
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut fds = libc::pollfd {
            fd: self.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one pollfd that lives on our stack for the duration of the call.
        let n = unsafe { libc::poll(&mut fds, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(n > 0 && fds.revents & libc::POLLIN != 0)
    }

    /// Reads what the host sent (empty when nothing is waiting).
    pub fn read_available(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.master.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EIO: no one has the slave open (cannot happen while we hold it).
                Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Writes device bytes; what does not fit in the line's buffer is dropped. Returns
    /// how many bytes were written.
    pub fn write_lossy(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self.master.write(bytes) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        // Only remove the link if it still points at this slave (a replug may have
        // replaced it already).
        if std::fs::read_link(&self.link).is_ok_and(|t| t == self.slave_path) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}
