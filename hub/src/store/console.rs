//! What the operations console reads and writes that no other part of the hub does:
//! alerts with their whole state (escalation, acknowledgement, resolution), resolving
//! one, shipments by order id, and the raw figures of the numbers page (per UTC day and
//! carrier, per channel and outcome, van scan to customer message). The figures are
//! counted here and shaped by pure functions in `console::numbers`.

use super::db::{OptionalExtension as _, params};

use super::{Store, StoreError};

/// Where an operations alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    /// Nobody has said they are on it; its escalation runs.
    Open,
    /// Someone is on it; its escalation stopped.
    Acknowledged,
    /// Dealt with.
    Resolved,
}

impl AlertState {
    /// The state's name in URLs and on the page (`open`, `acknowledged`, `resolved`).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Open => "open",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<AlertState> {
        [AlertState::Open, AlertState::Acknowledged, AlertState::Resolved]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// An operations alert with everything the console shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleAlert {
    /// Row id.
    pub id: i64,
    /// The reconciler's rule (`carrier_delivered_device_away`).
    pub code: String,
    /// The evidence, one sentence for the operator.
    pub detail: String,
    /// The shipment's tracking number, when the alert is about one.
    pub tracking_number: Option<String>,
    /// Raised, hub time, ms since the Unix epoch.
    pub created_ms: i64,
    /// The last escalation step it was posted to (0: not yet).
    pub level: u32,
    /// When it was posted there.
    pub posted_ms: Option<i64>,
    /// When it was acknowledged.
    pub acked_ms: Option<i64>,
    /// The API key's name that acknowledged it.
    pub acked_by: Option<String>,
    /// When it was resolved.
    pub resolved_ms: Option<i64>,
    /// The API key's name that resolved it.
    pub resolved_by: Option<String>,
}

impl ConsoleAlert {
    /// Resolved beats acknowledged beats open.
    pub fn state(&self) -> AlertState {
        if self.resolved_ms.is_some() {
            AlertState::Resolved
        } else if self.acked_ms.is_some() {
            AlertState::Acknowledged
        } else {
            AlertState::Open
        }
    }
}

/// What resolving an alert found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolve {
    /// Resolved now (and acknowledged, if it was not: its escalation stops).
    Resolved,
    /// It was already, by this key name at this time.
    Already {
        /// Who.
        by: Option<String>,
        /// When.
        at_ms: i64,
    },
    /// No such alert.
    Missing,
}

/// Counts per UTC day (`YYYY-MM-DD`) and carrier (the shipment's carrier as the order
/// system named it, empty when it named none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayCarrierCounts {
    /// Shipments delivered, on the day of their first delivery signal.
    pub deliveries: Vec<(String, String, i64)>,
    /// Shipments with an exception signal (carrier attempt failed, exception, available
    /// for pickup, returning; a driver's exception), per day of the signal.
    pub exceptions: Vec<(String, String, i64)>,
    /// Handovers the van signed away from the address.
    pub away_scans: Vec<(String, String, i64)>,
    /// Shipments with a carrier "delivered", on the day of the carrier's first one.
    pub carrier_delivered: Vec<(String, String, i64)>,
    /// Of those, the premature ones: the van came to the stop more than the reconciler's
    /// clock slack after the carrier's time, or never did and the reconciler raised
    /// `carrier_delivered_van_never_arrived`.
    pub premature: Vec<(String, String, i64)>,
}

/// The raw figures of the numbers page, from `since_ms` on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NumbersData {
    /// Per day and carrier.
    pub counts: DayCarrierCounts,
    /// Customer messages created in the window: (channel, status, count).
    pub messages: Vec<(String, String, i64)>,
    /// Per shipment the van scanned at the door in the window and whose customer was
    /// sent the "delivered" message: (scan, first `sent`), ms.
    pub scan_to_sent: Vec<(i64, i64)>,
}

/// Timeline rows a carrier wrote (every source but the van's and the hub's own).
const CARRIER_ROW: &str = "t.source NOT IN ('device', 'hub')";
/// Timeline rows that are a delivery signal.
const DELIVERY_SIGNAL: &str = "((t.source = 'device' AND t.kind = 'delivered_at_address')
     OR (t.source NOT IN ('device', 'hub') AND t.kind = 'delivered'))";
/// Timeline rows that are an exception signal, as the reconciler reads them.
const EXCEPTION_SIGNAL: &str = "((t.source = 'device' AND t.kind = 'driver_exception')
     OR (t.source NOT IN ('device', 'hub')
         AND t.kind IN ('attempt_failed', 'exception', 'available_for_pickup', 'returning')))";

const ALERT_COLUMNS: &str = "a.id, a.code, a.detail, s.tracking_number, a.created_ms, a.level, a.posted_ms,
     a.acked_ms, a.acked_by, a.resolved_ms, a.resolved_by";

fn alert_row(r: &super::db::Row<'_>) -> Result<ConsoleAlert, StoreError> {
    Ok(ConsoleAlert {
        id: r.get(0)?,
        code: r.get(1)?,
        detail: r.get(2)?,
        tracking_number: r.get(3)?,
        created_ms: r.get(4)?,
        level: r.get(5)?,
        posted_ms: r.get(6)?,
        acked_ms: r.get(7)?,
        acked_by: r.get(8)?,
        resolved_ms: r.get(9)?,
        resolved_by: r.get(10)?,
    })
}

fn triples(
    conn: &super::Db,
    sql: &str,
    args: impl super::db::Args,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    conn.prepare(sql)?.query_map(args, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()
}

impl Store {
    /// Alerts in `state`, newest first, at most `limit`.
    pub fn console_alerts(&self, state: AlertState, limit: usize) -> Result<Vec<ConsoleAlert>, StoreError> {
        let filter = match state {
            AlertState::Open => "a.acked_ms IS NULL AND a.resolved_ms IS NULL",
            AlertState::Acknowledged => "a.acked_ms IS NOT NULL AND a.resolved_ms IS NULL",
            AlertState::Resolved => "a.resolved_ms IS NOT NULL",
        };
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM ops_alerts a LEFT JOIN shipments s ON s.id = a.shipment_id
             WHERE {filter} ORDER BY a.created_ms DESC, a.id DESC LIMIT ?1"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn.prepare_cached(&sql)?.query_map([limit], alert_row)?.collect::<Result<_, _>>()
    }

    /// One alert.
    pub fn console_alert(&self, id: i64) -> Result<Option<ConsoleAlert>, StoreError> {
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM ops_alerts a LEFT JOIN shipments s ON s.id = a.shipment_id WHERE a.id = ?1"
        );
        self.conn.prepare_cached(&sql)?.query_row([id], alert_row).optional()
    }

    /// The alerts of one shipment, oldest first.
    pub fn console_alerts_for_shipment(&self, shipment_id: i64) -> Result<Vec<ConsoleAlert>, StoreError> {
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM ops_alerts a LEFT JOIN shipments s ON s.id = a.shipment_id
             WHERE a.shipment_id = ?1 ORDER BY a.id"
        );
        self.conn.prepare_cached(&sql)?.query_map([shipment_id], alert_row)?.collect::<Result<_, _>>()
    }

    /// Resolves an alert as `by` (an API key's name). An alert nobody acknowledged is
    /// acknowledged with it, so its escalation stops too.
    pub fn resolve_alert(&self, id: i64, by: &str, now_ms: i64) -> Result<Resolve, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE ops_alerts SET resolved_ms = ?2, resolved_by = ?3,
                        acked_ms = COALESCE(acked_ms, ?2), acked_by = COALESCE(acked_by, ?3)
                 WHERE id = ?1 AND resolved_ms IS NULL",
            )?
            .execute(params![id, now_ms, by])?;
        if n == 1 {
            return Ok(Resolve::Resolved);
        }
        let found = self
            .conn
            .prepare_cached("SELECT resolved_by, resolved_ms FROM ops_alerts WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<i64>>(1)?)))
            .optional()?;
        Ok(match found {
            Some((by, Some(at_ms))) => Resolve::Already { by, at_ms },
            _ => Resolve::Missing,
        })
    }

    /// Shipments whose order id or order name is `order`, newest first, at most 20.
    pub fn shipment_ids_by_order(&self, order: &str) -> Result<Vec<i64>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT id FROM shipments WHERE order_id = ?1 OR order_name = ?1
                 ORDER BY created_ms DESC, id DESC LIMIT 20",
            )?
            .query_map([order], |r| r.get(0))?
            .collect::<Result<_, _>>()
    }

    /// The raw figures of the numbers page for everything from `since_ms` on;
    /// `clock_slack_ms` is the reconciler's allowance between a carrier's clock and the
    /// van's.
    pub fn console_numbers(&self, since_ms: i64, clock_slack_ms: i64) -> Result<NumbersData, StoreError> {
        let day = self.conn.dialect().utc_day("x.at");
        let deliveries = triples(
            &self.conn,
            &format!(
                "SELECT {day}, COALESCE(s.carrier, ''), count(*) FROM
                   (SELECT t.shipment_id, MIN(t.occurred_ms) AS at FROM timeline t
                    JOIN shipments s ON s.id = t.shipment_id
                    WHERE s.milestone = 'delivered' AND {DELIVERY_SIGNAL} GROUP BY t.shipment_id) x
                 JOIN shipments s ON s.id = x.shipment_id
                 WHERE x.at >= ?1 GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            [since_ms],
        )?;
        let exceptions = triples(
            &self.conn,
            &format!(
                "SELECT {day}, COALESCE(s.carrier, ''), count(DISTINCT x.shipment_id) FROM
                   (SELECT t.shipment_id, t.occurred_ms AS at FROM timeline t WHERE {EXCEPTION_SIGNAL}) x
                 JOIN shipments s ON s.id = x.shipment_id
                 WHERE x.at >= ?1 GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            [since_ms],
        )?;
        let away_scans = triples(
            &self.conn,
            &format!(
                "SELECT {day}, COALESCE(s.carrier, ''), count(*) FROM
                   (SELECT t.shipment_id, t.occurred_ms AS at FROM timeline t
                    WHERE t.source = 'device' AND t.kind = 'delivered_away_from_address') x
                 JOIN shipments s ON s.id = x.shipment_id
                 WHERE x.at >= ?1 GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            [since_ms],
        )?;
        let carrier_sql = |count: &str| {
            format!(
                "SELECT {day}, COALESCE(s.carrier, ''), {count} FROM
                   (SELECT t.shipment_id, MIN(t.occurred_ms) AS at FROM timeline t
                    WHERE {CARRIER_ROW} AND t.kind = 'delivered' GROUP BY t.shipment_id) x
                 JOIN shipments s ON s.id = x.shipment_id
                 LEFT JOIN (SELECT shipment_id, MIN(occurred_ms) AS arrived FROM timeline
                            WHERE source = 'device' AND kind IN ('nearby', 'delivered_at_address')
                            GROUP BY shipment_id) v ON v.shipment_id = x.shipment_id
                 WHERE x.at >= ?1 GROUP BY 1, 2 ORDER BY 1, 2"
            )
        };
        let carrier_delivered = triples(&self.conn, &carrier_sql("count(*)"), params![since_ms])?;
        let premature = triples(
            &self.conn,
            &carrier_sql(
                "SUM(CASE WHEN v.arrived > x.at + ?2 THEN 1
                          WHEN v.arrived IS NULL AND EXISTS (SELECT 1 FROM ops_alerts a
                               WHERE a.shipment_id = x.shipment_id AND a.code = 'carrier_delivered_van_never_arrived')
                          THEN 1 ELSE 0 END)",
            ),
            params![since_ms, clock_slack_ms],
        )?;
        let messages = triples(
            &self.conn,
            "SELECT channel, status, count(*) FROM notification_outbox WHERE created_ms >= ?1
             GROUP BY channel, status ORDER BY channel, status",
            [since_ms],
        )?;
        let scan_to_sent = self
            .conn
            .prepare(
                "SELECT d.scan, MIN(o.at_ms) FROM
                   (SELECT shipment_id, MIN(occurred_ms) AS scan FROM timeline
                    WHERE source = 'device' AND kind = 'delivered_at_address' GROUP BY shipment_id) d
                 JOIN notification_outbox n ON n.shipment_id = d.shipment_id AND n.milestone = 'delivered'
                 JOIN notification_outcomes o ON o.outbox_id = n.id AND o.outcome = 'sent'
                 WHERE d.scan >= ?1 GROUP BY d.shipment_id, d.scan ORDER BY d.shipment_id",
            )?
            .query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(NumbersData {
            counts: DayCarrierCounts { deliveries, exceptions, away_scans, carrier_delivered, premature },
            messages,
            scan_to_sent,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use doorstep_proto::TrackingNumber;
    use serde_json::json;

    use super::*;
    use crate::store::{Contact, ContactChannel, NewNotification, NewShipment, NoticeLogged};

    /// 2026-12-01T00:00:00Z.
    const DAY1: i64 = 1_796_083_200_000;
    const DAY: i64 = 86_400_000;
    const MIN: i64 = 60_000;

    fn shipment(store: &mut Store, tracking: &str, carrier: &str, order: &str) -> i64 {
        let tx = store.transaction().expect("tx");
        let new = NewShipment {
            tracking_number: TrackingNumber::new(tracking).expect("tracking"),
            carrier: Some(carrier.into()),
            order_id: Some(order.into()),
            contacts: BTreeMap::from([(
                ContactChannel::Sms,
                Contact { recipient: "+15555550100".into(), consent: true },
            )]),
            locale: "en".into(),
            time_zone: "UTC".into(),
        };
        let id = tx.insert_shipment(&new, DAY1).expect("insert");
        tx.commit().expect("commit");
        id
    }

    fn timeline(store: &mut Store, id: i64, at: i64, source: &str, kind: &str) {
        let tx = store.transaction().expect("tx");
        tx.add_timeline(id, at, source, kind, &json!({})).expect("timeline");
        tx.commit().expect("commit");
    }

    fn delivered(store: &mut Store, id: i64) {
        let tx = store.transaction().expect("tx");
        tx.save_reconcile(id, crate::model::Milestone::Delivered, &json!({}), DAY1).expect("milestone");
        tx.commit().expect("commit");
    }

    #[test]
    fn alerts_move_from_open_to_acknowledged_to_resolved() {
        let mut store = Store::open_in_memory().expect("store");
        let id = shipment(&mut store, "1ZCONSOLE0000001", "ups", "A-1");
        let tx = store.transaction().expect("tx");
        tx.raise_alert(id, "delivered_away_from_address", "scanned 240 m away", DAY1).expect("alert");
        tx.raise_alert(id, "carrier_returning", "returning", DAY1 + 1).expect("alert");
        tx.commit().expect("commit");
        let open = store.console_alerts(AlertState::Open, 50).expect("open");
        assert_eq!(open.len(), 2);
        assert_eq!(open[0].code, "carrier_returning", "newest first");
        assert_eq!(open[1].tracking_number.as_deref(), Some("1ZCONSOLE0000001"));
        let away = open[1].id;
        store.ack_alert(away, "oncall", DAY1 + 5).expect("ack");
        assert_eq!(store.console_alerts(AlertState::Acknowledged, 50).expect("acked")[0].id, away);
        assert_eq!(store.resolve_alert(away, "lead", DAY1 + 9).expect("resolve"), Resolve::Resolved);
        let resolved = store.console_alert(away).expect("read").expect("there");
        assert_eq!(resolved.state(), AlertState::Resolved);
        assert_eq!((resolved.acked_by.as_deref(), resolved.acked_ms), (Some("oncall"), Some(DAY1 + 5)));
        assert_eq!(resolved.resolved_by.as_deref(), Some("lead"));
        assert_eq!(
            store.resolve_alert(away, "other", DAY1 + 10).expect("again"),
            Resolve::Already { by: Some("lead".into()), at_ms: DAY1 + 9 }
        );
        assert_eq!(store.resolve_alert(999, "x", DAY1).expect("missing"), Resolve::Missing);
        // Resolving an open alert acknowledges it too: its escalation must stop.
        let other = open[0].id;
        store.resolve_alert(other, "lead", DAY1 + 11).expect("resolve");
        assert_eq!(store.console_alert(other).expect("read").expect("there").acked_ms, Some(DAY1 + 11));
        assert!(store.due_alerts(3, Some(0), DAY1 + DAY, 10).expect("due").is_empty());
        assert!(store.console_alerts(AlertState::Open, 50).expect("open").is_empty());
        assert_eq!(store.console_alerts_for_shipment(id).expect("of shipment").len(), 2);
    }

    #[test]
    fn shipments_are_found_by_order_id() {
        let mut store = Store::open_in_memory().expect("store");
        let a = shipment(&mut store, "1ZCONSOLE0000001", "ups", "A-1");
        let b = shipment(&mut store, "1ZCONSOLE0000002", "ups", "A-1");
        shipment(&mut store, "1ZCONSOLE0000003", "ups", "A-2");
        assert_eq!(store.shipment_ids_by_order("A-1").expect("by order"), vec![b, a]);
        assert!(store.shipment_ids_by_order("A-9").expect("none").is_empty());
    }

    #[test]
    fn numbers_count_deliveries_exceptions_away_scans_and_premature_carrier_reports() {
        let mut store = Store::open_in_memory().expect("store");
        let slack = 2 * MIN;
        // Day 1, ups: van at the door, then the carrier in time: delivered, not premature.
        let a = shipment(&mut store, "1ZCONSOLE0000001", "ups", "A-1");
        timeline(&mut store, a, DAY1 + 10 * MIN, "device", "nearby");
        timeline(&mut store, a, DAY1 + 12 * MIN, "device", "delivered_at_address");
        timeline(&mut store, a, DAY1 + 13 * MIN, "aftership", "delivered");
        delivered(&mut store, a);
        // Day 1, ups: the carrier said delivered an hour before the van came: premature.
        let b = shipment(&mut store, "1ZCONSOLE0000002", "ups", "A-2");
        timeline(&mut store, b, DAY1 + 60 * MIN, "aftership", "delivered");
        timeline(&mut store, b, DAY1 + 120 * MIN, "device", "nearby");
        timeline(&mut store, b, DAY1 + 121 * MIN, "device", "delivered_away_from_address");
        // Day 2, dhl: carrier delivered, the van never came, the reconciler said so.
        let c = shipment(&mut store, "1ZCONSOLE0000003", "dhl", "A-3");
        timeline(&mut store, c, DAY1 + DAY + MIN, "easypost", "delivered");
        timeline(&mut store, c, DAY1 + DAY + 2 * MIN, "easypost", "exception");
        timeline(&mut store, c, DAY1 + DAY + 3 * MIN, "easypost", "attempt_failed");
        let tx = store.transaction().expect("tx");
        tx.raise_alert(c, "carrier_delivered_van_never_arrived", "never came", DAY1 + DAY).expect("alert");
        tx.commit().expect("commit");
        // Before the window: not counted.
        let d = shipment(&mut store, "1ZCONSOLE0000004", "ups", "A-4");
        timeline(&mut store, d, DAY1 - DAY, "aftership", "delivered");

        let n = store.console_numbers(DAY1, slack).expect("numbers");
        let d1 = "2026-12-01".to_owned();
        let d2 = "2026-12-02".to_owned();
        assert_eq!(n.counts.deliveries, vec![(d1.clone(), "ups".into(), 1)]);
        assert_eq!(n.counts.exceptions, vec![(d2.clone(), "dhl".into(), 1)]);
        assert_eq!(n.counts.away_scans, vec![(d1.clone(), "ups".into(), 1)]);
        assert_eq!(
            n.counts.carrier_delivered,
            vec![(d1.clone(), "ups".into(), 2), (d2.clone(), "dhl".into(), 1)]
        );
        assert_eq!(n.counts.premature, vec![(d1, "ups".into(), 1), (d2, "dhl".into(), 1)]);

        // Scan to message: the "delivered" message to a's customer was sent 90 s after the scan.
        let tx = store.transaction().expect("tx");
        let msg = NewNotification {
            shipment_id: a,
            milestone: "delivered",
            channel: "sms",
            recipient: "+15555550100",
            detail: None,
            now_ms: DAY1 + 12 * MIN + 10_000,
        };
        tx.enqueue_notification(&msg).expect("enqueue");
        tx.commit().expect("commit");
        let row = store.outbox_for_shipment(a).expect("outbox")[0].id;
        store
            .record_outcome(row, DAY1 + 12 * MIN + 90_000, NoticeLogged::Sent, Some("SM1"), None)
            .expect("sent");
        store
            .record_outcome(row, DAY1 + 12 * MIN + 95_000, NoticeLogged::Sent, Some("SM2"), None)
            .expect("sent again");
        let n = store.console_numbers(DAY1, slack).expect("numbers");
        assert_eq!(n.scan_to_sent, vec![(DAY1 + 12 * MIN, DAY1 + 12 * MIN + 90_000)]);
        assert_eq!(n.messages, vec![("sms".into(), "queued".into(), 1)]);
    }
}
