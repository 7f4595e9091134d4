//! The md and html reports' shared layout: a report as a list of [`Block`]s
//! (headings, paragraphs, tables, charts) with every figure already
//! formatted, so the two formats show the same sections and the same
//! numbers. Markdown leaves the charts out; html draws them inline.
//!
//! Figures: money as the decimal of [`money`] with the currency code;
//! server time in hours with two decimals; CPU in core-hours and memory in
//! GiB-hours with two decimals; coverage, attainment and budget spent as
//! percentages with one (coverage, budget) or three (attainment) decimals.

use super::model::{FleetReport, MemberReport, NO_DATA};
use super::svg::{BarsAndLine, Series, StackedBars, bars_and_line, stacked_bars};
use crate::cost::import::money;
use hubwatch_shared::config::Period;

/// One piece of a report.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// A heading of this level (1 = title).
    Heading(u8, String),
    /// A paragraph of plain text.
    Para(String),
    /// A table: headers, then rows of cells.
    Table(Vec<String>, Vec<Vec<String>>),
    /// An SVG chart (html only).
    Chart(String),
}

/// Micro-units with the currency code, e.g. `12.500000 EUR`.
pub fn amount(micros: u64, currency: &str) -> String {
    format!("{} {currency}", money(micros))
}

/// Signed micro-units with the currency code.
pub fn signed_amount(micros: i64, currency: &str) -> String {
    let sign = if micros < 0 { "-" } else { "+" };
    format!("{sign}{} {currency}", money(micros.unsigned_abs()))
}

/// Seconds as hours with two decimals.
pub fn hours(seconds: u64) -> String {
    format!("{:.2}", seconds as f64 / 3600.0)
}

/// A ratio as a percentage with `decimals` places.
pub fn percent(ratio: f64, decimals: usize) -> String {
    format!("{:.*}%", decimals, ratio * 100.0)
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "no data".to_string(), f)
}

fn header_para(h: &super::model::Header) -> String {
    let status = match &h.closed_at {
        Some(at) => format!("closed at {at}"),
        None => "provisional: figures may still change".to_string(),
    };
    format!(
        "Period {} ({} to {}), {status}. Amounts in {}. Cost model {}. Generated {}.",
        h.period, h.start, h.end, h.currency, h.model_hash, h.generated_at
    )
}

/// The member's monthly report.
pub fn member(r: &MemberReport) -> Vec<Block> {
    let c = &r.header.currency;
    let mut out = vec![
        Block::Heading(
            1,
            format!(
                "Monthly report: {} ({}), {}",
                r.member.name, r.member.id, r.header.period
            ),
        ),
        Block::Para(format!(
            "{} Tier {}.",
            header_para(&r.header),
            r.member.tier
        )),
    ];
    if r.no_data {
        out.push(Block::Para(format!("{NO_DATA}.")));
        return out;
    }
    out.push(Block::Heading(2, "Usage by hub".into()));
    out.push(Block::Table(
        [
            "Hub",
            "Cluster",
            "Server hours",
            "Active users",
            "Idle server hours",
            "CPU requested (core-hours)",
            "CPU used (core-hours)",
            "Memory requested (GiB-hours)",
            "Memory used (GiB-hours)",
            "Storage (GiB-hours)",
            "Coverage",
        ]
        .map(String::from)
        .to_vec(),
        r.hubs
            .iter()
            .map(|h| {
                vec![
                    h.hub.clone(),
                    h.cluster.clone().unwrap_or_else(|| "-".into()),
                    hours(h.server_seconds),
                    h.active_users.to_string(),
                    hours(h.idle_server_seconds),
                    format!("{:.2}", h.cpu_request_millicore_seconds as f64 / 3.6e6),
                    format!("{:.2}", h.cpu_usage_millicore_seconds as f64 / 3.6e6),
                    gib_hours(h.memory_request_byte_seconds),
                    gib_hours(h.memory_usage_byte_seconds),
                    gib_hours(h.storage_byte_seconds),
                    percent(h.coverage, 1),
                ]
            })
            .collect(),
    ));
    out.push(Block::Heading(2, "Usage by day".into()));
    out.push(Block::Chart(day_chart(r)));
    out.push(Block::Table(
        ["Day", "Hub", "Server hours", "Active users"]
            .map(String::from)
            .to_vec(),
        r.days
            .iter()
            .map(|d| {
                vec![
                    d.day.clone(),
                    d.hub.clone(),
                    hours(d.server_seconds),
                    d.active_users.to_string(),
                ]
            })
            .collect(),
    ));
    out.push(Block::Heading(2, "Active users".into()));
    out.push(Block::Para(format!(
        "Active users this month: {}. Server hours: {}. Server hours per active user: {}.",
        r.active_users,
        hours(r.server_seconds),
        opt(r.server_hours_per_active_user, |v| format!("{v:.2}"))
    )));
    out.push(Block::Heading(2, "SLO attainment".into()));
    out.push(Block::Table(
        [
            "Hub",
            "Objective",
            "Target",
            "Attainment",
            "Budget spent",
            "Good / total events",
        ]
        .map(String::from)
        .to_vec(),
        r.slo
            .iter()
            .map(|s| {
                vec![
                    s.hub.clone(),
                    s.slo.clone(),
                    percent(s.target, 3),
                    opt(s.attainment, |a| percent(a, 3)),
                    opt(s.budget_spent, |b| percent(b, 1)),
                    format!("{} / {}", s.good, s.total),
                ]
            })
            .collect(),
    ));
    out.push(Block::Heading(2, "Incidents".into()));
    if r.incidents.is_empty() {
        out.push(Block::Para("No alert fired this month.".into()));
    } else {
        out.push(Block::Table(
            [
                "Alert",
                "Severity",
                "Hub",
                "SLO",
                "Start",
                "End",
                "Duration (min)",
                "In this month (min)",
            ]
            .map(String::from)
            .to_vec(),
            r.incidents
                .iter()
                .map(|i| {
                    vec![
                        i.alertname.clone(),
                        i.severity.clone(),
                        i.hub.clone(),
                        i.slo.clone(),
                        i.start.clone(),
                        i.end.clone().unwrap_or_else(|| "open".into()),
                        format!("{:.1}", i.duration_seconds as f64 / 60.0),
                        format!("{:.1}", i.in_period_seconds as f64 / 60.0),
                    ]
                })
                .collect(),
        ));
    }
    out.push(Block::Heading(2, "Status incidents".into()));
    if r.status_incidents.is_empty() {
        out.push(Block::Para("No status incident this month.".into()));
    } else {
        out.push(Block::Table(
            ["#", "Hub", "Title", "State", "Start", "End", "Alerts"]
                .map(String::from)
                .to_vec(),
            r.status_incidents
                .iter()
                .map(|i| {
                    vec![
                        i.id.to_string(),
                        i.hub.clone(),
                        i.title.clone(),
                        i.state.clone(),
                        i.start.clone(),
                        i.end.clone().unwrap_or_else(|| "open".into()),
                        if i.alerts.is_empty() {
                            format!("opened by {}", i.opened_by)
                        } else {
                            i.alerts.join(", ")
                        },
                    ]
                })
                .collect(),
        ));
        out.push(Block::Heading(3, "Updates".into()));
        out.push(Block::Table(
            ["#", "Time", "State", "Message", "Author"]
                .map(String::from)
                .to_vec(),
            r.status_incidents
                .iter()
                .flat_map(|i| {
                    i.updates.iter().map(|u| {
                        vec![
                            i.id.to_string(),
                            u.at.clone(),
                            u.state.clone(),
                            u.message.clone(),
                            u.author.clone(),
                        ]
                    })
                })
                .collect(),
        ));
    }
    out.push(Block::Heading(2, "Cost".into()));
    let mut rows: Vec<Vec<String>> = r
        .cost
        .lines
        .iter()
        .map(|l| {
            vec![
                l.name.clone(),
                l.kind.clone(),
                l.basis.clone(),
                amount(l.line_micros, c),
                amount(l.share_micros, c),
            ]
        })
        .collect();
    rows.push(vec![
        "Total".into(),
        String::new(),
        String::new(),
        String::new(),
        amount(r.cost.total_micros, c),
    ]);
    out.push(Block::Table(
        ["Line", "Kind", "Basis", "Line amount", "Your share"]
            .map(String::from)
            .to_vec(),
        rows,
    ));
    out.push(Block::Para(format!(
        "Cost per active user: {}.",
        opt(r.cost.cost_per_active_user_micros, |v| amount(v, c))
    )));
    if !r.cost.corrections.is_empty() {
        out.push(Block::Heading(3, "Corrections to closed months".into()));
        out.push(Block::Table(
            ["Corrected month", "Line", "Change"]
                .map(String::from)
                .to_vec(),
            r.cost
                .corrections
                .iter()
                .map(|k| {
                    vec![
                        k.corrected_period.clone(),
                        format!("{} {}", k.kind, k.name),
                        signed_amount(k.delta_micros, c),
                    ]
                })
                .collect(),
        ));
    }
    let ch = &r.change;
    out.push(Block::Heading(
        2,
        format!("Change since {}", ch.previous_period),
    ));
    out.push(Block::Table(
        ["Figure", "Previous month", "Change"]
            .map(String::from)
            .to_vec(),
        vec![
            vec![
                "Server hours".into(),
                opt(ch.previous_server_seconds, hours),
                opt(ch.server_seconds_delta, |d| {
                    format!(
                        "{}{}",
                        if d < 0 { "-" } else { "+" },
                        hours(d.unsigned_abs())
                    )
                }),
            ],
            vec![
                "Active users".into(),
                opt(ch.previous_active_users, |v| v.to_string()),
                opt(ch.active_users_delta, |d| format!("{d:+}")),
            ],
            vec![
                "Cost".into(),
                opt(ch.previous_cost_micros, |v| amount(v, c)),
                opt(ch.cost_delta_micros, |d| signed_amount(d, c)),
            ],
        ],
    ));
    out.push(Block::Heading(2, "Guidance".into()));
    if r.guidance.is_empty() {
        out.push(Block::Para(
            "No findings: nothing stood out, or the data was not complete enough to say.".into(),
        ));
    }
    for f in &r.guidance {
        out.push(Block::Para(format!(
            "[{}] {} (figure: {:.3})",
            f.severity, f.text, f.figure
        )));
    }
    out
}

fn gib_hours(byte_seconds: u64) -> String {
    format!("{:.2}", byte_seconds as f64 / 1_073_741_824.0 / 3600.0)
}

/// Server-hours per day of the month, stacked by hub.
fn day_chart(r: &MemberReport) -> String {
    let days: Vec<String> = Period::parse(&r.header.period)
        .map(|p| {
            let n = (p.end_ms() - p.start_ms()) / 86_400_000;
            (1..=n).map(|d| format!("{d:02}")).collect()
        })
        .unwrap_or_default();
    let series = r
        .hubs
        .iter()
        .map(|h| Series {
            name: h.hub.clone(),
            values: days
                .iter()
                .map(|d| {
                    r.days
                        .iter()
                        .filter(|l| l.hub == h.hub && l.day.ends_with(&format!("-{d}")))
                        .map(|l| l.server_seconds as f64 / 3600.0)
                        .sum()
                })
                .collect(),
        })
        .collect();
    stacked_bars(&StackedBars {
        title: format!("Server hours per day, {}", r.header.period),
        x_label: "day".into(),
        y_label: "server hours".into(),
        categories: days,
        series,
    })
}

/// The fleet's report.
pub fn fleet(r: &FleetReport) -> Vec<Block> {
    let c = &r.header.currency;
    let mut out = vec![
        Block::Heading(1, format!("Fleet report, {}", r.header.period)),
        Block::Para(header_para(&r.header)),
    ];
    if r.no_data {
        out.push(Block::Para(format!("{NO_DATA}.")));
    } else {
        out.push(Block::Heading(2, "Members".into()));
        out.push(Block::Table(
            [
                "Member",
                "Tier",
                "Server hours",
                "Active users",
                "Cost",
                "Operations share",
                "Coverage",
            ]
            .map(String::from)
            .to_vec(),
            r.members
                .iter()
                .map(|m| {
                    vec![
                        format!("{} ({})", m.name, m.id),
                        m.tier.clone(),
                        hours(m.server_seconds),
                        m.active_users.to_string(),
                        amount(m.cost_micros, c),
                        amount(m.operations_micros, c),
                        opt(m.coverage, |v| percent(v, 1)),
                    ]
                })
                .collect(),
        ));
        out.push(Block::Heading(2, "Cost lines".into()));
        let mut rows: Vec<Vec<String>> = r
            .lines
            .iter()
            .map(|l| {
                vec![
                    l.name.clone(),
                    l.kind.clone(),
                    l.basis.clone(),
                    amount(l.amount_micros, c),
                    amount(l.allocated_micros, c),
                    amount(l.unallocated_micros, c),
                ]
            })
            .collect();
        rows.push(vec![
            "Total".into(),
            String::new(),
            String::new(),
            amount(r.total_micros, c),
            amount(r.allocated_micros, c),
            amount(r.unallocated_micros, c),
        ]);
        out.push(Block::Table(
            [
                "Line",
                "Kind",
                "Basis",
                "Amount",
                "Allocated",
                "Unallocated",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        ));
        if !r.corrections.is_empty() {
            out.push(Block::Heading(3, "Corrections to closed months".into()));
            out.push(Block::Table(
                ["Corrected month", "Line", "Member", "Change"]
                    .map(String::from)
                    .to_vec(),
                r.corrections
                    .iter()
                    .map(|k| {
                        vec![
                            k.corrected_period.clone(),
                            format!("{} {}", k.kind, k.name),
                            k.member.clone().unwrap_or_else(|| "unallocated".into()),
                            signed_amount(k.delta_micros, c),
                        ]
                    })
                    .collect(),
            ));
        }
    }
    out.push(Block::Heading(
        2,
        "Operations cost per member, month by month".into(),
    ));
    out.push(Block::Para(
        "Operations are every cost pool; as members join, each one's share falls.".into(),
    ));
    out.push(Block::Chart(bars_and_line(&BarsAndLine {
        title: "Members and operations cost per member".into(),
        x_label: "month".into(),
        categories: r.history.iter().map(|h| h.period.clone()).collect(),
        bars: Series {
            name: "members".into(),
            values: r.history.iter().map(|h| h.members as f64).collect(),
        },
        line: Series {
            name: format!("operations per member ({c})"),
            values: r
                .history
                .iter()
                .map(|h| h.operations_per_member_micros.unwrap_or(0) as f64 / 1e6)
                .collect(),
        },
    })));
    out.push(Block::Table(
        [
            "Month",
            "Status",
            "Members",
            "Operations",
            "Operations per member",
        ]
        .map(String::from)
        .to_vec(),
        r.history
            .iter()
            .map(|h| {
                vec![
                    h.period.clone(),
                    h.status.clone(),
                    h.members.to_string(),
                    amount(h.operations_micros, c),
                    opt(h.operations_per_member_micros, |v| amount(v, c)),
                ]
            })
            .collect(),
    ));
    out
}
