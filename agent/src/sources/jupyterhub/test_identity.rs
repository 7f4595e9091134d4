//! The journey's test identity, left out of what the hub source reports.
//!
//! When a hub has a `[hubs.journey] token_file`, each collection reads
//! `GET /hub/api/user` with that token: the user it names is the test
//! identity. Its servers are removed from the users listing before usage
//! events and user counts are made, and the hub's own
//! `jupyterhub_active_users{period}` gauges, which count every user whose
//! `last_activity` falls inside the period, are lowered by one when the test
//! user's `last_activity` does (read with the hub source's own token when
//! the journey's least-scope token cannot see it). The name is pseudonymised at once, like any
//! other, and never logged.

use std::path::Path;
use std::time::Instant;

use http::Uri;
use hubwatch_shared::wire::{Sample, label};
use serde::Deserialize;

use super::client::{self, HubHttpClient};
use super::users::{SeenServer, parse_time_ms};
use crate::privacy::Pseudonymiser;

/// The test identity as the hub source knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TestIdentity {
    /// Its pseudonym (as the users listing's servers carry it).
    pub pseudonym: String,
    /// Its last activity, Unix ms, when the hub reported one.
    pub last_activity_ms: Option<i64>,
}

#[derive(Deserialize)]
struct Model {
    name: String,
    #[serde(default)]
    last_activity: Option<String>,
}

/// Reads the test identity with the journey's token. Its `last_activity`
/// comes from that model when the token may read it, else from
/// `GET /hub/api/users/{name}` with the hub source's own token
/// (`read:users`): the journey's least scopes do not include it. The error
/// says what failed, never the body.
pub async fn read(
    http: &HubHttpClient,
    user_uri: &Uri,
    users_url: &str,
    token_file: &Path,
    hub_token: Option<&str>,
    privacy: &Pseudonymiser,
    deadline: Instant,
) -> Result<TestIdentity, String> {
    let text = tokio::fs::read_to_string(token_file)
        .await
        .map_err(|e| format!("journey token_file {}: {e}", token_file.display()))?;
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "journey token_file {}: empty or not a token",
            token_file.display()
        ));
    }
    let model = read_model(http, user_uri, token, deadline).await?;
    let mut last_activity_ms = model.last_activity.as_deref().and_then(parse_time_ms);
    if last_activity_ms.is_none()
        && let Some(hub_token) = hub_token
    {
        let escaped: String = model
            .name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if let Ok(uri) = format!("{users_url}/{escaped}").parse::<Uri>() {
            // Without it only the active-users correction is lost.
            if let Ok(full) = read_model(http, &uri, hub_token, deadline).await {
                last_activity_ms = full.last_activity.as_deref().and_then(parse_time_ms);
            }
        }
    }
    Ok(TestIdentity {
        pseudonym: privacy.user(&model.name),
        last_activity_ms,
    })
}

async fn read_model(
    http: &HubHttpClient,
    uri: &Uri,
    token: &str,
    deadline: Instant,
) -> Result<Model, String> {
    let fetched = client::get(
        http,
        uri,
        "application/json",
        Some(token),
        1024 * 1024,
        deadline,
    )
    .await
    .map_err(|e| format!("reading the journey's user: {}", e.reason))?;
    if !fetched.status.is_success() {
        return Err(format!(
            "reading the journey's user: HTTP {}",
            fetched.status.as_u16()
        ));
    }
    serde_json::from_slice(&fetched.body)
        .map_err(|_| "reading the journey's user: not a user model".to_string())
}

/// Removes the test identity's servers from a listing of `users` users;
/// returns the user count without it.
pub fn exclude(users: usize, servers: &mut Vec<SeenServer>, pseudonym: &str) -> usize {
    let before = servers.len();
    servers.retain(|s| s.user != pseudonym);
    if servers.len() < before {
        users.saturating_sub(1)
    } else {
        users
    }
}

/// Lowers each `jupyterhub_active_users{period}` by one when the test
/// identity's `last_activity` falls inside that period (as the hub counts
/// it: within the period before now).
pub fn adjust_active_users(samples: &mut [Sample], last_activity_ms: Option<i64>, now_ms: i64) {
    let Some(last) = last_activity_ms else {
        return;
    };
    for sample in samples
        .iter_mut()
        .filter(|s| s.name == "jupyterhub_active_users")
    {
        let Some(period) = label(&sample.labels, "period").and_then(period_ms) else {
            continue;
        };
        if now_ms - last <= period && sample.value >= 1.0 {
            sample.value -= 1.0;
        }
    }
}

/// `24h`, `7d`, `30d` (and `1h`, `90m`) in ms.
pub fn period_ms(text: &str) -> Option<i64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().ok()?;
    let unit_ms = match unit {
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.checked_mul(unit_ms)
}

#[cfg(test)]
mod tests {
    use hubwatch_shared::wire::Label;

    use super::*;

    fn server(user: &str) -> SeenServer {
        SeenServer {
            user: user.into(),
            server: String::new(),
            ready: true,
            started_ms: None,
            last_activity_ms: None,
            profile: None,
        }
    }

    #[test]
    fn the_test_identity_leaves_the_listing_and_its_count() {
        let mut servers = vec![server("u-a"), server("u-test"), server("u-b")];
        assert_eq!(exclude(3, &mut servers, "u-test"), 2);
        assert_eq!(servers, vec![server("u-a"), server("u-b")]);
        assert_eq!(exclude(2, &mut servers, "u-test"), 2, "absent: unchanged");
    }

    #[test]
    fn active_users_lose_the_test_user_only_in_periods_holding_its_activity() {
        let now = 100 * 86_400_000;
        let gauge = |period: &str, value: f64| Sample {
            name: "jupyterhub_active_users".into(),
            labels: vec![Label::new("period", period)],
            value,
            timestamp_ms: now,
        };
        let mut samples = vec![gauge("24h", 3.0), gauge("7d", 5.0), gauge("30d", 0.0)];
        // Active two days ago: not in the last 24h, in the last 7 days.
        adjust_active_users(&mut samples, Some(now - 2 * 86_400_000), now);
        let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
        assert_eq!(values, vec![3.0, 4.0, 0.0], "never below zero");
        adjust_active_users(&mut samples, None, now);
        assert_eq!(samples[1].value, 4.0, "no activity known: unchanged");
    }

    #[test]
    fn periods_parse() {
        assert_eq!(period_ms("24h"), Some(86_400_000));
        assert_eq!(period_ms("7d"), Some(7 * 86_400_000));
        assert_eq!(period_ms("90m"), Some(90 * 60_000));
        assert_eq!(period_ms("h"), None);
        assert_eq!(period_ms("3w"), None);
    }
}
