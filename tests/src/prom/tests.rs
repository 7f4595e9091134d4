use super::*;

const PAGE: &str = r#"# HELP hubwatch_agent_records_produced_total Records produced by each source.
# TYPE hubwatch_agent_records_produced_total counter
hubwatch_agent_records_produced_total{source="host"} 120
hubwatch_agent_records_produced_total{source="hub, \"prod\""} 30
hubwatch_agent_spool_pending_batches 0
hubwatch_collector_ingest_ack_seconds_bucket{le="+Inf"} 7
weird_value NaN
"#;

#[test]
fn sums_over_label_sets() {
    let page = PromText::parse(PAGE).expect("parses");
    assert_eq!(
        page.sum("hubwatch_agent_records_produced_total")
            .expect("present"),
        150.0
    );
    assert_eq!(
        page.sum("hubwatch_agent_spool_pending_batches")
            .expect("present"),
        0.0
    );
}

#[test]
fn a_missing_series_is_an_error_not_zero() {
    let page = PromText::parse(PAGE).expect("parses");
    assert!(page.sum("hubwatch_agent_spool_write_errors_total").is_err());
}

#[test]
fn reads_quoted_label_values_with_escapes() {
    let page = PromText::parse(PAGE).expect("parses");
    assert_eq!(
        page.value(
            "hubwatch_agent_records_produced_total",
            &[("source", "hub, \"prod\"")]
        ),
        Some(30.0)
    );
    assert_eq!(
        page.value(
            "hubwatch_collector_ingest_ack_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(7.0)
    );
    assert!(page.value("weird_value", &[]).is_some_and(f64::is_nan));
}

#[test]
fn rejects_a_line_without_a_value() {
    assert!(PromText::parse("hubwatch_x{a=\"b\"}\n").is_err());
}
