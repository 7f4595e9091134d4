//! The cost model's split: a hand-computed month, the model hash, and
//! properties (conservation, determinism) over random models and usage.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hubwatch_shared::config::{CollectorConfig, ConfigError, Period, load};
use proptest::prelude::*;

use super::*;

const MONTH: Period = Period {
    year: 2026,
    month: 11,
};

/// Three members, a shared cluster, a dedicated one, a shared one nobody
/// used, a bill for another month, and one pool of each kind.
const MODEL: &str = r#"
currency = "EUR"
[[members]]
id = "leap"
tier = "premier"
[[members.hubs]]
name = "prod"
[[members]]
id = "cryo"
tier = "member"
[[members.hubs]]
name = "staging"
[[members]]
id = "nasa"
tier = "member"

[[clusters]]
id = "shared-gke"
kind = "shared"
hubs = ["leap/prod", "cryo/staging"]
cpu_weight = 1
memory_weight = 3
storage_weight = 1
[[clusters]]
id = "leap-aws"
kind = "dedicated"
member = "leap"
[[clusters]]
id = "spare"
kind = "shared"

[[costs]]
cluster = "shared-gke"
period = "2026-11"
amount = "1000.000001"
[[costs]]
cluster = "shared-gke"
period = "2026-10"
amount = "999"
[[costs]]
cluster = "leap-aws"
period = "2026-11"
amount = "500"
[[costs]]
cluster = "spare"
period = "2026-11"
amount = "50"

[[cost_pools]]
name = "operations"
amount = "100"
split = "even"
[[cost_pools]]
name = "engagement"
amount = "7"
split = "weight"
shares = [{ member = "leap", weight = 2 }, { member = "cryo", weight = 1 }]
[[cost_pools]]
name = "rtc"
amount = "10"
split = "funding"
shares = [{ member = "nasa", fraction = "0.4" }, { member = "leap", fraction = "0.6" }]
"#;

fn model(text: &str) -> CostModel {
    let cfg: CollectorConfig = load(text, &HashMap::new()).expect("valid config");
    CostModel::from_config(&cfg).expect("valid model")
}

fn row(
    member: &str,
    cluster: &str,
    cpu: (u64, u64),
    mem: (u64, u64),
    storage: u64,
) -> ClusterUsage {
    ClusterUsage {
        member: member.into(),
        cluster: cluster.into(),
        cpu_request_core_seconds: cpu.0,
        cpu_usage_core_seconds: cpu.1,
        memory_request_byte_seconds: mem.0,
        memory_usage_byte_seconds: mem.1,
        storage_byte_seconds: storage,
    }
}

fn usage() -> Vec<ClusterUsage> {
    vec![
        // leap: CPU max(3600, 7200) = 7200; memory max(100, 50) = 100.
        row("leap", "shared-gke", (3600, 7200), (100, 50), 0),
        // cryo: CPU max(3600, 1800) = 3600; memory max(200, 300) = 300; storage 1000.
        row("cryo", "shared-gke", (3600, 1800), (200, 300), 1000),
        // A member the model does not know: its storage share stays unallocated.
        row("ghost", "shared-gke", (0, 0), (0, 0), 1000),
        // A cluster without a bill in the model: ignored.
        row("nasa", "elsewhere", (10, 10), (10, 10), 10),
    ]
}

fn line<'a>(a: &'a Allocation, l: &CostLine) -> &'a LineAllocation {
    a.lines.iter().find(|x| &x.line == l).expect("line present")
}

fn m(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn a_hand_computed_month() {
    let a = allocate(&model(MODEL), MONTH, &usage());
    assert_eq!(a.currency, "EUR");
    // October's bill is not November's line; cluster lines by id, then pools by name.
    let names: Vec<&CostLine> = a.lines.iter().map(|l| &l.line).collect();
    assert_eq!(
        names,
        [
            &CostLine::Cluster("leap-aws".into()),
            &CostLine::Cluster("shared-gke".into()),
            &CostLine::Cluster("spare".into()),
            &CostLine::Pool("engagement".into()),
            &CostLine::Pool("operations".into()),
            &CostLine::Pool("rtc".into()),
        ]
    );

    // leap-aws, dedicated: all 500.000000 to leap.
    let l = line(&a, &CostLine::Cluster("leap-aws".into()));
    assert_eq!(l.basis, Basis::Dedicated);
    assert_eq!(l.shares, m(&[("leap", 500_000_000)]));
    assert_eq!(l.unallocated_micros, 0);

    // shared-gke, 1000.000001 = 1_000_000_001 micros, weights cpu 1 : memory 3 : storage 1
    // (all three used, sum 5):
    //   cpu     1_000_000_001 × 1/5 = 200_000_000 r 1
    //   memory  3_000_000_003 / 5   = 600_000_000 r 3
    //   storage                       200_000_000 r 1
    //   floors sum to 1_000_000_000; the 1 left goes to the largest remainder: memory.
    //   => cpu 200_000_000, memory 600_000_001, storage 200_000_000.
    // CPU by max(request, usage): leap 7200, cryo 3600, total 10_800.
    //   leap 200_000_000 × 7200 / 10_800 = 133_333_333 r 3600
    //   cryo 200_000_000 × 3600 / 10_800 =  66_666_666 r 7200
    //   1 left -> cryo (7200 > 3600): leap 133_333_333, cryo 66_666_667.
    // Memory by max(request, usage): leap 100, cryo 300, total 400.
    //   leap 600_000_001 × 100 / 400 = 150_000_000 r 100
    //   cryo 600_000_001 × 300 / 400 = 450_000_000 r 300
    //   1 left -> cryo: leap 150_000_000, cryo 450_000_001.
    // Storage by byte-seconds: cryo 1000, ghost 1000: 100_000_000 each; ghost is no
    //   member, so its 100_000_000 is unallocated (not pushed onto cryo or leap).
    // leap = 133_333_333 + 150_000_000 = 283_333_333
    // cryo = 66_666_667 + 450_000_001 + 100_000_000 = 616_666_668
    // 283_333_333 + 616_666_668 + 100_000_000 = 1_000_000_001.
    let l = line(&a, &CostLine::Cluster("shared-gke".into()));
    assert_eq!(l.basis, Basis::ByUse);
    assert_eq!(l.amount_micros, 1_000_000_001);
    let parts: Vec<(Resource, u64)> = l
        .parts
        .iter()
        .map(|p| (p.resource, p.amount_micros))
        .collect();
    assert_eq!(
        parts,
        [
            (Resource::Cpu, 200_000_000),
            (Resource::Memory, 600_000_001),
            (Resource::Storage, 200_000_000)
        ]
    );
    assert_eq!(
        l.parts[0].shares,
        m(&[("cryo", 66_666_667), ("leap", 133_333_333)])
    );
    assert_eq!(
        l.parts[1].shares,
        m(&[("cryo", 450_000_001), ("leap", 150_000_000)])
    );
    assert_eq!(l.parts[2].shares, m(&[("cryo", 100_000_000)]));
    assert_eq!(l.parts[2].unallocated_micros, 100_000_000);
    assert_eq!(l.shares, m(&[("cryo", 616_666_668), ("leap", 283_333_333)]));
    assert_eq!(l.unallocated_micros, 100_000_000);

    // spare: shared, billed 50, nobody used it: all unallocated.
    let l = line(&a, &CostLine::Cluster("spare".into()));
    assert_eq!(l.basis, Basis::NoUse);
    assert!(l.shares.is_empty());
    assert_eq!(l.unallocated_micros, 50_000_000);

    // engagement, 7 by weight leap 2 : cryo 1:
    //   leap 14_000_000 / 3 = 4_666_666 r 2; cryo 7_000_000 / 3 = 2_333_333 r 1;
    //   1 left -> leap (2 > 1).
    let l = line(&a, &CostLine::Pool("engagement".into()));
    assert_eq!(l.basis, Basis::Weight);
    assert_eq!(l.shares, m(&[("cryo", 2_333_333), ("leap", 4_666_667)]));

    // operations, 100 evenly over 3 members: 33_333_333 r 1 each; the 1 left
    // goes to the first id on the tie: cryo.
    let l = line(&a, &CostLine::Pool("operations".into()));
    assert_eq!(l.basis, Basis::Even);
    assert_eq!(
        l.shares,
        m(&[
            ("cryo", 33_333_334),
            ("leap", 33_333_333),
            ("nasa", 33_333_333)
        ])
    );

    // rtc, 10 funded leap 0.6, nasa 0.4: exactly 6 and 4.
    let l = line(&a, &CostLine::Pool("rtc".into()));
    assert_eq!(l.basis, Basis::Funding);
    assert_eq!(l.shares, m(&[("leap", 6_000_000), ("nasa", 4_000_000)]));

    // Totals: leap 500_000_000 + 283_333_333 + 4_666_667 + 33_333_333 + 6_000_000;
    // cryo 616_666_668 + 2_333_333 + 33_333_334; nasa 33_333_333 + 4_000_000.
    assert_eq!(
        a.member_totals(),
        BTreeMap::from([
            ("cryo".to_string(), 652_333_335u128),
            ("leap".to_string(), 827_333_333),
            ("nasa".to_string(), 37_333_333),
        ])
    );
}

#[test]
fn the_model_text_is_canonical_and_its_hash_pinned() {
    let model = model(MODEL);
    let text = model.canonical_text(MONTH);
    assert_eq!(
        text,
        "hubwatch cost model v1\n\
         period 2026-11\n\
         currency EUR\n\
         member cryo\n\
         member leap\n\
         member nasa\n\
         cluster leap-aws dedicated member=leap hubs=\n\
         cluster shared-gke shared cpu_weight=1 memory_weight=3 storage_weight=1 hubs=cryo/staging,leap/prod\n\
         cluster spare shared cpu_weight=1 memory_weight=1 storage_weight=1 hubs=\n\
         cost leap-aws 500000000\n\
         cost shared-gke 1000000001\n\
         cost spare 50000000\n\
         pool engagement 7000000 weight cryo=1,leap=2\n\
         pool operations 100000000 even\n\
         pool rtc 10000000 funding leap=600000000,nasa=400000000\n"
    );
    // `printf '%s' "$text" | sha256sum`, computed once and pinned: a change
    // in the canonical text would silently break reproducing past reports.
    assert_eq!(model.hash(MONTH), PINNED_HASH);
    assert_eq!(allocate(&model, MONTH, &[]).model_hash, PINNED_HASH);
}

const PINNED_HASH: &str = "e13f6e7642c7c58ebc73f977c99c1d3844d46b50e99849664002cce496c6c9a8";

#[test]
fn the_hash_ignores_order_and_spelling_but_not_amounts() {
    let base = model(MODEL).hash(MONTH);
    // Same model, pools listed in another order and an amount spelled differently.
    let reordered = MODEL
        .replace("amount = \"500\"", "amount = \"500.000\"")
        .replace("shares = [{ member = \"nasa\", fraction = \"0.4\" }, { member = \"leap\", fraction = \"0.6\" }]",
                 "shares = [{ member = \"leap\", fraction = \"0.60\" }, { member = \"nasa\", fraction = \"0.4\" }]");
    assert_eq!(model(&reordered).hash(MONTH), base);
    // Another month's bill does not change this month's model.
    let other_month = MODEL.replace("amount = \"999\"", "amount = \"998\"");
    assert_eq!(model(&other_month).hash(MONTH), base);
    // One micro-unit more on this month's bill does.
    let changed = MODEL.replace("amount = \"1000.000001\"", "amount = \"1000.000002\"");
    assert_ne!(model(&changed).hash(MONTH), base);
}

#[test]
fn hubs_map_to_their_cluster() {
    let model = model(MODEL);
    assert_eq!(model.cluster_of("leap", "prod"), Some("shared-gke"));
    assert_eq!(model.cluster_of("cryo", "staging"), Some("shared-gke"));
    assert_eq!(model.cluster_of("cryo", "prod"), None);
    assert_eq!(model.cluster_of("nasa", "prod"), None);
}

#[test]
fn an_invalid_model_names_the_key() {
    let mut cfg: CollectorConfig = load(MODEL, &HashMap::new()).expect("valid");
    cfg.cost_pools[2].shares[0].fraction = Some("0.5".into());
    match CostModel::from_config(&cfg) {
        Err(ModelError::Config(ConfigError::Invalid { key, reason })) => {
            assert_eq!(key, "cost_pools[2].shares");
            assert!(reason.contains("not 1"), "{reason}");
        }
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

// ---- properties ----

const IDS: [&str; 6] = ["a", "b", "c", "d", "e", "zz"];

fn arb_model() -> impl Strategy<Value = CostModel> {
    let members = proptest::sample::subsequence(IDS.to_vec(), 0..=5);
    let clusters = proptest::collection::vec(
        (
            any::<bool>(),
            proptest::sample::select(IDS.to_vec()),
            0u32..5,
            0u32..5,
            0u32..5,
            any::<bool>(),
            0u64..=i64::MAX as u64,
        ),
        0..4,
    );
    let pools = proptest::collection::vec(
        (
            0u8..3,
            0u64..=i64::MAX as u64,
            proptest::collection::btree_map(proptest::sample::select(IDS.to_vec()), 1u64..10, 1..4),
        ),
        0..4,
    );
    (members, clusters, pools).prop_map(|(members, clusters, pools)| {
        let mut model = CostModel {
            currency: "USD".into(),
            members: members.iter().map(|s| s.to_string()).collect(),
            clusters: BTreeMap::new(),
            bills: BTreeMap::new(),
            pools: BTreeMap::new(),
        };
        for (i, (dedicated, member, cw, mw, sw, small, bill)) in clusters.into_iter().enumerate() {
            let id = format!("k{i}");
            let charge = if dedicated {
                Charge::Dedicated {
                    member: member.to_string(),
                }
            } else {
                Charge::Shared {
                    cpu_weight: cw,
                    memory_weight: mw,
                    storage_weight: sw,
                }
            };
            model.clusters.insert(
                id.clone(),
                Cluster {
                    charge,
                    hubs: BTreeSet::new(),
                },
            );
            // Small bills exercise rounding; big ones exercise overflow.
            let amount = if small { bill % 1000 } else { bill };
            model.bills.insert((id, MONTH), amount);
        }
        for (i, (kind, amount, shares)) in pools.into_iter().enumerate() {
            let shares: BTreeMap<String, u64> = shares
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let rule = match kind {
                0 => PoolRule::Even,
                1 => PoolRule::Weight(shares),
                _ => PoolRule::Funding(shares),
            };
            model.pools.insert(
                format!("p{i}"),
                Pool {
                    amount_micros: amount,
                    rule,
                },
            );
        }
        model
    })
}

fn arb_usage() -> impl Strategy<Value = Vec<ClusterUsage>> {
    proptest::collection::vec(
        (
            proptest::sample::select(IDS.to_vec()),
            0usize..5,
            proptest::collection::vec(prop_oneof![Just(0u64), 0u64..10_000, any::<u64>()], 5),
        )
            .prop_map(|(member, k, f)| ClusterUsage {
                member: member.to_string(),
                cluster: format!("k{k}"),
                cpu_request_core_seconds: f[0],
                cpu_usage_core_seconds: f[1],
                memory_request_byte_seconds: f[2],
                memory_usage_byte_seconds: f[3],
                storage_byte_seconds: f[4],
            }),
        0..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every line: members' shares plus unallocated equal the bill exactly;
    /// a shared line's parts add up too; only model members get shares.
    #[test]
    fn every_line_is_conserved(model in arb_model(), usage in arb_usage()) {
        let a = allocate(&model, MONTH, &usage);
        prop_assert_eq!(a.lines.len(), model.bills.len() + model.pools.len());
        for l in &a.lines {
            let shares: u128 = l.shares.values().map(|v| u128::from(*v)).sum();
            prop_assert_eq!(shares + u128::from(l.unallocated_micros), u128::from(l.amount_micros), "{:?}", l.line);
            if l.basis == Basis::ByUse || l.basis == Basis::Even {
                for m in l.shares.keys() {
                    prop_assert!(model.members.contains(m), "{} is no member", m);
                }
            }
            if l.basis == Basis::ByUse {
                let parts: u128 = l.parts.iter().map(|p| u128::from(p.amount_micros)).sum();
                prop_assert_eq!(parts, u128::from(l.amount_micros));
                for p in &l.parts {
                    let s: u128 = p.shares.values().map(|v| u128::from(*v)).sum();
                    prop_assert_eq!(s + u128::from(p.unallocated_micros), u128::from(p.amount_micros));
                }
            }
        }
        // And so for the whole period.
        let billed: u128 = a.lines.iter().map(|l| u128::from(l.amount_micros)).sum();
        let charged: u128 = a.member_totals().values().sum::<u128>()
            + a.lines.iter().map(|l| u128::from(l.unallocated_micros)).sum::<u128>();
        prop_assert_eq!(billed, charged);
    }

    /// Same input, same output; the order of usage rows does not matter.
    #[test]
    fn the_split_is_deterministic_and_order_free(
        model in arb_model(),
        (usage, shuffled) in arb_usage().prop_flat_map(|u| (Just(u.clone()), Just(u).prop_shuffle())),
    ) {
        let a = allocate(&model, MONTH, &usage);
        prop_assert_eq!(&a, &allocate(&model, MONTH, &usage));
        prop_assert_eq!(&a, &allocate(&model, MONTH, &shuffled));
    }

    /// Each share is its exact quota rounded down or up: never off by more than one micro-unit.
    #[test]
    fn largest_remainder_is_within_one_unit_of_the_exact_quota(
        total in any::<u64>(),
        weights in proptest::collection::btree_map(0u8..20, 0u64..1_000_000, 1..10),
    ) {
        let w: BTreeMap<u8, u128> = weights.iter().map(|(k, v)| (*k, u128::from(*v))).collect();
        let sum: u128 = w.values().sum();
        match largest_remainder(total, &w) {
            None => prop_assert_eq!(sum, 0),
            Some(split) => {
                prop_assert_eq!(split.values().map(|v| u128::from(*v)).sum::<u128>(), u128::from(total));
                for (k, v) in &split {
                    let floor = u128::from(total) * w[k] / sum;
                    prop_assert!(u128::from(*v) == floor || u128::from(*v) == floor + 1);
                }
            }
        }
    }
}

#[test]
fn ledger_hours_sum_per_member_and_cluster() {
    use crate::usage::ledger::{Quantities, ServerKey};
    use crate::usage::store::ServerHour;
    let hour = |member: &str, hub: &str, user: &str, cpu: u64, storage: u64| ServerHour {
        key: ServerKey {
            member: member.into(),
            hub: hub.into(),
            user: user.into(),
            server: String::new(),
        },
        hour: MONTH.start_ms(),
        quantities: Quantities {
            server_ms: 3_600_000,
            cpu_request_millicore_seconds: cpu,
            storage_byte_seconds: storage,
            ..Quantities::default()
        },
    };
    let model = model(MODEL);
    let summed = cluster_usage(
        &model,
        &[
            hour("leap", "prod", "a", 10, 1),
            hour("leap", "prod", "b", 5, 2),
            hour("cryo", "staging", "c", 7, 0),
            // A hub on no declared cluster: kept apart, with its server time.
            hour("nasa", "lab", "d", 9, 9),
        ],
    );
    assert_eq!(
        summed.clusters,
        vec![
            row("cryo", "shared-gke", (7, 0), (0, 0), 0),
            row("leap", "shared-gke", (15, 0), (0, 0), 3),
        ]
    );
    assert_eq!(
        summed.unassigned,
        BTreeMap::from([(("nasa".to_string(), "lab".to_string()), 3600)])
    );
}
