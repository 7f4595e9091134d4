//! Cost recovery with the store: FOCUS import (good file, every refusal
//! with its line and nothing stored, idempotent re-import, a corrected
//! file replacing a bill), the period close (hash and text stored, never
//! rewritten, reproducible byte for byte), corrections for late ledger data
//! (summing exactly to the difference, carried once), and "no data".
//! Every test that stores runs on both backends
//! (`store::tests::on_both_backends!`): SQLite in a temporary directory and
//! PostgreSQL on the test server, plus two concurrent imports from two
//! replicas of one database.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use hubwatch_shared::config::{CollectorConfig, Period, load};
use sha2::{Digest, Sha256};

use super::CostModel;
use super::close::{PeriodData, PeriodStatus, close_due, last_closable, period_view, reproduce};
use super::import::{ImportError, account_map, import_file, parse_cost, parse_focus};
use super::store::{CostStore, ImportOutcome, PgCost, SqliteCost};
use crate::pipeline::CursorUpdate;
use crate::store::pg::PgStore;
use crate::store::tests::backends::{Backend, Fixture};
use crate::store::tests::on_both_backends;
use crate::store::{Store, StoreError};
use crate::usage::ledger::{Quantities, ServerKey, UsagePage};
use crate::usage::store::{CommitSummary, HourFilter, HubHour, ServerHour, UsageStore};

const NOV: Period = Period {
    year: 2026,
    month: 11,
};
const HOUR: i64 = 3_600_000;
const GRACE: i64 = 48 * HOUR;

const CONFIG: &str = r#"
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

[[clusters]]
id = "shared-gke"
kind = "shared"
billing_account = "acct-1"
hubs = ["leap/prod", "cryo/staging"]
[[clusters]]
id = "leap-aws"
kind = "dedicated"
member = "leap"

[[costs]]
cluster = "shared-gke"
period = "2026-11"
amount = "1000"

[[cost_pools]]
name = "operations"
amount = "300"
split = "even"
"#;

fn config() -> CollectorConfig {
    load(CONFIG, &HashMap::new()).expect("test config")
}

fn model() -> CostModel {
    CostModel::from_config(&config()).expect("model")
}

/// A backend that has the cost store.
trait CostBackend: Backend {
    type Cost: CostStore + 'static;
    fn cost(&self) -> Self::Cost;
    /// Rows of `cost_bill_changes`.
    fn bill_changes(&self) -> anyhow::Result<i64>;
}

impl CostBackend for Store {
    type Cost = SqliteCost;
    fn cost(&self) -> SqliteCost {
        SqliteCost::new(self.clone())
    }
    fn bill_changes(&self) -> anyhow::Result<i64> {
        Ok(self.read_with("test: counting bill changes", |c| {
            c.query_row("SELECT count(*) FROM cost_bill_changes", [], |r| r.get(0))
        })?)
    }
}

impl CostBackend for PgStore {
    type Cost = PgCost;
    fn cost(&self) -> PgCost {
        PgCost::new(self.clone())
    }
    fn bill_changes(&self) -> anyhow::Result<i64> {
        Ok(
            self.read_with("test: counting bill changes", async |client| {
                let row = client
                    .query_one("SELECT count(*) FROM cost_bill_changes", &[])
                    .await?;
                Ok(row.try_get(0)?)
            })?,
        )
    }
}

fn temp_store<B: CostBackend>() -> anyhow::Result<(Fixture, B::Cost, B)> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    Ok((fx, store.cost(), store))
}

/// The usage seam backed by vectors: the close reads only `server_hours`
/// and `hub_hours`, and the test adds "late" rows between calls.
#[derive(Default)]
struct Ledger {
    servers: Mutex<Vec<ServerHour>>,
    hubs: Mutex<Vec<HubHour>>,
}

impl Ledger {
    fn add(&self, member: &str, hub: &str, hour: i64, server_ms: u64, memory: u64) {
        self.servers.lock().expect("lock").push(ServerHour {
            key: ServerKey {
                member: member.into(),
                hub: hub.into(),
                user: "u1".into(),
                server: String::new(),
            },
            hour,
            quantities: Quantities {
                server_ms,
                memory_request_byte_seconds: memory,
                cpu_request_millicore_seconds: memory / 1000,
                ..Quantities::default()
            },
        });
        self.hubs.lock().expect("lock").push(HubHour {
            member: member.into(),
            hub: hub.into(),
            hour,
            observed_ms: 3_600_000,
        });
    }
}

impl UsageStore for Ledger {
    fn commit(
        &self,
        _page: &UsagePage,
        _cursor: Option<&CursorUpdate<'_>>,
        _max_gap_ms: i64,
    ) -> Result<CommitSummary, StoreError> {
        Ok(CommitSummary::default())
    }

    fn server_hours(&self, f: &HourFilter) -> Result<Vec<ServerHour>, StoreError> {
        Ok(self
            .servers
            .lock()
            .expect("lock")
            .iter()
            .filter(|h| h.hour >= f.from_ms && h.hour < f.to_ms)
            .cloned()
            .collect())
    }

    fn hub_hours(&self, f: &HourFilter) -> Result<Vec<HubHour>, StoreError> {
        Ok(self
            .hubs
            .lock()
            .expect("lock")
            .iter()
            .filter(|h| h.hour >= f.from_ms && h.hour < f.to_ms)
            .cloned()
            .collect())
    }

    // The late-data tests never prune or infer stops.
    fn prune_points(&self, _before_ms: i64, _limit: u64) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn bounded_server_hours(
        &self,
        _f: &HourFilter,
    ) -> Result<std::collections::BTreeSet<(ServerKey, i64)>, StoreError> {
        Ok(std::collections::BTreeSet::new())
    }

    fn server_points(
        &self,
        _member: Option<&str>,
        _from_ms: i64,
        _to_ms: i64,
    ) -> Result<Vec<(ServerKey, crate::usage::ledger::Point)>, StoreError> {
        // The close reads hours only.
        Ok(Vec::new())
    }
}

const HEADER: &str = "BillingAccountId,SubAccountId,BillingPeriodStart,BillingPeriodEnd,ChargeCategory,BilledCost,EffectiveCost,BillingCurrency,ServiceName\n";

fn good_file() -> String {
    format!(
        "{HEADER}\
         B1,acct-1,2026-11-01T00:00:00Z,2026-12-01T00:00:00Z,Usage,600.1234565,1,EUR,Compute\n\
         B1,acct-1,2026-11-01T00:00:00Z,2026-12-01T00:00:00Z,Usage,1.5E2,1,EUR,Storage\n\
         B1,leap-aws,2026-11-01T00:00:00Z,2026-12-01T00:00:00Z,Usage,0.0000005,1,EUR,Compute\n\
         B1,leap-aws,2026-11-01T00:00:00Z,2026-12-01T00:00:00Z,Usage,0.0000010,1,EUR,Compute\n\
         B1,acct-1,2026-10-01T00:00:00Z,2026-11-01T00:00:00Z,Usage,\"99.5\",1,EUR,Compute\n"
    )
}

#[test]
fn a_focus_file_sums_billed_cost_per_cluster_and_month_exactly() {
    let parsed = parse_focus(good_file().as_bytes(), "EUR", &account_map(&config()))
        .expect("a good file parses");
    assert_eq!(parsed.rows, 5);
    let bills: Vec<(String, String, u64, u64)> = parsed
        .bills
        .iter()
        .map(|b| {
            (
                b.cluster.clone(),
                b.period.to_string(),
                b.amount_micros,
                b.rows,
            )
        })
        .collect();
    assert_eq!(
        bills,
        vec![
            // 600.1234565 + 150 = 750.1234565, half to even: .123456 (6 even).
            ("leap-aws".into(), "2026-11".into(), 2, 2),
            ("shared-gke".into(), "2026-10".into(), 99_500_000, 1),
            ("shared-gke".into(), "2026-11".into(), 750_123_456, 2),
        ],
        "0.0000005 + 0.0000010 = 0.0000015 rounds half to even to 0.000002; \
         rows are summed exactly before the one rounding"
    );
}

#[test]
fn costs_parse_exactly_and_refuse_signs_and_words() {
    assert_eq!(parse_cost("1"), Ok(1_000_000_000_000_000_000));
    assert_eq!(parse_cost("0.000000000000000001"), Ok(1));
    // 19th decimal: half to even at 18 decimals.
    assert_eq!(parse_cost("0.0000000000000000015"), Ok(2));
    assert_eq!(parse_cost("0.0000000000000000025"), Ok(2));
    assert_eq!(parse_cost("2.5e-18"), Ok(2));
    assert_eq!(parse_cost("1E3"), Ok(1_000 * 1_000_000_000_000_000_000));
    assert!(parse_cost("-1").is_err_and(|e| e.contains("negative")));
    for bad in ["", "abc", "1,5", "1.2.3", "NaN", "e5", "1e", "$3"] {
        assert!(parse_cost(bad).is_err(), "{bad:?} must be refused");
    }
}

fn refused_line(result: Result<impl std::fmt::Debug, ImportError>) -> (u64, String) {
    match result {
        Err(ImportError::Refused { line, reason }) => (line, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn bad_input_is_refused_whole_with_its_line_and_nothing_is_stored<B: CostBackend>()
-> anyhow::Result<()> {
    let (_dir, cost, _) = temp_store::<B>()?;
    let (m, accounts) = (model(), account_map(&config()));
    let ok = "B1,acct-1,2026-11-01T00:00:00Z,2026-12-01T00:00:00Z,Usage,10,1,EUR,Compute\n";
    let cases: Vec<(String, u64, &str)> = vec![
        (
            "SubAccountId,BillingPeriodStart,BilledCost\nacct-1,2026-11-01T00:00:00Z,1\n".into(),
            1,
            "BillingCurrency",
        ),
        (
            format!("{HEADER}{ok}B1,acct-1,2026-11-01T00:00:00Z,x,Usage,-3.5,1,EUR,C\n"),
            3,
            "negative",
        ),
        (
            format!("{HEADER}{ok}{ok}B1,acct-1,2026-11-01T00:00:00Z,x,Usage,ten,1,EUR,C\n"),
            4,
            "not a number",
        ),
        (
            format!("{HEADER}{ok}B1,acct-9,2026-11-01T00:00:00Z,x,Usage,1,1,EUR,C\n"),
            3,
            "acct-9",
        ),
        (
            format!("{HEADER}{ok}B1,acct-1,2026-11-01T00:00:00Z,x,Usage,1,1,USD,C\n"),
            3,
            "\"USD\" is not the cost model's currency \"EUR\"",
        ),
        (
            format!("{HEADER}{ok}B1,acct-1,2026-11-15T00:00:00Z,x,Usage,1,1,EUR,C\n"),
            3,
            "first instant",
        ),
    ];
    for (text, want_line, want_reason) in cases {
        let (line, reason) = refused_line(import_file(
            &cost,
            &m,
            &accounts,
            "bad.csv",
            text.as_bytes(),
            1,
        ));
        assert_eq!(line, want_line, "{reason}");
        assert!(
            reason.contains(want_reason),
            "{reason:?} lacks {want_reason:?}"
        );
        assert!(
            cost.bills(NOV).expect("bills").is_empty(),
            "nothing imported"
        );
    }
    // The refused files left no import record: a good file still imports.
    let report =
        import_file(&cost, &m, &accounts, "ok.csv", good_file().as_bytes(), 1).expect("good file");
    assert!(matches!(
        report.outcome,
        ImportOutcome::Imported { added: 3, .. }
    ));
    Ok(())
}

async fn reimport_changes_nothing_and_a_corrected_file_replaces_the_bill_recorded<
    B: CostBackend,
>() -> anyhow::Result<()> {
    let (_dir, cost, store) = temp_store::<B>()?;
    let (m, accounts) = (model(), account_map(&config()));
    let file = good_file();
    let first = import_file(&cost, &m, &accounts, "a.csv", file.as_bytes(), 10).expect("import");
    assert_eq!(
        first.sha256,
        hex::encode(Sha256::digest(file.as_bytes())),
        "keyed by the file's SHA-256"
    );
    let before = cost.bills(NOV).expect("bills");
    let again = import_file(&cost, &m, &accounts, "a.csv", file.as_bytes(), 20).expect("again");
    assert_eq!(
        again.outcome,
        ImportOutcome::AlreadyImported { imported_at_ms: 10 }
    );
    assert_eq!(cost.bills(NOV).expect("bills"), before, "nothing changed");

    let corrected = file.replace("600.1234565", "700");
    let third =
        import_file(&cost, &m, &accounts, "b.csv", corrected.as_bytes(), 30).expect("corrected");
    let ImportOutcome::Imported {
        added,
        changed,
        unchanged,
    } = third.outcome
    else {
        panic!("a different file imports")
    };
    assert_eq!((added, unchanged), (0, 2));
    assert_eq!(changed.len(), 1);
    assert_eq!(
        (changed[0].old_micros, changed[0].new_micros),
        (750_123_456, 850_000_000)
    );
    let now: BTreeMap<String, u64> = cost
        .bills(NOV)
        .expect("bills")
        .into_iter()
        .map(|b| (b.total.cluster, b.total.amount_micros))
        .collect();
    assert_eq!(now["shared-gke"], 850_000_000);
    assert_eq!(store.bill_changes()?, 1, "the replacement is recorded");
    Ok(())
}

fn figures(data: &PeriodData) -> &super::close::PeriodFigures {
    match data {
        PeriodData::Measured(f) => f,
        PeriodData::NoData => panic!("expected figures"),
    }
}

async fn a_month_closes_once_after_the_grace_with_its_model_text_and_hash<B: CostBackend>()
-> anyhow::Result<()> {
    let (_dir, cost, store) = temp_store::<B>()?;
    let (m, ledger) = (model(), Ledger::default());
    ledger.add("leap", "prod", NOV.start_ms(), 3_600_000, 3_000_000);
    ledger.add(
        "cryo",
        "staging",
        NOV.start_ms() + HOUR,
        1_800_000,
        1_000_000,
    );
    // An imported bill overrides [[costs]] for the same cluster and month.
    import_file(
        &cost,
        &m,
        &account_map(&config()),
        "a.csv",
        good_file().as_bytes(),
        1,
    )
    .expect("import");

    let due = NOV.end_ms() + GRACE;
    assert_eq!(last_closable(due - 1, GRACE), Some(NOV.prev()));
    assert!(
        close_due(&cost, &ledger, &m, GRACE, due - 1)
            .expect("close")
            .iter()
            .all(|p| *p != NOV)
    );
    let provisional = period_view(&cost, &ledger, &m, NOV, due - 1).expect("view");
    assert_eq!(provisional.status, PeriodStatus::Provisional);

    assert_eq!(
        close_due(&cost, &ledger, &m, GRACE, due).expect("close"),
        vec![NOV]
    );
    let closed = cost.closed(NOV).expect("read").expect("closed");
    assert_eq!(closed.closed_at_ms, due);
    assert_eq!(
        closed.model_hash,
        hex::encode(Sha256::digest(closed.model_text.as_bytes()))
    );
    assert!(
        closed.model_text.contains("cost shared-gke 750123456\n"),
        "{}",
        closed.model_text
    );
    let f = figures(&closed.data);
    let total: u64 = f.lines.iter().map(|l| l.amount_micros).sum();
    assert_eq!(
        total,
        750_123_456 + 2 + 300_000_000,
        "imported bills + pool"
    );
    assert_eq!(f.hubs.len(), 2);
    assert_eq!(
        f.hubs[0].coverage_ppm,
        1_000_000 / 720,
        "1 h of a 30-day month"
    );
    for line in &f.lines {
        assert_eq!(
            line.shares.values().sum::<u64>() + line.unallocated_micros,
            line.amount_micros
        );
    }
    // The same frozen view whatever changes later; closing again does nothing.
    let view = period_view(&cost, &ledger, &m, NOV, due).expect("view");
    assert_eq!(view.status, PeriodStatus::Closed { closed_at_ms: due });
    ledger.add(
        "cryo",
        "staging",
        NOV.start_ms() + 2 * HOUR,
        3_600_000,
        9_000_000,
    );
    assert!(
        close_due(&cost, &ledger, &m, GRACE, due + HOUR)
            .expect("close")
            .is_empty()
    );
    assert_eq!(cost.closed(NOV).expect("read").expect("closed"), closed);
    assert_eq!(
        period_view(&cost, &ledger, &m, NOV, due + HOUR)
            .expect("view")
            .data,
        view.data
    );
    // Not even by hand.
    let update = store.execute("UPDATE cost_closed_periods SET model_hash = 'x'");
    let err = update.expect_err("the trigger refuses a rewrite");
    // The trigger's message is in the error's chain (PostgreSQL's is the
    // driver error's source).
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert!(chain.contains("never rewritten"), "{chain}");
    assert_eq!(
        cost.closed(NOV)?.expect("closed"),
        closed,
        "still the frozen record"
    );
    Ok(())
}

async fn a_closed_allocation_is_reproduced_byte_for_byte_from_its_stored_model_text<
    B: CostBackend,
>() -> anyhow::Result<()> {
    let (_dir, cost, _) = temp_store::<B>()?;
    let (m, ledger) = (model(), Ledger::default());
    ledger.add("leap", "prod", NOV.start_ms(), 3_600_000, 3_000_007);
    ledger.add("cryo", "staging", NOV.start_ms(), 1_000_000, 1_000_003);
    close_due(&cost, &ledger, &m, GRACE, NOV.end_ms() + GRACE).expect("close");
    let closed = cost.closed(NOV).expect("read").expect("closed");
    let (parsed, period) = CostModel::from_canonical_text(&closed.model_text).expect("parses");
    assert_eq!(period, NOV);
    assert_eq!(
        parsed.canonical_text(NOV),
        closed.model_text,
        "exact round trip"
    );
    let again = serde_json::to_string(&reproduce(&closed).expect("reproduce")).expect("json");
    let stored = serde_json::to_string(&figures(&closed.data).lines).expect("json");
    assert_eq!(again, stored);
    // A different config later does not change what the text reproduces.
    let mut cfg = config();
    cfg.cost_pools[0].amount = "999".into();
    let other = CostModel::from_config(&cfg).expect("model");
    assert_ne!(other.hash(NOV), closed.model_hash);
    Ok(())
}

async fn late_ledger_data_becomes_corrections_that_sum_to_the_difference_once<B: CostBackend>()
-> anyhow::Result<()> {
    let (_dir, cost, _) = temp_store::<B>()?;
    let (m, ledger) = (model(), Ledger::default());
    ledger.add("leap", "prod", NOV.start_ms(), 3_600_000, 3_000_000);
    ledger.add("cryo", "staging", NOV.start_ms(), 3_600_000, 1_000_000);
    let due = NOV.end_ms() + GRACE;
    close_due(&cost, &ledger, &m, GRACE, due).expect("close");
    let frozen = figures(&cost.closed(NOV).expect("read").expect("closed").data).clone();

    // Late rows for November: cryo used more than the close saw.
    ledger.add(
        "cryo",
        "staging",
        NOV.start_ms() + 5 * HOUR,
        3_600_000,
        4_000_001,
    );
    let dec = NOV.next();
    let view = period_view(&cost, &ledger, &m, dec, due + HOUR).expect("view");
    assert_eq!(view.status, PeriodStatus::Provisional);
    assert!(!view.corrections.is_empty());
    assert!(view.corrections.iter().all(|c| c.corrected_period == NOV));

    // The exact difference: November recomputed now minus frozen.
    let live = super::close::compute(&m, NOV, frozen.bills.clone(), &ledger).expect("live");
    let live = figures(&live);
    for member in ["leap", "cryo"] {
        let delta: i128 = view
            .corrections
            .iter()
            .filter(|c| c.member.as_deref() == Some(member))
            .map(|c| i128::from(c.delta_micros))
            .sum();
        let want = live.member_totals.get(member).copied().unwrap_or(0) as i128
            - frozen.member_totals.get(member).copied().unwrap_or(0) as i128;
        assert_eq!(delta, want, "{member}");
        assert_ne!(want, 0);
    }
    let net: i64 = view.corrections.iter().map(|c| c.delta_micros).sum();
    assert_eq!(net, 0, "the bill did not change, only who pays it");
    // Only the first open month carries them.
    let jan = dec.next();
    assert!(
        period_view(&cost, &ledger, &m, jan, due + HOUR)
            .expect("view")
            .corrections
            .is_empty()
    );

    // December closes with them frozen; January then carries nothing again.
    close_due(&cost, &ledger, &m, GRACE, dec.end_ms() + GRACE).expect("close");
    let dec_closed = cost.closed(dec).expect("read").expect("closed");
    assert_eq!(dec_closed.corrections, view.corrections);
    let jan_view = period_view(&cost, &ledger, &m, jan, dec.end_ms() + GRACE).expect("view");
    assert!(
        jan_view.corrections.is_empty(),
        "{:?}",
        jan_view.corrections
    );
    Ok(())
}

async fn a_month_with_no_data_says_so<B: CostBackend>() -> anyhow::Result<()> {
    let (_dir, cost, _) = temp_store::<B>()?;
    let (m, ledger) = (model(), Ledger::default());
    let empty = Period {
        year: 2026,
        month: 8,
    };
    let view = period_view(&cost, &ledger, &m, empty, NOV.start_ms()).expect("view");
    assert_eq!(view.data, PeriodData::NoData);
    assert_eq!(view.status, PeriodStatus::Provisional);
    // Closed empty, it still says so (and keeps its model text).
    close_due(&cost, &ledger, &m, GRACE, empty.end_ms() + GRACE).expect("close");
    let closed = period_view(&cost, &ledger, &m, empty, NOV.start_ms()).expect("view");
    assert!(matches!(closed.status, PeriodStatus::Closed { .. }));
    assert_eq!(closed.data, PeriodData::NoData);
    Ok(())
}

/// Two replicas import two files naming the same bills at the same moment:
/// the imports are serialised, so exactly one adds the bills and the other
/// finds them (one changed, recorded once), whichever commits first.
async fn concurrent_imports_from_two_replicas_record_each_change_once<B: CostBackend>()
-> anyhow::Result<()> {
    let fx = B::fixture();
    let (a, b) = (B::open(&fx.cfg)?, B::open(&fx.cfg)?);
    let file = good_file();
    let corrected = file.replace("600.1234565", "700");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let run = |store: B, name: &'static str, text: String| {
        let barrier = std::sync::Arc::clone(&barrier);
        std::thread::spawn(move || {
            let (m, accounts) = (model(), account_map(&config()));
            barrier.wait();
            import_file(&store.cost(), &m, &accounts, name, text.as_bytes(), 5)
                .map(|report| report.outcome)
        })
    };
    let first = run(a.clone(), "a.csv", file);
    let second = run(b.clone(), "b.csv", corrected);
    let outcomes = [
        first.join().expect("no panic")?,
        second.join().expect("no panic")?,
    ];
    let mut summary: Vec<(u64, usize, u64)> = outcomes
        .iter()
        .map(|o| match o {
            ImportOutcome::Imported {
                added,
                changed,
                unchanged,
            } => (*added, changed.len(), *unchanged),
            other => panic!("two different files both import: {other:?}"),
        })
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        vec![(0, 1, 2), (3, 0, 0)],
        "one import added the bills, the other replaced one"
    );
    assert_eq!(a.bill_changes()?, 1, "the replacement is recorded once");
    assert_eq!(b.cost().bills(NOV)?.len(), 2);
    Ok(())
}

on_both_backends!(
    bad_input_is_refused_whole_with_its_line_and_nothing_is_stored,
    reimport_changes_nothing_and_a_corrected_file_replaces_the_bill_recorded,
    a_month_closes_once_after_the_grace_with_its_model_text_and_hash,
    a_closed_allocation_is_reproduced_byte_for_byte_from_its_stored_model_text,
    late_ledger_data_becomes_corrections_that_sum_to_the_difference_once,
    a_month_with_no_data_says_so,
    concurrent_imports_from_two_replicas_record_each_change_once,
);
