use super::*;
use hubwatch_shared::codec;

fn model(seed: u64) -> Model {
    Model {
        agents: 3,
        hubs_per_agent: 2,
        users_per_hub: 100,
        interval_ms: 15_000,
        start_ms: 1_764_633_600_000, // 2025-12-02T00:00:00Z
        seed,
        outage_rate: 0.0005,
    }
}

/// Every agent's frames for `rounds` rounds, concatenated.
fn bytes(model: &Model, rounds: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for agent in 0..model.agents {
        let mut sim = AgentSim::new(model, agent, Model::agent_id(agent), String::new());
        for _ in 0..rounds {
            out.extend(codec::encode(&sim.next_round()).expect("encodes"));
        }
    }
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    assert_eq!(bytes(&model(7), 20), bytes(&model(7), 20));
    assert_ne!(bytes(&model(7), 20), bytes(&model(8), 20));
}

#[test]
fn rng_is_fixed_by_its_definition() {
    // SplitMix64's published first output for state 0 after one step is
    // 0xE220A8397B1DCDAF; ours seeds through one step, so compare the raw
    // mixer on a known state instead.
    let mut rng = Rng(0);
    assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
}

fn samples<'a>(batch: &'a Batch, name: &str, hub: &str) -> Vec<&'a Sample> {
    batch
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Sample(s) if s.name == name && s.label("hub") == Some(hub) => Some(s),
            _ => None,
        })
        .collect()
}

#[test]
fn a_hub_reports_jupyterhub_series_with_cumulative_histograms() {
    let model = model(3);
    let mut sim = AgentSim::new(&model, 0, "a".into(), String::new());
    // A day at one round an hour, so the daily cycle and spawns show.
    let model_hourly = Model {
        interval_ms: 3_600_000,
        outage_rate: 0.0,
        ..model
    };
    let mut hourly = AgentSim::new(&model_hourly, 0, "a".into(), String::new());
    let mut running = Vec::new();
    let mut last = None;
    for _ in 0..24 {
        let batch = hourly.next_round();
        running.push(samples(&batch, "jupyterhub_running_servers", "hub-0000-00")[0].value);
        last = Some(batch);
    }
    let batch = last.expect("rounds ran");
    let hub = "hub-0000-00";
    // The daily cycle: a tenth of the users at night, over a third by day.
    let (low, high) = running
        .iter()
        .fold((f64::MAX, 0.0_f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    assert!(
        low <= 20.0 && high >= 35.0,
        "running over a day: {running:?}"
    );

    for status in ["success", "failure"] {
        let buckets: Vec<&Sample> = samples(
            &batch,
            "jupyterhub_server_spawn_duration_seconds_bucket",
            hub,
        )
        .into_iter()
        .filter(|s| s.label("status") == Some(status))
        .collect();
        assert_eq!(buckets.len(), SPAWN_BUCKETS.len() + 1, "{status}");
        assert_eq!(buckets.last().and_then(|s| s.label("le")), Some("+Inf"));
        assert!(
            buckets.windows(2).all(|w| w[0].value <= w[1].value),
            "cumulative"
        );
        let count = samples(
            &batch,
            "jupyterhub_server_spawn_duration_seconds_count",
            hub,
        )
        .into_iter()
        .find(|s| s.label("status") == Some(status))
        .expect("a _count");
        assert_eq!(count.value, buckets.last().map_or(-1.0, |s| s.value));
    }
    let success_total = samples(
        &batch,
        "jupyterhub_server_spawn_duration_seconds_count",
        hub,
    )
    .into_iter()
    .find(|s| s.label("status") == Some("success"))
    .map_or(0.0, |s| s.value);
    assert!(
        success_total > 10.0,
        "servers were spawned: {success_total}"
    );
    let requests = samples(&batch, "jupyterhub_request_duration_seconds_bucket", hub);
    assert_eq!(requests.len(), HANDLERS.len() * (REQUEST_BUCKETS.len() + 1));
    for name in ["jupyterhub_total_users", "jupyterhub_active_users"] {
        assert!(!samples(&batch, name, hub).is_empty(), "{name}");
    }
    let health: Vec<&HealthCheck> = batch
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Health(h) if h.hub.as_deref() == Some(hub) => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(health.len(), 1);
    assert!(health[0].ok && health[0].kind == CheckKind::HubHealth);
    assert!(
        batch
            .records
            .iter()
            .any(|r| matches!(r, Record::Sample(s) if s.name == "hubwatch_host_cpu_usage_ratio"))
    );
    // Labels sorted, as the wire requires.
    for record in &batch.records {
        if let Record::Sample(s) = record {
            assert!(s.labels.windows(2).all(|w| w[0].name < w[1].name), "{s:?}");
        }
    }
    // Series per hub and per agent, as counted.
    let _ = sim.next_round();
    assert_eq!(
        sim.distinct_series(),
        HOST_SERIES + 2 * (series_per_hub() + 1)
    );
}

#[test]
fn an_outage_fails_health_twice_and_drops_the_hub_metrics() {
    let model = Model {
        outage_rate: 0.2,
        ..model(5)
    };
    let mut sim = AgentSim::new(&model, 0, "a".into(), String::new());
    let mut outages = 0;
    for _ in 0..50 {
        let batch = sim.next_round();
        for hub in ["hub-0000-00", "hub-0000-01"] {
            let checks: Vec<&HealthCheck> = batch
                .records
                .iter()
                .filter_map(|r| match r {
                    Record::Health(h) if h.hub.as_deref() == Some(hub) => Some(h),
                    _ => None,
                })
                .collect();
            let metrics = samples(&batch, "jupyterhub_running_servers", hub).len();
            if checks[0].ok {
                assert_eq!((checks.len(), metrics), (1, 1));
            } else {
                outages += 1;
                assert_eq!(
                    (checks.len(), metrics),
                    (2, 0),
                    "check and re-check, no metrics"
                );
                assert!(!checks[1].ok && checks[1].timestamp_ms == checks[0].timestamp_ms + 1000);
            }
        }
    }
    assert!(outages > 5, "outages seen: {outages}");
}

#[test]
fn remote_write_carries_one_sample_per_record() {
    let mut sim = AgentSim::new(&model(1), 0, "a".into(), String::new());
    let batch = sim.next_round();
    let samples: Vec<Sample> = batch.records.iter().filter_map(as_sample).collect();
    assert_eq!(samples.len(), batch.records.len());
    let request = hubwatch_shared::remote_write::from_samples(&samples);
    let in_request: usize = request.timeseries.iter().map(|s| s.samples.len()).sum();
    assert_eq!(in_request, batch.records.len());
    assert_eq!(request.timeseries.len(), sim.distinct_series());
}
