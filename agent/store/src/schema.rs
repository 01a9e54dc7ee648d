//! The store's schema and its forward migrations.
//!
//! The schema version is SQLite's `user_version`. Migrations only go forward, each in its own
//! transaction together with the version bump, so a crash mid-migration leaves the previous
//! version intact. A database from a newer Vitalgate is refused, never "repaired", unless it
//! says an older reader may use it.
//!
//! That is what makes a software-update rollback safe: the new version migrates the store at
//! its first start, and readings it accepts go into the migrated store, so restoring a copy
//! taken before the update would lose acknowledged readings. Instead, every migration is
//! declared additive ([`ADDITIVE`]: new tables, indexes, nullable or defaulted columns, which
//! code written for the previous version neither reads nor breaks) or breaking, and the store
//! records the oldest schema version a binary must know to use it (`schema_compat.min_reader`,
//! written with each migration). A previous version then opens a newer store whose
//! `min_reader` it meets, as is; it refuses only a truly incompatible one.

use rusqlite::Connection;

/// Each entry migrates from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the initial schema.
    r#"
    -- One row per physical device ever seen. `identity` is the latest DeviceIdentity
    -- (postcard), refreshed when the device reports new information.
    CREATE TABLE devices (
        id            INTEGER PRIMARY KEY,
        transport     TEXT    NOT NULL,
        address       TEXT    NOT NULL,
        identity      BLOB    NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms  INTEGER NOT NULL,
        -- 1 when the device is on this gateway's allowlist (paired or pre-provisioned).
        allowed       INTEGER NOT NULL DEFAULT 0,
        UNIQUE (transport, address)
    );

    -- Device plus user index -> patient. user_index -1 binds every user of the device.
    CREATE TABLE bindings (
        id          INTEGER PRIMARY KEY,
        device_id   INTEGER NOT NULL REFERENCES devices(id),
        user_index  INTEGER NOT NULL DEFAULT -1,
        patient     TEXT    NOT NULL,
        created_ms  INTEGER NOT NULL,
        UNIQUE (device_id, user_index)
    );

    -- Append-only. `measurement` is the drivers' Measurement (postcard, format 1); the
    -- columns beside it are what queries and deduplication need.
    CREATE TABLE readings (
        id               INTEGER PRIMARY KEY,
        device_id        INTEGER NOT NULL REFERENCES devices(id),
        dedup_key        TEXT    NOT NULL,
        kind             INTEGER NOT NULL,
        user_index       INTEGER,
        received_ms      INTEGER NOT NULL,
        received_mono_ns INTEGER NOT NULL,
        boot_id          BLOB    NOT NULL,
        clock_synced     INTEGER NOT NULL,
        clock_offset_ms  INTEGER,
        measurement      BLOB    NOT NULL,
        raw              BLOB    NOT NULL,
        UNIQUE (device_id, dedup_key)
    );
    CREATE TRIGGER readings_append_only BEFORE UPDATE ON readings
    BEGIN
        SELECT RAISE(ABORT, 'readings are append-only');
    END;

    -- Per-destination delivery state. state: 0 pending, 1 delivered, 2 quarantined.
    CREATE TABLE deliveries (
        reading_id      INTEGER NOT NULL,
        destination     TEXT    NOT NULL,
        state           INTEGER NOT NULL DEFAULT 0,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER,
        delivered_ms    INTEGER,
        PRIMARY KEY (reading_id, destination)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_queue ON deliveries (state, destination, reading_id);

    -- Readings a destination refused (4xx), with the server's OperationOutcome.
    CREATE TABLE quarantine (
        id          INTEGER PRIMARY KEY,
        reading_id  INTEGER NOT NULL,
        destination TEXT    NOT NULL,
        http_status INTEGER,
        outcome     TEXT,
        created_ms  INTEGER NOT NULL
    );
    CREATE INDEX quarantine_reading ON quarantine (reading_id);

    -- Alarms and notable changes. `detail` is JSON and never holds patient data.
    CREATE TABLE events (
        id        INTEGER PRIMARY KEY,
        at_ms     INTEGER NOT NULL,
        severity  TEXT    NOT NULL,
        kind      TEXT    NOT NULL,
        detail    TEXT    NOT NULL,
        published INTEGER NOT NULL DEFAULT 0
    );

    -- Who changed configuration or bindings, and when.
    CREATE TABLE audit (
        id     INTEGER PRIMARY KEY,
        at_ms  INTEGER NOT NULL,
        actor  TEXT    NOT NULL,
        action TEXT    NOT NULL,
        detail TEXT    NOT NULL
    );

    -- The last record downloaded per device and stream (RACP sequence number, serial
    -- record index), committed in the same transaction as the readings it covers.
    CREATE TABLE cursors (
        device_id  INTEGER NOT NULL REFERENCES devices(id),
        stream     TEXT    NOT NULL,
        value      TEXT    NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (device_id, stream)
    ) WITHOUT ROWID;
    "#,
    // 1 -> 2: fleet management (additive: new tables only).
    r#"
    -- Every command id received over MQTT, kept until its expiry so that a replayed id is
    -- refused across restarts; after that the expiry check refuses it. `reason` never holds
    -- patient data (it is published).
    CREATE TABLE fleet_commands (
        id          TEXT    PRIMARY KEY,
        type        TEXT    NOT NULL,
        received_ms INTEGER NOT NULL,
        expires_ms  INTEGER NOT NULL,
        status      TEXT    NOT NULL,
        reason      TEXT    NOT NULL DEFAULT '',
        updated_ms  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX fleet_commands_expiry ON fleet_commands (expires_ms);

    -- The desired configuration document last applied (one row), as received.
    CREATE TABLE fleet_config (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        version    INTEGER NOT NULL,
        document   TEXT    NOT NULL,
        applied_ms INTEGER NOT NULL
    );

    -- Pairing windows opened by command; pairing itself reads the latest.
    CREATE TABLE pairing_windows (
        id         INTEGER PRIMARY KEY,
        opened_ms  INTEGER NOT NULL,
        until_ms   INTEGER NOT NULL,
        command_id TEXT    NOT NULL
    );
    "#,
    // 2 -> 3: FHIR delivery. The server's id for a delivered reading, and per destination
    // the last success and the last error (never patient data: status codes and
    // OperationOutcome issue codes only).
    r#"
    ALTER TABLE deliveries ADD COLUMN server_id TEXT;
    CREATE TABLE destination_state (
        destination     TEXT    PRIMARY KEY,
        last_success_ms INTEGER,
        last_error_ms   INTEGER,
        last_error      TEXT
    ) WITHOUT ROWID;
    CREATE INDEX bindings_device ON bindings (device_id, user_index);
    "#,
    // 3 -> 4: the compatibility floor (see the module docs); `migrate` keeps it current
    // from this migration on.
    r#"
    CREATE TABLE schema_compat (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        min_reader INTEGER NOT NULL
    );
    "#,
    // 4 -> 5: pairing (additive). A window carries what pairing needs: the patient and user
    // index to bind, an optional single device, the PIN (cleared when the window closes),
    // and its outcome once the BLE side has acted on it (JSON: addresses and BlueZ error
    // names, never the PIN).
    r#"
    ALTER TABLE pairing_windows ADD COLUMN patient TEXT;
    ALTER TABLE pairing_windows ADD COLUMN user_index INTEGER NOT NULL DEFAULT -1;
    ALTER TABLE pairing_windows ADD COLUMN device TEXT;
    ALTER TABLE pairing_windows ADD COLUMN pin TEXT;
    ALTER TABLE pairing_windows ADD COLUMN started_ms INTEGER;
    ALTER TABLE pairing_windows ADD COLUMN closed_ms INTEGER;
    ALTER TABLE pairing_windows ADD COLUMN outcome TEXT;
    "#,
    // 5 -> 6: a device's battery level and signal strength as last read, each with when
    // (fleet telemetry, `vitalgate devices`). Not patient data.
    r#"
    CREATE TABLE device_status (
        device_id       INTEGER PRIMARY KEY REFERENCES devices(id),
        battery_percent INTEGER,
        battery_ms      INTEGER,
        rssi_dbm        INTEGER,
        rssi_ms         INTEGER
    ) WITHOUT ROWID;
    "#,
    // 6 -> 7: a reading that is kept on the gateway and never routed to a destination says
    // why: 'control-solution' (a meter's control test) and 'device-test' (data the device
    // marks as its own test or demonstration) are not the patient's, 'raw-sample' is one
    // sample of a continuous stream (what is delivered is the stream reduced by its policy).
    // Counted per device. NULL for every reading that is delivered.
    r#"
    ALTER TABLE readings ADD COLUMN kept_as TEXT;
    CREATE INDEX readings_kept ON readings (kept_as, received_ms) WHERE kept_as IS NOT NULL;
    "#,
    // 7 -> 8: what each destination was last sent of a shared resource (a Device), by its
    // conditional-create key: a digest of the content. A Device whose content changed since
    // (the device told more about itself) is sent as a conditional update instead of a
    // create, so the server's copy follows the device.
    r#"
    CREATE TABLE sent_resources (
        destination TEXT    NOT NULL,
        resource    TEXT    NOT NULL,
        digest      TEXT    NOT NULL,
        sent_ms     INTEGER NOT NULL,
        PRIMARY KEY (destination, resource)
    ) WITHOUT ROWID;
    "#,
    // 8 -> 9: secrets the gateway makes for itself and never shares: the key of the device
    // pseudonyms published on MQTT (see `pseudonym`).
    r#"
    CREATE TABLE gateway_secrets (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    "#,
];

/// Schema versions whose migration is additive: a binary that knows the version before it
/// can keep using the store. Any migration not listed is breaking and raises the floor, so
/// forgetting to list one is safe (a rollback then refuses the store instead of misreading
/// it). Only list a migration that adds tables, indexes, or columns that are nullable or have
/// a default, and that changes no meaning of what exists.
const ADDITIVE: &[u32] = &[2, 3, 4, 5, 6, 7, 8, 9];

/// The oldest schema version a binary must know to use a store at `version`: the last
/// breaking migration at or below it.
pub fn min_reader(version: u32) -> u32 {
    (1..=version)
        .rev()
        .find(|v| !ADDITIVE.contains(v))
        .unwrap_or(0)
}

/// Whether the migrations so far created `schema_compat` (asked, rather than compared with a
/// version number, so migrations can be renumbered around it).
fn has_compat_table(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'schema_compat'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// The compatibility floor a store at a version newer than this build declares, if any.
pub(crate) fn declared_min_reader(conn: &Connection) -> Option<u32> {
    conn.query_row(
        "SELECT min_reader FROM schema_compat WHERE id = 1",
        [],
        |r| r.get(0),
    )
    .ok()
}

/// The schema version this build writes.
pub const LATEST_VERSION: u32 = MIGRATIONS.len() as u32;

pub(crate) fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings the schema up to [`LATEST_VERSION`]. Returns the version found before migrating.
/// The caller has already refused newer versions that do not declare this build a
/// compatible reader; a compatible newer one is left as it is.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<u32> {
    let found = version(conn)?;
    for v in found..LATEST_VERSION {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(MIGRATIONS[v as usize])?;
        if has_compat_table(&tx)? {
            tx.execute(
                "INSERT INTO schema_compat (id, min_reader) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET min_reader = excluded.min_reader",
                [min_reader(v + 1)],
            )?;
        }
        tx.pragma_update(None, "user_version", v + 1)?;
        tx.commit()?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_the_last_breaking_migration() {
        assert_eq!(min_reader(1), 1);
        // 2, 3, 4 and 5 only add.
        assert_eq!(min_reader(4), 1);
        assert_eq!(min_reader(5), 1);
        for v in 1..=LATEST_VERSION {
            assert!(min_reader(v) <= v && min_reader(v) >= 1, "{v}");
        }
        assert!(ADDITIVE.iter().all(|v| *v >= 2 && *v <= LATEST_VERSION));
    }

    #[test]
    fn migrating_records_the_floor() {
        #[allow(clippy::disallowed_methods)] // The store's own test connection.
        let mut c = Connection::open_in_memory().expect("open");
        assert_eq!(migrate(&mut c).expect("migrate"), 0);
        assert_eq!(version(&c).expect("version"), LATEST_VERSION);
        assert_eq!(declared_min_reader(&c), Some(min_reader(LATEST_VERSION)));
        // Again: nothing to do, the floor unchanged.
        assert_eq!(migrate(&mut c).expect("migrate"), LATEST_VERSION);
        assert_eq!(declared_min_reader(&c), Some(min_reader(LATEST_VERSION)));
    }
}
