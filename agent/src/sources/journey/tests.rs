//! Unit tests of the journey pieces that need no hub: the progress stream,
//! the kernel messages, the nonce code, the phase bookkeeping and the table.
//! The journey itself runs against a real JupyterHub in
//! `tests/tests/journey_agent.rs`.

use std::time::{Duration, Instant};

use hubwatch_shared::wire::{FailureKind, JourneyPhase, JourneyResult};
use serde_json::json;

use super::http_calls::{ProgressEvent, SseLines, describe, error_message, failure_message};
use super::kernel::{Reply, channels_url, execute_request, nonce_code, read_message};
use super::*;

#[test]
fn sse_lines_survive_any_chunking() {
    let stream = b"data: {\"progress\": 10, \"message\": \"a\"}\r\n\n: keepalive\n\ndata: {\"ready\": true, \"url\": \"/user/x/\"}\n\n";
    for cut in 1..stream.len() {
        let mut lines = SseLines::default();
        let mut got = lines.push(&stream[..cut]).expect("first part");
        got.extend(lines.push(&stream[cut..]).expect("second part"));
        assert_eq!(
            got,
            vec![
                "{\"progress\": 10, \"message\": \"a\"}".to_string(),
                "{\"ready\": true, \"url\": \"/user/x/\"}".to_string()
            ],
            "cut at {cut}"
        );
    }
}

#[test]
fn an_endless_line_is_refused() {
    let mut lines = SseLines::default();
    let err = lines.push(&vec![b'x'; 70 * 1024]).expect_err("too long");
    assert_eq!(err.kind, FailureKind::Parse);
}

#[test]
fn progress_is_described_for_a_timeout() {
    let event: ProgressEvent =
        serde_json::from_str(r#"{"progress": 50, "message": "pulling image"}"#).expect("event");
    assert_eq!(describe(&event), "progress 50 \"pulling image\"");
    assert_eq!(describe(&ProgressEvent::default()), "progress none");
    let mut e = PhaseError::timeout(Duration::from_secs(300));
    e.reason.push_str(&format!(" at {}", describe(&event)));
    assert_eq!(
        e.reason,
        "timeout after 300 s at progress 50 \"pulling image\""
    );
    assert_eq!(e.kind, FailureKind::Timeout);
}

#[test]
fn error_messages_are_read_and_cut() {
    assert_eq!(
        error_message(br#"{"status": 400, "message": "Named servers are not enabled."}"#),
        Some("Named servers are not enabled.".to_string())
    );
    assert_eq!(error_message(b"<html>"), None);
    let long = json!({"message": "x".repeat(1000)}).to_string();
    assert_eq!(error_message(long.as_bytes()).map(|m| m.len()), Some(200));
}

#[test]
fn the_nonce_code_prints_the_nonce_without_containing_it() {
    let nonce = "hubwatch-0123456789abcdef";
    let code = nonce_code(nonce);
    assert!(!code.contains(nonce), "{code}");
    assert_eq!(code, "print(\"hubwatch-012\" + \"3456789abcdef\")");
}

#[test]
fn kernel_messages_are_matched_to_their_request() {
    let msg = |channel: &str, msg_type: &str, parent: &str, content: serde_json::Value| {
        json!({"channel": channel, "header": {"msg_type": msg_type},
               "parent_header": {"msg_id": parent}, "content": content})
    };
    let stdout = msg(
        "iopub",
        "stream",
        "m1",
        json!({"name": "stdout", "text": "hi\n"}),
    );
    assert_eq!(
        read_message(&stdout, "m1"),
        Some(Reply::Stdout("hi\n".into()))
    );
    assert_eq!(
        read_message(&stdout, "other"),
        None,
        "another request's output"
    );
    let stderr = msg(
        "iopub",
        "stream",
        "m1",
        json!({"name": "stderr", "text": "hi"}),
    );
    assert_eq!(read_message(&stderr, "m1"), None, "stderr is not stdout");
    let echo = msg("iopub", "execute_input", "m1", json!({"code": "print(1)"}));
    assert_eq!(read_message(&echo, "m1"), None);
    let idle = msg("iopub", "status", "m1", json!({"execution_state": "idle"}));
    assert_eq!(read_message(&idle, "m1"), Some(Reply::Idle));
    let ok = msg("shell", "execute_reply", "m1", json!({"status": "ok"}));
    assert_eq!(read_message(&ok, "m1"), Some(Reply::Done));
    let error = msg(
        "shell",
        "execute_reply",
        "m1",
        json!({"status": "error", "ename": "ModuleNotFoundError", "evalue": "No module named 'numpy'"}),
    );
    assert_eq!(
        read_message(&error, "m1"),
        Some(Reply::Failed(
            "ModuleNotFoundError: No module named 'numpy'".into()
        ))
    );
}

#[test]
fn execute_requests_follow_the_messaging_protocol() {
    let request = execute_request("m1", "s1", "print(1)");
    assert_eq!(request["header"]["msg_type"], "execute_request");
    assert_eq!(request["header"]["msg_id"], "m1");
    assert_eq!(request["header"]["session"], "s1");
    assert_eq!(request["channel"], "shell");
    assert_eq!(request["content"]["code"], "print(1)");
}

#[test]
fn the_channels_url_follows_the_server_scheme() {
    assert_eq!(
        channels_url("http://127.0.0.1:8000/user/u/", "k1"),
        "ws://127.0.0.1:8000/user/u/api/kernels/k1/channels"
    );
    assert_eq!(
        channels_url("https://hub.example.org/user/u/s/", "k1"),
        "wss://hub.example.org/user/u/s/api/kernels/k1/channels"
    );
}

#[test]
fn the_first_failure_is_the_journeys_and_later_phases_are_kept() {
    let mut run = Run {
        phases: Vec::new(),
        failure: None,
    };
    let started = Instant::now();
    assert_eq!(run.finish(JourneyPhase::Login, started, Ok(1)), Some(1));
    assert_eq!(
        run.finish::<()>(
            JourneyPhase::Execute,
            started,
            Err(PhaseError::other("first".into()))
        ),
        None
    );
    run.finish::<()>(
        JourneyPhase::Stop,
        started,
        Err(PhaseError::other("second".into())),
    );
    let failure = run.failure.expect("failure");
    assert_eq!(failure.phase, JourneyPhase::Execute);
    assert_eq!(failure.reason, "first");
    assert_eq!(
        run.phases
            .iter()
            .map(|p| (p.phase, p.ok))
            .collect::<Vec<_>>(),
        vec![
            (JourneyPhase::Login, true),
            (JourneyPhase::Execute, false),
            (JourneyPhase::Stop, false)
        ]
    );
}

#[tokio::test]
async fn a_phase_past_its_timeout_fails_as_a_timeout() {
    let mut run = Run {
        phases: Vec::new(),
        failure: None,
    };
    let got = timed(
        &mut run,
        JourneyPhase::Kernel,
        Duration::from_millis(50),
        async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, PhaseError>(())
        },
    )
    .await;
    assert_eq!(got, None);
    let failure = run.failure.expect("failure");
    assert_eq!(failure.kind, FailureKind::Timeout);
    assert_eq!(failure.reason, "timeout after 0.05 s");
    assert!(!run.phases[0].ok && run.phases[0].duration_us >= 50_000);
}

fn result(ok: bool) -> JourneyResult {
    JourneyResult {
        hub: "lab".into(),
        user: "u-abc".into(),
        server: String::new(),
        started_ms: 0,
        ok,
        phases: vec![
            JourneyPhaseResult {
                phase: JourneyPhase::Login,
                ok: true,
                duration_us: 250_000,
            },
            JourneyPhaseResult {
                phase: JourneyPhase::Spawn,
                ok,
                duration_us: 1_500_000,
            },
        ],
        failure: (!ok).then(|| JourneyFailure {
            phase: JourneyPhase::Spawn,
            kind: FailureKind::Timeout,
            reason: "timeout after 300 s at progress 50 \"pulling image\"".into(),
        }),
    }
}

#[test]
fn the_table_has_a_row_per_phase_a_total_and_the_failure() {
    let table = super::table(&result(false));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[1], "login    ok       0.250");
    assert_eq!(lines[2], "spawn    FAIL     1.500");
    assert_eq!(lines[3], "total    FAIL     1.750");
    assert!(
        table.ends_with("failed: spawn: timeout after 300 s at progress 50 \"pulling image\"\n"),
        "{table}"
    );
    assert_eq!(result_label(&result(false)), "spawn");
    assert_eq!(result_label(&result(true)), "ok");
}

#[test]
fn the_queue_hands_results_over_once_and_stays_bounded() {
    let queue = JourneyQueue::default();
    for i in 0..(QUEUE_MAX as i64 + 3) {
        let mut r = result(true);
        r.started_ms = i;
        queue.push(r);
    }
    let taken = queue.take();
    assert_eq!(taken.len(), QUEUE_MAX);
    assert_eq!(taken[0].started_ms, 3, "the oldest were dropped");
    assert!(queue.take().is_empty());
}

#[test]
fn jitter_stays_within_ten_percent() {
    for _ in 0..1000 {
        let d = jittered(Duration::from_secs(1800));
        assert!(
            d >= Duration::from_secs(1620) && d <= Duration::from_secs(1980),
            "{d:?}"
        );
    }
}

#[test]
fn path_segments_are_escaped() {
    assert_eq!(path_segment("alice"), "alice");
    assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    assert_eq!(path_segment("x@y.org"), "x@y.org");
}

#[test]
fn a_failed_event_gives_the_hubs_reason_and_no_other_does() {
    let failed: ProgressEvent = serde_json::from_str(
        r#"{"progress": 100, "failed": true, "message": "Spawn failed: no quota"}"#,
    )
    .expect("event");
    assert_eq!(
        failure_message(&failed),
        Some("Spawn failed: no quota".to_string())
    );
    let pending: ProgressEvent =
        serde_json::from_str(r#"{"progress": 50, "message": "Spawn failed: not really"}"#)
            .expect("event");
    assert_eq!(failure_message(&pending), None);
    assert_eq!(failure_message(&ProgressEvent::default()), None);
}

#[test]
fn a_stuck_server_is_reported_with_its_pending_state() {
    let patience = Duration::from_secs(60);
    assert_eq!(
        stuck_reason("named server \"hubwatch-journey\"", "spawn", patience),
        "named server \"hubwatch-journey\" is stuck pending spawn (still pending after 60 s); \
         left alone (stop it on the hub)"
    );
    assert_eq!(
        stuck_reason("default server", "stop", patience),
        "default server is stuck pending stop (still pending after 60 s); \
         left alone (the hub is still stopping it)"
    );
}

fn some_result() -> JourneyResult {
    JourneyResult {
        hub: "lab".into(),
        user: "p".into(),
        server: String::new(),
        started_ms: 1,
        ok: false,
        phases: Vec::new(),
        failure: None,
    }
}

#[test]
fn failed_spawns_are_held_from_a_run_start_until_its_result_is_taken() {
    let queue = JourneyQueue::default();
    assert!(!queue.holds_failed_spawns(), "nothing runs");
    let run = queue.begin();
    assert!(queue.holds_failed_spawns(), "a run is under way");
    queue.push(some_result());
    drop(run);
    assert!(queue.holds_failed_spawns(), "its result has not left yet");
    assert_eq!(queue.take().len(), 1);
    assert!(
        !queue.holds_failed_spawns(),
        "the result left: the counters may follow"
    );
}

#[test]
fn a_run_cut_short_stops_holding_failed_spawns() {
    let queue = JourneyQueue::default();
    {
        let _run = queue.begin();
        assert!(queue.holds_failed_spawns());
        // Dropped without a result, as when the task is aborted or panics.
    }
    assert!(!queue.holds_failed_spawns());
}

#[tokio::test]
async fn the_first_journey_waits_for_the_hubs_counters_to_be_sent_once() {
    let queue = Arc::new(JourneyQueue::default());
    let waiter = {
        let queue = Arc::clone(&queue);
        tokio::spawn(async move { queue.wait_baseline().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "no baseline yet: the journey waits");
    queue.baseline_sent();
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by the baseline")
        .expect("task");
    // Once sent, later waits return at once.
    tokio::time::timeout(Duration::from_millis(100), queue.wait_baseline())
        .await
        .expect("no wait after the baseline");
}
