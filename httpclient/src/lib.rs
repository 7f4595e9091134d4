//! hubwatch's one HTTP client plumbing, used by both binaries (`shared` stays
//! free of IO): loading CA and client certificates into rustls
//! ([`tls`]), one request with every step under one deadline ([`request`]),
//! and naming what failed ([`Failure`]: DNS, connect refused, timeout, TLS
//! certificate verification, other TLS, HTTP status), tested once here.
//!
//! The agent's sources and the collector's Alertmanager sender, outside
//! probes and status webhooks call [`send`]; the agent's sender and the
//! collector's remote-write client keep their pooled hyper-util clients but
//! build their TLS with [`tls`] and classify their errors with
//! [`Failure::classify_error`].

#![forbid(unsafe_code)]

mod failure;
pub mod request;
pub mod tls;

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub use failure::{Failure, error_chain};
pub use request::{QUOTED_BODY_BYTES, Request, RequestError, Response, quote_body, send};
pub use tls::SetupError;

/// A parsed `http://` or `https://` URL.
pub use hubwatch_shared::url::HttpTarget;

#[cfg(test)]
mod tests;
