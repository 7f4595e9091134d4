//! Atom 1.0 feeds (RFC 4287) of the status incidents and maintenance
//! windows: `GET /status/feed.atom` (every public member's; a private
//! member's are left out entirely, as its detail is on the network page) and
//! `GET /status/{member}/feed.atom` (that member's, privacy as its page).
//!
//! One entry per incident, with the incident's updates (newest first) as its
//! HTML content; the entry's `updated` is its latest update, so a feed
//! reader shows an incident again when it moves. One entry per maintenance
//! window (scheduled, running, or ended within the pages' 90 days), titled
//! with its hubs, its content the start and end in UTC and in the window's
//! time zone and the note; its `updated` is when it last changed phase
//! (announced, started, ended). Ids are stable URNs
//! (`urn:hubwatch:incident:{id}`, `urn:hubwatch:maintenance:{id}`); links
//! are relative to the feed's own address (RFC 4287 allows IRI
//! references), so a feed read through a reverse proxy points back through
//! it.

use std::fmt::Write as _;

use super::view::{FeedWindow, IncidentView, MemberView, NetworkView, WindowPhase};
use crate::clock::rfc3339;
use crate::report::svg::escape;

/// The feed's file name under `/status/` and `/status/{member}/`.
pub const FILE: &str = "feed.atom";

/// The feeds' media type.
pub const CONTENT_TYPE: &str = "application/atom+xml; charset=utf-8";

/// One entry of a feed: an incident or a maintenance window.
enum Item<'a> {
    Incident(&'a IncidentView),
    Maintenance(&'a FeedWindow),
}

impl Item<'_> {
    /// When it last changed (orders the feed, newest first).
    fn updated_ms(&self) -> i64 {
        match self {
            Self::Incident(i) => i.updated_ms,
            Self::Maintenance(w) => w.updated_ms,
        }
    }

    /// A tie-breaker among entries changed in the same millisecond.
    fn key(&self) -> (u8, i64) {
        match self {
            Self::Incident(i) => (0, i.id),
            Self::Maintenance(w) => (1, w.window.id),
        }
    }
}

/// Every entry of `member`: its hubs' incidents and its windows.
fn items(member: &MemberView) -> impl Iterator<Item = (&MemberView, Item<'_>)> {
    member
        .hubs
        .iter()
        .flatten()
        .flat_map(move |h| h.incidents.iter().map(move |i| (member, Item::Incident(i))))
        .chain(
            member
                .feed_windows
                .iter()
                .map(move |w| (member, Item::Maintenance(w))),
        )
}

/// The network-wide feed: the incidents and maintenance windows of every
/// member `view` shows in detail (so never a private member's in the
/// network view).
pub fn network_feed(view: &NetworkView) -> String {
    let entries: Vec<(&MemberView, Item<'_>)> = view
        .members
        .iter()
        .filter(|m| !m.private)
        .flat_map(items)
        .collect();
    document(
        "urn:hubwatch:status",
        "Service status: incidents and maintenance",
        "/status",
        &format!("/status/{FILE}"),
        view,
        entries,
    )
}

/// `member`'s feed (the caller checked it may be read).
pub fn member_feed(view: &NetworkView, member: &MemberView) -> String {
    let entries: Vec<(&MemberView, Item<'_>)> = items(member).collect();
    document(
        &format!("urn:hubwatch:status:{}", member.member),
        &format!("{} status: incidents and maintenance", member.name),
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
    mut entries: Vec<(&MemberView, Item<'_>)>,
) -> String {
    // Newest change first.
    entries.sort_by_key(|(_, i)| std::cmp::Reverse((i.updated_ms(), i.key())));
    // A feed without entries changed last when it was generated.
    let feed_updated = entries.first().map_or_else(
        || view.generated_at.clone(),
        |(_, i)| rfc3339(i.updated_ms()),
    );
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
    for (member, item) in entries {
        match item {
            Item::Incident(incident) => entry(&mut out, member, incident),
            Item::Maintenance(window) => maintenance_entry(&mut out, member, window),
        }
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

fn maintenance_entry(out: &mut String, member: &MemberView, feed: &FeedWindow) {
    let window = &feed.window;
    let hubs = if window.hubs.is_empty() {
        "all hubs".to_owned()
    } else {
        window.hubs.join(", ")
    };
    let phase = match feed.phase {
        WindowPhase::Scheduled => "Scheduled maintenance",
        WindowPhase::Running => "Maintenance in progress",
        WindowPhase::Ended => "Maintenance ended",
    };
    let mut html = String::new();
    let _ = write!(
        html,
        "<p>{} / {}: {}.</p>\
         <p>From {} to {} UTC; local time ({}): {} to {}.</p>",
        escape(&member.name),
        escape(&hubs),
        escape(&phase.to_lowercase()),
        escape(&window.start),
        escape(&window.end),
        escape(&window.timezone),
        escape(&window.start_local),
        escape(&window.end_local),
    );
    if !window.note.is_empty() {
        let _ = write!(html, "<p>{}</p>", escape(&window.note));
    }
    if window.excluded {
        html.push_str("<p>Its minutes are left out of the uptime figures.</p>");
    }
    let _ = write!(
        out,
        "<entry><id>urn:hubwatch:maintenance:{id}</id><title>{} ({}): {}</title>\
         <published>{}</published><updated>{}</updated>\
         <link rel=\"alternate\" type=\"text/html\" href=\"/status/{}#maintenance\"/>\
         <category term=\"maintenance\"/><category term=\"{}\"/>\
         <content type=\"html\">{}</content></entry>",
        escape(phase),
        escape(&member.name),
        escape(&hubs),
        escape(&rfc3339(feed.created_ms)),
        escape(&rfc3339(feed.updated_ms)),
        escape(&member.member),
        feed.phase.name(),
        // The HTML is escaped once more as the element's text (type="html").
        escape(&html),
        id = window.id,
    );
}
