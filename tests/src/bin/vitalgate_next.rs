//! The agent built a second time under the next minor version: the "new version" the update
//! end-to-end tests sign, serve and install. It is the agent's own entry point
//! (`vitalgate::cli::main`), so it behaves exactly like `vitalgate` except for the version it
//! reports.

fn main() -> std::process::ExitCode {
    vitalgate::update::embed_version(&vitalgate_e2e::next_version());
    vitalgate::cli::main()
}
