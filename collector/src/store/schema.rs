//! The store's schema, as an ordered list of migrations.
//!
//! The schema version is SQLite's `PRAGMA user_version`: version `n` means the
//! first `n` entries of [`MIGRATIONS`] have been applied. On open, the missing
//! ones run in order inside one `BEGIN IMMEDIATE` transaction together with the
//! version bump, so a crash mid-migration leaves the previous version intact and
//! two processes opening the same file at once cannot both migrate. A file
//! whose version is newer than this build knows is refused, never downgraded.
//!
//! Migrations are append-only: never edit a released entry, add a new one.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Every migration, in order. Entry `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the raw batch log, per-agent counters, tokens, and derivation cursors.
    "
    -- One row per stored batch. AUTOINCREMENT so an id is never reused even
    -- after retention deleted the newest rows: derivation cursors rely on ids
    -- only growing. `frame` is set to NULL once older than raw_retention; the
    -- (agent, seq) key stays longer so a late replay is still a duplicate.
    CREATE TABLE batches (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        agent       TEXT    NOT NULL,
        seq         INTEGER NOT NULL,  -- u64 stored bit-for-bit as i64
        member      TEXT    NOT NULL,
        received_ms INTEGER NOT NULL,
        created_ms  INTEGER NOT NULL,
        records     INTEGER NOT NULL,
        frame       BLOB,
        UNIQUE (agent, seq)
    );
    -- Retention: deleting keys past the dedupe horizon.
    CREATE INDEX batches_by_received ON batches (received_ms);
    -- Retention: finding frames to drop without scanning rows already dropped.
    CREATE INDEX batches_with_frame_by_received ON batches (received_ms)
        WHERE frame IS NOT NULL;

    -- Per-agent counters, updated in the transaction that stores the batch.
    CREATE TABLE agents (
        agent            TEXT PRIMARY KEY NOT NULL,
        member           TEXT    NOT NULL,
        version          TEXT    NOT NULL,
        first_seen_ms    INTEGER NOT NULL,
        last_seen_ms     INTEGER NOT NULL,
        last_seq         INTEGER NOT NULL,
        batches          INTEGER NOT NULL,
        records          INTEGER NOT NULL,
        duplicates       INTEGER NOT NULL,
        dropped_by_agent INTEGER NOT NULL
    );

    -- Agent credentials: only the SHA-256 of each token is kept.
    CREATE TABLE tokens (
        agent        TEXT PRIMARY KEY NOT NULL,
        member       TEXT    NOT NULL,
        token_sha256 BLOB    NOT NULL UNIQUE,
        created_ms   INTEGER NOT NULL,
        revoked_ms   INTEGER
    );

    -- For later stages that derive data from batches exactly once: the last
    -- batch id each stage has consumed, written in the stage's own transaction.
    CREATE TABLE derive_cursors (
        name    TEXT PRIMARY KEY NOT NULL,
        last_id INTEGER NOT NULL
    );
    ",
    // 2: SLI accounting per hub per minute (issue 4).
    "
    -- What was observed of each hub in each minute (Unix minute = ms / 60000,
    -- of the record's own timestamp, so a late backlog lands where it
    -- belongs). Written by the SLI derivation together with its derive
    -- cursor ('slo.sli'), and by the collector's outside probes. Counts only:
    -- whether a minute is good is decided when it is read.
    CREATE TABLE sli_minutes (
        member         TEXT    NOT NULL,
        hub            TEXT    NOT NULL,
        minute         INTEGER NOT NULL,
        probes_ok      INTEGER NOT NULL DEFAULT 0,  -- agent: /hub/health and probes
        probes_failed  INTEGER NOT NULL DEFAULT 0,
        outside_ok     INTEGER NOT NULL DEFAULT 0,  -- the collector's own probes
        outside_failed INTEGER NOT NULL DEFAULT 0,
        spawn_ok       INTEGER NOT NULL DEFAULT 0,  -- spawn count deltas, status success
        spawn_failed   INTEGER NOT NULL DEFAULT 0,  -- status failure or error
        spawn_fast     INTEGER NOT NULL DEFAULT 0,  -- successes under 120 s (bucket delta)
        spawn_timed    INTEGER NOT NULL DEFAULT 0,  -- successes in the histogram (le=+Inf delta)
        hub_samples    INTEGER NOT NULL DEFAULT 0,  -- jupyterhub_* samples: metrics were scraped
        PRIMARY KEY (member, hub, minute)
    ) WITHOUT ROWID;
    -- Loading the last window at start; retention past storage.sli_retention.
    CREATE INDEX sli_minutes_by_minute ON sli_minutes (minute);

    -- The last value of each spawn counter series per hub, so deltas survive
    -- restarts of the collector; a value below it is a hub restart (reset).
    CREATE TABLE sli_counters (
        member       TEXT    NOT NULL,
        hub          TEXT    NOT NULL,
        series       TEXT    NOT NULL,  -- name{labels without hub}
        value        REAL    NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        PRIMARY KEY (member, hub, series)
    ) WITHOUT ROWID;
    ",
    // 3: alert state that survives restarts (issue 4).
    "
    -- One row per alert the engine holds: firing, or resolved and still being
    -- sent for resolved_retention. The fingerprint is SHA-256 of the sorted
    -- labels, so the same condition is the same incident across restarts and
    -- keeps its starts_at (no re-page).
    CREATE TABLE alert_state (
        fingerprint    TEXT PRIMARY KEY NOT NULL,
        source         TEXT    NOT NULL,  -- the AlertSource that produced it
        labels         TEXT    NOT NULL,  -- JSON object
        annotations    TEXT    NOT NULL,  -- JSON object
        starts_at_ms   INTEGER NOT NULL,
        resolved_at_ms INTEGER,           -- NULL while firing
        last_sent_ms   INTEGER            -- last accepted POST to an Alertmanager
    );

    -- The fleet checks' view of each configured hub (probes from inside and
    -- outside, its agent, certificate expiry, storage), as JSON, derived from
    -- the batch log after derive_cursors('alerts.hub_status') and from the
    -- collector's own probes; written with that cursor in one transaction.
    CREATE TABLE hub_status (
        member TEXT NOT NULL,
        hub    TEXT NOT NULL,
        status TEXT NOT NULL,
        PRIMARY KEY (member, hub)
    );
    ",
    // 4: the derivation pipeline (issue 7): cursor gaps and quarantine.
    "
    -- Id ranges below last_id a stage has not seen yet (JSON [{first, last,
    -- noticed_ms}], '' for none): rows that commit out of id order are read
    -- when they appear (see collector/src/pipeline/cursor.rs).
    ALTER TABLE derive_cursors ADD COLUMN gaps TEXT NOT NULL DEFAULT '';

    -- Batches a stage could not use (undecodable, or its derivation failed),
    -- written with the stage's cursor; the stage went on without them.
    CREATE TABLE quarantine (
        stage    TEXT    NOT NULL,
        batch_id INTEGER NOT NULL,
        agent    TEXT    NOT NULL,
        member   TEXT    NOT NULL,
        seq      INTEGER NOT NULL,
        reason   TEXT    NOT NULL,
        at_ms    INTEGER NOT NULL,
        PRIMARY KEY (stage, batch_id)
    );
    ",
    // 5: the usage ledger (issue 8): observations, per server-hour quantities
    // and per hub-hour observed time, all rewritten by the `usage.ledger`
    // stage in the transaction that moves its cursor.
    "
    -- One row per observation of a server (merged per instant and kind).
    -- kind: 0 started, 1 stopped, 2 activity, 3 resources.
    CREATE TABLE usage_points (
        member     TEXT    NOT NULL,
        hub        TEXT    NOT NULL,
        user       TEXT    NOT NULL,
        server     TEXT    NOT NULL,
        ts         INTEGER NOT NULL,
        kind       INTEGER NOT NULL,
        cpu_request_millicores INTEGER,
        memory_request_bytes   INTEGER,
        cpu_usage_millicores   INTEGER,
        memory_usage_bytes     INTEGER,
        storage_bytes          INTEGER,
        PRIMARY KEY (member, hub, user, server, ts, kind)
    ) WITHOUT ROWID;
    -- Instants at which the agent observed a hub (coverage).
    CREATE TABLE usage_seen (
        member TEXT    NOT NULL,
        hub    TEXT    NOT NULL,
        ts     INTEGER NOT NULL,
        PRIMARY KEY (member, hub, ts)
    ) WITHOUT ROWID;
    -- Integer quantities per server and hour (hour = start, Unix ms).
    CREATE TABLE usage_server_hours (
        member TEXT    NOT NULL,
        hub    TEXT    NOT NULL,
        user   TEXT    NOT NULL,
        server TEXT    NOT NULL,
        hour   INTEGER NOT NULL,
        server_ms                     INTEGER NOT NULL,
        cpu_request_millicore_seconds INTEGER NOT NULL,
        memory_request_byte_seconds   INTEGER NOT NULL,
        cpu_usage_millicore_seconds   INTEGER NOT NULL,
        memory_usage_byte_seconds     INTEGER NOT NULL,
        storage_byte_seconds          INTEGER NOT NULL,
        PRIMARY KEY (member, hub, user, server, hour)
    ) WITHOUT ROWID;
    CREATE INDEX usage_server_hours_by_hour ON usage_server_hours (hour);
    -- Observed ms of a hub per hour.
    CREATE TABLE usage_hub_hours (
        member      TEXT    NOT NULL,
        hub         TEXT    NOT NULL,
        hour        INTEGER NOT NULL,
        observed_ms INTEGER NOT NULL,
        PRIMARY KEY (member, hub, hour)
    ) WITHOUT ROWID;
    ",
    // 6: the incident history for monthly reports (issue 8): every alert
    // incident, kept 400 days, written with the alert state it mirrors.
    "
    -- One row per incident (an alert's fingerprint and the starts_at of one
    -- firing), upserted in the transaction that saves alert_state, so it
    -- outlives resolved_retention. Label values the reports group by are
    -- columns; all labels stay as JSON.
    CREATE TABLE alert_incidents (
        fingerprint    TEXT    NOT NULL,
        starts_at_ms   INTEGER NOT NULL,
        resolved_at_ms INTEGER,
        alertname      TEXT    NOT NULL,
        severity       TEXT    NOT NULL,
        member         TEXT    NOT NULL,
        hub            TEXT    NOT NULL,
        slo            TEXT    NOT NULL,
        labels         TEXT    NOT NULL,
        PRIMARY KEY (fingerprint, starts_at_ms)
    ) WITHOUT ROWID;
    CREATE INDEX alert_incidents_by_start ON alert_incidents (starts_at_ms);
    -- Alerts held when this migration runs are incidents too.
    INSERT OR IGNORE INTO alert_incidents
        SELECT fingerprint, starts_at_ms, resolved_at_ms,
               coalesce(json_extract(labels, '$.alertname'), ''),
               coalesce(json_extract(labels, '$.severity'), ''),
               coalesce(json_extract(labels, '$.member'), ''),
               coalesce(json_extract(labels, '$.hub'), ''),
               coalesce(json_extract(labels, '$.slo'), ''),
               labels
        FROM alert_state WHERE json_valid(labels);
    ",
    // 7: cost recovery (issue 8): imported FOCUS bills and closed months.
    "
    -- Every FOCUS file imported, keyed by its SHA-256 (a re-import is a no-op).
    CREATE TABLE cost_imports (
        sha256      TEXT    PRIMARY KEY,
        imported_at INTEGER NOT NULL,
        file_name   TEXT    NOT NULL,
        rows        INTEGER NOT NULL
    );
    -- The bill in force per cluster and month (micro-units), from the last
    -- import that named it.
    CREATE TABLE cost_bills (
        cluster       TEXT    NOT NULL,
        period        TEXT    NOT NULL,
        amount_micros INTEGER NOT NULL,
        currency      TEXT    NOT NULL,
        rows          INTEGER NOT NULL,
        sha256        TEXT    NOT NULL,
        imported_at   INTEGER NOT NULL,
        PRIMARY KEY (cluster, period)
    ) WITHOUT ROWID;
    -- Every bill an import replaced, with what replaced it.
    CREATE TABLE cost_bill_changes (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        cluster       TEXT    NOT NULL,
        period        TEXT    NOT NULL,
        old_micros    INTEGER NOT NULL,
        old_sha256    TEXT    NOT NULL,
        new_micros    INTEGER NOT NULL,
        new_sha256    TEXT    NOT NULL,
        changed_at    INTEGER NOT NULL
    );
    -- A closed month: frozen once, never rewritten.
    CREATE TABLE cost_closed_periods (
        period      TEXT    PRIMARY KEY,
        closed_at   INTEGER NOT NULL,
        model_hash  TEXT    NOT NULL,
        model_text  TEXT    NOT NULL,
        snapshot    TEXT    NOT NULL
    );
    CREATE TRIGGER cost_closed_periods_frozen BEFORE UPDATE ON cost_closed_periods
    BEGIN SELECT RAISE(ABORT, 'a closed cost period is never rewritten'); END;
    ",
    // 8: issue 8 (usage ledger): a server-hour whose end was inferred after an
    // agent restart (kind 4 in usage_points: stop inferred) is bounded, not
    // observed.
    "
    ALTER TABLE usage_server_hours ADD COLUMN bounded INTEGER NOT NULL DEFAULT 0;
    ",
    // 9: report snapshots: each closed month's member and fleet reports frozen
    // as JSON after the close (member '' is the fleet), never rewritten.
    "
    CREATE TABLE report_snapshots (
        period  TEXT NOT NULL,
        member  TEXT NOT NULL,
        body    TEXT NOT NULL,
        PRIMARY KEY (period, member)
    ) WITHOUT ROWID;
    CREATE TRIGGER report_snapshots_frozen BEFORE UPDATE ON report_snapshots
    BEGIN SELECT RAISE(ABORT, 'a frozen report is never rewritten'); END;
    ",
    // 10: issue 8 (usage ledger cost and size): servers are interned once in
    // `usage_servers`; observations and server-hours are keyed by its integer
    // id instead of four text columns (a 66-byte pseudonym among them), so
    // every look-up compares one integer and a row no longer repeats the key.
    "
    CREATE TABLE usage_servers (
        id     INTEGER PRIMARY KEY,
        member TEXT NOT NULL,
        hub    TEXT NOT NULL,
        user   TEXT NOT NULL,
        server TEXT NOT NULL,
        UNIQUE (member, hub, user, server)
    );
    INSERT INTO usage_servers (member, hub, user, server)
        SELECT member, hub, user, server FROM usage_points
        UNION SELECT member, hub, user, server FROM usage_server_hours;
    CREATE TABLE usage_points_by_id (
        server_id  INTEGER NOT NULL,
        ts         INTEGER NOT NULL,
        kind       INTEGER NOT NULL,
        cpu_request_millicores INTEGER,
        memory_request_bytes   INTEGER,
        cpu_usage_millicores   INTEGER,
        memory_usage_bytes     INTEGER,
        storage_bytes          INTEGER,
        PRIMARY KEY (server_id, ts, kind)
    ) WITHOUT ROWID;
    INSERT INTO usage_points_by_id
        SELECT s.id, p.ts, p.kind, p.cpu_request_millicores, p.memory_request_bytes,
               p.cpu_usage_millicores, p.memory_usage_bytes, p.storage_bytes
        FROM usage_points AS p JOIN usage_servers AS s
            ON s.member = p.member AND s.hub = p.hub AND s.user = p.user AND s.server = p.server;
    DROP TABLE usage_points;
    ALTER TABLE usage_points_by_id RENAME TO usage_points;
    CREATE TABLE usage_server_hours_by_id (
        server_id INTEGER NOT NULL,
        hour      INTEGER NOT NULL,
        server_ms                     INTEGER NOT NULL,
        cpu_request_millicore_seconds INTEGER NOT NULL,
        memory_request_byte_seconds   INTEGER NOT NULL,
        cpu_usage_millicore_seconds   INTEGER NOT NULL,
        memory_usage_byte_seconds     INTEGER NOT NULL,
        storage_byte_seconds          INTEGER NOT NULL,
        bounded                       INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (server_id, hour)
    ) WITHOUT ROWID;
    INSERT INTO usage_server_hours_by_id
        SELECT s.id, h.hour, h.server_ms, h.cpu_request_millicore_seconds,
               h.memory_request_byte_seconds, h.cpu_usage_millicore_seconds,
               h.memory_usage_byte_seconds, h.storage_byte_seconds, h.bounded
        FROM usage_server_hours AS h JOIN usage_servers AS s
            ON s.member = h.member AND s.hub = h.hub AND s.user = h.user AND s.server = h.server;
    DROP TABLE usage_server_hours;
    ALTER TABLE usage_server_hours_by_id RENAME TO usage_server_hours;
    CREATE INDEX usage_server_hours_by_hour ON usage_server_hours (hour);
    ",
    // issue 8 (usage ledger, additive snapshots): the resources of snapshots
    // that say since when they hold (wire protocol 3) are added to the
    // server-hour row in columns of their own, which the recomputation from
    // stored observations never rewrites.
    "
    ALTER TABLE usage_server_hours ADD COLUMN added_cpu_request_millicore_seconds INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage_server_hours ADD COLUMN added_memory_request_byte_seconds INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage_server_hours ADD COLUMN added_cpu_usage_millicore_seconds INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage_server_hours ADD COLUMN added_memory_usage_byte_seconds INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage_server_hours ADD COLUMN added_storage_byte_seconds INTEGER NOT NULL DEFAULT 0;
    ",
    // issue 8 (report speed): the SLI minutes summed per hub and hour, kept
    // by the SLI stage in the same transaction as the minutes, so a month's
    // attainment reads 744 rows a hub instead of 44,640. Availability as
    // `MinuteCounts::AVAILABILITY_SQL` (a test keeps this copy the same).
    "
    CREATE TABLE sli_hours (
        member       TEXT    NOT NULL,
        hub          TEXT    NOT NULL,
        hour         INTEGER NOT NULL,  -- Unix hour: minute / 60
        minutes      INTEGER NOT NULL DEFAULT 0,  -- minute rows summed
        avail_good   INTEGER NOT NULL DEFAULT 0,
        avail_bad    INTEGER NOT NULL DEFAULT 0,
        spawn_ok     INTEGER NOT NULL DEFAULT 0,
        spawn_failed INTEGER NOT NULL DEFAULT 0,
        spawn_fast   INTEGER NOT NULL DEFAULT 0,
        spawn_timed  INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (member, hub, hour)
    ) WITHOUT ROWID;
    INSERT INTO sli_hours
        SELECT member, hub, minute / 60, count(*),
               sum(probes_failed + outside_failed = 0 AND probes_ok + outside_ok > 0),
               sum(probes_failed + outside_failed > 0),
               sum(spawn_ok), sum(spawn_failed), sum(spawn_fast), sum(spawn_timed)
        FROM sli_minutes GROUP BY member, hub, minute / 60;
    ",
    // issue 8 (usage ledger size): a closed month's per-server hours are
    // rolled up (`usage/rollup.rs`) into per-hub hours (with the observed
    // time of usage_hub_hours), per-server months and distinct active user
    // counts, then deleted: a year of the fleet's
    // per-server hours (~285 GiB) does not fit the 2 GiB target.
    "
    -- The months rolled up: their usage_server_hours rows are gone.
    CREATE TABLE usage_rollup_months (
        month        INTEGER PRIMARY KEY,   -- the month's first ms (UTC)
        end_ms       INTEGER NOT NULL,      -- the next month's first ms
        rolled_at_ms INTEGER NOT NULL,
        server_hours INTEGER NOT NULL       -- server-hour rows rolled up
    );
    -- The hubs of rolled-up hours, interned (a year has 8,760 rows a hub).
    CREATE TABLE usage_rollup_hubs (
        id     INTEGER PRIMARY KEY,
        member TEXT NOT NULL,
        hub    TEXT NOT NULL,
        UNIQUE (member, hub)
    );
    -- Every server's quantities summed per hub and hour, with the distinct
    -- users that had server time in it, the bounded server-hours and the
    -- hub's observed time (moved here from usage_hub_hours).
    CREATE TABLE usage_rollup_hub_hours (
        hub_id INTEGER NOT NULL,
        hour   INTEGER NOT NULL,
        server_ms                     INTEGER NOT NULL,
        cpu_request_millicore_seconds INTEGER NOT NULL,
        memory_request_byte_seconds   INTEGER NOT NULL,
        cpu_usage_millicore_seconds   INTEGER NOT NULL,
        memory_usage_byte_seconds     INTEGER NOT NULL,
        storage_byte_seconds          INTEGER NOT NULL,
        active_users                  INTEGER NOT NULL,
        bounded_rows                  INTEGER NOT NULL,
        observed_ms                   INTEGER NOT NULL,
        PRIMARY KEY (hub_id, hour)
    ) WITHOUT ROWID;
    -- One server's quantities over one month, and its first and last hour
    -- with a storage figure (the mean bytes then: a report's home growth).
    CREATE TABLE usage_rollup_server_months (
        server_id INTEGER NOT NULL,
        month     INTEGER NOT NULL,
        server_ms                     INTEGER NOT NULL,
        cpu_request_millicore_seconds INTEGER NOT NULL,
        memory_request_byte_seconds   INTEGER NOT NULL,
        cpu_usage_millicore_seconds   INTEGER NOT NULL,
        memory_usage_byte_seconds     INTEGER NOT NULL,
        storage_byte_seconds          INTEGER NOT NULL,
        bounded_rows                  INTEGER NOT NULL,
        storage_first_hour  INTEGER,
        storage_first_bytes INTEGER,
        storage_last_hour   INTEGER,
        storage_last_bytes  INTEGER,
        PRIMARY KEY (server_id, month)
    ) WITHOUT ROWID;
    -- Distinct users with server time per hub and UTC day, ISO week or
    -- month (unit 0, 1, 2), and per member and month across its hubs
    -- (unit 3, hub ''): counted at roll-up, as they cannot be recounted.
    CREATE TABLE usage_rollup_users (
        member TEXT    NOT NULL,
        hub    TEXT    NOT NULL,
        unit   INTEGER NOT NULL,
        start  INTEGER NOT NULL,
        users  INTEGER NOT NULL,
        PRIMARY KEY (member, hub, unit, start)
    ) WITHOUT ROWID;
    ",
    // issue 11 (synthetic journeys): journeys counted per minute (good,
    // bad, and those whose spawn failed, which the hub counts as a failed
    // spawn too) in the SLI minutes and hours, and each hub's latest
    // journey with its run of consecutive failures for `JourneyFailing`.
    "
    ALTER TABLE sli_minutes ADD COLUMN journey_good INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sli_minutes ADD COLUMN journey_bad INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sli_minutes ADD COLUMN journey_spawn_failed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sli_hours ADD COLUMN journey_good INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sli_hours ADD COLUMN journey_bad INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sli_hours ADD COLUMN journey_spawn_failed INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE journey_latest (
        member               TEXT    NOT NULL,
        hub                  TEXT    NOT NULL,
        started_ms           INTEGER NOT NULL,
        ok                   INTEGER NOT NULL,  -- 0/1: every phase passed
        phase                TEXT    NOT NULL,  -- the failed phase ('' when ok)
        reason               TEXT    NOT NULL,  -- why it failed ('' when ok)
        consecutive_failures INTEGER NOT NULL,  -- failed runs in a row ending here
        PRIMARY KEY (member, hub)
    ) WITHOUT ROWID;
    ",
    // Status pages: the collector's secret that signs private pages' links
    // (HMAC-SHA256), created once on first use (`status::link`).
    "
    CREATE TABLE status_link_key (
        id  INTEGER PRIMARY KEY CHECK (id = 1),
        key BLOB    NOT NULL
    );
    ",
    // status incidents (issue 12): the member-facing incidents opened from
    // alerts or by operators, their updates, and which alert firings each holds.
    "
    -- One status incident per hub outage (flaps within [status]
    -- incident_merge_window folded in). state is the latest update's state;
    -- ended_at_ms is set while it is resolved.
    CREATE TABLE status_incidents (
        id                     INTEGER PRIMARY KEY AUTOINCREMENT,
        member                 TEXT    NOT NULL,
        hub                    TEXT    NOT NULL,
        title                  TEXT    NOT NULL,
        state                  TEXT    NOT NULL,
        started_at_ms          INTEGER NOT NULL,
        ended_at_ms            INTEGER,
        last_alert_resolved_ms INTEGER,  -- the newest resolution of its alerts, for the merge window
        opened_by              TEXT    NOT NULL  -- 'alert' or 'operator'
    );
    CREATE INDEX status_incidents_by_hub ON status_incidents (member, hub, started_at_ms);
    CREATE INDEX status_incidents_by_start ON status_incidents (started_at_ms);
    -- Every update, automatic or by an operator, in the order written.
    CREATE TABLE status_incident_updates (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER NOT NULL,
        at_ms       INTEGER NOT NULL,
        state       TEXT    NOT NULL,
        message     TEXT    NOT NULL,
        author      TEXT    NOT NULL  -- 'hubwatch' for automatic updates
    );
    CREATE INDEX status_incident_updates_by_incident ON status_incident_updates (incident_id, id);
    -- Each alert firing (an alert_incidents key) folded into an incident,
    -- once: the key is what makes the fold idempotent across restarts.
    CREATE TABLE status_incident_alerts (
        fingerprint    TEXT    NOT NULL,
        starts_at_ms   INTEGER NOT NULL,
        incident_id    INTEGER NOT NULL,
        alertname      TEXT    NOT NULL,
        resolved_at_ms INTEGER,
        PRIMARY KEY (fingerprint, starts_at_ms)
    ) WITHOUT ROWID;
    CREATE INDEX status_incident_alerts_by_incident ON status_incident_alerts (incident_id);
    ",
    // n: maintenance windows (collector/src/maintenance/), from the config and the API.
    "
    CREATE TABLE maintenance_windows (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        member      TEXT    NOT NULL,
        hubs        TEXT    NOT NULL,  -- JSON list of hub names; [] = every hub of the member
        start_ms    INTEGER NOT NULL,  -- UTC, first instant inside
        end_ms      INTEGER NOT NULL,  -- UTC, first instant after (earlier once cut short)
        start_local TEXT    NOT NULL,  -- as declared, in `timezone`
        end_local   TEXT    NOT NULL,
        timezone    TEXT    NOT NULL,  -- IANA name
        note        TEXT    NOT NULL,
        origin      TEXT    NOT NULL,  -- 'config' | 'api'
        config_key  TEXT UNIQUE,       -- a config window's identity across restarts
        created_ms  INTEGER NOT NULL   -- first known: decides whether it was announced
    );
    CREATE INDEX maintenance_windows_by_member ON maintenance_windows (member, start_ms);
    ",
    // Status webhooks (issue 12): how far the incident updates have been
    // turned into events, and each delivery still owed to a subscriber, so
    // a restart loses none. The cursor starts at the updates already
    // written: history is not replayed to subscribers.
    "
    CREATE TABLE status_webhook_cursor (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        last_update_id INTEGER NOT NULL
    );
    INSERT INTO status_webhook_cursor (id, last_update_id)
        SELECT 1, COALESCE(MAX(id), 0) FROM status_incident_updates;
    -- One row per (event, subscriber) until it is delivered or given up.
    CREATE TABLE status_webhook_outbox (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        url             TEXT    NOT NULL,  -- the subscriber ([[status.webhooks]] url)
        event           TEXT    NOT NULL,  -- incident.opened | incident.updated | incident.resolved
        body            TEXT    NOT NULL,  -- the JSON POSTed, signed at each attempt
        created_ms      INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_error      TEXT
    );
    CREATE INDEX status_webhook_outbox_by_url ON status_webhook_outbox (url, id);
    ",
    // HA pairs (issue 14): the agent-pair cluster a token binds its agent to
    // (`token create --ha-cluster`), so a member cannot claim another
    // replica identity in a batch. NULL: not part of an HA pair.
    "
    ALTER TABLE tokens ADD COLUMN ha_cluster TEXT;
    ",
    // Restart to ready (issue 15): per hour, the minutes that had the hub's
    // metrics (hub_samples > 0), so the SLO engine loads whole hours from
    // sli_hours and still knows the last minute with metrics
    // (`SloEngine::load`); filled from the minutes already stored.
    "
    ALTER TABLE sli_hours ADD COLUMN metrics_minutes INTEGER NOT NULL DEFAULT 0;
    UPDATE sli_hours SET metrics_minutes = (
        SELECT count(*) FROM sli_minutes m
        WHERE m.member = sli_hours.member AND m.hub = sli_hours.hub
          AND m.minute >= sli_hours.hour * 60 AND m.minute < sli_hours.hour * 60 + 60
          AND m.hub_samples > 0);
    ",
    // Bit rot in the store (issue 15): the CRC-32 of each frame as received,
    // checked whenever a stage reads the frame, so a frame damaged on disk is
    // quarantined (with the reason) instead of derived into wrong figures.
    // NULL for frames stored before this version: not checked. From this
    // version on `frame` may also hold a snappy-compressed frame
    // (`store::frame`, `storage.compress_frames`), which an older collector
    // could not read: the version bump makes it refuse the file instead.
    "
    ALTER TABLE batches ADD COLUMN frame_crc INTEGER;
    ",
];

/// The schema version this build writes.
pub fn current_version() -> i64 {
    // The list is tiny; the conversion cannot fail in practice.
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// Brings the file at `path` (already opened as `conn`) to [`current_version`].
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let sql = |operation: &'static str| {
        move |source: rusqlite::Error| StoreError::sqlite(path, operation, source)
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("starting the schema migration"))?;
    let found: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sql("reading the schema version"))?;
    let supported = current_version();
    if found > supported {
        return Err(StoreError::FutureSchema {
            path: path.to_path_buf(),
            found,
            supported,
        });
    }
    if found < 0 {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("negative schema version {found}"),
        });
    }
    if found == supported {
        return Ok(());
    }
    let first_missing = usize::try_from(found).unwrap_or(usize::MAX);
    for migration in MIGRATIONS.iter().skip(first_missing) {
        tx.execute_batch(migration)
            .map_err(sql("applying a schema migration"))?;
    }
    tx.pragma_update(None, "user_version", supported)
        .map_err(sql("writing the schema version"))?;
    tx.commit()
        .map_err(sql("committing the schema migration"))?;
    tracing::info!(path = %path.display(), from = found, to = supported, "store schema migrated");
    Ok(())
}
