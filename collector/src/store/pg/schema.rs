//! The PostgreSQL store's schema, as an ordered list of migrations in
//! PostgreSQL's dialect (`BIGSERIAL`, `BYTEA`, `BIGINT`).
//!
//! The version lives in the one-row table `hubwatch_schema`: version `n`
//! means the first `n` entries of [`MIGRATIONS`] have been applied. On open,
//! the missing ones run in order in one transaction together with the
//! version bump, after `pg_advisory_xact_lock(`[`MIGRATION_LOCK`]`)`: two
//! replicas starting at once queue on the lock, and the second finds the
//! schema current. A database whose version is newer than this build knows
//! is refused ([`StoreError::FutureSchema`]), never downgraded.
//!
//! Append-only, like SQLite's list; the two lists are numbered separately
//! (PostgreSQL gets a feature's tables when its store is ported).

use deadpool_postgres::Client;

use super::pg_error;
use crate::store::StoreError;

/// The advisory lock key every hubwatch migration takes ("hubwatch" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x6875_6277_6174_6368;

/// Every migration, in order. Entry `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the raw batch log, per-agent counters, tokens, derivation cursors
    // and quarantine (SQLite's migrations 1 and 4).
    "
    -- One row per stored batch. BIGSERIAL ids are never reused; with
    -- concurrent writers they may commit out of order, which the pipeline's
    -- cursor gaps handle (pipeline/cursor.rs). `frame` is NULL once older
    -- than raw_retention; the (agent, seq) key stays for deduplication.
    CREATE TABLE batches (
        id          BIGSERIAL PRIMARY KEY,
        agent       TEXT   NOT NULL,
        seq         BIGINT NOT NULL,  -- u64 stored bit-for-bit as i64
        member      TEXT   NOT NULL,
        received_ms BIGINT NOT NULL,
        created_ms  BIGINT NOT NULL,
        records     BIGINT NOT NULL,
        frame       BYTEA,
        UNIQUE (agent, seq)
    );
    CREATE INDEX batches_by_received ON batches (received_ms);
    CREATE INDEX batches_with_frame_by_received ON batches (received_ms)
        WHERE frame IS NOT NULL;

    CREATE TABLE agents (
        agent            TEXT PRIMARY KEY,
        member           TEXT   NOT NULL,
        version          TEXT   NOT NULL,
        first_seen_ms    BIGINT NOT NULL,
        last_seen_ms     BIGINT NOT NULL,
        last_seq         BIGINT NOT NULL,
        batches          BIGINT NOT NULL,
        records          BIGINT NOT NULL,
        duplicates       BIGINT NOT NULL,
        dropped_by_agent BIGINT NOT NULL
    );

    CREATE TABLE tokens (
        agent        TEXT PRIMARY KEY,
        member       TEXT   NOT NULL,
        token_sha256 BYTEA  NOT NULL UNIQUE,
        created_ms   BIGINT NOT NULL,
        revoked_ms   BIGINT
    );

    CREATE TABLE derive_cursors (
        name    TEXT PRIMARY KEY,
        last_id BIGINT NOT NULL,
        gaps    TEXT   NOT NULL DEFAULT ''
    );

    CREATE TABLE quarantine (
        stage    TEXT   NOT NULL,
        batch_id BIGINT NOT NULL,
        agent    TEXT   NOT NULL,
        member   TEXT   NOT NULL,
        seq      BIGINT NOT NULL,
        reason   TEXT   NOT NULL,
        at_ms    BIGINT NOT NULL,
        PRIMARY KEY (stage, batch_id)
    );
    ",
    // HA agent pairs: the cluster a token's agent belongs to (as SQLite's
    // `tokens.ha_cluster`); NULL for an agent that is not in a pair.
    "ALTER TABLE tokens ADD COLUMN ha_cluster TEXT;",
    // 3 (issue 14, feature stores): the SLI minutes, their hourly sums, the
    // spawn counters and each hub's latest journey (SQLite's 2, 5 and the
    // journey migration), as `slo::store::PgSli` writes them; the fleet
    // checks' hub status (`alerts::fleet::store::PgHubStatus`); the alert
    // state and incident history (`alerts::state_store::PgAlertStateStore`).
    "
    -- What was observed of each hub in each minute (Unix minutes); counts
    -- only, whether a minute is good is decided when it is read.
    CREATE TABLE sli_minutes (
        member               TEXT   NOT NULL,
        hub                  TEXT   NOT NULL,
        minute               BIGINT NOT NULL,
        probes_ok            BIGINT NOT NULL DEFAULT 0,
        probes_failed        BIGINT NOT NULL DEFAULT 0,
        outside_ok           BIGINT NOT NULL DEFAULT 0,
        outside_failed       BIGINT NOT NULL DEFAULT 0,
        spawn_ok             BIGINT NOT NULL DEFAULT 0,
        spawn_failed         BIGINT NOT NULL DEFAULT 0,
        spawn_fast           BIGINT NOT NULL DEFAULT 0,
        spawn_timed          BIGINT NOT NULL DEFAULT 0,
        hub_samples          BIGINT NOT NULL DEFAULT 0,
        journey_good         BIGINT NOT NULL DEFAULT 0,
        journey_bad          BIGINT NOT NULL DEFAULT 0,
        journey_spawn_failed BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (member, hub, minute)
    );
    -- Loading the last window at start; retention past storage.sli_retention.
    CREATE INDEX sli_minutes_by_minute ON sli_minutes (minute);

    -- The minutes summed per hub and Unix hour, kept in the minutes'
    -- transaction (availability as MinuteCounts::AVAILABILITY_SQL).
    CREATE TABLE sli_hours (
        member               TEXT   NOT NULL,
        hub                  TEXT   NOT NULL,
        hour                 BIGINT NOT NULL,
        minutes              BIGINT NOT NULL DEFAULT 0,
        avail_good           BIGINT NOT NULL DEFAULT 0,
        avail_bad            BIGINT NOT NULL DEFAULT 0,
        spawn_ok             BIGINT NOT NULL DEFAULT 0,
        spawn_failed         BIGINT NOT NULL DEFAULT 0,
        spawn_fast           BIGINT NOT NULL DEFAULT 0,
        spawn_timed          BIGINT NOT NULL DEFAULT 0,
        journey_good         BIGINT NOT NULL DEFAULT 0,
        journey_bad          BIGINT NOT NULL DEFAULT 0,
        journey_spawn_failed BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (member, hub, hour)
    );

    -- The last value of each spawn counter series per hub (deltas survive
    -- restarts and leader changes; a lower value is a hub restart).
    CREATE TABLE sli_counters (
        member       TEXT             NOT NULL,
        hub          TEXT             NOT NULL,
        series       TEXT             NOT NULL,
        value        DOUBLE PRECISION NOT NULL,
        timestamp_ms BIGINT           NOT NULL,
        PRIMARY KEY (member, hub, series)
    );

    CREATE TABLE journey_latest (
        member               TEXT    NOT NULL,
        hub                  TEXT    NOT NULL,
        started_ms           BIGINT  NOT NULL,
        ok                   BOOLEAN NOT NULL,
        phase                TEXT    NOT NULL,
        reason               TEXT    NOT NULL,
        consecutive_failures BIGINT  NOT NULL,
        PRIMARY KEY (member, hub)
    );

    -- The fleet checks' view of each configured hub, as JSON (TEXT, as on
    -- SQLite: a row that no longer reads is skipped, not refused), written
    -- with derive_cursors('alerts.hub_status') in one transaction.
    CREATE TABLE hub_status (
        member TEXT NOT NULL,
        hub    TEXT NOT NULL,
        status TEXT NOT NULL,
        PRIMARY KEY (member, hub)
    );

    -- One row per alert the engine holds (firing, or resolved and still
    -- sent for resolved_retention). The fingerprint is SHA-256 of the sorted
    -- labels: a new leader loads the same incident with its starts_at (no
    -- re-page) and the resolutions its predecessor saved.
    CREATE TABLE alert_state (
        fingerprint    TEXT   PRIMARY KEY,
        source         TEXT   NOT NULL,
        labels         TEXT   NOT NULL,  -- JSON object
        annotations    TEXT   NOT NULL,  -- JSON object
        starts_at_ms   BIGINT NOT NULL,
        resolved_at_ms BIGINT,           -- NULL while firing
        last_sent_ms   BIGINT            -- last accepted POST to an Alertmanager
    );

    -- One row per incident (fingerprint + starts_at of one firing), upserted
    -- in the transaction that saves alert_state, kept 400 days.
    CREATE TABLE alert_incidents (
        fingerprint    TEXT   NOT NULL,
        starts_at_ms   BIGINT NOT NULL,
        resolved_at_ms BIGINT,
        alertname      TEXT   NOT NULL,
        severity       TEXT   NOT NULL,
        member         TEXT   NOT NULL,
        hub            TEXT   NOT NULL,
        slo            TEXT   NOT NULL,
        labels         TEXT   NOT NULL,
        PRIMARY KEY (fingerprint, starts_at_ms)
    );
    CREATE INDEX alert_incidents_by_start ON alert_incidents (starts_at_ms);
    ",
    // 4: the leader lease of collector replicas (`store/pg/lease.rs`).
    "
    -- One row per lease. `expires_at` is in the database's clock, so
    -- replicas on machines whose clocks disagree still agree on expiry.
    -- `epoch` grows each time another replica takes the lease.
    CREATE TABLE leader_lease (
        name        TEXT        PRIMARY KEY,
        holder      TEXT        NOT NULL,
        url         TEXT,
        epoch       BIGINT      NOT NULL,
        acquired_at TIMESTAMPTZ NOT NULL,
        expires_at  TIMESTAMPTZ NOT NULL
    );
    ",
    // 5: the usage ledger and its monthly rollup (issue 8; SQLite's 5, 8,
    // 10, the additive-snapshot and the rollup migrations, in their final
    // shape), as `usage::store::PgUsage` and `usage/rollup.rs` write them.
    // `user` is quoted: it is a reserved word in PostgreSQL.
    "
    -- A server's four-part key, interned once.
    CREATE TABLE usage_servers (
        id     BIGSERIAL PRIMARY KEY,
        member TEXT NOT NULL,
        hub    TEXT NOT NULL,
        \"user\" TEXT NOT NULL,
        server TEXT NOT NULL,
        UNIQUE (member, hub, \"user\", server)
    );
    -- One row per observation of a server (merged per instant and kind).
    -- kind: 0 started, 1 stopped, 2 activity, 3 resources, 4 stop inferred.
    CREATE TABLE usage_points (
        server_id  BIGINT NOT NULL,
        ts         BIGINT NOT NULL,
        kind       BIGINT NOT NULL,
        cpu_request_millicores BIGINT,
        memory_request_bytes   BIGINT,
        cpu_usage_millicores   BIGINT,
        memory_usage_bytes     BIGINT,
        storage_bytes          BIGINT,
        PRIMARY KEY (server_id, ts, kind)
    );
    -- Instants at which the agent observed a hub (coverage).
    CREATE TABLE usage_seen (
        member TEXT   NOT NULL,
        hub    TEXT   NOT NULL,
        ts     BIGINT NOT NULL,
        PRIMARY KEY (member, hub, ts)
    );
    -- Integer quantities per server and hour (hour = start, Unix ms); the
    -- added_* columns are what additive snapshots added (never recomputed).
    CREATE TABLE usage_server_hours (
        server_id BIGINT NOT NULL,
        hour      BIGINT NOT NULL,
        server_ms                     BIGINT  NOT NULL,
        cpu_request_millicore_seconds BIGINT  NOT NULL,
        memory_request_byte_seconds   BIGINT  NOT NULL,
        cpu_usage_millicore_seconds   BIGINT  NOT NULL,
        memory_usage_byte_seconds     BIGINT  NOT NULL,
        storage_byte_seconds          BIGINT  NOT NULL,
        bounded                       BOOLEAN NOT NULL DEFAULT false,
        added_cpu_request_millicore_seconds BIGINT NOT NULL DEFAULT 0,
        added_memory_request_byte_seconds   BIGINT NOT NULL DEFAULT 0,
        added_cpu_usage_millicore_seconds   BIGINT NOT NULL DEFAULT 0,
        added_memory_usage_byte_seconds     BIGINT NOT NULL DEFAULT 0,
        added_storage_byte_seconds          BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (server_id, hour)
    );
    CREATE INDEX usage_server_hours_by_hour ON usage_server_hours (hour);
    -- Observed ms of a hub per hour.
    CREATE TABLE usage_hub_hours (
        member      TEXT   NOT NULL,
        hub         TEXT   NOT NULL,
        hour        BIGINT NOT NULL,
        observed_ms BIGINT NOT NULL,
        PRIMARY KEY (member, hub, hour)
    );
    -- The months rolled up: their usage_server_hours rows are gone.
    CREATE TABLE usage_rollup_months (
        month        BIGINT PRIMARY KEY,   -- the month's first ms (UTC)
        end_ms       BIGINT NOT NULL,      -- the next month's first ms
        rolled_at_ms BIGINT NOT NULL,
        server_hours BIGINT NOT NULL       -- server-hour rows rolled up
    );
    -- The hubs of rolled-up hours, interned.
    CREATE TABLE usage_rollup_hubs (
        id     BIGSERIAL PRIMARY KEY,
        member TEXT NOT NULL,
        hub    TEXT NOT NULL,
        UNIQUE (member, hub)
    );
    -- Every server's quantities summed per hub and hour, the distinct users
    -- with server time in it, the bounded server-hours and the hub's
    -- observed time (moved here from usage_hub_hours).
    CREATE TABLE usage_rollup_hub_hours (
        hub_id BIGINT NOT NULL,
        hour   BIGINT NOT NULL,
        server_ms                     BIGINT NOT NULL,
        cpu_request_millicore_seconds BIGINT NOT NULL,
        memory_request_byte_seconds   BIGINT NOT NULL,
        cpu_usage_millicore_seconds   BIGINT NOT NULL,
        memory_usage_byte_seconds     BIGINT NOT NULL,
        storage_byte_seconds          BIGINT NOT NULL,
        active_users                  BIGINT NOT NULL,
        bounded_rows                  BIGINT NOT NULL,
        observed_ms                   BIGINT NOT NULL,
        PRIMARY KEY (hub_id, hour)
    );
    -- One server's quantities over one month, and its first and last hour
    -- with a storage figure (the mean bytes then).
    CREATE TABLE usage_rollup_server_months (
        server_id BIGINT NOT NULL,
        month     BIGINT NOT NULL,
        server_ms                     BIGINT NOT NULL,
        cpu_request_millicore_seconds BIGINT NOT NULL,
        memory_request_byte_seconds   BIGINT NOT NULL,
        cpu_usage_millicore_seconds   BIGINT NOT NULL,
        memory_usage_byte_seconds     BIGINT NOT NULL,
        storage_byte_seconds          BIGINT NOT NULL,
        bounded_rows                  BIGINT NOT NULL,
        storage_first_hour  BIGINT,
        storage_first_bytes BIGINT,
        storage_last_hour   BIGINT,
        storage_last_bytes  BIGINT,
        PRIMARY KEY (server_id, month)
    );
    -- Distinct users with server time per hub and UTC day, ISO week or
    -- month (unit 0, 1, 2), and per member and month across its hubs
    -- (unit 3, hub '').
    CREATE TABLE usage_rollup_users (
        member TEXT   NOT NULL,
        hub    TEXT   NOT NULL,
        unit   BIGINT NOT NULL,
        start  BIGINT NOT NULL,
        users  BIGINT NOT NULL,
        PRIMARY KEY (member, hub, unit, start)
    );
    ",
    // 6: cost recovery and report snapshots (SQLite's 7 and 9): imported
    // FOCUS bills, closed months (`cost::store::PgCost`) and closed months'
    // frozen reports (`report::store::PgSnapshots`).
    "
    -- Every FOCUS file imported, keyed by its SHA-256 (a re-import is a no-op).
    CREATE TABLE cost_imports (
        sha256      TEXT   PRIMARY KEY,
        imported_at BIGINT NOT NULL,
        file_name   TEXT   NOT NULL,
        rows        BIGINT NOT NULL
    );
    -- The bill in force per cluster and month (micro-units), from the last
    -- import that named it.
    CREATE TABLE cost_bills (
        cluster       TEXT   NOT NULL,
        period        TEXT   NOT NULL,
        amount_micros BIGINT NOT NULL,
        currency      TEXT   NOT NULL,
        rows          BIGINT NOT NULL,
        sha256        TEXT   NOT NULL,
        imported_at   BIGINT NOT NULL,
        PRIMARY KEY (cluster, period)
    );
    -- Every bill an import replaced, with what replaced it.
    CREATE TABLE cost_bill_changes (
        id         BIGSERIAL PRIMARY KEY,
        cluster    TEXT   NOT NULL,
        period     TEXT   NOT NULL,
        old_micros BIGINT NOT NULL,
        old_sha256 TEXT   NOT NULL,
        new_micros BIGINT NOT NULL,
        new_sha256 TEXT   NOT NULL,
        changed_at BIGINT NOT NULL
    );
    -- A closed month: frozen once, never rewritten.
    CREATE TABLE cost_closed_periods (
        period     TEXT   PRIMARY KEY,
        closed_at  BIGINT NOT NULL,
        model_hash TEXT   NOT NULL,
        model_text TEXT   NOT NULL,
        snapshot   TEXT   NOT NULL
    );
    CREATE FUNCTION cost_closed_periods_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'a closed cost period is never rewritten'; END $$;
    CREATE TRIGGER cost_closed_periods_frozen BEFORE UPDATE ON cost_closed_periods
        FOR EACH ROW EXECUTE FUNCTION cost_closed_periods_frozen();

    -- Each closed month's member and fleet reports frozen as JSON after the
    -- close (member '' is the fleet), never rewritten.
    CREATE TABLE report_snapshots (
        period TEXT NOT NULL,
        member TEXT NOT NULL,
        body   TEXT NOT NULL,
        PRIMARY KEY (period, member)
    );
    CREATE FUNCTION report_snapshots_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'a frozen report is never rewritten'; END $$;
    CREATE TRIGGER report_snapshots_frozen BEFORE UPDATE ON report_snapshots
        FOR EACH ROW EXECUTE FUNCTION report_snapshots_frozen();
    ",
    // 7: status pages, status incidents, maintenance windows and status
    // webhooks (SQLite's status_link_key, status incidents, maintenance and
    // status webhooks migrations), as `status::link::LinkKey`,
    // `incidents::PgStatusIncidents`, `maintenance::PgMaintenance` and
    // `status::webhooks::outbox` (its `pg.rs`) write them.
    "
    -- The collector's secret that signs private status pages' links.
    CREATE TABLE status_link_key (
        id  BIGINT PRIMARY KEY CHECK (id = 1),
        key BYTEA  NOT NULL
    );

    -- One status incident per hub outage; state is the latest update's.
    CREATE TABLE status_incidents (
        id                     BIGSERIAL PRIMARY KEY,
        member                 TEXT   NOT NULL,
        hub                    TEXT   NOT NULL,
        title                  TEXT   NOT NULL,
        state                  TEXT   NOT NULL,
        started_at_ms          BIGINT NOT NULL,
        ended_at_ms            BIGINT,
        last_alert_resolved_ms BIGINT,
        opened_by              TEXT   NOT NULL  -- 'alert' or 'operator'
    );
    CREATE INDEX status_incidents_by_hub ON status_incidents (member, hub, started_at_ms);
    CREATE INDEX status_incidents_by_start ON status_incidents (started_at_ms);
    CREATE TABLE status_incident_updates (
        id          BIGSERIAL PRIMARY KEY,
        incident_id BIGINT NOT NULL,
        at_ms       BIGINT NOT NULL,
        state       TEXT   NOT NULL,
        message     TEXT   NOT NULL,
        author      TEXT   NOT NULL  -- 'hubwatch' for automatic updates
    );
    CREATE INDEX status_incident_updates_by_incident
        ON status_incident_updates (incident_id, id);
    -- Each alert firing folded into an incident, once.
    CREATE TABLE status_incident_alerts (
        fingerprint    TEXT   NOT NULL,
        starts_at_ms   BIGINT NOT NULL,
        incident_id    BIGINT NOT NULL,
        alertname      TEXT   NOT NULL,
        resolved_at_ms BIGINT,
        PRIMARY KEY (fingerprint, starts_at_ms)
    );
    CREATE INDEX status_incident_alerts_by_incident ON status_incident_alerts (incident_id);

    CREATE TABLE maintenance_windows (
        id          BIGSERIAL PRIMARY KEY,
        member      TEXT   NOT NULL,
        hubs        TEXT   NOT NULL,  -- JSON list of hub names; [] = every hub of the member
        start_ms    BIGINT NOT NULL,
        end_ms      BIGINT NOT NULL,
        start_local TEXT   NOT NULL,
        end_local   TEXT   NOT NULL,
        timezone    TEXT   NOT NULL,
        note        TEXT   NOT NULL,
        origin      TEXT   NOT NULL,  -- 'config' | 'api'
        config_key  TEXT UNIQUE,
        created_ms  BIGINT NOT NULL
    );
    CREATE INDEX maintenance_windows_by_member ON maintenance_windows (member, start_ms);

    -- How far incident updates have been turned into webhook events (the
    -- table is new here, so the cursor starts at 0), and each delivery owed.
    CREATE TABLE status_webhook_cursor (
        id             BIGINT PRIMARY KEY CHECK (id = 1),
        last_update_id BIGINT NOT NULL
    );
    INSERT INTO status_webhook_cursor (id, last_update_id)
        SELECT 1, COALESCE(MAX(id), 0) FROM status_incident_updates;
    CREATE TABLE status_webhook_outbox (
        id              BIGSERIAL PRIMARY KEY,
        url             TEXT   NOT NULL,
        event           TEXT   NOT NULL,
        body            TEXT   NOT NULL,
        created_ms      BIGINT NOT NULL,
        attempts        BIGINT NOT NULL DEFAULT 0,
        next_attempt_ms BIGINT NOT NULL,
        last_error      TEXT
    );
    CREATE INDEX status_webhook_outbox_by_url ON status_webhook_outbox (url, id);
    ",
    // 8: HA agent pairs' elections, shared by collector replicas
    // (`store/pg/ha.rs`; in memory on SQLite).
    "
    CREATE TABLE ha_elections (
        member       TEXT   NOT NULL,
        cluster      TEXT   NOT NULL,
        elected      TEXT   NOT NULL,
        last_seen_ms BIGINT NOT NULL,
        PRIMARY KEY (member, cluster)
    );
    ",
    // 9: restart to ready (issue 15): per hour, the minutes that had the
    // hub's metrics, so the SLO engine loads whole hours from sli_hours and
    // still knows the last minute with metrics (`SloEngine::load`); filled
    // from the minutes already stored.
    "
    ALTER TABLE sli_hours ADD COLUMN metrics_minutes BIGINT NOT NULL DEFAULT 0;
    UPDATE sli_hours SET metrics_minutes = (
        SELECT count(*) FROM sli_minutes m
        WHERE m.member = sli_hours.member AND m.hub = sli_hours.hub
          AND m.minute >= sli_hours.hour * 60 AND m.minute < sli_hours.hour * 60 + 60
          AND m.hub_samples > 0);
    ",
];

/// The schema version this build writes.
pub fn current_version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// Brings the database to [`current_version`] (see the module doc).
pub(super) async fn migrate(client: &mut Client, name: &str) -> Result<(), StoreError> {
    let failed = |operation| move |e: tokio_postgres::Error| pg_error(operation, e);
    let tx = client
        .transaction()
        .await
        .map_err(failed("starting the schema migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(failed("taking the migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS hubwatch_schema (
             one     BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
             version BIGINT NOT NULL
         )",
    )
    .await
    .map_err(failed("creating the schema version table"))?;
    let found: i64 = tx
        .query_opt("SELECT version FROM hubwatch_schema", &[])
        .await
        .map_err(failed("reading the schema version"))?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(failed("reading the schema version"))?
        .unwrap_or(0);
    let supported = current_version();
    if found > supported {
        return Err(StoreError::FutureSchema {
            path: name.into(),
            found,
            supported,
        });
    }
    if found < 0 {
        return Err(StoreError::Corrupt {
            path: name.into(),
            detail: format!("negative schema version {found}"),
        });
    }
    if found == supported {
        return Ok(());
    }
    let first_missing = usize::try_from(found).unwrap_or(usize::MAX);
    for migration in MIGRATIONS.iter().skip(first_missing) {
        tx.batch_execute(migration)
            .await
            .map_err(failed("applying a schema migration"))?;
    }
    tx.execute(
        "INSERT INTO hubwatch_schema (one, version) VALUES (true, $1)
         ON CONFLICT (one) DO UPDATE SET version = excluded.version",
        &[&supported],
    )
    .await
    .map_err(failed("writing the schema version"))?;
    tx.commit()
        .await
        .map_err(failed("committing the schema migration"))?;
    tracing::info!(
        store = name,
        from = found,
        to = supported,
        "store schema migrated"
    );
    Ok(())
}
