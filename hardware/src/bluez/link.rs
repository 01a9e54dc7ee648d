//! Links and advertising: the scan that "sees" advertising peripherals while a client
//! discovers, connecting (reply first, GATT objects and ServicesResolved shortly after, as
//! BlueZ does for an uncached device), disconnecting and dropped links, and cleaning up the
//! sessions of clients that leave the bus.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use zbus::zvariant::Value;

use super::error::BluezError;
use super::objects::{Device, GattCharacteristic, GattDescriptor, GattService};
use super::world::Core;

/// How long after `Connect` returns the services are resolved.
const RESOLVE_DELAY: Duration = Duration::from_millis(100);

/// Puts a device's Device1 object on the bus (InterfacesAdded).
pub(crate) async fn export_device(core: &Arc<Core>, address: &str) {
    let path = {
        let mut w = core.world();
        let Some(d) = w.devices.get_mut(address) else {
            return;
        };
        if d.exported {
            return;
        }
        d.exported = true;
        d.path.clone()
    };
    let obj = Device {
        core: core.clone(),
        address: address.to_owned(),
        path: path.clone(),
    };
    let _ = core.conn.object_server().at(path, obj).await;
}

/// Takes a device off the bus (disconnecting it first), as RemoveDevice does.
pub(crate) async fn unexport_device(core: &Arc<Core>, address: &str) {
    disconnect(core, address).await;
    let path = {
        let mut w = core.world();
        let Some(d) = w.devices.get_mut(address) else {
            return;
        };
        if !d.exported {
            return;
        }
        d.exported = false;
        d.path.clone()
    };
    let _ = core.conn.object_server().remove::<Device, _>(path).await;
}

pub(crate) async fn connect(core: &Arc<Core>, address: &str) -> Result<(), BluezError> {
    let (path, epoch) = {
        let mut w = core.world();
        let Some(d) = w.devices.get_mut(address) else {
            return Err(BluezError::DoesNotExist("Does Not Exist".into()));
        };
        if d.connected {
            return Ok(());
        }
        if !d.advertising {
            return Err(BluezError::Failed("le-connection-abort-by-local".into()));
        }
        d.connected = true;
        d.epoch += 1;
        (d.path.clone(), d.epoch)
    };
    core.changed(&path, "org.bluez.Device1", vec![("Connected", true.into())])
        .await;
    let core = core.clone();
    let address = address.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(RESOLVE_DELAY).await;
        resolve_services(&core, &address, epoch).await;
    });
    Ok(())
}

async fn resolve_services(core: &Arc<Core>, address: &str, epoch: u64) {
    let objects = {
        let w = core.world();
        let Some(d) = w.devices.get(address) else {
            return;
        };
        if d.epoch != epoch || !d.connected {
            return;
        }
        d.services
            .iter()
            .map(|s| {
                (
                    s.path.clone(),
                    s.uuid,
                    s.chars
                        .iter()
                        .map(|c| (c.path.clone(), c.uuid, c.flags.clone(), c.cccd_path.clone()))
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    let device_path = {
        let w = core.world();
        w.devices
            .get(address)
            .map(|d| d.path.clone())
            .unwrap_or_default()
    };
    let server = core.conn.object_server();
    for (spath, suuid, chars) in objects {
        let _ = server
            .at(
                spath.clone(),
                GattService {
                    uuid: suuid,
                    device_path: device_path.clone(),
                },
            )
            .await;
        for (cpath, cuuid, flags, cccd) in chars {
            let _ = server
                .at(
                    cpath.clone(),
                    GattCharacteristic {
                        core: core.clone(),
                        address: address.to_owned(),
                        uuid: cuuid,
                        path: cpath.clone(),
                        service_path: spath.clone(),
                        flags,
                    },
                )
                .await;
            if let Some(dpath) = cccd {
                let _ = server
                    .at(
                        dpath.clone(),
                        GattDescriptor {
                            core: core.clone(),
                            address: address.to_owned(),
                            char_uuid: cuuid,
                            path: dpath,
                            char_path: cpath.clone(),
                        },
                    )
                    .await;
            }
        }
    }
    let uuids = {
        let mut w = core.world();
        let Some(d) = w.devices.get_mut(address) else {
            return;
        };
        if d.epoch != epoch || !d.connected {
            return;
        }
        d.services_resolved = true;
        d.services
            .iter()
            .map(|s| super::profile::uuid128(s.uuid))
            .collect::<Vec<_>>()
    };
    core.changed(
        &device_path,
        "org.bluez.Device1",
        vec![
            ("UUIDs", Value::from(uuids)),
            ("ServicesResolved", true.into()),
        ],
    )
    .await;
}

/// Ends the link (Disconnect, or the peer going away): ServicesResolved false, the GATT
/// objects removed, then Connected false; notify sessions end with the link.
pub(crate) async fn disconnect(core: &Arc<Core>, address: &str) {
    let (path, objects) = {
        let mut w = core.world();
        let Some(d) = w.devices.get_mut(address) else {
            return;
        };
        if !d.connected {
            return;
        }
        d.epoch += 1;
        d.services_resolved = false;
        d.racp = super::world::Racp::Idle;
        let mut objects = Vec::new();
        for s in &mut d.services {
            for c in &mut s.chars {
                c.sessions.clear();
                if let Some(p) = &c.cccd_path {
                    objects.push((2u8, p.clone()));
                }
                objects.push((1u8, c.path.clone()));
            }
            objects.push((0u8, s.path.clone()));
        }
        (d.path.clone(), objects)
    };
    core.changed(
        &path,
        "org.bluez.Device1",
        vec![("ServicesResolved", false.into())],
    )
    .await;
    let server = core.conn.object_server();
    for (kind, p) in objects {
        let _ = match kind {
            2 => server.remove::<GattDescriptor, _>(p).await,
            1 => server.remove::<GattCharacteristic, _>(p).await,
            _ => server.remove::<GattService, _>(p).await,
        };
    }
    {
        let mut w = core.world();
        if let Some(d) = w.devices.get_mut(address) {
            d.connected = false;
        }
    }
    core.changed(
        &path,
        "org.bluez.Device1",
        vec![("Connected", false.into())],
    )
    .await;
}

/// While any client discovers, every advertising, unconnected peripheral that passes the
/// merged filter is "seen" each `interval`: the first time its Device1 appears, later its
/// RSSI changes. UUID filters apply to advertisements only; known devices stay in the tree.
pub(crate) async fn scan(core: Arc<Core>, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    let mut round: i16 = 0;
    loop {
        tick.tick().await;
        round = round.wrapping_add(1);
        let seen: Vec<(String, bool, String)> = {
            let mut w = core.world();
            if w.discovering.is_empty() {
                continue;
            }
            // BlueZ merges the clients' filters: no UUID filter anywhere means no filtering.
            let open = w.discovering.values().any(|f| f.uuids.is_empty());
            let wanted: Vec<String> = w
                .discovering
                .values()
                .flat_map(|f| f.uuids.iter().cloned())
                .collect();
            w.devices
                .values_mut()
                .filter(|d| d.advertising && !d.connected)
                .filter(|d| open || d.advertised_uuids().iter().any(|u| wanted.contains(u)))
                .map(|d| {
                    d.rssi = d.spec.rssi - (round % 3);
                    (d.spec.address.clone(), d.exported, d.path.clone())
                })
                .collect()
        };
        for (address, exported, path) in seen {
            if exported {
                let rssi = core
                    .world()
                    .devices
                    .get(&address)
                    .map(|d| d.rssi)
                    .unwrap_or(0);
                core.changed(&path, "org.bluez.Device1", vec![("RSSI", rssi.into())])
                    .await;
            } else {
                export_device(&core, &address).await;
            }
        }
    }
}

/// Drops the discovery and notify sessions of clients that leave the bus, as BlueZ does, so
/// a crashed client does not leave notifications running for the next one.
pub(crate) async fn watch_clients(core: Arc<Core>) {
    let Ok(dbus) = zbus::fdo::DBusProxy::new(&core.conn).await else {
        return;
    };
    let Ok(mut changes) = dbus.receive_name_owner_changed().await else {
        return;
    };
    while let Some(signal) = changes.next().await {
        let Ok(args) = signal.args() else {
            continue;
        };
        if args.new_owner().is_some() || !args.name().starts_with(':') {
            continue;
        }
        let gone = args.name().to_string();
        super::pairing::client_gone(&core, &gone);
        let stopped = {
            let mut w = core.world();
            w.filters.remove(&gone);
            let had = w.discovering.remove(&gone).is_some();
            for d in w.devices.values_mut() {
                for s in &mut d.services {
                    for c in &mut s.chars {
                        c.sessions.remove(&gone);
                    }
                }
            }
            had && w.discovering.is_empty()
        };
        if stopped {
            core.changed(
                super::world::ADAPTER_PATH,
                "org.bluez.Adapter1",
                vec![("Discovering", false.into())],
            )
            .await;
        }
    }
}
