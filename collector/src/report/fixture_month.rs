//! The hand-computed month (test fixture): October 2026, three members, two
//! clusters, known servers and snapshots, a known bill and pool. Every
//! expected figure below is worked out by hand in the comments; the report
//! tests assert each one in every format.
//!
//! Period: 2026-10, 31 days = 744 h = 2,678,400,000 ms.
//!
//! Members and hubs:
//! - `leap` (premier), hub `prod` on the shared cluster `shared-gke`;
//! - `cryo` (member), hub `staging` on `shared-gke`;
//! - `mesa` (starter), hub `lab` on the dedicated cluster `mesa-aws`.
//!
//! Servers (each with a `Resources` snapshot every 15 s from its start to
//! its stop inclusive, so the levels are held for exactly the run; no usage
//! figures, no storage):
//!
//! | member | user | start (UTC)      | stop             | hours | CPU req | memory req |
//! |--------|------|------------------|------------------|-------|---------|------------|
//! | leap   | ada  | Oct 1 10:00      | Oct 1 14:00      | 4     | 1000 m  | 2 GiB      |
//! | leap   | bob  | Oct 2 09:00      | Oct 2 11:00      | 2     | 500 m   | 1 GiB      |
//! | cryo   | cid  | Oct 1 12:00      | Oct 1 18:00      | 6     | 2000 m  | 1 GiB      |
//! | mesa   | dan  | Oct 3 00:00      | Oct 3 03:00      | 3     | 250 m   | 512 MiB    |
//! | mesa   | eve  | Oct 3 01:00      | Oct 3 02:00      | 1     | 250 m   | 512 MiB    |
//!
//! One `Activity` event: ada at Oct 1 12:00.
//!
//! Idle (running with no activity in the hour before): ada idle 11:00-12:00
//! and 13:00-14:00 = 2 h, bob 10:00-11:00 = 1 h: leap 3 h = 10,800 s
//! (`3.00`); cid 13:00-18:00 = 5 h = 18,000 s; dan 01:00-03:00 = 2 h, eve
//! none: mesa 7,200 s.
//!
//! Usage per hub:
//! - leap/prod: server 4 h + 2 h = 6 h = 21,600 s; active users 2 (ada, bob);
//!   CPU 1000 × 14,400 + 500 × 7,200 = 18,000,000 millicore-s;
//!   memory 2 GiB × 14,400 s + 1 GiB × 7,200 s = 10 GiB-h
//!   = 2,147,483,648 × 14,400 + 1,073,741,824 × 7,200 = 38,654,705,664,000 byte-s;
//!   observed: the snapshot instants, 15 s apart, during the runs: 6 h =
//!   21,600,000 ms; coverage 21,600,000 / 2,678,400,000 = 0.008064516…
//!   (csv `0.008065`, md/html `0.8%`).
//! - cryo/staging: 21,600 s, 1 user; CPU 2000 × 21,600 = 43,200,000;
//!   memory 1 GiB × 21,600 s = 6 GiB-h = 23,192,823,398,400 byte-s;
//!   observed 6 h, coverage as leap's.
//! - mesa/lab: dan 3 h + eve 1 h = 4 h = 14,400 s, 2 users;
//!   CPU 250 × 14,400 = 3,600,000; memory 0.5 GiB × 4 h = 2 GiB-h =
//!   536,870,912 × 14,400 = 7,730,941,132,800 byte-s; observed 00:00-03:00
//!   = 3 h = 10,800,000 ms, coverage 0.004032258… (`0.004032`, `0.4%`).
//!
//! Per day: leap Oct 1 14,400 s (1 user), Oct 2 7,200 s (1 user); cryo Oct 1
//! 21,600 s (1); mesa Oct 3 14,400 s (2).
//! Server hours per active user: leap 6 / 2 = 3.00, cryo 6.00, mesa 2.00.
//!
//! Cost (EUR, micro-units):
//! - `shared-gke` bill 1000 = 1,000,000,000, weights CPU 1, memory 1,
//!   storage 1; nobody stored anything, so the bill splits over CPU and
//!   memory only: 500,000,000 each.
//!   - CPU by max(request, usage) = request: leap 18,000,000, cryo
//!     43,200,000 (Σ 61,200,000). leap 500,000,000 × 18/61.2 =
//!     147,058,823.53, cryo 352,941,176.47; floors sum to 499,999,999, the
//!     one left goes to the larger remainder (leap .53): leap 147,058,824,
//!     cryo 352,941,176.
//!   - memory: leap 10 GiB-h, cryo 6 GiB-h (Σ 16): leap 500,000,000 × 10/16
//!     = 312,500,000, cryo 187,500,000.
//!   - leap 147,058,824 + 312,500,000 = 459,558,824 (459.558824);
//!     cryo 352,941,176 + 187,500,000 = 540,441,176 (540.441176).
//! - `mesa-aws` bill 200 (dedicated): mesa 200,000,000.
//! - pool `operations` 300, even over 3 members: 100,000,000 each.
//! - totals: leap 559,558,824 (559.558824), cryo 640,441,176 (640.441176),
//!   mesa 300,000,000 (300.000000); Σ 1,500,000,000 = 1000 + 200 + 300,
//!   nothing unallocated.
//! - cost per active user: leap 559,558,824 / 2 = 279,779,412 (279.779412),
//!   cryo 640.441176, mesa 300,000,000 / 2 = 150.000000.
//!
//! SLO (leap/prod only): 1,000 minutes from Oct 10 00:00, 990 with a probe
//! ok, 10 with a probe failed: availability 990 / 1,000 = 0.99 (`99.000%`);
//! premier target 0.999; budget spent (1 − 0.99) / (1 − 0.999) = 10
//! (`1000.0%`).
//!
//! Incident: `HubDown` (severity `page`) on leap/prod from Oct 5 10:00 to
//! Oct 5 10:30: 1,800 s (`30.0` min), all of it in the month.
//!
//! Change since last month: September has no data (`no data`).
//! History (fleet): October closed, 3 members, operations 300,000,000,
//! 100,000,000 (100.000000) per member.

use hubwatch_shared::config::Period;

/// The month.
pub const OCTOBER: Period = Period {
    year: 2026,
    month: 10,
};

/// The config of the month.
pub const CONFIG: &str = r#"
currency = "EUR"
[[members]]
id = "leap"
name = "LEAP"
tier = "premier"
[[members.hubs]]
name = "prod"
[[members]]
id = "cryo"
name = "Cryo <Lab>"
tier = "member"
[[members.hubs]]
name = "staging"
[[members]]
id = "mesa"
name = "Mesa"
tier = "starter"
[[members.hubs]]
name = "lab"

[[clusters]]
id = "shared-gke"
kind = "shared"
hubs = ["leap/prod", "cryo/staging"]
[[clusters]]
id = "mesa-aws"
kind = "dedicated"
member = "mesa"
hubs = ["mesa/lab"]

[[costs]]
cluster = "shared-gke"
period = "2026-10"
amount = "1000"
[[costs]]
cluster = "mesa-aws"
period = "2026-10"
amount = "200"

[[cost_pools]]
name = "operations"
amount = "300"
split = "even"
"#;

const GIB: u64 = 1 << 30;

/// One server run: `(member, hub, user, start day, start hour, hours, CPU
/// millicores, memory bytes)`.
pub type Run = (
    &'static str,
    &'static str,
    &'static str,
    i64,
    i64,
    i64,
    u64,
    u64,
);

/// Every server run of the month.
pub const RUNS: [Run; 5] = [
    ("leap", "prod", "ada", 1, 10, 4, 1000, 2 * GIB),
    ("leap", "prod", "bob", 2, 9, 2, 500, GIB),
    ("cryo", "staging", "cid", 1, 12, 6, 2000, GIB),
    ("mesa", "lab", "dan", 3, 0, 3, 250, GIB / 2),
    ("mesa", "lab", "eve", 3, 1, 1, 250, GIB / 2),
];
