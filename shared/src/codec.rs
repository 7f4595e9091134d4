//! The one place that knows how a [`Batch`] becomes bytes and back.
//!
//! A frame is `MAGIC` (4 bytes), the protocol version (u16, little endian), then
//! the batch encoded with bincode 2 (standard config: varint integers, little
//! endian). Decoding never trusts a length prefix beyond [`MAX_FRAME_BYTES`], so
//! a hostile frame cannot make the collector allocate more than that, and it
//! never panics on any input (a fuzz target in `fuzz/` checks it).

use crate::wire::{Batch, PROTOCOL_VERSION, Record, SUPPORTED_VERSIONS, UsageEvent, UsageKind};

/// First bytes of every frame: "HWB" and a format generation.
pub const MAGIC: [u8; 4] = *b"HWB1";

/// Header length: magic and version.
pub const HEADER_LEN: usize = 6;

/// Hard upper bound on a frame's size, and on what its length prefixes may
/// claim. The collector's configurable body limit sits below it.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Content type of a frame on HTTP.
pub const CONTENT_TYPE: &str = "application/x-hubwatch-batch";

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME_BYTES>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Why a frame could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than a header.
    #[error("frame truncated: {0} bytes, a header needs {HEADER_LEN}")]
    Truncated(usize),
    /// The frame does not start with [`MAGIC`].
    #[error("not a hubwatch batch (bad magic bytes)")]
    BadMagic,
    /// A version this build does not speak.
    #[error(
        "unsupported protocol version {got}; this build speaks {}",
        versions_list()
    )]
    UnsupportedVersion {
        /// The version in the frame.
        got: u16,
    },
    /// Larger than [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes exceeds the hard limit of {MAX_FRAME_BYTES} bytes")]
    TooLarge(usize),
    /// The body is not a valid batch.
    #[error("malformed batch: {0}")]
    Malformed(String),
    /// Bytes left over after the batch.
    #[error("malformed batch: {0} trailing bytes after the batch")]
    Trailing(usize),
    /// Encoding failed (only when a batch would exceed the hard limit).
    #[error("cannot encode batch: {0}")]
    Encode(String),
}

fn versions_list() -> String {
    SUPPORTED_VERSIONS
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Encodes a batch as a frame of the current protocol version.
pub fn encode(batch: &Batch) -> Result<Vec<u8>, CodecError> {
    encode_version(batch, PROTOCOL_VERSION)
}

/// Encodes a batch as a frame of `version`, any of [`SUPPORTED_VERSIONS`]
/// ([`CodecError::UnsupportedVersion`] otherwise): an agent talking to an
/// older collector writes the highest version both speak.
pub fn encode_version(batch: &Batch, version: u16) -> Result<Vec<u8>, CodecError> {
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(CodecError::UnsupportedVersion { got: version });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + 64 + batch.records.len() * 48);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    // Versions 2 and 3 only appended variants to the version-1 layout, so
    // all share one body layout; an older version says what it can.
    let downgraded;
    let body = if needs_downgrade(batch, version) {
        downgraded = downgrade(batch, version);
        &downgraded
    } else {
        batch
    };
    bincode::serde::encode_into_std_write(body, &mut out, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if out.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(out.len()));
    }
    Ok(out)
}

/// The version that introduced `kind`.
fn introduced_in(kind: &UsageKind) -> u16 {
    match kind {
        UsageKind::ServerStopInferred => 2,
        UsageKind::ResourcesSince { .. } => 3,
        _ => 1,
    }
}

/// The version that introduced the record's kind.
fn record_introduced_in(record: &Record) -> u16 {
    match record {
        Record::Usage(UsageEvent { kind, .. }) => introduced_in(kind),
        Record::Journey(_) => 4,
        Record::Sample(_) | Record::Health(_) => 1,
    }
}

fn needs_downgrade(batch: &Batch, version: u16) -> bool {
    batch
        .records
        .iter()
        .any(|r| record_introduced_in(r) > version)
}

/// `batch` as `version` can carry it: an inferred stop becomes a stop
/// (version 1), a snapshot with `since_ms` a plain snapshot (versions 1, 2),
/// and a journey is left out (versions 1 to 3).
fn downgrade(batch: &Batch, version: u16) -> Batch {
    let mut out = batch.clone();
    out.records
        .retain(|r| !matches!(r, Record::Journey(_)) || version >= 4);
    for record in &mut out.records {
        if let Record::Usage(event) = record
            && introduced_in(&event.kind) > version
        {
            event.kind = match std::mem::replace(&mut event.kind, UsageKind::ServerStopped) {
                UsageKind::ResourcesSince { snapshot, .. } => UsageKind::Resources(snapshot),
                _ => UsageKind::ServerStopped,
            };
        }
    }
    out
}

/// Reads and checks a frame's header, returning its protocol version.
pub fn peek_version(frame: &[u8]) -> Result<u16, CodecError> {
    if frame.len() < HEADER_LEN {
        return Err(CodecError::Truncated(frame.len()));
    }
    if frame[..4] != MAGIC {
        return Err(CodecError::BadMagic);
    }
    let version = u16::from_le_bytes([frame[4], frame[5]]);
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(CodecError::UnsupportedVersion { got: version });
    }
    Ok(version)
}

/// Decodes a frame. Any input gives a batch or an error, never a panic.
pub fn decode(frame: &[u8]) -> Result<Batch, CodecError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(frame.len()));
    }
    peek_version(frame)?;
    let body = &frame[HEADER_LEN..];
    let (batch, used): (Batch, usize) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(batch)
}

/// Checks a frame exactly as [`decode`] does and returns its envelope and
/// record count, borrowing strings from the frame and allocating nothing per
/// record: the collector's ingest path, which stores the frame as received.
pub fn decode_envelope(frame: &[u8]) -> Result<Envelope<'_>, CodecError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(frame.len()));
    }
    peek_version(frame)?;
    let body = &frame[HEADER_LEN..];
    let (batch, used): (envelope::BatchRef<'_>, usize) =
        bincode::serde::borrow_decode_from_slice(body, config())
            .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(batch.into_envelope())
}

mod envelope;
pub use envelope::Envelope;

#[cfg(test)]
mod tests;
