//! The `vitalgate-demo` binary (feature `demo`): the pipeline on simulated devices. Not in the
//! gateway's package; `./scripts/demo` builds and runs it.

fn main() -> std::process::ExitCode {
    vitalgate::cli::demo::main()
}
