//! The fleet state file the daemon keeps in the state directory for `vitalgate status`:
//! broker connection state and the last command. Written atomically (temporary file, fsync,
//! rename), so a reader never sees half a file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "fleet-state.json";

/// What `vitalgate status` shows about fleet management.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub broker: String,
    pub gateway_id: String,
    /// "connecting", "connected", "disconnected" or "stopped".
    pub connection: String,
    pub since: String,
    pub last_error: Option<String>,
    pub reconnects: u64,
    pub config_version: Option<u64>,
    pub last_command: Option<LastCommand>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCommand {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub at: String,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

/// Writes the file atomically.
pub fn write(state_dir: &Path, status: &FleetStatus) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let final_path = path(state_dir);
    let tmp = state_dir.join(format!(".{STATE_FILE}.tmp"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &final_path)?;
    std::fs::File::open(state_dir)?.sync_all()
}

/// Reads the file; `None` when fleet management never ran here.
pub fn read(state_dir: &Path) -> std::io::Result<Option<FleetStatus>> {
    match std::fs::read(path(state_dir)) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()).expect("read"), None);
        let s = FleetStatus {
            broker: "mqtts://b:8883".into(),
            connection: "connected".into(),
            last_command: Some(LastCommand {
                id: "c1".into(),
                kind: "sync-now".into(),
                status: "succeeded".into(),
                reason: String::new(),
                at: "2026-01-01T00:00:00Z".into(),
            }),
            ..Default::default()
        };
        write(dir.path(), &s).expect("write");
        write(dir.path(), &s).expect("overwrite");
        assert_eq!(read(dir.path()).expect("read"), Some(s));
    }
}
