//! How the virtual peripherals behave: what a read returns, what a write does (RACP, setting
//! the clock), and what they send once a client enables notifications or indications —
//! stored measurements, live streams, RACP record transfers — with the response codes and
//! ATT errors of the Bluetooth specifications (GATT Specification Supplement: Record Access
//! Control Point, CGM Session Start Time, Current Time; Core Specification Supplement: the
//! common profile and service error codes).

use std::sync::Arc;
use std::time::Duration;

use zbus::zvariant::Value;

use super::error::BluezError;
use super::payload;
use super::profile::Profile;
use super::world::{Core, Racp};

/// Time between records of a RACP transfer or a stored-records burst.
const RECORD_GAP: Duration = Duration::from_millis(15);
/// How long after indications are enabled a device starts sending stored measurements.
const STORED_DELAY: Duration = Duration::from_millis(150);

/// Stored record `i` of a characteristic that sends stored measurements.
pub(crate) fn stored_payload(characteristic: u16, i: u32) -> Vec<u8> {
    match characteristic {
        0x2A35 => payload::blood_pressure(i),
        0x2A1C => payload::temperature(i),
        0x2A9D => payload::weight(i),
        0x2A9C => payload::body_composition(i),
        0x2A5E => payload::plx_spot_check(i),
        _ => Vec::new(),
    }
}

/// Sends a notification or indication if the link is up and a client subscribed. Returns
/// whether it was sent.
pub(crate) async fn notify(core: &Core, address: &str, uuid: u16, value: &[u8]) -> bool {
    let path = {
        let mut w = core.world();
        let Some(d) = w.devices.get_mut(address) else {
            return false;
        };
        if !d.connected {
            return false;
        }
        let Some(c) = d.char_mut(uuid) else {
            return false;
        };
        if c.sessions.is_empty() {
            return false;
        }
        c.value = value.to_vec();
        c.path.clone()
    };
    core.changed(
        &path,
        "org.bluez.GattCharacteristic1",
        vec![("Value", Value::from(value.to_vec()))],
    )
    .await;
    true
}

fn epoch(core: &Core, address: &str) -> Option<u64> {
    core.world()
        .devices
        .get(address)
        .filter(|d| d.connected)
        .map(|d| d.epoch)
}

fn same_link(core: &Core, address: &str, epoch: u64) -> bool {
    core.world()
        .devices
        .get(address)
        .is_some_and(|d| d.connected && d.epoch == epoch)
}

/// The value a read returns.
pub(crate) fn read(core: &Core, address: &str, uuid: u16) -> Result<Vec<u8>, BluezError> {
    let w = core.world();
    let Some(d) = w.devices.get(address) else {
        return Err(BluezError::Failed("Not connected".into()));
    };
    let info = &d.spec.info;
    Ok(match uuid {
        0x2A29 => info.manufacturer.as_bytes().to_vec(),
        0x2A24 => info.model.as_bytes().to_vec(),
        0x2A25 => info.serial.as_bytes().to_vec(),
        0x2A26 => info.firmware.as_bytes().to_vec(),
        0x2A23 => info.system_id.to_vec(),
        0x2A2B => payload::current_time(d.device_now_ms(), 0),
        0x2A19 => vec![d.spec.battery_percent],
        0x2A49 => vec![0x07, 0x00],
        0x2A1D => vec![0x06],
        0x2A9E => 0x0000_0039u32.to_le_bytes().to_vec(),
        0x2A9B => 0x0000_0006u32.to_le_bytes().to_vec(),
        0x2A51 => vec![0xF0, 0x03],
        0x2A60 => vec![0x08, 0x00],
        0x2A38 => vec![0x01],
        0x2AA8 => payload::cgm_feature(),
        0x2AAA => {
            payload::cgm_session_start(payload::DateTime::from_unix_ms(d.cgm_session_start_ms))
        }
        _ => d
            .services
            .iter()
            .flat_map(|s| s.chars.iter())
            .find(|c| c.uuid == uuid)
            .map(|c| c.value.clone())
            .unwrap_or_default(),
    })
}

/// Handles a write the flags allowed.
pub(crate) async fn write(
    core: &Arc<Core>,
    address: &str,
    uuid: u16,
    value: &[u8],
) -> Result<(), BluezError> {
    match uuid {
        // Current Time (where writable) and A&D's Date Time set the device clock.
        0x2A2B | 0x2A08 => {
            let Some(ms) = payload::parse_clock_write(value) else {
                // 0xFF: Out of Range (CSS common profile error code).
                return Err(BluezError::att(0xFF));
            };
            let mut w = core.world();
            if let Some(d) = w.devices.get_mut(address) {
                d.clock_offset_ms = ms - super::world::now_ms();
            }
            Ok(())
        }
        0x2AAA => {
            let Some(ms) = payload::parse_clock_write(value) else {
                return Err(BluezError::att(0xFF));
            };
            let mut w = core.world();
            if let Some(d) = w.devices.get_mut(address) {
                d.cgm_session_start_ms = ms;
            }
            Ok(())
        }
        0x2A52 => racp_write(core, address, value),
        _ => Ok(()),
    }
}

/// Starts what a device does when a client enables notifications or indications.
pub(crate) fn notifications_enabled(core: &Arc<Core>, address: &str, uuid: u16) {
    let Some(epoch) = epoch(core, address) else {
        return;
    };
    let profile = {
        let w = core.world();
        match w.devices.get(address) {
            Some(d) => d.spec.profile,
            None => return,
        }
    };
    let core = core.clone();
    let address = address.to_owned();
    if profile.stored_characteristics().contains(&uuid) {
        tokio::spawn(async move {
            tokio::time::sleep(STORED_DELAY).await;
            send_stored(&core, &address, uuid, epoch).await;
        });
    } else if profile.live_characteristic() == Some(uuid) {
        let every = {
            let w = core.world();
            w.devices.get(&address).and_then(|d| d.spec.live_interval)
        };
        if let Some(every) = every {
            tokio::spawn(async move { live(&core, &address, uuid, epoch, every).await });
        }
    }
}

/// Sends every stored measurement not yet delivered; one leaves the queue only once sent.
pub(crate) async fn send_stored(core: &Core, address: &str, uuid: u16, epoch: u64) {
    loop {
        if !same_link(core, address, epoch) {
            return;
        }
        let next = {
            let w = core.world();
            w.devices
                .get(address)
                .and_then(|d| d.unsent.get(&uuid))
                .and_then(|q| q.front().cloned())
        };
        let Some(value) = next else {
            return;
        };
        if !notify(core, address, uuid, &value).await {
            return;
        }
        {
            let mut w = core.world();
            if let Some(q) = w
                .devices
                .get_mut(address)
                .and_then(|d| d.unsent.get_mut(&uuid))
            {
                q.pop_front();
            }
        }
        tokio::time::sleep(RECORD_GAP).await;
    }
}

async fn live(core: &Core, address: &str, uuid: u16, epoch: u64, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if !same_link(core, address, epoch) {
            return;
        }
        let value = {
            let mut w = core.world();
            let Some(d) = w.devices.get_mut(address) else {
                return;
            };
            if !d.is_notifying(uuid) {
                return;
            }
            d.live_counter += 1;
            if uuid == 0x2A5F {
                payload::PLX_CONTINUOUS_VECTOR.to_vec()
            } else if d.live_counter == 1 {
                payload::HEART_RATE_VECTOR.to_vec()
            } else {
                payload::heart_rate(d.live_counter)
            }
        };
        notify(core, address, uuid, &value).await;
    }
}

/// Which stored records a RACP operator and operand select.
fn select(records: &[u16], operator: u8, operand: &[u8], filter_ok: u8) -> Result<Vec<u16>, u8> {
    // Response codes: 3 invalid operator, 4 operator not supported, 5 invalid operand,
    // 9 operand not supported.
    let value = |at: usize| -> Result<u16, u8> {
        match operand.first() {
            None => Err(5),
            Some(f) if *f != filter_ok => Err(9),
            Some(_) => operand
                .get(1 + at * 2..3 + at * 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or(5),
        }
    };
    let all = records.to_vec();
    Ok(match operator {
        1 if operand.is_empty() => all,
        1 => return Err(5),
        2 => {
            let v = value(0)?;
            all.into_iter().filter(|r| *r <= v).collect()
        }
        3 => {
            let v = value(0)?;
            all.into_iter().filter(|r| *r >= v).collect()
        }
        4 => {
            let (lo, hi) = (value(0)?, value(1)?);
            if lo > hi {
                return Err(5);
            }
            all.into_iter().filter(|r| (lo..=hi).contains(r)).collect()
        }
        5 if operand.is_empty() => all.first().copied().into_iter().collect(),
        6 if operand.is_empty() => all.last().copied().into_iter().collect(),
        5 | 6 => return Err(5),
        0 | 7.. => return Err(3),
    })
}

fn racp_write(core: &Arc<Core>, address: &str, value: &[u8]) -> Result<(), BluezError> {
    let op = value.first().copied().unwrap_or(0);
    let operator = value.get(1).copied().unwrap_or(0);
    let operand = value.get(2..).unwrap_or(&[]).to_vec();
    let (profile, epoch, records, generation, flags) = {
        let mut w = core.world();
        let Some(d) = w.devices.get_mut(address) else {
            return Err(BluezError::Failed("Not connected".into()));
        };
        d.racp_requests.push(value.to_vec());
        // RACP writes need an authenticated (bonded) link: Insufficient Authentication.
        if !d.paired {
            return Err(BluezError::att(0x05));
        }
        // Before indications are enabled, meters answer with CCCD Improperly Configured.
        if !d.is_notifying(0x2A52) {
            return Err(BluezError::att(0xFD));
        }
        match d.racp {
            Racp::Running { .. } if op == 3 => {}
            // A second procedure while one runs: Procedure Already in Progress.
            Racp::Running { .. } => return Err(BluezError::att(0xFE)),
            Racp::Idle => {}
        }
        (
            d.spec.profile,
            d.epoch,
            d.racp_records.clone(),
            d.generation,
            d.glucose_flags.clone(),
        )
    };
    let core = core.clone();
    let address = address.to_owned();
    let respond = |core: Arc<Core>, address: String, bytes: Vec<u8>| {
        tokio::spawn(async move {
            tokio::time::sleep(RECORD_GAP).await;
            notify(&core, &address, 0x2A52, &bytes).await;
        });
    };
    match op {
        // Report stored records.
        1 => match select(&records, operator, &operand, 0x01) {
            Err(code) => respond(core, address, payload::racp_response(op, code)),
            Ok(selected) => {
                set_racp(&core, &address, Racp::Running { aborted: false });
                tokio::spawn(async move {
                    let records = Records {
                        selected,
                        generation,
                        flags,
                    };
                    transfer(&core, &address, profile, epoch, records).await;
                });
            }
        },
        // Report number of stored records.
        4 => match select(&records, operator, &operand, 0x01) {
            Err(code) => respond(core, address, payload::racp_response(op, code)),
            Ok(selected) => respond(core, address, payload::racp_count(selected.len() as u16)),
        },
        // Abort: only the Null operator, and it succeeds whether or not a report runs.
        3 if operator != 0 => respond(core, address, payload::racp_response(op, 3)),
        3 => {
            {
                let mut w = core.world();
                if let Some(d) = w.devices.get_mut(&address)
                    && matches!(d.racp, Racp::Running { .. })
                {
                    d.racp = Racp::Running { aborted: true };
                }
            }
            respond(core, address, payload::racp_response(op, 1));
        }
        // Deleting records is not supported by these meters, nor any other op code.
        _ => respond(core, address, payload::racp_response(op, 2)),
    }
    Ok(())
}

fn set_racp(core: &Core, address: &str, state: Racp) {
    let mut w = core.world();
    if let Some(d) = w.devices.get_mut(address) {
        d.racp = state;
    }
}

/// The records a RACP request selected, and what they are.
struct Records {
    selected: Vec<u16>,
    generation: u32,
    flags: std::collections::BTreeMap<u16, payload::GlucoseFlag>,
}

/// Sends the selected records, then the final response; stops on abort or a lost link, and
/// drops the link itself when a test asked for it after so many records.
async fn transfer(core: &Arc<Core>, address: &str, profile: Profile, epoch: u64, r: Records) {
    let Records {
        selected,
        generation,
        flags,
    } = r;
    let (measurement, per_notification) = match profile {
        Profile::Cgm => (0x2AA7, 3),
        _ => (0x2A18, 1),
    };
    let found = !selected.is_empty();
    for chunk in selected.chunks(per_notification) {
        tokio::time::sleep(RECORD_GAP).await;
        let drop_now = {
            let mut w = core.world();
            let Some(d) = w.devices.get_mut(address) else {
                return;
            };
            if !d.connected || d.epoch != epoch {
                return;
            }
            if d.racp == (Racp::Running { aborted: true }) {
                d.racp = Racp::Idle;
                return;
            }
            match d.drop_after_records.as_mut() {
                Some(0) => {
                    d.drop_after_records = None;
                    true
                }
                Some(n) => {
                    *n = n.saturating_sub(chunk.len() as u32);
                    false
                }
                None => false,
            }
        };
        if drop_now {
            super::link::disconnect(core, address).await;
            return;
        }
        let mut value = Vec::new();
        let mut context = None;
        for r in chunk {
            match profile {
                Profile::Cgm => value.extend(payload::cgm_record_of(*r, generation)),
                _ => {
                    let flag = flags.get(r).copied();
                    if flag == Some(payload::GlucoseFlag::WithContext) {
                        context = Some(payload::glucose_context(*r));
                    }
                    value.extend(payload::glucose_record(*r, generation, flag));
                }
            }
        }
        notify(core, address, measurement, &value).await;
        if let Some(c) = context {
            // The context follows its measurement (GLS: flag bit 4).
            tokio::time::sleep(RECORD_GAP).await;
            notify(core, address, 0x2A34, &c).await;
        }
    }
    tokio::time::sleep(RECORD_GAP).await;
    if !same_link(core, address, epoch) {
        return;
    }
    set_racp(core, address, Racp::Idle);
    let code = if found { 1 } else { 6 };
    notify(core, address, 0x2A52, &payload::racp_response(1, code)).await;
}

#[cfg(test)]
mod tests {
    use super::select;

    #[test]
    fn racp_operators_select_records() {
        let r: Vec<u16> = (1..=10).collect();
        assert_eq!(select(&r, 1, &[], 1), Ok(r.clone()));
        assert_eq!(select(&r, 3, &[1, 8, 0], 1), Ok(vec![8, 9, 10]));
        assert_eq!(select(&r, 3, &[1, 11, 0], 1), Ok(vec![]));
        assert_eq!(select(&r, 2, &[1, 2, 0], 1), Ok(vec![1, 2]));
        assert_eq!(select(&r, 4, &[1, 3, 0, 4, 0], 1), Ok(vec![3, 4]));
        assert_eq!(select(&r, 5, &[], 1), Ok(vec![1]));
        assert_eq!(select(&r, 6, &[], 1), Ok(vec![10]));
        assert_eq!(select(&r, 3, &[2, 0, 0, 0, 0, 0, 0, 0], 1), Err(9));
        assert_eq!(select(&r, 3, &[1, 8], 1), Err(5));
        assert_eq!(select(&r, 9, &[], 1), Err(3));
        assert_eq!(select(&r, 0, &[], 1), Err(3));
    }
}
