//! A stage's position in the raw batch log, and the rule that advances it
//! without ever skipping a row that commits late.
//!
//! **The rule.** A cursor is `hi`, the highest batch id the stage consumed,
//! plus the *gaps*: ranges of ids below `hi` that the stage has not seen. When
//! the stage consumes id `n > hi + 1`, the ids `hi + 1 ..= n - 1` become a gap
//! (noticed now). Every round reads the rows after `hi` **and** the rows inside
//! the open gaps; a row found in a gap is consumed and the gap shrinks. A gap
//! is closed without its rows after [`GAP_GRACE_MS`]: its ids belong to
//! transactions that rolled back (or to keys retention deleted), and no
//! transaction on the ingest path lives that long (every store connection has
//! a 10 s busy timeout and a group commit is bounded), so nothing can commit
//! into it any more.
//!
//! This does not depend on one writer committing ids in order. With SQLite's
//! single writer thread gaps are rare (a rolled-back group); with PostgreSQL a
//! sequence hands out ids at insert time and transactions commit in any order,
//! so a row with a lower id can become visible after a higher one was consumed:
//! it is then in a gap and is picked up on the next round.
//!
//! The **watermark** (every id at or below it is consumed or closed) is the
//! first gap's start - 1, else `hi`; retention keeps every frame above the
//! slowest stage's watermark.

use serde::{Deserialize, Serialize};

/// How long an id range below `hi` may stay unseen before it is closed as
/// never committed.
pub const GAP_GRACE_MS: i64 = 5 * 60 * 1000;
/// Most gaps a cursor keeps open; past this the oldest are closed early (and
/// counted), so a cursor row stays small whatever the id allocation does.
pub const MAX_GAPS: usize = 1024;

/// A range of batch ids below `hi` not seen yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// First id of the range.
    pub first: i64,
    /// Last id of the range (inclusive).
    pub last: i64,
    /// When the range was first noticed, Unix ms.
    pub noticed_ms: i64,
}

/// A stage's position: see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCursor {
    /// Highest batch id consumed.
    pub hi: i64,
    /// Open gaps below `hi`, ordered by `first`, not overlapping.
    pub gaps: Vec<Gap>,
}

impl StageCursor {
    /// A cursor at `hi` with no gaps (a cursor saved before gaps existed).
    pub fn at(hi: i64) -> Self {
        Self {
            hi,
            gaps: Vec::new(),
        }
    }

    /// Every id at or below this is consumed or closed.
    pub fn watermark(&self) -> i64 {
        self.gaps.first().map_or(self.hi, |g| g.first - 1)
    }

    /// Whether the stage still has to consume `id`.
    pub fn wants(&self, id: i64) -> bool {
        id > self.hi || self.gaps.iter().any(|g| g.first <= id && id <= g.last)
    }

    /// Marks `id` consumed at `now_ms`. Consuming an id that is not wanted
    /// changes nothing.
    pub fn consume(&mut self, id: i64, now_ms: i64) {
        if id > self.hi {
            if id > self.hi.saturating_add(1) {
                self.gaps.push(Gap {
                    first: self.hi + 1,
                    last: id - 1,
                    noticed_ms: now_ms,
                });
            }
            self.hi = id;
            return;
        }
        let Some(index) = self.gaps.iter().position(|g| g.first <= id && id <= g.last) else {
            return;
        };
        let gap = self.gaps[index];
        let mut replacement = Vec::with_capacity(2);
        if gap.first < id {
            replacement.push(Gap {
                last: id - 1,
                ..gap
            });
        }
        if id < gap.last {
            replacement.push(Gap {
                first: id + 1,
                ..gap
            });
        }
        self.gaps.splice(index..=index, replacement);
    }

    /// Closes gaps noticed more than `grace_ms` before `now_ms`, and the
    /// oldest beyond [`MAX_GAPS`]. Returns how many ids were closed unseen.
    pub fn close_stale_gaps(&mut self, now_ms: i64, grace_ms: i64) -> u64 {
        let mut closed = 0u64;
        let mut width = |g: &Gap| {
            closed = closed.saturating_add(u64::try_from(g.last - g.first + 1).unwrap_or(0));
        };
        self.gaps.retain(|g| {
            let stale = now_ms.saturating_sub(g.noticed_ms) > grace_ms;
            if stale {
                width(g);
            }
            !stale
        });
        while self.gaps.len() > MAX_GAPS {
            let oldest = self
                .gaps
                .iter()
                .enumerate()
                .min_by_key(|(_, g)| g.noticed_ms)
                .map_or(0, |(i, _)| i);
            let gap = self.gaps.remove(oldest);
            width(&gap);
        }
        closed
    }

    /// The open gaps as `(first, last)` id ranges, for reading.
    pub fn gap_ranges(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.gaps.iter().map(|g| (g.first, g.last))
    }

    /// The gaps as stored (JSON), `""` when there are none.
    pub fn gaps_json(&self) -> String {
        if self.gaps.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&self.gaps).unwrap_or_default()
        }
    }

    /// A cursor from its stored form; unreadable gaps are reported.
    pub fn from_stored(hi: i64, gaps: &str) -> Result<Self, String> {
        if gaps.trim().is_empty() {
            return Ok(Self::at(hi));
        }
        let gaps: Vec<Gap> = serde_json::from_str(gaps).map_err(|e| e.to_string())?;
        Ok(Self { hi, gaps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_past_hi_open_a_gap_that_late_rows_fill() {
        let mut c = StageCursor::default();
        c.consume(1, 0);
        c.consume(2, 0);
        c.consume(5, 10);
        assert_eq!(c.hi, 5);
        assert_eq!(c.watermark(), 2);
        assert!(c.wants(3) && c.wants(4) && !c.wants(5) && c.wants(6));
        c.consume(4, 20);
        assert_eq!(c.gap_ranges().collect::<Vec<_>>(), vec![(3, 3)]);
        c.consume(3, 30);
        assert!(c.gaps.is_empty());
        assert_eq!(c.watermark(), 5);
    }

    #[test]
    fn a_row_in_the_middle_of_a_gap_splits_it() {
        let mut c = StageCursor::at(10);
        c.consume(20, 0);
        c.consume(15, 0);
        assert_eq!(c.gap_ranges().collect::<Vec<_>>(), vec![(11, 14), (16, 19)]);
        assert_eq!(c.watermark(), 10);
    }

    #[test]
    fn stale_gaps_close_and_count_their_ids() {
        let mut c = StageCursor::at(0);
        c.consume(4, 0); // gap 1..=3 at 0
        c.consume(8, 100); // gap 5..=7 at 100
        assert_eq!(c.close_stale_gaps(50, 40), 3);
        assert_eq!(c.gap_ranges().collect::<Vec<_>>(), vec![(5, 7)]);
        assert_eq!(c.watermark(), 4);
        assert_eq!(c.close_stale_gaps(1000, 40), 3);
        assert_eq!(c.watermark(), 8);
    }

    #[test]
    fn gaps_are_capped() {
        let mut c = StageCursor::default();
        for i in 0..(MAX_GAPS as i64 + 10) {
            c.consume(2 * i + 2, i);
        }
        let closed = c.close_stale_gaps(0, i64::MAX);
        assert_eq!(closed, 10);
        assert_eq!(c.gaps.len(), MAX_GAPS);
        assert_eq!(c.gaps[0].first, 21);
    }

    #[test]
    fn stored_form_round_trips() {
        let mut c = StageCursor::at(3);
        c.consume(9, 42);
        let back = StageCursor::from_stored(c.hi, &c.gaps_json()).unwrap();
        assert_eq!(back, c);
        assert_eq!(StageCursor::from_stored(7, "").unwrap(), StageCursor::at(7));
        assert!(StageCursor::from_stored(7, "{").is_err());
    }
}
