//! The status incidents the pages and feeds show, as a snapshot in memory
//! ([`IncidentHistory`]): every incident of the last [`HISTORY_MS`] (and
//! every one still open, however old) with its updates, re-read by the
//! `status.refresh` task with the daily figures, so a render never reads
//! the store. The incidents themselves live in [`crate::incidents`].

use crate::incidents::{IncidentFilter, IncidentUpdate, StatusIncident, StatusIncidentStore};
use crate::store::StoreError;

/// How far back the pages and feeds show incidents: the 90 days of the bars.
pub const HISTORY_MS: i64 = 90 * super::accounting::DAY_MS;

/// One incident with its updates (by time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentEntry {
    /// The incident.
    pub incident: StatusIncident,
    /// Its updates, oldest first.
    pub updates: Vec<IncidentUpdate>,
}

impl IncidentEntry {
    /// Its latest update, if any.
    pub fn latest(&self) -> Option<&IncidentUpdate> {
        self.updates.last()
    }

    /// When it last changed (its latest update, else its start), Unix ms.
    pub fn updated_ms(&self) -> i64 {
        self.latest()
            .map_or(self.incident.started_at_ms, |u| u.at_ms)
            .max(self.incident.started_at_ms)
    }

    /// Whether it overlaps `[from_ms, to_ms)`.
    pub fn overlaps(&self, from_ms: i64, to_ms: i64) -> bool {
        self.incident.started_at_ms < to_ms
            && self.incident.ended_at_ms.is_none_or(|end| end >= from_ms)
    }

    /// Whether it is not resolved.
    pub fn is_open(&self) -> bool {
        self.incident.ended_at_ms.is_none()
            && self.incident.state != crate::incidents::IncidentState::Resolved
    }
}

/// The incidents shown, oldest first (by start, then id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncidentHistory {
    /// Every incident overlapping the history window or still open.
    pub entries: Vec<IncidentEntry>,
}

impl IncidentHistory {
    /// Reads the incidents overlapping the [`HISTORY_MS`] before `now_ms`
    /// (open ones included: they overlap any window) with their updates.
    /// Blocking.
    pub fn read(store: &dyn StatusIncidentStore, now_ms: i64) -> Result<Self, StoreError> {
        let filter = IncidentFilter {
            member: None,
            hub: None,
            from_ms: now_ms.saturating_sub(HISTORY_MS),
            // An incident back-dated or clocked slightly ahead is still shown.
            to_ms: i64::MAX,
        };
        let entries = store
            .incidents(&filter)?
            .into_iter()
            .map(|incident| {
                let updates = store.updates(incident.id)?;
                Ok(IncidentEntry { incident, updates })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Self { entries })
    }

    /// `member`'s incidents (of `hub` when given), oldest first.
    pub fn of<'a>(
        &'a self,
        member: &'a str,
        hub: Option<&'a str>,
    ) -> impl Iterator<Item = &'a IncidentEntry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.incident.member == member && hub.is_none_or(|h| e.incident.hub == h))
    }
}
