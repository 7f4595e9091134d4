//! `hubwatch-agent health`: asks the running agent's own `/healthz` on
//! `[agent] listen` (plain HTTP; an unspecified address is asked on
//! loopback) and turns the answer into an exit code, for a container
//! `HEALTHCHECK` in an image without a shell or curl.
//!
//! One blocking HTTP/1.0 exchange over `std::net`: the check runs once and
//! exits, so it needs no async runtime.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// The path asked.
pub const HEALTH_PATH: &str = "/healthz";

/// Largest answer read; the status line is all that matters.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// Why the agent is not healthy, or could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Connect, write or read failed (nothing listening, timeout...).
    #[error("{addr}: {reason}")]
    Io {
        /// The address asked.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// An answer that is not HTTP 200.
    #[error("http://{addr}{HEALTH_PATH} answered {status_line:?}")]
    NotHealthy {
        /// The address asked.
        addr: SocketAddr,
        /// The answer's first line.
        status_line: String,
    },
}

/// Where the agent listening on `listen` is asked: an unspecified address
/// (`0.0.0.0`, `::`) becomes loopback of its family.
pub fn local_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Asks `GET /healthz` of the agent listening on `listen`, every step within
/// `timeout`; `Ok` with the URL asked when it answered 200.
pub fn check(listen: SocketAddr, timeout: Duration) -> Result<String, HealthError> {
    let addr = local_addr(listen);
    let io = |e: std::io::Error| HealthError::Io {
        addr,
        reason: e.to_string(),
    };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request =
        format!("GET {HEALTH_PATH} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut answer)
        .map_err(io)?;
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or("").to_string();
    let mut parts = status_line.split_whitespace();
    let is_http = parts.next().is_some_and(|v| v.starts_with("HTTP/1."));
    if is_http && parts.next() == Some("200") {
        Ok(format!("http://{addr}{HEALTH_PATH}"))
    } else {
        Err(HealthError::NotHealthy { addr, status_line })
    }
}

#[cfg(test)]
mod tests;
