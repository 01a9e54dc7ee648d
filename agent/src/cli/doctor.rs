//! `vitalgate doctor`: the installation's checks, each with a remedy. The work is in
//! [`crate::doctor`]; this is argument handling and what is printed.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use crate::cli::exit;
use crate::config::DEFAULT_STATE_DIR;
use crate::doctor::{self, Verdict};

/// `doctor` exits with this when a check failed (sysexits has no code for "unhealthy").
pub const CHECK_FAILED: u8 = 1;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// State directory (the store).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print the report as JSON (its shape is documented in the README).
    #[arg(long)]
    json: bool,
}

pub fn doctor_cmd(explicit_config: Option<&Path>, args: DoctorArgs) -> Result<u8> {
    let config = crate::cli::load_config(explicit_config, crate::cli::Required::Yes)?;
    let inputs = doctor::Inputs {
        config,
        state_dir: args.state_dir,
        credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
    };
    let report = crate::cli::runtime()?.block_on(doctor::run(&inputs));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "Gateway {} (vitalgate {})",
            report.gateway_id, report.version
        );
        for c in &report.checks {
            println!("{}  {:<20} {}", c.verdict.label(), c.name, c.detail);
            if c.verdict != Verdict::Pass {
                println!("      remedy: {}", c.remedy);
            }
        }
        let failed = report
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .count();
        if failed == 0 {
            println!("All checks passed.");
        } else {
            println!("{failed} check(s) failed.");
        }
    }
    Ok(if report.ok { exit::OK } else { CHECK_FAILED })
}
