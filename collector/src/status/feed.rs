//! Atom 1.0 feeds (RFC 4287) of the status incidents: `GET
//! /status/feed.atom` (every public member's incidents; a private member's
//! are left out entirely, as its detail is on the network page) and `GET
//! /status/{member}/feed.atom` (that member's, privacy as its page).
//!
//! One entry per incident, with the incident's updates (newest first) as its
//! HTML content; the entry's `updated` is its latest update, so a feed
//! reader shows an incident again when it moves. Ids are stable URNs
//! (`urn:hubwatch:incident:{id}`); links are relative to the feed's own
//! address (RFC 4287 allows IRI references), so a feed read through a
//! reverse proxy points back through it.

use std::fmt::Write as _;

use super::view::{IncidentView, MemberView, NetworkView};
use crate::clock::rfc3339;
use crate::report::svg::escape;

/// The feed's file name under `/status/` and `/status/{member}/`.
pub const FILE: &str = "feed.atom";

/// The feeds' media type.
pub const CONTENT_TYPE: &str = "application/atom+xml; charset=utf-8";

/// The network-wide feed: the incidents of every member `view` shows in
/// detail (so never a private member's in the network view).
pub fn network_feed(view: &NetworkView) -> String {
    let entries: Vec<(&MemberView, &IncidentView)> = view
        .members
        .iter()
        .filter(|m| !m.private)
        .flat_map(|m| {
            m.hubs
                .iter()
                .flatten()
                .flat_map(move |h| h.incidents.iter().map(move |i| (m, i)))
        })
        .collect();
    document(
        "urn:hubwatch:status",
        "Service status: incidents",
        "/status",
        &format!("/status/{FILE}"),
        view,
        entries,
    )
}

/// `member`'s feed (the caller checked it may be read).
pub fn member_feed(view: &NetworkView, member: &MemberView) -> String {
    let entries: Vec<(&MemberView, &IncidentView)> = member
        .hubs
        .iter()
        .flatten()
        .flat_map(|h| h.incidents.iter().map(move |i| (member, i)))
        .collect();
    document(
        &format!("urn:hubwatch:status:{}", member.member),
        &format!("{} status: incidents", member.name),
        &format!("/status/{}", member.member),
        &format!("/status/{}/{FILE}", member.member),
        view,
        entries,
    )
}

fn document(
    id: &str,
    title: &str,
    page: &str,
    this: &str,
    view: &NetworkView,
    mut entries: Vec<(&MemberView, &IncidentView)>,
) -> String {
    // Newest change first.
    entries.sort_by_key(|(_, i)| std::cmp::Reverse((i.updated_ms, i.id)));
    // A feed without entries changed last when it was generated.
    let feed_updated = entries
        .first()
        .map_or_else(|| view.generated_at.clone(), |(_, i)| updated(i));
    let mut out = String::with_capacity(1024 + entries.len() * 1024);
    out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    out.push_str("<feed xmlns=\"http://www.w3.org/2005/Atom\">");
    let _ = write!(
        out,
        "<id>{}</id><title>{}</title><updated>{}</updated>\
         <link rel=\"self\" type=\"application/atom+xml\" href=\"{}\"/>\
         <link rel=\"alternate\" type=\"text/html\" href=\"{}\"/>\
         <author><name>hubwatch</name></author><generator>hubwatch</generator>",
        escape(id),
        escape(title),
        escape(&feed_updated),
        escape(this),
        escape(page),
    );
    for (member, incident) in entries {
        entry(&mut out, member, incident);
    }
    out.push_str("</feed>\n");
    out
}

/// When the incident last changed: its latest update, else its start.
fn updated(incident: &IncidentView) -> String {
    rfc3339(incident.updated_ms)
}

fn entry(out: &mut String, member: &MemberView, incident: &IncidentView) {
    let mut html = String::new();
    let _ = write!(
        html,
        "<p>{} / {}: {} since {}{}.</p><ul>",
        escape(&member.name),
        escape(&incident.hub),
        escape(incident.state),
        escape(&incident.started_at),
        incident
            .ended_at
            .as_deref()
            .map(|end| format!(", resolved {}", escape(end)))
            .unwrap_or_default(),
    );
    for update in &incident.updates {
        let _ = write!(
            html,
            "<li><strong>{}</strong> ({}): {}</li>",
            escape(update.state),
            escape(&update.at),
            escape(&update.message)
        );
    }
    html.push_str("</ul>");
    let _ = write!(
        out,
        "<entry><id>urn:hubwatch:incident:{id}</id><title>{} ({}): {}</title>\
         <published>{}</published><updated>{}</updated>\
         <link rel=\"alternate\" type=\"text/html\" href=\"/status/{}#incident-{id}\"/>\
         <category term=\"{}\"/><content type=\"html\">{}</content></entry>",
        escape(&incident.title),
        escape(&member.name),
        escape(incident.state),
        escape(&incident.started_at),
        escape(&updated(incident)),
        escape(&member.member),
        escape(incident.state),
        // The HTML is escaped once more as the element's text (type="html").
        escape(&html),
        id = incident.id,
    );
}
