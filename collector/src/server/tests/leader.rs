//! Leadership of replicas on one PostgreSQL database (`server/leader.rs`):
//! in-process collectors on the private test server, with a leader-only
//! component that says which replica serves it.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::BoxFuture;
use hubwatch_shared::config::StorageBackend;

use super::*;
use crate::component::{Built, Route};
use crate::server::components::{Agents, Core, Ingest};

/// A leader-only feature: `GET /test/who` answers its replica's name, and a
/// task counts rounds while it runs.
struct WhoLeads {
    name: &'static str,
    builds: Arc<AtomicUsize>,
    rounds: Arc<AtomicUsize>,
}

impl Component for WhoLeads {
    fn name(&self) -> &'static str {
        "who_leads"
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            self.builds.fetch_add(1, Ordering::SeqCst);
            let name = self.name;
            let route = Route::new(Method::GET, "/test/who", move |_, _, _| async move {
                routes::json(StatusCode::OK, &serde_json::json!({ "replica": name }))
            });
            let (rounds, shutdown) = (Arc::clone(&self.rounds), ctx.shutdown.clone());
            let task = Task::new("who_leads.rounds", async move {
                let mut ticks = shutdown.every(Duration::from_millis(50));
                while ticks.next().await {
                    rounds.fetch_add(1, Ordering::SeqCst);
                }
            });
            Ok(Built {
                routes: vec![route],
                tasks: vec![task],
                ..Built::default()
            })
        })
    }
}

struct Replica {
    running: Option<RunningCollector>,
    addr: SocketAddr,
    builds: Arc<AtomicUsize>,
    rounds: Arc<AtomicUsize>,
}

const LEASE: Duration = Duration::from_secs(3);

/// A replica on `url`, advertising `advertise` as its URL.
async fn replica(name: &'static str, url: &str, advertise: &str) -> Replica {
    let mut cfg = CollectorConfig::default();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.shutdown_grace = Duration::from_secs(5);
    cfg.server.leader_lease = LEASE;
    cfg.server.advertise_url = Some(advertise.to_string());
    cfg.storage.backend = StorageBackend::Postgres;
    cfg.storage.url = Some(url.to_string());
    let store = Storage::open(&cfg.storage).unwrap();
    let (builds, rounds) = (Arc::default(), Arc::<AtomicUsize>::default());
    let components: Vec<Box<dyn Component>> = vec![
        Box::new(Core),
        Box::new(Ingest),
        Box::new(Agents),
        Box::new(WhoLeads {
            name,
            builds: Arc::clone(&builds),
            rounds: Arc::clone(&rounds),
        }),
    ];
    let running = Collector::new(cfg, store)
        .components(components)
        .start()
        .await
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], running.local_addr.port()));
    Replica {
        running: Some(running),
        addr,
        builds,
        rounds,
    }
}

impl Replica {
    fn leading(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(RunningCollector::is_leading)
    }

    /// Status, `Location` and body of `GET path` (HTTP/1.1, no redirects followed).
    async fn get(&self, path: &str) -> (u16, Option<String>, String) {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let location = text
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .map(str::to_string);
        let body = text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        (status, location, body)
    }

    /// Waits (up to `within`) until this replica leads; the time it took.
    async fn leads_within(&self, within: Duration) -> Duration {
        let started = Instant::now();
        while !self.leading() {
            assert!(
                started.elapsed() < within,
                "the follower did not take over within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_leads_the_other_redirects_and_takes_over_a_clean_shutdown() {
    let url = crate::store::pg::test_server::database();
    let mut a = replica("a", &url, "http://a.example:9470").await;
    let b = replica("b", &url, "http://b.example:9470").await;
    assert!(
        a.leading(),
        "the first replica takes the free lease at start"
    );
    assert!(!b.leading());
    assert_eq!(a.builds.load(Ordering::SeqCst), 1);
    assert_eq!(
        b.builds.load(Ordering::SeqCst),
        0,
        "a follower builds no leader-only feature"
    );
    let metrics = b.running.as_ref().unwrap().metrics.render();
    assert!(metrics.contains("hubwatch_collector_leader 0"), "{metrics}");

    // Every replica serves its own endpoints; the follower sends the
    // leader's views to the leader, path and query kept.
    let (status, _, body) = a.get("/test/who").await;
    assert_eq!((status, body.contains("\"a\"")), (200, true), "{body}");
    assert_eq!(b.get("/healthz").await.0, 200);
    assert_eq!(b.get("/readyz").await.0, 200);
    let (status, location, _) = b.get("/test/who?x=1").await;
    assert_eq!(status, 307);
    assert_eq!(
        location.as_deref(),
        Some("http://a.example:9470/test/who?x=1")
    );

    // A clean shutdown releases the lease after the leader's tasks stopped:
    // the follower takes over at its next try (a third of the lease), well
    // before the lease would have expired.
    a.running.take().unwrap().shutdown().await;
    let took = b.leads_within(LEASE).await;
    assert!(took < LEASE, "took {took:?}");
    assert_eq!(b.builds.load(Ordering::SeqCst), 1);
    let (status, _, body) = b.get("/test/who").await;
    assert_eq!((status, body.contains("\"b\"")), (200, true), "{body}");
    let rounds = b.rounds.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b.rounds.load(Ordering::SeqCst) > rounds,
        "the new leader runs the leader-only task"
    );
    let metrics = b.running.as_ref().unwrap().metrics.render();
    assert!(metrics.contains("hubwatch_collector_leader 1"), "{metrics}");
    assert!(
        metrics.contains("hubwatch_collector_leader_transitions_total{to=\"leader\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_stops_renewing_is_replaced_within_the_lease_and_a_third() {
    let url = crate::store::pg::test_server::database();
    let a = replica("a", &url, "http://a.example:9470").await;
    let b = replica("b", &url, "http://b.example:9470").await;
    assert!(a.leading() && !b.leading());
    // Dropping a running collector stops its tasks (the lease renewals
    // among them) without releasing the lease: as a killed process would.
    let Replica { running, .. } = a;
    drop(running);
    let took = b.leads_within(LEASE * 2).await;
    assert!(
        took >= LEASE / 2 && took <= LEASE + LEASE / 3 + Duration::from_secs(1),
        "the follower waits for the lease to expire, then takes it: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_lease_is_taken_stops_its_work_and_says_why() {
    let url = crate::store::pg::test_server::database();
    let mut a = replica("a", &url, "http://a.example:9470").await;
    assert!(a.leading());
    // Another holder behind the leader's back (an operator, or a replica
    // that saw the lease expire while this one was paused).
    let mut cfg = hubwatch_shared::config::StorageConfig {
        backend: StorageBackend::Postgres,
        url: Some(url.clone()),
        ..Default::default()
    };
    cfg.path = std::env::temp_dir();
    let intruder = crate::store::pg::PgStore::open(&cfg).unwrap();
    intruder
        .write_with("test: stealing the lease", async |tx| {
            tx.execute(
                "UPDATE leader_lease SET holder = 'intruder', expires_at = now() + interval '1 hour'",
                &[],
            )
            .await?;
            Ok(())
        })
        .unwrap();
    let running = a.running.take().unwrap();
    let reason = tokio::time::timeout(LEASE * 2, running.wait())
        .await
        .expect("the deposed leader stops within two renewals")
        .expect_err("stopping because the lease was lost is an error");
    assert!(
        reason.contains("another replica holds the leader lease"),
        "{reason}"
    );
    let rounds = a.rounds.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        a.rounds.load(Ordering::SeqCst),
        rounds,
        "the leader-only task stopped"
    );
    // The lease is not released by the deposed leader: still the intruder's.
    let lease = intruder
        .lease(crate::server::leader::LEASE_NAME)
        .unwrap()
        .unwrap();
    assert_eq!(lease.holder, "intruder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_without_a_leader_url_answers_503_with_retry_after() {
    let url = crate::store::pg::test_server::database();
    let _a = {
        let mut cfg = CollectorConfig::default();
        cfg.server.listen = "127.0.0.1:0".parse().unwrap();
        cfg.server.leader_lease = LEASE;
        cfg.storage.backend = StorageBackend::Postgres;
        cfg.storage.url = Some(url.clone());
        let store = Storage::open(&cfg.storage).unwrap();
        Collector::new(cfg, store)
            .components(vec![Box::new(Core), Box::new(Ingest), Box::new(Agents)])
            .start()
            .await
            .unwrap()
    };
    let b = replica("b", &url, "http://b.example:9470").await;
    assert!(!b.leading());
    let (status, location, body) = b.get("/test/who").await;
    assert_eq!((status, location), (503, None), "{body}");
    assert!(body.contains("advertise_url"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_ingest_loses_no_acknowledged_batch_and_serves_on() {
    let server = crate::store::pg::test_server::PrivateServer::start();
    let url = server.database();
    let mut cfg = CollectorConfig::default();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.shutdown_grace = Duration::from_secs(5);
    cfg.storage.backend = StorageBackend::Postgres;
    cfg.storage.url = Some(url);
    cfg.storage.connect_timeout = Duration::from_secs(2);
    let store = Storage::open(&cfg.storage).unwrap();
    let Storage::Postgres(pg) = &store else {
        unreachable!("opened as postgres")
    };
    let token = pg.create_token("leap", "pg-agent").unwrap();
    let running = Collector::new(cfg, store.clone())
        .components(vec![Box::new(Core), Box::new(Ingest), Box::new(Agents)])
        .start()
        .await
        .unwrap();
    assert!(running.is_leading());
    let client = Client {
        addr: SocketAddr::from(([127, 0, 0, 1], running.local_addr.port())),
        tls: None,
        proto: Proto::H1,
    };
    // One agent sends batch after batch; each is retried until answered 200,
    // as the agent's sender does.
    let sender = {
        let token = token.clone();
        tokio::spawn(async move {
            let (mut acked, mut unavailable, mut seq) = (Vec::new(), 0u32, 0u64);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(6) {
                seq += 1024;
                loop {
                    let reply = client
                        .request(
                            Method::POST,
                            "/api/v1/ingest",
                            Some(&token),
                            frame("pg-agent", "leap", seq, 5),
                        )
                        .await;
                    match reply {
                        Ok(reply) if reply.status == StatusCode::OK => break,
                        Ok(reply) => {
                            assert_eq!(
                                reply.status,
                                StatusCode::SERVICE_UNAVAILABLE,
                                "a database outage is 503 (retry), never another error: {}",
                                String::from_utf8_lossy(&reply.body)
                            );
                            unavailable += 1;
                        }
                        Err(_) => unavailable += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                acked.push(seq);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (acked, unavailable)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let (acked, unavailable) = sender.await.unwrap();
    eprintln!(
        "{} batches acknowledged, {unavailable} answers 503 around the restart",
        acked.len()
    );
    assert!(
        acked.len() > 20,
        "ingest resumed after the restart: {acked:?}"
    );
    // Every acknowledged batch is in the database, once.
    let store_for_count = store.clone();
    let stored: Vec<u64> =
        tokio::task::spawn_blocking(move || store_for_count.agents(Some("leap")))
            .await
            .unwrap()
            .unwrap()
            .iter()
            .map(|row| row.batches)
            .collect();
    assert_eq!(stored, vec![acked.len() as u64]);
    assert!(
        running.is_leading(),
        "a restart shorter than the lease keeps the leader"
    );
    running.shutdown().await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ha_agent_pair_split_across_collector_replicas_is_stored_once() {
    let url = crate::store::pg::test_server::database();
    let cfg = hubwatch_shared::config::StorageConfig {
        backend: StorageBackend::Postgres,
        url: Some(url.clone()),
        ..Default::default()
    };
    let admin = crate::store::pg::PgStore::open(&cfg).unwrap();
    let token_a = admin
        .create_token_in_cluster("leap", "leap-a", Some("prod"))
        .unwrap();
    let token_b = admin
        .create_token_in_cluster("leap", "leap-b", Some("prod"))
        .unwrap();
    let first = replica("a", &url, "http://a.example:9470").await;
    let second = replica("b", &url, "http://b.example:9470").await;
    let client = |replica: &Replica| Client {
        addr: replica.addr,
        tls: None,
        proto: Proto::H1,
    };
    // The pair's agents send to different collectors.
    let reply = client(&first)
        .ingest(Some(&token_a), frame("leap-a", "leap", 1024, 3))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = client(&second)
        .ingest(Some(&token_b), frame("leap-b", "leap", 1024, 3))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = String::from_utf8_lossy(&reply.body).to_string();
    assert!(
        body.contains("\"standby\"") && body.contains("\"leap-a\""),
        "the second collector knows leap-a is elected: {body}"
    );
    let agents = tokio::task::spawn_blocking(move || admin.agents(Some("leap")))
        .await
        .unwrap()
        .unwrap();
    let stored: Vec<(String, u64)> = agents.into_iter().map(|r| (r.agent, r.batches)).collect();
    assert_eq!(
        stored,
        vec![("leap-a".to_string(), 1)],
        "only the elected agent's batch"
    );
}
