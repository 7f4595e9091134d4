//! Fuzz target: arbitrary 401/403 bodies into `jupyterhub::missing_scopes`,
//! which picks the scope names a hub says a token lacks out of its JSON or
//! HTML error page, for the source's health record.
//!
//! The body is the hub's (or a proxy's) and may hold usernames (a scope
//! filter `read:users!user=alice`). Beyond "no panic" (it slices by byte
//! offsets): what it returns is only scope names, `[A-Za-z0-9:_-]`, at most
//! 100 bytes each, joined by ` or `, never empty, never a filter (`!`); and
//! it is deterministic.

use hubwatch_agent::sources::jupyterhub::missing_scopes;

/// One input: a panic is a finding.
pub fn check(data: &[u8]) {
    // The source reads the body lossily, as here.
    let body = String::from_utf8_lossy(data);
    let found = missing_scopes(&body);
    assert_eq!(found, missing_scopes(&body), "not deterministic");
    let Some(found) = found else {
        return;
    };
    assert!(!found.is_empty());
    for scope in found.split(" or ") {
        assert!(!scope.is_empty() && scope.len() <= 100, "scope {scope:?}");
        assert!(
            scope
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":_-".contains(&b)),
            "scope {scope:?} has other characters"
        );
    }
}
