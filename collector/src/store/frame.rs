//! How a batch's frame is kept in the SQLite store's `batches.frame`: as
//! received, or, with `storage.compress_frames`, snappy-compressed (block
//! format, the `snap` crate remote write already uses) behind the 4-byte tag
//! [`SNAPPY_TAG`]. Every frame the collector accepts decodes, so it starts
//! with the codec's `MAGIC` (`HWB1`), never with the tag: a stored value is
//! told apart by its first bytes, old and new rows alike, with no column to
//! keep in step. `batches.frame_crc` is always the CRC-32 of the frame as
//! received, so a damaged compressed value is caught either way: it no
//! longer decompresses, or what comes out fails the checksum. A frame that
//! arrived snappy-compressed (an agent's `Content-Encoding: snappy` body) is
//! stored as the block it came in ([`from_snappy`]), not compressed again.
//!
//! PostgreSQL compresses large `bytea` values itself (TOAST), so its store
//! keeps frames as received.

/// Marks a snappy-compressed frame.
pub const SNAPPY_TAG: [u8; 4] = *b"HWS1";

/// What is stored for `frame` with `storage.compress_frames`: the tag and
/// its snappy block, or `frame` as it is past snappy's ~4 GiB input limit
/// (far above any body the server accepts).
pub fn pack(frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0; SNAPPY_TAG.len() + snap::raw::max_compress_len(frame.len())];
    out[..SNAPPY_TAG.len()].copy_from_slice(&SNAPPY_TAG);
    match snap::raw::Encoder::new().compress(frame, &mut out[SNAPPY_TAG.len()..]) {
        Ok(written) => {
            // The buffer was sized for incompressible input: give the rest
            // back, or every queued and cached frame holds ~1.2x its
            // uncompressed size (heaptrack: 18 MiB at 100 agents).
            out.truncate(SNAPPY_TAG.len() + written);
            out.shrink_to_fit();
            out
        }
        Err(_) => frame.to_vec(),
    }
}

/// What is stored for a frame that arrived as `block`, a snappy block that
/// decompressed to it (an agent's `Content-Encoding: snappy` body): the tag
/// and the block as it came, with no second compression.
pub fn from_snappy(block: &[u8]) -> Vec<u8> {
    [&SNAPPY_TAG[..], block].concat()
}

/// The frame as received, from what is stored. A value that does not
/// decompress (damaged on disk) is returned as it is: the checksum or the
/// decoder then refuses it and the pipeline quarantines the batch, rather
/// than the read failing and the pipeline stalling on it.
pub fn unpack(stored: Vec<u8>) -> Vec<u8> {
    let Some(compressed) = stored.strip_prefix(&SNAPPY_TAG) else {
        return stored;
    };
    snap::raw::Decoder::new()
        .decompress_vec(compressed)
        .unwrap_or(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Vec<u8> {
        let mut frame = hubwatch_shared::codec::MAGIC.to_vec();
        for i in 0..2000u32 {
            frame.extend_from_slice(
                format!("jupyterhub_request_duration_seconds{{i=\"{}\"}}", i % 7).as_bytes(),
            );
        }
        frame
    }

    #[test]
    fn a_packed_frame_unpacks_to_the_same_bytes_and_is_smaller() {
        let frame = frame();
        let packed = pack(&frame);
        assert!(packed.starts_with(&SNAPPY_TAG));
        assert!(
            packed.len() * 5 < frame.len(),
            "{} of {}",
            packed.len(),
            frame.len()
        );
        assert_eq!(unpack(packed), frame);
    }

    #[test]
    fn an_uncompressed_frame_is_read_as_stored() {
        let frame = frame();
        assert_eq!(unpack(frame.clone()), frame);
    }

    #[test]
    fn a_block_as_an_agent_sent_it_unpacks_to_its_frame() {
        let frame = frame();
        let block = snap::raw::Encoder::new().compress_vec(&frame).unwrap();
        let stored = from_snappy(&block);
        assert_eq!(stored[SNAPPY_TAG.len()..], block[..]);
        assert_eq!(unpack(stored), frame);
    }

    #[test]
    fn a_damaged_compressed_value_comes_back_as_stored_not_as_an_error() {
        let mut packed = pack(&frame());
        // A snappy block that claims more output than it has input for.
        packed.truncate(SNAPPY_TAG.len() + 20);
        let back = unpack(packed.clone());
        assert_eq!(back, packed);
        assert!(hubwatch_shared::codec::decode(&back).is_err());
    }

    #[test]
    fn the_tag_is_not_the_codec_magic() {
        assert_ne!(SNAPPY_TAG, hubwatch_shared::codec::MAGIC);
    }
}
