//! `vitalgate run`: the daemon, as systemd starts it ([`crate::daemon::run`]).

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::cli::{CreateKey, Required, exit, find_key, load_config, runtime};
use crate::daemon::{self, Exit};

pub fn run(explicit_config: Option<&Path>, state_dir: PathBuf, recover: bool) -> Result<u8> {
    let config = load_config(explicit_config, Required::Yes)?;
    crate::logging::init(&config.log);
    let keying = find_key(&config, &state_dir, CreateKey::No)?;
    let ended = runtime()?.block_on(daemon::run(config, state_dir, keying, recover))?;
    // Non-zero on purpose for a restart: the unit restarts the agent on failure only.
    Ok(match ended {
        Exit::Stopped => exit::OK,
        Exit::Restart => exit::TEMPFAIL,
    })
}
