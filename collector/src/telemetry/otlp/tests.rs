use std::collections::HashMap;
use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing_subscriber::layer::SubscriberExt as _;

use super::*;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn cfg(endpoint: Option<&str>) -> TelemetryConfig {
    TelemetryConfig {
        otlp_endpoint: endpoint.map(str::to_string),
        sample_ratio: 1.0,
    }
}

#[test]
fn the_key_wins_the_environment_is_the_fallback_and_off_is_the_default() {
    let none = env_of(&[]);
    assert_eq!(destination(&cfg(None), &none), Destination::Off);
    assert_eq!(
        destination(&cfg(Some("http://otel:4318/")), &none),
        Destination::Url("http://otel:4318/v1/traces".to_string())
    );
    assert_eq!(
        destination(&cfg(Some("https://otel.example.org/prefix")), &none),
        Destination::Url("https://otel.example.org/prefix/v1/traces".to_string())
    );
    let from_env = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318")]);
    assert_eq!(destination(&cfg(None), &from_env), Destination::Environment);
    let traces_env = env_of(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4318/t")]);
    assert_eq!(
        destination(&cfg(None), &traces_env),
        Destination::Environment
    );
    assert_eq!(
        destination(&cfg(Some("http://otel:4318")), &from_env),
        Destination::Url("http://otel:4318/v1/traces".to_string())
    );
    let blank = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]);
    assert_eq!(destination(&cfg(None), &blank), Destination::Off);
    let disabled = env_of(&[("OTEL_SDK_DISABLED", "TRUE")]);
    assert_eq!(
        destination(&cfg(Some("http://otel:4318")), &disabled),
        Destination::Off
    );
}

#[test]
fn the_ratio_is_parent_based_unless_the_environment_names_a_sampler() {
    let got = format!("{:?}", sampler(0.25, &env_of(&[])));
    assert!(
        got.starts_with("Some(ParentBased(") && got.contains("TraceIdRatioBased(0.25)"),
        "{got}"
    );
    assert!(sampler(0.25, &env_of(&[("OTEL_TRACES_SAMPLER", "always_on")])).is_none());
}

/// An OTLP/HTTP stand-in: records (path, content type, body) of each POST.
type Posts = Arc<Mutex<Vec<(String, String, Bytes)>>>;

async fn receiver() -> (String, Posts) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let posts: Posts = Arc::default();
    let p = posts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let p = p.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let p = p.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let ctype = req
                            .headers()
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        p.lock().unwrap().push((path, ctype, body));
                        // An empty ExportTraceServiceResponse: full success.
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, posts)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Records an `ingest` span with an `ingest.decode` child through a
/// subscriber holding only `provider`'s layer, then flushes it.
fn record_spans(provider: &SdkTracerProvider) {
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let parent = tracing::info_span!("ingest");
        let _p = parent.enter();
        let _c = tracing::info_span!("ingest.decode").entered();
    });
    // force_flush blocks this (non-runtime) thread while the runtime's
    // workers run the POST.
    let _ = provider.force_flush();
}

#[test]
fn spans_are_posted_as_protobuf_to_v1_traces_and_counted() {
    let rt = runtime();
    let (url, posts) = rt.block_on(receiver());
    let metrics = CollectorMetrics::new();
    let env = env_of(&[]);
    let c = cfg(Some(&url));
    let (provider, shown) = provider(
        &c,
        destination(&c, &env),
        &metrics,
        rt.handle().clone(),
        &env,
    )
    .unwrap()
    .expect("an endpoint is configured");
    assert_eq!(shown, format!("{url}/v1/traces"));
    record_spans(&provider);

    let posts = posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 1, "one batch");
    let (path, ctype, body) = &posts[0];
    assert_eq!(path, "/v1/traces");
    assert_eq!(ctype, "application/x-protobuf");
    // Protobuf strings are stored as they are: the span names and the
    // default service name are in the body.
    for needle in ["ingest.decode", "ingest", SERVICE_NAME] {
        assert!(
            body.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} not in the export"
        );
    }
    assert_eq!(metrics.telemetry_spans_exported.get(), 2);
    assert_eq!(metrics.telemetry_spans_dropped.get(), 0);
    let _ = provider.shutdown();
}

#[test]
fn a_receiver_that_is_down_drops_and_counts_spans() {
    let rt = runtime();
    // A port that was just free: nothing listens on it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let metrics = CollectorMetrics::new();
    // Short deadline so the exporter's retries end quickly.
    let env = env_of(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "300")]);
    let c = cfg(Some(&format!("http://{closed}")));
    let (provider, _) = provider(
        &c,
        destination(&c, &env),
        &metrics,
        rt.handle().clone(),
        &env,
    )
    .unwrap()
    .expect("an endpoint is configured");
    record_spans(&provider);
    assert_eq!(metrics.telemetry_spans_dropped.get(), 2);
    assert_eq!(metrics.telemetry_spans_exported.get(), 0);
    let _ = provider.shutdown();
}

#[test]
fn a_bad_ca_file_in_the_environment_is_named() {
    let rt = runtime();
    let env = env_of(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")]);
    let c = cfg(Some("https://otel:4318"));
    let err = provider(
        &c,
        destination(&c, &env),
        &CollectorMetrics::new(),
        rt.handle().clone(),
        &env,
    )
    .expect_err("the CA file does not exist");
    assert!(
        err.to_string().contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
        "{err}"
    );
}
