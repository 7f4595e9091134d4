//! Building the HTTP client the sender uses: hyper-util's pooled client over
//! hyper-rustls (rustls with ring), HTTP/2 or HTTP/1.1 by ALPN, the
//! collector's CA or the webpki roots, and an optional client certificate,
//! loaded by the workspace's one client crate (`hubwatch_http::tls`).

use bytes::Bytes;
use http_body_util::Full;
use hubwatch_http::tls::{Alpn, ClientIdentity, DefaultRoots};
use hubwatch_shared::config::CollectorLink;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::SenderError;

/// The client type the sender uses.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the client from `[collector]`.
pub fn build_client(link: &CollectorLink) -> Result<HttpClient, SenderError> {
    // A plaintext link needs no roots, and skipping them keeps the agent's
    // memory down.
    let default_roots = if link
        .endpoints()
        .iter()
        .any(|url| url.starts_with("https://"))
    {
        DefaultRoots::Webpki
    } else {
        DefaultRoots::Empty
    };
    let roots = hubwatch_http::tls::root_store(
        link.ca_file.as_deref(),
        "collector.ca_file",
        default_roots,
    )?;
    let identity = match (&link.client_cert, &link.client_key) {
        (Some(cert), Some(key)) => Some(ClientIdentity {
            cert_file: cert,
            cert_key: "collector.client_cert",
            key_file: key,
            key_key: "collector.client_key",
        }),
        _ => None,
    };
    let tls =
        hubwatch_http::tls::client_config(roots, identity, Alpn::ByConnector, "collector.url")?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(1)
        .build(connector))
}
