//! The database schema: one migration per version, applied in order on open.

/// The schema version this build writes. Each entry of [`MIGRATIONS`] moves the
/// database up by one.
pub const SCHEMA_VERSION: i64 = 16;

/// Migrations, in order; entry `i` takes `user_version` from `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE devices (
    device      TEXT PRIMARY KEY,
    fleet       TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    key_id      TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    added_ms    INTEGER NOT NULL,
    revoked_ms  INTEGER
);
CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    device       TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    event_id     TEXT NOT NULL UNIQUE,
    gnss_ms      INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    envelope     BLOB NOT NULL,
    received_ms  INTEGER NOT NULL,
    UNIQUE (device, seq)
);
CREATE TABLE device_acks (
    device     TEXT PRIMARY KEY,
    fleet      TEXT NOT NULL,
    up_to_seq  INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE shipments (
    id               INTEGER PRIMARY KEY,
    tracking_number  TEXT NOT NULL UNIQUE,
    carrier          TEXT,
    order_id         TEXT,
    contacts         TEXT NOT NULL,
    locale           TEXT NOT NULL,
    time_zone        TEXT NOT NULL,
    milestone        TEXT NOT NULL,
    reconcile_state  TEXT,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL
);
CREATE TABLE routes (
    id          INTEGER PRIMARY KEY,
    fleet       TEXT NOT NULL,
    device      TEXT NOT NULL,
    route_id    TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    issued_ms   INTEGER NOT NULL,
    UNIQUE (device, route_id)
);
CREATE TABLE route_stops (
    route_pk         INTEGER NOT NULL REFERENCES routes(id) ON DELETE CASCADE,
    device           TEXT NOT NULL,
    route_id         TEXT NOT NULL,
    stop_id          TEXT NOT NULL,
    tracking_number  TEXT NOT NULL,
    lat              REAL NOT NULL,
    lon              REAL NOT NULL,
    PRIMARY KEY (device, route_id, stop_id, tracking_number)
);
CREATE INDEX route_stops_tracking ON route_stops (tracking_number);
CREATE TABLE carrier_events (
    id               INTEGER PRIMARY KEY,
    carrier          TEXT NOT NULL,
    event_key        TEXT NOT NULL,
    tracking_number  TEXT NOT NULL,
    raw_body         BLOB NOT NULL,
    normalized       TEXT NOT NULL,
    occurred_ms      INTEGER NOT NULL,
    received_ms      INTEGER NOT NULL,
    UNIQUE (carrier, event_key)
);
CREATE TABLE timeline (
    id           INTEGER PRIMARY KEY,
    shipment_id  INTEGER NOT NULL REFERENCES shipments(id),
    occurred_ms  INTEGER NOT NULL,
    source       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    detail       TEXT NOT NULL
);
CREATE INDEX timeline_shipment ON timeline (shipment_id, occurred_ms);
CREATE TABLE photos (
    sha256       TEXT PRIMARY KEY,
    device       TEXT NOT NULL,
    total_len    INTEGER NOT NULL,
    bytes        BLOB NOT NULL,
    verified     INTEGER NOT NULL,
    received_ms  INTEGER NOT NULL
);
CREATE TABLE photo_refs (
    sha256  TEXT NOT NULL,
    device  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    PRIMARY KEY (sha256, device, seq)
);
CREATE TABLE photo_chunks (
    device     TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    idx        INTEGER NOT NULL,
    total_len  INTEGER NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (device, sha256, idx)
);
CREATE TABLE rejections (
    source   TEXT NOT NULL,
    reason   TEXT NOT NULL,
    count    INTEGER NOT NULL,
    last_ms  INTEGER NOT NULL,
    PRIMARY KEY (source, reason)
);
CREATE TABLE wakeups (
    shipment_id  INTEGER NOT NULL REFERENCES shipments(id),
    at_ms        INTEGER NOT NULL,
    PRIMARY KEY (shipment_id, at_ms)
);
CREATE INDEX wakeups_due ON wakeups (at_ms);
CREATE TABLE notification_outbox (
    id               INTEGER PRIMARY KEY,
    shipment_id      INTEGER NOT NULL REFERENCES shipments(id),
    milestone        TEXT NOT NULL,
    channel          TEXT NOT NULL,
    recipient        TEXT NOT NULL,
    detail           TEXT,
    status           TEXT NOT NULL DEFAULT 'queued',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL,
    created_ms       INTEGER NOT NULL,
    UNIQUE (shipment_id, milestone, channel, recipient)
);
CREATE INDEX notification_outbox_due ON notification_outbox (status, next_attempt_ms);
CREATE TABLE notification_outcomes (
    id           INTEGER PRIMARY KEY,
    outbox_id    INTEGER NOT NULL REFERENCES notification_outbox(id),
    at_ms        INTEGER NOT NULL,
    outcome      TEXT NOT NULL,
    provider_id  TEXT,
    detail       TEXT
);
CREATE INDEX notification_outcomes_outbox ON notification_outcomes (outbox_id);
CREATE TABLE ops_alerts (
    id           INTEGER PRIMARY KEY,
    shipment_id  INTEGER REFERENCES shipments(id),
    code         TEXT NOT NULL,
    detail       TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    sent         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (shipment_id, code)
);
"#,
    r#"
CREATE TABLE device_gaps (
    device       TEXT NOT NULL,
    first_seq    INTEGER NOT NULL,
    last_seq     INTEGER NOT NULL,
    event_id     TEXT NOT NULL,
    envelope     BLOB NOT NULL,
    received_ms  INTEGER NOT NULL,
    PRIMARY KEY (device, first_seq, last_seq)
);
CREATE TABLE device_status (
    device           TEXT PRIMARY KEY,
    online           INTEGER,
    agent_version    TEXT,
    outbox_depth     INTEGER,
    state_ms         INTEGER,
    pos_utc_ms       INTEGER,
    pos_lat_e7       INTEGER,
    pos_lon_e7       INTEGER,
    pos_accuracy_dm  INTEGER,
    pos_ms           INTEGER
);
"#,
    r#"
CREATE TABLE dispatcher_lease (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    holder      TEXT NOT NULL,
    token       TEXT NOT NULL,
    expires_ms  INTEGER NOT NULL
);
"#,
    // `events.quarantine`: why a stored (and acked) event is not acted on, NULL when it
    // is. `route_stops.dwell_s`: the stop's dwell override, for re-checking at-address
    // evidence (NULL: no override, or a route stored before this version).
    r#"
ALTER TABLE events ADD COLUMN quarantine TEXT;
ALTER TABLE route_stops ADD COLUMN dwell_s INTEGER;
"#,
    // Who may use the private API (`api_keys`: a key's public id and the SHA-256 of the
    // whole token, never the token), what they wrote (`audit_log`), and tracking links
    // withdrawn per shipment (`link_revocations`). See `access` and `store::access`.
    r#"
CREATE TABLE api_keys (
    name          TEXT PRIMARY KEY,
    key_id        TEXT NOT NULL UNIQUE,
    digest        BLOB NOT NULL,
    scopes        TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    last_used_ms  INTEGER,
    revoked_ms    INTEGER
);
CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY,
    at_ms     INTEGER NOT NULL,
    key_name  TEXT,
    method    TEXT NOT NULL,
    path      TEXT NOT NULL,
    subject   TEXT,
    status    INTEGER NOT NULL,
    outcome   TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at_ms);
CREATE TABLE link_revocations (
    shipment_id  INTEGER PRIMARY KEY REFERENCES shipments (id),
    revoked_ms   INTEGER NOT NULL
);
"#,
    // Which configured provider each outcome came from (`notification_outcomes.provider`,
    // NULL for entries no provider wrote), and an operations alert's escalation: the last
    // step it was posted to (`level`, 0 before the first), when, and its acknowledgement.
    r#"
ALTER TABLE notification_outcomes ADD COLUMN provider TEXT;
ALTER TABLE ops_alerts ADD COLUMN level INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ops_alerts ADD COLUMN posted_ms INTEGER;
ALTER TABLE ops_alerts ADD COLUMN acked_ms INTEGER;
ALTER TABLE ops_alerts ADD COLUMN acked_by TEXT;
"#,
    // Customers' questions by SMS ("where is my parcel?") and the hub's answers: the
    // outcome log of the conversations no outbox row stands for. The outbox by recipient:
    // whether a person has other parcels in flight (one message per person and moment).
    r#"
CREATE TABLE customer_questions (
    id           INTEGER PRIMARY KEY,
    at_ms        INTEGER NOT NULL,
    channel      TEXT NOT NULL,
    sender       TEXT NOT NULL,
    question     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    shipment_id  INTEGER REFERENCES shipments(id),
    answer       TEXT
);
CREATE INDEX customer_questions_sender ON customer_questions (sender, at_ms);
CREATE INDEX notification_outbox_recipient ON notification_outbox (channel, recipient, created_ms);
"#,
    // Shipments by contact (a customer writing in from their number finds their parcels
    // without reading every shipment's contacts), filled from the shipments already there.
    r#"
CREATE TABLE shipment_contacts (
    channel      TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    shipment_id  INTEGER NOT NULL REFERENCES shipments(id),
    PRIMARY KEY (channel, recipient, shipment_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO shipment_contacts (channel, recipient, shipment_id)
    SELECT c.key, json_extract(c.value, '$.recipient'), s.id FROM shipments s, json_each(s.contacts) c
    WHERE json_extract(c.value, '$.recipient') IS NOT NULL;
"#,
    // Order systems' webhooks (Shopify, WooCommerce): each delivery once, keyed by the
    // source's delivery id (a retry carries the same one), with the time the source says it
    // triggered it, so a stale retry never overwrites what a newer delivery said about the
    // same order object. A shipment remembers its order's display name and which source
    // created it.
    r#"
CREATE TABLE order_events (
    id            INTEGER PRIMARY KEY,
    source        TEXT NOT NULL,
    delivery_id   TEXT NOT NULL,
    object_key    TEXT NOT NULL,
    triggered_ms  INTEGER NOT NULL,
    raw_body      BLOB NOT NULL,
    normalized    TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    received_ms   INTEGER NOT NULL,
    UNIQUE (source, delivery_id)
);
CREATE INDEX order_events_object ON order_events (source, object_key, triggered_ms);
ALTER TABLE shipments ADD COLUMN order_name TEXT;
ALTER TABLE shipments ADD COLUMN source TEXT;
"#,
    // What the hub owes carriers for a shipment, durable across restarts and shared by the
    // hubs of one database: polling ShipEngine for carriers that never call (`poll`) and
    // registering the parcel with AfterShip so its webhooks flow (`register`). A hub claims
    // a due row with one UPDATE that moves `due_ms` to the end of its lease and writes its
    // `claim` token; the answer is written back only under that token, and a row whose
    // claimer died comes due again when the lease ends. The cursor is the highest shipment
    // id each kind has looked at, so a sweep reads only shipments created since.
    r#"
CREATE TABLE carrier_jobs (
    shipment_id  INTEGER NOT NULL REFERENCES shipments(id),
    kind         TEXT NOT NULL CHECK (kind IN ('poll', 'register')),
    state        TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    due_ms       INTEGER NOT NULL,
    claim        TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    errors       INTEGER NOT NULL DEFAULT 0,
    unchanged    INTEGER NOT NULL DEFAULT 0,
    last_status  TEXT,
    outcome      TEXT,
    detail       TEXT,
    created_ms   INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    PRIMARY KEY (shipment_id, kind)
);
CREATE INDEX carrier_jobs_due ON carrier_jobs (kind, due_ms) WHERE state = 'pending';
CREATE TABLE carrier_job_cursors (
    kind         TEXT PRIMARY KEY,
    shipment_id  INTEGER NOT NULL
);
"#,
    // Business sinks (`[[sinks]]`: an event stream, helpdesks, CRMs): one row per (sink,
    // shipment, event) enqueued in the writer's transaction that reached the milestone or
    // raised the alert, so an event exists exactly when what it reports was committed, and
    // the unique key keeps a replayed input from enqueuing it twice. `sink_outcomes` is the
    // outcome log of each row; `sink_threads` remembers what a sink made for a shipment (a
    // Zendesk ticket) so later events update it instead of opening another.
    r#"
CREATE TABLE sink_outbox (
    id               INTEGER PRIMARY KEY,
    sink             TEXT NOT NULL,
    shipment_id      INTEGER NOT NULL REFERENCES shipments(id),
    event            TEXT NOT NULL,
    detail           TEXT,
    fleet            TEXT,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL,
    created_ms       INTEGER NOT NULL,
    UNIQUE (sink, shipment_id, event)
);
CREATE INDEX sink_outbox_due ON sink_outbox (next_attempt_ms) WHERE status = 'queued';
CREATE INDEX sink_outbox_shipment ON sink_outbox (sink, shipment_id, id);
CREATE TABLE sink_outcomes (
    id         INTEGER PRIMARY KEY,
    outbox_id  INTEGER NOT NULL REFERENCES sink_outbox(id),
    at_ms      INTEGER NOT NULL,
    outcome    TEXT NOT NULL,
    vendor_id  TEXT,
    detail     TEXT
);
CREATE INDEX sink_outcomes_row ON sink_outcomes (outbox_id);
CREATE TABLE sink_threads (
    sink         TEXT NOT NULL,
    shipment_id  INTEGER NOT NULL REFERENCES shipments(id),
    reference    TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    PRIMARY KEY (sink, shipment_id)
);
"#,
    // 12: support contacts. A helpdesk ticket that names a parcel's tracking number (the
    // customer asked support about it) is recorded against that shipment, once per
    // (helpdesk, ticket, shipment), so operators can see which message still leaves
    // customers asking.
    r#"
CREATE TABLE support_contacts (
    id           INTEGER PRIMARY KEY,
    source       TEXT NOT NULL,
    ticket       TEXT NOT NULL,
    shipment_id  INTEGER NOT NULL REFERENCES shipments(id),
    opened_ms    INTEGER NOT NULL,
    received_ms  INTEGER NOT NULL,
    UNIQUE (source, ticket, shipment_id)
);
CREATE INDEX support_contacts_shipment ON support_contacts (shipment_id, opened_ms);
CREATE INDEX notification_outcomes_sent ON notification_outcomes (at_ms) WHERE outcome = 'sent';
"#,
    // 13: opt-outs and the provider-callback index join the store's own migrations (the
    // notification module created them on the side before; a database it created keeps
    // them, hence IF NOT EXISTS).
    r#"
CREATE TABLE IF NOT EXISTS notification_opt_outs (
    channel    TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    source     TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    PRIMARY KEY (channel, recipient)
);
CREATE INDEX IF NOT EXISTS notification_outcomes_provider
    ON notification_outcomes (provider_id) WHERE provider_id IS NOT NULL;
"#,
    // 14: an operations alert resolved from the console (`resolved_ms`, `resolved_by`: the
    // API key's name), as distinct from acknowledged (someone is on it).
    r#"
ALTER TABLE ops_alerts ADD COLUMN resolved_ms INTEGER;
ALTER TABLE ops_alerts ADD COLUMN resolved_by TEXT;
"#,
    // 15: the delivery instructions a customer leaves on the tracking page, one row per
    // shipment (the latest). Removed instructions stay as an empty text with their time,
    // so a van that missed the removal is told again with the route.
    r#"
CREATE TABLE customer_instructions (
    shipment_id  INTEGER PRIMARY KEY REFERENCES shipments(id),
    text         TEXT NOT NULL,
    at_ms        INTEGER NOT NULL
);
"#,
    // 16: the hubs of a group that split the fleet by van (`mqtt.assign = "by_van"`), one
    // row each, live until `expires_ms` on the database's clock (`store::members`).
    r#"
CREATE TABLE hub_members (
    grp         TEXT NOT NULL,
    hub         TEXT NOT NULL,
    expires_ms  INTEGER NOT NULL,
    PRIMARY KEY (grp, hub)
);
"#,
];

// Every schema version has its migration.
const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);
