//! SVG badges per hub (`/status/{member}/{hub}/badge.svg?kind=status|uptime30`):
//! a label and a value as text (`prod | operational`, `prod 30d | 99.31 %`),
//! the value's colour only repeating what the text says; the SVG has
//! `role="img"`, an `aria-label` and a `<title>`.

use super::view::{HubState, HubView};
use crate::report::svg::escape;

/// Which badge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadgeKind {
    /// The current state.
    Status,
    /// The 30-day uptime.
    Uptime30,
}

impl BadgeKind {
    /// From the `kind` query parameter (default `status`).
    pub fn parse(kind: Option<&str>) -> Option<Self> {
        match kind {
            None | Some("status") => Some(Self::Status),
            Some("uptime30") => Some(Self::Uptime30),
            Some(_) => None,
        }
    }
}

/// Approximate width of `text` in the badge's 11px font.
fn text_width(text: &str) -> usize {
    text.chars().count() * 7 + 10
}

/// The badge of `hub`.
pub fn badge(hub: &HubView, kind: BadgeKind) -> String {
    let (label, value, colour) = match kind {
        BadgeKind::Status => (
            hub.hub.clone(),
            hub.state.label().to_lowercase(),
            match hub.state {
                HubState::Operational => "#1a7f37",
                HubState::Degraded => "#8a4b00",
                HubState::Outage => "#a4001b",
                HubState::NoData => "#57606a",
                HubState::Maintenance => "#0b57a4",
            },
        ),
        BadgeKind::Uptime30 => {
            let percent = hub.uptime30().and_then(|f| f.percent.clone());
            let colour = match hub.uptime30().and_then(|f| f.percent.as_deref()) {
                None => "#57606a",
                Some(_) if hub.month.met == Some(false) => "#a4001b",
                Some(_) => "#1a7f37",
            };
            (
                format!("{} 30d", hub.hub),
                percent.map_or_else(|| "no data".to_string(), |p| format!("{p} %")),
                colour,
            )
        }
    };
    let (lw, vw) = (text_width(&label), text_width(&value));
    let width = lw + vw;
    let (label, value) = (escape(&label), escape(&value));
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"20\" role=\"img\" \
         aria-label=\"{label}: {value}\"><title>{label}: {value}</title>\
         <rect width=\"{lw}\" height=\"20\" fill=\"#444d56\"/>\
         <rect x=\"{lw}\" width=\"{vw}\" height=\"20\" fill=\"{colour}\"/>\
         <g fill=\"#fff\" font-family=\"Verdana,DejaVu Sans,sans-serif\" font-size=\"11\">\
         <text x=\"5\" y=\"14\">{label}</text><text x=\"{vx}\" y=\"14\">{value}</text></g></svg>",
        vx = lw + 5
    )
}
