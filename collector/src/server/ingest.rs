//! `POST /api/v1/ingest`: one agent batch in, acknowledged only once durable.
//!
//! The order of checks is the contract: the credential first (401 before a
//! byte of body is read), then a declared `Content-Length` over
//! `server.max_body_bytes` (413 before reading), then the body under a size
//! limit (413 for chunked bodies that exceed it) and a time limit (408), then,
//! for a `Content-Encoding: snappy` body, its decompressed size (413 before
//! allocating; any other encoding is 415 before the body is read), then
//! the codec (400 naming the reason; for a protocol version not spoken here a
//! machine-readable body with `code: "unsupported_version"` and
//! `accepted_versions`), then the batch's claims against the credential (403),
//! then the store. The 200 (`{"status": "stored"|"duplicate", "seq": N}`) is
//! sent only after the store's group commit holding the batch has completed.
//! Every answer names the accepted versions, the body limit and the accepted
//! body encodings in headers.

use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hubwatch_shared::codec::{self, CodecError};
use hubwatch_shared::wire::{
    ACCEPT_ENCODING_HEADER, ACCEPT_VERSIONS_HEADER, MAX_BODY_BYTES_HEADER, SNAPPY_ENCODING,
    SUPPORTED_VERSIONS, UNSUPPORTED_VERSION_CODE, format_versions,
};
use hyper::body::Incoming;
use prometheus::IntCounterVec;
use tracing::Instrument as _;

use super::AppState;
use super::ha::Admission;
use super::routes::{HttpResponse, auth_failure, error, json, log_auth_failure, unavailable};
use crate::auth::{self, AuthError, Credential, PeerIdentity};
use crate::clock::system_now_ms;
use crate::store::{IngestItem, IngestOutcome};

/// The path, as logged with a refused credential.
const PATH: &str = "/api/v1/ingest";

/// Handles one ingest request; the caller counts the status. Every answer
/// carries [`ACCEPT_VERSIONS_HEADER`] and [`MAX_BODY_BYTES_HEADER`], so an
/// agent learns which protocol versions to write and how large a batch may be
/// from any reply, refusals included.
pub(super) async fn handle(
    state: &AppState,
    peer: &PeerIdentity,
    request: Request<Incoming>,
) -> HttpResponse {
    // The trace of one request: `ingest` with children `ingest.decode`,
    // `ingest.commit` (the wait for the group commit) and `ingest.ack`. Spans
    // are only recorded here; the OTLP exporter sends them from its own
    // thread (telemetry/otlp.rs).
    let span = tracing::info_span!(
        "ingest",
        otel.kind = "server",
        http.route = PATH,
        hubwatch.member = tracing::field::Empty,
        hubwatch.agent = tracing::field::Empty,
        hubwatch.seq = tracing::field::Empty,
        hubwatch.records = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let mut response = handle_request(state, peer, request)
        .instrument(span.clone())
        .await;
    // OpenTelemetry has no unsigned integers: u64 values would be strings.
    span.record(
        "http.response.status_code",
        i64::from(response.status().as_u16()),
    );
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format_versions(SUPPORTED_VERSIONS)) {
        headers.insert(ACCEPT_VERSIONS_HEADER, value);
    }
    headers.insert(
        MAX_BODY_BYTES_HEADER,
        HeaderValue::from(state.server.max_body_bytes.as_u64()),
    );
    headers.insert(
        ACCEPT_ENCODING_HEADER,
        HeaderValue::from_static(SNAPPY_ENCODING),
    );
    response
}

async fn handle_request(
    state: &AppState,
    peer: &PeerIdentity,
    request: Request<Incoming>,
) -> HttpResponse {
    let credential = match authenticate(state, peer, &request, PATH, &state.metrics.ingest_rejected)
    {
        Ok(credential) => credential,
        Err(response) => return *response,
    };
    let snappy = match body_encoding(&request) {
        Ok(snappy) => snappy,
        // Before the body is read: the connection is closed (see `authenticate`).
        Err(message) => {
            return closing(refuse(
                &state.metrics.ingest_rejected,
                "encoding",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message,
            ));
        }
    };
    let body = match read_body(state, request, &state.metrics.ingest_rejected).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let read_at = Instant::now();
    let received_ms = system_now_ms();
    // A snappy body is kept (`block`): the store keeps it as it came rather
    // than compress the frame again.
    let (frame, block) = if snappy {
        let max_body = usize::try_from(state.server.max_body_bytes.as_u64()).unwrap_or(usize::MAX);
        // Off the reactor, like the decode below (an 8 MiB frame takes ms).
        match tokio::task::spawn_blocking(move || {
            decompress_body(&body, max_body).map(|frame| (frame, Some(body)))
        })
        .await
        {
            Ok(Ok(decompressed)) => decompressed,
            Ok(Err((reason, status, message))) => {
                return refuse(&state.metrics.ingest_rejected, reason, status, message);
            }
            Err(e) => {
                tracing::error!(error = %e, "decompression task failed");
                return unavailable("decompressing failed inside the collector; retry");
            }
        }
    } else {
        (body, None)
    };

    // A large frame takes a while to check: keep it off the reactor. Only the
    // envelope is built (the frame is stored as received); the records are
    // checked exactly as a full decode would, without allocating them.
    let decode_input = frame.clone();
    let decode_span = tracing::info_span!(
        "ingest.decode",
        hubwatch.frame_bytes = i64::try_from(frame.len()).unwrap_or(i64::MAX)
    );
    let checked = tokio::task::spawn_blocking(move || {
        codec::decode_envelope(&decode_input).map(|e| Envelope {
            agent_id: e.agent_id.to_owned(),
            member: e.member.to_owned(),
            seq: e.seq,
            created_ms: e.created_ms,
            dropped_records: e.dropped_records,
            agent_version: e.agent_version.to_owned(),
            records: e.records,
        })
    });
    let batch = match checked.instrument(decode_span).await {
        Ok(Ok(batch)) => batch,
        Ok(Err(e @ CodecError::UnsupportedVersion { .. })) => {
            // Machine-readable, so an agent keeps the batch and re-encodes it
            // in a version listed here instead of dropping it as malformed.
            state
                .metrics
                .ingest_rejected
                .with_label_values(&["version"])
                .inc();
            tracing::warn!(error = %e, "ingest refused: protocol version not spoken here");
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({
                    "error": e.to_string(),
                    "code": UNSUPPORTED_VERSION_CODE,
                    "accepted_versions": SUPPORTED_VERSIONS,
                }),
            );
        }
        Ok(Err(e)) => return reject(state, "malformed", StatusCode::BAD_REQUEST, e),
        Err(e) => {
            tracing::error!(error = %e, "decode task failed");
            return unavailable("decoding failed inside the collector; retry");
        }
    };
    if let Err(response) = check_claims(state, &credential, &batch) {
        return *response;
    }

    let seq = batch.seq;
    let records = batch.records as u64;
    let admission = match (&credential.ha_cluster, state.ha.shared_store()) {
        (None, _) => Admission::Store,
        (Some(cluster), None) => state
            .ha
            .admit(&credential.member, cluster, &credential.agent),
        (Some(cluster), Some(store)) => {
            // Replicas on PostgreSQL: the database decides, so the pair's
            // agents agree whichever collector each sends to.
            let (store, member, agent, cluster_name) = (
                store.clone(),
                credential.member.clone(),
                credential.agent.clone(),
                cluster.clone(),
            );
            let (now_ms, timeout_ms) = (state.ha.now_ms(), state.ha.timeout_ms());
            let decided = tokio::task::spawn_blocking(move || {
                store.ha_admit(&member, &cluster_name, &agent, now_ms, timeout_ms)
            })
            .await;
            match decided {
                Ok(Ok(elected)) => state.ha.record_elected(
                    &credential.member,
                    cluster,
                    &credential.agent,
                    &elected,
                ),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "HA election failed; answering 503");
                    return unavailable(format!("electing the HA pair's replica: {e}"));
                }
                Err(e) => return unavailable(format!("electing the HA pair's replica: {e}")),
            }
        }
    };
    if let Admission::Standby { elected } = admission {
        let cluster = credential.ha_cluster.as_deref().unwrap_or_default();
        // Acknowledged as Mimir does (so the standby's spool moves on) but
        // not stored: the elected replica's batches carry the pair's data.
        // "duplicate" is what every agent already takes as "acknowledged,
        // not stored anew"; `ha` says why.
        tracing::debug!(member = %credential.member, agent = %credential.agent, %cluster, %elected, seq,
            "HA standby batch acknowledged, not stored");
        return json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "duplicate",
                "seq": seq,
                "ha": "standby",
                "elected": elected,
            }),
        );
    }
    let current = tracing::Span::current();
    current.record("hubwatch.member", credential.member.as_str());
    current.record("hubwatch.agent", credential.agent.as_str());
    current.record("hubwatch.seq", i64::try_from(seq).unwrap_or(i64::MAX));
    current.record(
        "hubwatch.records",
        i64::try_from(records).unwrap_or(i64::MAX),
    );
    let item = IngestItem {
        member: credential.member.clone(),
        agent: credential.agent.clone(),
        seq,
        created_ms: batch.created_ms,
        dropped_records: batch.dropped_records,
        agent_version: batch.agent_version,
        records,
        frame,
        received_ms,
    };
    let outcome = state
        .store
        .ingest_received(item, block)
        .instrument(tracing::info_span!("ingest.commit"))
        .await;
    let _ack = tracing::info_span!("ingest.ack").entered();
    let m = &state.metrics;
    let member = [credential.member.as_str()];
    let status = match outcome {
        Ok(IngestOutcome::Stored) => {
            m.batches_stored.with_label_values(&member).inc();
            m.records_stored.with_label_values(&member).inc_by(records);
            "stored"
        }
        Ok(IngestOutcome::Duplicate) => {
            m.duplicates.with_label_values(&member).inc();
            "duplicate"
        }
        Err(e) => {
            tracing::error!(
                member = %credential.member,
                agent = %credential.agent,
                seq,
                error = %e,
                "storing a batch failed; the agent will retry"
            );
            return unavailable(format!("store unavailable: {e}"));
        }
    };
    m.ack_seconds.observe(read_at.elapsed().as_secs_f64());
    tracing::debug!(member = %credential.member, agent = %credential.agent, seq, records, status, "batch acknowledged");
    json(
        StatusCode::OK,
        &serde_json::json!({ "status": status, "seq": seq }),
    )
}

/// Whether the body is snappy-compressed (`Content-Encoding: snappy`, which
/// every answer announces in [`ACCEPT_ENCODING_HEADER`]); an encoding this
/// collector does not take is refused (415) with the reason.
fn body_encoding(request: &Request<Incoming>) -> Result<bool, String> {
    let Some(value) = request.headers().get(CONTENT_ENCODING) else {
        return Ok(false);
    };
    match value.to_str().map(str::trim) {
        Ok(v) if v.eq_ignore_ascii_case(SNAPPY_ENCODING) => Ok(true),
        Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("identity") => Ok(false),
        _ => Err(format!(
            "Content-Encoding {value:?} is not taken here; send the frame as is or as \
             {SNAPPY_ENCODING:?}"
        )),
    }
}

/// A snappy body's frame (the same bounded decompression as remote write's):
/// refused before allocating when it declares more than `max_body` bytes
/// decompressed (413, so the agent splits the batch), 400 when it does not
/// decompress.
fn decompress_body(
    body: &[u8],
    max_body: usize,
) -> Result<Bytes, (&'static str, StatusCode, String)> {
    use hubwatch_shared::remote_write::{RemoteWriteError, decompress};
    decompress(body, max_body)
        .map(Bytes::from)
        .map_err(|e| match e {
            RemoteWriteError::TooLarge { .. } => {
                ("too_large", StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            other => (
                "malformed",
                StatusCode::BAD_REQUEST,
                format!("snappy body does not decompress: {other}"),
            ),
        })
}

/// The credential, or the 401/403 response (counted and logged; a token
/// that belongs to another agent than its certificate is also counted in
/// `rejected`). The refusal comes before the body is read, so it closes the
/// connection (`Connection: close`): a client must not send its next request
/// on a connection that still holds this one's unread body, which the server
/// drops (the client would see it reset).
pub(super) fn authenticate(
    state: &AppState,
    peer: &PeerIdentity,
    request: &Request<Incoming>,
    path: &'static str,
    rejected: &IntCounterVec,
) -> Result<Credential, Box<HttpResponse>> {
    let bearer = match auth::bearer_token(request.headers()) {
        Ok(bearer) => bearer,
        Err(e) => {
            log_auth_failure(&AuthError::Unknown, None, path);
            return Err(Box::new(closing(auth_failure(
                state,
                &AuthError::Unknown,
                Some(&e.to_string()),
            ))));
        }
    };
    super::check_credential(state, request, bearer, peer).map_err(|e| {
        log_auth_failure(&e, bearer, path);
        if let AuthError::AgentMismatch { .. } = e {
            rejected.with_label_values(&["agent_mismatch"]).inc();
        }
        Box::new(closing(auth_failure(state, &e, None)))
    })
}

/// `response` with `Connection: close`.
fn closing(mut response: HttpResponse) -> HttpResponse {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The whole body, under `server.max_body_bytes` (413, before reading when
/// `Content-Length` declares more) and `server.body_read_timeout` (408, the
/// connection closed); refusals counted in `rejected` by reason.
pub(super) async fn read_body(
    state: &AppState,
    request: Request<Incoming>,
    rejected: &IntCounterVec,
) -> Result<Bytes, Box<HttpResponse>> {
    let max_body = state.server.max_body_bytes.as_u64();
    let no = |reason: &'static str, status: StatusCode, message: String| {
        Box::new(refuse(rejected, reason, status, message))
    };
    if let Some(declared) = declared_length(&request)
        && declared > max_body
    {
        return Err(no(
            "too_large",
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body of {declared} bytes exceeds the limit of {max_body} bytes"),
        ));
    }
    let limited = Limited::new(
        request.into_body(),
        usize::try_from(max_body).unwrap_or(usize::MAX),
    );
    match tokio::time::timeout(state.server.body_read_timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(no(
            "too_large",
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body exceeds the limit of {max_body} bytes"),
        )),
        Ok(Err(e)) => Err(no(
            "malformed",
            StatusCode::BAD_REQUEST,
            format!("could not read the body: {e}"),
        )),
        Err(_) => {
            let mut response = no(
                "timeout",
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "body not received within {}",
                    humantime::format_duration(state.server.body_read_timeout)
                ),
            );
            // The rest of the body may still arrive; this connection is done.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            Err(response)
        }
    }
}

/// What the ingest path needs of a batch: its envelope and record count.
struct Envelope {
    agent_id: String,
    member: String,
    seq: u64,
    created_ms: i64,
    dropped_records: u64,
    agent_version: String,
    records: usize,
}

/// The batch may not speak for another agent or member (403, counted).
fn check_claims(
    state: &AppState,
    credential: &Credential,
    batch: &Envelope,
) -> Result<(), Box<HttpResponse>> {
    if batch.agent_id != credential.agent {
        tracing::warn!(
            credential_member = %credential.member,
            credential_agent = %credential.agent,
            batch_agent = %batch.agent_id,
            batch_member = %batch.member,
            "batch refused: it names another agent than its credential"
        );
        return Err(Box::new(reject(
            state,
            "agent_mismatch",
            StatusCode::FORBIDDEN,
            format!(
                "batch agent_id {:?} does not match the credential's agent {:?}",
                batch.agent_id, credential.agent
            ),
        )));
    }
    if !batch.member.is_empty() && batch.member != credential.member {
        tracing::warn!(
            credential_member = %credential.member,
            batch_member = %batch.member,
            agent = %credential.agent,
            "batch refused: it claims another member than its credential"
        );
        return Err(Box::new(reject(
            state,
            "member_mismatch",
            StatusCode::FORBIDDEN,
            format!(
                "batch claims member {:?} but the credential belongs to member {:?}",
                batch.member, credential.member
            ),
        )));
    }
    Ok(())
}

/// Counts a refused ingest request by reason and builds its JSON error.
fn reject(
    state: &AppState,
    reason: &'static str,
    status: StatusCode,
    message: impl std::fmt::Display,
) -> HttpResponse {
    refuse(&state.metrics.ingest_rejected, reason, status, message)
}

/// Counts a refused request in `rejected` by reason and builds its JSON error.
pub(super) fn refuse(
    rejected: &IntCounterVec,
    reason: &'static str,
    status: StatusCode,
    message: impl std::fmt::Display,
) -> HttpResponse {
    rejected.with_label_values(&[reason]).inc();
    tracing::debug!(reason, status = status.as_u16(), error = %message, "request refused");
    error(status, message)
}

/// The `Content-Length` the client declared, if any and readable.
fn declared_length(request: &Request<Incoming>) -> Option<u64> {
    request
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
