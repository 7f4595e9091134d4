use std::time::{Duration, Instant};

use hubwatch_shared::wire::{CheckKind, FailureKind, Label, Record, Sample};

use super::*;

struct Fixed;
impl Source for Fixed {
    fn name(&self) -> &str {
        "fixed"
    }
    fn collect(&self) -> CollectFuture<'_> {
        Box::pin(async {
            Ok(vec![Record::Sample(Sample {
                name: "fixed_value".into(),
                labels: vec![Label::new("a", "b")],
                value: 1.0,
                timestamp_ms: now_ms(),
            })])
        })
    }
}

struct Slow;
impl Source for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn collect(&self) -> CollectFuture<'_> {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(Vec::new())
        })
    }
}

struct Broken;
impl Source for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    fn collect(&self) -> CollectFuture<'_> {
        Box::pin(async { Err(SourceError::Read("hub said no".into())) })
    }
}

fn health(outcome: &SourceOutcome) -> &hubwatch_shared::wire::HealthCheck {
    match outcome.records.as_slice() {
        [Record::Health(h)] => h,
        other => panic!("expected one health record, got {other:?}"),
    }
}

#[tokio::test]
async fn a_slow_or_broken_source_becomes_a_health_record_without_delaying_others() {
    let sources: Vec<Arc<dyn Source>> = vec![Arc::new(Slow), Arc::new(Fixed), Arc::new(Broken)];
    let started = Instant::now();
    let outcomes = collect_all(&sources, Duration::from_millis(300)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(took >= Duration::from_millis(300));

    let names: Vec<&str> = outcomes.iter().map(|o| o.source.as_str()).collect();
    assert_eq!(names, ["slow", "fixed", "broken"]);

    let slow = health(&outcomes[0]);
    assert!(!outcomes[0].ok);
    assert_eq!(slow.kind, CheckKind::Source);
    assert!(!slow.ok);
    assert_eq!(slow.target, "slow");
    assert_eq!(slow.failure, Some(FailureKind::Timeout));
    assert!(slow.latency_us >= 300_000);

    assert!(outcomes[1].ok);
    assert!(
        matches!(outcomes[1].records.as_slice(), [Record::Sample(s)] if s.name == "fixed_value")
    );

    let broken = health(&outcomes[2]);
    assert_eq!(broken.target, "broken");
    assert_eq!(broken.failure, Some(FailureKind::Other));
    assert_eq!(broken.error.as_deref(), Some("hub said no"));
}
