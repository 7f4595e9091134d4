use super::*;

fn privacy() -> Pseudonymiser {
    Pseudonymiser::with_secret(b"a test secret of enough bytes")
}

/// One user as JupyterHub 6 lists it (fields copied from a real hub).
fn user_json(name: &str, servers: &str) -> String {
    format!(
        r#"{{"groups": [], "created": "2026-11-25T18:47:15.088448Z", "name": "{name}",
            "kind": "user", "pending": null, "admin": false,
            "last_activity": "2026-11-25T18:47:25.232340Z", "roles": ["user"],
            "server": "/user/{name}/", "servers": {{{servers}}}, "user_info": null}}"#
    )
}

fn server_json(name: &str, started: &str, activity: &str, ready: bool, options: &str) -> String {
    format!(
        r#""{name}": {{"name": "{name}", "display_name": "", "full_name": "x/{name}",
            "last_activity": "{activity}", "started": "{started}", "pending": null,
            "ready": {ready}, "stopped": false, "url": "/user/x/{name}",
            "user_options": {options}, "progress_url": "/p", "full_url": null,
            "full_progress_url": null}}"#
    )
}

#[test]
fn a_paginated_page_is_decoded_and_every_name_pseudonymised() {
    let body = format!(
        r#"{{"items": [{}, {}], "_pagination": {{"offset": 0, "limit": 2, "total": 5,
            "next": {{"offset": 2, "limit": 2, "url": "http://x/hub/api/users?offset=2"}}}}}}"#,
        user_json(
            "alice",
            &server_json(
                "",
                "2026-11-25T18:47:21.509628Z",
                "2026-11-25T18:47:25.232340Z",
                true,
                r#"{"profile": "small"}"#
            )
        ),
        user_json(
            "bob",
            &server_json(
                "bobs-lab",
                "2026-11-25T18:00:00Z",
                "2026-11-25T18:10:00Z",
                false,
                "{}"
            )
        ),
    );
    let page = decode_page(body.as_bytes(), &privacy()).expect("decodes");
    assert!(page.paginated);
    assert_eq!(page.users, 2);
    assert_eq!(page.total, Some(5));
    assert_eq!(page.next_offset, Some(2));
    assert_eq!(page.servers.len(), 2);
    let alice = &page.servers[0];
    assert_eq!(alice.user, privacy().user("alice"));
    assert!(alice.user.starts_with("u-"));
    assert_eq!(alice.server, "");
    assert!(alice.ready);
    assert_eq!(alice.started_ms, Some(1_795_632_441_509));
    assert_eq!(alice.last_activity_ms, Some(1_795_632_445_232));
    assert_eq!(alice.profile.as_deref(), Some("small"));
    let bob = &page.servers[1];
    assert!(!bob.ready);
    assert!(
        bob.server.starts_with("s-") && !bob.server.contains("bob"),
        "{}",
        bob.server
    );
    assert_eq!(bob.profile, None);
    let debug = format!("{page:?}");
    assert!(
        !debug.contains("alice") && !debug.contains("bob"),
        "{debug}"
    );
}

#[test]
fn a_users_servers_decode_in_the_same_order_every_time() {
    // Found by the `users_page` fuzz target: the servers came out of a
    // `HashMap`, so the same body gave a different list (and event order)
    // from one decode to the next.
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let servers: Vec<String> = names
        .iter()
        .rev()
        .map(|name| {
            server_json(
                name,
                "2026-11-25T18:00:00Z",
                "2026-11-25T18:10:00Z",
                true,
                "{}",
            )
        })
        .collect();
    let body = format!("[{}]", user_json("alice", &servers.join(", ")));
    let listed =
        |page: UsersPage| -> Vec<String> { page.servers.into_iter().map(|s| s.server).collect() };
    let plain = Pseudonymiser::disabled();
    let first = listed(decode_page(body.as_bytes(), &plain).expect("decodes"));
    assert_eq!(first, names);
    for _ in 0..5 {
        let again = listed(decode_page(body.as_bytes(), &plain).expect("decodes"));
        assert_eq!(again, first);
    }
}

#[test]
fn with_pseudonyms_off_names_travel_as_they_are() {
    let body = format!(
        "[{}]",
        user_json(
            "alice",
            &server_json(
                "lab",
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
                true,
                "null"
            )
        )
    );
    let page = decode_page(body.as_bytes(), &Pseudonymiser::disabled()).expect("decodes");
    assert!(!page.paginated);
    assert_eq!(page.next_offset, None);
    assert_eq!(page.servers[0].user, "alice");
    assert_eq!(page.servers[0].server, "lab");
}

#[test]
fn users_listed_without_servers_are_counted_not_guessed() {
    // What a token without read:servers gets from a real hub.
    let body = r#"[{"groups": [], "name": "alice", "kind": "user", "admin": false,
        "last_activity": "2026-11-25T18:47:25.232340Z", "server": "/user/alice/"}]"#;
    let page = decode_page(body.as_bytes(), &privacy()).expect("decodes");
    assert_eq!(page.users, 1);
    assert_eq!(page.users_without_servers, 1);
    assert!(page.servers.is_empty());
}

#[test]
fn garbage_is_an_error_that_quotes_no_body() {
    let html = b"<!DOCTYPE HTML><html>alice</html>";
    assert_eq!(decode_page(html, &privacy()), Err(PageError::NotJson('<')));
    assert_eq!(decode_page(b"  \n", &privacy()), Err(PageError::Empty));
    let full = format!("[{}]", user_json("alice", ""));
    let truncated = &full.as_bytes()[..full.len() / 2];
    let err = decode_page(truncated, &privacy()).expect_err("truncated");
    assert!(
        matches!(
            err,
            PageError::Json {
                category: "truncated",
                ..
            }
        ),
        "{err:?}"
    );
    // A wrong shape whose error, from serde, would quote the value.
    let wrong = br#"{"items": [{"name": "alice", "servers": "alice-secret"}]}"#;
    let err = decode_page(wrong, &privacy()).expect_err("wrong shape");
    assert!(
        matches!(
            err,
            PageError::Json {
                category: "unexpected",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains("alice"), "{err}");
}

#[test]
fn jupyterhub_times_parse_with_or_without_a_zone() {
    assert_eq!(parse_time_ms("1970-01-01T00:00:01.5Z"), Some(1500));
    assert_eq!(parse_time_ms("1970-01-01T00:00:01.5"), Some(1500));
    assert_eq!(parse_time_ms("1970-01-01T01:00:00+01:00"), Some(0));
    assert_eq!(parse_time_ms("yesterday"), None);
}

fn seen(user: &str, server: &str, started: i64, activity: Option<i64>) -> SeenServer {
    SeenServer {
        user: user.to_string(),
        server: server.to_string(),
        ready: true,
        started_ms: Some(started),
        last_activity_ms: activity,
        profile: Some("small".to_string()),
    }
}

fn kinds(events: &[UsageEvent]) -> Vec<(String, String, UsageKind, i64)> {
    events
        .iter()
        .map(|e| {
            assert_eq!(e.hub, "prod");
            (
                e.user.clone(),
                e.server.clone(),
                e.kind.clone(),
                e.timestamp_ms,
            )
        })
        .collect()
}

fn started(profile: &str) -> UsageKind {
    UsageKind::ServerStarted {
        profile: Some(profile.to_string()),
    }
}

#[test]
fn the_tracker_reports_starts_activity_and_stops_at_the_right_times() {
    let mut tracker = UsageTracker::default();
    let first = tracker.update(
        "prod",
        &[
            seen("u-a", "", 1_000, Some(1_500)),
            seen("u-b", "", 2_000, None),
        ],
        10_000,
    );
    assert_eq!(
        kinds(&first),
        [
            ("u-a".into(), "".into(), started("small"), 1_000),
            ("u-a".into(), "".into(), UsageKind::Activity, 1_500),
            ("u-b".into(), "".into(), started("small"), 2_000),
        ]
    );
    assert_eq!(tracker.len(), 2);

    // Nothing changed: nothing to say.
    let same = tracker.update(
        "prod",
        &[
            seen("u-a", "", 1_000, Some(1_500)),
            seen("u-b", "", 2_000, None),
        ],
        25_000,
    );
    assert!(same.is_empty(), "{same:?}");

    // a is active again; b is gone; c appears.
    let next = tracker.update(
        "prod",
        &[
            seen("u-a", "", 1_000, Some(30_000)),
            seen("u-c", "x", 31_000, None),
        ],
        40_000,
    );
    assert_eq!(
        kinds(&next),
        [
            ("u-a".into(), "".into(), UsageKind::Activity, 30_000),
            ("u-c".into(), "x".into(), started("small"), 31_000),
            ("u-b".into(), "".into(), UsageKind::ServerStopped, 40_000),
        ]
    );

    // a was stopped and started again between two listings.
    let restarted = tracker.update(
        "prod",
        &[
            seen("u-a", "", 50_000, None),
            seen("u-c", "x", 31_000, None),
        ],
        55_000,
    );
    assert_eq!(
        kinds(&restarted),
        [
            ("u-a".into(), "".into(), UsageKind::ServerStopped, 50_000),
            ("u-a".into(), "".into(), started("small"), 50_000),
        ]
    );

    // An activity time that goes back (clock or hub restore) is not news.
    let back = tracker.update(
        "prod",
        &[
            seen("u-a", "", 50_000, Some(49_000)),
            seen("u-c", "x", 31_000, None),
        ],
        60_000,
    );
    assert_eq!(
        kinds(&back),
        [("u-a".into(), "".into(), UsageKind::Activity, 49_000)]
    );
    let back_again = tracker.update(
        "prod",
        &[
            seen("u-a", "", 50_000, Some(48_000)),
            seen("u-c", "x", 31_000, None),
        ],
        65_000,
    );
    assert!(back_again.is_empty(), "{back_again:?}");

    // Everyone gone.
    let empty = tracker.update("prod", &[], 70_000);
    assert_eq!(empty.len(), 2);
    assert!(
        empty
            .iter()
            .all(|e| e.kind == UsageKind::ServerStopped && e.timestamp_ms == 70_000)
    );
    assert!(tracker.is_empty());
}

#[test]
fn a_server_without_a_started_time_starts_when_first_seen() {
    let mut tracker = UsageTracker::default();
    let mut s = seen("u-a", "", 0, None);
    s.started_ms = None;
    let events = tracker.update("prod", &[s.clone()], 5_000);
    assert_eq!(
        kinds(&events),
        [("u-a".into(), "".into(), started("small"), 5_000)]
    );
    assert!(tracker.update("prod", &[s], 9_000).is_empty());
}

#[test]
fn totals_count_users_and_server_states() {
    let mut pending = seen("u-b", "", 1, None);
    pending.ready = false;
    let totals = ListingTotals::of(
        3,
        &[
            seen("u-a", "", 1, None),
            seen("u-a", "lab", 1, None),
            pending,
        ],
    );
    assert_eq!(
        totals,
        ListingTotals {
            users: 3,
            users_with_servers: 2,
            ready_servers: 2,
            pending_servers: 1,
        }
    );
}

#[test]
fn after_a_restart_a_server_gone_meanwhile_gets_an_inferred_stop_at_the_first_listing() {
    // The previous run saw three servers running.
    let mut before = UsageTracker::default();
    before.update(
        "prod",
        &[
            seen("u-a", "", 1_000, None),
            seen("u-b", "", 2_000, None),
            seen("u-c", "", 3_000, None),
        ],
        10_000,
    );
    let persisted = before.running();
    assert_eq!(persisted.len(), 3);

    let mut after = UsageTracker::default();
    after.restore(persisted);
    // u-a still runs (same start), u-b is gone, u-c was restarted meanwhile.
    let first = after.update(
        "prod",
        &[seen("u-a", "", 1_000, None), seen("u-c", "", 50_000, None)],
        60_000,
    );
    assert_eq!(
        kinds(&first),
        [
            // Repeated exactly: the collector drops the repeat.
            ("u-a".into(), "".into(), started("small"), 1_000),
            (
                "u-c".into(),
                "".into(),
                UsageKind::ServerStopInferred,
                50_000
            ),
            ("u-c".into(), "".into(), started("small"), 50_000),
            (
                "u-b".into(),
                "".into(),
                UsageKind::ServerStopInferred,
                60_000
            ),
        ]
    );
    // From then on it is an ordinary tracker: a stop seen by this run is
    // an observed stop, and nothing repeats.
    let second = after.update("prod", &[seen("u-a", "", 1_000, None)], 75_000);
    assert_eq!(
        kinds(&second),
        [("u-c".into(), "".into(), UsageKind::ServerStopped, 75_000)]
    );
    assert_eq!(
        after.update("prod", &[seen("u-a", "", 1_000, None)], 90_000),
        []
    );
}

#[test]
fn without_a_restored_set_a_restart_infers_nothing() {
    let mut fresh = UsageTracker::default();
    let first = fresh.update("prod", &[seen("u-a", "", 1_000, None)], 60_000);
    assert!(
        first
            .iter()
            .all(|e| e.kind != UsageKind::ServerStopInferred && e.kind != UsageKind::ServerStopped)
    );
}
