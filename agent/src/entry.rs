//! The process entry point: parse arguments, dispatch, map errors to exit codes. Kept apart
//! from `main.rs` so a second build of the agent (the update tests' "new version") runs the
//! very same entry point.

use std::process::ExitCode;

use clap::Parser;

use crate::{cli, exit};

pub fn main() -> ExitCode {
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
