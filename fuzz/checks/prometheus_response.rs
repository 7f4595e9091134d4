//! Fuzz target: arbitrary `/api/v1/query` responses into the Prometheus
//! source's decoder (`prometheus::parse_response`), and each result series
//! through the label mapping that decides what leaves the cluster
//! (`prometheus::map_series`).
//!
//! The first 2 bytes of the input are the HTTP status, the rest the body.
//! Beyond "no panic":
//! - a result is only ever taken from a 2xx answer, and a failure's message
//!   is never empty;
//! - decoding is deterministic;
//! - mapped labels are sorted, each name once (Prometheus' data model), with
//!   no `__name__`; a `hub` label is the hub the series named; a `user`
//!   label is present exactly when a user was named, and is then the user's
//!   `u-` pseudonym, never a raw name.

use hubwatch_agent::privacy::Pseudonymiser;
use hubwatch_agent::sources::prometheus::{map_series, parse_response};

/// The defaults of `[prometheus] hub_label` and `user_label`.
const HUB_LABEL: &str = "namespace";
const USER_LABEL: &str = "annotation_hub_jupyter_org_username";

/// One input: a panic is a finding.
pub fn check(data: &[u8]) {
    let (status, body) = match data {
        [hi, lo, body @ ..] => (u16::from_be_bytes([*hi, *lo]) % 1000, body),
        _ => return,
    };
    let parsed = parse_response(status, body);
    let again = parse_response(status, body);
    match (&parsed, &again) {
        (Ok((a, wa)), Ok((b, wb))) => {
            assert_eq!(wa, wb, "warnings not deterministic");
            assert_eq!(a.len(), b.len(), "series not deterministic");
            for (x, y) in a.iter().zip(b) {
                assert_eq!(x.metric, y.metric);
                assert_eq!(x.value.to_bits(), y.value.to_bits());
                assert_eq!(x.timestamp_ms, y.timestamp_ms);
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "failure not deterministic"),
        _ => panic!("parse_response is not deterministic"),
    }
    let series = match parsed {
        Ok((series, _)) => {
            assert!(
                (200..300).contains(&status),
                "a result taken from HTTP {status}"
            );
            series
        }
        Err(failure) => {
            assert!(!failure.message.is_empty(), "a failure without a message");
            return;
        }
    };

    let pseudonyms = Pseudonymiser::with_secret(b"fuzz-secret-0123456789");
    for s in series {
        let named_user = s
            .metric
            .get(USER_LABEL)
            .or_else(|| s.metric.get("user"))
            .filter(|v| !v.is_empty())
            .cloned();
        let mapped = map_series(s.metric, HUB_LABEL, USER_LABEL, &pseudonyms);
        assert!(
            mapped.labels.windows(2).all(|w| w[0].name < w[1].name),
            "labels not sorted by unique name: {:?}",
            mapped.labels
        );
        assert!(mapped.labels.iter().all(|l| l.name != "__name__"));
        let hub = mapped
            .labels
            .iter()
            .find(|l| l.name == "hub")
            .map(|l| &l.value);
        assert_eq!(hub, mapped.hub.as_ref(), "hub label and hub differ");
        let user = mapped
            .labels
            .iter()
            .find(|l| l.name == "user")
            .map(|l| &l.value);
        assert_eq!(user, mapped.user.as_ref(), "user label and user differ");
        assert_eq!(named_user.is_some(), mapped.user.is_some());
        if let (Some(raw), Some(user)) = (&named_user, &mapped.user) {
            assert_eq!(user, &pseudonyms.user(raw), "user is not the pseudonym");
        }
    }
}
