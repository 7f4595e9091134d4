//! Splitting a batch the collector refused as too large (413) into pieces
//! that fit, without losing data and without ever giving two different pieces
//! the same sequence number.
//!
//! A batch made by the outbox has a seq that is a multiple of
//! [`SEQ_STRIDE`]; the `SEQ_STRIDE - 1` numbers after it are its own. The
//! pieces form a binary tree numbered like a heap: the whole batch is node 1,
//! the children of node `n` are `2n` (first half of its records) and `2n + 1`
//! (second half), and node `n` is sent with seq `root + n - 1`. The numbering
//! depends only on the batch's records, so redoing a split (after a crash,
//! or after the agent restarts with the batch still spooled) gives every piece
//! the same seq again, and the collector's `(agent, seq)` dedupe turns pieces
//! already delivered into duplicates rather than second copies. Nothing of a
//! split is persisted: the batch stays in the spool until every piece is
//! acknowledged (or dropped, counted).
//!
//! Nodes run up to `SEQ_STRIDE`, so a batch can be halved nine times (512
//! pieces). A piece that needs more, or a batch whose seq is not a multiple of
//! the stride (spooled by an older agent), is re-queued as new batches instead
//! ([`SplitError::NoSeqs`]); a crash at that moment may deliver its records
//! twice under different seqs, never lose them.

use hubwatch_shared::wire::Batch;

use crate::runtime::outbox::SEQ_STRIDE;

/// One piece of a split batch.
#[derive(Debug, Clone)]
pub struct Piece {
    /// Its node in the split tree (1 is the whole batch).
    pub node: u64,
    /// The piece, its `seq` already set.
    pub batch: Batch,
}

/// Why a piece cannot be split further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// It holds at most one record: it may only be dropped (counted).
    #[error("a single record is over the collector's body limit")]
    OneRecord,
    /// The batch's block of seqs is used up (or it never had one).
    #[error("no sequence numbers left in the batch's block")]
    NoSeqs,
}

/// A batch being delivered in pieces.
#[derive(Debug)]
pub struct Split {
    root: u64,
    /// Pieces still to deliver; the last is sent next.
    stack: Vec<Piece>,
}

impl Split {
    /// Starts splitting `batch` (the whole batch was refused): its two halves
    /// become the pieces to send. Fails when the batch cannot be split.
    pub fn start(batch: Batch) -> Result<Self, SplitError> {
        let root = batch.seq;
        if !root.is_multiple_of(SEQ_STRIDE) {
            return Err(SplitError::NoSeqs);
        }
        let mut split = Self {
            root,
            stack: vec![Piece { node: 1, batch }],
        };
        split.split_current()?;
        Ok(split)
    }

    /// The seq of the batch being split.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The piece to send next; `None` once every piece is settled.
    pub fn current(&self) -> Option<&Piece> {
        self.stack.last()
    }

    /// The current piece is settled (acknowledged or dropped): returns it.
    pub fn finish_current(&mut self) -> Option<Piece> {
        self.stack.pop()
    }

    /// The collector refused the current piece as too large: replaces it by
    /// its two halves (the first half is sent first). On error the piece is
    /// left in place for the caller to settle.
    pub fn split_current(&mut self) -> Result<(), SplitError> {
        let Some(piece) = self.stack.last() else {
            return Ok(());
        };
        if piece.batch.records.len() <= 1 {
            return Err(SplitError::OneRecord);
        }
        let left_node = piece.node.checked_mul(2).ok_or(SplitError::NoSeqs)?;
        let right_node = left_node + 1;
        // Node n takes seq root + n - 1, which must stay inside the block.
        if right_node > SEQ_STRIDE {
            return Err(SplitError::NoSeqs);
        }
        let Some(mut piece) = self.stack.pop() else {
            return Ok(());
        };
        let right_records = piece.batch.records.split_off(piece.batch.records.len() / 2);
        let mut right = Batch {
            records: right_records,
            ..piece.batch.clone()
        };
        right.seq = self.root + right_node - 1;
        piece.batch.seq = self.root + left_node - 1;
        self.stack.push(Piece {
            node: right_node,
            batch: right,
        });
        self.stack.push(Piece {
            node: left_node,
            batch: piece.batch,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use hubwatch_shared::wire::{Label, Record, Sample};

    use super::*;

    fn batch(seq: u64, n: usize) -> Batch {
        Batch {
            agent_id: "a".into(),
            member: String::new(),
            seq,
            created_ms: 1,
            dropped_records: 0,
            agent_version: "t".into(),
            records: (0..n)
                .map(|i| {
                    Record::Sample(Sample {
                        name: "x".into(),
                        labels: vec![Label::new("i", i.to_string())],
                        value: i as f64,
                        timestamp_ms: 1,
                    })
                })
                .collect(),
        }
    }

    /// Splits every piece down to single records, returning (seq, records)
    /// in send order.
    fn split_fully(root: u64, n: usize) -> Vec<(u64, Vec<Record>)> {
        let mut split = Split::start(batch(root, n)).expect("splittable");
        let mut out = Vec::new();
        while let Some(piece) = split.current() {
            if piece.batch.records.len() > 1 {
                split.split_current().expect("room to split");
                continue;
            }
            let piece = split.finish_current().expect("piece");
            out.push((piece.batch.seq, piece.batch.records));
        }
        out
    }

    #[test]
    fn pieces_cover_the_batch_in_order_with_unique_seqs_inside_its_block() {
        let root = 7 * SEQ_STRIDE;
        let pieces = split_fully(root, 300);
        let records: Vec<Record> = pieces.iter().flat_map(|(_, r)| r.clone()).collect();
        assert_eq!(
            records,
            batch(root, 300).records,
            "nothing lost, nothing doubled, in order"
        );
        let seqs: HashSet<u64> = pieces.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs.len(), pieces.len(), "seqs unique");
        assert!(seqs.iter().all(|s| *s > root && *s < root + SEQ_STRIDE));
    }

    #[test]
    fn redoing_a_split_gives_every_piece_the_same_seq() {
        let root = 3 * SEQ_STRIDE;
        assert_eq!(split_fully(root, 77), split_fully(root, 77));
    }

    #[test]
    fn a_single_record_or_an_unaligned_batch_cannot_be_split() {
        assert_eq!(
            Split::start(batch(SEQ_STRIDE, 1)).err(),
            Some(SplitError::OneRecord)
        );
        assert_eq!(
            Split::start(batch(SEQ_STRIDE + 5, 10)).err(),
            Some(SplitError::NoSeqs)
        );
        // 1024 records need ten halvings; the block allows nine.
        let mut split = Split::start(batch(SEQ_STRIDE, 1024)).expect("splittable");
        let mut depth_exhausted = false;
        while let Some(piece) = split.current() {
            if piece.batch.records.len() <= 1 {
                split.finish_current();
                continue;
            }
            match split.split_current() {
                Ok(()) => {}
                Err(SplitError::NoSeqs) => {
                    depth_exhausted = true;
                    split.finish_current();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(depth_exhausted);
    }
}
