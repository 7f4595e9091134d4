//! A blocking HTTP(S) client for tests (ureq over rustls): any status is a
//! [`Reply`], never an error, so tests can assert on 401s and 413s; TLS with
//! the test CA as the only root and an optional client certificate.

use std::time::Duration;

use anyhow::{Context, anyhow};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

/// A status and body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The body as text (lossy).
    pub body: String,
}

/// A client bound to one base URL (`http://127.0.0.1:PORT` or `https://...`).
#[derive(Clone)]
pub struct Http {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http").field("base", &self.base).finish()
    }
}

/// Time allowed for one request, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Http {
    /// A plaintext client.
    pub fn plain(base: impl Into<String>) -> Self {
        Self::build(base.into(), TlsConfig::default())
    }

    /// A TLS client that trusts only `ca_pem` and, with `client`, presents that
    /// certificate and key (PEM).
    pub fn tls(
        base: impl Into<String>,
        ca_pem: &str,
        client: Option<(&str, &str)>,
    ) -> anyhow::Result<Self> {
        let ca = Certificate::from_pem(ca_pem.as_bytes()).context("CA certificate PEM")?;
        let mut tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&[ca]));
        if let Some((cert_pem, key_pem)) = client {
            let cert = Certificate::from_pem(cert_pem.as_bytes()).context("client cert PEM")?;
            let key = PrivateKey::from_pem(key_pem.as_bytes()).context("client key PEM")?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&[cert], key)));
        }
        Ok(Self::build(base.into(), tls.build()))
    }

    fn build(base: String, tls: TlsConfig) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_redirects(0)
            .tls_config(tls)
            .build();
        Self {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET base+path`, with a bearer token when given.
    pub fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<Reply> {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request
            .call()
            .with_context(|| format!("GET {}{path}", self.base))?;
        into_reply(response)
    }

    /// `POST base+path` with `body` as `content_type`, with a bearer token when given.
    pub fn post(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<Reply> {
        let mut request = self
            .agent
            .post(format!("{}{path}", self.base))
            .content_type(content_type);
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request
            .send(body)
            .with_context(|| format!("POST {}{path}", self.base))?;
        into_reply(response)
    }

    /// `GET base+path` that must answer 200; the body.
    pub fn get_ok(&self, path: &str, token: Option<&str>) -> anyhow::Result<String> {
        let reply = self.get(path, token)?;
        if reply.status != 200 {
            return Err(anyhow!(
                "GET {path}: status {} body {:?}",
                reply.status,
                reply.body
            ));
        }
        Ok(reply.body)
    }
}

fn into_reply(mut response: ureq::http::Response<ureq::Body>) -> anyhow::Result<Reply> {
    let status = response.status().as_u16();
    let bytes = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .context("reading the response body")?;
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Sends only the start of a `POST`: the headers announcing `content_length`
/// bytes and the first `body_prefix` bytes, then reads the reply without
/// sending the rest. Plain HTTP/1.1 to `addr` (`127.0.0.1:PORT`). Shows that a
/// server decides (e.g. 413 on the announced length) before reading the body.
pub fn post_prefix(
    addr: &str,
    path: &str,
    token: Option<&str>,
    content_length: usize,
    body_prefix: &[u8],
) -> anyhow::Result<Reply> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {}\r\nContent-Length: {content_length}\r\n",
        hubwatch_shared::codec::CONTENT_TYPE
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body_prefix)?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&chunk[..n]);
                if response_complete(&response) {
                    break;
                }
            }
            Err(e) if response_complete(&response) => {
                let _ = e;
                break;
            }
            Err(e) => return Err(e).context("reading the reply"),
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("no HTTP status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok(Reply { status, body })
}

/// Whether `response` holds a whole header block and as much body as its
/// `Content-Length` says.
fn response_complete(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok());
    match length {
        Some(length) => body.len() >= length,
        None => false,
    }
}
