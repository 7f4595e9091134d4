//! Fuzz target: whatever decodes must re-encode to a frame that decodes to the
//! same batch and encodes to the same bytes.
//!
//! Comparing encodings rather than batches keeps NaN values (allowed in
//! samples, and never equal to themselves) from being reported as mismatches,
//! while still catching any field the codec drops or alters.

use hubwatch_shared::codec;

/// One input: a panic is a finding.
pub fn check(frame: &[u8]) {
    let Ok(batch) = codec::decode(frame) else {
        return;
    };
    let first = codec::encode(&batch).expect("a decoded batch re-encodes");
    let again = codec::decode(&first).expect("a re-encoded batch decodes");
    let second = codec::encode(&again).expect("a twice-decoded batch re-encodes");
    assert_eq!(
        first, second,
        "encode(decode(encode(b))) differs from encode(b)"
    );
    assert_eq!(
        batch.records.len(),
        again.records.len(),
        "record count changed across a round trip"
    );
}
