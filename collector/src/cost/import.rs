//! `hubwatch-collector costs import`: a FOCUS 1.x cost and usage CSV summed
//! into one bill per (cluster, month).
//!
//! Parsing ([`parse_focus`]) is pure and separate from storing
//! ([`import_file`]). The rules (also in `docs/costs.md`):
//!
//! - Columns used: `BilledCost` (what the invoice charges; FOCUS requires
//!   its sum to match the invoice, which is what members must recover;
//!   `EffectiveCost` amortises commitments and would not add up to the
//!   bill), `BillingCurrency`, `BillingPeriodStart` (the first instant of a
//!   UTC calendar month: the month billed) and `SubAccountId`, which names
//!   the cluster: a `[[clusters]]` entry's `billing_account`, or its `id`
//!   when it has none. Other columns are ignored.
//! - Amounts are decimal strings (an exponent such as `1.5E-3` is allowed),
//!   parsed exactly; each row is held to 18 decimals (rounded half to even
//!   beyond that), rows are summed exactly, and each (cluster, month) total
//!   is rounded once, half to even, to micro-units.
//! - The whole file is refused, with the CSV line number and the reason,
//!   when a mandatory column is missing, a cost is negative or not a number,
//!   a `SubAccountId` names no cluster, or a currency is not the model's;
//!   nothing is imported then.

use std::collections::BTreeMap;

use hubwatch_shared::config::{CollectorConfig, Period};
use sha2::{Digest, Sha256};

use super::model::CostModel;
use super::store::{BillTotal, CostStore, ImportOutcome};
use crate::store::StoreError;

/// The columns an import needs.
pub const REQUIRED_COLUMNS: [&str; 4] = [
    "BilledCost",
    "BillingCurrency",
    "BillingPeriodStart",
    "SubAccountId",
];

/// Decimals a row's cost is held to before summing.
const ROW_DECIMALS: u32 = 18;

/// Why an import did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file was refused; nothing was imported.
    #[error("line {line}: {reason}; nothing was imported")]
    Refused {
        /// 1-based line of the CSV file.
        line: u64,
        /// Why.
        reason: String,
    },
    /// The store failed; nothing was imported.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

fn refused(line: u64, reason: impl Into<String>) -> ImportError {
    ImportError::Refused {
        line,
        reason: reason.into(),
    }
}

/// A parsed FOCUS file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedBill {
    /// Data rows read.
    pub rows: u64,
    /// One bill per (cluster, month), sorted by both.
    pub bills: Vec<BillTotal>,
}

/// FOCUS `SubAccountId` → `[[clusters]]` id: each cluster's
/// `billing_account`, or its id when unset.
pub fn account_map(cfg: &CollectorConfig) -> BTreeMap<String, String> {
    cfg.clusters
        .iter()
        .map(|c| {
            (
                c.billing_account.clone().unwrap_or_else(|| c.id.clone()),
                c.id.clone(),
            )
        })
        .collect()
}

/// Parses and sums a FOCUS CSV (see the module docs for the rules).
pub fn parse_focus(
    data: &[u8],
    currency: &str,
    accounts: &BTreeMap<String, String>,
) -> Result<ParsedBill, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(data);
    let headers = reader
        .headers()
        .map_err(|e| refused(csv_line(&e), format!("not a CSV file: {e}")))?
        .clone();
    let mut index = [0usize; 4];
    let mut missing = Vec::new();
    for (slot, name) in index.iter_mut().zip(REQUIRED_COLUMNS) {
        match headers.iter().position(|h| h.trim() == name) {
            Some(i) => *slot = i,
            None => missing.push(name),
        }
    }
    if !missing.is_empty() {
        return Err(refused(
            1,
            format!("missing mandatory column(s): {}", missing.join(", ")),
        ));
    }
    let [cost_i, currency_i, period_i, account_i] = index;
    let mut sums: BTreeMap<(String, Period), (u128, u64)> = BTreeMap::new();
    let mut rows = 0u64;
    for record in reader.records() {
        let record = record.map_err(|e| refused(csv_line(&e), format!("unreadable row: {e}")))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("").trim();
        let row_currency = field(currency_i);
        if row_currency != currency {
            return Err(refused(
                line,
                format!(
                    "BillingCurrency {row_currency:?} is not the cost model's currency {currency:?}"
                ),
            ));
        }
        let account = field(account_i);
        let Some(cluster) = accounts.get(account) else {
            return Err(refused(
                line,
                format!(
                    "SubAccountId {account:?} names no cluster (a [[clusters]] billing_account or id)"
                ),
            ));
        };
        let period = parse_period_start(field(period_i))
            .map_err(|r| refused(line, format!("BillingPeriodStart: {r}")))?;
        let cost =
            parse_cost(field(cost_i)).map_err(|r| refused(line, format!("BilledCost: {r}")))?;
        let slot = sums.entry((cluster.clone(), period)).or_default();
        slot.0 = slot.0.checked_add(cost).ok_or_else(|| {
            refused(
                line,
                "BilledCost: the sum for this cluster and month is too large",
            )
        })?;
        slot.1 += 1;
        rows += 1;
    }
    if rows == 0 {
        return Err(refused(1, "the file has no data rows"));
    }
    let mut bills = Vec::with_capacity(sums.len());
    for ((cluster, period), (exact, n)) in sums {
        let micros = round_half_even(exact, 10u128.pow(ROW_DECIMALS - 6));
        let amount_micros = u64::try_from(micros)
            .ok()
            .filter(|v| *v <= i64::MAX as u64)
            .ok_or_else(|| {
                refused(
                    1,
                    format!("the bill of cluster {cluster:?} for {period} is too large"),
                )
            })?;
        bills.push(BillTotal {
            cluster,
            period,
            amount_micros,
            rows: n,
        });
    }
    Ok(ParsedBill { rows, bills })
}

fn csv_line(e: &csv::Error) -> u64 {
    e.position().map_or(1, |p| p.line())
}

/// `value / divisor`, rounded half to even.
fn round_half_even(value: u128, divisor: u128) -> u128 {
    let (q, r) = (value / divisor, value % divisor);
    let twice = r.saturating_mul(2);
    if twice > divisor || (twice == divisor && q % 2 == 1) {
        q + 1
    } else {
        q
    }
}

/// A FOCUS cost: a non-negative decimal, optional exponent, as an integer
/// scaled by 10^[`ROW_DECIMALS`] (rounded half to even beyond that).
pub fn parse_cost(s: &str) -> Result<u128, String> {
    if s.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    let not_a_number = || format!("{s:?} is not a number");
    let body = s.strip_prefix('+').unwrap_or(s);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => {
            let exp: i64 = body[i + 1..].parse().map_err(|_| not_a_number())?;
            if exp.abs() > 1000 {
                return Err(format!("{s:?} has an exponent out of range"));
            }
            (&body[..i], exp)
        }
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(not_a_number());
    }
    let digits: String = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let too_large = || format!("{s:?} is too large");
    let value: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| too_large())?
    };
    // value × 10^(exponent − frac digits) × 10^ROW_DECIMALS
    let shift = exponent - frac.len() as i64 + i64::from(ROW_DECIMALS);
    if shift >= 0 {
        let factor = u32::try_from(shift)
            .ok()
            .and_then(|k| 10u128.checked_pow(k))
            .ok_or_else(too_large)?;
        value.checked_mul(factor).ok_or_else(too_large)
    } else {
        let k = u32::try_from(-shift).map_err(|_| too_large())?;
        // value < 10^39, so a divisor of 10^39 or more rounds to zero.
        Ok(match 10u128.checked_pow(k) {
            Some(divisor) => round_half_even(value, divisor),
            None => 0,
        })
    }
}

/// The month a FOCUS `BillingPeriodStart` opens (`YYYY-MM-01T00:00:00Z`).
fn parse_period_start(s: &str) -> Result<Period, String> {
    let at = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("{s:?} is not a FOCUS date-time like \"2026-11-01T00:00:00Z\""))?;
    let ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("{s:?} is out of range"))?;
    let period = Period::containing(ms).ok_or_else(|| format!("{s:?} is out of range"))?;
    if period.start_ms() != ms {
        return Err(format!(
            "{s:?} is not the first instant of a UTC calendar month; hubwatch bills calendar months"
        ));
    }
    Ok(period)
}

/// What an import did, for the command's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// The file's SHA-256.
    pub sha256: String,
    /// The currency.
    pub currency: String,
    /// The parsed bills.
    pub parsed: ParsedBill,
    /// What the store did.
    pub outcome: ImportOutcome,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "file sha256: {}", self.sha256)?;
        match &self.outcome {
            ImportOutcome::AlreadyImported { imported_at_ms } => {
                return writeln!(
                    f,
                    "already imported at {imported_at_ms} (Unix ms): nothing changed"
                );
            }
            ImportOutcome::Imported {
                added,
                changed,
                unchanged,
            } => {
                writeln!(
                    f,
                    "rows: {}, bills: {} ({added} new, {} replaced, {unchanged} unchanged)",
                    self.parsed.rows,
                    self.parsed.bills.len(),
                    changed.len()
                )?;
                for c in changed {
                    writeln!(
                        f,
                        "replaced {} {}: {} -> {} {}",
                        c.cluster,
                        c.period,
                        money(c.old_micros),
                        money(c.new_micros),
                        self.currency
                    )?;
                }
            }
        }
        let mut total: u128 = 0;
        for b in &self.parsed.bills {
            total += u128::from(b.amount_micros);
            writeln!(
                f,
                "{} {}: {} {} ({} rows)",
                b.cluster,
                b.period,
                money(b.amount_micros),
                self.currency,
                b.rows
            )?;
        }
        writeln!(f, "total: {} {}", money_wide(total), self.currency)
    }
}

/// Micro-units as a decimal with 6 places.
pub fn money(micros: u64) -> String {
    money_wide(u128::from(micros))
}

fn money_wide(micros: u128) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// Parses `data` and stores its bills under the file's SHA-256: nothing is
/// stored when parsing refuses it; a file imported before changes nothing.
pub fn import_file(
    cost: &dyn CostStore,
    model: &CostModel,
    accounts: &BTreeMap<String, String>,
    file_name: &str,
    data: &[u8],
    now_ms: i64,
) -> Result<ImportReport, ImportError> {
    let parsed = parse_focus(data, &model.currency, accounts)?;
    let sha256 = hex::encode(Sha256::digest(data));
    let outcome = cost.import(
        &sha256,
        file_name,
        parsed.rows,
        &model.currency,
        &parsed.bills,
        now_ms,
    )?;
    Ok(ImportReport {
        sha256,
        currency: model.currency.clone(),
        parsed,
        outcome,
    })
}
