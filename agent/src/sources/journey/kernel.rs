//! The execute phase: the kernel's websocket (`api/kernels/{id}/channels`,
//! Jupyter messaging protocol 5.x as JSON text frames, no subprotocol, so
//! every Jupyter Server speaks it), an `execute_request` on the shell channel,
//! and its outputs read back from iopub.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Uri, header};
use hubwatch_shared::wire::FailureKind;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::PhaseError;

/// What one `execute_request` gave back.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Executed {
    /// Everything written to `stdout` on iopub for this request.
    pub stdout: String,
}

/// An open kernel connection.
pub struct KernelChannels {
    socket: Box<dyn Socket>,
    session: String,
}

/// The websocket over TCP or TLS.
trait Socket:
    futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
    + futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
    + Unpin
    + Send
{
}

impl<S> Socket for tokio_tungstenite::WebSocketStream<S> where
    S: AsyncRead + AsyncWrite + Unpin + Send
{
}

/// `ws(s)://…/api/kernels/{id}/channels` for the server at `server_url`
/// (`http(s)://host/user/name/`).
pub fn channels_url(server_url: &str, kernel_id: &str) -> String {
    let ws = if let Some(rest) = server_url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = server_url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        server_url.to_string()
    };
    format!("{ws}api/kernels/{kernel_id}/channels")
}

impl KernelChannels {
    /// Connects with the token in the `Authorization` header.
    pub async fn connect(url: &str, token: &str) -> Result<Self, PhaseError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| PhaseError::other(format!("kernel channels URL: {e}")))?;
        let tls = uri.scheme_str() == Some("wss");
        let host = uri
            .host()
            .ok_or_else(|| PhaseError::other("kernel channels URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let mut request = url
            .into_client_request()
            .map_err(|e| PhaseError::other(format!("websocket request: {e}")))?;
        let auth = HeaderValue::from_str(&format!("token {token}"))
            .map_err(|_| PhaseError::other("the token cannot go in a header".into()))?;
        request.headers_mut().insert(header::AUTHORIZATION, auth);
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| {
                PhaseError::new(FailureKind::Connect, format!("websocket connect: {e}"))
            })?;
        let socket: Box<dyn Socket> = if tls {
            let config = crate::sources::jupyterhub::client::tls_config(url)
                .map_err(|e| PhaseError::new(FailureKind::Tls, e))?;
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| PhaseError::new(FailureKind::Tls, format!("server name: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| PhaseError::new(FailureKind::Tls, format!("websocket TLS: {e}")))?;
            Box::new(handshake(request, stream).await?)
        } else {
            Box::new(handshake(request, tcp).await?)
        };
        Ok(Self {
            socket,
            session: random_hex(),
        })
    }

    /// Runs `code` and waits for its `execute_reply` and, when `want` is
    /// given, for `want` on stdout (or the kernel going idle without it).
    /// An error reply fails with its `ename: evalue`.
    pub async fn execute(
        &mut self,
        code: &str,
        want: Option<&str>,
    ) -> Result<Executed, PhaseError> {
        let msg_id = random_hex();
        let request = execute_request(&msg_id, &self.session, code);
        self.socket
            .send(Message::text(request.to_string()))
            .await
            .map_err(|e| PhaseError::other(format!("websocket send: {e}")))?;
        let mut executed = Executed::default();
        let mut replied = false;
        let mut idle = false;
        loop {
            if replied && want.is_none_or(|w| executed.stdout.contains(w)) {
                return Ok(executed);
            }
            if replied && idle {
                return Err(PhaseError::other(format!(
                    "the kernel ran the code but its stdout did not carry the nonce \
                     (got {} bytes of stdout)",
                    executed.stdout.len()
                )));
            }
            let message = match self.socket.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Err(PhaseError::other(format!("websocket: {e}"))),
                None => return Err(PhaseError::other("the kernel closed the websocket".into())),
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(_) => {
                    return Err(PhaseError::other("the kernel closed the websocket".into()));
                }
                _ => continue,
            };
            let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            match read_message(&value, &msg_id) {
                // Bounded: only as much as could still hold the nonce matters.
                Some(Reply::Stdout(text)) if executed.stdout.len() < 64 * 1024 => {
                    executed.stdout.push_str(&text);
                }
                Some(Reply::Idle) => idle = true,
                Some(Reply::Done) => replied = true,
                Some(Reply::Failed(reason)) => {
                    return Err(PhaseError::other(reason));
                }
                Some(Reply::Stdout(_)) | None => {}
            }
        }
    }

    /// Closes the websocket (best effort).
    pub async fn close(mut self) {
        let _ = self.socket.close().await;
    }
}

async fn handshake<S>(
    request: http::Request<()>,
    stream: S,
) -> Result<tokio_tungstenite::WebSocketStream<S>, PhaseError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (socket, _response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(response) => PhaseError::new(
                FailureKind::Http,
                format!(
                    "websocket upgrade refused: HTTP {}",
                    response.status().as_u16()
                ),
            ),
            other => PhaseError::other(format!("websocket handshake: {other}")),
        })?;
    Ok(socket)
}

/// What a kernel message means for the request `msg_id`.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Text on stdout.
    Stdout(String),
    /// The kernel went idle after the request.
    Idle,
    /// `execute_reply` with status ok.
    Done,
    /// `execute_reply` with an error: `ename: evalue`.
    Failed(String),
}

/// Reads one message of the channels websocket; `None` for anything that is
/// not about `msg_id` or does not matter here.
pub fn read_message(value: &Value, msg_id: &str) -> Option<Reply> {
    if value.pointer("/parent_header/msg_id")?.as_str()? != msg_id {
        return None;
    }
    let channel = value.get("channel").and_then(Value::as_str).unwrap_or("");
    let msg_type = value.pointer("/header/msg_type").and_then(Value::as_str)?;
    let content = value.get("content")?;
    match (channel, msg_type) {
        ("iopub", "stream") if content.get("name")?.as_str()? == "stdout" => {
            Some(Reply::Stdout(content.get("text")?.as_str()?.to_string()))
        }
        ("iopub", "status") if content.get("execution_state")?.as_str()? == "idle" => {
            Some(Reply::Idle)
        }
        ("shell", "execute_reply") => match content.get("status").and_then(Value::as_str) {
            Some("ok") => Some(Reply::Done),
            status => {
                let field = |k: &str| {
                    content
                        .get(k)
                        .and_then(Value::as_str)
                        .map(|s| s.chars().take(200).collect::<String>())
                };
                Some(Reply::Failed(match (field("ename"), field("evalue")) {
                    (Some(name), Some(value)) => format!("{name}: {value}"),
                    (Some(name), None) => name,
                    _ => format!("execute_reply status {}", status.unwrap_or("missing")),
                }))
            }
        },
        _ => None,
    }
}

/// An `execute_request` (messaging protocol 5.3) on the shell channel.
pub fn execute_request(msg_id: &str, session: &str, code: &str) -> Value {
    json!({
        "header": {
            "msg_id": msg_id,
            "username": "hubwatch",
            "session": session,
            "msg_type": "execute_request",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": false,
            "store_history": false,
            "user_expressions": {},
            "allow_stdin": false,
            "stop_on_error": true,
        },
        "buffers": [],
        "channel": "shell",
    })
}

/// The code that prints `nonce` without containing it: the kernel has to
/// run it (join the two halves) for the nonce to come back, so the echo of
/// the code on iopub (`execute_input`) can never pass for its output.
pub fn nonce_code(nonce: &str) -> String {
    let mid = nonce.len() / 2;
    let (a, b) = nonce.split_at(mid);
    format!("print({a:?} + {b:?})")
}

/// 128 random bits as hex.
pub fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}
