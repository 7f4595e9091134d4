//! Who is calling: turns a bearer token and/or a verified client certificate
//! into a [`Credential`] (the agent and, always from the credential, its
//! member).
//!
//! Tokens live hashed (SHA-256) in the store's `tokens` table. The server keeps
//! an in-memory copy, the [`TokenTable`], re-read every `server.token_refresh`
//! by a background task, so a token created or revoked with the CLI applies to
//! a running collector within seconds, without a restart, and the request path
//! never touches the database.
//!
//! With mTLS the certificate names the agent (first DNS SAN, else the subject
//! CN). A bearer token presented alongside must belong to that agent; without
//! one, the agent must have a live token row, which says which member it is.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::HeaderMap;
use x509_parser::extensions::GeneralName;

use crate::component::Shutdown;
use crate::store::{Storage, StoreError, TokenRow, hash_token};

#[cfg(test)]
mod tests;

/// An authenticated caller. The member always comes from here, never from a
/// payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The agent's name.
    pub agent: String,
    /// The member the agent belongs to.
    pub member: String,
    /// The HA cluster (agent pair) the token binds the agent to, if any: the
    /// replica identity is the agent, so a batch cannot claim another.
    pub ha_cluster: Option<String>,
}

/// What the TLS layer learned about the client, decided once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// No client certificate (plaintext, or TLS without mTLS).
    Anonymous,
    /// A verified client certificate naming this agent.
    Agent(String),
    /// A verified client certificate without a usable DNS SAN or CN.
    Unnamed,
}

/// Why a request's credential is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer token and no client certificate.
    #[error("no credential: send Authorization: Bearer TOKEN")]
    Missing,
    /// The token's hash is not in the table.
    #[error("unknown token")]
    Unknown,
    /// The token exists but was revoked.
    #[error("token revoked")]
    Revoked,
    /// The client certificate names no agent, or an agent without a live token.
    #[error("client certificate not accepted: {0}")]
    Certificate(String),
    /// The certificate names one agent and the token belongs to another.
    #[error(
        "client certificate names agent {certificate_agent:?} but the token belongs to agent {token_agent:?}"
    )]
    AgentMismatch {
        /// Agent named by the certificate.
        certificate_agent: String,
        /// Agent the token was issued to.
        token_agent: String,
        /// Member the token was issued to.
        token_member: String,
    },
    /// The request's source address used up its failed authentications
    /// (`server.auth_failures_burst`); the credential was not checked.
    #[error(
        "too many failed authentications from this address: retry after {} s",
        retry_after.as_secs()
    )]
    RateLimited {
        /// When the source may try again.
        retry_after: Duration,
    },
}

impl AuthError {
    /// The `reason` label of `hubwatch_collector_auth_failures_total`, or
    /// `None` for [`AuthError::AgentMismatch`], which is a 403 counted as a
    /// rejected ingest instead, and for [`AuthError::RateLimited`] (a 429
    /// counted in `hubwatch_collector_auth_rate_limited_total`).
    pub fn failure_reason(&self) -> Option<&'static str> {
        match self {
            Self::Missing => Some("missing"),
            Self::Unknown => Some("unknown"),
            Self::Revoked => Some("revoked"),
            Self::Certificate(_) => Some("certificate"),
            Self::AgentMismatch { .. } | Self::RateLimited { .. } => None,
        }
    }

    /// Whether this failure spends the source address's budget of failed
    /// authentications: a presented token that is unknown or revoked (what
    /// guessing produces). No credential at all, a certificate (verified by
    /// the CA) without a live token, or a token that belongs to another
    /// agent than its certificate are not guesses.
    pub fn is_guess(&self) -> bool {
        matches!(self, Self::Unknown | Self::Revoked)
    }
}

#[derive(Debug, Clone)]
struct TokenEntry {
    agent: String,
    member: String,
    revoked: bool,
    ha_cluster: Option<String>,
}

#[derive(Debug, Default)]
struct Tables {
    by_hash: HashMap<[u8; 32], TokenEntry>,
    /// Agent → (member, HA cluster), for agents with at least one live
    /// token (mTLS without a token; the agents listing).
    live_by_agent: HashMap<String, (String, Option<String>)>,
}

/// The in-memory token table. Cheap to clone; clones share the table.
#[derive(Clone, Default)]
pub struct TokenTable {
    tables: Arc<RwLock<Tables>>,
}

impl TokenTable {
    /// An empty table (every token is unknown).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the table from the store (blocking).
    pub fn load(store: &Storage) -> Result<Self, StoreError> {
        let table = Self::new();
        table.replace(store.tokens()?);
        Ok(table)
    }

    /// Replaces the whole table with these rows.
    pub fn replace(&self, rows: Vec<TokenRow>) {
        let mut next = Tables::default();
        for row in rows {
            if !row.revoked {
                next.live_by_agent.insert(
                    row.agent.clone(),
                    (row.member.clone(), row.ha_cluster.clone()),
                );
            }
            next.by_hash.insert(
                row.token_sha256,
                TokenEntry {
                    agent: row.agent,
                    member: row.member,
                    revoked: row.revoked,
                    ha_cluster: row.ha_cluster,
                },
            );
        }
        // A poisoned lock only means another thread panicked mid-replace; the
        // map it left is still a whole map, so keep serving.
        let mut guard = self.tables.write().unwrap_or_else(|p| p.into_inner());
        *guard = next;
    }

    /// The HA cluster of each agent with a live token in one (for
    /// `/api/v1/agents`).
    pub fn ha_clusters(&self) -> HashMap<String, String> {
        let guard = self.tables.read().unwrap_or_else(|p| p.into_inner());
        guard
            .live_by_agent
            .iter()
            .filter_map(|(agent, (_, cluster))| Some((agent.clone(), cluster.clone()?)))
            .collect()
    }

    /// Number of tokens that are not revoked.
    pub fn live_count(&self) -> usize {
        let guard = self.tables.read().unwrap_or_else(|p| p.into_inner());
        guard.by_hash.values().filter(|e| !e.revoked).count()
    }

    /// Decides who is calling from an optional bearer token and what the TLS
    /// layer said about the client certificate.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        peer: &PeerIdentity,
    ) -> Result<Credential, AuthError> {
        let guard = self.tables.read().unwrap_or_else(|p| p.into_inner());
        let Some(token) = bearer else {
            return match peer {
                PeerIdentity::Anonymous => Err(AuthError::Missing),
                PeerIdentity::Unnamed => Err(AuthError::Certificate(
                    "it has neither a DNS subject alternative name nor a common name".into(),
                )),
                PeerIdentity::Agent(agent) => match guard.live_by_agent.get(agent) {
                    Some((member, ha_cluster)) => Ok(Credential {
                        agent: agent.clone(),
                        member: member.clone(),
                        ha_cluster: ha_cluster.clone(),
                    }),
                    None => Err(AuthError::Certificate(format!(
                        "agent {agent:?} has no live token, so its member is unknown"
                    ))),
                },
            };
        };
        // Looking up by the SHA-256 of the presented token needs no
        // constant-time comparison: the lookup's timing can at most reveal
        // something about the hash of the attacker's own guess, and a hash
        // does not lead back to a valid token (preimage resistance), so there
        // is nothing to learn byte by byte as with comparing secrets directly.
        let entry = guard
            .by_hash
            .get(&hash_token(token))
            .ok_or(AuthError::Unknown)?;
        if entry.revoked {
            return Err(AuthError::Revoked);
        }
        match peer {
            PeerIdentity::Anonymous => {}
            PeerIdentity::Agent(agent) if *agent == entry.agent => {}
            PeerIdentity::Agent(agent) => {
                return Err(AuthError::AgentMismatch {
                    certificate_agent: agent.clone(),
                    token_agent: entry.agent.clone(),
                    token_member: entry.member.clone(),
                });
            }
            PeerIdentity::Unnamed => {
                return Err(AuthError::Certificate(
                    "it has neither a DNS subject alternative name nor a common name".into(),
                ));
            }
        }
        Ok(Credential {
            agent: entry.agent.clone(),
            member: entry.member.clone(),
            ha_cluster: entry.ha_cluster.clone(),
        })
    }

    /// Re-reads the table from the store every `every` until `shutdown` is
    /// signalled (a read in progress completes first). A failed read keeps
    /// the previous table (logged), so a busy database cannot lock every
    /// agent out.
    pub async fn refresh_until(&self, store: Storage, every: Duration, shutdown: Shutdown) {
        let mut ticks = shutdown.every(every);
        ticks.next().await; // the first tick is immediate; the table was just loaded
        while ticks.next().await {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.tokens()).await {
                Ok(Ok(rows)) => self.replace(rows),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "token table refresh failed; keeping the previous table")
                }
                Err(e) => tracing::warn!(error = %e, "token table refresh task failed"),
            }
        }
    }
}

/// The first four hex characters of a token's hash: enough to tell tokens
/// apart in logs, useless for guessing one. The token itself is never logged.
pub fn token_fingerprint(token: &str) -> String {
    let hash = hash_token(token);
    hex::encode(&hash[..2])
}

/// Why the `Authorization` header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// Not visible ASCII, or not the `Bearer` scheme, or an empty token.
    #[error("Authorization header is not `Bearer TOKEN`")]
    Malformed,
}

/// The bearer token in the `Authorization` header, if there is one.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, BearerError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| BearerError::Malformed)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(BearerError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(BearerError::Malformed);
    }
    Ok(Some(token))
}

/// The agent a client certificate (DER) names: its first DNS subject
/// alternative name, else its subject common name. `None` when it has neither
/// or cannot be parsed (rustls has already verified its chain).
pub fn agent_from_certificate(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let dns = san.value.general_names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) if !dns.is_empty() => Some(dns.to_string()),
            _ => None,
        });
        if dns.is_some() {
            return dns;
        }
    }
    cert.subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok().map(str::to_string))
        .filter(|cn| !cn.is_empty())
}
