//! Largest-remainder splitting of an integer amount by integer weights.
//!
//! Every cost line is divided with this one function, so every split conserves
//! the amount to the last micro-unit: each party gets the floor of its exact
//! quota, and the few units left over go one each to the largest remainders,
//! ties broken by key (ascending) so the result never depends on input order.

use std::collections::BTreeMap;

/// Splits `total` among `weights` in proportion, by largest remainder.
///
/// Returns `None` when every weight is zero (nothing to split by: the caller
/// leaves the amount unallocated). Otherwise every key of `weights` appears
/// in the result and the parts sum to exactly `total`. Keys are visited in
/// their `Ord` order, which is also the tie-break for equal remainders.
pub fn largest_remainder<K: Ord + Clone>(
    total: u64,
    weights: &BTreeMap<K, u128>,
) -> Option<BTreeMap<K, u64>> {
    // Scale weights down until the largest fits in 64 bits, so that
    // total × weight (at most 2^64 × 2^64) cannot overflow u128. The loss is
    // below one part in 2^63 of the largest weight and keeps conservation.
    let max = weights.values().copied().max().unwrap_or(0);
    let shift = (128 - max.leading_zeros()).saturating_sub(64);
    let scaled: Vec<(&K, u128)> = weights.iter().map(|(k, w)| (k, *w >> shift)).collect();
    let sum: u128 = scaled.iter().map(|(_, w)| *w).sum();
    if sum == 0 {
        return None;
    }
    let total_wide = u128::from(total);
    let mut parts: Vec<(&K, u64, u128)> = scaled
        .iter()
        .map(|(k, w)| {
            let exact = total_wide * w;
            // exact / sum <= total, so it fits in u64.
            let floor = u64::try_from(exact / sum).unwrap_or(total);
            (*k, floor, exact % sum)
        })
        .collect();
    let given: u64 = parts.iter().map(|(_, q, _)| *q).sum();
    // Fewer than one unit per party is left over.
    let mut left = total - given;
    let mut order: Vec<usize> = (0..parts.len()).collect();
    // Largest remainder first; equal remainders in key order (the stable sort
    // keeps the BTreeMap's ascending key order among equals).
    order.sort_by(|&a, &b| parts[b].2.cmp(&parts[a].2));
    for i in order {
        if left == 0 {
            break;
        }
        parts[i].1 += 1;
        left -= 1;
    }
    Some(parts.into_iter().map(|(k, q, _)| (k.clone(), q)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(pairs: &[(&'static str, u128)]) -> BTreeMap<&'static str, u128> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn ten_by_three_equal_weights_gives_the_extra_unit_to_the_first_key() {
        // 10 / 3 = 3 r 1 each; one unit left, remainders tie, "a" < "b" < "c".
        let got = largest_remainder(10, &w(&[("c", 1), ("a", 1), ("b", 1)])).expect("weights");
        assert_eq!(
            got,
            w(&[("a", 4), ("b", 3), ("c", 3)])
                .into_iter()
                .map(|(k, v)| (k, v as u64))
                .collect()
        );
    }

    #[test]
    fn largest_remainder_wins_over_key_order() {
        // 100 × 1/6 = 16.67, 100 × 5/6 = 83.33: floors 16 + 83 = 99, the
        // remainder .67 of "z" beats .33 of "a".
        let got = largest_remainder(100, &w(&[("a", 5), ("z", 1)])).expect("weights");
        assert_eq!(got.get("a"), Some(&83));
        assert_eq!(got.get("z"), Some(&17));
    }

    #[test]
    fn zero_weights_split_nothing() {
        assert_eq!(largest_remainder(5, &w(&[("a", 0), ("b", 0)])), None);
        assert_eq!(largest_remainder::<&str>(5, &BTreeMap::new()), None);
    }

    #[test]
    fn huge_weights_neither_overflow_nor_lose_units() {
        let got = largest_remainder(
            u64::MAX,
            &w(&[("a", u128::MAX), ("b", u128::MAX / 3), ("c", 1)]),
        )
        .expect("weights");
        assert_eq!(
            got.values().map(|v| u128::from(*v)).sum::<u128>(),
            u128::from(u64::MAX)
        );
    }
}
