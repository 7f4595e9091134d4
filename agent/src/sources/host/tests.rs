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
