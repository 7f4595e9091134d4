//! The csv report: one table of every figure that has a row shape, RFC 4180
//! quoting (the `csv` crate), money as decimal strings ([`money`]).
//!
//! Columns: [`COLUMNS`]. The `record` column says what a row is:
//! - `usage`: one member's hub over the month (`hub`, `cluster`, the
//!   quantities, `coverage`);
//! - `cost`: one cost line the member shares (`line_kind`, `line_name`,
//!   `basis`, `line_amount`, `share`);
//! - `correction`: a change to a closed month (`corrected_period`, `share`
//!   signed);
//! - `unallocated` (all-members export only): what no member pays of a line,
//!   in `share`, so Σ `share` over `cost` and `unallocated` rows equals the
//!   bills and pools;
//! - `no_data`: the member has no data this month (`note` says so).

use super::model::{FleetReport, MemberReport, NO_DATA};
use crate::cost::import::money;

/// The header row.
pub const COLUMNS: [&str; 24] = [
    "period",
    "status",
    "currency",
    "model_hash",
    "record",
    "member",
    "hub",
    "cluster",
    "line_kind",
    "line_name",
    "basis",
    "server_seconds",
    "active_users",
    "cpu_request_millicore_seconds",
    "cpu_usage_millicore_seconds",
    "memory_request_byte_seconds",
    "memory_usage_byte_seconds",
    "storage_byte_seconds",
    "coverage",
    "line_amount",
    "share",
    "corrected_period",
    "note",
    "generated_at",
];

/// Signed micro-units as a decimal string.
pub fn signed_money(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    format!("{sign}{}", money(micros.unsigned_abs()))
}

#[derive(Default)]
struct Row {
    cells: [String; 24],
}

impl Row {
    fn set(&mut self, column: &str, value: impl Into<String>) -> &mut Self {
        if let Some(i) = COLUMNS.iter().position(|c| *c == column) {
            self.cells[i] = value.into();
        }
        self
    }
}

fn base(h: &super::model::Header, record: &str, member: &str) -> Row {
    let mut row = Row::default();
    row.set("period", &h.period)
        .set("status", &h.status)
        .set("currency", &h.currency)
        .set("model_hash", &h.model_hash)
        .set("record", record)
        .set("member", member)
        .set("generated_at", &h.generated_at);
    row
}

/// The csv of `members` (and, with `fleet`, the unallocated rows).
pub fn render(members: &[MemberReport], fleet: Option<&FleetReport>) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(COLUMNS)?;
    for r in members {
        let h = &r.header;
        let id = r.member.id.as_str();
        if r.no_data {
            let mut row = base(h, "no_data", id);
            row.set("note", NO_DATA);
            w.write_record(&row.cells)?;
            continue;
        }
        for hub in &r.hubs {
            let mut row = base(h, "usage", id);
            row.set("hub", &hub.hub)
                .set("cluster", hub.cluster.clone().unwrap_or_default())
                .set("server_seconds", hub.server_seconds.to_string())
                .set("active_users", hub.active_users.to_string())
                .set(
                    "cpu_request_millicore_seconds",
                    hub.cpu_request_millicore_seconds.to_string(),
                )
                .set(
                    "cpu_usage_millicore_seconds",
                    hub.cpu_usage_millicore_seconds.to_string(),
                )
                .set(
                    "memory_request_byte_seconds",
                    hub.memory_request_byte_seconds.to_string(),
                )
                .set(
                    "memory_usage_byte_seconds",
                    hub.memory_usage_byte_seconds.to_string(),
                )
                .set("storage_byte_seconds", hub.storage_byte_seconds.to_string())
                .set("coverage", format!("{:.6}", hub.coverage));
            w.write_record(&row.cells)?;
        }
        for line in &r.cost.lines {
            let mut row = base(h, "cost", id);
            row.set("line_kind", &line.kind)
                .set("line_name", &line.name)
                .set("basis", &line.basis)
                .set("line_amount", money(line.line_micros))
                .set("share", money(line.share_micros));
            w.write_record(&row.cells)?;
        }
        for c in &r.cost.corrections {
            let mut row = base(h, "correction", id);
            row.set("line_kind", &c.kind)
                .set("line_name", &c.name)
                .set("share", signed_money(c.delta_micros))
                .set("corrected_period", &c.corrected_period);
            w.write_record(&row.cells)?;
        }
    }
    if let Some(f) = fleet.filter(|f| !f.no_data) {
        for line in f.lines.iter().filter(|l| l.unallocated_micros > 0) {
            let mut row = base(&f.header, "unallocated", "");
            row.set("line_kind", &line.kind)
                .set("line_name", &line.name)
                .set("basis", &line.basis)
                .set("line_amount", money(line.amount_micros))
                .set("share", money(line.unallocated_micros));
            w.write_record(&row.cells)?;
        }
        for c in f.corrections.iter().filter(|c| c.member.is_none()) {
            let mut row = base(&f.header, "correction", "");
            row.set("line_kind", &c.kind)
                .set("line_name", &c.name)
                .set("share", signed_money(c.delta_micros))
                .set("corrected_period", &c.corrected_period)
                .set("note", "unallocated");
            w.write_record(&row.cells)?;
        }
    }
    finish(w)
}

/// The written bytes as a string.
pub(super) fn finish(w: csv::Writer<Vec<u8>>) -> Result<String, csv::Error> {
    let bytes = w
        .into_inner()
        .map_err(|e| csv::Error::from(e.into_error()))?;
    // Every cell written was a Rust string, so the bytes are UTF-8.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
