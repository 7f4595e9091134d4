//! The agent's on-disk spool: every batch is appended here, durably, before it is sent, and stays
//! until the collector acknowledges it, so neither a collector outage nor an agent crash loses data.
//!
//! # Format
//! The spool is a directory. Batches live in segment files `seg-<seq>.log` (the sequence number of
//! the segment's first record, 20 zero-padded digits, so names sort in sequence order). A segment
//! is a plain sequence of records, all integers little endian:
//!
//! ```text
//! [len u32][crc32 u32][seq u64][records u32][frame: len - 12 bytes]
//! ```
//!
//! `len` counts the bytes after the `crc32` field (12 + frame length); `crc32` (IEEE, crc32fast)
//! covers exactly those `len` bytes. Sequence numbers strictly increase across records and
//! segments. A new segment starts when the record would push the active one past
//! `segment_bytes` (default `min(max_bytes / 8, 16 MiB)`, at least 4 KiB, never above `max_bytes`);
//! a single record larger than that gets a segment of its own.
//!
//! The file `cursor` (36 bytes: `HWSC`, format version u32, acknowledged seq u64, cumulative
//! dropped records u64, highest seq ever appended u64, crc32 of the preceding 32 bytes) is
//! replaced atomically: write `cursor.tmp`, fsync, rename, fsync the directory. Every record with
//! a seq at or below the acknowledged seq is done; a segment holding only such records is deleted,
//! always *after* the cursor saying so is durable, so a crash between the two never brings acked
//! data back.
//!
//! # Durability
//! [`Spool::append`] writes the record and `fdatasync`s the segment before it returns (and fsyncs
//! the directory when it creates a segment), so "spooled" means "on disk". On open, each segment is
//! checked record by record; the segment is cut at the first torn or corrupt record (bad length,
//! checksum mismatch, sequence number not increasing), logged and counted ([`Recovery`]), and the
//! spool opens: damage is never an error loop. Intact records after the damage (found again by
//! their checksums, e.g. after a flipped byte) are first copied to a segment of their own, so a
//! flipped byte loses the record it hit, not the rest of its segment. Records found damaged
//! later by [`Spool::peek`] are cut the same way. A garbage cursor is set aside as `cursor.corrupt`
//! and the spool starts as if nothing still on disk were acknowledged: replays are possible (the
//! collector dedupes by `(agent, seq)`), loss is not.
//!
//! # Bound
//! [`Spool::bytes`] is the total length of the segment files (acknowledged records whose segment
//! is not deleted yet included; the 36-byte cursor file and directory entries excluded). After
//! [`Spool::open`] or an [`Spool::append`] that returned `Ok`, `bytes() <= max_bytes`: to make room,
//! append deletes the oldest segments (never the one being written) and counts their unacknowledged
//! records as dropped. A frame whose record alone exceeds `max_bytes` is refused with
//! [`SpoolError::TooLarge`].
//!
//! The module is synchronous (`std::fs`); the runtime wraps it in a mutex and calls it from a
//! blocking thread.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[cfg(test)]
mod tests;

/// Sequence numbers the clock floor grows by each millisecond: after an open, seqs start at
/// `now_unix_ms * SEQ_PER_MS` at least. Wide enough for 64 batches a millisecond at the
/// outbox's stride of 1024, and `now_unix_ms * SEQ_PER_MS` stays below `i64::MAX` (the
/// collector's column) for millennia.
pub const SEQ_PER_MS: u64 = 1 << 16;

/// Bytes before the frame in a record: len, crc32, seq, records.
pub const RECORD_HEADER_BYTES: u64 = 20;
/// Bytes of `len` and `crc32`, which `len` does not count.
const LEN_CRC_BYTES: u64 = 8;
/// Bytes of `seq` and `records`, which `len` counts besides the frame.
const SEQ_RECORDS_BYTES: u64 = 12;
/// Smallest default segment size.
const MIN_DEFAULT_SEGMENT_BYTES: u64 = 4 * 1024;
/// Largest default segment size.
const MAX_DEFAULT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Chunk used to checksum a frame without holding it whole in memory.
const SCAN_CHUNK_BYTES: usize = 64 * 1024;
/// Read buffer of `peek`, which usually reads one small batch (larger frames bypass it).
const PEEK_BUFFER_BYTES: usize = 8 * 1024;

const CURSOR_FILE: &str = "cursor";
const CURSOR_TMP_FILE: &str = "cursor.tmp";
const CURSOR_CORRUPT_FILE: &str = "cursor.corrupt";
const CURSOR_MAGIC: [u8; 4] = *b"HWSC";
const CURSOR_VERSION: u32 = 1;
const CURSOR_BYTES: usize = 36;

const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".log";

/// How big the spool may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolOptions {
    /// Upper bound of [`Spool::bytes`] (`agent.spool_max_bytes`).
    pub max_bytes: u64,
    /// Size at which a new segment is started; `None` picks `min(max_bytes / 8, 16 MiB)`, at
    /// least 4 KiB. Always capped at `max_bytes`.
    pub segment_bytes: Option<u64>,
}

impl SpoolOptions {
    /// Options with the default segment size.
    pub fn new(max_bytes: u64) -> Self {
        SpoolOptions {
            max_bytes,
            segment_bytes: None,
        }
    }

    /// The segment size actually used.
    pub fn effective_segment_bytes(&self) -> u64 {
        let wanted = self.segment_bytes.unwrap_or_else(|| {
            (self.max_bytes / 8).clamp(MIN_DEFAULT_SEGMENT_BYTES, MAX_DEFAULT_SEGMENT_BYTES)
        });
        wanted.clamp(1, self.max_bytes.max(1))
    }
}

/// One spooled batch, as returned by [`Spool::peek`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    /// The batch's sequence number.
    pub seq: u64,
    /// How many records the batch holds (counted as dropped if it is evicted or rejected).
    pub records: u32,
    /// The encoded batch, byte for byte as appended.
    pub frame: Vec<u8>,
}

/// What [`Spool::open`] found and repaired.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    /// Segments whose tail was torn or corrupt and was cut at the last good record.
    pub corrupt_tails: u64,
    /// Bytes cut off those tails.
    pub truncated_bytes: u64,
    /// Segment files in the spool after recovery.
    pub segments: usize,
    /// Unacknowledged batches waiting to be sent.
    pub pending_batches: u64,
    /// Records counted as dropped during open: those in cut tails whose headers were still legible
    /// (a torn last write is not counted: its append never returned), and those evicted because
    /// the spool was over `max_bytes` (e.g. the bound was lowered).
    pub dropped_records: u64,
    /// The cursor file was unreadable and was reset (set aside as `cursor.corrupt`): everything
    /// still on disk is treated as unacknowledged and the dropped count restarts from zero.
    pub cursor_reset: bool,
    /// Intact records found after damage in a segment and kept (copied to a segment of their
    /// own): a flipped byte costs the record it hit, not the rest of its segment.
    pub salvaged_batches: u64,
}

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A filesystem operation failed (disk full, unwritable or missing directory, I/O error).
    #[error("spool: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "append to".
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The frame's record alone is larger than the spool's bound.
    #[error(
        "spool: a frame of {frame_bytes} bytes needs {record_bytes} bytes on disk, more than the spool's bound of {max_bytes} bytes"
    )]
    TooLarge {
        /// Length of the frame.
        frame_bytes: usize,
        /// Length of its record (header included).
        record_bytes: u64,
        /// The spool's `max_bytes`.
        max_bytes: u64,
    },
    /// `append` was given a sequence number not above every one appended or acknowledged before.
    #[error(
        "spool: sequence number {seq} is not above the last appended or acknowledged one ({last}); allocate with next_seq and append in that order"
    )]
    SeqNotIncreasing {
        /// The sequence number given.
        seq: u64,
        /// The highest sequence number appended or acknowledged so far.
        last: u64,
    },
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What the cursor file holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CursorState {
    /// Every record with a seq at or below this is done (acknowledged, rejected or dropped).
    acked_seq: u64,
    /// Records dropped since the spool was created.
    dropped_total: u64,
    /// Highest seq ever appended, as of the last persist.
    highest_seq: u64,
}

impl CursorState {
    fn encode(&self) -> [u8; CURSOR_BYTES] {
        let mut out = [0u8; CURSOR_BYTES];
        out[0..4].copy_from_slice(&CURSOR_MAGIC);
        out[4..8].copy_from_slice(&CURSOR_VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&self.acked_seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.dropped_total.to_le_bytes());
        out[24..32].copy_from_slice(&self.highest_seq.to_le_bytes());
        let crc = crc32fast::hash(&out[0..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<CursorState, &'static str> {
        if bytes.len() != CURSOR_BYTES {
            return Err("wrong length");
        }
        if bytes[0..4] != CURSOR_MAGIC {
            return Err("bad magic bytes");
        }
        if crc32fast::hash(&bytes[0..32]) != le_u32(&bytes[32..36]) {
            return Err("checksum mismatch");
        }
        if le_u32(&bytes[4..8]) != CURSOR_VERSION {
            return Err("unknown format version");
        }
        Ok(CursorState {
            acked_seq: le_u64(&bytes[8..16]),
            dropped_total: le_u64(&bytes[16..24]),
            highest_seq: le_u64(&bytes[24..32]),
        })
    }
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(raw)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(raw)
}

/// In-memory state of one segment file.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Length of the file on disk.
    len: u64,
    /// End of the last good record. Below `len` only when cutting a damaged tail failed; such a
    /// segment is sealed (never appended to) and its tail is cut again at the next open.
    end: u64,
    /// Upper bound on the seqs in the segment (0 while it has never held a record).
    last_seq: u64,
    /// Offset of the first record not yet done.
    read_offset: u64,
    /// Records from `read_offset` to `end`: batches and the records they hold.
    unacked_batches: u64,
    unacked_records: u64,
}

/// The outcome of reading one record.
enum RecordRead {
    /// No bytes left before the end.
    End,
    /// A record that passed its checksum.
    Good { seq: u64, records: u32, size: u64 },
    /// A torn or corrupt record. `header` holds the (unverified) seq and records when a whole
    /// header was there; `size` the record's length when its length field fits in the file.
    Damaged {
        reason: &'static str,
        header: Option<(u64, u32)>,
        size: Option<u64>,
    },
}

/// Reads the record at `offset` (where `reader` is positioned), with the valid data ending at
/// `end`. With `frame_out`, the frame is returned in it; otherwise it is only checksummed, in
/// chunks, so a large frame costs no memory.
fn read_record<R: Read>(
    reader: &mut R,
    offset: u64,
    end: u64,
    frame_out: Option<&mut Vec<u8>>,
) -> io::Result<RecordRead> {
    let remaining = end.saturating_sub(offset);
    if remaining == 0 {
        return Ok(RecordRead::End);
    }
    if remaining < RECORD_HEADER_BYTES {
        return Ok(RecordRead::Damaged {
            reason: "partial record header",
            header: None,
            size: None,
        });
    }
    let mut header = [0u8; RECORD_HEADER_BYTES as usize];
    reader.read_exact(&mut header)?;
    let len = u64::from(le_u32(&header[0..4]));
    let crc = le_u32(&header[4..8]);
    let seq = le_u64(&header[8..16]);
    let records = le_u32(&header[16..20]);
    if len < SEQ_RECORDS_BYTES {
        return Ok(RecordRead::Damaged {
            reason: "length field below the header size",
            header: Some((seq, records)),
            size: None,
        });
    }
    let size = LEN_CRC_BYTES + len;
    if size > remaining {
        return Ok(RecordRead::Damaged {
            reason: "record runs past the end of the segment",
            header: Some((seq, records)),
            size: None,
        });
    }
    let frame_len = len - SEQ_RECORDS_BYTES;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[8..20]);
    match frame_out {
        Some(frame) => {
            // `frame_len` is bounded by the file's length, so this allocation is too.
            frame.clear();
            frame.resize(usize::try_from(frame_len).unwrap_or(usize::MAX), 0);
            reader.read_exact(frame)?;
            hasher.update(frame);
        }
        None => {
            let mut chunk = vec![0u8; SCAN_CHUNK_BYTES.min(frame_len as usize)];
            let mut left = frame_len;
            while left > 0 {
                let take = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                reader.read_exact(&mut chunk[..take])?;
                hasher.update(&chunk[..take]);
                left -= take as u64;
            }
        }
    }
    if hasher.finalize() != crc {
        return Ok(RecordRead::Damaged {
            reason: "checksum mismatch",
            header: Some((seq, records)),
            size: Some(size),
        });
    }
    Ok(RecordRead::Good { seq, records, size })
}

/// What the open-time check of one segment found.
struct SegmentScan {
    end: u64,
    last_seq: u64,
    read_offset: u64,
    unacked_batches: u64,
    unacked_records: u64,
    damage: Option<(u64, &'static str)>,
}

/// Checks every record of a segment; `prev_seq` is the last good seq before it (updated).
fn scan_segment(
    path: &Path,
    file_len: u64,
    prev_seq: &mut u64,
    acked_seq: u64,
) -> Result<SegmentScan, SpoolError> {
    let file = File::open(path).map_err(io_error("open segment", path))?;
    let mut reader = BufReader::with_capacity(SCAN_CHUNK_BYTES, file);
    let mut scan = SegmentScan {
        end: 0,
        last_seq: 0,
        read_offset: 0,
        unacked_batches: 0,
        unacked_records: 0,
        damage: None,
    };
    loop {
        let read = read_record(&mut reader, scan.end, file_len, None)
            .map_err(io_error("read segment", path))?;
        match read {
            RecordRead::End => break,
            RecordRead::Good { seq, .. } if seq <= *prev_seq => {
                scan.damage = Some((scan.end, "sequence number not increasing"));
                break;
            }
            RecordRead::Good { seq, records, size } => {
                *prev_seq = seq;
                scan.last_seq = seq;
                scan.end += size;
                if seq <= acked_seq {
                    scan.read_offset = scan.end;
                } else {
                    scan.unacked_batches += 1;
                    scan.unacked_records += u64::from(records);
                }
            }
            RecordRead::Damaged { reason, .. } => {
                scan.damage = Some((scan.end, reason));
                break;
            }
        }
    }
    Ok(scan)
}

/// What was in a cut tail, as far as it can be told.
#[derive(Debug, Default, Clone, Copy)]
struct LostTail {
    /// Unacknowledged records in it.
    records: u64,
    /// Highest seq in it (0 if none could be read), so it is never handed out again.
    max_seq: u64,
}

/// Best-effort account of what cutting a segment at `from` loses: the damaged record itself if
/// its length field leads to a clean record boundary (a flipped byte in a frame, not a torn
/// write), plus every checksummed record after it up to the next damage. A torn last write is not
/// counted: its append never returned.
fn inspect_lost_tail(path: &Path, from: u64, file_len: u64, acked_seq: u64) -> LostTail {
    let inspect = || -> io::Result<LostTail> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(from))?;
        let mut reader = BufReader::with_capacity(SCAN_CHUNK_BYTES, file);
        let mut offset = from;
        let (damaged_seq, damaged_records) = match read_record(&mut reader, offset, file_len, None)?
        {
            RecordRead::Damaged {
                header: Some((seq, records)),
                size: Some(size),
                ..
            } => {
                offset += size;
                (seq, records)
            }
            _ => return Ok(LostTail::default()),
        };
        let mut lost = LostTail::default();
        let count = |seq: u64, records: u32, lost: &mut LostTail| {
            lost.max_seq = lost.max_seq.max(seq);
            if seq > acked_seq {
                lost.records += u64::from(records);
            }
        };
        let mut first = true;
        loop {
            match read_record(&mut reader, offset, file_len, None)? {
                RecordRead::End => {
                    if first {
                        count(damaged_seq, damaged_records, &mut lost);
                    }
                    return Ok(lost);
                }
                RecordRead::Good { seq, records, size } => {
                    if first {
                        count(damaged_seq, damaged_records, &mut lost);
                        first = false;
                    }
                    count(seq, records, &mut lost);
                    offset += size;
                }
                RecordRead::Damaged { .. } => return Ok(lost),
            }
        }
    };
    inspect().unwrap_or_default()
}

/// An intact record found after damage: where it is and what it holds.
#[derive(Debug, Clone, Copy)]
struct FoundRecord {
    offset: u64,
    size: u64,
    seq: u64,
}

/// What [`salvage_after`] found after the damage in a segment.
#[derive(Debug, Default)]
struct Salvage {
    /// Intact records, in order, seqs increasing.
    records: Vec<FoundRecord>,
    /// Per damaged stretch: the (unverified) seq and record count its first header claims,
    /// believed only when that header is plausible (see [`salvage_after`]).
    damaged: Vec<(u64, u64)>,
}

impl Salvage {
    /// The records lost with the damaged stretches (those not yet acknowledged).
    fn lost(&self, acked_seq: u64) -> LostTail {
        let mut lost = LostTail::default();
        for &(seq, records) in &self.damaged {
            lost.max_seq = lost.max_seq.max(seq);
            if seq > acked_seq {
                lost.records += records;
            }
        }
        lost
    }
}

/// Damaged tails longer than this are cut without looking for intact records in them (a
/// segment is at most 16 MiB by default, or one record larger than that).
const SALVAGE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The record at `at` in `tail` if it is intact: (seq, records, size).
fn intact_at(tail: &[u8], at: usize) -> Option<(u64, u32, usize)> {
    let header = tail.get(at..at + RECORD_HEADER_BYTES as usize)?;
    let len = usize::try_from(le_u32(&header[0..4])).ok()?;
    if len < SEQ_RECORDS_BYTES as usize {
        return None;
    }
    let size = LEN_CRC_BYTES as usize + len;
    let covered = tail.get(at + LEN_CRC_BYTES as usize..at + size)?;
    (crc32fast::hash(covered) == le_u32(&header[4..8]))
        .then(|| (le_u64(&header[8..16]), le_u32(&header[16..20]), size))
}

/// Looks for intact records after damage at `from` in a segment: from each damaged stretch it
/// moves byte by byte until a record passes its checksum with a seq above the last good one and
/// below `below` (the next segment's first seq), then reads on from there. A damaged record's
/// own count is believed when its header's seq fits between its neighbours and its length leads
/// exactly to the next intact record. Best effort: an unreadable segment salvages nothing.
fn salvage_after(path: &Path, from: u64, file_len: u64, last_good: u64, below: u64) -> Salvage {
    let mut salvage = Salvage::default();
    if file_len.saturating_sub(from) > SALVAGE_MAX_BYTES {
        return salvage;
    }
    let Ok(tail) = File::open(path).and_then(|file| {
        let mut tail = vec![0u8; usize::try_from(file_len - from).unwrap_or(0)];
        file.read_exact_at(&mut tail, from)?;
        Ok(tail)
    }) else {
        return salvage;
    };
    let mut prev = last_good;
    let mut damaged_at = 0usize;
    // A damaged stretch not yet followed by an intact record.
    let mut open_stretch = true;
    let mut at = 1usize;
    while at + RECORD_HEADER_BYTES as usize <= tail.len() {
        // Cheap plausibility first: most offsets fail on the seq alone.
        let seq = le_u64(&tail[at + 8..at + 16]);
        let found = if seq > prev && seq < below {
            intact_at(&tail, at)
        } else {
            None
        };
        let Some((seq, _, size)) = found else {
            at += 1;
            continue;
        };
        salvage
            .damaged
            .extend(claimed_counts(&tail[damaged_at..at], prev, seq, false));
        open_stretch = false;
        salvage.records.push(FoundRecord {
            offset: from + at as u64,
            size: size as u64,
            seq,
        });
        prev = seq;
        at += size;
        // Read on while the records stay intact.
        while let Some((seq, _, size)) = intact_at(&tail, at).filter(|r| r.0 > prev && r.0 < below)
        {
            salvage.records.push(FoundRecord {
                offset: from + at as u64,
                size: size as u64,
                seq,
            });
            prev = seq;
            at += size;
        }
        if at >= tail.len() {
            break;
        }
        damaged_at = at;
        open_stretch = true;
        at += 1;
    }
    // Damage after the last intact record: counted too, unless it is a torn last write (a
    // record running past the end of the file, whose append never returned).
    if open_stretch && !salvage.records.is_empty() && damaged_at < tail.len() {
        salvage
            .damaged
            .extend(claimed_counts(&tail[damaged_at..], prev, below, true));
    }
    salvage
}

/// The records a frame holds, if it still decodes (a flip in a header, or in a value of the
/// frame, leaves it decodable): the count to trust over the header's.
fn decoded_records(frame: &[u8]) -> Option<u64> {
    hubwatch_shared::codec::decode(frame)
        .ok()
        .map(|batch| batch.records.len() as u64)
}

/// The (seq, records) of each damaged record in a stretch between intact ones (or, `trailing`,
/// after the last one). The records are told apart by where their frames start (the codec's
/// magic bytes, 20 bytes after each record's start), so a flip anywhere in one record, header
/// included, never hides the next one; a frame that still decodes gives its own count, any other
/// piece is counted by its header ([`claimed_count`]).
fn claimed_counts(stretch: &[u8], prev: u64, next_seq: u64, trailing: bool) -> Vec<(u64, u64)> {
    let header = RECORD_HEADER_BYTES as usize;
    let magic = hubwatch_shared::codec::MAGIC;
    // Record starts: 0, and every magic with a whole header's room before it.
    let mut starts = vec![0usize];
    starts.extend(
        stretch
            .windows(magic.len())
            .enumerate()
            .filter(|(i, window)| *i > header && *window == magic)
            .map(|(i, _)| i - header),
    );
    let mut out = Vec::new();
    let mut last = prev;
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(stretch.len());
        let piece = &stretch[start..end];
        let is_last = k + 1 == starts.len();
        // A torn last write (its length runs past the end of the file) was never spooled.
        let torn = trailing
            && is_last
            && piece.get(..4).is_none_or(|len| {
                LEN_CRC_BYTES.saturating_add(u64::from(le_u32(len))) > piece.len() as u64
            });
        if torn {
            break;
        }
        // Within a piece, records whose headers hold together are walked by their lengths (a
        // frame without the magic, e.g. a damaged one); the rest is one record.
        let mut at = 0usize;
        while let Some(h) = piece.get(at..at + header) {
            let len = le_u32(&h[0..4]) as usize;
            let seq = le_u64(&h[8..16]);
            let records = u64::from(le_u32(&h[16..20]));
            let size = LEN_CRC_BYTES as usize + len;
            if len < SEQ_RECORDS_BYTES as usize
                || at + size > piece.len()
                || seq <= last
                || seq >= next_seq
                || records > size as u64
            {
                break;
            }
            let frame = &piece[at + header..at + size];
            out.push((seq, decoded_records(frame).unwrap_or(records)));
            last = seq;
            at += size;
        }
        if at < piece.len() {
            let claimed = claimed_count(&piece[at..], last, next_seq);
            last = last.max(claimed.0);
            out.push(claimed);
        }
    }
    out
}

/// The (seq, records) the header of a damaged record claims, or `(0, 0)` when it cannot be
/// believed. One flipped byte damages one field: the records count is believed when the length
/// still spans exactly the stretch or the seq still fits between its neighbours' (then only a
/// flip in the count itself could mislead, and the frame's own count is taken when it still
/// decodes), and when it is no more than the stretch's bytes (a record holds at least one byte
/// each). The seq is the header's when it fits, else the lowest it can be.
fn claimed_count(stretch: &[u8], prev: u64, next_seq: u64) -> (u64, u64) {
    let Some(header) = stretch.get(..RECORD_HEADER_BYTES as usize) else {
        return (0, 0);
    };
    let len = u64::from(le_u32(&header[0..4]));
    let seq = le_u64(&header[8..16]);
    let records = u64::from(le_u32(&header[16..20]));
    let spans = LEN_CRC_BYTES.saturating_add(len) == stretch.len() as u64;
    let fits = seq > prev && seq < next_seq;
    if !(spans || fits) {
        return (0, 0);
    }
    // With `spans` the frame is the rest of the stretch; with a damaged length it still is,
    // when the stretch is this one record.
    let records = match decoded_records(&stretch[RECORD_HEADER_BYTES as usize..]) {
        Some(decoded) => decoded,
        None if records <= stretch.len() as u64 => records,
        None => return (0, 0),
    };
    (if fits { seq } else { prev.saturating_add(1) }, records)
}

/// Writes `records` of the segment at `from` to a new segment file `copy`, durably (temporary
/// file, fsync, rename, fsync of the directory), before the damaged segment is cut.
fn write_salvage(dir: &Path, copy: &Path, from: &Path, records: &[FoundRecord]) -> io::Result<()> {
    let source = File::open(from)?;
    let tmp = copy.with_extension("salvage");
    let mut out = File::create(&tmp)?;
    let mut buffer = Vec::new();
    for record in records {
        buffer.resize(usize::try_from(record.size).unwrap_or(usize::MAX), 0);
        source.read_exact_at(&mut buffer, record.offset)?;
        out.write_all(&buffer)?;
    }
    out.sync_all()?;
    drop(out);
    fs::rename(&tmp, copy)?;
    File::open(dir)?.sync_all()
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync directory", dir))
}

fn now_unix_ms() -> u64 {
    u64::try_from(crate::clock::now_ms()).unwrap_or(0)
}

/// The on-disk spool. See the module documentation for the format and guarantees.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the last one is the active segment appends go to.
    segments: VecDeque<Segment>,
    /// Open handle on the active segment, opened lazily.
    active_file: Option<File>,
    cursor: CursorState,
    /// `cursor` differs from the file (a persist failed or is pending); segments are not deleted
    /// while this is set.
    cursor_dirty: bool,
    next_seq: u64,
    corruptions: u64,
    /// Set while the directory could not be opened (see [`Spool::detached`]): holds the options
    /// to open it with, retried on every append.
    detached: Option<SpoolOptions>,
    /// Test hook: make every write fail as if the disk were full.
    #[cfg(test)]
    fail_writes: bool,
    /// Test hook: while the gate holds `true`, every write waits (a hung fsync).
    #[cfg(test)]
    pub(crate) hang_writes: Option<HangGate>,
}

/// Test hook: a gate that holds spool writes while it is closed.
#[cfg(test)]
pub(crate) type HangGate = std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>;

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .field("segments", &self.segments.len())
            .field("bytes", &self.bytes())
            .field("pending_batches", &self.pending_batches())
            .field("acked_seq", &self.cursor.acked_seq)
            .field("dropped_total", &self.cursor.dropped_total)
            .finish()
    }
}

enum CursorRead {
    Missing,
    Valid(CursorState),
    Garbage(&'static str),
}

fn read_cursor(dir: &Path) -> Result<CursorRead, SpoolError> {
    let path = dir.join(CURSOR_FILE);
    match fs::read(&path) {
        Ok(bytes) => Ok(match CursorState::decode(&bytes) {
            Ok(state) => CursorRead::Valid(state),
            Err(reason) => CursorRead::Garbage(reason),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(CursorRead::Missing),
        Err(e) => Err(io_error("read cursor", &path)(e)),
    }
}

impl Spool {
    /// Opens or creates the spool in `dir`, recovering from a crash: a torn or corrupt tail is cut
    /// at the last good record (`tracing::warn` + counted in [`Recovery`]), never an error loop.
    /// Segments holding only acknowledged records are deleted, and if the spool is over
    /// `max_bytes` (the bound was lowered) the oldest segments are evicted and counted.
    ///
    /// Fails only when the directory cannot be created or listed, or a segment cannot be read.
    pub fn open(dir: &Path, opts: SpoolOptions) -> Result<(Spool, Recovery), SpoolError> {
        fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        let mut recovery = Recovery::default();

        // A leftover from a crash in the middle of a cursor persist; the rename never happened.
        let tmp = dir.join(CURSOR_TMP_FILE);
        if let Err(e) = fs::remove_file(&tmp)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %tmp.display(), error = %e, "spool: cannot remove a stale temporary cursor");
        }

        let mut cursor_dirty = false;
        let mut cursor = match read_cursor(dir)? {
            CursorRead::Valid(state) => state,
            CursorRead::Missing => CursorState::default(),
            CursorRead::Garbage(reason) => {
                let path = dir.join(CURSOR_FILE);
                let aside = dir.join(CURSOR_CORRUPT_FILE);
                tracing::warn!(
                    path = %path.display(),
                    reason,
                    moved_to = %aside.display(),
                    "spool: the cursor file is unreadable; treating every batch still on disk as unacknowledged (the collector dedupes replays) and restarting the dropped count"
                );
                if let Err(e) = fs::rename(&path, &aside) {
                    tracing::warn!(path = %path.display(), error = %e, "spool: cannot set the unreadable cursor aside");
                }
                recovery.cursor_reset = true;
                cursor_dirty = true;
                CursorState::default()
            }
        };

        let mut names = Vec::new();
        for item in fs::read_dir(dir).map_err(io_error("list directory", dir))? {
            let item = item.map_err(io_error("list directory", dir))?;
            if let Some(first_seq) = item.file_name().to_str().and_then(parse_segment_name) {
                names.push((first_seq, item.path()));
            }
        }
        names.sort_unstable_by_key(|(first_seq, _)| *first_seq);

        let mut segments = VecDeque::with_capacity(names.len());
        let mut prev_seq = 0u64;
        let mut corruptions = 0u64;
        let mut highest_in_cut_tails = 0u64;
        let mut index = 0;
        while index < names.len() {
            let path = names[index].1.clone();
            index += 1;
            let file_len = fs::metadata(&path)
                .map_err(io_error("read metadata of", &path))?
                .len();
            let scan = scan_segment(&path, file_len, &mut prev_seq, cursor.acked_seq)?;
            let mut len = file_len;
            let mut salvaged_segment = None;
            if let Some((offset, reason)) = scan.damage {
                // Seqs of salvaged records stay below the next segment's first seq.
                let below = names.get(index).map_or(u64::MAX, |(first, _)| *first);
                let salvage = salvage_after(&path, offset, file_len, prev_seq, below);
                if let Some(first) = salvage.records.first().map(|r| r.seq) {
                    let copy = segment_path(dir, first);
                    match write_salvage(dir, &copy, &path, &salvage.records) {
                        Ok(()) => {
                            tracing::warn!(
                                path = %path.display(),
                                copy = %copy.display(),
                                batches = salvage.records.len(),
                                "spool: kept the intact records after a damaged one in a segment of their own"
                            );
                            recovery.salvaged_batches += salvage.records.len() as u64;
                            // A crash after an earlier salvage left this copy: it is rewritten
                            // here, not scanned again as a segment of its own.
                            names.retain(|(_, p)| *p != copy);
                            salvaged_segment = Some(copy);
                        }
                        Err(e) => tracing::warn!(
                            path = %copy.display(),
                            error = %e,
                            "spool: cannot write the intact records after a damaged one; they are cut with it"
                        ),
                    }
                }
                let tail = if salvaged_segment.is_some() {
                    salvage.lost(cursor.acked_seq)
                } else {
                    inspect_lost_tail(&path, offset, file_len, cursor.acked_seq)
                };
                let lost = tail.records;
                highest_in_cut_tails = highest_in_cut_tails.max(tail.max_seq);
                let cut = file_len - offset;
                let truncated = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(offset).and_then(|()| f.sync_data()));
                match truncated {
                    Ok(()) => len = offset,
                    Err(e) => tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "spool: cannot truncate a damaged segment; sealing it and ignoring its tail"
                    ),
                }
                tracing::warn!(
                    path = %path.display(),
                    offset,
                    reason,
                    cut_bytes = cut,
                    lost_records = lost,
                    "spool: cut a torn or corrupt segment tail at the last good record"
                );
                recovery.corrupt_tails += 1;
                recovery.truncated_bytes += cut;
                recovery.dropped_records += lost;
                // One per damaged record salvage told apart.
                corruptions += if salvaged_segment.is_some() {
                    salvage.damaged.len().max(1) as u64
                } else {
                    1
                };
                cursor.dropped_total = cursor.dropped_total.saturating_add(lost);
                cursor_dirty |= lost > 0;
            }
            segments.push_back(Segment {
                path,
                len,
                end: scan.end,
                last_seq: scan.last_seq,
                read_offset: scan.read_offset,
                unacked_batches: scan.unacked_batches,
                unacked_records: scan.unacked_records,
            });
            if let Some(copy) = salvaged_segment {
                let copy_len = fs::metadata(&copy)
                    .map_err(io_error("read metadata of", &copy))?
                    .len();
                let scan = scan_segment(&copy, copy_len, &mut prev_seq, cursor.acked_seq)?;
                segments.push_back(Segment {
                    path: copy,
                    len: copy_len,
                    end: scan.end,
                    last_seq: scan.last_seq,
                    read_offset: scan.read_offset,
                    unacked_batches: scan.unacked_batches,
                    unacked_records: scan.unacked_records,
                });
            }
        }
        // Seqs of cut records may have reached the collector: never hand them out again.
        let highest_on_disk = prev_seq.max(highest_in_cut_tails);
        if highest_on_disk > cursor.highest_seq {
            cursor.highest_seq = highest_on_disk;
            cursor_dirty = true;
        }

        let next_seq = cursor
            .highest_seq
            .saturating_add(1)
            .max(cursor.acked_seq.saturating_add(1))
            .max(now_unix_ms().saturating_mul(SEQ_PER_MS));
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes: opts.max_bytes,
            segment_bytes: opts.effective_segment_bytes(),
            segments,
            active_file: None,
            cursor,
            cursor_dirty,
            next_seq,
            corruptions,
            detached: None,
            #[cfg(test)]
            fail_writes: false,
            #[cfg(test)]
            hang_writes: None,
        };

        if spool.cursor_dirty
            && let Err(e) = spool.persist_cursor()
        {
            tracing::warn!(error = %e, "spool: cannot persist the cursor after recovery; will retry");
        }
        if !spool.cursor_dirty {
            spool.delete_done_segments(false);
        }
        if spool.bytes() > spool.max_bytes {
            let before = spool.cursor.dropped_total;
            if let Err(e) = spool.evict_oldest(0, false) {
                tracing::warn!(error = %e, "spool: over its bound after open and cannot evict yet; the next append retries");
            }
            recovery.dropped_records += spool.cursor.dropped_total - before;
        }

        recovery.segments = spool.segments.len();
        recovery.pending_batches = spool.pending_batches();
        tracing::info!(
            dir = %spool.dir.display(),
            segments = recovery.segments,
            pending_batches = recovery.pending_batches,
            bytes = spool.bytes(),
            acked_seq = spool.cursor.acked_seq,
            dropped_total = spool.cursor.dropped_total,
            corrupt_tails = recovery.corrupt_tails,
            "spool opened"
        );
        Ok((spool, recovery))
    }

    /// A spool whose directory could not be opened (unwritable, missing mount, full disk at
    /// start). It holds nothing: every [`Spool::append`] first tries to open the directory and,
    /// while that fails, returns the error, so the caller keeps batches in its bounded memory
    /// fallback. Sequence numbers start at `now_unix_ms * SEQ_PER_MS` as after any open, so they stay
    /// above everything the directory may already hold. Once the directory opens, its backlog
    /// and counts are taken over and what was dropped meanwhile is added to its dropped total.
    pub fn detached(dir: &Path, opts: SpoolOptions) -> Spool {
        Spool {
            dir: dir.to_path_buf(),
            max_bytes: opts.max_bytes,
            segment_bytes: opts.effective_segment_bytes(),
            segments: VecDeque::new(),
            active_file: None,
            cursor: CursorState::default(),
            cursor_dirty: false,
            next_seq: now_unix_ms().saturating_mul(SEQ_PER_MS),
            corruptions: 0,
            detached: Some(opts),
            #[cfg(test)]
            fail_writes: false,
            #[cfg(test)]
            hang_writes: None,
        }
    }

    /// Whether the spool has its directory (false while [`Spool::detached`]).
    pub fn is_attached(&self) -> bool {
        self.detached.is_none()
    }

    /// Tries to open the directory of a detached spool and take it over.
    fn attach(&mut self) -> Result<(), SpoolError> {
        let Some(opts) = self.detached else {
            return Ok(());
        };
        let (mut opened, recovery) = Spool::open(&self.dir, opts)?;
        opened.next_seq = opened.next_seq.max(self.next_seq);
        opened.corruptions = opened.corruptions.saturating_add(self.corruptions);
        if self.cursor.dropped_total > 0 {
            opened.add_dropped(self.cursor.dropped_total);
        }
        tracing::warn!(
            dir = %self.dir.display(),
            pending_batches = recovery.pending_batches,
            dropped_while_detached = self.cursor.dropped_total,
            "spool directory usable again: attached"
        );
        *self = opened;
        Ok(())
    }

    /// Allocates the sequence number for the next batch. On open, resumes at
    /// `max(last seq ever appended + 1, acked + 1, now_unix_ms * SEQ_PER_MS)` so seqs are never
    /// reused even if batches held only in memory were lost (as long as fewer than `SEQ_PER_MS`
    /// seqs are handed out per millisecond: the outbox takes 1024 per batch).
    pub fn next_seq(&mut self) -> u64 {
        let seq = self
            .next_seq
            .max(self.cursor.highest_seq.saturating_add(1))
            .max(self.cursor.acked_seq.saturating_add(1));
        self.next_seq = seq.saturating_add(1);
        seq
    }

    /// Appends a frame (already encoded, containing `seq`) with its record count; writes and
    /// fdatasyncs before returning. `seq` must be above every seq appended or acknowledged before
    /// ([`SpoolError::SeqNotIncreasing`] otherwise), so append in [`Spool::next_seq`] order.
    ///
    /// If the spool would exceed `max_bytes`, deletes the OLDEST segments first (never the one
    /// being written) and adds their unacknowledged records to the dropped count. Returns the
    /// records dropped by this call. On an IO error (disk full, unwritable directory) returns `Err`
    /// and leaves the spool consistent (a partial write is truncated away, or cut at the next
    /// open), so the caller can keep the batch in memory and retry later.
    pub fn append(&mut self, seq: u64, records: u32, frame: &[u8]) -> Result<u64, SpoolError> {
        self.attach()?;
        let last = self.cursor.highest_seq.max(self.cursor.acked_seq);
        if seq <= last {
            return Err(SpoolError::SeqNotIncreasing { seq, last });
        }
        let record_bytes = RECORD_HEADER_BYTES.saturating_add(frame.len() as u64);
        let len_field_fits =
            u32::try_from(SEQ_RECORDS_BYTES.saturating_add(frame.len() as u64)).is_ok();
        if !len_field_fits || record_bytes > self.max_bytes {
            return Err(SpoolError::TooLarge {
                frame_bytes: frame.len(),
                record_bytes,
                max_bytes: self.max_bytes,
            });
        }
        if self.cursor_dirty
            && let Err(e) = self.persist_cursor()
        {
            tracing::debug!(error = %e, "spool: cursor still cannot be persisted");
        }

        let needs_new_segment = match self.segments.back() {
            None => true,
            Some(active) => {
                active.end < active.len
                    || (active.len > 0
                        && active.len.saturating_add(record_bytes) > self.segment_bytes)
            }
        };
        if needs_new_segment {
            self.start_segment(seq)?;
        }
        let dropped = self.evict_oldest(record_bytes, true)?;
        self.write_record(seq, records, frame)?;
        Ok(dropped)
    }

    /// Up to `max` oldest unacknowledged entries, in seq order, read from disk starting at the
    /// head segment's read position. A record that fails its checksum here cuts its segment at
    /// that point (its length field cannot be trusted to find the next one): the records cut are
    /// counted as dropped and as a corruption, and reading goes on with the next segment.
    pub fn peek(&mut self, max: usize) -> Result<Vec<SpoolEntry>, SpoolError> {
        let mut out = Vec::new();
        let mut prev_seq = self.cursor.acked_seq;
        let mut idx = 0;
        while out.len() < max && idx < self.segments.len() {
            let segment = &self.segments[idx];
            if segment.unacked_batches == 0 {
                idx += 1;
                continue;
            }
            let path = segment.path.clone();
            let end = segment.end;
            let mut offset = segment.read_offset;
            let mut file = File::open(&path).map_err(io_error("open segment", &path))?;
            file.seek(SeekFrom::Start(offset))
                .map_err(io_error("read segment", &path))?;
            let mut reader = BufReader::with_capacity(PEEK_BUFFER_BYTES, file);
            let (mut kept_batches, mut kept_records) = (0u64, 0u64);
            while out.len() < max {
                let mut frame = Vec::new();
                let read = read_record(&mut reader, offset, end, Some(&mut frame))
                    .map_err(io_error("read segment", &path))?;
                match read {
                    RecordRead::End => break,
                    RecordRead::Good { seq, records, size } if seq > prev_seq => {
                        out.push(SpoolEntry {
                            seq,
                            records,
                            frame,
                        });
                        prev_seq = seq;
                        offset += size;
                        kept_batches += 1;
                        kept_records += u64::from(records);
                    }
                    RecordRead::Good { .. } => {
                        self.cut_segment(
                            idx,
                            offset,
                            kept_batches,
                            kept_records,
                            "sequence number not increasing",
                        );
                        break;
                    }
                    RecordRead::Damaged { reason, .. } => {
                        self.cut_segment(idx, offset, kept_batches, kept_records, reason);
                        break;
                    }
                }
            }
            idx += 1;
        }
        Ok(out)
    }

    /// Marks everything up to and including `seq` acknowledged; persists the cursor (fsync) BEFORE
    /// deleting fully-acked segments (crash-safe deletion). If persisting fails, returns the error
    /// but keeps the in-memory position (acked entries are not peeked again) and retries the
    /// persist on the next ack/append; after a crash in between, the collector dedupes replays.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        self.advance(seq, false)
    }

    /// Marks an entry as dropped for good (the collector refused it permanently): like
    /// [`Spool::ack`], plus adds the records of the entry with exactly this `seq` (if still
    /// pending) to the dropped count.
    pub fn reject(&mut self, seq: u64) -> Result<(), SpoolError> {
        self.advance(seq, true)
    }

    /// Cumulative records dropped (evicted when full, rejected, cut as corrupt, or reported with
    /// [`Spool::add_dropped`]), persisted across restarts.
    pub fn dropped_total(&self) -> u64 {
        self.cursor.dropped_total
    }

    /// Counts drops outside the spool (memory fallback overflow); persisted with the cursor (an
    /// attempt is made right away; if it fails, with the next ack or append).
    pub fn add_dropped(&mut self, records: u64) {
        if records == 0 {
            return;
        }
        self.cursor.dropped_total = self.cursor.dropped_total.saturating_add(records);
        self.cursor_dirty = true;
        if let Err(e) = self.persist_cursor() {
            tracing::debug!(error = %e, "spool: cannot persist the dropped count yet; will retry");
        }
    }

    /// Persists the cursor if it has changes not yet on disk (for a clean shutdown).
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        if self.cursor_dirty {
            self.persist_cursor()?;
        }
        Ok(())
    }

    /// Unacknowledged batches in the spool.
    pub fn pending_batches(&self) -> u64 {
        self.segments.iter().map(|s| s.unacked_batches).sum()
    }

    /// Unacknowledged records (summed over pending batches).
    pub fn pending_records(&self) -> u64 {
        self.segments.iter().map(|s| s.unacked_records).sum()
    }

    /// Total length of the segment files on disk, acknowledged records not yet deleted included
    /// (the cursor file is not counted). Never above `max_bytes` after `open` or an `append` that
    /// returned `Ok`.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// The bound given in [`SpoolOptions::max_bytes`].
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Corrupt tails or records found since open (those found by open itself included).
    pub fn corruptions(&self) -> u64 {
        self.corruptions
    }

    /// Every seq at or below this is acknowledged, rejected or dropped.
    pub fn acked_seq(&self) -> u64 {
        self.cursor.acked_seq
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn advance(&mut self, seq: u64, reject: bool) -> Result<(), SpoolError> {
        // Acknowledging past the highest seq ever appended would make the next appends fail
        // `SeqNotIncreasing`; nothing there can be acknowledged anyway.
        let seq = seq.min(self.cursor.highest_seq);
        if seq > self.cursor.acked_seq {
            let mut rejected_records = 0u64;
            for idx in 0..self.segments.len() {
                let segment = &mut self.segments[idx];
                if segment.unacked_batches == 0 {
                    continue;
                }
                if segment.last_seq < seq {
                    segment.read_offset = segment.end;
                    segment.unacked_batches = 0;
                    segment.unacked_records = 0;
                    continue;
                }
                // Later segments only hold larger seqs: the target, if still pending, is here.
                if let Some(records) = self.advance_within(idx, seq)? {
                    rejected_records = u64::from(records);
                }
                break;
            }
            self.cursor.acked_seq = seq;
            if reject {
                self.cursor.dropped_total =
                    self.cursor.dropped_total.saturating_add(rejected_records);
            }
            self.cursor_dirty = true;
        }
        if !self.cursor_dirty {
            return Ok(());
        }
        self.persist_cursor()?;
        self.delete_done_segments(true);
        Ok(())
    }

    /// Marks the records of segment `idx` with seq up to `seq` done, walking their headers from
    /// the read position. Returns the record count of the entry with exactly `seq`, if found.
    fn advance_within(&mut self, idx: usize, seq: u64) -> Result<Option<u32>, SpoolError> {
        let segment = &self.segments[idx];
        let path = segment.path.clone();
        let file = File::open(&path).map_err(io_error("open segment", &path))?;
        let mut prev_seq = self.cursor.acked_seq;
        let mut found = None;
        loop {
            let segment = &self.segments[idx];
            let offset = segment.read_offset;
            if segment.unacked_batches == 0 || offset >= segment.end {
                break;
            }
            let mut header = [0u8; RECORD_HEADER_BYTES as usize];
            let plausible = offset + RECORD_HEADER_BYTES <= segment.end;
            if plausible {
                file.read_exact_at(&mut header, offset)
                    .map_err(io_error("read segment", &path))?;
            }
            let len = u64::from(le_u32(&header[0..4]));
            let header_seq = le_u64(&header[8..16]);
            let records = le_u32(&header[16..20]);
            let size = LEN_CRC_BYTES + len;
            if !plausible
                || len < SEQ_RECORDS_BYTES
                || offset + size > segment.end
                || header_seq <= prev_seq
            {
                self.cut_segment(idx, offset, 0, 0, "damaged record header");
                break;
            }
            if header_seq > seq {
                break;
            }
            let segment = &mut self.segments[idx];
            segment.read_offset += size;
            segment.unacked_batches -= 1;
            segment.unacked_records = segment.unacked_records.saturating_sub(u64::from(records));
            prev_seq = header_seq;
            if header_seq == seq {
                found = Some(records);
                break;
            }
        }
        Ok(found)
    }

    /// Cuts segment `idx` at `offset` after finding damage there: the pending records before it
    /// (`kept_*`, counted from the read position) stay, the rest are counted as dropped.
    fn cut_segment(
        &mut self,
        idx: usize,
        offset: u64,
        kept_batches: u64,
        kept_records: u64,
        reason: &'static str,
    ) {
        let is_active = idx + 1 == self.segments.len();
        let segment = &mut self.segments[idx];
        let lost_records = segment.unacked_records.saturating_sub(kept_records);
        let cut_bytes = segment.end.saturating_sub(offset);
        segment.unacked_batches = kept_batches;
        segment.unacked_records = kept_records;
        segment.end = offset;
        let truncated = OpenOptions::new()
            .write(true)
            .open(&segment.path)
            .and_then(|f| f.set_len(offset).and_then(|()| f.sync_data()));
        match truncated {
            Ok(()) => segment.len = offset,
            Err(ref e) => tracing::warn!(
                path = %segment.path.display(),
                error = %e,
                "spool: cannot truncate a damaged segment; sealing it and ignoring its tail"
            ),
        }
        tracing::warn!(
            path = %segment.path.display(),
            offset,
            reason,
            cut_bytes,
            lost_records,
            "spool: cut a corrupt segment at the last good record"
        );
        if is_active {
            self.active_file = None;
        }
        self.corruptions += 1;
        self.cursor.dropped_total = self.cursor.dropped_total.saturating_add(lost_records);
        self.cursor_dirty = true;
        if let Err(e) = self.persist_cursor() {
            tracing::warn!(error = %e, "spool: cannot persist the cursor after a cut; will retry");
        }
    }

    /// Deletes the oldest segments until `needed` more bytes fit under `max_bytes`, keeping the
    /// active segment if `keep_active`. Their pending records are counted as dropped, and the
    /// cursor saying so is persisted before any file is unlinked. Returns the records dropped.
    fn evict_oldest(&mut self, needed: u64, keep_active: bool) -> Result<u64, SpoolError> {
        let keep = usize::from(keep_active);
        let mut bytes = self.bytes();
        let mut count = 0usize;
        let mut next = self.cursor;
        let mut dropped = 0u64;
        let mut dropped_batches = 0u64;
        while bytes.saturating_add(needed) > self.max_bytes && count + keep < self.segments.len() {
            let segment = &self.segments[count];
            bytes -= segment.len;
            dropped += segment.unacked_records;
            dropped_batches += segment.unacked_batches;
            next.acked_seq = next.acked_seq.max(segment.last_seq);
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        next.dropped_total = next.dropped_total.saturating_add(dropped);
        if next != self.cursor || self.cursor_dirty {
            self.write_cursor(&next)?;
            self.cursor = next;
            self.cursor_dirty = false;
        }
        for segment in self.segments.iter_mut().take(count) {
            segment.read_offset = segment.end;
            segment.unacked_batches = 0;
            segment.unacked_records = 0;
        }
        if dropped_batches > 0 {
            tracing::warn!(
                dropped_batches,
                dropped_records = dropped,
                max_bytes = self.max_bytes,
                "spool: full, dropped the oldest unacknowledged batches"
            );
        }
        let delete_error = self.delete_done_segments(keep_active);
        match delete_error {
            Some(e) if self.bytes().saturating_add(needed) > self.max_bytes => Err(e),
            _ => Ok(dropped),
        }
    }

    /// Unlinks every segment with nothing pending (except the active one if `keep_active`), then
    /// fsyncs the directory. Call only while the cursor on disk is current. Returns the first error;
    /// a segment that could not be deleted stays listed and is retried next time.
    fn delete_done_segments(&mut self, keep_active: bool) -> Option<SpoolError> {
        let last = self.segments.len().saturating_sub(usize::from(keep_active));
        let mut first_error = None;
        let mut deleted = 0usize;
        let mut idx = 0;
        let mut position = 0;
        while idx < self.segments.len() {
            let done = position < last && self.segments[idx].unacked_batches == 0;
            position += 1;
            if !done {
                idx += 1;
                continue;
            }
            let path = self.segments[idx].path.clone();
            match fs::remove_file(&path) {
                Ok(()) => {
                    self.segments.remove(idx);
                    deleted += 1;
                    if self.segments.is_empty() || idx == self.segments.len() {
                        // The active segment itself was deleted (only when not keeping it).
                        self.active_file = None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.segments.remove(idx);
                    deleted += 1;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "spool: cannot delete a finished segment; will retry");
                    first_error.get_or_insert(io_error("delete segment", &path)(e));
                    idx += 1;
                }
            }
        }
        if deleted > 0
            && let Err(e) = sync_dir(&self.dir)
        {
            tracing::warn!(error = %e, "spool: cannot fsync the directory after deleting segments");
            first_error.get_or_insert(e);
        }
        first_error
    }

    /// Starts a new, empty active segment named after `first_seq`.
    fn start_segment(&mut self, first_seq: u64) -> Result<(), SpoolError> {
        self.active_file = None;
        let path = segment_path(&self.dir, first_seq);
        self.injected_failure()
            .map_err(io_error("create segment", &path))?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error("create segment", &path))?;
        let existing = file
            .metadata()
            .map_err(io_error("read metadata of", &path))?
            .len();
        if existing != 0 {
            return Err(SpoolError::Io {
                op: "create segment",
                path,
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a non-empty segment with this name exists",
                ),
            });
        }
        // Make the new name durable before any record in it is reported as spooled.
        sync_dir(&self.dir)?;
        self.segments.push_back(Segment {
            path,
            len: 0,
            end: 0,
            last_seq: 0,
            read_offset: 0,
            unacked_batches: 0,
            unacked_records: 0,
        });
        self.active_file = Some(file);
        Ok(())
    }

    /// Writes one record at the end of the active segment and fdatasyncs it. On failure the
    /// partial record is truncated away; if even that fails the segment is sealed.
    fn write_record(&mut self, seq: u64, records: u32, frame: &[u8]) -> Result<(), SpoolError> {
        let Some(segment) = self.segments.back() else {
            return Err(SpoolError::Io {
                op: "append to",
                path: self.dir.clone(),
                source: io::Error::other("no active segment"),
            });
        };
        let path = segment.path.clone();
        let offset = segment.len;
        if self.active_file.is_none() {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error("open segment", &path))?;
            self.active_file = Some(file);
        }
        let injected = self.injected_failure();
        let Some(file) = self.active_file.as_ref() else {
            return Err(io_error("open segment", &path)(io::Error::other(
                "no handle",
            )));
        };

        let len = SEQ_RECORDS_BYTES + frame.len() as u64;
        let mut header = [0u8; RECORD_HEADER_BYTES as usize];
        // `append` checked that `len` fits in a u32.
        header[0..4].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        header[8..16].copy_from_slice(&seq.to_le_bytes());
        header[16..20].copy_from_slice(&records.to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header[8..20]);
        hasher.update(frame);
        header[4..8].copy_from_slice(&hasher.finalize().to_le_bytes());

        let written = injected
            .and_then(|()| file.write_all_at(&header, offset))
            .and_then(|()| file.write_all_at(frame, offset + RECORD_HEADER_BYTES))
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            let restored = file.set_len(offset).and_then(|()| file.sync_data());
            if let Err(truncate_error) = restored {
                let on_disk = file
                    .metadata()
                    .map(|m| m.len())
                    .unwrap_or(offset + RECORD_HEADER_BYTES + frame.len() as u64);
                tracing::warn!(
                    path = %path.display(),
                    error = %truncate_error,
                    "spool: cannot truncate a failed append; sealing the segment (its tail is cut at the next open)"
                );
                if let Some(segment) = self.segments.back_mut() {
                    segment.len = on_disk.max(segment.end);
                }
                self.active_file = None;
            }
            return Err(io_error("append to", &path)(e));
        }

        let record_bytes = RECORD_HEADER_BYTES + frame.len() as u64;
        if let Some(segment) = self.segments.back_mut() {
            segment.len += record_bytes;
            segment.end += record_bytes;
            segment.last_seq = seq;
            segment.unacked_batches += 1;
            segment.unacked_records += u64::from(records);
        }
        self.cursor.highest_seq = seq;
        Ok(())
    }

    fn persist_cursor(&mut self) -> Result<(), SpoolError> {
        if self.detached.is_some() {
            // Writing our empty state could clobber a cursor we have not read yet; counts
            // made while detached are carried over by `attach`.
            return Err(SpoolError::Io {
                op: "write cursor",
                path: self.dir.join(CURSOR_FILE),
                source: io::Error::other("spool directory not attached yet"),
            });
        }
        let state = self.cursor;
        self.write_cursor(&state)?;
        self.cursor_dirty = false;
        Ok(())
    }

    /// Replaces the cursor file atomically: temp file, fsync, rename, fsync directory.
    fn write_cursor(&self, state: &CursorState) -> Result<(), SpoolError> {
        let tmp = self.dir.join(CURSOR_TMP_FILE);
        let path = self.dir.join(CURSOR_FILE);
        self.injected_failure()
            .map_err(io_error("write cursor", &tmp))?;
        let write_synced = || -> io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&state.encode())?;
            file.sync_all()
        };
        write_synced().map_err(io_error("write cursor", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_error("replace cursor", &path))?;
        sync_dir(&self.dir)
    }

    #[cfg(test)]
    fn injected_failure(&self) -> io::Result<()> {
        if let Some(gate) = &self.hang_writes {
            let (closed, opened) = &**gate;
            let mut closed = closed.lock().unwrap_or_else(|p| p.into_inner());
            while *closed {
                closed = opened.wait(closed).unwrap_or_else(|p| p.into_inner());
            }
        }
        if self.fail_writes {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    #[cfg(not(test))]
    fn injected_failure(&self) -> io::Result<()> {
        Ok(())
    }
}
