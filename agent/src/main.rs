//! The `vitalgate` binary: the command line in [`vitalgate::cli`].

fn main() -> std::process::ExitCode {
    vitalgate::cli::main()
}
