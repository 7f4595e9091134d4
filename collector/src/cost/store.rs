//! Cost recovery's persistence seam: [`CostStore`] (what `costs import`, the
//! period close and a report need, in domain types), with [`SqliteCost`] on
//! the embedded store and [`PgCost`] on PostgreSQL (tables `cost_imports`,
//! `cost_bills`, `cost_bill_changes`, `cost_closed_periods`; schemas in
//! `store/schema.rs` and `store/pg/schema.rs`); [`cost_store`] picks one for
//! a [`Storage`]. Nothing else in `cost/` issues SQL.
//!
//! An import is one transaction: the file's SHA-256 is recorded with the
//! bills it carries, so importing the same file again finds the hash and
//! changes nothing; a different file naming the same (cluster, month)
//! replaces that bill and the replacement is recorded in `cost_bill_changes`.
//! A closed period is inserted once and never rewritten (a trigger refuses
//! any update).

mod pg;

use std::sync::Arc;

use hubwatch_shared::config::Period;
use rusqlite::{OptionalExtension, params};

use super::close::ClosedPeriod;
use crate::store::{Storage, Store, StoreError};

pub use pg::{COST_IMPORT_LOCK, PgCost};

/// The cost store on `store`'s backend.
pub fn cost_store(store: &Storage) -> Arc<dyn CostStore> {
    match store {
        Storage::Sqlite(store) => Arc::new(SqliteCost::new(store.clone())),
        Storage::Postgres(store) => Arc::new(PgCost::new(store.clone())),
    }
}

/// One cluster's bill for one month, summed from a FOCUS file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillTotal {
    /// The `[[clusters]]` id.
    pub cluster: String,
    /// The month billed.
    pub period: Period,
    /// The sum of the rows' `BilledCost`, micro-units.
    pub amount_micros: u64,
    /// How many CSV rows were summed into it.
    pub rows: u64,
}

/// A bill in force, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBill {
    /// The bill.
    pub total: BillTotal,
    /// Its currency (the model's at import time).
    pub currency: String,
    /// SHA-256 of the file it came from.
    pub sha256: String,
    /// When it was imported, Unix ms.
    pub imported_at_ms: i64,
}

/// A bill an import replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillChange {
    /// The cluster.
    pub cluster: String,
    /// The month.
    pub period: Period,
    /// The amount before, micro-units.
    pub old_micros: u64,
    /// The amount now, micro-units.
    pub new_micros: u64,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// A file with this SHA-256 was imported before: nothing changed.
    AlreadyImported {
        /// When it was, Unix ms.
        imported_at_ms: i64,
    },
    /// The bills are stored.
    Imported {
        /// (cluster, month) pairs that had no imported bill before.
        added: u64,
        /// Bills that replaced an earlier import's (amount changed).
        changed: Vec<BillChange>,
        /// Bills whose amount an earlier import already held.
        unchanged: u64,
    },
}

/// What cost recovery stores.
pub trait CostStore: Send + Sync {
    /// Stores the bills of the file with `sha256` in one transaction, unless
    /// that file was imported before.
    fn import(
        &self,
        sha256: &str,
        file_name: &str,
        rows: u64,
        currency: &str,
        bills: &[BillTotal],
        now_ms: i64,
    ) -> Result<ImportOutcome, StoreError>;

    /// The imported bills in force for `period`, by cluster.
    fn bills(&self, period: Period) -> Result<Vec<StoredBill>, StoreError>;

    /// Stores a closed period; `false` (and nothing written) when the period
    /// was closed before.
    fn close(&self, closed: &ClosedPeriod) -> Result<bool, StoreError>;

    /// A closed period's frozen record.
    fn closed(&self, period: Period) -> Result<Option<ClosedPeriod>, StoreError>;

    /// Every closed period, oldest first.
    fn closed_periods(&self) -> Result<Vec<Period>, StoreError>;
}

/// [`CostStore`] on the embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteCost {
    store: Store,
}

impl SqliteCost {
    /// On `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A stored text that should be a period but is not: the file is corrupt.
fn bad_period(column: usize, text: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!("stored period {text:?} is not YYYY-MM").into(),
    )
}

impl CostStore for SqliteCost {
    fn import(
        &self,
        sha256: &str,
        file_name: &str,
        rows: u64,
        currency: &str,
        bills: &[BillTotal],
        now_ms: i64,
    ) -> Result<ImportOutcome, StoreError> {
        self.store.write_with("importing a FOCUS bill", |tx| {
            let before: Option<i64> = tx
                .query_row(
                    "SELECT imported_at FROM cost_imports WHERE sha256 = ?1",
                    params![sha256],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(imported_at_ms) = before {
                return Ok(ImportOutcome::AlreadyImported { imported_at_ms });
            }
            tx.execute(
                "INSERT INTO cost_imports (sha256, imported_at, file_name, rows)
                 VALUES (?1, ?2, ?3, ?4)",
                params![sha256, now_ms, file_name, to_sql(rows)],
            )?;
            let (mut added, mut unchanged, mut changed) = (0u64, 0u64, Vec::new());
            for bill in bills {
                let period = bill.period.to_string();
                let old: Option<(i64, String)> = tx
                    .query_row(
                        "SELECT amount_micros, sha256 FROM cost_bills
                         WHERE cluster = ?1 AND period = ?2",
                        params![bill.cluster, period],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                match &old {
                    None => added += 1,
                    Some((amount, _)) if from_sql(*amount) == bill.amount_micros => unchanged += 1,
                    Some((amount, old_sha)) => {
                        tx.execute(
                            "INSERT INTO cost_bill_changes (cluster, period, old_micros,
                                 old_sha256, new_micros, new_sha256, changed_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                            params![
                                bill.cluster,
                                period,
                                amount,
                                old_sha,
                                to_sql(bill.amount_micros),
                                sha256,
                                now_ms
                            ],
                        )?;
                        changed.push(BillChange {
                            cluster: bill.cluster.clone(),
                            period: bill.period,
                            old_micros: from_sql(*amount),
                            new_micros: bill.amount_micros,
                        });
                    }
                }
                tx.execute(
                    "INSERT INTO cost_bills (cluster, period, amount_micros, currency, rows,
                         sha256, imported_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (cluster, period) DO UPDATE SET
                         amount_micros = excluded.amount_micros, currency = excluded.currency,
                         rows = excluded.rows, sha256 = excluded.sha256,
                         imported_at = excluded.imported_at",
                    params![
                        bill.cluster,
                        period,
                        to_sql(bill.amount_micros),
                        currency,
                        to_sql(bill.rows),
                        sha256,
                        now_ms
                    ],
                )?;
            }
            Ok(ImportOutcome::Imported {
                added,
                changed,
                unchanged,
            })
        })
    }

    fn bills(&self, period: Period) -> Result<Vec<StoredBill>, StoreError> {
        self.store.read_with("reading imported bills", |conn| {
            let mut statement = conn.prepare(
                "SELECT cluster, amount_micros, currency, rows, sha256, imported_at
                 FROM cost_bills WHERE period = ?1 ORDER BY cluster",
            )?;
            let rows = statement.query_map(params![period.to_string()], |row| {
                Ok(StoredBill {
                    total: BillTotal {
                        cluster: row.get(0)?,
                        period,
                        amount_micros: from_sql(row.get(1)?),
                        rows: from_sql(row.get(3)?),
                    },
                    currency: row.get(2)?,
                    sha256: row.get(4)?,
                    imported_at_ms: row.get(5)?,
                })
            })?;
            rows.collect()
        })
    }

    fn close(&self, closed: &ClosedPeriod) -> Result<bool, StoreError> {
        let snapshot = serde_json::to_string(closed)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)));
        self.store.write_with("closing a cost period", |tx| {
            let snapshot = snapshot?;
            // OR IGNORE: a period closed once stays as it was.
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO cost_closed_periods
                     (period, closed_at, model_hash, model_text, snapshot)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    closed.period.to_string(),
                    closed.closed_at_ms,
                    closed.model_hash,
                    closed.model_text,
                    snapshot
                ],
            )?;
            Ok(inserted == 1)
        })
    }

    fn closed(&self, period: Period) -> Result<Option<ClosedPeriod>, StoreError> {
        self.store
            .read_with("reading a closed cost period", |conn| {
                let text: Option<String> = conn
                    .query_row(
                        "SELECT snapshot FROM cost_closed_periods WHERE period = ?1",
                        params![period.to_string()],
                        |row| row.get(0),
                    )
                    .optional()?;
                text.map(|t| {
                    serde_json::from_str::<ClosedPeriod>(&t).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            0,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })
                })
                .transpose()
            })
    }

    fn closed_periods(&self) -> Result<Vec<Period>, StoreError> {
        self.store.read_with("listing closed cost periods", |conn| {
            let mut statement =
                conn.prepare("SELECT period FROM cost_closed_periods ORDER BY period")?;
            let rows = statement.query_map([], |row| {
                let text: String = row.get(0)?;
                Period::parse(&text).map_err(|_| bad_period(0, &text))
            })?;
            rows.collect()
        })
    }
}
