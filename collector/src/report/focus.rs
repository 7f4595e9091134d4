//! The FOCUS 1.x export (FinOps Open Cost and Usage Specification, the
//! columns of v1.2, `../shared/reference/cost.md` §4): one row per member
//! and cost line the member shares, plus (all-members export) one row per
//! line's unallocated amount, so Σ `BilledCost` of the `Usage` and
//! `Adjustment` rows equals the month's bills and pools exactly; and one row
//! per correction (`ChargeClass = Correction`, the charge period is the
//! corrected month). Dates are `YYYY-MM-DDTHH:mm:ssZ`, start inclusive, end
//! exclusive; amounts are decimals with six places.
//!
//! Mapping: the member is the billed account and `SubAccountId`; a cluster
//! line is `ChargeCategory = Usage` (its hubs on the cluster as
//! `ResourceId`, space-separated when several), a pool is `Adjustment`
//! (pooled operations). All costs are the allocated share: hubwatch has no
//! list price or discount, so `ListCost = ContractedCost = EffectiveCost =
//! BilledCost`. `PricingQuantity` is 1 `Month` of the share. Custom columns:
//! `x_Basis` (how the line was split), `x_Coverage` (observed time of the
//! member's hubs on that line, 0 to 1), `x_ModelHash`, `x_Status`
//! (`closed`, `provisional`, or `no_data`: then the one row's costs are 0
//! and `ChargeDescription` says no data was recorded).

use super::csv::{finish, signed_money};
use super::model::{FleetReport, Header, MemberReport, NO_DATA};
use crate::cost::import::money;

/// The header row.
pub const COLUMNS: [&str; 31] = [
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ContractedCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "InvoiceIssuerName",
    "ProviderName",
    "PublisherName",
    "ServiceName",
    "ServiceCategory",
    "PricingQuantity",
    "PricingUnit",
    "SubAccountId",
    "SubAccountName",
    "ResourceId",
    "ResourceName",
    "x_Basis",
    "x_Coverage",
    "x_ModelHash",
    "x_Status",
    "x_CorrectedPeriod",
];

/// Who issues the member invoices.
pub const ISSUER: &str = "hubwatch";

/// RFC 3339 without fractional seconds, as FOCUS dates are.
fn focus_date(rfc3339: &str) -> String {
    match rfc3339.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => rfc3339.to_string(),
    }
}

struct Row([String; 31]);

impl Row {
    fn new(h: &Header) -> Self {
        let mut row = Self(Default::default());
        row.set("BillingCurrency", &h.currency)
            .set("BillingPeriodStart", focus_date(&h.start))
            .set("BillingPeriodEnd", focus_date(&h.end))
            .set("ChargePeriodStart", focus_date(&h.start))
            .set("ChargePeriodEnd", focus_date(&h.end))
            .set("InvoiceIssuerName", ISSUER)
            .set("ProviderName", ISSUER)
            .set("PublisherName", ISSUER)
            .set("PricingQuantity", "1")
            .set("PricingUnit", "Month")
            .set("x_ModelHash", &h.model_hash)
            .set("x_Status", &h.status);
        row
    }

    fn set(&mut self, column: &str, value: impl Into<String>) -> &mut Self {
        if let Some(i) = COLUMNS.iter().position(|c| *c == column) {
            self.0[i] = value.into();
        }
        self
    }

    fn cost(&mut self, amount: String) -> &mut Self {
        self.set("BilledCost", amount.clone())
            .set("EffectiveCost", amount.clone())
            .set("ListCost", amount.clone())
            .set("ContractedCost", amount)
    }

    fn line(&mut self, kind: &str, name: &str) -> &mut Self {
        let (category, service, frequency) = if kind == "cluster" {
            ("Usage", "Compute", "Usage-Based")
        } else {
            ("Adjustment", "Other", "Recurring")
        };
        self.set("ChargeCategory", category)
            .set("ServiceName", name)
            .set("ServiceCategory", service)
            .set("ChargeFrequency", frequency)
    }

    fn account(&mut self, id: &str, name: &str) -> &mut Self {
        self.set("BillingAccountId", id)
            .set("BillingAccountName", name)
            .set("SubAccountId", id)
            .set("SubAccountName", name)
    }
}

/// The FOCUS CSV of `members` (and, with `fleet`, the unallocated rows).
pub fn render(members: &[MemberReport], fleet: Option<&FleetReport>) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(COLUMNS)?;
    for r in members {
        let (id, name) = (r.member.id.as_str(), r.member.name.as_str());
        if r.no_data {
            let mut row = Row::new(&r.header);
            row.cost(money(0))
                .account(id, name)
                .line("pool", "none")
                .set("ChargeDescription", NO_DATA)
                .set("x_Status", "no_data");
            w.write_record(&row.0)?;
            continue;
        }
        for line in &r.cost.lines {
            let hubs: Vec<&super::model::HubLine> = r
                .hubs
                .iter()
                .filter(|h| line.kind == "pool" || h.cluster.as_deref() == Some(&line.name))
                .collect();
            let coverage = if hubs.is_empty() {
                String::new()
            } else {
                format!(
                    "{:.6}",
                    hubs.iter().map(|h| h.coverage).sum::<f64>() / hubs.len() as f64
                )
            };
            let resource = if line.kind == "cluster" {
                hubs.iter()
                    .map(|h| h.hub.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                String::new()
            };
            let mut row = Row::new(&r.header);
            row.cost(money(line.share_micros))
                .account(id, name)
                .line(&line.kind, &line.name)
                .set(
                    "ChargeDescription",
                    format!(
                        "{} share of {} {} ({})",
                        id, line.kind, line.name, line.basis
                    ),
                )
                .set("ResourceId", resource.clone())
                .set("ResourceName", resource)
                .set("x_Basis", &line.basis)
                .set("x_Coverage", coverage);
            w.write_record(&row.0)?;
        }
        for c in &r.cost.corrections {
            w.write_record(&correction(&r.header, id, name, c).0)?;
        }
    }
    if let Some(f) = fleet.filter(|f| !f.no_data) {
        for line in f.lines.iter().filter(|l| l.unallocated_micros > 0) {
            let mut row = Row::new(&f.header);
            row.cost(money(line.unallocated_micros))
                .account("unallocated", "Unallocated")
                .set("SubAccountId", "")
                .set("SubAccountName", "")
                .line(&line.kind, &line.name)
                .set(
                    "ChargeDescription",
                    format!(
                        "unallocated part of {} {} ({})",
                        line.kind, line.name, line.basis
                    ),
                )
                .set("x_Basis", &line.basis);
            w.write_record(&row.0)?;
        }
        for c in f.corrections.iter().filter(|c| c.member.is_none()) {
            let mut row = correction(&f.header, "unallocated", "Unallocated", c);
            row.set("SubAccountId", "").set("SubAccountName", "");
            w.write_record(&row.0)?;
        }
    }
    finish(w)
}

fn correction(h: &Header, id: &str, name: &str, c: &super::model::CorrectionRow) -> Row {
    let mut row = Row::new(h);
    let (start, end) = hubwatch_shared::config::Period::parse(&c.corrected_period)
        .map(|p| {
            (
                focus_date(&crate::clock::rfc3339(p.start_ms())),
                focus_date(&crate::clock::rfc3339(p.end_ms())),
            )
        })
        .unwrap_or_default();
    row.cost(signed_money(c.delta_micros))
        .account(id, name)
        .line(&c.kind, &c.name)
        .set("ChargeClass", "Correction")
        .set("ChargePeriodStart", start)
        .set("ChargePeriodEnd", end)
        .set(
            "ChargeDescription",
            format!(
                "correction of {} {} for {}",
                c.kind, c.name, c.corrected_period
            ),
        )
        .set("x_CorrectedPeriod", &c.corrected_period);
    row
}
