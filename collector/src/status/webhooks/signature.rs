//! The webhook signature: HMAC-SHA256, keyed by the subscriber's
//! `secret_file`, over `"{timestamp}.{body}"`, where `timestamp` is the
//! `X-Hubwatch-Timestamp` header (Unix seconds of the attempt). Sent as
//! `X-Hubwatch-Signature: sha256=<lowercase hex>`. Binding the timestamp
//! lets a receiver refuse a replayed request older than its tolerance;
//! [`verify`] is what a receiver does (`docs/status.md` shows it in Python).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-hubwatch-signature";
/// The timestamp header (Unix seconds), part of the signed string.
pub const TIMESTAMP_HEADER: &str = "x-hubwatch-timestamp";
/// The event header (`incident.opened`, ...), for routing without parsing.
pub const EVENT_HEADER: &str = "x-hubwatch-event";
/// The event id header: the same for every attempt of one event.
pub const DELIVERY_HEADER: &str = "x-hubwatch-delivery";

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC accepts a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // Only reached if the hmac crate changed its contract: sign with an
    // empty key rather than panic (the receiver's check then fails loudly).
    <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default())
}

/// The `X-Hubwatch-Signature` value of `body` sent at `timestamp`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Why a received webhook does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The timestamp header is not Unix seconds.
    #[error("X-Hubwatch-Timestamp is not Unix seconds")]
    BadTimestamp,
    /// The timestamp is further from now than the tolerance (a replay, or a clock far off).
    #[error("X-Hubwatch-Timestamp is {0} s from now, beyond the tolerance")]
    Stale(i64),
    /// The signature header is not `sha256=<hex>`.
    #[error("X-Hubwatch-Signature is not sha256=<hex>")]
    BadFormat,
    /// The signature does not match the body, timestamp and secret.
    #[error("X-Hubwatch-Signature does not match: forged or altered")]
    Mismatch,
}

/// Checks a received webhook as a receiver should: the timestamp within
/// `tolerance_s` of `now_s`, and the signature over timestamp and body
/// (compared in constant time).
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), VerifyError> {
    let sent: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now_s.saturating_sub(sent);
    if skew.abs() > tolerance_s {
        return Err(VerifyError::Stale(skew));
    }
    let hex_part = signature
        .strip_prefix("sha256=")
        .ok_or(VerifyError::BadFormat)?;
    let expected = hex::decode(hex_part).map_err(|_| VerifyError::BadFormat)?;
    mac(secret, timestamp, body)
        .verify_slice(&expected)
        .map_err(|_| VerifyError::Mismatch)
}
