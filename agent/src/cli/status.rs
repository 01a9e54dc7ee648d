//! `vitalgate status`: what the store holds, what is waiting for delivery, and the fleet link.

use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::{CreateKey, Required, exit, find_key, load_config, when};
use crate::store::{self, StoreReader, StoreStatus};
pub(crate) fn status(
    explicit: Option<&Path>,
    state_dir: &Path,
    json: bool,
    verify: bool,
) -> Result<u8> {
    let config = load_config(explicit, Required::IfPresent)?;
    let keying = find_key(&config, state_dir, CreateKey::No)?;
    let path = config.store_path(state_dir);
    if verify {
        store::verify(&path, &keying)?;
    }
    let status = StoreReader::open(&path, &keying)?.status()?;
    let fleet = crate::fleet::status::read(state_dir)
        .with_context(|| format!("cannot read the fleet state in {}", state_dir.display()))?;
    let delivery = crate::cli::sync::destination_summaries(&config, &path, &keying)?;
    if json {
        let mut v = serde_json::to_value(&status)?;
        v["verified"] = serde_json::Value::Bool(verify);
        v["delivery"] = serde_json::to_value(&delivery)?;
        v["fleet"] = serde_json::to_value(&fleet)?;
        v["gateway_id"] = serde_json::Value::String(config.gateway.id.to_string());
        v["version"] = crate::update::running_version().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "Gateway:  {} (vitalgate {})",
            config.gateway.id,
            crate::update::running_version()
        );
        print_status(&status);
        crate::cli::sync::print_delivery(&delivery, vitalgate_core::time::now_ms());
        print_fleet(fleet.as_ref());
        if verify {
            println!("Integrity: every page verified.");
        }
    }
    Ok(exit::OK)
}

pub(crate) fn print_status(s: &StoreStatus) {
    let r = &s.readings;
    println!(
        "Store:    {} (schema {}, {})",
        s.path.display(),
        s.schema_version,
        bytesize::ByteSize::b(s.store_bytes)
    );
    println!(
        "Readings: {} total: {} pending, {} delivered, {} quarantined, {} unrouted",
        r.total, r.pending, r.delivered, r.quarantined, r.unrouted
    );
    match s.oldest_undelivered_ms {
        Some(ms) => println!("Oldest undelivered: received {}", when(ms)),
        None => println!("Oldest undelivered: none"),
    }
    // As the daemon last saw it (it records every change).
    match &s.clock {
        Some(c) if c.synchronized => println!(
            "Clock:    synchronised (as of {}: {})",
            when(c.since_ms),
            c.why
        ),
        Some(c) => println!(
            "Clock:    NOT synchronised since {}: {}. Readings that need the gateway's time are held until it is.",
            when(c.since_ms),
            c.why
        ),
        None => println!("Clock:    not reported yet (the daemon has not run)"),
    }
    if r.held_unbound > 0 {
        println!(
            "Held:     {} reading(s) with no patient binding for their device or user (see `vitalgate devices`)",
            r.held_unbound
        );
    }
    if r.not_patient > 0 {
        println!(
            "Kept:     {} reading(s) that are not patient data (control-solution tests, device test data), never sent",
            r.not_patient
        );
    }
    if s.destinations.is_empty() {
        println!("Destinations: none have readings routed to them");
    } else {
        println!("Destinations:");
        for d in &s.destinations {
            println!(
                "  {:<16} pending {:>8}  delivered {:>8}  quarantined {:>6}  last delivery {}",
                d.id,
                d.pending,
                d.delivered,
                d.quarantined,
                d.last_delivery_ms
                    .map(when)
                    .unwrap_or_else(|| "never".into())
            );
            for q in &d.quarantine_reasons {
                println!("    quarantined {:>6}: {}", q.readings, q.reason);
            }
        }
    }
    println!("Devices ({}):", s.devices.len());
    for d in &s.devices {
        println!(
            "  {:<6} {:<24} {:<28} last seen {}  {} readings{}",
            d.transport,
            d.address,
            format!(
                "{} {}",
                d.manufacturer.as_deref().unwrap_or("?"),
                d.model.as_deref().unwrap_or("?")
            ),
            // A device bound at provisioning has not been seen yet.
            if d.last_seen_ms > 0 {
                when(d.last_seen_ms)
            } else {
                "never".to_owned()
            },
            d.readings,
            match d.bindings {
                0 => String::new(),
                1 => ", bound".to_owned(),
                n => format!(", {n} users bound"),
            }
        );
        if d.control_tests + d.device_tests > 0 {
            println!(
                "         {} control-solution test(s), {} device test reading(s): kept, never sent",
                d.control_tests, d.device_tests
            );
        }
    }
    if s.alarms.is_empty() {
        println!("Alarms:   none");
    } else {
        println!("Alarms:");
        for a in &s.alarms {
            println!("  {} {} {}", when(a.at_ms), a.kind, a.detail);
        }
    }
}

fn print_fleet(fleet: Option<&crate::fleet::status::FleetStatus>) {
    let Some(f) = fleet else {
        println!("Fleet:    not connected to a broker (no [fleet] broker, or never run)");
        return;
    };
    println!(
        "Fleet:    {} to {} as {} since {} ({} reconnects), config version {}",
        f.connection,
        f.broker,
        f.gateway_id,
        f.since,
        f.reconnects,
        f.config_version
            .map_or_else(|| "none".to_owned(), |v| v.to_string())
    );
    if let Some(e) = &f.last_error {
        println!("  last error: {e}");
    }
    match &f.last_command {
        Some(c) => println!(
            "  last command: {} {} {} at {}{}",
            c.id,
            c.kind,
            c.status,
            c.at,
            if c.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.reason)
            }
        ),
        None => println!("  last command: none"),
    }
}
