//! The collector's side of the workspace's one HTTP client
//! (`hubwatch-http`): the client of the Alertmanager sender, the outside
//! probes and the status webhooks. One request per call, every step (DNS,
//! connect, TLS, HTTP) under one deadline and its failure named by the step,
//! so a probe measures a real connect and reads the peer certificate's
//! expiry, and a hung Alertmanager costs exactly one bounded attempt.

use std::path::Path;
use std::sync::Arc;

pub use hubwatch_http::{
    HttpTarget as Endpoint, Request, RequestError, Response, SetupError as ClientSetupError,
    quote_body, send,
};

/// Largest response body read; the rest fails the request.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The `User-Agent` the collector's requests carry.
pub const USER_AGENT: &str = concat!("hubwatch-collector/", env!("CARGO_PKG_VERSION"));

/// TLS trusting the PEM certificates in `ca_file` (config key `key`), or the
/// webpki roots. Offers only HTTP/1.1 by ALPN.
pub fn tls_config(
    ca_file: Option<&Path>,
    key: &str,
) -> Result<Arc<rustls::ClientConfig>, ClientSetupError> {
    hubwatch_http::tls::http1_config(ca_file, key)
}
