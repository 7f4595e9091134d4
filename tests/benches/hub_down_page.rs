//! Time from a real JupyterHub being SIGKILLed to the page being visible in
//! a real Alertmanager, at the default intervals (issue 15), for hubwatch
//! and for Prometheus side by side, in the same runs:
//!
//! - **hubwatch**: `hubwatch-agent` with `interval = "15s"` and the hub
//!   under `[[hubs]]`, a `hubwatch-collector` with every `[alerting]` key at
//!   its default (evaluation and outside probe every 15 s) and the hub's
//!   `public_url`, so `HubDown` needs both vantage points;
//! - **Prometheus** scraping the same hub's `/hub/metrics` every 15 s
//!   (evaluation every 15 s) with two rules on `up{job="hub"} == 0`:
//!   `for: 0s` (pages on a single failed scrape) and `for: 15s`, which needs
//!   the next scrape to fail too: two failed checks in a row, the same
//!   false-page rule as hubwatch's confirmation (a failure and its re-check;
//!   a single lost probe never pages either).
//!
//! Each run starts everything fresh, waits for both sides to have seen the
//! hub up, waits a random 0–15 s (so the kill lands at a random phase of the
//! 15 s cycles), SIGKILLs the hub process (its proxy lives on and answers
//! 503, as a hub pod dying behind its proxy pod does), then polls
//! Alertmanager's API every 100 ms. Printed: each run's three times, then
//! median, min and max of each over `BENCH_RUNS` (default 5) runs.
//!
//! `scripts/bench.sh hub-down` (debug binaries: the times are intervals and
//! network round trips, not CPU).

use std::path::Path;
use std::time::{Duration, Instant};

use hubwatch_tests::alertmanager::collector_alerting_toml;
use hubwatch_tests::jupyterhub::{ADMIN_TOKEN, AGENT_TOKEN};
use hubwatch_tests::{
    Agent, AgentOptions, Alertmanager, Collector, CollectorOptions, JupyterHub, MemberSpec,
    Prometheus, Webhook, eventually,
};

/// Give up on a run after this long without all three alerts.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The three alerts a run waits for.
const ALERTS: [&str; 3] = ["HubDown", "HubUpZeroFor0s", "HubUpZeroFor15s"];

fn rules_yaml() -> &'static str {
    "groups:\n  - name: hub\n    rules:\n\
     \x20     - alert: HubUpZeroFor0s\n        expr: up{job=\"hub\"} == 0\n        labels:\n          severity: page\n\
     \x20     - alert: HubUpZeroFor15s\n        expr: up{job=\"hub\"} == 0\n        for: 15s\n        labels:\n          severity: page\n"
}

fn prometheus_yaml(hub_hostport: &str, am_hostport: &str, rules: &Path) -> String {
    format!(
        "global:\n  scrape_interval: 15s\n  scrape_timeout: 10s\n  evaluation_interval: 15s\n\
         rule_files: [{rules:?}]\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [{am_hostport:?}]\n\
         scrape_configs:\n  - job_name: hub\n    metrics_path: /hub/metrics\n\
         \x20   authorization:\n      credentials: {ADMIN_TOKEN:?}\n\
         \x20   static_configs:\n      - targets: [{hub_hostport:?}]\n",
        rules = rules.display().to_string(),
    )
}

/// One run: seconds from SIGKILL to each of [`ALERTS`] in Alertmanager.
fn run(index: usize) -> [f64; 3] {
    let mut hub = JupyterHub::start();
    let webhook = Webhook::start();
    let am = Alertmanager::start(&webhook);
    let members = [MemberSpec {
        id: "leap".into(),
        tier: "premier".into(),
        hubs: vec![("lab".into(), Some(hub.url().to_string()))],
    }];
    let collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        // Every [alerting] interval at its default.
        extra_server_toml: collector_alerting_toml(am.url(), "", &members),
        ..CollectorOptions::default()
    });
    let files = tempfile::tempdir().expect("temporary directory");
    let hub_token = files.path().join("hub-token");
    std::fs::write(&hub_token, AGENT_TOKEN).expect("write the hub token");
    let token = collector.create_token("leap", "leap-agent");
    let mut options = AgentOptions::new("leap-agent", "leap", &token, "15s");
    options.extra_agent_toml = format!(
        "\n[[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {hub_token:?}\n",
        hub.url()
    );
    let _agent = Agent::start(options, collector.url());
    let rules = files.path().join("rules.yml");
    std::fs::write(&rules, rules_yaml()).expect("write rules.yml");
    let hostport = |url: &str| {
        url.trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    };
    let prometheus = Prometheus::start_yaml(&prometheus_yaml(
        &hostport(hub.url()),
        &hostport(am.url()),
        &rules,
    ));

    // Both sides have seen the hub up.
    eventually("the agent delivering", Duration::from_secs(60), || {
        let row = collector.agent("leap-agent")?;
        anyhow::ensure!(row.batches >= 2, "{} batches", row.batches);
        Ok(())
    });
    eventually(
        "Prometheus scraped the hub",
        Duration::from_secs(60),
        || {
            let result = prometheus.query("up{job=\"hub\"} == 1")?;
            let n = result.as_array().map_or(0, Vec::len);
            anyhow::ensure!(n == 1, "up: {result}");
            Ok(())
        },
    );
    // A random phase against the 15 s cycles of every side.
    let phase = Duration::from_millis(u64::from(rand_u16()) % 15_000);
    std::thread::sleep(phase);
    for name in ALERTS {
        let active = am
            .alerts_matching(&[("alertname", name)])
            .expect("alertmanager");
        assert!(active.is_empty(), "{name} before the kill: {active:?}");
    }

    let killed = Instant::now();
    hub.process().sigkill();
    let mut seen: [Option<f64>; 3] = [None; 3];
    while seen.iter().any(Option::is_none) {
        assert!(
            killed.elapsed() < RUN_LIMIT,
            "run {index}: not every alert within {RUN_LIMIT:?}: {seen:?}"
        );
        for (slot, name) in seen.iter_mut().zip(ALERTS) {
            if slot.is_none()
                && !am
                    .alerts_matching(&[("alertname", name)])
                    .expect("alertmanager")
                    .is_empty()
            {
                *slot = Some(killed.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let times = seen.map(|s| s.unwrap_or(f64::NAN));
    println!(
        "run {index}: kill at phase {:>5.1} s   hubwatch HubDown {:>5.1} s   Prometheus for:0s {:>5.1} s   for:15s {:>5.1} s",
        phase.as_secs_f64(),
        times[0],
        times[1],
        times[2]
    );
    times
}

/// A random number without a new dependency: the low bits of the clock.
fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos / 1000 % 65_536) as u16
}

fn summary(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    let median = if values.len() % 2 == 1 {
        values[values.len() / 2]
    } else {
        (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
    };
    format!(
        "median {median:>5.1} s   min {:>5.1} s   max {:>5.1} s",
        values[0],
        values[values.len() - 1]
    )
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!(
        "hub SIGKILLed -> alert visible in Alertmanager, defaults (agent 15 s; collector evaluation and outside probe 15 s; Prometheus scrape and evaluation 15 s), {runs} runs"
    );
    let results: Vec<[f64; 3]> = (1..=runs).map(run).collect();
    for (i, name) in [
        "hubwatch HubDown (both vantage points, confirmed)",
        "Prometheus up == 0, for: 0s (one failed scrape)",
        "Prometheus up == 0, for: 15s (two failed scrapes)",
    ]
    .iter()
    .enumerate()
    {
        let mut values: Vec<f64> = results.iter().map(|r| r[i]).collect();
        println!("{name:<52} {}", summary(&mut values));
    }
}
