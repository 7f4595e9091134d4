//! Per-hub SLI sums over the burn-rate windows and the tier window, in
//! bounded memory.
//!
//! A hub keeps three rings of buckets, each bucket tagged with the time slot
//! it holds (a slot is reused only by a newer one, so late data never
//! overwrites newer data and a clock that jumps cannot mix periods):
//!
//! | ring | slot | slots | serves |
//! |---|---|---|---|
//! | minutes | 1 min | 360 | 5m, 30m, 1h, 2h, 6h |
//! | tens | 10 min | 432 | 1d, 3d |
//! | hours | 1 h | tier window in hours (720 for 30 d) | error budget |
//!
//! A window ending at `now` covers the slots whose start lies in
//! `[now − window, now)`, found from the slot holding `now − 1 ms` backwards;
//! the 1d and 3d windows are thus exact to 10 minutes at their far edge and
//! the budget window to one hour. Each bucket is 40 bytes, so a hub with a
//! 30-day window holds (360 + 432 + 720) × 40 ≈ 59 KiB, and evaluating it
//! reads ~1,500 buckets (nested windows are summed in one pass).
//!
//! Values are applied as signed contributions (after − before of a minute
//! row), so a minute that turns from good to bad when more probes arrive
//! moves one unit from good to bad.

use std::time::Duration;

use super::sli::{MINUTE_MS, MinuteAvailability, MinuteCounts};

#[cfg(test)]
mod tests;

/// Minute windows served by the minute ring, in minutes (5m … 6h).
pub const MINUTE_WINDOWS: [usize; 5] = [5, 30, 60, 120, 360];
/// Windows served by the ten-minute ring, in ten-minute slots (1d, 3d).
pub const TEN_MINUTE_WINDOWS: [usize; 2] = [144, 432];
/// Every burn-rate window, in seconds, in the order of [`WINDOW_NAMES`].
pub const WINDOW_SECS: [u64; 7] = [300, 1800, 3600, 7200, 21_600, 86_400, 259_200];
/// Names of the burn-rate windows (`/api/v1/slo` keys and the `window` label).
pub const WINDOW_NAMES: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// Sums over some period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    /// Minutes whose probes all succeeded.
    pub avail_good: u64,
    /// Minutes in which a probe failed.
    pub avail_bad: u64,
    /// Successful spawns.
    pub spawn_ok: u64,
    /// Failed spawns.
    pub spawn_failed: u64,
    /// Successful spawns under 120 s.
    pub spawn_fast: u64,
    /// Successful spawns in the histogram (`le="+Inf"`).
    pub spawn_timed: u64,
    /// Journeys that passed within the tier's bound.
    pub journey_good: u64,
    /// Journeys that failed or were slow.
    pub journey_bad: u64,
    /// Journeys whose spawn phase failed (also in `spawn_failed`).
    pub journey_spawn_failed: u64,
}

impl Sums {
    /// Adds one stored minute (saturating): availability counts the minute
    /// as good or bad as the rolling windows do, spawns add their counts.
    pub fn add_minute(&mut self, counts: &MinuteCounts) {
        match counts.availability() {
            MinuteAvailability::NoData => {}
            MinuteAvailability::Good => self.avail_good = self.avail_good.saturating_add(1),
            MinuteAvailability::Bad => self.avail_bad = self.avail_bad.saturating_add(1),
        }
        self.spawn_ok = self.spawn_ok.saturating_add(counts.spawn_ok);
        self.spawn_failed = self.spawn_failed.saturating_add(counts.spawn_failed);
        self.spawn_fast = self.spawn_fast.saturating_add(counts.spawn_fast);
        self.spawn_timed = self.spawn_timed.saturating_add(counts.spawn_timed);
        self.journey_good = self.journey_good.saturating_add(counts.journey_good);
        self.journey_bad = self.journey_bad.saturating_add(counts.journey_bad);
        self.journey_spawn_failed = self
            .journey_spawn_failed
            .saturating_add(counts.journey_spawn_failed);
    }

    /// `self += other`, saturating, field by field.
    pub fn add(&mut self, other: &Sums) {
        let Sums {
            avail_good,
            avail_bad,
            spawn_ok,
            spawn_failed,
            spawn_fast,
            spawn_timed,
            journey_good,
            journey_bad,
            journey_spawn_failed,
        } = *other;
        self.avail_good = self.avail_good.saturating_add(avail_good);
        self.avail_bad = self.avail_bad.saturating_add(avail_bad);
        self.spawn_ok = self.spawn_ok.saturating_add(spawn_ok);
        self.spawn_failed = self.spawn_failed.saturating_add(spawn_failed);
        self.spawn_fast = self.spawn_fast.saturating_add(spawn_fast);
        self.spawn_timed = self.spawn_timed.saturating_add(spawn_timed);
        self.journey_good = self.journey_good.saturating_add(journey_good);
        self.journey_bad = self.journey_bad.saturating_add(journey_bad);
        self.journey_spawn_failed = self
            .journey_spawn_failed
            .saturating_add(journey_spawn_failed);
    }

    fn add_bucket(&mut self, b: &Bucket) {
        self.avail_good += u64::from(b.avail_good);
        self.avail_bad += u64::from(b.avail_bad);
        self.spawn_ok += u64::from(b.spawn_ok);
        self.spawn_failed += u64::from(b.spawn_failed);
        self.spawn_fast += u64::from(b.spawn_fast);
        self.spawn_timed += u64::from(b.spawn_timed);
        self.journey_good += u64::from(b.journey_good);
        self.journey_bad += u64::from(b.journey_bad);
        self.journey_spawn_failed += u64::from(b.journey_spawn_failed);
    }
}

/// One hour of one hub as `sli_hours` keeps it: the sums of its minutes
/// (as the rolling windows count them), how many minute rows it has, and
/// how many of them had the hub's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourRollup {
    /// The minutes' sums.
    pub sums: Sums,
    /// Minute rows in the hour.
    pub minutes: u64,
    /// Minute rows in which the hub's metrics were scraped
    /// ([`MinuteCounts::has_metrics`]).
    pub metrics_minutes: u64,
}

impl HourRollup {
    /// Whether a minute of the hour had a probe result.
    pub fn has_probes(&self) -> bool {
        self.sums.avail_good > 0 || self.sums.avail_bad > 0
    }

    /// Whether a synthetic journey started in a minute of the hour.
    pub fn has_journey(&self) -> bool {
        self.sums.journey_good > 0 || self.sums.journey_bad > 0
    }
}

/// Signed change of one minute's contribution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Contribution {
    pub(crate) avail_good: i64,
    pub(crate) avail_bad: i64,
    pub(crate) spawn_ok: i64,
    pub(crate) spawn_failed: i64,
    pub(crate) spawn_fast: i64,
    pub(crate) spawn_timed: i64,
    pub(crate) journey_good: i64,
    pub(crate) journey_bad: i64,
    pub(crate) journey_spawn_failed: i64,
}

impl Contribution {
    fn of(counts: &MinuteCounts) -> Self {
        let (good, bad) = match counts.availability() {
            MinuteAvailability::NoData => (0, 0),
            MinuteAvailability::Good => (1, 0),
            MinuteAvailability::Bad => (0, 1),
        };
        let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Self {
            avail_good: good,
            avail_bad: bad,
            spawn_ok: signed(counts.spawn_ok),
            spawn_failed: signed(counts.spawn_failed),
            spawn_fast: signed(counts.spawn_fast),
            spawn_timed: signed(counts.spawn_timed),
            journey_good: signed(counts.journey_good),
            journey_bad: signed(counts.journey_bad),
            journey_spawn_failed: signed(counts.journey_spawn_failed),
        }
    }

    /// Sums (of minutes) as one contribution.
    fn from_sums(sums: &Sums) -> Self {
        let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Self {
            avail_good: signed(sums.avail_good),
            avail_bad: signed(sums.avail_bad),
            spawn_ok: signed(sums.spawn_ok),
            spawn_failed: signed(sums.spawn_failed),
            spawn_fast: signed(sums.spawn_fast),
            spawn_timed: signed(sums.spawn_timed),
            journey_good: signed(sums.journey_good),
            journey_bad: signed(sums.journey_bad),
            journey_spawn_failed: signed(sums.journey_spawn_failed),
        }
    }

    /// `after − before`.
    pub fn between(before: &MinuteCounts, after: &MinuteCounts) -> Self {
        let (a, b) = (Self::of(after), Self::of(before));
        Self {
            avail_good: a.avail_good.saturating_sub(b.avail_good),
            avail_bad: a.avail_bad.saturating_sub(b.avail_bad),
            spawn_ok: a.spawn_ok.saturating_sub(b.spawn_ok),
            spawn_failed: a.spawn_failed.saturating_sub(b.spawn_failed),
            spawn_fast: a.spawn_fast.saturating_sub(b.spawn_fast),
            spawn_timed: a.spawn_timed.saturating_sub(b.spawn_timed),
            journey_good: a.journey_good.saturating_sub(b.journey_good),
            journey_bad: a.journey_bad.saturating_sub(b.journey_bad),
            journey_spawn_failed: a
                .journey_spawn_failed
                .saturating_sub(b.journey_spawn_failed),
        }
    }

    /// Adds `other` (saturating).
    pub(crate) fn add(&mut self, other: &Self) {
        self.avail_good = self.avail_good.saturating_add(other.avail_good);
        self.avail_bad = self.avail_bad.saturating_add(other.avail_bad);
        self.spawn_ok = self.spawn_ok.saturating_add(other.spawn_ok);
        self.spawn_failed = self.spawn_failed.saturating_add(other.spawn_failed);
        self.spawn_fast = self.spawn_fast.saturating_add(other.spawn_fast);
        self.spawn_timed = self.spawn_timed.saturating_add(other.spawn_timed);
        self.journey_good = self.journey_good.saturating_add(other.journey_good);
        self.journey_bad = self.journey_bad.saturating_add(other.journey_bad);
        self.journey_spawn_failed = self
            .journey_spawn_failed
            .saturating_add(other.journey_spawn_failed);
    }

    fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// One slot's sums; `tag` is the slot number + 1 (0 = empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    tag: u32,
    avail_good: u32,
    avail_bad: u32,
    spawn_ok: u32,
    spawn_failed: u32,
    spawn_fast: u32,
    spawn_timed: u32,
    journey_good: u32,
    journey_bad: u32,
    journey_spawn_failed: u32,
}

fn apply_signed(value: &mut u32, delta: i64) {
    let next = i64::from(*value).saturating_add(delta);
    *value = u32::try_from(next.clamp(0, i64::from(u32::MAX))).unwrap_or(u32::MAX);
}

/// A ring of buckets of `width_minutes` each.
#[derive(Debug, Clone)]
struct Ring {
    width_ms: i64,
    buckets: Vec<Bucket>,
}

impl Ring {
    fn new(width_minutes: i64, slots: usize) -> Self {
        Self {
            width_ms: width_minutes * MINUTE_MS,
            buckets: vec![Bucket::default(); slots.max(1)],
        }
    }

    /// Slot number of the slot holding `ms`.
    fn slot_of_ms(&self, ms: i64) -> i64 {
        ms.div_euclid(self.width_ms)
    }

    /// Tag of a slot number; `None` for slots outside what a tag can hold
    /// (before 1970 or after year ~10,000 for minutes), which are ignored.
    fn tag(slot: i64) -> Option<u32> {
        u32::try_from(slot.checked_add(1)?).ok().filter(|t| *t > 0)
    }

    fn index(&self, slot: i64) -> usize {
        let len = i64::try_from(self.buckets.len()).unwrap_or(i64::MAX);
        usize::try_from(slot.rem_euclid(len)).unwrap_or(0)
    }

    fn add(&mut self, minute: i64, c: &Contribution) {
        let slot = self.slot_of_ms(minute.saturating_mul(MINUTE_MS));
        let Some(tag) = Self::tag(slot) else {
            return;
        };
        let index = self.index(slot);
        let bucket = &mut self.buckets[index];
        if bucket.tag > tag {
            // A newer slot lives here: this minute is older than the ring.
            return;
        }
        if bucket.tag < tag {
            *bucket = Bucket {
                tag,
                ..Bucket::default()
            };
        }
        apply_signed(&mut bucket.avail_good, c.avail_good);
        apply_signed(&mut bucket.avail_bad, c.avail_bad);
        apply_signed(&mut bucket.spawn_ok, c.spawn_ok);
        apply_signed(&mut bucket.spawn_failed, c.spawn_failed);
        apply_signed(&mut bucket.spawn_fast, c.spawn_fast);
        apply_signed(&mut bucket.spawn_timed, c.spawn_timed);
        apply_signed(&mut bucket.journey_good, c.journey_good);
        apply_signed(&mut bucket.journey_bad, c.journey_bad);
        apply_signed(&mut bucket.journey_spawn_failed, c.journey_spawn_failed);
    }

    /// Sums of the last `lengths[i]` slots ending with the slot holding
    /// `now_ms − 1`, for nested (ascending) lengths, in one pass.
    fn nested_sums<const N: usize>(&self, now_ms: i64, lengths: [usize; N]) -> [Sums; N] {
        let mut out = [Sums::default(); N];
        let last = self.slot_of_ms(now_ms.saturating_sub(1));
        let longest = lengths
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .min(self.buckets.len());
        let mut running = Sums::default();
        let mut next = 0;
        for back in 0..longest {
            let slot = last - i64::try_from(back).unwrap_or(i64::MAX);
            if let Some(tag) = Self::tag(slot) {
                let bucket = &self.buckets[self.index(slot)];
                if bucket.tag == tag {
                    running.add_bucket(bucket);
                }
            }
            while next < N && lengths[next] == back + 1 {
                out[next] = running;
                next += 1;
            }
        }
        while next < N {
            out[next] = running;
            next += 1;
        }
        out
    }

    fn bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
    }
}

/// Every window's sums for one hub at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowSums {
    /// The burn-rate windows, in the order of [`WINDOW_NAMES`].
    pub windows: [Sums; 7],
    /// The tier window (error budget).
    pub budget: Sums,
}

/// One hub's SLI state: the three rings and when data was last seen.
#[derive(Debug, Clone)]
pub struct HubSli {
    minutes: Ring,
    tens: Ring,
    hours: Ring,
    budget_hours: usize,
    last_probe_minute: Option<i64>,
    last_metrics_minute: Option<i64>,
    last_journey_minute: Option<i64>,
}

impl HubSli {
    /// Empty state for a hub whose tier window is `window`.
    pub fn new(window: Duration) -> Self {
        let budget_hours = usize::try_from(window.as_secs().div_ceil(3600))
            .unwrap_or(usize::MAX)
            .max(1);
        Self {
            minutes: Ring::new(1, MINUTE_WINDOWS[4]),
            tens: Ring::new(10, TEN_MINUTE_WINDOWS[1]),
            hours: Ring::new(60, budget_hours),
            budget_hours,
            last_probe_minute: None,
            last_metrics_minute: None,
            last_journey_minute: None,
        }
    }

    /// Applies a minute row's change.
    pub fn apply(&mut self, minute: i64, before: &MinuteCounts, after: &MinuteCounts) {
        self.note_seen(minute, after);
        let c = Contribution::between(before, after);
        if c.is_zero() {
            return;
        }
        self.minutes.add(minute, &c);
        self.tens.add(minute, &c);
        self.hours.add(minute, &c);
    }

    /// Applies one hour's sums (an `sli_hours` row) to the hour ring only,
    /// as its minutes applied one by one would have left it: for hours older
    /// than anything the minute and ten-minute rings can serve (see
    /// [`crate::slo::SloEngine::load`]). The latest minutes with data are
    /// not moved ([`HubSli::note_seen`] does that from the hour's minutes).
    pub fn apply_hour(&mut self, hour: i64, sums: &Sums) {
        let c = Contribution::from_sums(sums);
        if c.is_zero() {
            return;
        }
        self.hours.add(hour.saturating_mul(60), &c);
    }

    /// Moves the latest minutes with probes, metrics and journeys on to
    /// `minute` where `counts` has them, without adding to any sum.
    pub fn note_seen(&mut self, minute: i64, after: &MinuteCounts) {
        if after.availability() != MinuteAvailability::NoData {
            self.last_probe_minute = Some(self.last_probe_minute.map_or(minute, |m| m.max(minute)));
        }
        if after.has_metrics() {
            self.last_metrics_minute =
                Some(self.last_metrics_minute.map_or(minute, |m| m.max(minute)));
        }
        if after.has_journey() {
            self.last_journey_minute =
                Some(self.last_journey_minute.map_or(minute, |m| m.max(minute)));
        }
    }

    /// Sums of every window ending at `now_ms`.
    pub fn sums(&self, now_ms: i64) -> WindowSums {
        let [m5, m30, h1, h2, h6] = self.minutes.nested_sums(now_ms, MINUTE_WINDOWS);
        let [d1, d3] = self.tens.nested_sums(now_ms, TEN_MINUTE_WINDOWS);
        let [budget] = self.hours.nested_sums(now_ms, [self.budget_hours]);
        WindowSums {
            windows: [m5, m30, h1, h2, h6, d1, d3],
            budget,
        }
    }

    /// Sums of the last `minutes` minutes (at most 360) ending at `now_ms`.
    pub fn recent(&self, now_ms: i64, minutes: usize) -> Sums {
        let [sums] = self.minutes.nested_sums(now_ms, [minutes]);
        sums
    }

    /// The sums of the latest minute (within the last `max_minutes`, at most
    /// 360, ending at `now_ms`) for which `has_events` holds.
    pub fn latest_minute_with(
        &self,
        now_ms: i64,
        max_minutes: usize,
        has_events: impl Fn(&Sums) -> bool,
    ) -> Option<Sums> {
        let ring = &self.minutes;
        let last = ring.slot_of_ms(now_ms.saturating_sub(1));
        for back in 0..max_minutes.min(ring.buckets.len()) {
            let slot = last - i64::try_from(back).unwrap_or(i64::MAX);
            let Some(tag) = Ring::tag(slot) else {
                continue;
            };
            let bucket = &ring.buckets[ring.index(slot)];
            if bucket.tag != tag {
                continue;
            }
            let mut sums = Sums::default();
            sums.add_bucket(bucket);
            if has_events(&sums) {
                return Some(sums);
            }
        }
        None
    }

    /// The latest minute with a probe result, if any.
    pub fn last_probe_minute(&self) -> Option<i64> {
        self.last_probe_minute
    }

    /// The latest minute in which the hub's metrics were scraped, if any.
    pub fn last_metrics_minute(&self) -> Option<i64> {
        self.last_metrics_minute
    }

    /// The latest minute in which a synthetic journey started, if any (in
    /// the rows loaded at start or applied since): a hub without one has no
    /// journey objective.
    pub fn last_journey_minute(&self) -> Option<i64> {
        self.last_journey_minute
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.minutes.bytes() + self.tens.bytes() + self.hours.bytes()
    }
}
