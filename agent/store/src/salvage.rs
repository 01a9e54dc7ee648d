//! Salvage of a store whose pages fail verification (`vitalgate run --recover`).
//!
//! A damaged page (a flipped bit on the flash, a torn write the log could not repair) makes
//! SQLCipher refuse every read that touches it, and with it every query that scans past it.
//! Salvage keeps every row that can still be read: a new store is built (under a staging
//! name) with the same key and the current schema; each table is copied row by row from the
//! old file, by rowid ranges that are halved
//! around an unreadable page until only the rowids it holds are left out (so the loss is
//! stated exactly, in rowids), or for a table without rowids, forwards and backwards from its
//! ends up to the damage. Rows that point at lost rows are dropped; readings whose delivery
//! state was lost are routed again (pending): every entry is a conditional create, so the
//! server keeps each once; when readings were lost, device cursors are reset so devices send
//! again what they still hold; readings whose device record was lost are quarantined (their
//! patient cannot be established) and the device id held by a placeholder. Only then, once
//! the new store is wholly in its file, is the damaged file kept under a second name (a hard
//! link; its log and index moved beside it), never deleted, and the new store renamed over
//! the store's path in one step.

use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};

use super::{Create, Keying, StoreError};

/// What salvage kept and left out of one table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableSalvage {
    pub table: String,
    pub kept: u64,
    /// Rowids that could not be read (a rowid table), exact.
    pub unreadable_rowids: u64,
    /// A table without rowids could not be read in full between its readable ends.
    pub partial: bool,
}

impl TableSalvage {
    fn new(table: &str) -> Self {
        Self {
            table: table.to_owned(),
            kept: 0,
            unreadable_rowids: 0,
            partial: false,
        }
    }
}

/// What a salvage did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SalvageReport {
    /// Where the damaged file now is.
    pub aside: PathBuf,
    pub tables: Vec<TableSalvage>,
    /// Readings routed again because their delivery state was lost.
    pub rerouted: u64,
}

/// The damaged store, opened read-only. A page that fails its check leaves the connection
/// failing every later read (SQLCipher's error sticks to the pager), so after each error the
/// connection is opened again.
struct Old<'a> {
    path: &'a Path,
    keying: &'a Keying,
    conn: Connection,
}

impl Old<'_> {
    /// Closes the connection before opening the next, so the new one finds nobody using the
    /// store and opens in SQLite's read-only mode, which never writes the damaged files.
    fn reset(&mut self) {
        #[allow(clippy::disallowed_methods)] // The store's own connection.
        let Ok(placeholder) = Connection::open_in_memory() else {
            return;
        };
        drop(std::mem::replace(&mut self.conn, placeholder));
        if let Ok(c) = super::open_read_only(self.path, self.keying, 2048) {
            self.conn = c;
        }
    }
}

/// Tables the new store's migration owns.
const SKIP: &[&str] = &["schema_compat", "sqlite_sequence"];
/// Rows copied per range before it is halved.
const RANGE: i64 = 4096;

/// Builds a new store from every readable row of the damaged one, then puts the damaged
/// files aside and the new store in their place, and returns what was kept and lost.
/// `destinations` are those readings are routed to.
///
/// Nothing happens to the damaged files until the new store is complete and on disk: the
/// new store is built under a staging name and renamed into place last. A store another
/// process has open is refused.
pub fn salvage(
    path: &Path,
    keying: &Keying,
    destinations: &[String],
) -> Result<SalvageReport, StoreError> {
    let io = |op| {
        move |source| StoreError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    };
    if super::wal::in_use(path).map_err(io("probe the store's lock"))? {
        return Err(StoreError::InUse {
            path: path.to_owned(),
        });
    }
    // The damaged file must open (its first page decrypts) before anything is built.
    drop(super::open_read_only(path, keying, 256)?);
    // What of the log SQLite will not use is lost with it; said in the event.
    let wal_damage = super::wal::inspect(path, super::PAGE_SIZE as usize)
        .map_err(io("read the write-ahead log"))?;
    let with_suffix = |base: &Path, suffix: &str| {
        let mut p = base.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let staging = with_suffix(path, ".salvage");
    for suffix in ["", "-wal", "-shm", ".new", ".new-journal"] {
        match std::fs::remove_file(with_suffix(&staging, suffix)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("remove an interrupted salvage")(e));
            }
            _ => {}
        }
    }
    let mut old = Old {
        path,
        keying,
        conn: super::open_read_only(path, keying, 2048)?,
    };
    let mut new = super::open_connection(&staging, keying, Create::IfMissing, 2048)?;
    let sql = |op| move |e| StoreError::from_sqlite(path, op, e);
    super::schema::migrate(&mut new).map_err(sql("migrate"))?;
    let tables: Vec<(String, bool)> = {
        let mut stmt = new
            .prepare(
                "SELECT name, sql LIKE '%WITHOUT ROWID%' FROM sqlite_schema \
                 WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid",
            )
            .map_err(sql("list tables"))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql("list tables"))?
            .collect::<Result<_, _>>()
            .map_err(sql("list tables"))?
    };
    new.execute_batch("BEGIN IMMEDIATE").map_err(sql("begin"))?;
    let mut report = Vec::new();
    for (table, without_rowid) in tables {
        if SKIP.contains(&table.as_str()) {
            continue;
        }
        let cols = common_columns(&old.conn, &new, &table);
        if cols.is_empty() {
            continue;
        }
        let t = if without_rowid {
            copy_by_scan(&mut old, &new, &table, &cols)
        } else {
            copy_by_rowid(&mut old, &new, &table, &cols)
        }
        .map_err(sql("copy a table"))?;
        report.push(t);
    }
    drop(old);
    // Rows that point at what was lost go: a delivery or quarantine state of a reading that
    // is not there would be taken over by the next reading given its id.
    new.execute_batch(
        "DELETE FROM deliveries WHERE reading_id NOT IN (SELECT id FROM readings);
         DELETE FROM quarantine WHERE reading_id NOT IN (SELECT id FROM readings);
         DELETE FROM bindings WHERE device_id NOT IN (SELECT id FROM devices);
         DELETE FROM device_status WHERE device_id NOT IN (SELECT id FROM devices);
         DELETE FROM cursors WHERE device_id NOT IN (SELECT id FROM devices);",
    )
    .map_err(sql("remove rows of lost readings"))?;
    // A reading whose device row was lost cannot be given a patient: it is kept out of
    // delivery (quarantined, with the reason) and its device id is held by a placeholder
    // that is never allowed, so no new device takes the id and, with it, these readings.
    let orphaned: Vec<i64> = {
        let mut stmt = new
            .prepare(
                "SELECT DISTINCT device_id FROM readings \
                 WHERE device_id NOT IN (SELECT id FROM devices)",
            )
            .map_err(sql("find readings without a device"))?;
        stmt.query_map([], |r| r.get(0))
            .map_err(sql("find readings without a device"))?
            .collect::<Result<_, _>>()
            .map_err(sql("find readings without a device"))?
    };
    for id in &orphaned {
        let address = format!("lost-device-{id}");
        let identity = super::codec::encode_identity(&vitalgate_drivers::DeviceIdentity::new(
            vitalgate_drivers::Transport::Serial,
            &address,
        ))?;
        new.execute(
            "INSERT INTO devices (id, transport, address, identity, first_seen_ms, last_seen_ms, allowed) \
             VALUES (?1, 'serial', ?2, ?3, 0, 0, 0)",
            rusqlite::params![id, address, identity],
        )
        .map_err(sql("hold a lost device's id"))?;
        for d in destinations {
            new.execute(
                "INSERT OR REPLACE INTO deliveries (reading_id, destination, state) \
                 SELECT id, ?2, 2 FROM readings WHERE device_id = ?1",
                rusqlite::params![id, d],
            )
            .map_err(sql("quarantine readings without a device"))?;
            new.execute(
                "INSERT INTO quarantine (reading_id, destination, http_status, outcome, created_ms) \
                 SELECT id, ?2, NULL, 'salvage: the device record of this reading was lost; \
                 its patient cannot be established', ?3 FROM readings WHERE device_id = ?1",
                rusqlite::params![id, d, vitalgate_core::time::now_ms()],
            )
            .map_err(sql("quarantine readings without a device"))?;
        }
    }
    // Readings lost: the devices' cursors go too, so each device sends again what it still
    // holds (deduplication absorbs what was kept).
    let readings_lost = report
        .iter()
        .any(|t| t.table == "readings" && (t.unreadable_rowids > 0 || t.partial));
    if readings_lost {
        new.execute_batch("DELETE FROM cursors")
            .map_err(sql("reset the cursors"))?;
    }
    // Readings that lost their delivery rows are routed again, to be sent (once) again: the
    // list is taken once, before any destination's rows are added.
    new.execute_batch(
        "CREATE TEMP TABLE unrouted AS SELECT r.id FROM readings r WHERE r.kept_as IS NULL \
         AND NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.reading_id = r.id)",
    )
    .map_err(sql("find readings to route again"))?;
    let rerouted = new
        .query_row("SELECT count(*) FROM unrouted", [], |r| r.get::<_, i64>(0))
        .map_err(sql("find readings to route again"))? as u64;
    for d in destinations {
        new.execute(
            "INSERT OR IGNORE INTO deliveries (reading_id, destination) SELECT id, ?1 FROM unrouted",
            [d],
        )
        .map_err(sql("route readings again"))?;
    }
    let stamp = vitalgate_core::time::now_ms();
    let aside = with_suffix(path, &format!(".damaged-{stamp}"));
    let salvage = SalvageReport {
        aside: aside.clone(),
        tables: report,
        rerouted,
    };
    new.execute(
        "INSERT INTO events (at_ms, severity, kind, detail) VALUES (?1, 'alarm', 'store-salvaged', ?2)",
        rusqlite::params![
            stamp,
            serde_json::json!({
                "copy": aside.file_name().map(|n| n.to_string_lossy().into_owned()),
                "tables": salvage.tables,
                "rerouted": salvage.rerouted,
                "cursors_reset": readings_lost,
                "wal_lost_commits": wal_damage.as_ref().map_or(0, |d| d.lost_commits),
            })
            .to_string()
        ],
    )
    .map_err(sql("record the salvage"))?;
    new.execute_batch("COMMIT; DROP TABLE temp.unrouted;")
        .map_err(sql("commit"))?;
    // Everything into the staging file itself, checked: a checkpoint that could not finish
    // (a full disk) would leave the rows in a log the renames below leave behind.
    let (busy, log, done): (i64, i64, i64) = new
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(sql("checkpoint the new store"))?;
    if busy != 0 || log != done {
        return Err(StoreError::TransactionFailed {
            path: staging.clone(),
            detail: "the salvaged store could not be checkpointed into its file".into(),
        });
    }
    new.close()
        .map_err(|(_, e)| sql("close the new store")(e))?;
    if std::fs::metadata(with_suffix(&staging, "-wal")).is_ok_and(|m| m.len() > 0) {
        return Err(StoreError::TransactionFailed {
            path: staging.clone(),
            detail: "the salvaged store's log is not empty after its checkpoint".into(),
        });
    }
    std::fs::File::open(&staging)
        .and_then(|f| f.sync_all())
        .map_err(io("sync the new store"))?;
    // The damaged file stays reachable under its new name (a second link), its log and index
    // move beside it, and the new store replaces it in one rename: the store's path never
    // stands empty.
    std::fs::hard_link(path, &aside).map_err(io("keep the damaged store"))?;
    for suffix in ["-wal", "-shm"] {
        match std::fs::rename(with_suffix(path, suffix), with_suffix(&aside, suffix)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("move the damaged store's log aside")(e));
            }
            _ => {}
        }
    }
    std::fs::rename(&staging, path).map_err(io("put the new store in place"))?;
    super::sync_parent(path).map_err(io("sync the state directory"))?;
    Ok(salvage)
}

/// Columns of `table` in both stores (an older store may lack a newer column), in the new
/// store's order. Reading the old schema touches only its first pages.
fn common_columns(old: &Connection, new: &Connection, table: &str) -> Vec<String> {
    let columns = |c: &Connection| -> Vec<String> {
        c.prepare("SELECT name FROM pragma_table_info(?1)")
            .and_then(|mut s| {
                s.query_map([table], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap_or_default()
    };
    let theirs = columns(old);
    columns(new)
        .into_iter()
        .filter(|c| theirs.contains(c))
        .collect()
}

fn insert_sql(table: &str, cols: &[String], with_rowid: bool) -> String {
    let mut names: Vec<String> = cols.iter().map(|c| format!("\"{c}\"")).collect();
    if with_rowid {
        names.insert(0, "rowid".into());
    }
    let marks = vec!["?"; names.len()].join(", ");
    format!(
        "INSERT OR IGNORE INTO \"{table}\" ({}) VALUES ({marks})",
        names.join(", ")
    )
}

/// Rows of a rowid range, or the error that stopped the read.
fn read_range(
    old: &Connection,
    table: &str,
    cols: &[String],
    from: i64,
    to: i64,
) -> rusqlite::Result<Vec<Vec<Value>>> {
    let names: Vec<String> = cols.iter().map(|c| format!("\"{c}\"")).collect();
    let mut stmt = old.prepare(&format!(
        "SELECT rowid, {} FROM \"{table}\" WHERE rowid BETWEEN ?1 AND ?2",
        names.join(", ")
    ))?;
    let n = cols.len() + 1;
    stmt.query_map([from, to], |r| {
        (0..n)
            .map(|i| r.get::<_, Value>(i))
            .collect::<Result<Vec<_>, _>>()
    })?
    .collect()
}

fn copy_by_rowid(
    old: &mut Old<'_>,
    new: &Connection,
    table: &str,
    cols: &[String],
) -> rusqlite::Result<TableSalvage> {
    let mut out = TableSalvage::new(table);
    // An INTEGER PRIMARY KEY is the rowid under its own name: then it is copied as itself.
    let alias: bool = new
        .query_row(
            "SELECT count(*) = 1 AND max(pk = 1 AND upper(type) = 'INTEGER')              FROM pragma_table_info(?1) WHERE pk > 0",
            [table],
            |r| r.get(0),
        )
        .unwrap_or(false);
    let insert = insert_sql(table, cols, !alias);
    // The largest rowid: from the table, or when the page that holds it cannot be read,
    // from any of its indexes (each entry carries its row's rowid). Failing both, ranges go
    // on until 64 in a row hold nothing readable, and the table counts as partial.
    let max_from = |old: &mut Old<'_>, q: String| {
        let m = old
            .conn
            .query_row(&q, [], |r| r.get::<_, Option<i64>>(0))
            .map(|m| m.unwrap_or(0))
            .ok();
        if m.is_none() {
            old.reset();
        }
        m
    };
    let indexes: Vec<String> = old
        .conn
        .prepare("SELECT name FROM pragma_index_list(?1)")
        .and_then(|mut s| {
            s.query_map([table], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();
    let mut max = max_from(old, format!("SELECT max(rowid) FROM \"{table}\""));
    if max.is_none() {
        for i in &indexes {
            let m = max_from(
                old,
                format!("SELECT max(rowid) FROM \"{table}\" INDEXED BY \"{i}\""),
            );
            max = max.max(m);
        }
    }
    out.partial = max.is_none();
    // The smallest rowid likewise (retention deletes the oldest readings, so live rowids
    // rarely start at 1).
    let mut min = max_from(old, format!("SELECT min(rowid) FROM \"{table}\""));
    if min.is_none() {
        for i in &indexes {
            let m = max_from(
                old,
                format!("SELECT min(rowid) FROM \"{table}\" INDEXED BY \"{i}\""),
            );
            min = match (min, m) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    let mut ranges: Vec<(i64, i64, bool)> = Vec::new();
    let (mut next, mut empty) = (min.unwrap_or(1).max(1), 0u32);
    loop {
        let (from, to, top) = match ranges.pop() {
            Some(r) => r,
            None => {
                let done = next == i64::MAX
                    || match max {
                        Some(m) => next > m,
                        None => empty >= 64,
                    };
                if done {
                    break;
                }
                let end = next.saturating_add(RANGE - 1).min(max.unwrap_or(i64::MAX));
                let r = (next, end, true);
                next = end.saturating_add(1);
                r
            }
        };
        let read = read_range(&old.conn, table, cols, from, to);
        if read.is_err() {
            old.reset();
        }
        match read {
            Ok(rows) => {
                if top {
                    empty = if rows.is_empty() { empty + 1 } else { 0 };
                }
                if rows.is_empty() {
                    continue;
                }
                let mut stmt = new.prepare_cached(&insert)?;
                for row in rows {
                    let values = if alias { &row[1..] } else { &row[..] };
                    stmt.execute(params_from_iter(values))?;
                    out.kept += 1;
                }
            }
            Err(_) if from == to => out.unreadable_rowids += 1,
            // Past what any index knows, an unreadable range is not split: it may hold
            // nothing at all.
            Err(_) if top && max.is_none() => empty += 1,
            Err(_) => {
                if top {
                    empty = 0;
                }
                let mid = from + (to - from) / 2;
                ranges.push((mid + 1, to, false));
                ranges.push((from, mid, false));
            }
        }
    }
    Ok(out)
}

/// A table without rowids: rows in key order from the start up to the damage, then from the
/// end backwards up to it.
fn copy_by_scan(
    old: &mut Old<'_>,
    new: &Connection,
    table: &str,
    cols: &[String],
) -> rusqlite::Result<TableSalvage> {
    let mut out = TableSalvage::new(table);
    let names: Vec<String> = cols.iter().map(|c| format!("\"{c}\"")).collect();
    let insert = insert_sql(table, cols, false);
    // The primary key's columns, for the backward scan.
    let pk: Vec<String> = old
        .conn
        .prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")
        .and_then(|mut s| {
            s.query_map([table], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();
    let order = |dir: &str| {
        pk.iter()
            .map(|c| format!("\"{c}\" {dir}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for dir in ["ASC", "DESC"] {
        if pk.is_empty() && dir == "DESC" {
            break;
        }
        let q = if pk.is_empty() {
            format!("SELECT {} FROM \"{table}\"", names.join(", "))
        } else {
            format!(
                "SELECT {} FROM \"{table}\" ORDER BY {}",
                names.join(", "),
                order(dir)
            )
        };
        let (kept, complete) = scan_once(&old.conn, new, &q, &insert, cols.len())?;
        out.kept += kept;
        if complete && dir == "ASC" {
            // Read in full: nothing to do backwards.
            return Ok(out);
        }
        if !complete {
            out.partial = true;
            old.reset();
        }
    }
    Ok(out)
}

/// Copies the rows `q` yields until it ends (`true`) or fails (`false`).
fn scan_once(
    old: &Connection,
    new: &Connection,
    q: &str,
    insert: &str,
    n: usize,
) -> rusqlite::Result<(u64, bool)> {
    let Ok(mut stmt) = old.prepare(q) else {
        return Ok((0, false));
    };
    let Ok(mut rows) = stmt.query([]) else {
        return Ok((0, false));
    };
    let mut ins = new.prepare_cached(insert)?;
    let mut kept = 0;
    loop {
        match rows.next() {
            Ok(Some(r)) => {
                let row = (0..n)
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<Result<Vec<_>, _>>()?;
                kept += ins.execute(params_from_iter(row))? as u64;
            }
            Ok(None) => return Ok((kept, true)),
            Err(_) => return Ok((kept, false)),
        }
    }
}
