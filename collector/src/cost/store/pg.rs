//! [`CostStore`] on PostgreSQL ([`PgCost`]): the same tables
//! (`cost_imports`, `cost_bills`, `cost_bill_changes`,
//! `cost_closed_periods`; schema in `store/pg/schema.rs`) and semantics as
//! [`super::SqliteCost`].
//!
//! Several replicas (or a `costs import` run beside `serve`) may write at
//! once: an import takes the transaction-scoped advisory lock
//! [`COST_IMPORT_LOCK`] before it reads the bills it replaces, so two
//! imports never both record the same change or lose one's replacement
//! (the second waits and then sees the first's rows, or finds its file
//! already imported). Bills are written in (cluster, period) order. A
//! closed period is inserted with `ON CONFLICT DO NOTHING` (two closes of
//! one month: one wins, the other reports `false`) and a trigger refuses any
//! update.

use hubwatch_shared::config::Period;

use super::{BillChange, BillTotal, CostStore, ImportOutcome, StoredBill, from_sql, to_sql};
use crate::cost::close::ClosedPeriod;
use crate::store::StoreError;
use crate::store::pg::PgStore;

/// The advisory lock key every FOCUS import takes, for its transaction
/// ("hwcostim" in ASCII).
pub const COST_IMPORT_LOCK: i64 = 0x6877_636f_7374_696d;

/// [`CostStore`] on the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgCost {
    store: PgStore,
}

impl PgCost {
    /// On `store`.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }

    /// Stored data that does not read back: the error names the table and
    /// the value.
    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.store.name().into(),
            detail,
        }
    }

    fn period(&self, text: &str) -> Result<Period, StoreError> {
        Period::parse(text)
            .map_err(|_| self.corrupt(format!("cost: stored period {text:?} is not YYYY-MM")))
    }
}

impl CostStore for PgCost {
    fn import(
        &self,
        sha256: &str,
        file_name: &str,
        rows: u64,
        currency: &str,
        bills: &[BillTotal],
        now_ms: i64,
    ) -> Result<ImportOutcome, StoreError> {
        // Key order, as every writer of cost_bills; a repeated key keeps its
        // input order (the last one wins, as on SQLite).
        let mut sorted: Vec<(&BillTotal, String)> =
            bills.iter().map(|b| (b, b.period.to_string())).collect();
        sorted.sort_by(|(a, ap), (b, bp)| (&a.cluster, ap).cmp(&(&b.cluster, bp)));
        self.store.write_with("importing a FOCUS bill", async |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&COST_IMPORT_LOCK])
                .await?;
            let before = tx
                .query_opt(
                    "SELECT imported_at FROM cost_imports WHERE sha256 = $1",
                    &[&sha256],
                )
                .await?;
            if let Some(row) = before {
                return Ok(ImportOutcome::AlreadyImported {
                    imported_at_ms: row.try_get(0)?,
                });
            }
            tx.execute(
                "INSERT INTO cost_imports (sha256, imported_at, file_name, rows)
                     VALUES ($1, $2, $3, $4)",
                &[&sha256, &now_ms, &file_name, &to_sql(rows)],
            )
            .await?;
            let select = tx
                .prepare_cached(
                    "SELECT amount_micros, sha256 FROM cost_bills
                         WHERE cluster = $1 AND period = $2",
                )
                .await?;
            let record = tx
                .prepare_cached(
                    "INSERT INTO cost_bill_changes (cluster, period, old_micros,
                             old_sha256, new_micros, new_sha256, changed_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .await?;
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO cost_bills (cluster, period, amount_micros, currency, rows,
                             sha256, imported_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (cluster, period) DO UPDATE SET
                             amount_micros = excluded.amount_micros,
                             currency = excluded.currency, rows = excluded.rows,
                             sha256 = excluded.sha256, imported_at = excluded.imported_at",
                )
                .await?;
            let (mut added, mut unchanged, mut changed) = (0u64, 0u64, Vec::new());
            for (bill, period) in &sorted {
                let old = tx.query_opt(&select, &[&bill.cluster, period]).await?;
                match old {
                    None => added += 1,
                    Some(row) => {
                        let amount: i64 = row.try_get(0)?;
                        let old_sha: String = row.try_get(1)?;
                        if from_sql(amount) == bill.amount_micros {
                            unchanged += 1;
                        } else {
                            tx.execute(
                                &record,
                                &[
                                    &bill.cluster,
                                    period,
                                    &amount,
                                    &old_sha,
                                    &to_sql(bill.amount_micros),
                                    &sha256,
                                    &now_ms,
                                ],
                            )
                            .await?;
                            changed.push(BillChange {
                                cluster: bill.cluster.clone(),
                                period: bill.period,
                                old_micros: from_sql(amount),
                                new_micros: bill.amount_micros,
                            });
                        }
                    }
                }
                tx.execute(
                    &upsert,
                    &[
                        &bill.cluster,
                        period,
                        &to_sql(bill.amount_micros),
                        &currency,
                        &to_sql(bill.rows),
                        &sha256,
                        &now_ms,
                    ],
                )
                .await?;
            }
            Ok(ImportOutcome::Imported {
                added,
                changed,
                unchanged,
            })
        })
    }

    fn bills(&self, period: Period) -> Result<Vec<StoredBill>, StoreError> {
        let text = period.to_string();
        let rows = self
            .store
            .read_with("reading imported bills", async |client| {
                let mut out = Vec::new();
                // Clusters compared bytewise, as SQLite orders them.
                for row in client
                    .query(
                        "SELECT cluster, amount_micros, currency, rows, sha256, imported_at
                     FROM cost_bills WHERE period = $1 ORDER BY cluster COLLATE \"C\"",
                        &[&text],
                    )
                    .await?
                {
                    out.push(StoredBill {
                        total: BillTotal {
                            cluster: row.try_get(0)?,
                            period,
                            amount_micros: from_sql(row.try_get(1)?),
                            rows: from_sql(row.try_get(3)?),
                        },
                        currency: row.try_get(2)?,
                        sha256: row.try_get(4)?,
                        imported_at_ms: row.try_get(5)?,
                    });
                }
                Ok(out)
            })?;
        Ok(rows)
    }

    fn close(&self, closed: &ClosedPeriod) -> Result<bool, StoreError> {
        let snapshot = serde_json::to_string(closed).map_err(|e| {
            self.corrupt(format!(
                "cost: closed period {} does not serialise: {e}",
                closed.period
            ))
        })?;
        let period = closed.period.to_string();
        self.store.write_with("closing a cost period", async |tx| {
            // DO NOTHING: a period closed once stays as it was.
            let inserted = tx
                .execute(
                    "INSERT INTO cost_closed_periods
                         (period, closed_at, model_hash, model_text, snapshot)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (period) DO NOTHING",
                    &[
                        &period,
                        &closed.closed_at_ms,
                        &closed.model_hash,
                        &closed.model_text,
                        &snapshot,
                    ],
                )
                .await?;
            Ok(inserted == 1)
        })
    }

    fn closed(&self, period: Period) -> Result<Option<ClosedPeriod>, StoreError> {
        let text = period.to_string();
        let snapshot: Option<String> =
            self.store
                .read_with("reading a closed cost period", async |client| {
                    client
                        .query_opt(
                            "SELECT snapshot FROM cost_closed_periods WHERE period = $1",
                            &[&text],
                        )
                        .await?
                        .map(|row| row.try_get(0))
                        .transpose()
                        .map_err(Into::into)
                })?;
        snapshot
            .map(|json| {
                serde_json::from_str::<ClosedPeriod>(&json).map_err(|e| {
                    self.corrupt(format!(
                        "cost: the closed period {period} does not read back: {e}"
                    ))
                })
            })
            .transpose()
    }

    fn closed_periods(&self) -> Result<Vec<Period>, StoreError> {
        let texts: Vec<String> =
            self.store
                .read_with("listing closed cost periods", async |client| {
                    let mut out = Vec::new();
                    for row in client
                        .query(
                            "SELECT period FROM cost_closed_periods ORDER BY period COLLATE \"C\"",
                            &[],
                        )
                        .await?
                    {
                        out.push(row.try_get(0)?);
                    }
                    Ok(out)
                })?;
        texts.iter().map(|text| self.period(text)).collect()
    }
}
