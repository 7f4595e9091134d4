//! The security matrix (issue 15): each row a test against the real server
//! and store, failing if its protection broke. Rows covered elsewhere are
//! listed in docs/operations.md ("Security matrix") with their tests.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use hubwatch_shared::config::{HubRef, MemberConfig};
use hubwatch_shared::remote_write::{self, proto};
use hubwatch_shared::wire::{UsageEvent, UsageKind};
use rcgen::date_time_ymd;

use super::*;

// ---------- a raw HTTP/1.1 client that can pick its source address ----------

/// One answer read to the end (`Connection: close`).
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A connection to `addr` from `source` (any loopback address; `None`:
/// 127.0.0.1).
async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> TcpStream {
    match source {
        None => TcpStream::connect(addr).await.unwrap(),
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
            socket.connect(addr).await.unwrap()
        }
    }
}

/// One request with `headers` (`Connection: close` added), its answer.
async fn http(
    addr: SocketAddr,
    source: Option<IpAddr>,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Raw {
    let mut stream = connect_from(addr, source).await;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received))
        .await
        .expect("the server answered within PATIENCE")
        .unwrap();
    let text = String::from_utf8_lossy(&received).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Raw {
        status: status_of(head).unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    }
}

async fn ingest_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
    token: Option<&str>,
    frame: Vec<u8>,
) -> Raw {
    http(
        addr,
        source,
        "POST",
        "/api/v1/ingest",
        token,
        &[("content-type", codec::CONTENT_TYPE)],
        &frame,
    )
    .await
}

/// Batches stored for `member` (its agents' counters).
fn stored_batches(store: &Store, member: &str) -> u64 {
    store
        .agents(Some(member))
        .unwrap()
        .iter()
        .map(|row| row.batches)
        .sum()
}

// ---------- plaintext and TLS versions ----------

/// Plaintext HTTP to a TLS listener: no HTTP answer, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_tls_listener_is_refused_and_stores_nothing() {
    let pki = Pki::new();
    let server = TestServer::start(&[("leap", "a1")], |cfg, dir| {
        pki.configure_server(cfg, dir, false)
    })
    .await;
    let token = server.token("a1");
    let body = frame("a1", "leap", 1, 3);
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
         content-type: {}\r\ncontent-length: {}\r\n\r\n",
        codec::CONTENT_TYPE,
        body.len()
    );
    let raw = raw_exchange(server.addr, head, vec![body.clone()], false).await;
    assert!(
        status_of(&raw).is_none_or(|s| !(200..300).contains(&s)),
        "{raw}"
    );
    assert!(!raw.contains("stored"), "{raw}");
    assert_eq!(server.store.raw_batch_count().unwrap(), 0);
    // The same batch over TLS is stored: the refusal was the plaintext.
    let client = Client {
        addr: server.addr,
        tls: Some(pki.client_config(b"http/1.1", None)),
        proto: Proto::H1,
    };
    assert_eq!(
        client.ingest(Some(&token), body).await.status,
        StatusCode::OK
    );
    assert_eq!(server.store.raw_batch_count().unwrap(), 1);
}

fn push_extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
    out.extend_from_slice(data);
}

/// A ClientHello record offering `version` (`client_version`, no
/// `supported_versions` extension: how TLS 1.0/1.1 clients say it), with
/// ECDHE-ECDSA suites a TLS 1.2 server would take (the test server's key
/// is ECDSA P-256) and the CBC ones of older clients.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    let suites: [u16; 5] = [0xc02b, 0xc02c, 0xcca9, 0xc009, 0xc00a];
    body.extend_from_slice(&u16::try_from(suites.len() * 2).unwrap().to_be_bytes());
    for suite in suites {
        body.extend_from_slice(&suite.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut extensions = Vec::new();
    let host = b"localhost";
    let mut sni = Vec::new();
    sni.extend_from_slice(&u16::try_from(host.len() + 3).unwrap().to_be_bytes());
    sni.push(0); // host_name
    sni.extend_from_slice(&u16::try_from(host.len()).unwrap().to_be_bytes());
    sni.extend_from_slice(host);
    push_extension(&mut extensions, 0x0000, &sni);
    // supported_groups: x25519, secp256r1.
    push_extension(&mut extensions, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed.
    push_extension(&mut extensions, 0x000b, &[1, 0]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256.
    push_extension(
        &mut extensions,
        0x000d,
        &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    );
    push_extension(&mut extensions, 0x0017, &[]); // extended_master_secret
    push_extension(&mut extensions, 0xff01, &[0]); // renegotiation_info
    body.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend(handshake);
    record
}

/// What the server sends back to `hello` until it closes (or 5 s).
async fn answer_to(addr: SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(hello).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
            // A ServerHello is all the control needs.
            if received.first() == Some(&0x16) {
                break;
            }
        }
    })
    .await;
    received
}

/// TLS 1.0 and 1.1 ClientHellos get a fatal alert (or a close), never a
/// ServerHello; the same hello saying TLS 1.2 gets a ServerHello, so the
/// refusal is the version; rustls clients limited to 1.2 and to 1.3 are
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_below_1_2_is_refused_and_1_2_and_1_3_are_served() {
    let pki = Pki::new();
    let server = TestServer::start(&[("leap", "a1")], |cfg, dir| {
        pki.configure_server(cfg, dir, false)
    })
    .await;
    for (name, version) in [("TLS 1.0", [3, 1]), ("TLS 1.1", [3, 2])] {
        let answer = answer_to(server.addr, &client_hello(version)).await;
        assert!(
            answer.is_empty() || (answer[0] == 0x15 && answer.get(5) == Some(&2)),
            "{name}: expected a fatal alert or a close, got {answer:02x?}"
        );
    }
    let answer = answer_to(server.addr, &client_hello([3, 3])).await;
    assert_eq!(
        answer.first(),
        Some(&0x16),
        "the same hello saying TLS 1.2 gets a ServerHello: {answer:02x?}"
    );

    let token = server.token("a1");
    for (seq, version, want) in [
        (1, &rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (2, &rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = Client {
            addr: server.addr,
            tls: Some(Arc::new(config)),
            proto: Proto::H1,
        };
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(client.tls.clone().unwrap())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap_or_else(|e| panic!("{want:?}: {e}"));
        assert_eq!(tls.get_ref().1.protocol_version(), Some(want));
        let reply = client
            .exchange(
                TokioIo::new(tls),
                Method::POST,
                "/api/v1/ingest",
                Some(&token),
                frame("a1", "leap", seq, 1),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{want:?}: {reply:?}");
    }
    assert_eq!(server.store.raw_batch_count().unwrap(), 2);
}

// ---------- mTLS ----------

/// A leaf for `names` signed by `pki`, valid only in 2020.
fn expired_leaf(pki: &Pki, names: &[&str]) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2020, 12, 31);
    let cert = params.signed_by(&key, &pki.ca).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
        key_der: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

/// Under mTLS: a certificate from another CA, an expired one, and one
/// naming another agent than the token's or the batch's are refused, and
/// nothing of theirs is stored; the right certificate is (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_a_wrong_ca_an_expired_and_a_wrong_name_certificate() {
    let pki = Pki::new();
    let server = TestServer::start(&[("leap", "leap-1"), ("cryo", "cryo-1")], |cfg, dir| {
        pki.configure_server(cfg, dir, true)
    })
    .await;
    let leap = server.token("leap-1");
    let cryo = server.token("cryo-1");
    let client_with = |leaf: &Leaf| Client {
        addr: server.addr,
        tls: Some(pki.client_config(b"http/1.1", Some(leaf))),
        proto: Proto::H1,
    };
    let refused = |reply: Result<Reply, String>| match reply {
        Err(_) => true,
        Ok(reply) => !reply.status.is_success(),
    };

    // Another CA's certificate naming the right agent, with the right token.
    let stranger_ca = Pki::new();
    let wrong_ca = client_with(&stranger_ca.leaf(&["leap-1"]));
    let reply = wrong_ca
        .request(
            Method::POST,
            "/api/v1/ingest",
            Some(&leap),
            frame("leap-1", "leap", 1, 1),
        )
        .await;
    assert!(refused(reply), "a certificate from another CA was served");

    // Our CA, but expired.
    let expired = client_with(&expired_leaf(&pki, &["leap-1"]));
    let reply = expired
        .request(
            Method::POST,
            "/api/v1/ingest",
            Some(&leap),
            frame("leap-1", "leap", 2, 1),
        )
        .await;
    assert!(refused(reply), "an expired certificate was served");
    assert_eq!(server.store.raw_batch_count().unwrap(), 0);

    // Our CA, valid, naming leap-1: another member's token, another
    // member's or agent's batch are refused.
    let leap_cert = client_with(&pki.leaf(&["leap-1"]));
    let reply = leap_cert
        .ingest(Some(&cryo), frame("cryo-1", "cryo", 3, 1))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    let reply = leap_cert.ingest(None, frame("cryo-1", "cryo", 4, 1)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    let reply = leap_cert.ingest(None, frame("leap-1", "cryo", 5, 1)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(server.store.raw_batch_count().unwrap(), 0);
    assert_eq!(stored_batches(&server.store, "cryo"), 0);

    // The control: the same certificate for its own agent is served.
    let reply = leap_cert
        .ingest(Some(&leap), frame("leap-1", "leap", 6, 1))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(stored_batches(&server.store, "leap"), 1);
    assert_eq!(server.store.raw_batch_count().unwrap(), 1);
}

// ---------- one member's token against another member's data ----------

/// How a route treats a member's credential.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Needs no credential and serves no member's private data.
    Public,
    /// Reads: a member's token sees only its member's data.
    Read,
    /// Writes data under the credential's member.
    Write,
    /// Operators only: any member's token is refused.
    Operator,
}

/// Every route of `serve` and how it treats a member's token. A route
/// added without a row here fails the test.
const ROUTES: &[(&str, &str, Kind)] = &[
    ("GET", "/healthz", Kind::Public),
    ("GET", "/readyz", Kind::Public),
    ("GET", "/metrics", Kind::Public),
    ("GET", "/status", Kind::Public),
    ("POST", "/api/v1/ingest", Kind::Write),
    ("POST", "/api/v1/write", Kind::Write),
    ("GET", "/api/v1/agents", Kind::Read),
    ("GET", "/federate", Kind::Read),
    ("GET", "/api/v1/usage", Kind::Read),
    ("GET", "/api/v1/reports/", Kind::Read),
    ("GET", "/api/v1/incidents", Kind::Read),
    ("POST", "/api/v1/incidents", Kind::Operator),
    ("POST", "/api/v1/incidents/*/updates", Kind::Operator),
    ("GET", "/api/v1/maintenance", Kind::Read),
    ("POST", "/api/v1/maintenance", Kind::Operator),
    ("DELETE", "/api/v1/maintenance/", Kind::Operator),
    ("GET", "/api/v1/status", Kind::Read),
    ("GET", "/status/", Kind::Read),
    ("GET", "/api/v1/hubs", Kind::Read),
    ("GET", "/api/v1/alerts", Kind::Read),
    ("GET", "/api/v1/slo", Kind::Read),
];

/// Member "leap" (token A) against member "cryo" (token B), both private
/// status pages, on every route `serve` registers: A cannot write B's data
/// (each write refused or stored under A, B's data unchanged) nor read it
/// (A's reads never mention B; asking for B by name is refused), while B's
/// own token reads its data (the control that B's data is there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_token_cannot_write_or_read_another_members_data_on_any_route() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CollectorConfig::default();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.shutdown_grace = Duration::from_secs(5);
    cfg.storage.path = dir.path().join("data");
    for (id, hub) in [("leap", "leap-hub"), ("cryo", "cryo-hub")] {
        cfg.members.push(MemberConfig {
            id: id.into(),
            name: id.to_uppercase(),
            tier: "premier".into(),
            hubs: vec![HubRef {
                name: hub.into(),
                public_url: None,
            }],
            status_page: "private".into(),
        });
    }
    // Usage pages are written at once, so B's usage is readable soon.
    cfg.usage.flush_interval = Duration::ZERO;
    let store = Store::open(&cfg.storage).unwrap();
    let a = store.create_token("leap", "leap-agent").unwrap();
    let b = store.create_token("cryo", "cryo-agent").unwrap();
    seed_alert(&store, "cryo", "cryo-hub");
    let running = Collector::new(cfg, store.clone()).start().await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], running.local_addr.port()));

    // Every registered route has a row, and every row a route.
    let served: Vec<(String, String)> = running
        .routes()
        .into_iter()
        .map(|(method, path)| (method.to_string(), path))
        .collect();
    let rows: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(method, path, _)| (method.to_string(), path.to_string()))
        .collect();
    let missing: Vec<_> = served.iter().filter(|r| !rows.contains(r)).collect();
    let stale: Vec<_> = rows.iter().filter(|r| !served.contains(r)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "routes without a row in ROUTES: {missing:?}; rows without a route: {stale:?}"
    );

    // B's data: batches, an incident, a maintenance window (the operator
    // writes those two: loopback, no credential).
    let reply = ingest_from(addr, None, Some(&b), cryo_batch()).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = ingest_from(addr, None, Some(&a), frame("leap-agent", "leap", 1, 2)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let json = [("content-type", "application/json")];
    let reply = http(
        addr,
        None,
        "POST",
        "/api/v1/incidents",
        None,
        &json,
        br#"{"member":"cryo","hub":"cryo-hub","title":"cryo outage","message":"Looking."}"#,
    )
    .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let incident = reply.json()["id"].as_i64().unwrap();
    let reply = http(
        addr,
        None,
        "POST",
        "/api/v1/maintenance",
        None,
        &json,
        br#"{"member":"cryo","hubs":["cryo-hub"],"start":"2099-01-05T02:00","end":"2099-01-05T03:30","timezone":"UTC","note":"cryo db upgrade"}"#,
    )
    .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let window = reply.json()["id"].as_i64().unwrap();
    let cryo_batches = stored_batches(&store, "cryo");
    assert_eq!(cryo_batches, 1);
    // The derived views of B's batch (federated series, usage) are there
    // once the pipeline has read it.
    for path in [
        "/federate?match%5B%5D=%7B__name__%3D~%22.%2B%22%7D",
        "/api/v1/usage",
    ] {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let reply = http(addr, None, "GET", path, Some(&b), &[], b"").await;
            if reply.body.contains("cryo") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: B's data never derived: {reply:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let mut checked = Vec::new();
    for (method, route, kind) in ROUTES {
        match kind {
            Kind::Public => {
                let reply = http(addr, None, method, route, None, &[], b"").await;
                assert_eq!(reply.status, 200, "{method} {route} needs no credential");
                // The network page lists a private member without detail.
                if *route == "/status" {
                    assert!(!reply.body.contains("cryo-hub"), "{}", reply.body);
                    let api = http(addr, None, method, "/api/v1/status", Some(&a), &[], b"").await;
                    assert_eq!(api.status, 200, "{api:?}");
                    assert!(!api.body.contains("cryo-hub"), "{}", api.body);
                }
            }
            Kind::Read => {
                let (own, naming_b): (String, Option<String>) = match *route {
                    "/api/v1/reports/" => (
                        "/api/v1/reports/2026-11".into(),
                        Some("/api/v1/reports/2026-11?member=cryo".into()),
                    ),
                    "/status/" => ("/status/leap".into(), Some("/status/cryo".into())),
                    "/federate" => (
                        "/federate?match%5B%5D=%7B__name__%3D~%22.%2B%22%7D".into(),
                        None,
                    ),
                    // Without `member` the network view, like `/status`:
                    // every member listed, a private one without detail.
                    "/api/v1/status" => (
                        "/api/v1/status?member=leap".into(),
                        Some("/api/v1/status?member=cryo".into()),
                    ),
                    "/api/v1/usage" | "/api/v1/incidents" | "/api/v1/maintenance" => {
                        (route.to_string(), Some(format!("{route}?member=cryo")))
                    }
                    _ => (route.to_string(), None),
                };
                let reply = http(addr, None, method, &own, Some(&a), &[], b"").await;
                assert_eq!(
                    reply.status, 200,
                    "{method} {own} with A's token: {reply:?}"
                );
                assert!(
                    !reply.body.contains("cryo"),
                    "{method} {own} shows A another member's data: {}",
                    reply.body
                );
                if let Some(path) = naming_b {
                    let reply = http(addr, None, method, &path, Some(&a), &[], b"").await;
                    assert!(
                        [403, 404].contains(&reply.status)
                            || (reply.status == 200 && !reply.body.contains("cryo")),
                        "{method} {path} with A's token: {reply:?}"
                    );
                }
                // The control: B's own token reads B's view.
                let own_b = own
                    .replace("/status/leap", "/status/cryo")
                    .replace("member=leap", "member=cryo");
                let reply = http(addr, None, method, &own_b, Some(&b), &[], b"").await;
                assert_eq!(
                    reply.status, 200,
                    "{method} {own_b} with B's token: {reply:?}"
                );
                assert!(
                    reply.body.contains("cryo"),
                    "{method} {own_b}: B's own view shows no B data, so A's was not tested: {}",
                    reply.body
                );
            }
            Kind::Write if *route == "/api/v1/ingest" => {
                for claim in [
                    frame("leap-agent", "cryo", 2, 1),
                    frame("cryo-agent", "cryo", 2, 1),
                    frame("cryo-agent", "", 3, 1),
                ] {
                    let reply = ingest_from(addr, None, Some(&a), claim).await;
                    assert_eq!(reply.status, 403, "{reply:?}");
                }
            }
            Kind::Write => {
                assert_eq!(*route, "/api/v1/write");
                let request = proto::WriteRequest {
                    timeseries: vec![proto::TimeSeries {
                        labels: vec![
                            proto::Label {
                                name: "__name__".into(),
                                value: "up".into(),
                            },
                            proto::Label {
                                name: "member".into(),
                                value: "cryo".into(),
                            },
                        ],
                        samples: vec![proto::Sample {
                            value: 1.0,
                            timestamp: 1_700_000_000_000,
                        }],
                    }],
                };
                let reply = http(
                    addr,
                    None,
                    method,
                    route,
                    Some(&a),
                    &[
                        ("content-encoding", "snappy"),
                        ("content-type", "application/x-protobuf"),
                        (remote_write::VERSION_HEADER, remote_write::VERSION),
                    ],
                    &remote_write::encode(&request),
                )
                .await;
                // Accepted, but under A's member: the label does not decide.
                assert_eq!(reply.status, 204, "{reply:?}");
                assert_eq!(stored_batches(&store, "leap"), 2);
            }
            Kind::Operator => {
                let (path, body) = match *route {
                    "/api/v1/incidents" => (
                        route.to_string(),
                        r#"{"member":"cryo","hub":"cryo-hub","title":"x","message":"y"}"#
                            .to_string(),
                    ),
                    "/api/v1/incidents/*/updates" => (
                        format!("/api/v1/incidents/{incident}/updates"),
                        r#"{"state":"resolved","message":"not yours"}"#.to_string(),
                    ),
                    "/api/v1/maintenance" => (
                        route.to_string(),
                        r#"{"member":"cryo","hubs":["cryo-hub"],"start":"2099-02-05T02:00","end":"2099-02-05T03:30","timezone":"UTC","note":"x"}"#
                            .to_string(),
                    ),
                    "/api/v1/maintenance/" => (format!("{route}{window}"), String::new()),
                    other => panic!("no request for operator route {other}"),
                };
                let reply = http(addr, None, method, &path, Some(&a), &json, body.as_bytes()).await;
                assert_eq!(
                    reply.status, 403,
                    "{method} {path} with A's token: {reply:?}"
                );
            }
        }
        checked.push(*route);
    }
    assert_eq!(checked.len(), ROUTES.len());

    // B's data is as it was: one batch, its incident with one update, one window.
    assert_eq!(stored_batches(&store, "cryo"), cryo_batches);
    let incidents = http(addr, None, "GET", "/api/v1/incidents", Some(&b), &[], b"").await;
    let incidents = incidents.json()["incidents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // (The seeded HubDown opens one of its own.)
    assert!(incidents.iter().all(|i| i["title"] != "x"), "{incidents:?}");
    let ours = incidents
        .iter()
        .find(|i| i["id"] == incident)
        .expect("B's incident is still there");
    assert_eq!(ours["state"], "investigating", "{ours}");
    assert_eq!(ours["updates"].as_array().map(Vec::len), Some(1), "{ours}");
    let windows = http(addr, None, "GET", "/api/v1/maintenance", Some(&b), &[], b"").await;
    assert!(windows.body.contains("cryo db upgrade"), "{windows:?}");
    assert!(!windows.body.contains("2099-02-05"), "{windows:?}");
    // And B's reads do show B's data (the negative checks were not vacuous).
    let agents = http(addr, None, "GET", "/api/v1/agents", Some(&b), &[], b"").await;
    assert!(agents.body.contains("cryo-agent"), "{agents:?}");
    let page = http(addr, None, "GET", "/status/cryo", Some(&b), &[], b"").await;
    assert!(page.body.contains("cryo-hub"), "{page:?}");
    running.shutdown().await;
}

/// B's batch: the test's samples, a forwarded hub series now (for
/// `/federate`), and a server that ran for an hour (for `/api/v1/usage`).
fn cryo_batch() -> Vec<u8> {
    let now = crate::clock::system_now_ms();
    let usage = |kind: UsageKind, timestamp_ms: i64| {
        Record::Usage(UsageEvent {
            hub: "cryo-hub".into(),
            user: "u1".into(),
            server: String::new(),
            kind,
            timestamp_ms,
        })
    };
    let mut batch: Batch = codec::decode(&frame("cryo-agent", "cryo", 1, 3)).unwrap();
    batch.records.extend([
        Record::Sample(Sample {
            name: "jupyterhub_running_servers".into(),
            labels: vec![Label::new("hub", "cryo-hub")],
            value: 1.0,
            timestamp_ms: now,
        }),
        usage(
            UsageKind::ServerStarted { profile: None },
            now - 2 * 3_600_000,
        ),
        usage(UsageKind::ServerStopped, now - 3_600_000),
    ]);
    batch.created_ms = now;
    codec::encode(&batch).unwrap()
}

/// One firing alert of `member`'s `hub` in the store's alert state, as the
/// alert engine writes it (`/api/v1/alerts` lists it, resolved or not).
fn seed_alert(store: &Store, member: &str, hub: &str) {
    struct Firing(crate::alerts::AlertSpec);
    impl crate::alerts::AlertSource for Firing {
        fn name(&self) -> &str {
            "security-test"
        }
        fn evaluate(
            &self,
            _now_ms: i64,
        ) -> Result<Vec<crate::alerts::AlertSpec>, crate::alerts::EvaluateError> {
            Ok(vec![self.0.clone()])
        }
    }
    let labels = [
        ("alertname", "HubDown"),
        ("member", member),
        ("hub", hub),
        ("tier", "premier"),
        ("severity", "page"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let source = Arc::new(Firing(crate::alerts::AlertSpec {
        labels,
        annotations: std::collections::BTreeMap::new(),
    }));
    let storage: crate::store::Storage = store.clone().into();
    let mut engine = crate::alerts::AlertEngine::open(
        crate::alerts::state_store_on(&storage),
        Arc::new(crate::clock::SystemClock),
        vec![source as Arc<dyn crate::alerts::AlertSource>],
        Duration::from_secs(15 * 60),
    )
    .unwrap();
    engine.evaluate().unwrap();
}

// ---------- token guessing ----------

/// Wrong tokens from one address: the first `burst` get 401, then every
/// request from it that needs a credential gets 429 with `Retry-After`
/// without its token being checked (a valid one too; the failure counter
/// stops), reads without a credential on loopback are not limited, another
/// address is unaffected, and after the refill the valid token works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guessing_is_limited_per_source_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CollectorConfig::default();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.shutdown_grace = Duration::from_secs(5);
    cfg.server.auth_failures_burst = 5;
    cfg.server.auth_failure_refill = Duration::from_secs(2);
    cfg.storage.path = dir.path().join("data");
    let store = Store::open(&cfg.storage).unwrap();
    let token = store.create_token("leap", "a1").unwrap();
    let clock = Arc::new(crate::clock::ManualClock::new(1_700_000_000_000));
    let shared: crate::clock::SharedClock = clock.clone();
    let server = Collector::new(cfg, store.clone())
        .clock(shared)
        .components(crate::server::http_components())
        .start()
        .await
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], server.local_addr.port()));
    let guesser: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
    let other: Option<IpAddr> = Some("127.0.0.2".parse().unwrap());

    let mut statuses = Vec::new();
    for i in 0..25 {
        let guess = format!("hwt_guess-{i}");
        let reply = ingest_from(addr, guesser, Some(&guess), frame("a1", "leap", 1, 1)).await;
        if reply.status == 429 {
            assert_eq!(reply.header("retry-after"), Some("2"), "{reply:?}");
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses[..5], [401; 5], "{statuses:?}");
    assert_eq!(statuses[5..], [429; 20], "{statuses:?}");

    // While limited: the valid token is not even checked, on ingest and on
    // reads; nothing is stored.
    let reply = ingest_from(addr, guesser, Some(&token), frame("a1", "leap", 1, 1)).await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
    let reply = http(
        addr,
        guesser,
        "GET",
        "/api/v1/agents",
        Some(&token),
        &[],
        b"",
    )
    .await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(store.raw_batch_count().unwrap(), 0);
    // What needs no credential is not limited.
    let reply = http(addr, guesser, "GET", "/api/v1/agents", None, &[], b"").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = http(addr, guesser, "GET", "/healthz", None, &[], b"").await;
    assert_eq!(reply.status, 200, "{reply:?}");

    // Another source address has its own budget.
    let reply = ingest_from(addr, other, Some(&token), frame("a1", "leap", 1, 1)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = ingest_from(addr, other, Some("hwt_wrong"), frame("a1", "leap", 2, 1)).await;
    assert_eq!(reply.status, 401, "{reply:?}");

    // One refill later the guesser's valid token works again.
    clock.advance(2_000);
    let reply = ingest_from(addr, guesser, Some(&token), frame("a1", "leap", 2, 1)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(store.raw_batch_count().unwrap(), 2);

    let text = server.metrics.render();
    assert_eq!(
        counter(&text, "hubwatch_collector_auth_rate_limited_total"),
        22.0
    );
    // 5 guesses + 1 wrong token from the other address were checked; the
    // 20 refused guesses never were.
    assert_eq!(
        counter(
            &text,
            "hubwatch_collector_auth_failures_total{reason=\"unknown\"}"
        ),
        6.0
    );
    server.shutdown().await;
}

// ---------- slow clients ----------

/// 100 connections dribbling their headers and 100 (authenticated)
/// dribbling their bodies, all held open: a normal agent's batch is still
/// acknowledged and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_starve_a_normal_agent() {
    let server = TestServer::start(&[("leap", "a1"), ("leap", "slow")], |cfg, _| {
        cfg.server.header_read_timeout = Duration::from_secs(20);
        cfg.server.body_read_timeout = Duration::from_secs(30);
    })
    .await;
    let slow_token = server.token("slow");
    let stop = Arc::new(tokio::sync::Notify::new());
    let open = Arc::new(AtomicUsize::new(0));
    let mut dribblers = Vec::new();
    for i in 0..200 {
        let (addr, stop, open) = (server.addr, stop.clone(), open.clone());
        let (head, drip): (String, &'static [u8]) = if i % 2 == 0 {
            (
                "POST /api/v1/ingest HTTP/1.1\r\nhost: localhost\r\nx-slow: ".to_string(),
                b"a",
            )
        } else {
            (
                format!(
                    "POST /api/v1/ingest HTTP/1.1\r\nhost: localhost\r\n\
                     authorization: Bearer {slow_token}\r\ncontent-length: 100000\r\n\r\nHWB1"
                ),
                b"x",
            )
        };
        dribblers.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(head.as_bytes()).await.unwrap();
            open.fetch_add(1, Ordering::SeqCst);
            loop {
                tokio::select! {
                    () = stop.notified() => break,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {
                        if stream.write_all(drip).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + PATIENCE;
    while open.load(Ordering::SeqCst) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open.load(Ordering::SeqCst), 200, "slow clients connected");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let token = server.token("a1");
    let reply = tokio::time::timeout(
        PATIENCE,
        server
            .plain()
            .ingest(Some(&token), frame("a1", "leap", 1, 5)),
    )
    .await
    .expect("the normal agent was answered while slow clients were held");
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json()["status"], "stored");
    // Only the normal agent's batch: the slow ones are still dribbling.
    assert_eq!(server.store.raw_batch_count().unwrap(), 1);
    stop.notify_waiters();
    for dribbler in dribblers {
        dribbler.abort();
    }
}
