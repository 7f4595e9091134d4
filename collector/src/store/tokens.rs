//! Agent tokens in the store: creation, revocation, listing.
//!
//! A token is 256 bits from the OS random generator, printed as `hwt_` and 64
//! hex digits, shown once to the operator and never stored: the `tokens` table
//! keeps its SHA-256 only. Because tokens are uniformly random and long, a fast
//! unsalted hash is the right tool (nothing to brute-force), and it lets the
//! server look a presented token up by hash. Each agent name has at most one
//! row; a new token for an agent whose token is revoked replaces the row.

use rand::TryRngCore;
use rand::rngs::OsRng;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};

use super::{StoreError, TokenRow, now_ms};

/// What every token starts with, so one found in a log or a paste is recognisable.
pub const TOKEN_PREFIX: &str = "hwt_";

/// SHA-256 of a presented token, as stored in `tokens.token_sha256`.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh printable token: `hwt_` + 64 hex digits of OS randomness.
pub fn generate_token() -> Result<String, StoreError> {
    let mut secret = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut secret)
        .map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(secret)))
}

/// Creates a token for `agent` of `member` (a replica of HA cluster
/// `ha_cluster`, if given) in one immediate transaction.
pub fn create(
    conn: &mut Connection,
    path: &std::path::Path,
    member: &str,
    agent: &str,
    ha_cluster: Option<&str>,
) -> Result<String, StoreError> {
    for (what, value) in [
        ("member", member),
        ("agent", agent),
        ("ha_cluster", ha_cluster.unwrap_or("-")),
    ] {
        if value.trim().is_empty() {
            return Err(StoreError::InvalidName {
                what,
                value: value.to_owned(),
            });
        }
    }
    let sql = |operation: &'static str| {
        move |source: rusqlite::Error| StoreError::sqlite(path, operation, source)
    };
    let token = generate_token()?;
    let digest = hash_token(&token);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("creating a token"))?;
    let live_member: Option<String> = tx
        .query_row(
            "SELECT member FROM tokens WHERE agent = ?1 AND revoked_ms IS NULL",
            [agent],
            |row| row.get(0),
        )
        .optional()
        .map_err(sql("looking up the agent's token"))?;
    if let Some(member) = live_member {
        return Err(StoreError::TokenExists {
            agent: agent.to_owned(),
            member,
        });
    }
    tx.execute(
        "INSERT INTO tokens (agent, member, token_sha256, created_ms, revoked_ms, ha_cluster)
         VALUES (?1, ?2, ?3, ?4, NULL, ?5)
         ON CONFLICT (agent) DO UPDATE SET
            member = excluded.member,
            token_sha256 = excluded.token_sha256,
            created_ms = excluded.created_ms,
            revoked_ms = NULL,
            ha_cluster = excluded.ha_cluster",
        params![agent, member, &digest[..], now_ms(), ha_cluster],
    )
    .map_err(sql("storing a token"))?;
    tx.commit().map_err(sql("committing a new token"))?;
    tracing::info!(member, agent, ha_cluster, "token created");
    Ok(token)
}

/// Revokes `agent`'s live token; `false` if it had none.
pub fn revoke(
    conn: &mut Connection,
    path: &std::path::Path,
    agent: &str,
) -> Result<bool, StoreError> {
    let changed = conn
        .execute(
            "UPDATE tokens SET revoked_ms = ?2 WHERE agent = ?1 AND revoked_ms IS NULL",
            params![agent, now_ms()],
        )
        .map_err(|e| StoreError::sqlite(path, "revoking a token", e))?;
    if changed > 0 {
        tracing::info!(agent, "token revoked");
    }
    Ok(changed > 0)
}

/// Every token row, live and revoked, ordered by agent.
pub fn list(conn: &Connection, path: &std::path::Path) -> Result<Vec<TokenRow>, StoreError> {
    let sql = |source| StoreError::sqlite(path, "listing tokens", source);
    let mut statement = conn
        .prepare_cached(
            "SELECT agent, member, token_sha256, revoked_ms IS NOT NULL, ha_cluster
             FROM tokens ORDER BY agent",
        )
        .map_err(sql)?;
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, bool>(3)?,
                row.get::<_, Option<String>>(4)?,
            ))
        })
        .map_err(sql)?;
    let mut tokens = Vec::new();
    for row in rows {
        let (agent, member, digest, revoked, ha_cluster) = row.map_err(sql)?;
        let token_sha256: [u8; 32] =
            digest
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!(
                        "token hash of agent {agent:?} is {} bytes, not 32",
                        digest.len()
                    ),
                })?;
        tokens.push(TokenRow {
            agent,
            member,
            token_sha256,
            revoked,
            ha_cluster,
        });
    }
    Ok(tokens)
}
