//! The agent built a second time under the next minor version: the "new version" the update
//! end-to-end tests sign, serve and install. It is the agent's own entry point and command
//! line compiled into this crate, so it behaves exactly like `vitalgate` except for the
//! version it reports; building it costs one more compile of the command-line modules, not a
//! second build of every dependency.

#[path = "../../../agent/src/cli.rs"]
mod cli;
#[path = "../../../agent/src/cli_demo.rs"]
mod cli_demo;
#[path = "../../../agent/src/cli_fhir.rs"]
mod cli_fhir;
#[path = "../../../agent/src/cli_install.rs"]
mod cli_install;
#[path = "../../../agent/src/cli_pair.rs"]
mod cli_pair;
#[path = "../../../agent/src/cli_update.rs"]
mod cli_update;
#[path = "../../../agent/src/entry.rs"]
mod entry;
#[path = "../../../agent/src/exit.rs"]
mod exit;

fn main() -> std::process::ExitCode {
    vitalgate::update::embed_version(&vitalgate_e2e::next_version());
    entry::main()
}
