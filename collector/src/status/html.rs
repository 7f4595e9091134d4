//! The status pages as server-rendered HTML: one self-contained document
//! (inline CSS, one small inline script for arrow keys on the daily bars),
//! no request beyond itself. State is always a word and a symbol, never
//! colour alone; each day of a 90-day bar is a list item named by its text
//! (`2026-11-22: 99.31 % up, 10 min down, 0 min no data`, as visually
//! hidden text and `title`), and each bar is one tab stop whose arrow keys
//! move between days (without the script, every day is still read out).
//! Maintenance is a state like the others (word and symbol); a member's
//! page lists its scheduled windows in UTC and in each window's own zone.

use std::fmt::Write as _;

use super::feed;
use super::view::{
    Figure, HubView, IncidentView, MemberView, NetworkView, UPCOMING_DAYS, WindowView,
};
use crate::report::svg::escape;

const STYLE: &str = "
*{box-sizing:border-box}
body{font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1b1f24;background:#fff;margin:0}
main{max-width:64rem;margin:0 auto;padding:1rem}
h1{font-size:1.6rem;margin:.5rem 0}
h2{font-size:1.3rem;margin:1.5rem 0 .5rem}
h3{font-size:1.1rem;margin:0}
a{color:#0b57a4}
.state{display:inline-block;font-weight:600;padding:0 .4rem;border-radius:.25rem;border:1px solid currentColor}
.operational{color:#0a6b2a}.degraded{color:#8a4b00}.outage{color:#a4001b}.no_data{color:#4b5563}.maintenance{color:#0b57a4}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #d0d7de;vertical-align:top}
.hub{border:1px solid #d0d7de;border-radius:.5rem;padding:.75rem 1rem;margin:1rem 0}
.hub header{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:baseline;justify-content:space-between}
dl.figures{display:flex;flex-wrap:wrap;gap:.25rem 1.5rem;margin:.5rem 0}
dl.figures div{min-width:8rem}
dt{font-size:.85rem;color:#4b5563}dd{margin:0;font-weight:600}
ol.strip{display:flex;gap:1px;list-style:none;padding:2px;margin:.5rem 0 0;height:2.5rem;align-items:flex-end;border-radius:.25rem}
ol.strip:focus-within{outline:2px solid #0b57a4;outline-offset:2px}
ol.strip li{flex:1 1 0;min-width:2px;height:100%;position:relative}
ol.strip li:focus{outline:2px solid #1b1f24;outline-offset:1px;z-index:1}
ol.strip li.up{background:#1a7f37}
ol.strip li.partial{background:#bf8700;height:65%}
ol.strip li.down{background:#cf222e;height:35%}
ol.strip li.maintenance{background:repeating-linear-gradient(-45deg,#dbe9f7,#dbe9f7 2px,#0b57a4 2px,#0b57a4 3px);height:100%;border:1px solid #0b57a4}
ol.strip li.nodata{background:repeating-linear-gradient(45deg,#fff,#fff 2px,#8c959f 2px,#8c959f 3px);height:100%;border:1px solid #8c959f}
.strip-scale{display:flex;justify-content:space-between;font-size:.85rem;color:#4b5563}
.day-now{font-size:.9rem;min-height:1.5em}
.vh{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);clip-path:inset(50%);white-space:nowrap}
.legend{display:flex;flex-wrap:wrap;gap:.25rem 1rem;font-size:.9rem;padding:0;list-style:none}
.legend span.key{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
.incident{border:2px solid #a4001b;border-radius:.5rem;padding:.5rem 1rem;margin:1rem 0}
.incident h3 .state{margin-left:.5rem}
.incident-mark{display:block;font-weight:400;font-size:.9rem}
.history li{margin:.25rem 0}
.history ol{font-size:.9rem}
.rule{background:#f6f8fa;border-left:4px solid #8c959f;padding:.5rem 1rem;margin:1.5rem 0}
footer{font-size:.85rem;color:#4b5563;margin-top:2rem}
";

/// Arrow keys, Home and End move the focus (and the one tab stop) between
/// the days of a bar, and the day's text is shown under it.
const SCRIPT: &str = "
document.querySelectorAll('ol.strip').forEach(function(strip){
  var days=strip.querySelectorAll('li');var out=document.getElementById(strip.dataset.out);
  function show(i){days.forEach(function(d,j){d.tabIndex=j===i?0:-1;});days[i].focus();if(out){out.textContent=days[i].title;}}
  strip.addEventListener('keydown',function(e){
    var i=Array.prototype.indexOf.call(days,document.activeElement);if(i<0){return;}
    var k={ArrowLeft:i-1,ArrowRight:i+1,Home:0,End:days.length-1}[e.key];
    if(k===undefined){return;}e.preventDefault();show(Math.max(0,Math.min(days.length-1,k)));
  });
  strip.addEventListener('focusin',function(e){if(out&&e.target.title){out.textContent=e.target.title;}});
});
";

fn document(title: &str, body: &str, script: bool, feed_href: &str) -> String {
    let mut out = String::with_capacity(body.len() + STYLE.len() + 512);
    out.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">");
    let _ = write!(
        out,
        "<title>{}</title><link rel=\"alternate\" type=\"application/atom+xml\" title=\"{} (incidents and maintenance, Atom)\" href=\"{}\">\
         <style>{STYLE}</style></head><body><main>",
        escape(title),
        escape(title),
        escape(feed_href)
    );
    out.push_str(body);
    out.push_str("</main>");
    if script {
        let _ = write!(out, "<script>{SCRIPT}</script>");
    }
    out.push_str("</body></html>");
    out
}

fn state_badge(out: &mut String, hub: &HubView) {
    let _ = write!(
        out,
        "<span class=\"state {}\"><span aria-hidden=\"true\">{} </span>{}</span>",
        hub.state.name(),
        hub.state.symbol(),
        hub.state.label()
    );
}

fn percent_text(figure: Option<&Figure>) -> String {
    match figure.and_then(|f| f.percent.as_deref()) {
        Some(p) => format!("{p} %"),
        None => "no data".to_string(),
    }
}

fn rule(out: &mut String, view: &NetworkView) {
    let _ = write!(
        out,
        "<section class=\"rule\" aria-labelledby=\"rule\"><h2 id=\"rule\">How uptime is counted</h2><p>{}</p></section>",
        escape(view.rule)
    );
}

fn footer(out: &mut String, view: &NetworkView) {
    let _ = write!(
        out,
        "<footer><p>Figures as of {}; page generated {}. JSON: <a href=\"/api/v1/status\">/api/v1/status</a>.</p></footer>",
        escape(&view.figures_as_of),
        escape(&view.generated_at)
    );
}

/// The network page: every member, its hubs' current state and 30-day uptime.
pub fn network_page(view: &NetworkView) -> String {
    let mut body = String::with_capacity(256 * view.members.len() + 4096);
    body.push_str("<h1>Service status</h1>");
    body.push_str(
        "<table><caption class=\"vh\">Every member's hubs: current state and uptime</caption>\
         <thead><tr><th scope=\"col\">Member</th><th scope=\"col\">Hub</th>\
         <th scope=\"col\">State</th><th scope=\"col\">Uptime, 30 days</th>\
         <th scope=\"col\">Uptime, 90 days</th></tr></thead><tbody>",
    );
    for member in &view.members {
        member_rows(&mut body, member);
    }
    body.push_str("</tbody></table>");
    rule(&mut body, view);
    footer(&mut body, view);
    document(
        "Service status",
        &body,
        false,
        &format!("/status/{}", feed::FILE),
    )
}

fn member_rows(body: &mut String, member: &MemberView) {
    let mut link = format!(
        "<a href=\"/status/{}\">{}</a>",
        escape(&member.member),
        escape(&member.name)
    );
    // Only members shown in detail carry their open incidents and
    // maintenance here (never a private one on this page).
    for incident in member.open_incidents.iter().flatten() {
        let _ = write!(
            link,
            "<a class=\"incident-mark\" href=\"/status/{}#incident-{}\"><span aria-hidden=\"true\">⚠ </span>Incident ({}): {}</a>",
            escape(&member.member),
            incident.id,
            escape(incident.state),
            escape(&incident.title)
        );
    }
    if member.in_maintenance == Some(true) {
        link.push_str(
            "<br><span class=\"state maintenance\"><span aria-hidden=\"true\">⚒ </span>Maintenance in progress</span>",
        );
    }
    let Some(hubs) = member.hubs.as_ref().filter(|h| !h.is_empty()) else {
        let what = if member.private {
            "Private page: its status is shown to the member only"
        } else {
            "No hubs configured"
        };
        let _ = write!(
            body,
            "<tr><th scope=\"row\">{link}</th><td colspan=\"4\">{what}</td></tr>"
        );
        return;
    };
    for (i, hub) in hubs.iter().enumerate() {
        body.push_str("<tr>");
        if i == 0 {
            let _ = write!(
                body,
                "<th scope=\"row\" rowspan=\"{}\">{link}</th>",
                hubs.len()
            );
        }
        let _ = write!(body, "<td>{}</td><td>", escape(&hub.hub));
        state_badge(body, hub);
        let _ = write!(
            body,
            "</td><td>{}</td><td>{}</td></tr>",
            percent_text(hub.uptime30()),
            percent_text(hub.uptime.get("90d"))
        );
    }
}

/// One member's page: each hub's state with its evidence, figures and
/// 90-day bar.
pub fn member_page(view: &NetworkView, member: &MemberView) -> String {
    member_page_with(view, member, "")
}

/// [`member_page`] whose feed link ends in `feed_query` (`?exp=…&sig=…`
/// when the page was opened by a signed link, so the feed opens too).
pub fn member_page_with(view: &NetworkView, member: &MemberView, feed_query: &str) -> String {
    let mut body = String::with_capacity(64 * 1024);
    let _ = write!(
        body,
        "<p><a href=\"/status\">All members</a></p><h1>{} status</h1>",
        escape(&member.name)
    );
    let open = member.open_incidents.as_deref().unwrap_or_default();
    if !open.is_empty() {
        body.push_str(
            "<section aria-labelledby=\"open-incidents\"><h2 id=\"open-incidents\">Open incidents</h2>",
        );
        for incident in open {
            open_incident(&mut body, incident);
        }
        body.push_str("</section>");
    }
    scheduled(&mut body, member.maintenance.as_deref().unwrap_or_default());
    for hub in member.hubs.as_deref().unwrap_or_default() {
        hub_section(&mut body, member, hub);
    }
    body.push_str(
        "<ul class=\"legend\" aria-label=\"Legend of the daily bars\">\
         <li><span class=\"key\" style=\"background:#1a7f37\"></span>full bar: up all measured minutes</li>\
         <li><span class=\"key\" style=\"background:#bf8700\"></span>two-thirds bar: some minutes down</li>\
         <li><span class=\"key\" style=\"background:#cf222e\"></span>one-third bar: down all measured minutes</li>\
         <li><span class=\"key\" style=\"background:repeating-linear-gradient(45deg,#fff,#fff 2px,#8c959f 2px,#8c959f 3px);border:1px solid #8c959f\"></span>grey hatched: no data</li>\
         <li><span class=\"key\" style=\"background:repeating-linear-gradient(-45deg,#dbe9f7,#dbe9f7 2px,#0b57a4 2px,#0b57a4 3px);border:1px solid #0b57a4\"></span>blue hatched: maintenance only (minutes left out)</li></ul>",
    );
    rule(&mut body, view);
    footer(&mut body, view);
    document(
        &format!("{} status", member.name),
        &body,
        true,
        &format!("/status/{}/{}{feed_query}", member.member, feed::FILE),
    )
}

/// `hubs` of a window as text.
fn window_hubs(window: &WindowView) -> String {
    if window.hubs.is_empty() {
        "All hubs".to_string()
    } else {
        escape(&window.hubs.join(", "))
    }
}

/// The "Scheduled maintenance" section: windows running or starting within
/// [`UPCOMING_DAYS`] days, in UTC and in the window's time zone.
fn scheduled(body: &mut String, windows: &[WindowView]) {
    let _ = write!(
        body,
        "<section aria-labelledby=\"maintenance\"><h2 id=\"maintenance\">Scheduled maintenance</h2>"
    );
    if windows.is_empty() {
        let _ = write!(
            body,
            "<p>No maintenance scheduled in the next {UPCOMING_DAYS} days.</p></section>"
        );
        return;
    }
    body.push_str(
        "<table><caption class=\"vh\">Maintenance windows running now or in the next days</caption>\
         <thead><tr><th scope=\"col\">Hubs</th><th scope=\"col\">When (UTC)</th>\
         <th scope=\"col\">When (local)</th><th scope=\"col\">Note</th></tr></thead><tbody>",
    );
    for w in windows {
        let now = if w.in_progress {
            " <strong>(in progress)</strong>"
        } else {
            ""
        };
        let counted = if w.excluded {
            "Not counted against uptime."
        } else {
            "Counted in uptime like any other time."
        };
        let _ = write!(
            body,
            "<tr><td>{}{now}</td><td>{} – {}</td><td>{} – {} ({})</td><td>{}<br>{counted}</td></tr>",
            window_hubs(w),
            escape(&w.start),
            escape(&w.end),
            escape(&w.start_local),
            escape(&w.end_local),
            escape(&w.timezone),
            escape(&w.note),
        );
    }
    body.push_str("</tbody></table></section>");
}

fn hub_section(body: &mut String, member: &MemberView, hub: &HubView) {
    let id = format!("hub-{}", escape(&hub.hub));
    let _ = write!(
        body,
        "<section class=\"hub\" aria-labelledby=\"{id}\"><header><h2 id=\"{id}\">{}</h2>",
        escape(&hub.hub)
    );
    state_badge(body, hub);
    body.push_str("</header>");
    if let Some(w) = &hub.maintenance {
        let note = if w.note.is_empty() {
            String::new()
        } else {
            format!(": {}", escape(&w.note))
        };
        let _ = write!(
            body,
            "<p>In maintenance until {} ({}){note}</p>",
            escape(&w.end),
            escape(&w.end_local),
        );
    }
    if !hub.evidence.is_empty() {
        body.push_str("<ul>");
        for e in &hub.evidence {
            if e.vantage == super::view::INCIDENT_VANTAGE {
                let _ = write!(
                    body,
                    "<li>Open incident since {}: {}</li>",
                    escape(e.down_since.as_deref().unwrap_or(&e.checked_at)),
                    escape(e.error.as_deref().unwrap_or_default()),
                );
                continue;
            }
            let who = if e.vantage == "agent" {
                "The member's agent"
            } else {
                "The outside probe"
            };
            let what = match (&e.down_since, e.up) {
                (_, true) => format!("sees it up (checked {})", escape(&e.checked_at)),
                (Some(since), false) => format!(
                    "sees it down since {} (checked {})",
                    escape(since),
                    escape(&e.checked_at)
                ),
                (None, false) => format!("sees it down (checked {})", escape(&e.checked_at)),
            };
            let stale = if e.fresh { "" } else { "; too old to count" };
            let _ = write!(body, "<li>{who} {what}{stale}</li>");
        }
        body.push_str("</ul>");
    }
    body.push_str("<dl class=\"figures\">");
    for (key, label) in [
        ("7d", "Uptime, 7 days"),
        ("30d", "Uptime, 30 days"),
        ("90d", "Uptime, 90 days"),
    ] {
        let _ = write!(
            body,
            "<div><dt>{label}</dt><dd data-window=\"{key}\">{}</dd></div>",
            percent_text(hub.uptime.get(key))
        );
    }
    let met = match hub.month.met {
        Some(true) => " (met)",
        Some(false) => " (not met)",
        None => "",
    };
    let _ = write!(
        body,
        "<div><dt>Objective ({} tier)</dt><dd>{} %</dd></div>\
         <div><dt>{} so far</dt><dd data-window=\"month\">{}{met}</dd></div></dl>",
        escape(&member.tier),
        escape(&hub.objective),
        escape(&hub.month.month),
        percent_text(Some(&hub.month.figure)),
    );
    let out_id = format!("{id}-day");
    let _ = write!(
        body,
        "<ol class=\"strip\" aria-label=\"{}: daily uptime, last {} days (arrow keys move between days)\" data-out=\"{out_id}\">",
        escape(&hub.hub),
        hub.days.len()
    );
    let last = hub.days.len().saturating_sub(1);
    for (i, day) in hub.days.iter().enumerate() {
        let label = escape(&day.label());
        let tab = if i == last { 0 } else { -1 };
        let _ = write!(
            body,
            "<li class=\"{}\" tabindex=\"{tab}\" title=\"{label}\"><span class=\"vh\">{label}</span></li>",
            day.class()
        );
    }
    let first = hub
        .days
        .first()
        .map(|d| d.date.as_str())
        .unwrap_or_default();
    let _ = write!(
        body,
        "</ol><div class=\"strip-scale\" aria-hidden=\"true\"><span>{first}</span><span>today</span></div>\
         <p class=\"day-now\" id=\"{out_id}\" aria-live=\"polite\">{}</p>",
        hub.days
            .last()
            .map(|d| escape(&d.label()))
            .unwrap_or_default()
    );
    history(body, hub);
    body.push_str("</section>");
}

fn incident_state(out: &mut String, state: &str) {
    // Open incidents in the outage colour, resolved ones in the operational
    // one; the word is always there.
    let (class, symbol) = if state == "resolved" {
        ("operational", "✓")
    } else {
        ("outage", "!")
    };
    let _ = write!(
        out,
        "<span class=\"state {class}\"><span aria-hidden=\"true\">{symbol} </span>{}</span>",
        escape(state)
    );
}

/// An open incident at the top of the member page: title, state, since
/// when and its latest update.
fn open_incident(body: &mut String, incident: &IncidentView) {
    let _ = write!(
        body,
        "<article class=\"incident\" aria-labelledby=\"open-{id}\"><h3 id=\"open-{id}\"><a href=\"#incident-{id}\">{}</a>",
        escape(&incident.title),
        id = incident.id
    );
    incident_state(body, incident.state);
    let _ = write!(
        body,
        "</h3><p>{}: since {}.</p>",
        escape(&incident.hub),
        escape(&incident.started_at)
    );
    if let Some(latest) = incident.latest() {
        let _ = write!(
            body,
            "<p>Latest update ({}, {}): {}</p>",
            escape(latest.state),
            escape(&latest.at),
            escape(&latest.message)
        );
    }
    body.push_str("</article>");
}

/// A hub's incidents of the last 90 days with their updates.
fn history(body: &mut String, hub: &HubView) {
    let id = format!("history-{}", escape(&hub.hub));
    let _ = write!(
        body,
        "<section class=\"history\" aria-labelledby=\"{id}\"><h3 id=\"{id}\">Incidents, last 90 days</h3>"
    );
    if hub.incidents.is_empty() {
        body.push_str("<p>No incidents.</p></section>");
        return;
    }
    body.push_str("<ul>");
    for incident in &hub.incidents {
        let _ = write!(
            body,
            "<li id=\"incident-{}\"><strong>{}</strong> ",
            incident.id,
            escape(&incident.title)
        );
        incident_state(body, incident.state);
        let _ = write!(body, " from {}", escape(&incident.started_at));
        if let Some(end) = &incident.ended_at {
            let _ = write!(body, " to {}", escape(end));
        }
        body.push_str("<ol>");
        for update in &incident.updates {
            let _ = write!(
                body,
                "<li>{} ({}): {}</li>",
                escape(update.state),
                escape(&update.at),
                escape(&update.message)
            );
        }
        body.push_str("</ol></li>");
    }
    body.push_str("</ul></section>");
}
