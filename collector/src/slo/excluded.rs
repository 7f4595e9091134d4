//! Sums of stored SLI minutes without the minutes maintenance excluded: the
//! engine skips those minutes as it applies them, and a reader of
//! `sli_minutes` (the monthly report, the status pages) gets the same
//! figures through [`sum_minutes_outside`] with the ranges from
//! [`crate::maintenance::excluded_minutes`].

use super::store::SliStore;
use super::windows::Sums;
use crate::store::StoreError;

/// The sums of `member`/`hub`'s minutes in `[from_minute, to_minute)` less
/// the `excluded` ranges (sorted, merged, as
/// [`crate::maintenance::excluded_minutes`] returns them).
pub fn sum_minutes_outside(
    store: &dyn SliStore,
    member: &str,
    hub: &str,
    from_minute: i64,
    to_minute: i64,
    excluded: &[(i64, i64)],
) -> Result<Sums, StoreError> {
    let mut total = Sums::default();
    let mut at = from_minute;
    let gaps = excluded
        .iter()
        .copied()
        .chain(std::iter::once((to_minute, to_minute)));
    for (a, b) in gaps {
        let end = a.min(to_minute);
        if at < end
            && let Some(sums) = store
                .sum_minutes(&[(member, hub)], at, end)?
                .get(&(member.to_string(), hub.to_string()))
        {
            add(&mut total, sums);
        }
        at = at.max(b);
        if at >= to_minute {
            break;
        }
    }
    Ok(total)
}

/// `total += other`, saturating, field by field.
fn add(total: &mut Sums, other: &Sums) {
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
    total.avail_good = total.avail_good.saturating_add(avail_good);
    total.avail_bad = total.avail_bad.saturating_add(avail_bad);
    total.spawn_ok = total.spawn_ok.saturating_add(spawn_ok);
    total.spawn_failed = total.spawn_failed.saturating_add(spawn_failed);
    total.spawn_fast = total.spawn_fast.saturating_add(spawn_fast);
    total.spawn_timed = total.spawn_timed.saturating_add(spawn_timed);
    total.journey_good = total.journey_good.saturating_add(journey_good);
    total.journey_bad = total.journey_bad.saturating_add(journey_bad);
    total.journey_spawn_failed = total
        .journey_spawn_failed
        .saturating_add(journey_spawn_failed);
}
