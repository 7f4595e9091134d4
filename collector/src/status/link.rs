//! Signed links to a private status page: `?exp=<unix seconds>&sig=<hex>`,
//! where `sig` is HMAC-SHA256 under the collector's link key over the
//! member id and the expiry. The key is 32 random bytes made on first use
//! and kept in the store (`status_link_key`, in SQLite or PostgreSQL), so
//! `hubwatch-collector status-link`, the running collector and its replicas
//! share it and a restart keeps every link valid; deleting the row revokes
//! every link.

use hmac::{Hmac, Mac};
use rusqlite::OptionalExtension;
use sha2::Sha256;

use crate::store::{Storage, StoreError};

type HmacSha256 = Hmac<Sha256>;

/// Why a signed link is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// `exp` or `sig` missing, not a number, or not hex.
    #[error("malformed signed link: {0}")]
    Malformed(&'static str),
    /// The link's expiry has passed.
    #[error("the signed link expired")]
    Expired,
    /// The signature does not match this member and expiry.
    #[error("the link's signature is not valid for this page")]
    BadSignature,
}

/// The collector's link-signing key.
#[derive(Clone)]
pub struct LinkKey([u8; 32]);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("LinkKey(..)")
    }
}

impl LinkKey {
    /// A key from its bytes (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The store's key, made (random) and saved on first use, on either
    /// backend. Replicas starting at once agree: the first insert wins, the
    /// others read its key. Blocking.
    pub fn load_or_create(store: &Storage) -> Result<Self, StoreError> {
        let fresh: [u8; 32] = rand::random();
        let key: Vec<u8> = match store {
            Storage::Sqlite(store) => store.write_with("reading the status link key", |tx| {
                tx.execute(
                    "INSERT OR IGNORE INTO status_link_key (id, key) VALUES (1, ?1)",
                    [&fresh[..]],
                )?;
                let key: Option<Vec<u8>> = tx
                    .query_row("SELECT key FROM status_link_key WHERE id = 1", [], |row| {
                        row.get(0)
                    })
                    .optional()?;
                Ok(key.unwrap_or_else(|| fresh.to_vec()))
            })?,
            Storage::Postgres(store) => {
                store.write_with("reading the status link key", async |tx| {
                    tx.execute(
                        "INSERT INTO status_link_key (id, key) VALUES (1, $1)
                         ON CONFLICT (id) DO NOTHING",
                        &[&&fresh[..]],
                    )
                    .await?;
                    let key: Option<Vec<u8>> = tx
                        .query_opt("SELECT key FROM status_link_key WHERE id = 1", &[])
                        .await?
                        .map(|row| row.try_get(0))
                        .transpose()?;
                    Ok(key.unwrap_or_else(|| fresh.to_vec()))
                })?
            }
        };
        let mut bytes = [0u8; 32];
        if key.len() == bytes.len() {
            bytes.copy_from_slice(&key);
        } else {
            // A key of another length (edited by hand) would weaken or
            // break every link; hash it to the size instead of failing.
            use sha2::Digest;
            bytes.copy_from_slice(&Sha256::digest(&key));
        }
        Ok(Self(bytes))
    }

    fn mac(&self, member: &str, expires_s: i64) -> HmacSha256 {
        // `new_from_slice` accepts any key length for HMAC.
        let mut mac = match HmacSha256::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable_hmac(),
        };
        // The member id cannot hold a NUL (config names are checked), so
        // the message is unambiguous.
        mac.update(b"hubwatch-status-link\0");
        mac.update(member.as_bytes());
        mac.update(b"\0");
        mac.update(expires_s.to_string().as_bytes());
        mac
    }

    /// The query string (`exp=...&sig=...`) of a link to `member`'s page
    /// valid until `expires_s` (Unix seconds).
    pub fn query(&self, member: &str, expires_s: i64) -> String {
        let sig = hex::encode(self.mac(member, expires_s).finalize().into_bytes());
        format!("exp={expires_s}&sig={sig}")
    }

    /// Checks `exp` and `sig` (as given in the query) for `member` at
    /// `now_ms`; the comparison is constant-time.
    pub fn verify(
        &self,
        member: &str,
        exp: Option<&str>,
        sig: Option<&str>,
        now_ms: i64,
    ) -> Result<(), LinkError> {
        let exp = exp.ok_or(LinkError::Malformed("no exp"))?;
        let sig = sig.ok_or(LinkError::Malformed("no sig"))?;
        let expires_s: i64 = exp
            .parse()
            .map_err(|_| LinkError::Malformed("exp is not a number"))?;
        let sig = hex::decode(sig).map_err(|_| LinkError::Malformed("sig is not hex"))?;
        self.mac(member, expires_s)
            .verify_slice(&sig)
            .map_err(|_| LinkError::BadSignature)?;
        if now_ms.div_euclid(1000) >= expires_s {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

/// HMAC takes a key of any length; this cannot be reached.
#[cold]
fn unreachable_hmac() -> ! {
    unreachable!("HMAC-SHA256 accepts a 32-byte key")
}
