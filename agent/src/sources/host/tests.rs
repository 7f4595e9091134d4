use std::collections::HashMap;
use std::time::Duration;

use hubwatch_shared::wire::{Record, Sample};

use super::*;

fn samples(records: Vec<Record>) -> Vec<Sample> {
    records
        .into_iter()
        .map(|r| match r {
            Record::Sample(s) => s,
            other => panic!("host source made a non-sample record: {other:?}"),
        })
        .collect()
}

fn first<'a>(samples: &'a [Sample], name: &str) -> &'a Sample {
    samples
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} sample"))
}

#[tokio::test]
async fn host_source_reports_sane_figures() {
    let source = HostSource::new().expect("sysinfo opens");
    // Two collections a little apart, so CPU usage is a real delta.
    source.collect().await.expect("first collection");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = samples(source.collect().await.expect("second collection"));

    let cpu = first(&samples, "host_cpu_usage_ratio").value;
    assert!((0.0..=1.0).contains(&cpu), "cpu ratio {cpu}");
    assert!(first(&samples, "host_cpu_count").value >= 1.0);

    let total = first(&samples, "host_memory_total_bytes").value;
    let used = first(&samples, "host_memory_used_bytes").value;
    let available = first(&samples, "host_memory_available_bytes").value;
    assert!(total > 0.0);
    assert!(used > 0.0 && used <= total, "used {used} of {total}");
    assert!(available <= total);
    first(&samples, "host_swap_total_bytes");

    let disks: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "host_disk_total_bytes")
        .collect();
    assert!(!disks.is_empty(), "no disk reported");
    for disk in &disks {
        let names: Vec<&str> = disk.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["device", "fstype", "host", "mountpoint"]);
        assert!(disk.value > 0.0);
        let fstype = &disk.labels[1].value;
        assert!(
            !PSEUDO_FILESYSTEMS.contains(&fstype.as_str()),
            "pseudo filesystem {fstype} reported"
        );
    }

    assert!(first(&samples, "host_uptime_seconds").value > 0.0);
    assert!(first(&samples, "host_boot_time_seconds").value > 1.0e9);
    assert!(first(&samples, "host_load1").value >= 0.0);

    // Every sample has the host label, labels sorted, one timestamp.
    let hostname = System::host_name().unwrap_or_else(|_| "unknown".into());
    let ts = samples[0].timestamp_ms;
    for s in &samples {
        assert!(s.labels.windows(2).all(|w| w[0].name < w[1].name), "{s:?}");
        assert!(
            s.labels
                .iter()
                .any(|l| l.name == "host" && l.value == hostname),
            "{s:?}"
        );
        assert_eq!(s.timestamp_ms, ts);
        assert!(s.name.starts_with("host_"));
    }
    // No series appears twice.
    let mut seen = HashMap::new();
    for s in &samples {
        assert!(
            seen.insert((&s.name, &s.labels), ()).is_none(),
            "duplicate {s:?}"
        );
    }
}

#[tokio::test]
async fn network_counters_never_go_backwards() {
    let source = HostSource::new().expect("sysinfo opens");
    let before = samples(source.collect().await.expect("collect"));
    let after = samples(source.collect().await.expect("collect"));
    let index = |v: &[Sample]| -> HashMap<(String, Vec<hubwatch_shared::wire::Label>), f64> {
        v.iter()
            .filter(|s| s.name.starts_with("host_network_"))
            .map(|s| ((s.name.clone(), s.labels.clone()), s.value))
            .collect()
    };
    let (before, after) = (index(&before), index(&after));
    for (key, value) in &after {
        if let Some(old) = before.get(key) {
            assert!(value >= old, "{key:?} went from {old} to {value}");
        }
    }
}

/// `df`'s figures for `path`: (size, available, used) in bytes.
fn df(path: &std::path::Path) -> (f64, f64, f64) {
    let output = std::process::Command::new("df")
        .args(["-B1", "--output=size,avail,used"])
        .arg(path)
        .output()
        .expect("df runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let numbers: Vec<f64> = text
        .lines()
        .nth(1)
        .expect("a figures line")
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect();
    (numbers[0], numbers[1], numbers[2])
}

#[tokio::test]
async fn the_home_filesystem_is_reported_with_the_hub_and_matches_df() {
    let home = tempfile::tempdir().expect("tempdir");
    let cfg = HostConfig {
        enabled: true,
        home_path: Some(home.path().to_path_buf()),
        hub: Some("tljh".to_string()),
    };
    let source = HostSource::from_config(&cfg).expect("sysinfo opens");
    let samples = samples(source.collect().await.expect("collection"));
    let (size, avail, used) = df(home.path());
    let path = home.path().to_string_lossy().into_owned();
    for (name, expected, slack) in [
        ("host_home_filesystem_size_bytes", size, 0.0),
        // Other processes write to the same disk between the two readings.
        (
            "host_home_filesystem_avail_bytes",
            avail,
            256.0 * 1024.0 * 1024.0,
        ),
        (
            "host_home_filesystem_used_bytes",
            used,
            256.0 * 1024.0 * 1024.0,
        ),
    ] {
        let sample = first(&samples, name);
        assert!(
            (sample.value - expected).abs() <= slack,
            "{name}: {} vs df {expected}",
            sample.value
        );
        let labels: HashMap<&str, &str> = sample
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(labels.get("hub"), Some(&"tljh"));
        assert_eq!(labels.get("path"), Some(&path.as_str()));
        assert!(labels.contains_key("host"));
    }
}

#[tokio::test]
async fn an_unreadable_home_path_is_a_health_record_not_a_failed_source() {
    let cfg = HostConfig {
        enabled: true,
        home_path: Some("/nonexistent/homes".into()),
        hub: None,
    };
    let source = HostSource::from_config(&cfg).expect("sysinfo opens");
    let records = source.collect().await.expect("collection");
    let health = records
        .iter()
        .find_map(|r| match r {
            Record::Health(h) => Some(h),
            _ => None,
        })
        .expect("a health record");
    assert_eq!(health.target, HOME_HEALTH_TARGET);
    assert!(!health.ok);
    assert!(
        health
            .error
            .as_deref()
            .is_some_and(|e| e.contains("/nonexistent/homes")),
        "{health:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| matches!(r, Record::Sample(s) if s.name == "host_cpu_count"))
    );
}
