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
            total.add(sums);
        }
        at = at.max(b);
        if at >= to_minute {
            break;
        }
    }
    Ok(total)
}
