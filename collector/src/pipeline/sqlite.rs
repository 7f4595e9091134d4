//! The pipeline's SQLite side: [`BatchLog`] over the store's `batches` table,
//! and [`save_cursor`], which every stage's SQLite seam calls inside the
//! transaction that writes the stage's rows (`derive_cursors`, `quarantine`).

use rusqlite::{OptionalExtension, Transaction, params};

use super::{BatchLog, CursorUpdate, StageCursor};
use crate::store::{Store, StoreError, StoredBatch, count_from_sql, seq_from_sql, seq_to_sql};

impl BatchLog for Store {
    fn read_page(
        &self,
        after: i64,
        ranges: &[(i64, i64)],
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredBatch>, StoreError> {
        self.read_with("reading a page of the batch log", |conn| {
            let mut page = Vec::new();
            let mut bytes = 0usize;
            // Gap rows first (a row committed late), then the new ones.
            let mut in_range = conn.prepare_cached(
                "SELECT id, agent, member, seq, received_ms, records, frame, frame_crc
                 FROM batches WHERE id BETWEEN ?1 AND ?2 ORDER BY id LIMIT ?3",
            )?;
            for &(first, last) in ranges {
                let room = max_rows.saturating_sub(page.len());
                if room == 0 || (bytes >= max_bytes && !page.is_empty()) {
                    return Ok(page);
                }
                let mut rows = in_range.query(params![first, last, limit(room)])?;
                while let Some(row) = rows.next()? {
                    let batch = stored_batch(row)?;
                    bytes = bytes.saturating_add(batch.frame.as_ref().map_or(0, Vec::len));
                    page.push(batch);
                    if bytes >= max_bytes {
                        return Ok(page);
                    }
                }
            }
            let room = max_rows.saturating_sub(page.len());
            if room == 0 {
                return Ok(page);
            }
            let mut newer = conn.prepare_cached(
                "SELECT id, agent, member, seq, received_ms, records, frame, frame_crc
                 FROM batches WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = newer.query(params![after, limit(room)])?;
            while let Some(row) = rows.next()? {
                let batch = stored_batch(row)?;
                bytes = bytes.saturating_add(batch.frame.as_ref().map_or(0, Vec::len));
                page.push(batch);
                if bytes >= max_bytes {
                    break;
                }
            }
            Ok(page)
        })
    }

    fn load_cursor(&self, stage: &str) -> Result<StageCursor, StoreError> {
        let row = self.read_with("reading a derive cursor", |conn| {
            conn.prepare_cached("SELECT last_id, gaps FROM derive_cursors WHERE name = ?1")?
                .query_row([stage], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })
                .optional()
        })?;
        let Some((hi, gaps)) = row else {
            return Ok(StageCursor::default());
        };
        StageCursor::from_stored(hi, &gaps).map_err(|detail| StoreError::Corrupt {
            path: self.path().to_path_buf(),
            detail: format!("derive cursor {stage:?} has unreadable gaps: {detail}"),
        })
    }

    fn backlog(&self, watermark: i64) -> Result<(u64, Option<i64>), StoreError> {
        self.read_with("reading a stage's backlog", |conn| {
            let count: i64 = conn
                .prepare_cached("SELECT count(*) FROM batches WHERE id > ?1")?
                .query_row([watermark], |row| row.get(0))?;
            let oldest: Option<i64> = conn
                .prepare_cached(
                    "SELECT received_ms FROM batches WHERE id > ?1 ORDER BY id LIMIT 1",
                )?
                .query_row([watermark], |row| row.get(0))
                .optional()?;
            Ok((u64::try_from(count).unwrap_or(0), oldest))
        })
    }

    fn cursor_received_since(&self, since_ms: i64) -> Result<StageCursor, StoreError> {
        self.read_with("finding the first batch of a window", |conn| {
            // `batches_by_received` bounds this to the window's rows.
            let first: Option<i64> = conn
                .prepare_cached("SELECT min(id) FROM batches WHERE received_ms >= ?1")?
                .query_row([since_ms], |row| row.get(0))?;
            let hi = match first {
                Some(id) => id.saturating_sub(1),
                None => conn
                    .prepare_cached("SELECT coalesce(max(id), 0) FROM batches")?
                    .query_row([], |row| row.get(0))?,
            };
            Ok(StageCursor::at(hi))
        })
    }

    fn hold_retention(&self, hold: Option<i64>) {
        self.set_retention_hold(hold);
    }
}

/// The stored cursor is not the one a page was read from.
#[derive(Debug, thiserror::Error)]
#[error("derive cursor {stage:?} moved: another process derives from this store")]
pub struct CursorMoved {
    /// The stage.
    pub stage: String,
}

/// Writes a stage's cursor (compare-and-set against `update.previous`) and
/// the batches it set aside. Call it inside the transaction that writes the
/// stage's rows: a moved cursor fails it, rolling the rows back too.
pub fn save_cursor(tx: &Transaction<'_>, update: &CursorUpdate<'_>) -> rusqlite::Result<()> {
    let previous = update.previous;
    let changed = tx
        .prepare_cached(
            "INSERT INTO derive_cursors (name, last_id, gaps) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id, gaps = excluded.gaps
             WHERE derive_cursors.last_id = ?4 AND derive_cursors.gaps = ?5",
        )?
        .execute(params![
            update.stage,
            update.cursor.hi,
            update.cursor.gaps_json(),
            previous.hi,
            previous.gaps_json()
        ])?;
    if changed != 1 {
        // rusqlite's carrier for an error of our own; the transaction rolls back.
        return Err(rusqlite::Error::ToSqlConversionFailure(Box::new(
            CursorMoved {
                stage: update.stage.to_string(),
            },
        )));
    }
    if !update.quarantined.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT OR REPLACE INTO quarantine (stage, batch_id, agent, member, seq, reason, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for q in update.quarantined {
            insert.execute(params![
                update.stage,
                q.batch_id,
                q.agent,
                q.member,
                seq_to_sql(q.seq),
                q.reason,
                update.now_ms
            ])?;
        }
    }
    Ok(())
}

fn stored_batch(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredBatch> {
    Ok(StoredBatch {
        id: row.get(0)?,
        agent: row.get(1)?,
        member: row.get(2)?,
        seq: seq_from_sql(row.get(3)?),
        received_ms: row.get(4)?,
        records: count_from_sql(row.get(5)?),
        frame: row
            .get::<_, Option<Vec<u8>>>(6)?
            .map(crate::store::frame::unpack),
        frame_crc: row
            .get::<_, Option<i64>>(7)?
            .and_then(|crc| u32::try_from(crc).ok()),
    })
}

fn limit(rows: usize) -> i64 {
    i64::try_from(rows).unwrap_or(i64::MAX)
}
