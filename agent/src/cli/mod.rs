//! The `vitalgate` command line, the binary's edge: argument definitions, one file per
//! command, and [`main`], which parses, dispatches and maps errors to exit codes
//! ([`exit`]). This is the only part of the agent that uses `anyhow`; everything below it
//! returns typed errors.

mod decode;
#[cfg(feature = "demo")]
pub mod demo;
mod doctor;
pub mod exit;
mod pair;
mod provision;
mod run;
mod status;
mod sync;
mod update;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR};
use crate::store::{self, Keying};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use std::process::ExitCode;

/// Vitalgate: remote-patient-monitoring gateway agent.
#[derive(Debug, Parser)]
#[command(
    name = "vitalgate",
    version,
    about,
    propagate_version = true,
    after_long_help = "Each command documents its own options: vitalgate <command> --help. \
        Configuration: /etc/vitalgate/vitalgate.toml (every key with its default). The \
        handbook: /usr/share/doc/vitalgate/README.md."
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (under systemd: Type=notify, watchdog, SIGTERM to stop).
    Run {
        #[command(flatten)]
        state: StateDirArg,
        /// Start on a store whose write-ahead log is damaged: keep every commit that can be
        /// read, record what could not (event `store-wal-damaged`), keep the log's copy.
        #[arg(long)]
        recover: bool,
    },
    /// Deliver now: one delivery round per destination, with per-destination results.
    Sync {
        #[command(flatten)]
        state: StateDirArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show reading counts, backlog, devices and alarms from the store.
    Status {
        #[command(flatten)]
        state: StateDirArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also check every page of the store (reads the whole file).
        #[arg(long)]
        verify: bool,
    },
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Set the gateway up from an enrollment file: config, secret files, key, bindings.
    Provision(crate::cli::provision::ProvisionArgs),
    /// Check adapter, serial ports, clock, disk, key, store, broker and FHIR endpoints.
    Doctor(crate::cli::doctor::DoctorArgs),
    /// Decode device bytes and print the FHIR resources they map to.
    #[command(subcommand)]
    Decode(crate::cli::decode::DecodeCommand),
    /// Pair a home device with this gateway and bind it to a patient (the daemon pairs it).
    Pair(crate::cli::pair::PairArgs),
    /// Remove a device's bond, binding and allowlist entry (audited; readings are kept).
    Unpair(crate::cli::pair::UnpairArgs),
    /// List the devices this gateway has taken on, with their bindings.
    Devices(crate::cli::pair::DevicesArgs),
    /// Signed software update: keys, signing, applying, status.
    #[command(subcommand)]
    Update(crate::cli::update::UpdateCommand),
    /// Print a shell completion script (the package installs them; or `source` one).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page, vitalgate(8), as roff (the package installs it).
    #[command(hide = true)]
    Manual,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file without starting anything.
    Check,
}

#[derive(Debug, Args)]
struct StateDirArg {
    /// State directory (the store and, for the demo, its key).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

pub fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Config(ConfigCommand::Check) => config_check(cli.config.as_deref()),
        Command::Decode(cmd) => {
            let config = load_config(cli.config.as_deref(), Required::IfPresent)?;
            crate::cli::decode::decode_cmd(&crate::cli::decode::decode_gateway(&config), cmd)
        }
        Command::Run { state: s, recover } => run::run(cli.config.as_deref(), s.state_dir, recover),
        Command::Sync { state, json } => {
            let config = load_config(cli.config.as_deref(), Required::Yes)?;
            crate::logging::init(&config.log);
            let keying = find_key(&config, &state.state_dir, CreateKey::No)?;
            crate::cli::sync::sync_cmd(&config, &state.state_dir, keying, json)
        }
        Command::Status {
            state,
            json,
            verify,
        } => status::status(cli.config.as_deref(), &state.state_dir, json, verify),
        Command::Provision(a) => crate::cli::provision::provision_cmd(cli.config.as_deref(), a),
        Command::Doctor(a) => crate::cli::doctor::doctor_cmd(cli.config.as_deref(), a),
        Command::Pair(a) => crate::cli::pair::pair(cli.config.as_deref(), a),
        Command::Unpair(a) => crate::cli::pair::unpair(cli.config.as_deref(), a),
        Command::Devices(a) => crate::cli::pair::devices(cli.config.as_deref(), a),
        Command::Update(u) => crate::cli::update::dispatch(u, || {
            load_config(cli.config.as_deref(), Required::IfPresent)
        }),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut cmd, "vitalgate", &mut text);
            print_bytes(&text)
        }
        Command::Manual => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_mangen::Man::new(cmd)
                .section("8")
                .render(&mut text)
                .context("cannot render the manual page")?;
            print_bytes(&text)
        }
    }
}

/// Writes generated text to stdout; a closed pipe (`| head`) is not an error.
fn print_bytes(text: &[u8]) -> Result<u8> {
    match std::io::stdout().lock().write_all(text) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(exit::OK),
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    // Two workers: gateways have few cores, and the store writer has a thread of its own.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

#[derive(PartialEq, Eq)]
pub(crate) enum Required {
    Yes,
    /// Use defaults when no `--config` is given and the default file does not exist.
    IfPresent,
}

pub(crate) fn load_config(explicit: Option<&Path>, required: Required) -> Result<Config> {
    let config = match explicit {
        Some(p) => Config::load(p)?,
        None => {
            let p = Path::new(DEFAULT_CONFIG_PATH);
            if required == Required::IfPresent && !p.exists() {
                Config::default()
            } else {
                Config::load(p)?
            }
        }
    };
    // Every command judges the clock by the same evidence as the daemon.
    crate::clock::set_sync_marker(&config.gateway.clock_synchronized_file);
    Ok(config)
}

fn config_check(explicit: Option<&Path>) -> Result<u8> {
    let path = explicit.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
    let config = Config::load(path)?;
    println!(
        "{}: OK (gateway {}, {} destination(s))",
        path.display(),
        config.gateway.id,
        config.destinations.len()
    );
    Ok(exit::OK)
}

#[derive(PartialEq, Eq)]
pub(crate) enum CreateKey {
    Yes,
    No,
}

/// The key: the systemd credential, then the configured key file, then `db.key` in the state
/// directory (where `demo` creates one when there is none).
pub(crate) fn find_key(config: &Config, state_dir: &Path, create: CreateKey) -> Result<Keying> {
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let local = state_dir.join("db.key");
    let first = store::key::load_key(
        creds.as_deref(),
        &config.store.key_credential,
        &config.store.key_file,
    );
    let (key, source) = match first {
        Ok(found) => found,
        Err(store::KeyError::Missing { .. }) if local.exists() => (
            store::key::read_key_file(&local)?,
            store::KeySource::File(local),
        ),
        Err(store::KeyError::Missing { .. }) if create == CreateKey::Yes => {
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(state_dir)
                    .with_context(|| format!("cannot create {}", state_dir.display()))?;
            }
            let key = store::key::create_key_file(&local)?;
            println!(
                "Created a new database key at {} (mode 0600). Keep it: the store cannot be read without it.",
                local.display()
            );
            (key, store::KeySource::File(local))
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(%source, "Database key loaded.");
    Ok(Keying::Encrypted(key))
}

pub(crate) fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The process entry point of `vitalgate` (and of the update tests' second build of it).
pub fn main() -> ExitCode {
    run_main("vitalgate", dispatch)
}

/// Parses `P`, runs `f`, and maps the outcome to an exit code: usage errors 64, every other
/// error by [`exit::code_for`], printed on stderr as `<name>: error: ...` with its causes.
pub(crate) fn run_main<P: clap::Parser>(name: &str, f: impl FnOnce(P) -> Result<u8>) -> ExitCode {
    let args = match P::try_parse() {
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
    match f(args) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("{name}: error: {error:#}");
            ExitCode::from(exit::code_for(&error))
        }
    }
}
