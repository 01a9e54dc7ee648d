//! The `vitalgate` command line: parses arguments, loads configuration and the key, and runs
//! the requested command. This is the only place `anyhow` is used; exit codes follow sysexits.

mod cli;
mod cli_fhir;
mod exit;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli::dispatch(args) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("vitalgate: error: {error:#}");
            ExitCode::from(exit::code_for(&error))
        }
    }
}
