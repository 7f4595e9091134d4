//! What went wrong with a request, by the step it happened in.

use std::error::Error;
use std::io;

use hubwatch_shared::wire::FailureKind;

/// The step a request failed in. Finer than the wire's [`FailureKind`]
/// (see [`Failure::kind`]): a refused connect and a certificate that does not
/// verify are told apart, because an operator fixes them differently (start
/// the service; fix the CA or the certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The name did not resolve, or resolved to no address.
    Dns,
    /// The peer refused the TCP connection: nothing listens on the port.
    ConnectRefused,
    /// Another TCP connect failure (unreachable, reset during connect).
    Connect,
    /// A step did not finish within the deadline.
    Timeout,
    /// The peer's certificate did not verify: unknown issuer, expired, not
    /// valid for the name, or none presented.
    TlsCertificate,
    /// Another TLS failure: protocol mismatch, an alert from the peer, a name
    /// that cannot be a TLS server name.
    Tls,
    /// A complete response whose status is outside 2xx.
    HttpStatus(u16),
    /// The response body is over the caller's cap.
    BodyTooLarge,
    /// Anything else: the HTTP exchange broke off.
    Other,
}

impl Failure {
    /// The wire's coarser kind, as carried in health records.
    pub fn kind(self) -> FailureKind {
        match self {
            Self::Dns => FailureKind::Dns,
            Self::ConnectRefused | Self::Connect => FailureKind::Connect,
            Self::Timeout => FailureKind::Timeout,
            Self::TlsCertificate | Self::Tls => FailureKind::Tls,
            Self::HttpStatus(_) => FailureKind::Http,
            Self::BodyTooLarge => FailureKind::Parse,
            Self::Other => FailureKind::Other,
        }
    }

    /// `HttpStatus(status)` for a status outside 2xx, `None` for a success.
    pub fn from_status(status: u16) -> Option<Self> {
        (!(200..300).contains(&status)).then_some(Self::HttpStatus(status))
    }

    /// Whether this is a TLS failure of either kind.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::TlsCertificate | Self::Tls)
    }

    /// Classifies an error from any client (tokio, tokio-rustls, hyper,
    /// hyper-util's pooled client) by walking its chain of sources: a rustls
    /// error anywhere makes it TLS (certificate or other), then the first
    /// telling `io::ErrorKind`, then hyper-util's DNS message; otherwise
    /// [`Failure::Other`]. The pooled clients' callers use this where
    /// [`crate::send`] classifies by step.
    pub fn classify_error(error: &(dyn Error + 'static)) -> Self {
        let mut io_kind = None;
        let mut dns = false;
        let mut next = Some(error);
        while let Some(current) = next {
            if let Some(tls) = current.downcast_ref::<rustls::Error>() {
                return Self::from_rustls(tls);
            }
            // hyper-util's connector reports a failed lookup as "dns error"
            // (its error type is private, so its message is the only sign).
            dns |= current.to_string().starts_with("dns error");
            next = current.source();
            if let Some(io) = current.downcast_ref::<io::Error>() {
                io_kind = io_kind.or(Self::from_io_kind(io.kind()));
                // An io::Error's `source()` skips the error it wraps (where
                // tokio-rustls puts the rustls error, sometimes inside another
                // io::Error), so go inside instead.
                if let Some(inner) = io.get_ref() {
                    next = Some(inner as &(dyn Error + 'static));
                }
            }
        }
        if dns {
            return Self::Dns;
        }
        io_kind.unwrap_or(Self::Other)
    }

    /// A rustls error: certificate verification or other TLS.
    pub fn from_rustls(error: &rustls::Error) -> Self {
        match error {
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                Self::TlsCertificate
            }
            _ => Self::Tls,
        }
    }

    /// The failure an `io::ErrorKind` names, if it names one.
    fn from_io_kind(kind: io::ErrorKind) -> Option<Self> {
        match kind {
            io::ErrorKind::ConnectionRefused => Some(Self::ConnectRefused),
            io::ErrorKind::TimedOut => Some(Self::Timeout),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable => Some(Self::Connect),
            _ => None,
        }
    }
}

/// An error and its causes as one line, `outer: cause: root`, a cause that
/// only repeats the previous text left out (hyper-util's errors often do).
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut chain: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let text = current.to_string();
        if chain.last() != Some(&text) {
            chain.push(text);
        }
        next = current.source();
    }
    chain.join(": ")
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dns => f.write_str("name resolution failed"),
            Self::ConnectRefused => f.write_str("connection refused"),
            Self::Connect => f.write_str("connect failed"),
            Self::Timeout => f.write_str("timed out"),
            Self::TlsCertificate => f.write_str("TLS certificate did not verify"),
            Self::Tls => f.write_str("TLS failed"),
            Self::HttpStatus(status) => write!(f, "HTTP status {status}"),
            Self::BodyTooLarge => f.write_str("response body too large"),
            Self::Other => f.write_str("HTTP exchange failed"),
        }
    }
}
