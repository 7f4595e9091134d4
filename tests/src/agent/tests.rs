use super::*;

#[test]
fn finds_the_last_summary_among_json_lines() {
    let logs = r#"### hubwatch-tests: process start #1
{"timestamp":"t","level":"INFO","fields":{"message":"started"},"target":"hubwatch_agent"}
{"timestamp":"t","level":"INFO","fields":{"message":"stopped","records_produced":10,"batches_acked":2,"records_acked":10,"pending_batches":0,"dropped_total":0}}
not json at all
{"timestamp":"t","level":"INFO","fields":{"message":"stopped","records_produced":42,"batches_acked":7,"records_acked":40,"pending_batches":1,"dropped_total":3}}
{"timestamp":"t","level":"INFO","fields":{"message":"bye"}}
"#;
    let summary = Summary::from_json_logs(logs).expect("found");
    assert_eq!(
        summary,
        Summary {
            records_produced: 42,
            batches_acked: 7,
            records_acked: 40,
            pending_batches: 1,
            dropped_total: 3,
        }
    );
}

#[test]
fn reads_flattened_fields_too() {
    let logs = r#"{"message":"stopped","records_produced":"5","batches_acked":1,"records_acked":5,"pending_batches":0,"dropped_total":0}"#;
    assert_eq!(
        Summary::from_json_logs(logs)
            .expect("found")
            .records_produced,
        5
    );
}

#[test]
fn a_summary_missing_a_field_is_an_error() {
    let logs = r#"{"fields":{"records_produced":5,"batches_acked":1}}"#;
    assert!(Summary::from_json_logs(logs).is_err());
    assert!(Summary::from_json_logs("").is_err());
}
