//! [`HubStatusStore`]'s contract on both backends
//! (`store::tests::on_both_backends!`): statuses round-trip and are
//! replaced, a moved cursor rolls the rows back, an unreadable row is
//! skipped.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::alerts::fleet::CheckView;
use crate::pipeline::StageCursor;
use crate::store::tests::backends::Backend;
use crate::store::tests::on_both_backends;

const STAGE: &str = "alerts.hub_status";

/// A backend that has a [`HubStatusStore`].
trait HubStatusBackend: Backend {
    fn hub_status(&self) -> Arc<dyn HubStatusStore>;
}

impl HubStatusBackend for Store {
    fn hub_status(&self) -> Arc<dyn HubStatusStore> {
        Arc::new(SqliteHubStatus::new(self.clone()))
    }
}

impl HubStatusBackend for PgStore {
    fn hub_status(&self) -> Arc<dyn HubStatusStore> {
        Arc::new(PgHubStatus::new(self.clone()))
    }
}

fn key(member: &str, hub: &str) -> HubKey {
    (member.to_string(), hub.to_string())
}

fn status(agent: &str, at_ms: i64, ok: bool) -> HubStatus {
    HubStatus {
        agent: Some(agent.to_string()),
        last_batch_ms: Some(at_ms),
        inside: BTreeMap::from([(
            "hub_health".to_string(),
            CheckView {
                ok,
                at_ms,
                failing_since_ms: (!ok).then_some(at_ms),
                status: Some(if ok { 200 } else { 503 }),
                error: (!ok).then(|| "é \"unavailable\"".to_string()),
                latency_us: 1234,
            },
        )]),
        cert_inside: Some((at_ms + 86_400_000, at_ms)),
        ..HubStatus::default()
    }
}

fn loaded(store: &dyn HubStatusStore) -> anyhow::Result<BTreeMap<HubKey, HubStatus>> {
    Ok(store.load()?.into_iter().collect())
}

/// Saved statuses load back (also after reopening); a later save replaces
/// a hub's row and leaves the others.
async fn statuses_load_back_and_a_save_replaces_them<B: HubStatusBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let hubs = store.hub_status();
    assert!(hubs.load()?.is_empty());
    let (prod, vm) = (key("leap", "prod"), key("leap", "vm"));
    let (up, other) = (status("a1", 1000, true), status("a2", 1000, true));
    hubs.save(&[(&prod, &up), (&vm, &other)], None)?;
    let down = status("a1", 2000, false);
    hubs.save(&[(&prod, &down)], None)?;
    drop(hubs);
    drop(store);
    let store = B::open(&fx.cfg)?;
    let found = loaded(store.hub_status().as_ref())?;
    assert_eq!(found.len(), 2);
    assert_eq!(found[&prod], down);
    assert_eq!(found[&vm], other);
    Ok(())
}

/// The hub-status stage's commit: rows and cursor together, and a commit
/// from a moved cursor writes no row.
async fn a_moved_cursor_rolls_the_statuses_back<B: HubStatusBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let hubs = store.hub_status();
    let prod = key("leap", "prod");
    let up = status("a1", 1000, true);
    let start = StageCursor::default();
    let moved = StageCursor::at(5);
    hubs.save(
        &[(&prod, &up)],
        Some(&CursorUpdate {
            stage: STAGE,
            previous: &start,
            cursor: &moved,
            quarantined: &[],
            now_ms: 0,
        }),
    )?;
    assert_eq!(store.load_cursor(STAGE)?, moved);
    let down = status("a1", 2000, false);
    let vm = key("leap", "vm");
    let err = hubs
        .save(
            &[(&prod, &down), (&vm, &down)],
            Some(&CursorUpdate {
                stage: STAGE,
                previous: &start,
                cursor: &StageCursor::at(9),
                quarantined: &[],
                now_ms: 0,
            }),
        )
        .expect_err("a moved cursor fails the save");
    assert!(err.to_string().contains("moved"), "{err}");
    assert!(err.to_string().contains("saving hub status"), "{err}");
    if B::POSTGRES {
        assert!(matches!(err, StoreError::Postgres { .. }), "{err:?}");
    }
    let found = loaded(hubs.as_ref())?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[&prod], up);
    assert_eq!(store.load_cursor(STAGE)?, moved);
    Ok(())
}

/// A row that no longer parses (an older or broken writer) is skipped;
/// the others load.
async fn an_unreadable_status_row_is_skipped<B: HubStatusBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let hubs = store.hub_status();
    let prod = key("leap", "prod");
    hubs.save(&[(&prod, &status("a1", 1000, true))], None)?;
    store.execute(
        "INSERT INTO hub_status (member, hub, status) VALUES ('leap', 'broken', 'not json')",
    )?;
    let found = loaded(hubs.as_ref())?;
    assert_eq!(found.keys().collect::<Vec<_>>(), vec![&prod]);
    Ok(())
}

on_both_backends!(
    statuses_load_back_and_a_save_replaces_them,
    a_moved_cursor_rolls_the_statuses_back,
    an_unreadable_status_row_is_skipped,
);
