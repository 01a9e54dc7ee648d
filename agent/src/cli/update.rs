//! `vitalgate update ...`: keygen, sign, apply, status. (The update work the daemon does
//! around the supervisor is in [`crate::daemon`].)

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::update::manifest::{self, PrivateKey};
use crate::update::{self, Outcome, Report, Status, Updater};
use anyhow::{Context, Result};
use clap::Subcommand;
use rand::TryRngCore as _;
use tokio_util::sync::CancellationToken;

use crate::cli::exit;

#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Create an Ed25519 signing key pair for update manifests (run offline, by IT).
    Keygen {
        /// Writes <PREFIX>.key (private, mode 0600) and <PREFIX>.pub (public).
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Sign an update manifest, or (with --gateway) a desired configuration or a fleet
    /// command for one gateway. Adds or replaces this key's signature.
    Sign {
        /// The JSON file: a manifest, a desired configuration or a command payload.
        manifest: PathBuf,
        /// The private key file written by `keygen` (an update key for manifests, an
        /// operator key for fleet documents).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Sign a fleet document for this gateway: sets its "gateway" member first.
        #[arg(long, value_name = "GATEWAY-ID")]
        gateway: Option<String>,
        /// The document is a command published as cmd/<ID>: sets its "id" member first.
        #[arg(long, value_name = "ID", requires = "gateway")]
        command_id: Option<String>,
        /// Where to write the signed document (default: replace the input file).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Apply a signed manifest now: verify, download, install, switch. The service must then
    /// restart (the fleet command does that itself) for the health gate to run.
    Apply {
        /// The signed manifest JSON file.
        manifest: PathBuf,
        /// The id reported with every step (the fleet command id).
        #[arg(long, default_value = "cli")]
        command_id: String,
    },
    /// Apply an update trust document signed by a root key: revoke or add update signing
    /// keys, set the minimum version (`[update] root_keys` names the root keys).
    Trust {
        /// The signed trust document JSON file.
        document: PathBuf,
    },
    /// Show the running version, the installed versions and the last update operation.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn dispatch(cmd: UpdateCommand, config: impl FnOnce() -> Result<Config>) -> Result<u8> {
    match cmd {
        UpdateCommand::Keygen { out } => keygen(&out),
        UpdateCommand::Sign {
            manifest,
            key,
            gateway: None,
            output,
            ..
        } => sign(&manifest, &key, output.as_deref()),
        UpdateCommand::Sign {
            manifest,
            key,
            gateway: Some(gateway),
            command_id,
            output,
        } => sign_fleet(
            &manifest,
            &key,
            &gateway,
            command_id.as_deref(),
            output.as_deref(),
        ),
        UpdateCommand::Apply {
            manifest,
            command_id,
        } => apply(&config()?, &manifest, &command_id),
        UpdateCommand::Trust { document } => trust(&config()?, &document),
        UpdateCommand::Status { json } => status(&config()?, json),
    }
}

fn keygen(prefix: &Path) -> Result<u8> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .context("cannot read random bytes from the OS")?;
    let key = PrivateKey::from_seed(&seed);
    let secret = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .with_context(|| format!("cannot create {} (it must not exist yet)", secret.display()))?;
    writeln!(f, "{}", key.to_base64()).context("cannot write the private key")?;
    f.sync_all().context("cannot write the private key")?;
    std::fs::write(&public, format!("{}\n", key.public().to_base64()))
        .with_context(|| format!("cannot write {}", public.display()))?;
    println!("Private key: {} (keep it offline)", secret.display());
    println!("Public key:  {}", public.display());
    println!("Key id:      {}", key.public().id());
    println!(
        "For [update] trusted_keys (update key) or [fleet] operator_keys (operator key): \"{}\"",
        key.public().to_base64()
    );
    Ok(exit::OK)
}

fn trust(config: &Config, path: &Path) -> Result<u8> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let updater = Updater::open(&config.update)?;
    match updater.apply_trust(&bytes) {
        Ok((doc, key_id)) => {
            println!(
                "Update trust document {} applied (signed by root key {key_id}): {} key(s) revoked, {} added{}",
                doc.sequence,
                doc.revoked.len(),
                doc.update_keys.len(),
                doc.min_version
                    .map(|v| format!(", minimum version {v}"))
                    .unwrap_or_default()
            );
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("vitalgate: {}: {e}", path.display());
            Ok(exit::DATAERR)
        }
    }
}

fn sign(manifest_path: &Path, key_path: &Path, output: Option<&Path>) -> Result<u8> {
    let key_text = std::fs::read_to_string(key_path)
        .with_context(|| format!("cannot read {}", key_path.display()))?;
    let key = PrivateKey::from_base64(&key_text).with_context(|| key_path.display().to_string())?;
    let bytes = std::fs::read(manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let is_trust = serde_json::from_slice::<serde_json::Value>(&bytes)
        .is_ok_and(|v| v["type"] == update::trust::TYPE);
    let signed = if is_trust {
        // A trust document is signed by a root key, like any signed document.
        let mut doc: serde_json::Value = serde_json::from_slice(&bytes).context("not JSON")?;
        crate::signed::add_signature(&mut doc, &key)
            .with_context(|| manifest_path.display().to_string())?;
        let mut out = serde_json::to_vec_pretty(&doc).context("cannot serialize")?;
        out.push(b'\n');
        out
    } else {
        manifest::sign(&bytes, &key).with_context(|| manifest_path.display().to_string())?
    };
    let out = output.unwrap_or(manifest_path);
    update::state::write_atomic(out, &signed)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("Signed {} with key {}", out.display(), key.public().id());
    Ok(exit::OK)
}

/// Addresses a desired configuration or a command to one gateway (and command id) and
/// signs it: what `fleet::trust` checks on the gateway.
fn sign_fleet(
    path: &Path,
    key_path: &Path,
    gateway: &str,
    command_id: Option<&str>,
    output: Option<&Path>,
) -> Result<u8> {
    let key_text = std::fs::read_to_string(key_path)
        .with_context(|| format!("cannot read {}", key_path.display()))?;
    let key = PrivateKey::from_base64(&key_text).with_context(|| key_path.display().to_string())?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let Some(map) = doc.as_object_mut() else {
        anyhow::bail!("{} is not a JSON object", path.display());
    };
    gateway
        .parse::<crate::config::GatewayId>()
        .map_err(|e| anyhow::anyhow!("--gateway: {e}"))?;
    map.insert(
        crate::fleet::trust::GATEWAY.into(),
        serde_json::Value::String(gateway.into()),
    );
    match command_id {
        Some(id) => {
            crate::fleet::command::CommandId::parse(id)
                .map_err(|e| anyhow::anyhow!("--command-id: {e}"))?;
            map.insert(
                crate::fleet::trust::ID.into(),
                serde_json::Value::String(id.into()),
            );
        }
        None => {
            map.remove(crate::fleet::trust::ID);
        }
    }
    crate::signed::add_signature(&mut doc, &key).with_context(|| path.display().to_string())?;
    let mut out = serde_json::to_vec_pretty(&doc).context("cannot serialize")?;
    out.push(b'\n');
    let target = output.unwrap_or(path);
    update::state::write_atomic(target, &out)
        .with_context(|| format!("cannot write {}", target.display()))?;
    println!(
        "Signed {} for gateway {gateway}{} with key {}",
        target.display(),
        command_id
            .map(|id| format!(", command id {id}"))
            .unwrap_or_default(),
        key.public().id()
    );
    Ok(exit::OK)
}

fn print_report(r: &Report) {
    let status = match r.status {
        Status::InProgress => "in_progress",
        Status::Succeeded => "succeeded",
        Status::Failed => "failed",
    };
    println!(
        "update {} {}: {}{}",
        r.version,
        r.step.as_str(),
        status,
        r.reason
            .as_deref()
            .map(|x| format!(" ({x})"))
            .unwrap_or_default()
    );
}

fn apply(config: &Config, manifest_path: &Path, command_id: &str) -> Result<u8> {
    let bytes = std::fs::read(manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let updater = Updater::open(&config.update)?;
    let cancel = CancellationToken::new();
    let outcome = crate::cli::runtime()?.block_on(async {
        updater
            .start(&bytes, command_id, &mut |r| print_report(r), &cancel)
            .await
    })?;
    Ok(match outcome {
        Outcome::RestartRequired => {
            println!("Restart the service to run the new version's health gate.");
            exit::OK
        }
        Outcome::Done(r) if r.status == Status::Failed => exit::DATAERR,
        _ => exit::OK,
    })
}

fn status(config: &Config, json: bool) -> Result<u8> {
    let layout = update::install::Layout::new(&config.update.install_dir);
    let op_file = update::state::OperationFile::new(&config.update.download_dir);
    let operation = op_file.load()?;
    let current = layout.current_target()?;
    let marker = layout.read_marker()?;
    let mut versions: Vec<String> = std::fs::read_dir(config.update.install_dir.join("versions"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if json {
        let v = serde_json::json!({
            "running_version": update::running_version(),
            "current": current.as_ref().map(|p| p.display().to_string()),
            "installed_versions": versions,
            "pending": marker.as_ref().map(|m| serde_json::json!({
                "new_version": m.new_version,
                "previous_version": m.previous_version,
                "attempts_left": m.attempts_left,
            })),
            "operation": operation,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("Running version: {}", update::running_version());
        println!(
            "Current:         {}",
            current
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(packaged binary)".into())
        );
        println!("Installed:       {}", versions.join(", "));
        if let Some(m) = marker {
            println!(
                "On trial:        {} (previous {}, {} start(s) left)",
                m.new_version, m.previous_version, m.attempts_left
            );
        }
        match operation {
            Some(op) => println!(
                "Last operation:  {} for {} (command {}): {:?}",
                op.id, op.version, op.command_id, op.state
            ),
            None => println!("Last operation:  none"),
        }
    }
    Ok(exit::OK)
}
