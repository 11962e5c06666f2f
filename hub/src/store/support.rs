//! Support contacts (`support_contacts`) and the leak they reveal: which customer messages
//! still leave customers asking support about their parcel.
//!
//! A helpdesk's webhook for a new ticket that names a tracking number is recorded against
//! that shipment, once per (helpdesk, ticket, shipment), inside the webhook's writer
//! transaction. [`Store::support_leak`] then joins the contacts with the messages that
//! went out: for each milestone and channel, the shipments whose customer was sent that
//! message, and those of them whose customer opened a ticket at or after it.

use std::borrow::Cow;

use super::db::params;

use super::shipments::{milestone_str, parse_milestone};
use super::{ContactChannel, Named, Store, StoreError, StoreTx, StoredName};
use crate::model::{Milestone, Update};

/// One support contact, as the shipment's record shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportContactRecord {
    /// The helpdesk (`zendesk`, `freshdesk`).
    pub source: String,
    /// The helpdesk's ticket id.
    pub ticket: String,
    /// When the customer opened the ticket, ms since the Unix epoch.
    pub opened_ms: i64,
}

/// What a leak line's messages told: a milestone, or an update whatever its occasion
/// (every `delayed:<date>` counts as `delayed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// A milestone's message.
    Milestone(Milestone),
    /// An update's messages.
    Update(Update),
}

impl StoredName for Told {
    fn from_name(name: &str) -> Option<Self> {
        Update::ALL
            .into_iter()
            .find(|u| u.as_str() == name)
            .map(Told::Update)
            .or_else(|| parse_milestone(name).ok().map(Told::Milestone))
    }
    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            Told::Milestone(m) => milestone_str(*m),
            Told::Update(u) => u.as_str(),
        })
    }
}

/// The channel a leak line counts: one, or all of them together (`all`: the shipments
/// messaged on any channel, each once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakChannel {
    /// Every channel.
    All,
    /// One channel.
    One(ContactChannel),
}

impl StoredName for LeakChannel {
    fn from_name(name: &str) -> Option<Self> {
        if name == "all" {
            return Some(LeakChannel::All);
        }
        ContactChannel::from_name(name).map(LeakChannel::One)
    }
    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            LeakChannel::All => "all",
            LeakChannel::One(c) => c.as_str(),
        })
    }
}

/// One line of the leak report: a milestone's message on one channel (`all`: on any).
/// Names this hub does not know (a newer hub's message or channel) are kept as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakRow {
    /// What the message told (`nearby`, `delivered`, `delayed`, ...).
    pub milestone: Named<Told>,
    /// The channel it went out on, or all of them.
    pub channel: Named<LeakChannel>,
    /// Shipments whose customer was sent this message.
    pub shipments: i64,
    /// Of those, the shipments whose customer opened a support ticket at or after it.
    pub contacted: i64,
}

impl LeakRow {
    /// `contacted / shipments` (0 when no shipment was messaged).
    pub fn share(&self) -> f64 {
        if self.shipments == 0 {
            return 0.0;
        }
        // Counts far below 2^52.
        #[allow(clippy::cast_precision_loss)]
        let share = self.contacted as f64 / self.shipments as f64;
        share
    }
}

impl StoreTx<'_> {
    /// Records a support contact; false when this ticket was already recorded for this
    /// shipment (a helpdesk's retry).
    pub fn insert_support_contact(
        &self,
        source: &str,
        ticket: &str,
        shipment_id: i64,
        opened_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT INTO support_contacts (source, ticket, shipment_id, opened_ms, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )?
            .execute(params![source, ticket, shipment_id, opened_ms, now_ms])?;
        Ok(n == 1)
    }
}

/// The leak over messages sent since `?1`: per (milestone, channel) and per milestone over
/// all channels. A message's time is its first `sent` outcome; a milestone with a suffix
/// (`delayed:2025-07-03`) counts as the milestone. `{position}` is the dialect's
/// `instr`/`strpos`.
const LEAK_SQL: &str = "
WITH messaged AS (
    SELECT o.shipment_id,
           CASE WHEN {position}(o.milestone, ':') > 0
                THEN substr(o.milestone, 1, {position}(o.milestone, ':') - 1)
                ELSE o.milestone END AS milestone,
           o.channel,
           min(c.at_ms) AS sent_ms
    FROM notification_outcomes c
    JOIN notification_outbox o ON o.id = c.outbox_id
    WHERE c.outcome = 'sent' AND c.at_ms >= ?1 AND o.status IN ('sent', 'delivered')
    GROUP BY o.shipment_id, 2, o.channel
),
lines AS (
    SELECT shipment_id, milestone, channel, sent_ms FROM messaged
    UNION ALL
    SELECT shipment_id, milestone, 'all', min(sent_ms) FROM messaged GROUP BY shipment_id, milestone
)
SELECT l.milestone, l.channel, count(*),
       sum(CASE WHEN EXISTS (SELECT 1 FROM support_contacts s
                             WHERE s.shipment_id = l.shipment_id AND s.opened_ms >= l.sent_ms)
                THEN 1 ELSE 0 END)
FROM lines l
GROUP BY l.milestone, l.channel
ORDER BY l.milestone, l.channel";

impl Store {
    /// A shipment's support contacts, oldest first.
    pub fn support_contacts(&self, shipment_id: i64) -> Result<Vec<SupportContactRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT source, ticket, opened_ms FROM support_contacts WHERE shipment_id = ?1 ORDER BY opened_ms, id",
        )?;
        let rows = stmt.query_map([shipment_id], |r| {
            Ok(SupportContactRecord { source: r.get(0)?, ticket: r.get(1)?, opened_ms: r.get(2)? })
        })?;
        rows.collect::<Result<_, _>>()
    }

    /// The leak report over messages sent at or after `since_ms` (see [`LeakRow`]).
    pub fn support_leak(&self, since_ms: i64) -> Result<Vec<LeakRow>, StoreError> {
        let position = match self.conn.dialect() {
            super::Dialect::Sqlite => "instr",
            super::Dialect::Postgres => "strpos",
        };
        let sql = LEAK_SQL.replace("{position}", position);
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([since_ms], |r| {
            Ok(LeakRow {
                milestone: r.get(0)?,
                channel: r.get(1)?,
                shipments: r.get(2)?,
                contacted: r.get(3)?,
            })
        })?;
        rows.collect::<Result<_, _>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leak_lines_names_read_back_as_what_they_name_and_a_newer_hubs_as_stored() {
        for update in Update::ALL {
            assert_eq!(Named::<Told>::parse(update.as_str()), Named::Known(Told::Update(update)));
        }
        let delivered = Named::<Told>::parse("delivered");
        assert_eq!(delivered, Named::Known(Told::Milestone(Milestone::Delivered)));
        assert_eq!(delivered.name(), "delivered");
        assert_eq!(Named::<LeakChannel>::parse("all"), Named::Known(LeakChannel::All));
        for channel in ContactChannel::ALL {
            let named = Named::<LeakChannel>::parse(channel.as_str());
            assert_eq!(named, Named::Known(LeakChannel::One(channel)));
            assert_eq!(named.name(), channel.as_str());
        }
        assert_eq!(Named::<LeakChannel>::parse("carrier_pigeon").name(), "carrier_pigeon");
        assert_eq!(Named::<Told>::parse("signed_for_by_neighbour").known(), None);
    }
}
