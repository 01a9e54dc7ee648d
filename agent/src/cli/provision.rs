//! `vitalgate provision`: an enrollment file to a configured gateway. The work is in
//! [`crate::provision`]; this is argument handling and what is printed.

use std::path::{Path, PathBuf};

use crate::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR};
use crate::provision::{self, DEFAULT_CREDENTIALS_DIR, Targets};
use anyhow::{Context, Result};
use clap::Args;

use crate::cli::exit;

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The enrollment file (TOML; see packaging/enrollment.sample.toml).
    #[arg(value_name = "ENROLLMENT_FILE")]
    enrollment: PathBuf,
    /// State directory, where the store with the bindings lives.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Folder for secret and certificate files.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CREDENTIALS_DIR)]
    credentials_dir: PathBuf,
    /// Replace a configuration that is already provisioned (a backup is kept as .bak).
    #[arg(long)]
    force: bool,
}

pub fn provision_cmd(explicit_config: Option<&Path>, args: ProvisionArgs) -> Result<u8> {
    // The configuration names files by absolute path: the daemon's working directory is
    // not the installer's.
    let absolute = |p: PathBuf| {
        std::path::absolute(&p).with_context(|| format!("cannot resolve {}", p.display()))
    };
    let targets = Targets {
        config: absolute(
            explicit_config
                .map(Path::to_owned)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH)),
        )?,
        state_dir: absolute(args.state_dir)?,
        credentials_dir: absolute(args.credentials_dir)?,
    };
    // Validate everything first: the existing configuration may be replaced, the enrollment
    // is complete and consistent, and the configuration it produces passes `config check`.
    let existing = provision::check_replace(&targets.config, args.force)?;
    let plan = provision::plan(
        &args.enrollment,
        &targets,
        existing.unwrap_or_else(Config::default),
    )?;

    // The key and the store must fit together before anything is written: an existing key
    // must be usable, and an existing store must open with it (a new key never opens an old
    // store).
    let key_file = plan.config.store.key_file.clone();
    let store_path = plan.config.store_path(&targets.state_dir);
    let existing_key = if key_file.exists() {
        Some(crate::store::key::read_key_file(&key_file)?)
    } else {
        None
    };
    if store_path.exists() {
        let Some(key) = &existing_key else {
            return Err(provision::ProvisionError::StoreWithoutKey {
                store: store_path,
                key: key_file,
            }
            .into());
        };
        crate::store::StoreReader::open(
            &store_path,
            &crate::store::Keying::Encrypted(key.clone()),
        )?;
    }

    let backup = provision::write_files(&plan, &targets)?;
    println!(
        "Provisioned gateway {} from {}.",
        plan.config.gateway.id,
        args.enrollment.display()
    );
    for f in &plan.files {
        println!(
            "  wrote {:<48} {} ({})",
            f.path.display(),
            if f.secret { "0600" } else { "0644" },
            f.what
        );
    }
    println!(
        "  wrote {:<48} 0644 (configuration; no secrets)",
        targets.config.display()
    );
    if let Some(b) = backup {
        println!("  kept the previous configuration as {}", b.display());
    }
    match &plan.config.fleet.broker {
        Some(b) => println!("  broker: {b}"),
        None => println!("  broker: none (fleet management off)"),
    }
    for d in &plan.config.destinations {
        println!("  destination {}: {}", d.id, d.base_url);
    }

    let key = if let Some(k) = existing_key {
        println!("  database key: kept the existing {}", key_file.display());
        k
    } else {
        let k = crate::store::key::create_key_file(&key_file)?;
        println!(
            "  database key: created {} (0600). Keep it: the store cannot be read without it.",
            key_file.display()
        );
        k
    };
    if !plan.bindings.is_empty() {
        provision::ensure_dir(&targets.state_dir, 0o700)?;
        crate::cli::runtime()?.block_on(provision::record_bindings(
            &plan.config,
            &store_path,
            crate::store::Keying::Encrypted(key),
            &plan.bindings,
        ))?;
        if let Some((uid, gid)) = provision::service_owner() {
            // The daemon runs as the service user and must open what root just created.
            let with = |suffix: &str| {
                let mut s = store_path.as_os_str().to_owned();
                s.push(suffix);
                PathBuf::from(s)
            };
            for p in [
                targets.state_dir.clone(),
                store_path.clone(),
                with("-wal"),
                with("-shm"),
            ] {
                if std::fs::symlink_metadata(&p).is_ok() {
                    provision::hand_over(&p, uid, gid)
                        .with_context(|| format!("cannot hand {} to the service", p.display()))?;
                }
            }
        }
        println!(
            "  bindings: {} recorded in the encrypted store {} (patient references are not shown)",
            plan.bindings.len(),
            store_path.display()
        );
        for b in &plan.bindings {
            let user = if b.user_index < 0 {
                "every user".to_owned()
            } else {
                format!("user {}", b.user_index)
            };
            println!("    {} {} ({user})", b.transport, b.address);
        }
    }
    println!(
        "Next: `vitalgate doctor` checks the adapter, ports, clock, disk, key, broker and endpoints."
    );
    Ok(exit::OK)
}
