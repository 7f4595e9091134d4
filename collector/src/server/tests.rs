//! In-process tests of the listener: a real store in a tempdir, a real server
//! on an ephemeral port, real hyper/rustls clients (and raw sockets where a
//! misbehaving client is the point), certificates made here with rcgen.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hubwatch_shared::codec;
use hubwatch_shared::config::CollectorConfig;
use hubwatch_shared::wire::{Batch, Label, Record, Sample};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::store::Store;

const PATIENCE: Duration = Duration::from_secs(10);

// ---------- fixtures ----------

struct TestServer {
    _dir: TempDir,
    /// Tokens created before start, by agent.
    tokens: std::collections::HashMap<String, String>,
    cfg: CollectorConfig,
    store: Store,
    server: Option<RunningCollector>,
    addr: SocketAddr,
}

impl TestServer {
    /// Starts a server whose store already holds a token for each `(member, agent)`.
    async fn start(
        agents: &[(&str, &str)],
        tweak: impl FnOnce(&mut CollectorConfig, &Path),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = CollectorConfig::default();
        cfg.server.listen = "127.0.0.1:0".parse().unwrap();
        cfg.server.body_read_timeout = Duration::from_secs(1);
        cfg.server.shutdown_grace = Duration::from_secs(5);
        cfg.storage.path = dir.path().join("data");
        tweak(&mut cfg, dir.path());
        let store = Store::open(&cfg.storage).unwrap();
        let tokens = agents
            .iter()
            .map(|(member, agent)| {
                (
                    agent.to_string(),
                    store.create_token(member, agent).unwrap(),
                )
            })
            .collect();
        let server = Collector::new(cfg.clone(), store.clone())
            .start()
            .await
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], server.local_addr.port()));
        Self {
            _dir: dir,
            tokens,
            cfg,
            store,
            server: Some(server),
            addr,
        }
    }

    fn token(&self, agent: &str) -> String {
        self.tokens[agent].clone()
    }

    fn plain(&self) -> Client {
        Client {
            addr: self.addr,
            tls: None,
            proto: Proto::H1,
        }
    }

    fn metrics_text(&self) -> String {
        self.server.as_ref().unwrap().metrics.render()
    }
}

fn frame(agent: &str, member: &str, seq: u64, records: usize) -> Vec<u8> {
    let batch = Batch {
        agent_id: agent.into(),
        member: member.into(),
        seq,
        created_ms: 1_700_000_000_000,
        dropped_records: 7,
        agent_version: "0.1.0-test".into(),
        records: (0..records)
            .map(|i| {
                Record::Sample(Sample {
                    name: "hubwatch_test_value".into(),
                    labels: vec![Label::new("i", i.to_string())],
                    value: i as f64,
                    timestamp_ms: 1_700_000_000_000,
                })
            })
            .collect(),
    };
    codec::encode(&batch).unwrap()
}

fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

// ---------- TLS material ----------

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: PrivateKeyDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "hubwatch test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { ca }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// Writes the server's certificate, key and CA into `dir` and points the config at them.
    fn configure_server(&self, cfg: &mut CollectorConfig, dir: &Path, mtls: bool) {
        let server = self.leaf(&["localhost", "127.0.0.1"]);
        std::fs::write(dir.join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), &server.key_pem).unwrap();
        std::fs::write(dir.join("ca.pem"), self.ca.pem()).unwrap();
        cfg.server.tls_cert = Some(dir.join("server.pem"));
        cfg.server.tls_key = Some(dir.join("server.key"));
        if mtls {
            cfg.server.client_ca = Some(dir.join("ca.pem"));
        }
    }

    fn client_config(&self, alpn: &[u8], client_cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match client_cert {
            None => builder.with_no_client_auth(),
            Some(leaf) => builder
                .with_client_auth_cert(vec![leaf.cert_der.clone()], leaf.key_der.clone_key())
                .unwrap(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

// ---------- clients ----------

#[derive(Clone, Copy, PartialEq, Debug)]
enum Proto {
    H1,
    H2,
}

#[derive(Clone)]
struct Client {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    proto: Proto,
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn error_message(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Client {
    async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        match &self.tls {
            None => {
                self.exchange(TokioIo::new(tcp), method, path, token, body)
                    .await
            }
            Some(config) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                let expected: &[u8] = match self.proto {
                    Proto::H1 => b"http/1.1",
                    Proto::H2 => b"h2",
                };
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(expected));
                self.exchange(TokioIo::new(tls), method, path, token, body)
                    .await
            }
        }
    }

    async fn exchange<I>(
        &self,
        io: I,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Reply, String>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{scheme}://localhost:{}{path}", self.addr.port()));
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let request = builder
            .header("content-type", codec::CONTENT_TYPE)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = match self.proto {
            Proto::H1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| e.to_string())?
            }
            Proto::H2 => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    async fn ingest(&self, token: Option<&str>, frame: Vec<u8>) -> Reply {
        self.request(Method::POST, "/api/v1/ingest", token, frame)
            .await
            .unwrap()
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.request(Method::GET, path, token, Vec::new())
            .await
            .unwrap()
    }
}

/// Sends `head` then each part of the body on a raw socket (the writes run
/// concurrently with reading, so an early answer is seen), and returns what
/// the server sent until it closed the connection or `PATIENCE` ran out.
async fn raw_exchange(addr: SocketAddr, head: String, parts: Vec<Vec<u8>>, stall: bool) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await.ok();
        for part in parts {
            if writer.write_all(&part).await.is_err() {
                return;
            }
        }
        if stall {
            // Keep the connection open, sending nothing more.
            tokio::time::sleep(PATIENCE * 2).await;
        }
        drop(writer);
    });
    let mut received = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writing.abort();
    String::from_utf8_lossy(&received).into_owned()
}

fn status_of(raw: &str) -> Option<u16> {
    raw.split_whitespace().nth(1)?.parse().ok()
}

// ---------- tests ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_is_stored_once_and_a_retry_is_a_duplicate() {
    let server = TestServer::start(&[("leap", "a1")], |_, _| {}).await;
    let token = server.token("a1");
    let client = server.plain();

    let reply = client
        .ingest(Some(&token), frame("a1", "leap", 42, 5))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        reply.json(),
        serde_json::json!({"status": "stored", "seq": 42})
    );

    let reply = client
        .ingest(Some(&token), frame("a1", "leap", 42, 5))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        serde_json::json!({"status": "duplicate", "seq": 42})
    );

    // An empty member claim is no claim: accepted under the credential's member.
    let reply = client.ingest(Some(&token), frame("a1", "", 43, 2)).await;
    assert_eq!(reply.json()["status"], "stored");

    let agents = client.get("/api/v1/agents", None).await.json();
    let rows = agents["agents"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["agent"], "a1");
    assert_eq!(row["member"], "leap");
    assert_eq!(row["version"], "0.1.0-test");
    assert_eq!(row["last_seq"], 43);
    assert_eq!(row["batches"], 2);
    assert_eq!(row["records"], 7);
    assert_eq!(row["duplicates"], 1);
    assert_eq!(row["dropped_by_agent"], 7);
    assert!(row["last_seen"].as_str().is_some_and(|s| s.contains('T')));
    // Not part of an HA agent pair.
    assert!(row["ha_cluster"].is_null() && row["ha_elected"].is_null());
    let mut keys: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "agent",
            "batches",
            "dropped_by_agent",
            "duplicates",
            "ha_cluster",
            "ha_elected",
            "last_seen",
            "last_seq",
            "member",
            "records",
            "version"
        ]
    );
    assert_eq!(server.store.raw_batch_count().unwrap(), 2);

    let metrics = client.get("/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&metrics.body);
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_batches_stored_total{member=\"leap\"}"
        ),
        2.0
    );
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_records_stored_total{member=\"leap\"}"
        ),
        7.0
    );
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_duplicate_batches_total{member=\"leap\"}"
        ),
        1.0
    );
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_ingest_requests_total{code=\"200\"}"
        ),
        3.0
    );
    assert_eq!(counter(&text, "hubwatch_collector_store_raw_batches"), 2.0);
    assert_eq!(counter(&text, "hubwatch_collector_tokens_active"), 1.0);
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_agent_dropped_records{agent=\"a1\",member=\"leap\"}"
        ),
        7.0
    );
    assert!(
        counter(
            &text,
            "hubwatch_collector_agent_last_seen_timestamp_seconds{agent=\"a1\",member=\"leap\"}"
        ) > 1.7e9
    );
    assert_eq!(
        counter(&text, "hubwatch_collector_ingest_ack_seconds_count"),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unknown_and_revoked_tokens_get_401_and_revocation_applies_live() {
    let server = TestServer::start(&[("leap", "a1")], |_, _| {}).await;
    let token = server.token("a1");
    let client = server.plain();

    let reply = client.ingest(None, frame("a1", "leap", 1, 1)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
    assert!(!reply.error_message().is_empty());

    let reply = client
        .ingest(Some("hwt_not-a-real-token"), frame("a1", "leap", 1, 1))
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    assert_eq!(
        client
            .ingest(Some(&token), frame("a1", "leap", 1, 1))
            .await
            .status,
        StatusCode::OK
    );

    // Revoked the way an operator does, through the CLI's code path on its own
    // store handle; the running server must notice within token_refresh (2 s).
    crate::cli::revoke_token(&server.cfg, "a1").unwrap();
    let revoked_at = Instant::now();
    let mut seq = 2;
    loop {
        let reply = client
            .ingest(Some(&token), frame("a1", "leap", seq, 1))
            .await;
        if reply.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(4),
            "revocation not applied"
        );
        seq += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(3) + Duration::from_millis(500));

    // A token created while the server runs works within seconds too.
    let fresh = server.store.create_token("leap", "a2").unwrap();
    let created_at = Instant::now();
    loop {
        let reply = client.ingest(Some(&fresh), frame("a2", "leap", 1, 1)).await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(
            created_at.elapsed() < Duration::from_secs(4),
            "new token not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let text = server.metrics_text();
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_auth_failures_total{reason=\"missing\"}"
        ),
        1.0
    );
    assert!(
        counter(
            &text,
            "hubwatch_collector_auth_failures_total{reason=\"unknown\"}"
        ) >= 1.0
    );
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_auth_failures_total{reason=\"revoked\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_claiming_another_member_or_agent_is_refused_with_403() {
    let server = TestServer::start(&[("leap", "a1")], |_, _| {}).await;
    let token = server.token("a1");
    let client = server.plain();

    let reply = client.ingest(Some(&token), frame("a1", "2i2c", 1, 3)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.error_message().contains("2i2c"), "{reply:?}");

    let reply = client.ingest(Some(&token), frame("a9", "leap", 1, 3)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    assert_eq!(server.store.raw_batch_count().unwrap(), 0);
    let text = server.metrics_text();
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_ingest_rejected_total{reason=\"member_mismatch\"}"
        ),
        1.0
    );
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_ingest_rejected_total{reason=\"agent_mismatch\"}"
        ),
        1.0
    );
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_ingest_requests_total{code=\"403\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_length_over_the_limit_gets_413_without_the_body() {
    let server = TestServer::start(&[("leap", "a1")], |_, _| {}).await;
    let token = server.token("a1");
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
         content-length: 1000000000\r\n\r\n"
    );
    let started = Instant::now();
    let raw = raw_exchange(server.addr, head, vec![b"HWB1".to_vec()], true).await;
    assert_eq!(status_of(&raw), Some(413), "{raw}");
    assert!(raw.contains("exceeds the limit"), "{raw}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Authentication comes first: without a token the same request is a 401.
    let head =
        "POST /api/v1/ingest HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000000000\r\n\r\n"
            .to_string();
    let raw = raw_exchange(server.addr, head, vec![], true).await;
    assert_eq!(status_of(&raw), Some(401), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit_gets_413() {
    let server = TestServer::start(&[("leap", "a1")], |cfg, _| {
        cfg.server.max_body_bytes = bytesize::ByteSize::kib(64);
    })
    .await;
    let token = server.token("a1");
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    let chunk = vec![b'x'; 16 * 1024];
    let mut parts = Vec::new();
    for _ in 0..6 {
        let mut part = format!("{:x}\r\n", chunk.len()).into_bytes();
        part.extend_from_slice(&chunk);
        part.extend_from_slice(b"\r\n");
        parts.push(part);
    }
    parts.push(b"0\r\n\r\n".to_vec());
    let raw = raw_exchange(server.addr, head, parts, false).await;
    assert_eq!(status_of(&raw), Some(413), "{raw}");
    let text = server.metrics_text();
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_ingest_rejected_total{reason=\"too_large\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_truncated_and_future_version_frames_get_400_with_a_reason() {
    let server = TestServer::start(&[("leap", "a1")], |_, _| {}).await;
    let token = server.token("a1");
    let client = server.plain();

    let reply = client
        .ingest(Some(&token), b"this is not a batch".to_vec())
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error_message().contains("magic"), "{reply:?}");

    let mut truncated = frame("a1", "leap", 1, 10);
    truncated.truncate(truncated.len() / 2);
    let reply = client.ingest(Some(&token), truncated).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error_message().contains("malformed"), "{reply:?}");

    let mut future = frame("a1", "leap", 1, 1);
    future[4..6].copy_from_slice(&99u16.to_le_bytes());
    let reply = client.ingest(Some(&token), future).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let message = reply.error_message();
    assert!(
        message.contains("99") && message.contains("speaks 1, 2, 3, 4"),
        "{message}"
    );
    // Machine-readable, so an agent keeps the batch rather than drop it.
    let body = reply.json();
    assert_eq!(body["code"], "unsupported_version", "{body}");
    assert_eq!(
        body["accepted_versions"],
        serde_json::json!([1, 2, 3, 4]),
        "{body}"
    );
    assert_eq!(
        reply
            .headers
            .get("hubwatch-accept-versions")
            .and_then(|v| v.to_str().ok()),
        Some("1, 2, 3, 4")
    );

    let text = server.metrics_text();
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_ingest_rejected_total{reason=\"malformed\"}"
        ),
        2.0
    );
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_ingest_rejected_total{reason=\"version\"}"
        ),
        1.0
    );
    assert_eq!(server.store.raw_batch_count().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ingest_answer_names_the_accepted_versions_and_the_body_limit() {
    let server = TestServer::start(&[("leap", "a1")], |cfg, _| {
        cfg.server.max_body_bytes = bytesize::ByteSize::kib(64);
    })
    .await;
    let token = server.token("a1");
    let client = server.plain();
    let header = |reply: &Reply, name: &str| {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let stored = client.ingest(Some(&token), frame("a1", "leap", 5, 3)).await;
    let too_large = client.ingest(Some(&token), vec![b'x'; 65 * 1024 + 1]).await;
    let malformed = client.ingest(Some(&token), b"nope".to_vec()).await;
    let unauthorized = client.ingest(None, frame("a1", "leap", 6, 1)).await;
    assert_eq!(stored.status, StatusCode::OK);
    assert_eq!(
        stored.json(),
        serde_json::json!({"status": "stored", "seq": 5})
    );
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(
        malformed.json().get("code").is_none(),
        "only a version refusal has a code"
    );
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    // Refused before its body was read: the connection is not reused.
    assert_eq!(
        header(&unauthorized, "connection").as_deref(),
        Some("close"),
        "{unauthorized:?}"
    );
    assert_eq!(header(&stored, "connection"), None, "{stored:?}");
    for reply in [&stored, &too_large, &malformed, &unauthorized] {
        assert_eq!(
            header(reply, "hubwatch-accept-versions").as_deref(),
            Some("1, 2, 3, 4"),
            "{reply:?}"
        );
        assert_eq!(
            header(reply, "hubwatch-max-body-bytes").as_deref(),
            Some("65536"),
            "{reply:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_its_body_gets_408_within_the_body_timeout() {
    let server = TestServer::start(&[("leap", "a1")], |_, _| {}).await; // body_read_timeout = 1 s
    let token = server.token("a1");
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
         content-length: 1000\r\n\r\n"
    );
    let started = Instant::now();
    let raw = raw_exchange(server.addr, head, vec![vec![b'H'; 10]], true).await;
    let waited = started.elapsed();
    assert_eq!(status_of(&raw), Some(408), "{raw}");
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_its_headers_is_cut_off() {
    let server = TestServer::start(&[], |cfg, _| {
        cfg.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let started = Instant::now();
    let raw = raw_exchange(
        server.addr,
        "POST /api/v1/ingest HTTP/1.1\r\nhost: loc".to_string(),
        vec![],
        true,
    )
    .await;
    // hyper answers 408 or just closes; either way well before PATIENCE.
    assert!(status_of(&raw).is_none_or(|s| s == 408), "{raw}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_both_http2_and_http1() {
    let pki = Pki::new();
    let server = TestServer::start(&[("leap", "a1")], |cfg, dir| {
        pki.configure_server(cfg, dir, false)
    })
    .await;
    let token = server.token("a1");
    for (proto, alpn, seq) in [(Proto::H2, &b"h2"[..], 1), (Proto::H1, &b"http/1.1"[..], 2)] {
        let client = Client {
            addr: server.addr,
            tls: Some(pki.client_config(alpn, None)),
            proto,
        };
        let reply = client
            .ingest(Some(&token), frame("a1", "leap", seq, 3))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{proto:?}: {reply:?}");
        assert_eq!(reply.json()["status"], "stored");
        assert_eq!(client.get("/healthz", None).await.status, StatusCode::OK);
    }
    assert_eq!(server.store.raw_batch_count().unwrap(), 2);

    // Plaintext to a TLS listener gets nothing useful.
    let plain = server
        .plain()
        .request(Method::GET, "/healthz", None, Vec::new())
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status != StatusCode::OK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_certificate_names_the_agent_and_the_token_must_match() {
    let pki = Pki::new();
    let server = TestServer::start(&[("leap", "a1"), ("2i2c", "a2")], |cfg, dir| {
        pki.configure_server(cfg, dir, true)
    })
    .await;
    let token_a1 = server.token("a1");
    let token_a2 = server.token("a2");
    let cert_a1 = pki.leaf(&["a1"]);
    let client = Client {
        addr: server.addr,
        tls: Some(pki.client_config(b"h2", Some(&cert_a1))),
        proto: Proto::H2,
    };

    let reply = client
        .ingest(Some(&token_a1), frame("a1", "leap", 1, 2))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    let reply = client
        .ingest(Some(&token_a2), frame("a2", "2i2c", 1, 2))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert!(reply.error_message().contains("a1"), "{reply:?}");

    // The certificate alone suffices while a1 has a live token (it gives the member).
    let reply = client.ingest(None, frame("a1", "leap", 2, 2)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    // A certificate for an agent without any token: 401, nothing to say which member.
    let stranger = Client {
        addr: server.addr,
        tls: Some(pki.client_config(b"http/1.1", Some(&pki.leaf(&["a3"])))),
        proto: Proto::H1,
    };
    let reply = stranger.ingest(None, frame("a3", "", 1, 1)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");

    // No client certificate: the handshake (or the first request) fails.
    let anonymous = Client {
        addr: server.addr,
        tls: Some(pki.client_config(b"h2", None)),
        proto: Proto::H2,
    };
    assert!(
        anonymous
            .request(Method::GET, "/healthz", None, Vec::new())
            .await
            .is_err()
    );

    assert_eq!(server.store.raw_batch_count().unwrap(), 2);
    let text = server.metrics_text();
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_ingest_rejected_total{reason=\"agent_mismatch\"}"
        ),
        1.0
    );
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_auth_failures_total{reason=\"certificate\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_endpoint_shows_a_member_only_its_own_rows() {
    let server = TestServer::start(&[("leap", "leap-1"), ("2i2c", "2i2c-1")], |_, _| {}).await;
    let leap = server.token("leap-1");
    let other = server.token("2i2c-1");
    let client = server.plain();
    assert_eq!(
        client
            .ingest(Some(&leap), frame("leap-1", "leap", 1, 4))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        client
            .ingest(Some(&other), frame("2i2c-1", "2i2c", 1, 6))
            .await
            .status,
        StatusCode::OK
    );

    let agents = |reply: Reply| -> Vec<(String, String, u64)> {
        reply.json()["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["member"].as_str().unwrap().to_string(),
                    r["agent"].as_str().unwrap().to_string(),
                    r["records"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        agents(client.get("/api/v1/agents", Some(&leap)).await),
        [("leap".to_string(), "leap-1".to_string(), 4)]
    );
    assert_eq!(
        agents(client.get("/api/v1/agents", Some(&other)).await),
        [("2i2c".to_string(), "2i2c-1".to_string(), 6)]
    );
    // Loopback listener without a token: every row.
    assert_eq!(agents(client.get("/api/v1/agents", None).await).len(), 2);
    assert_eq!(
        client.get("/api/v1/agents", Some("hwt_wrong")).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_a_non_loopback_listener_need_a_token() {
    let server = TestServer::start(&[("leap", "a1")], |cfg, _| {
        cfg.server.listen = "0.0.0.0:0".parse().unwrap();
        cfg.server.insecure_plaintext = true;
    })
    .await;
    let token = server.token("a1");
    let client = server.plain();
    let reply = client.get("/api/v1/agents", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        client.get("/api/v1/agents", Some(&token)).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_unknown_paths_and_wrong_methods() {
    let server = TestServer::start(&[], |_, _| {}).await;
    let client = server.plain();
    assert_eq!(client.get("/healthz", None).await.status, StatusCode::OK);
    assert_eq!(client.get("/readyz", None).await.status, StatusCode::OK);

    let reply = client.get("/nope", None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.error_message().contains("/nope"));

    let reply = client.get("/api/v1/ingest", None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "POST");
    assert!(!reply.error_message().is_empty());

    let reply = client
        .request(Method::POST, "/metrics", None, Vec::new())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_an_in_flight_request_then_stops_listening() {
    let mut server = TestServer::start(&[("leap", "a1")], |cfg, _| {
        cfg.server.body_read_timeout = Duration::from_secs(5);
    })
    .await;
    let token = server.token("a1");
    let body = frame("a1", "leap", 9, 3);
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    writer.write_all(&body[..4]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let running = server.server.take().unwrap();
    let shutting_down = tokio::spawn(running.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused once the listener is closed.
    assert!(TcpStream::connect(server.addr).await.is_err());

    writer.write_all(&body[4..]).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, reader.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert_eq!(status_of(&raw), Some(200), "{raw}");
    assert!(raw.contains("\"stored\""), "{raw}");
    tokio::time::timeout(PATIENCE, shutting_down)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.store.raw_batch_count().unwrap(), 1);
}

mod leader;
mod remote_write;
mod security;

/// HA pairs through the real ingest path: the first replica is elected and
/// stored, the other answered 200 but not stored; after the elected one's
/// silence for `ha_failover_timeout` (a manual clock) the other is elected.
/// `/api/v1/agents` and `/metrics` name the elected replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ha_pair_stores_only_the_elected_replicas_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CollectorConfig::default();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.shutdown_grace = Duration::from_secs(5);
    cfg.server.ha_failover_timeout = Duration::from_secs(30);
    cfg.storage.path = dir.path().join("data");
    let store = Store::open(&cfg.storage).unwrap();
    let token_a = store
        .create_token_in_cluster("leap", "leap-a", Some("leap-prod"))
        .unwrap();
    let token_b = store
        .create_token_in_cluster("leap", "leap-b", Some("leap-prod"))
        .unwrap();
    let clock = Arc::new(crate::clock::ManualClock::new(1_700_000_000_000));
    let shared: crate::clock::SharedClock = clock.clone();
    let server = Collector::new(cfg, store.clone())
        .clock(shared)
        .start()
        .await
        .unwrap();
    let client = Client {
        addr: SocketAddr::from(([127, 0, 0, 1], server.local_addr.port())),
        tls: None,
        proto: Proto::H1,
    };
    let stored = |agent: &str| {
        store
            .agents(None)
            .unwrap()
            .into_iter()
            .find(|r| r.agent == agent)
            .map_or(0, |r| r.batches)
    };

    let reply = client
        .ingest(Some(&token_a), frame("leap-a", "leap", 1024, 3))
        .await;
    assert_eq!(reply.json()["status"], "stored", "{reply:?}");
    let reply = client
        .ingest(Some(&token_b), frame("leap-b", "leap", 1024, 3))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        serde_json::json!({"status": "duplicate", "seq": 1024, "ha": "standby", "elected": "leap-a"})
    );
    assert_eq!((stored("leap-a"), stored("leap-b")), (1, 0));
    let text = server.metrics.render();
    let series = |name: &str, replica: &str| {
        format!("{name}{{cluster=\"leap-prod\",member=\"leap\",replica=\"{replica}\"}}")
    };
    assert_eq!(
        counter(
            &text,
            &series("hubwatch_collector_ha_elected_replica", "leap-a")
        ),
        1.0
    );
    assert_eq!(
        counter(
            &text,
            &series("hubwatch_collector_ha_elected_replica", "leap-b")
        ),
        0.0
    );
    assert_eq!(
        counter(
            &text,
            &series("hubwatch_collector_ha_dropped_batches_total", "leap-b")
        ),
        1.0
    );
    let agents = client.get("/api/v1/agents", None).await.json();
    let row = |agent: &str| {
        agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["agent"] == agent)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(row("leap-a")["ha_cluster"], "leap-prod");
    assert_eq!(row("leap-a")["ha_elected"], true);

    // leap-a falls silent for the timeout: leap-b's next batch elects it.
    clock.advance(30_000);
    let reply = client
        .ingest(Some(&token_b), frame("leap-b", "leap", 2048, 3))
        .await;
    assert_eq!(reply.json()["status"], "stored", "{reply:?}");
    let reply = client
        .ingest(Some(&token_a), frame("leap-a", "leap", 2048, 3))
        .await;
    assert_eq!(reply.json()["ha"], "standby", "{reply:?}");
    assert_eq!((stored("leap-a"), stored("leap-b")), (1, 1));
    let text = server.metrics.render();
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_ha_failovers_total{cluster=\"leap-prod\",member=\"leap\"}"
        ),
        1.0
    );
    assert_eq!(
        counter(
            &text,
            &series("hubwatch_collector_ha_elected_replica", "leap-b")
        ),
        1.0
    );
    server.shutdown().await;
}

/// POSTs `body` to the ingest endpoint with `Content-Encoding: encoding` on a
/// raw HTTP/1.1 connection; the raw answer.
async fn ingest_encoded(server: &TestServer, token: &str, encoding: &str, body: Vec<u8>) -> String {
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
         content-type: {}\r\ncontent-encoding: {encoding}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        codec::CONTENT_TYPE,
        body.len()
    );
    raw_exchange(server.addr, head, vec![body], true).await
}

/// A snappy body (what an agent sends once told it may) is stored as the
/// frame inside it; every answer announces the encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snappy_body_is_stored_as_its_frame_and_answers_announce_snappy() {
    let server = TestServer::start(&[("leap", "a1")], |_, _| {}).await;
    let token = server.token("a1");
    let frame = frame("a1", "leap", 9, 40);
    let body = snap::raw::Encoder::new().compress_vec(&frame).unwrap();
    assert!(body.len() < frame.len());
    let raw = ingest_encoded(&server, &token, "snappy", body).await;
    assert_eq!(status_of(&raw), Some(200), "{raw}");
    assert!(raw.contains(r#""status":"stored""#), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("hubwatch-accept-encoding: snappy"),
        "{raw}"
    );
    let agents = server.plain().get("/api/v1/agents", None).await.json();
    assert_eq!(agents["agents"][0]["records"], 40);
    assert_eq!(agents["agents"][0]["last_seq"], 9);
    // Stored is the frame itself (its checksum as received), read back whole.
    let stored = server.store.batches_after(0, 10).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].frame.as_deref(), Some(&frame[..]));
    assert_eq!(stored[0].frame_crc, Some(crc32fast::hash(&frame)));
}

/// Bad compressed bodies are refused with the reason and nothing is stored:
/// an encoding not taken here (415), a body that declares more than
/// `max_body_bytes` decompressed (413, before allocating it), and one that
/// does not decompress (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_compressed_bodies_are_refused_with_the_reason() {
    let server = TestServer::start(&[("leap", "a1")], |cfg, _| {
        cfg.server.max_body_bytes = bytesize::ByteSize::kib(64);
    })
    .await;
    let token = server.token("a1");
    let frame = frame("a1", "leap", 1, 3);

    let raw = ingest_encoded(&server, &token, "gzip", frame.clone()).await;
    assert_eq!(status_of(&raw), Some(415), "{raw}");
    assert!(raw.contains("gzip"), "{raw}");

    // 1 MiB of zeros compresses to ~50 KB: under the body limit, over it
    // decompressed.
    let bomb = snap::raw::Encoder::new()
        .compress_vec(&vec![0u8; 1 << 20])
        .unwrap();
    assert!(bomb.len() < 64 * 1024);
    let raw = ingest_encoded(&server, &token, "snappy", bomb).await;
    assert_eq!(status_of(&raw), Some(413), "{raw}");
    assert!(raw.contains("decompresses to 1048576 bytes"), "{raw}");

    let raw = ingest_encoded(&server, &token, "snappy", vec![0xff; 20]).await;
    assert_eq!(status_of(&raw), Some(400), "{raw}");
    assert!(raw.contains("does not decompress"), "{raw}");

    let text = server.metrics_text();
    for (reason, n) in [("encoding", 1.0), ("too_large", 1.0), ("malformed", 1.0)] {
        assert_eq!(
            counter(
                &text,
                &format!("hubwatch_collector_ingest_rejected_total{{reason=\"{reason}\"}}")
            ),
            n,
            "{reason}"
        );
    }
    assert_eq!(server.store.raw_batch_count().unwrap(), 0);
}
