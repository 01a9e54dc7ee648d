//! The `vitalgate` command line: parses arguments, loads configuration and the key, and runs
//! the requested command. This is the only place `anyhow` is used; exit codes follow sysexits.

mod cli;
mod cli_demo;
mod cli_fhir;
mod cli_install;
mod cli_pair;
mod cli_update;
mod entry;
mod exit;

use std::process::ExitCode;

fn main() -> ExitCode {
    entry::main()
}
