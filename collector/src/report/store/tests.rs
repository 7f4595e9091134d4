//! [`SnapshotStore`] on both backends (`store::tests::on_both_backends!`):
//! bodies stored once and read back, never rewritten (not even by hand),
//! a failed freeze stores nothing, and two replicas freezing one month at
//! once store each body once.

use std::sync::{Arc, Barrier};

use super::*;
use crate::store::tests::backends::Backend;
use crate::store::tests::on_both_backends;

const OCT: Period = Period {
    year: 2026,
    month: 10,
};

/// A backend that has the snapshot store.
trait SnapshotBackend: Backend {
    type Snapshots: SnapshotStore + 'static;
    fn snapshots(&self) -> Self::Snapshots;
}

impl SnapshotBackend for Store {
    type Snapshots = SqliteSnapshots;
    fn snapshots(&self) -> SqliteSnapshots {
        SqliteSnapshots::new(self.clone())
    }
}

impl SnapshotBackend for PgStore {
    type Snapshots = PgSnapshots;
    fn snapshots(&self) -> PgSnapshots {
        PgSnapshots::new(self.clone())
    }
}

fn bodies(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(m, b)| (m.to_string(), b.to_string()))
        .collect()
}

async fn bodies_are_stored_once_and_read_back<B: SnapshotBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let snapshots = store.snapshots();
    assert!(!snapshots.frozen(OCT)?);
    assert_eq!(snapshots.get(OCT, "leap")?, None);
    let first = bodies(&[("leap", "{\"leap\": \"é\"}"), (FLEET, "{\"fleet\": 1}")]);
    assert_eq!(snapshots.put(OCT, &first)?, 2);
    assert!(snapshots.frozen(OCT)?);
    assert!(!snapshots.frozen(OCT.next())?, "only that month");
    assert_eq!(
        snapshots.get(OCT, "leap")?.as_deref(),
        Some("{\"leap\": \"é\"}")
    );
    assert_eq!(
        snapshots.get(OCT, FLEET)?.as_deref(),
        Some("{\"fleet\": 1}")
    );
    assert_eq!(snapshots.get(OCT.next(), "leap")?, None);

    // Freezing again keeps what is stored and adds only the new member.
    let again = bodies(&[("leap", "changed"), ("cryo", "{\"cryo\": 2}")]);
    assert_eq!(snapshots.put(OCT, &again)?, 1);
    assert_eq!(
        snapshots.get(OCT, "leap")?.as_deref(),
        Some("{\"leap\": \"é\"}")
    );
    assert_eq!(
        snapshots.get(OCT, "cryo")?.as_deref(),
        Some("{\"cryo\": 2}")
    );
    // A second handle (another replica, or a restart) reads the same.
    let other = B::open(&fx.cfg)?.snapshots();
    assert_eq!(other.get(OCT, "cryo")?.as_deref(), Some("{\"cryo\": 2}"));
    Ok(())
}

async fn a_frozen_report_is_never_rewritten_even_by_hand<B: SnapshotBackend>() -> anyhow::Result<()>
{
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let snapshots = store.snapshots();
    snapshots.put(OCT, &bodies(&[("leap", "frozen")]))?;
    let err = store
        .execute("UPDATE report_snapshots SET body = 'rewritten'")
        .expect_err("the trigger refuses");
    // The trigger's message is in the error's chain (PostgreSQL's is the
    // driver error's source).
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert!(chain.contains("never rewritten"), "{chain}");
    assert_eq!(snapshots.get(OCT, "leap")?.as_deref(), Some("frozen"));
    Ok(())
}

async fn a_failed_freeze_stores_nothing<B: SnapshotBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    if B::POSTGRES {
        store.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.member = 'zulu' THEN RAISE EXCEPTION 'disk says no'; END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON report_snapshots
                 FOR EACH ROW EXECUTE FUNCTION refuse();",
        )?;
    } else {
        store.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON report_snapshots
                 WHEN new.member = 'zulu'
                 BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
        )?;
    }
    let snapshots = store.snapshots();
    let err = snapshots
        .put(OCT, &bodies(&[("alpha", "a"), ("zulu", "z")]))
        .expect_err("refused");
    assert!(err.to_string().contains("freezing reports"), "{err}");
    assert!(
        !snapshots.frozen(OCT)?,
        "the first body was rolled back too"
    );
    Ok(())
}

async fn two_replicas_freezing_at_once_store_each_body_once<B: SnapshotBackend>()
-> anyhow::Result<()> {
    let fx = B::fixture();
    let replicas = [B::open(&fx.cfg)?, B::open(&fx.cfg)?];
    let members: Vec<(String, String)> = (0..20)
        .map(|i| (format!("member-{i:02}"), format!("body {i}")))
        .collect();
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, replica)| {
            let (snapshots, barrier) = (replica.snapshots(), Arc::clone(&barrier));
            // Each replica lists the members in its own order.
            let mut mine = members.clone();
            if i == 1 {
                mine.reverse();
            }
            std::thread::spawn(move || {
                barrier.wait();
                snapshots.put(OCT, &mine)
            })
        })
        .collect();
    let mut stored = 0;
    for thread in threads {
        stored += thread.join().expect("no panic")?;
    }
    assert_eq!(stored, members.len(), "each body stored by one replica");
    let snapshots = replicas[0].snapshots();
    for (member, body) in &members {
        assert_eq!(snapshots.get(OCT, member)?.as_deref(), Some(body.as_str()));
    }
    Ok(())
}

on_both_backends!(
    bodies_are_stored_once_and_read_back,
    a_frozen_report_is_never_rewritten_even_by_hand,
    a_failed_freeze_stores_nothing,
    two_replicas_freezing_at_once_store_each_body_once,
);
