//! Fuzz target: arbitrary bodies into the JupyterHub users-API decoder
//! (`users::decode_page`, both the paginated and the plain-list shape), and
//! what it decodes through the listing diff (`users::UsageTracker`) that
//! turns listings into usage events.
//!
//! The input is split at the first `0xFF` byte (never part of UTF-8, so never
//! inside JSON) into two page bodies, A and B, so libFuzzer also explores
//! what one listing followed by another gives. Beyond "no panic":
//! - decoding is deterministic, and with pseudonyms on every user is a
//!   `u-` pseudonym of 32 hex digits and every named server an `s-` one (a
//!   raw name never leaves the decoder); profiles are at most 128 chars;
//! - users without servers are never more than the users listed;
//! - the tracker, fed A then B (deduplicated as the source does), reports
//!   every server new in B as started; fed B again, it reports nothing; fed
//!   an empty listing, it stops exactly the servers of B.

use std::collections::HashSet;

use hubwatch_agent::privacy::Pseudonymiser;
use hubwatch_agent::sources::jupyterhub::users::{
    ListingTotals, SeenServer, UsageTracker, decode_page,
};
use hubwatch_shared::wire::UsageKind;

const NOW_MS: i64 = 1_760_000_000_000;

fn is_pseudonym(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix)
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The servers of a listing, first occurrence of each (user, server) kept, as
/// the source's `read_users` does before it calls the tracker.
fn listing(body: &[u8], privacy: &Pseudonymiser) -> Vec<SeenServer> {
    let Ok(page) = decode_page(body, privacy) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    page.servers
        .into_iter()
        .filter(|s| seen.insert((s.user.clone(), s.server.clone())))
        .collect()
}

/// One input: a panic is a finding.
pub fn check(data: &[u8]) {
    let (a, b) = match data.iter().position(|&byte| byte == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let pseudonyms = Pseudonymiser::with_secret(b"fuzz-secret-0123456789");
    let plain = Pseudonymiser::disabled();

    for body in [a, b] {
        let decoded = decode_page(body, &pseudonyms);
        assert_eq!(
            decoded,
            decode_page(body, &pseudonyms),
            "decode_page is not deterministic"
        );
        let Ok(page) = decoded else {
            continue;
        };
        assert!(page.users_without_servers <= page.users);
        for server in &page.servers {
            assert!(
                is_pseudonym(&server.user, "u-"),
                "user {:?} is not a pseudonym",
                server.user
            );
            assert!(
                server.server.is_empty() || is_pseudonym(&server.server, "s-"),
                "server {:?} is not a pseudonym",
                server.server
            );
            if let Some(profile) = &server.profile {
                assert!(!profile.is_empty() && profile.chars().count() <= 128);
            }
        }
        let totals = ListingTotals::of(page.users, &page.servers);
        assert_eq!(
            totals.ready_servers + totals.pending_servers,
            page.servers.len()
        );
        // The same page without pseudonyms lists the same servers.
        if let Ok(raw) = decode_page(body, &plain) {
            assert_eq!(raw.servers.len(), page.servers.len());
            assert_eq!(raw.users, page.users);
        }
    }

    let first = listing(a, &pseudonyms);
    let second = listing(b, &pseudonyms);
    let mut tracker = UsageTracker::default();
    tracker.update("prod", &first, NOW_MS);
    assert_eq!(tracker.len(), first.len());

    let events = tracker.update("prod", &second, NOW_MS + 15_000);
    assert_eq!(tracker.len(), second.len());
    assert!(events.iter().all(|e| e.hub == "prod"));
    let before: HashSet<(&str, &str)> = first
        .iter()
        .map(|s| (s.user.as_str(), s.server.as_str()))
        .collect();
    for server in &second {
        if !before.contains(&(server.user.as_str(), server.server.as_str())) {
            assert!(
                events.iter().any(|e| e.user == server.user
                    && e.server == server.server
                    && matches!(e.kind, UsageKind::ServerStarted { .. })),
                "a new server was not reported started"
            );
        }
    }

    let repeat = tracker.update("prod", &second, NOW_MS + 30_000);
    assert!(repeat.is_empty(), "the same listing twice gave {repeat:?}");

    let stopped = tracker.update("prod", &[], NOW_MS + 45_000);
    assert!(tracker.is_empty());
    assert_eq!(stopped.len(), second.len());
    assert!(
        stopped
            .iter()
            .all(|e| e.kind == UsageKind::ServerStopped && e.timestamp_ms == NOW_MS + 45_000)
    );
}
