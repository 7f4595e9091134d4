//! `POST /api/v1/write`: Prometheus remote write 1.0 in, from a member's own
//! Prometheus, vmagent or Grafana Alloy, authenticated by the same member
//! tokens as agents.
//!
//! A request becomes one batch in the raw log, as if the token's agent had
//! sent it: the member and agent come from the credential (a `member` label
//! in the payload is removed and counted), the batch's sequence number is a
//! hash of the decompressed request, so a retried request is stored once;
//! every derivation stage then reads it like agent data (JupyterHub's own
//! metric names produce the same SLIs; a series needs a `hub` label, e.g. from
//! the writer's `external_labels`, to be attributed to a hub).
//!
//! Answers per the spec: 204 once the batch is durable (or was already
//! stored), 400 for a body that is not snappy, not a `WriteRequest`, or has a
//! series with unsorted, repeated or missing labels (a sender does not retry
//! a 4xx), 401 for a missing or unknown token, 413 over `server.max_body_bytes`
//! (or over [`MAX_DECODED_FACTOR`] times that once decompressed), 415 for
//! another encoding or a remote write 2.0 body, 429 with `Retry-After: 1`
//! when the store's writer queue is full (the writer is behind), 503 with
//! `Retry-After` when the store cannot take it (retried by every sender).

use http::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hubwatch_shared::codec;
use hubwatch_shared::remote_write::{self, RemoteWriteError};
use hubwatch_shared::wire::{Batch, Record};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use super::AppState;
use super::ingest::{authenticate, read_body, refuse};
use super::routes::{HttpResponse, unavailable};
use crate::auth::PeerIdentity;
use crate::clock::system_now_ms;
use crate::store::{IngestItem, IngestOutcome};

/// The path, as logged with a refused credential.
pub const PATH: &str = "/api/v1/write";
/// A body may decompress to this many times `server.max_body_bytes`.
pub const MAX_DECODED_FACTOR: usize = 16;
/// The label only the credential may set.
pub const MEMBER_LABEL: &str = "member";
/// `agent_version` recorded for a writer that sends no `User-Agent`.
const DEFAULT_WRITER: &str = "remote-write";
/// Longest `User-Agent` kept as the writer's version.
const MAX_USER_AGENT: usize = 64;

/// Handles one remote write request; the caller counts the status.
pub(super) async fn handle(
    state: &AppState,
    peer: &PeerIdentity,
    request: Request<Incoming>,
) -> HttpResponse {
    let m = &state.metrics;
    let rejected = &m.remote_write_in_rejected;
    let credential = match authenticate(state, peer, &request, PATH, rejected) {
        Ok(credential) => credential,
        Err(response) => return *response,
    };
    if let Err(message) = check_headers(&request) {
        return refuse(
            rejected,
            "unsupported",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message,
        );
    }
    let writer = request
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(MAX_USER_AGENT).collect::<String>())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_WRITER.to_string());
    let body = match read_body(state, request, rejected).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    if state.store.writer_behind() {
        // The store's writer has a full queue: the spec's 429, so the
        // writer backs off instead of holding a connection here.
        let mut response = refuse(
            rejected,
            "behind",
            StatusCode::TOO_MANY_REQUESTS,
            "the collector's store is behind; retry after the Retry-After delay",
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let received_ms = system_now_ms();
    let body_len = body.len() as u64;
    let max_decoded = usize::try_from(state.server.max_body_bytes.as_u64())
        .unwrap_or(usize::MAX)
        .saturating_mul(MAX_DECODED_FACTOR);

    let (member, agent) = (credential.member.clone(), credential.agent.clone());
    let built = tokio::task::spawn_blocking(move || {
        build_batch(&body, max_decoded, member, agent, writer, received_ms)
    })
    .await;
    let (batch, frame, removed) = match built {
        Ok(Ok(built)) => built,
        Ok(Err(Refused::Body(e))) => {
            let status = match e {
                RemoteWriteError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            tracing::warn!(
                member = %credential.member,
                agent = %credential.agent,
                error = %e,
                "remote write refused"
            );
            return refuse(rejected, e.reason(), status, e);
        }
        Ok(Err(Refused::Encode(e))) => {
            return refuse(rejected, "too_large", StatusCode::PAYLOAD_TOO_LARGE, e);
        }
        Err(e) => {
            tracing::error!(error = %e, "remote write decode task failed");
            return unavailable("decoding failed inside the collector; retry");
        }
    };
    let member = [credential.member.as_str()];
    if removed > 0 {
        m.remote_write_in_member_labels
            .with_label_values(&member)
            .inc_by(removed as u64);
        tracing::debug!(
            member = %credential.member,
            series = removed,
            "remote write: member labels removed"
        );
    }
    let samples = batch.records.len() as u64;
    let item = IngestItem {
        member: credential.member.clone(),
        agent: credential.agent.clone(),
        seq: batch.seq,
        created_ms: batch.created_ms,
        dropped_records: 0,
        agent_version: batch.agent_version,
        records: samples,
        frame: frame.into(),
        received_ms,
    };
    match state.store.ingest(item).await {
        Ok(IngestOutcome::Stored) => {
            m.batches_stored.with_label_values(&member).inc();
            m.records_stored.with_label_values(&member).inc_by(samples);
            m.remote_write_in_samples
                .with_label_values(&member)
                .inc_by(samples);
        }
        Ok(IngestOutcome::Duplicate) => {
            m.duplicates.with_label_values(&member).inc();
        }
        Err(e) => {
            tracing::error!(
                member = %credential.member,
                agent = %credential.agent,
                error = %e,
                "storing a remote write batch failed; the writer will retry"
            );
            return unavailable(format!("store unavailable: {e}"));
        }
    }
    m.remote_write_in_bytes
        .with_label_values(&member)
        .inc_by(body_len);
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// Why a body did not become a batch.
enum Refused {
    /// The sender's fault (the spec's 400, or 413).
    Body(RemoteWriteError),
    /// Too large for the codec once converted.
    Encode(codec::CodecError),
}

/// Decodes, checks and converts a body into the batch to store, its frame,
/// and how many series had their `member` label removed.
fn build_batch(
    body: &[u8],
    max_decoded: usize,
    member: String,
    agent: String,
    writer: String,
    received_ms: i64,
) -> Result<(Batch, Vec<u8>, usize), Refused> {
    let raw = remote_write::decompress(body, max_decoded).map_err(Refused::Body)?;
    let request = remote_write::decode_protobuf(&raw).map_err(Refused::Body)?;
    let converted = remote_write::to_samples(request, MEMBER_LABEL).map_err(Refused::Body)?;
    // The same request sent twice (a retry) is the same batch: the raw log
    // stores it once.
    let digest = Sha256::digest(&raw);
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&digest[..8]);
    let batch = Batch {
        agent_id: agent,
        member,
        seq: u64::from_be_bytes(seq_bytes),
        created_ms: received_ms,
        dropped_records: 0,
        agent_version: writer,
        records: converted.samples.into_iter().map(Record::Sample).collect(),
    };
    let frame = codec::encode(&batch).map_err(Refused::Encode)?;
    Ok((batch, frame, converted.reserved_labels_removed))
}

/// `Content-Encoding` must be snappy (when given) and `Content-Type` remote
/// write 1.0's protobuf (when given): anything else is answered 415.
fn check_headers(request: &Request<Incoming>) -> Result<(), String> {
    let header = |name| {
        request
            .headers()
            .get(name)
            .map(|v: &HeaderValue| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
    };
    if let Some(encoding) = header(CONTENT_ENCODING)
        && encoding != remote_write::CONTENT_ENCODING
    {
        return Err(format!(
            "Content-Encoding {encoding:?} is not supported; remote write 1.0 bodies are snappy"
        ));
    }
    if let Some(content_type) = header(CONTENT_TYPE) {
        let mut parts = content_type.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let proto = parts.find_map(|p| p.strip_prefix("proto="));
        if media != remote_write::CONTENT_TYPE
            || proto.is_some_and(|p| p != "prometheus.writerequest")
        {
            return Err(format!(
                "Content-Type {content_type:?} is not supported; this receiver speaks remote \
                 write 1.0 ({})",
                remote_write::CONTENT_TYPE
            ));
        }
    }
    Ok(())
}
