//! Bit rot in the collector's SQLite store, for the fault-injection tests:
//! flip a bit inside chosen batches' stored frames, found in the file by
//! their bytes, with the collector stopped.

use std::path::Path;

use anyhow::{Context, ensure};

/// Bytes of a stored value searched for in the file: its start, which sits on
/// the row's own leaf page even when the rest overflows to other pages.
const WINDOW: usize = 128;

/// Checkpoints the WAL into `db` (the collector must be stopped), then flips
/// one bit inside each of the batches `ids`' stored frame (at byte
/// `WINDOW / 2` of the value, or its middle when shorter), in every copy of
/// those bytes in the file (a page's earlier version may linger in a free
/// page). Returns the copies flipped.
pub fn flip_store_frames(db: &Path, ids: &[i64]) -> anyhow::Result<usize> {
    let values: Vec<Vec<u8>> = {
        let conn =
            rusqlite::Connection::open(db).with_context(|| format!("open {}", db.display()))?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .context("checkpoint")?;
        ids.iter()
            .map(|id| {
                conn.query_row("SELECT frame FROM batches WHERE id = ?1", [id], |r| {
                    r.get::<_, Option<Vec<u8>>>(0)
                })
                .with_context(|| format!("batch {id}"))?
                .with_context(|| format!("batch {id} has no frame"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut file = std::fs::read(db).with_context(|| format!("read {}", db.display()))?;
    let mut flipped = 0;
    for (id, value) in ids.iter().zip(values) {
        let window = &value[..value.len().min(WINDOW)];
        ensure!(
            window.len() >= 16,
            "batch {id}: a {}-byte value",
            value.len()
        );
        let copies: Vec<usize> = file
            .windows(window.len())
            .enumerate()
            .filter(|(_, w)| *w == window)
            .map(|(at, _)| at)
            .collect();
        ensure!(
            !copies.is_empty(),
            "batch {id}: its frame is not found in the file"
        );
        for at in copies {
            file[at + window.len() / 2] ^= 0x10;
            flipped += 1;
        }
    }
    std::fs::write(db, file).with_context(|| format!("write {}", db.display()))?;
    Ok(flipped)
}

/// Every batch with a frame, `(id, agent)` in id order.
pub fn frame_ids(db: &Path) -> anyhow::Result<Vec<(i64, String)>> {
    let conn = rusqlite::Connection::open(db).with_context(|| format!("open {}", db.display()))?;
    let mut statement =
        conn.prepare("SELECT id, agent FROM batches WHERE frame IS NOT NULL ORDER BY id")?;
    let ids = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(i64, String)>>>()?;
    Ok(ids)
}
