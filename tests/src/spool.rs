//! Reads an agent's spool directory the way `agent/src/spool` documents it,
//! independently of the agent's code, so a test can say what the agent had
//! spooled: the cursor file (acknowledged seq, dropped count, highest seq ever
//! appended) and the sequence numbers of the records still in segment files.

use std::path::Path;

use anyhow::{Context, anyhow, ensure};

/// Bytes of the `cursor` file.
const CURSOR_BYTES: usize = 36;

/// The spool's `cursor` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolCursor {
    /// Every record with a seq at or below this is acknowledged.
    pub acked_seq: u64,
    /// Records dropped since the spool was created.
    pub dropped_records: u64,
    /// The highest seq ever appended to the spool.
    pub highest_appended_seq: u64,
}

impl SpoolCursor {
    /// Reads and checks `<spool_dir>/cursor`:
    /// `HWSC`, version u32, acked u64, dropped u64, highest appended u64, crc32.
    pub fn read(spool_dir: &Path) -> anyhow::Result<Self> {
        let path = spool_dir.join("cursor");
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        ensure!(
            bytes.len() == CURSOR_BYTES,
            "cursor is {} bytes, expected {CURSOR_BYTES}",
            bytes.len()
        );
        ensure!(bytes[..4] == *b"HWSC", "cursor magic is {:?}", &bytes[..4]);
        let crc = u32::from_le_bytes(le_array(&bytes[32..36])?);
        ensure!(
            crc32fast::hash(&bytes[..32]) == crc,
            "cursor checksum mismatch"
        );
        let u64_at = |i: usize| le_array(&bytes[i..i + 8]).map(u64::from_le_bytes);
        Ok(Self {
            acked_seq: u64_at(8)?,
            dropped_records: u64_at(16)?,
            highest_appended_seq: u64_at(24)?,
        })
    }
}

fn le_array<const N: usize>(bytes: &[u8]) -> anyhow::Result<[u8; N]> {
    bytes
        .try_into()
        .map_err(|_| anyhow!("expected {N} bytes, got {}", bytes.len()))
}

/// `(seq, records)` of every intact record in the segment files
/// (`seg-*.log`, each `[len u32][crc32 u32][seq u64][records u32][frame]`),
/// in file-name order, stopping in each file at the first damaged record.
pub fn spooled_records(spool_dir: &Path) -> anyhow::Result<Vec<(u64, u32)>> {
    Ok(intact_records(spool_dir)?
        .into_iter()
        .map(|r| (r.seq, r.records))
        .collect())
}

/// Where one intact record is in the spool.
struct RecordAt {
    path: std::path::PathBuf,
    offset: usize,
    size: usize,
    seq: u64,
    records: u32,
}

/// Every intact record in the segment files, in file-name order, stopping in
/// each file at the first damaged record.
fn intact_records(spool_dir: &Path) -> anyhow::Result<Vec<RecordAt>> {
    let mut names: Vec<_> = std::fs::read_dir(spool_dir)
        .with_context(|| format!("read {}", spool_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-") && n.ends_with(".log"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let path = spool_dir.join(&name);
        let bytes = std::fs::read(&path)?;
        let mut at = 0usize;
        while at + 20 <= bytes.len() {
            let len = u32::from_le_bytes(le_array(&bytes[at..at + 4])?) as usize;
            let crc = u32::from_le_bytes(le_array(&bytes[at + 4..at + 8])?);
            let end = at + 8 + len;
            if len < 12 || end > bytes.len() || crc32fast::hash(&bytes[at + 8..end]) != crc {
                break;
            }
            out.push(RecordAt {
                path: path.clone(),
                offset: at,
                size: end - at,
                seq: u64::from_le_bytes(le_array(&bytes[at + 8..at + 16])?),
                records: u32::from_le_bytes(le_array(&bytes[at + 16..at + 20])?),
            });
            at = end;
        }
    }
    Ok(out)
}

/// Appends a torn record to the newest segment file, as a crash in the middle
/// of an append leaves it: a header announcing a 4 KiB record followed by a
/// few bytes only. Returns the segment's path. The agent must be stopped.
pub fn append_torn_record(spool_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    use std::io::Write;
    let newest = std::fs::read_dir(spool_dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
        })
        .max()
        .ok_or_else(|| anyhow!("no segment file in {}", spool_dir.display()))?;
    let mut file = std::fs::OpenOptions::new().append(true).open(&newest)?;
    let mut torn = Vec::new();
    torn.extend_from_slice(&4096u32.to_le_bytes());
    torn.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    torn.extend_from_slice(&[0x42; 10]);
    file.write_all(&torn)?;
    file.sync_all()?;
    Ok(newest)
}

/// One byte flipped by [`flip_spool_bytes`]: the record it hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flip {
    /// The record's seq.
    pub seq: u64,
    /// The batch's records: what the agent must count as dropped.
    pub records: u32,
    /// Whether the byte was in the record's 20-byte header rather than its frame.
    pub in_header: bool,
}

/// Where [`flip_spool_bytes`] flips its bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlipWhere {
    /// Anywhere in the record, as bit rot would (headers are 20 bytes of
    /// records of kilobytes: rarely hit).
    Anywhere,
    /// Only in frames.
    Frames,
    /// Only in the 20-byte headers (length, checksum, seq, count).
    Headers,
}

/// Flips one random bit in each of `count` distinct intact records not yet
/// acknowledged (seq above `acked_seq`), as bit rot on the agent's disk would,
/// `place` deciding where in the record. Returns the records hit, in seq
/// order. The agent must be stopped.
pub fn flip_spool_bytes(
    spool_dir: &Path,
    acked_seq: u64,
    count: usize,
    place: FlipWhere,
    rng: &mut impl rand::Rng,
) -> anyhow::Result<Vec<Flip>> {
    use rand::seq::IndexedRandom;
    let candidates: Vec<RecordAt> = intact_records(spool_dir)?
        .into_iter()
        .filter(|r| r.seq > acked_seq && r.size > 20)
        .collect();
    ensure!(
        candidates.len() >= count,
        "{} pending records in {}, {count} wanted",
        candidates.len(),
        spool_dir.display()
    );
    let mut chosen: Vec<&RecordAt> = candidates.choose_multiple(rng, count).collect();
    chosen.sort_by_key(|r| r.seq);
    let mut flips = Vec::with_capacity(count);
    for record in chosen {
        let offset = match place {
            FlipWhere::Anywhere => rng.random_range(0..record.size),
            FlipWhere::Frames => rng.random_range(20..record.size),
            FlipWhere::Headers => rng.random_range(0..20),
        };
        let mut bytes = std::fs::read(&record.path)?;
        bytes[record.offset + offset] ^= 1 << rng.random_range(0..8);
        std::fs::write(&record.path, &bytes)?;
        flips.push(Flip {
            seq: record.seq,
            records: record.records,
            in_header: offset < 20,
        });
    }
    Ok(flips)
}
