//! `verify-store`: reads every raw batch the SQLite store still holds a frame
//! for and says which are intact, which are damaged and which cannot be read,
//! per agent, with SQLite's own structural check beside it.
//!
//! Why a command of its own: SQLite notices damage to its structure (b-tree
//! pages, indexes), not a flipped bit inside a row's value. The collector keeps
//! each frame's CRC-32 (`batches.frame_crc`, of the frame as received) and the
//! derivation stages quarantine a frame that fails it when they read it, but
//! they read a frame once: damage to a batch already derived is found only by
//! reading everything again, which is this. A batch is intact when its stored
//! value unpacks ([`super::frame::unpack`]), matches its checksum, decodes,
//! and holds the record count its row says. Rows whose frame retention
//! dropped (`frame IS NULL`) keep only their keys and are counted apart.
//!
//! It reads through one read transaction (one snapshot), so it may run beside
//! a live collector; it writes nothing. A row that SQLite itself cannot read
//! (a damaged page) does not stop the scan: the rows after it are looked up
//! one by one by id until the table reads again, and the ids that failed are
//! reported as unreadable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use super::backup::{BackupError, sqlite};
use super::{BUSY_TIMEOUT, DB_FILE_NAME};

/// Rows read per query while the table reads cleanly.
const ROWS_PER_READ: i64 = 256;

/// Damaged or unreadable batches listed by name (all are counted).
pub const LISTED_MAX: usize = 1000;

/// What one agent's batches came to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AgentTally {
    /// Batches whose frame checked out.
    pub intact_batches: u64,
    /// Their records (from the frames).
    pub intact_records: u64,
    /// Batches whose frame is damaged.
    pub damaged_batches: u64,
    /// Their records, as their rows say (the frame cannot be trusted).
    pub damaged_records: u64,
    /// Rows whose frame retention already dropped (keys only).
    pub expired_batches: u64,
}

/// One damaged batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedBatch {
    /// `batches.id`.
    pub id: i64,
    /// The agent that sent it.
    pub agent: String,
    /// Its sequence number.
    pub seq: u64,
    /// Its member.
    pub member: String,
    /// Records, as its row says.
    pub records: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// The outcome of one verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The file checked.
    pub path: PathBuf,
    /// `PRAGMA quick_check`: `ok`, or SQLite's first findings.
    pub structure: String,
    /// Rows of `batches` read.
    pub batches_read: u64,
    /// Per agent.
    pub agents: BTreeMap<String, AgentTally>,
    /// The damaged batches (the first [`LISTED_MAX`]).
    pub damaged: Vec<DamagedBatch>,
    /// Damaged batches in all.
    pub damaged_total: u64,
    /// Row ids SQLite could not read (the first [`LISTED_MAX`]), with its error.
    pub unreadable: Vec<(i64, String)>,
    /// Unreadable row ids in all.
    pub unreadable_total: u64,
    /// How long it took, ms.
    pub elapsed_ms: u64,
}

impl VerifyReport {
    /// Nothing damaged, nothing unreadable, the structure ok.
    pub fn is_clean(&self) -> bool {
        self.damaged_total == 0 && self.unreadable_total == 0 && self.structure == "ok"
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sum = |pick: fn(&AgentTally) -> u64| self.agents.values().map(pick).sum::<u64>();
        writeln!(f, "{}", self.path.display())?;
        writeln!(f, "  structure (PRAGMA quick_check): {}", self.structure)?;
        writeln!(
            f,
            "  batches read: {} ({} agents) in {} ms",
            self.batches_read,
            self.agents.len(),
            self.elapsed_ms
        )?;
        writeln!(
            f,
            "  intact:      {} batches, {} records",
            sum(|t| t.intact_batches),
            sum(|t| t.intact_records)
        )?;
        writeln!(
            f,
            "  damaged:     {} batches, {} records (as their rows say)",
            self.damaged_total,
            sum(|t| t.damaged_records)
        )?;
        writeln!(f, "  unreadable:  {} rows", self.unreadable_total)?;
        writeln!(
            f,
            "  expired:     {} batches (frame past raw retention; keys kept)",
            sum(|t| t.expired_batches)
        )?;
        for d in &self.damaged {
            writeln!(
                f,
                "  damaged batch id {} agent {} seq {} member {} ({} records): {}",
                d.id, d.agent, d.seq, d.member, d.records, d.reason
            )?;
        }
        for (id, error) in &self.unreadable {
            writeln!(f, "  unreadable row id {id}: {error}")?;
        }
        if self.is_clean() {
            write!(f, "store ok")
        } else {
            write!(
                f,
                "store DAMAGED: derived figures of the damaged batches are as they were when \
                 derived; restore a backup to get the frames back (docs/operations.md)"
            )
        }
    }
}

/// One row as read.
struct Row {
    id: i64,
    agent: String,
    seq: i64,
    member: String,
    records: i64,
    frame: Option<Vec<u8>>,
    crc: Option<i64>,
}

const COLUMNS: &str = "id, agent, seq, member, records, frame, frame_crc";

fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: row.get(0)?,
        agent: row.get(1)?,
        seq: row.get(2)?,
        member: row.get(3)?,
        records: row.get(4)?,
        frame: row.get(5)?,
        crc: row.get(6)?,
    })
}

/// Why the stored value is not the batch it was, or `None` when it is.
/// Returns the records the frame holds when intact.
fn check(row: &Row, stored: Vec<u8>) -> Result<u64, String> {
    let frame = super::frame::unpack(stored);
    if let Some(crc) = row.crc {
        // Stored as the u32 widened to i64.
        if u32::try_from(crc).ok() != Some(crc32fast::hash(&frame)) {
            return Err("the stored frame fails its checksum".to_string());
        }
    }
    let batch = hubwatch_shared::codec::decode(&frame)
        .map_err(|e| format!("the stored frame does not decode: {e}"))?;
    let count = batch.record_count() as u64;
    if u64::try_from(row.records).ok() != Some(count) {
        return Err(format!(
            "the row says {} records, its frame holds {count}",
            row.records
        ));
    }
    Ok(count)
}

/// Verifies the store in `store_dir` (its `hubwatch.db`). Blocking; reads the
/// whole raw batch log. `Err` only when the file cannot be opened at all.
pub fn verify(store_dir: &Path) -> Result<VerifyReport, BackupError> {
    let started = Instant::now();
    let path = store_dir.join(DB_FILE_NAME);
    if !path.exists() {
        return Err(BackupError::NoStore(path));
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite(&path, "opening the store"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sqlite(&path, "setting the busy timeout"))?;
    conn.execute_batch("BEGIN DEFERRED")
        .map_err(sqlite(&path, "starting the read transaction"))?;
    let mut report = VerifyReport {
        path: path.clone(),
        structure: quick_check(&conn),
        ..VerifyReport::default()
    };
    // The highest id ever given (AUTOINCREMENT), so a scan past a damaged
    // page knows where the table ends even when `max(id)` cannot be read.
    let last_id: i64 = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'batches'",
            [],
            |r| r.get(0),
        )
        .optional()
        .ok()
        .flatten()
        .or_else(|| {
            conn.query_row("SELECT max(id) FROM batches", [], |r| r.get(0))
                .ok()
                .flatten()
        })
        .unwrap_or(0);
    let mut after = 0i64;
    while after < last_id {
        let mut read = 0;
        let outcome = read_page(&conn, after, |row| {
            after = row.id;
            read += 1;
            tally(&mut report, row);
        });
        match outcome {
            Ok(()) if read == 0 => break,
            Ok(()) => {}
            // A damaged page: one id at a time until a row reads again.
            Err(_) => after = step_past_damage(&conn, after, last_id, &mut report),
        }
    }
    let _ = conn.execute_batch("COMMIT");
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

fn quick_check(conn: &Connection) -> String {
    let found: rusqlite::Result<Vec<String>> = conn
        .prepare("PRAGMA quick_check(20)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    match found {
        Ok(lines) if lines == ["ok"] => "ok".to_string(),
        Ok(lines) => lines.join("; "),
        Err(e) => format!("quick_check failed: {e}"),
    }
}

/// Hands the rows after `after` to `each`, one at a time (a frame may be
/// megabytes: none is held past its check), up to [`ROWS_PER_READ`].
fn read_page(conn: &Connection, after: i64, mut each: impl FnMut(Row)) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM batches WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let mut rows = statement.query(params![after, ROWS_PER_READ])?;
    while let Some(row) = rows.next()? {
        each(read_row(row)?);
    }
    Ok(())
}

/// Ids looked up one by one past damage before giving up (a damaged
/// `sqlite_sequence` could claim ids far beyond the table's end).
const STEP_MAX: i64 = 1_000_000;

/// Reads ids after `after` one by one until one reads (it is tallied) or
/// `last_id` is passed; the ids that fail are unreadable. Returns the last
/// id looked at.
fn step_past_damage(conn: &Connection, after: i64, last_id: i64, report: &mut VerifyReport) -> i64 {
    let mut id = after;
    while id < last_id {
        if id - after >= STEP_MAX {
            report.unreadable_total += 1;
            report.unreadable.push((
                id,
                format!(
                    "gave up: no row read in the {STEP_MAX} ids after {after}; the table claims \
                     ids up to {last_id}"
                ),
            ));
            return last_id;
        }
        id += 1;
        let one = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM batches WHERE id = ?1"))
            .and_then(|mut s| s.query_row([id], read_row).optional());
        match one {
            Ok(Some(row)) => {
                tally(report, row);
                return id;
            }
            Ok(None) => {}
            Err(e) => {
                report.unreadable_total += 1;
                if report.unreadable.len() < LISTED_MAX {
                    report.unreadable.push((id, e.to_string()));
                }
            }
        }
    }
    id
}

fn tally(report: &mut VerifyReport, mut row: Row) {
    report.batches_read += 1;
    let stored = row.frame.take();
    let tally = report.agents.entry(row.agent.clone()).or_default();
    let Some(stored) = stored else {
        tally.expired_batches += 1;
        return;
    };
    match check(&row, stored) {
        Ok(records) => {
            tally.intact_batches += 1;
            tally.intact_records += records;
        }
        Err(reason) => {
            let records = u64::try_from(row.records).unwrap_or(0);
            tally.damaged_batches += 1;
            tally.damaged_records += records;
            report.damaged_total += 1;
            if report.damaged.len() < LISTED_MAX {
                report.damaged.push(DamagedBatch {
                    id: row.id,
                    agent: row.agent,
                    seq: u64::from_ne_bytes(row.seq.to_ne_bytes()),
                    member: row.member,
                    records,
                    reason,
                });
            }
        }
    }
}
