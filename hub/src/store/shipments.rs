//! Shipments: their records and contacts, the reconciler's saved state, timelines,
//! reconciler wake-ups and carrier events.

use std::collections::BTreeMap;

use super::db::{Db, OptionalExtension, params};
use doorstep_proto::TrackingNumber;
use serde::{Deserialize, Serialize};

use crate::model::Milestone;

use super::{Store, StoreError, StoreTx, corrupt};

/// A channel a customer can be reached on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactChannel {
    /// SMS (E.164 phone number).
    Sms,
    /// Email address.
    Email,
    /// WhatsApp (E.164 phone number).
    Whatsapp,
    /// A customer's own HTTPS endpoint (signed generic webhook).
    Webhook,
    /// Push or in-app message to the customer's app account: the recipient is the
    /// shipper's own user id for them (OneSignal's `external_id`).
    Push,
}

impl ContactChannel {
    /// Every channel.
    pub const ALL: [ContactChannel; 5] = [
        ContactChannel::Sms,
        ContactChannel::Email,
        ContactChannel::Whatsapp,
        ContactChannel::Webhook,
        ContactChannel::Push,
    ];

    /// The channel's name in the outbox table and config (`sms`, `email`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ContactChannel::Sms => "sms",
            ContactChannel::Email => "email",
            ContactChannel::Whatsapp => "whatsapp",
            ContactChannel::Webhook => "webhook",
            ContactChannel::Push => "push",
        }
    }
}

/// How to reach a customer on one channel, and whether they agreed to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// Phone number, email address or URL.
    pub recipient: String,
    /// The customer consented to messages on this channel.
    pub consent: bool,
}

/// A shipment as stored (`shipments.contacts` holds [`Shipment::contacts`] as JSON:
/// `{"sms": {"recipient": "+1...", "consent": true}, ...}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shipment {
    /// Row id; the outbox's `shipment_id`.
    pub id: i64,
    /// The parcel.
    pub tracking_number: TrackingNumber,
    /// Carrier name as given by the order system (`ups`, `usps`, ...).
    pub carrier: Option<String>,
    /// The order system's id.
    pub order_id: Option<String>,
    /// The order's name as the customer knows it (`#1001`), when an order system said.
    pub order_name: Option<String>,
    /// Contacts per channel.
    pub contacts: BTreeMap<ContactChannel, Contact>,
    /// BCP 47 locale (`en-US`).
    pub locale: String,
    /// IANA time zone (`America/New_York`) for quiet hours and local times.
    pub time_zone: String,
    /// Current customer-facing milestone.
    pub milestone: Milestone,
    /// The reconciler's own state as JSON text (`reconcile::ShipmentState`), opaque to
    /// the store; `None` until the first input.
    pub reconcile_state: Option<String>,
    /// Created, ms since the Unix epoch.
    pub created_ms: i64,
}

impl Shipment {
    /// A shipment with no carrier, order or contacts, created at 0, in Berlin's time zone:
    /// what tests and fuzz targets build their cases from.
    pub fn bare(id: i64, tracking_number: TrackingNumber, milestone: Milestone, locale: &str) -> Self {
        Shipment {
            id,
            tracking_number,
            carrier: None,
            order_id: None,
            order_name: None,
            contacts: BTreeMap::new(),
            locale: locale.into(),
            time_zone: "Europe/Berlin".into(),
            milestone,
            reconcile_state: None,
            created_ms: 0,
        }
    }
}

/// A shipment to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewShipment {
    /// The parcel.
    pub tracking_number: TrackingNumber,
    /// Carrier name.
    pub carrier: Option<String>,
    /// Order id.
    pub order_id: Option<String>,
    /// Contacts per channel.
    pub contacts: BTreeMap<ContactChannel, Contact>,
    /// Locale.
    pub locale: String,
    /// Time zone.
    pub time_zone: String,
}

/// An entry of a shipment's timeline (for the tracking page).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// Event time, ms since the Unix epoch.
    pub occurred_ms: i64,
    /// `device` or the carrier's name.
    pub source: String,
    /// What happened (`delivered_at_address`, `in_transit`, `dispatched`, ...).
    pub kind: String,
    /// Details as JSON (distance, photo hash, carrier message).
    pub detail: serde_json::Value,
}

pub(super) fn milestone_str(m: Milestone) -> &'static str {
    match m {
        Milestone::Created => "created",
        Milestone::Dispatched => "dispatched",
        Milestone::OutForDelivery => "out_for_delivery",
        Milestone::Nearby => "nearby",
        Milestone::Exception => "exception",
        Milestone::Delivered => "delivered",
    }
}

/// The snake_case name of a milestone, as stored in `shipments.milestone` and
/// `notification_outbox.milestone`.
pub fn milestone_name(m: Milestone) -> &'static str {
    milestone_str(m)
}

pub(super) fn parse_milestone(text: &str) -> Result<Milestone, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|e| corrupt("milestone", e))
}

pub(super) type ShipmentRow = (
    i64,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<String>,
);

/// The two ways a shipment is looked up, as whole statements so the statement cache finds
/// them without building the SQL text on every event.
#[derive(Debug, Clone, Copy)]
enum ShipmentKey {
    Id,
    Tracking,
}

/// Reads one shipment. Inside a write transaction on PostgreSQL (`for_update`) the row
/// stays locked until commit: ingest and a carrier webhook on two hubs both read, decide
/// and write a shipment's reconcile state, and without the lock one write would undo the
/// other. SQLite's one writer already serialises them.
fn shipment_where(
    conn: &Db,
    key: ShipmentKey,
    value: super::db::Value<'_>,
    for_update: bool,
) -> Result<Option<Shipment>, StoreError> {
    let locked = for_update && conn.dialect() == super::Dialect::Postgres;
    let sql = match (key, locked) {
        (ShipmentKey::Id, false) => {
            "SELECT id, tracking_number, carrier, order_id, contacts, locale, time_zone, milestone,
                    reconcile_state, created_ms, order_name FROM shipments WHERE id = ?1"
        }
        (ShipmentKey::Tracking, false) => {
            "SELECT id, tracking_number, carrier, order_id, contacts, locale, time_zone, milestone,
                    reconcile_state, created_ms, order_name FROM shipments WHERE tracking_number = ?1"
        }
        (ShipmentKey::Id, true) => {
            "SELECT id, tracking_number, carrier, order_id, contacts, locale, time_zone, milestone,
                    reconcile_state, created_ms, order_name FROM shipments WHERE id = ?1 FOR NO KEY UPDATE"
        }
        (ShipmentKey::Tracking, true) => {
            "SELECT id, tracking_number, carrier, order_id, contacts, locale, time_zone, milestone,
                    reconcile_state, created_ms, order_name FROM shipments WHERE tracking_number = ?1
             FOR NO KEY UPDATE"
        }
    };
    let row: Option<ShipmentRow> = conn.prepare_cached(sql)?.query_row([value], shipment_row).optional()?;
    row.map(shipment_from_row).transpose()
}

fn shipment_row(r: &super::db::Row<'_>) -> Result<ShipmentRow, StoreError> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

pub(super) fn shipment_from_row(row: ShipmentRow) -> Result<Shipment, StoreError> {
    let (
        id,
        tracking,
        carrier,
        order_id,
        contacts,
        locale,
        time_zone,
        milestone,
        state,
        created_ms,
        order_name,
    ) = row;
    Ok(Shipment {
        id,
        tracking_number: TrackingNumber::new(tracking).map_err(|e| corrupt("tracking number", e))?,
        carrier,
        order_id,
        order_name,
        contacts: serde_json::from_str(&contacts).map_err(|e| corrupt("contacts", e))?,
        locale,
        time_zone,
        milestone: parse_milestone(&milestone)?,
        reconcile_state: state,
        created_ms,
    })
}

impl Store {
    /// The shipments created since `since_ms` whose contact on `channel` is `recipient`
    /// (a customer writing in from their number), newest first, at most 20.
    pub fn shipments_for_contact(
        &self,
        channel: ContactChannel,
        recipient: &str,
        since_ms: i64,
    ) -> Result<Vec<Shipment>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT s.id, s.tracking_number, s.carrier, s.order_id, s.contacts, s.locale, s.time_zone,
                    s.milestone, s.reconcile_state, s.created_ms, s.order_name
             FROM shipment_contacts c JOIN shipments s ON s.id = c.shipment_id
             WHERE c.channel = ?1 AND c.recipient = ?2 AND s.created_ms >= ?3
             ORDER BY s.created_ms DESC, s.id DESC LIMIT 20",
        )?;
        let rows = stmt.query_map(params![channel.as_str(), recipient, since_ms], shipment_row)?;
        rows.map(|row| shipment_from_row(row?)).collect()
    }

    /// A shipment by row id.
    pub fn shipment(&self, id: i64) -> Result<Option<Shipment>, StoreError> {
        shipment_where(&self.conn, ShipmentKey::Id, super::db::Value::Int(id), false)
    }

    /// A shipment by tracking number.
    pub fn shipment_by_tracking(&self, tracking: &TrackingNumber) -> Result<Option<Shipment>, StoreError> {
        shipment_where(
            &self.conn,
            ShipmentKey::Tracking,
            super::db::Value::Text(tracking.as_str().into()),
            false,
        )
    }

    /// A shipment's timeline, oldest first.
    pub fn timeline(&self, shipment_id: i64) -> Result<Vec<TimelineEntry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT occurred_ms, source, kind, detail FROM timeline WHERE shipment_id = ?1
             ORDER BY occurred_ms, id",
        )?;
        let rows = stmt.query_map([shipment_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (occurred_ms, source, kind, detail) = row?;
            let detail = serde_json::from_str(&detail).map_err(|e| corrupt("timeline detail", e))?;
            out.push(TimelineEntry { occurred_ms, source, kind, detail });
        }
        Ok(out)
    }
}

impl StoreTx<'_> {
    /// Creates a shipment at milestone `created`.
    pub fn insert_shipment(&self, new: &NewShipment, now_ms: i64) -> Result<i64, StoreError> {
        self.settle()?;
        let contacts = serde_json::to_string(&new.contacts).map_err(|e| corrupt("contacts", e))?;
        let inserted = self.tx.insert_id(
            "INSERT INTO shipments (tracking_number, carrier, order_id, contacts, locale, time_zone,
                 milestone, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'created', ?7, ?7) ON CONFLICT (tracking_number) DO NOTHING",
            params![
                new.tracking_number.as_str(),
                new.carrier,
                new.order_id,
                contacts,
                new.locale,
                new.time_zone,
                now_ms
            ],
        )?;
        let Some(id) = inserted else {
            return Err(StoreError::Exists(format!("shipment {}", new.tracking_number)));
        };
        let mut contact = self.tx.prepare_cached(
            "INSERT INTO shipment_contacts (channel, recipient, shipment_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )?;
        for (channel, c) in &new.contacts {
            contact.execute(params![channel.as_str(), c.recipient, id])?;
        }
        Ok(id)
    }

    /// A shipment by tracking number, read inside this transaction.
    pub fn shipment_by_tracking(&self, tracking: &TrackingNumber) -> Result<Option<Shipment>, StoreError> {
        if let Some(kept) = self.batch_shipment(tracking) {
            return Ok(kept);
        }
        let shipment = shipment_where(
            self.tx,
            ShipmentKey::Tracking,
            super::db::Value::Text(tracking.as_str().into()),
            true,
        )?;
        self.keep_in_batch(tracking, shipment.as_ref());
        Ok(shipment)
    }

    /// A shipment by id, read inside this transaction.
    pub fn shipment(&self, id: i64) -> Result<Option<Shipment>, StoreError> {
        if let Some(kept) = self.batch_shipment_by_id(id) {
            return Ok(Some(kept));
        }
        shipment_where(self.tx, ShipmentKey::Id, super::db::Value::Int(id), true)
    }

    /// Saves the reconciler's result for a shipment (state as a JSON value).
    pub fn save_reconcile(
        &self,
        shipment_id: i64,
        milestone: Milestone,
        state: &serde_json::Value,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.save_reconcile_json(shipment_id, milestone, &state.to_string(), now_ms)
    }

    /// Saves the reconciler's result for a shipment (state as JSON text, as ingest has it).
    pub fn save_reconcile_json(
        &self,
        shipment_id: i64,
        milestone: Milestone,
        state_json: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if self.defer_save(shipment_id, milestone, state_json, now_ms) {
            return Ok(());
        }
        self.tx
            .prepare_cached(
                "UPDATE shipments SET milestone = ?2, reconcile_state = ?3, updated_ms = ?4 WHERE id = ?1",
            )?
            .execute(params![shipment_id, milestone_str(milestone), state_json, now_ms])?;
        Ok(())
    }

    /// Adds an entry to a shipment's timeline.
    pub fn add_timeline(
        &self,
        shipment_id: i64,
        occurred_ms: i64,
        source: &str,
        kind: &str,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.add_timeline_json(shipment_id, occurred_ms, source, kind, &detail.to_string())
    }

    /// Adds an entry to a shipment's timeline whose detail is already JSON text (what
    /// ingest writes for every device signal, without building a JSON tree first).
    pub fn add_timeline_json(
        &self,
        shipment_id: i64,
        occurred_ms: i64,
        source: &str,
        kind: &str,
        detail_json: &str,
    ) -> Result<(), StoreError> {
        if self.defer_timeline(shipment_id, occurred_ms, source, kind, detail_json) {
            return Ok(());
        }
        self.tx
            .prepare_cached(
                "INSERT INTO timeline (shipment_id, occurred_ms, source, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![shipment_id, occurred_ms, source, kind, detail_json])?;
        Ok(())
    }

    /// Asks for the reconciler to be woken for a shipment at `at_ms`.
    pub fn schedule_wake(&self, shipment_id: i64, at_ms: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO wakeups (shipment_id, at_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )?
            .execute(params![shipment_id, at_ms])?;
        Ok(())
    }

    /// Removes and returns wake-ups due at `now_ms`, earliest first: (shipment id, wake
    /// time). One statement takes and deletes them, so a wake-up is handed out once even
    /// where several hubs ask together.
    pub fn take_due_wakeups(&self, now_ms: i64, limit: usize) -> Result<Vec<(i64, i64)>, StoreError> {
        let mut due: Vec<(i64, i64)> = self
            .tx
            .prepare_cached(&format!(
                "DELETE FROM wakeups WHERE (shipment_id, at_ms) IN
                     (SELECT shipment_id, at_ms FROM wakeups WHERE at_ms <= ?1 ORDER BY at_ms LIMIT ?2{})
                 RETURNING shipment_id, at_ms",
                self.tx.dialect().skip_locked()
            ))?
            .query_map(params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        due.sort_unstable_by_key(|&(id, at)| (at, id));
        Ok(due)
    }

    /// Stores a normalized carrier event with its raw body; returns false when this
    /// (carrier, event key) is already stored (a redelivered webhook).
    #[allow(clippy::too_many_arguments)] // one column each; a struct would only rename them.
    pub fn insert_carrier_event(
        &self,
        carrier: &str,
        event_key: &str,
        tracking: &str,
        raw_body: &[u8],
        normalized: &serde_json::Value,
        occurred_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT INTO carrier_events (carrier, event_key, tracking_number, raw_body, normalized, occurred_ms, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (carrier, event_key) DO NOTHING",
            )?
            .execute(params![carrier, event_key, tracking, raw_body, normalized.to_string(), occurred_ms, now_ms])?;
        Ok(n == 1)
    }
}
