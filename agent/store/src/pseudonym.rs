//! Device pseudonyms: what MQTT carries instead of a Bluetooth address or a USB serial
//! number. A device's pseudonym is `dev-` and 16 hex digits of HMAC-SHA256 over its address
//! (upper-cased), keyed by 32 random bytes this gateway makes once and keeps in its encrypted
//! store (`gateway_secrets`). The same device keeps its pseudonym on this gateway, so IT can
//! follow it across telemetry and events; only the gateway can map it back (`vitalgate
//! devices` shows both), and another gateway's pseudonym of the same device differs.

use hmac::{Hmac, Mac};
use rusqlite::{Connection, OptionalExtension};
use sha2::Sha256;

use vitalgate_core::secret::Secret;

const KEY_NAME: &str = "device-pseudonym-key";

/// The pseudonym key, made (from the OS CSPRNG) and stored if `create` and there is none.
pub fn key(conn: &Connection, create: bool) -> rusqlite::Result<Option<Secret<Vec<u8>>>> {
    if create {
        let mut fresh = [0u8; 32];
        rand::fill(&mut fresh);
        conn.execute(
            "INSERT OR IGNORE INTO gateway_secrets (name, value) VALUES (?1, ?2)",
            rusqlite::params![KEY_NAME, fresh.as_slice()],
        )?;
        zeroize::Zeroize::zeroize(&mut fresh);
    }
    let exists: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'gateway_secrets'",
        [],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(None);
    }
    conn.query_row(
        "SELECT value FROM gateway_secrets WHERE name = ?1",
        [KEY_NAME],
        |r| r.get::<_, Vec<u8>>(0),
    )
    .optional()
    .map(|v| v.map(Secret::new))
}

/// The pseudonym of `address` under `key`; `dev-unknown` without a key.
pub fn of(key: &[u8], address: &str) -> String {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail.
    let mac = (!key.is_empty())
        .then(|| Hmac::<Sha256>::new_from_slice(key).ok())
        .flatten();
    let Some(mut mac) = mac else {
        return "dev-unknown".into();
    };
    mac.update(address.trim().to_ascii_uppercase().as_bytes());
    let tag = mac.finalize().into_bytes();
    format!("dev-{}", hex::encode(&tag[..8]))
}

/// The members that name a device in what the gateway publishes: telemetry's and events'
/// `address`, a BLE event's `device`, a serial event's `port` (a USB serial number or a
/// by-id path holding one).
const DEVICE_MEMBERS: &[&str] = &["address", "device", "port"];

/// Replaces every device-naming string member in `value` (telemetry devices, event details)
/// with its pseudonym.
pub fn apply(key: &[u8], value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    serde_json::Value::String(s) if DEVICE_MEMBERS.contains(&k.as_str()) => {
                        *s = of(key, s);
                    }
                    other => apply(key, other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| apply(key, v)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_key_and_hide_the_address() {
        let a = of(&[1; 32], "00:1c:05:ff:e8:74");
        assert_eq!(a, of(&[1; 32], "00:1C:05:FF:E8:74"), "case does not matter");
        assert_ne!(
            a,
            of(&[2; 32], "00:1C:05:FF:E8:74"),
            "another gateway, another name"
        );
        assert_ne!(a, of(&[1; 32], "00:1C:05:FF:E8:75"));
        assert!(a.starts_with("dev-") && a.len() == 20, "{a}");
        let mut t = json!({"devices": [{"transport": "ble", "address": "00:1C:05:FF:E8:74",
                                         "model": "UA-651"}],
                           "detail": {"address": "usb-0403:6001-A10K", "error": "x"}});
        apply(&[1; 32], &mut t);
        let text = t.to_string();
        assert!(!text.contains("E8:74") && !text.contains("A10K"), "{text}");
        assert_eq!(t["devices"][0]["address"], a);
        assert_eq!(t["devices"][0]["model"], "UA-651");
        // The events that name a device otherwise: a BLE decoder problem, a serial port.
        let mut e = json!([
            {"kind": "ble-malformed-notification", "detail": {"device": "00:1C:05:FF:E8:74", "offset": 3}},
            {"kind": "serial-link-problems", "detail": {"port": "usb:0403:6001:A10K", "frames": 2}},
            {"kind": "fhir-rejected", "detail": {"destination": "hospital", "reading_id": 7}}
        ]);
        apply(&[1; 32], &mut e);
        let text = e.to_string();
        assert!(!text.contains("E8:74") && !text.contains("A10K"), "{text}");
        assert_eq!(e[0]["detail"]["device"], a);
        assert_eq!(e[2]["detail"]["destination"], "hospital");
    }

    #[test]
    fn the_key_is_made_once_and_kept() {
        #[allow(clippy::disallowed_methods)] // The store's own test connection.
        let mut c = Connection::open_in_memory().expect("open");
        assert!(key(&c, false).expect("no table").is_none());
        crate::schema::migrate(&mut c).expect("migrate");
        assert!(key(&c, false).expect("none yet").is_none());
        let k = key(&c, true).expect("made").expect("key");
        assert_eq!(k.expose().len(), 32);
        let again = key(&c, true).expect("kept").expect("key");
        assert_eq!(k.expose(), again.expose());
    }
}
