use super::*;
use crate::sources::jupyterhub::exposition::parse;

const JUPYTERHUB_6_PAGE: &str = include_str!("../testdata/jupyterhub-6.1.1-metrics.txt");

/// The spawn histogram as JupyterHub 5.x writes it: `status` only, with the
/// rejection reasons as statuses.
const JUPYTERHUB_5_SPAWNS: &str = r#"
# HELP jupyterhub_server_spawn_duration_seconds Time taken for server spawning operation
# TYPE jupyterhub_server_spawn_duration_seconds histogram
jupyterhub_server_spawn_duration_seconds_bucket{le="0.5",status="success"} 0.0
jupyterhub_server_spawn_duration_seconds_bucket{le="+Inf",status="success"} 3.0
jupyterhub_server_spawn_duration_seconds_count{status="success"} 3.0
jupyterhub_server_spawn_duration_seconds_sum{status="success"} 7.5
jupyterhub_server_spawn_duration_seconds_count{status="throttled"} 2.0
jupyterhub_server_spawn_duration_seconds_count{status="too-many-users"} 1.0
jupyterhub_server_spawn_duration_seconds_count{status="already-pending"} 4.0
jupyterhub_server_spawn_duration_seconds_count{status="failure"} 5.0
# TYPE jupyterhub_server_spawn_duration_seconds_created gauge
jupyterhub_server_spawn_duration_seconds_created{status="success"} 1.7e9
jupyterhub_running_servers{hub="inner"} 2.0
process_open_fds 12.0
"#;

fn labels_of(sample: &Sample) -> Vec<(&str, &str)> {
    sample
        .labels
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .collect()
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|want| labels_of(s).iter().any(|have| have == want))
    })
}

#[test]
fn jupyterhub_6_series_are_forwarded_with_the_hub_label_and_created_dropped() {
    let page = parse(JUPYTERHUB_6_PAGE);
    let samples = hub_samples(&page, "prod", 42);
    assert!(samples.iter().all(|s| s.name.starts_with("jupyterhub_")));
    assert!(
        samples.iter().all(|s| !s.name.ends_with("_created")),
        "_created series are dropped"
    );
    let raw_jupyterhub = page
        .samples
        .iter()
        .filter(|s| s.name.starts_with("jupyterhub_") && !s.name.ends_with("_created"))
        .count();
    assert_eq!(samples.len(), raw_jupyterhub);
    for s in &samples {
        assert!(s.labels.windows(2).all(|w| w[0] <= w[1]), "sorted: {s:?}");
        assert_eq!(
            s.labels.iter().filter(|l| l.name == "hub").count(),
            1,
            "{s:?}"
        );
        assert_eq!(s.timestamp_ms, 42);
    }
    let running =
        find(&samples, "jupyterhub_running_servers", &[("hub", "prod")]).expect("running servers");
    assert_eq!(running.value, 1.0);
    let bucket = find(
        &samples,
        "jupyterhub_server_spawn_duration_seconds_bucket",
        &[("le", "10.0"), ("status", "success"), ("reason", "")],
    )
    .expect("a spawn bucket");
    assert_eq!(bucket.value, 1.0);
    assert!(
        find(
            &samples,
            "jupyterhub_server_spawn_duration_seconds_sum",
            &[("status", "success")]
        )
        .is_some_and(|s| s.value > 0.0)
    );
    // 6.x labels are kept as they are.
    assert!(
        find(
            &samples,
            "jupyterhub_server_spawn_duration_seconds_count",
            &[("status", "failure"), ("reason", "throttled")]
        )
        .is_some()
    );
}

#[test]
fn jupyterhub_5_spawn_statuses_become_the_6_shape() {
    let page = parse(JUPYTERHUB_5_SPAWNS);
    assert!(page.skipped.is_empty());
    let samples = hub_samples(&page, "old", 1);
    let count = |status: &str, reason: &str| {
        find(
            &samples,
            "jupyterhub_server_spawn_duration_seconds_count",
            &[("status", status), ("reason", reason)],
        )
        .map(|s| s.value)
    };
    assert_eq!(count("success", ""), Some(3.0));
    assert_eq!(count("failure", "throttled"), Some(2.0));
    assert_eq!(count("failure", "too-many-users"), Some(1.0));
    assert_eq!(count("failure", "already-pending"), Some(4.0));
    assert_eq!(count("failure", ""), Some(5.0));
    let bucket = find(
        &samples,
        "jupyterhub_server_spawn_duration_seconds_bucket",
        &[("le", "+Inf")],
    )
    .expect("bucket");
    assert_eq!(
        labels_of(bucket),
        [
            ("hub", "old"),
            ("le", "+Inf"),
            ("reason", ""),
            ("status", "success")
        ]
    );
    assert!(samples.iter().all(|s| !s.name.ends_with("_created")));
    assert!(samples.iter().all(|s| s.name != "process_open_fds"));
    // A series' own `hub` label is kept aside, the agent's wins.
    let running = find(&samples, "jupyterhub_running_servers", &[]).expect("gauge");
    assert_eq!(
        labels_of(running),
        [("exported_hub", "inner"), ("hub", "old")]
    );
}

#[test]
fn a_series_own_hub_label_never_clashes_with_one_it_already_has() {
    // A page that already went through a relabelling (a federating
    // Prometheus) can hold `exported_hub` beside `hub`: renaming `hub` to
    // `exported_hub` gave the sample that name twice.
    let page = parse(
        "jupyterhub_running_servers{exported_hub=\"a\",hub=\"b\"} 1\n\
         jupyterhub_total_users{exported_exported_hub=\"c\",exported_hub=\"a\",hub=\"b\"} 2\n",
    );
    let samples = hub_samples(&page, "prod", 1);
    assert_eq!(
        labels_of(&samples[0]),
        [
            ("exported_exported_hub", "b"),
            ("exported_hub", "a"),
            ("hub", "prod")
        ]
    );
    assert_eq!(
        labels_of(&samples[1]),
        [
            ("exported_exported_exported_hub", "b"),
            ("exported_exported_hub", "c"),
            ("exported_hub", "a"),
            ("hub", "prod")
        ]
    );
}

#[test]
fn held_back_failed_spawns_leave_every_other_series_untouched() {
    let page = parse(JUPYTERHUB_5_SPAWNS);
    let all = hub_samples(&page, "lab", 1_000);
    let mut held = all.clone();
    hold_failed_spawns(&mut held);
    // Every failed spawn of every kind is gone (5.x rejections were made
    // 6.x `failure`s first)...
    assert!(
        held.iter()
            .filter(|s| s.name.starts_with(SPAWN_DURATION))
            .all(|s| hubwatch_shared::wire::label(&s.labels, "status") == Some("success")),
        "{held:?}"
    );
    assert!(
        find(
            &all,
            "jupyterhub_server_spawn_duration_seconds_count",
            &[("status", "failure")]
        )
        .is_some()
    );
    // ...and everything else is still there, unchanged.
    let kept: Vec<&Sample> = all
        .iter()
        .filter(|s| {
            !s.name.starts_with(SPAWN_DURATION)
                || hubwatch_shared::wire::label(&s.labels, "status") == Some("success")
        })
        .collect();
    assert_eq!(held.iter().collect::<Vec<_>>(), kept);
    assert!(find(&held, "jupyterhub_running_servers", &[]).is_some());
    assert!(
        find(
            &held,
            "jupyterhub_server_spawn_duration_seconds_count",
            &[("status", "success")]
        )
        .is_some()
    );
}
