//! Sending what the outbox holds: claiming and finishing rows, the outcome log, opt-outs,
//! providers' delivery reports, customers' questions and the escalation of operations
//! alerts. The notification dispatcher's statements, as the other modules here hold
//! ingest's and the API's.
//!
//! Row statuses: `queued` (due at `next_attempt_ms`), `sending` (claimed: a request may
//! be in flight), `sent` (the provider accepted it), `delivered`, `undelivered`,
//! `failed`, `unknown` (an ambiguous failure on a channel with no idempotency guard:
//! never re-sent automatically), `skipped` (opted out, no consent, quiet hours,
//! superseded, channel not configured).
//!
//! Statements that change two tables run in one write transaction
//! ([`Store::shared_transaction`]: the dispatcher's store sits behind its lock).

use super::db::{OptionalExtension as _, params};

use super::named::stored_names;
use super::{Named, OutboxRow, OutboxStatus, Store, StoreError, corrupt};

stored_names! {
    /// What one entry of a notification's outcome log says (`notification_outcomes.outcome`):
    /// the hub's own steps, and what providers' delivery reports mean (each provider's
    /// module maps its vendor's words onto these).
    pub enum NoticeLogged {
        /// Enqueued.
        Queued = "queued",
        /// Held back (quiet hours, a message to join); sent later.
        Deferred = "deferred",
        /// Not sent, and not to be (opted out, no consent, superseded, no provider).
        Skipped = "skipped",
        /// The provider accepted it.
        Sent = "sent",
        /// An attempt did not get through; another follows.
        AttemptFailed = "attempt_failed",
        /// A provider did not take it and the next configured one was tried.
        HandedOn = "handed_on",
        /// The provider says the recipient opted out; the address is opted out here too.
        OptedOut = "opted_out",
        /// Refused, or out of attempts.
        Failed = "failed",
        /// May or may not have got through; not resent.
        Unknown = "unknown",
        /// Reached the recipient.
        Delivered = "delivered",
        /// The provider gave up reaching the recipient.
        Undelivered = "undelivered",
        /// A temporary failure the provider retries itself (Mailgun).
        TemporaryFailure = "temporary_failure",
        /// Opened or read (implies delivered).
        Opened = "opened",
        /// A link in it was followed.
        Clicked = "clicked",
    }
}

/// One entry of the outcome log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// What happened (as stored, should a newer hub have logged a word this one does
    /// not know).
    pub outcome: Named<NoticeLogged>,
    /// The provider's message id.
    pub provider_id: Option<String>,
    /// What happened, in words.
    pub detail: Option<String>,
    /// The configured provider (its name) the entry is about, if any.
    pub provider: Option<String>,
}

/// How a row ends (or an attempt on it does): [`Store::finish_notification`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish<'a> {
    /// The row's new status.
    pub status: OutboxStatus,
    /// When it is `queued` again: its next attempt.
    pub next_attempt_ms: Option<i64>,
    /// The outcome log entry.
    pub outcome: NoticeLogged,
    /// The configured provider the attempt went to.
    pub provider: Option<&'a str>,
    /// The provider's message id.
    pub provider_id: Option<&'a str>,
    /// What happened, in words.
    pub detail: Option<&'a str>,
}

/// A customer's question and the hub's answer, for the question log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewQuestion<'a> {
    /// The channel it came on.
    pub channel: &'a str,
    /// Who asked (a phone number).
    pub sender: &'a str,
    /// What they wrote (already cut to the logged length).
    pub question: &'a str,
    /// What kind of question the hub took it for.
    pub kind: &'a str,
    /// The shipment the answer is about, if one.
    pub shipment_id: Option<i64>,
    /// The reply (`None`: none was sent).
    pub answer: Option<&'a str>,
}

/// An unsent operations alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Row id.
    pub id: i64,
    /// The reconciler's code.
    pub code: String,
    /// The sentence for the operator.
    pub detail: String,
    /// The shipment's tracking number, when the alert is about one.
    pub tracking_number: Option<String>,
}

/// An alert and where its escalation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueAlert {
    /// The alert.
    pub alert: Alert,
    /// The last step it was posted at (0: not yet).
    pub level: u32,
    /// When it was posted there.
    pub posted_ms: Option<i64>,
}

/// What acknowledging an alert found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// Acknowledged now; its escalation stops.
    Acknowledged,
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

fn log(
    conn: &super::Db,
    outbox_id: i64,
    now_ms: i64,
    outcome: NoticeLogged,
    provider_id: Option<&str>,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO notification_outcomes (outbox_id, at_ms, outcome, provider_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![outbox_id, now_ms, outcome, provider_id, detail])?;
    Ok(())
}

impl Store {
    /// Appends an attempt on a named provider to the outcome log.
    pub fn record_attempt(
        &self,
        outbox_id: i64,
        now_ms: i64,
        outcome: NoticeLogged,
        provider: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO notification_outcomes (outbox_id, at_ms, outcome, provider, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![outbox_id, now_ms, outcome, provider, detail])?;
        Ok(())
    }

    /// Appends to the outcome log.
    pub fn record_outcome(
        &self,
        outbox_id: i64,
        now_ms: i64,
        outcome: NoticeLogged,
        provider_id: Option<&str>,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        log(&self.conn, outbox_id, now_ms, outcome, provider_id, detail)
    }

    /// The outcome log of one row, oldest first.
    pub fn outcomes(&self, outbox_id: i64) -> Result<Vec<Outcome>, StoreError> {
        self
            .conn
            .prepare_cached(
                "SELECT at_ms, outcome, provider_id, detail, provider FROM notification_outcomes WHERE outbox_id = ?1 ORDER BY id",
            )?
            .query_map([outbox_id], |r| {
                Ok(Outcome {
                    at_ms: r.get(0)?,
                    outcome: r.get(1)?,
                    provider_id: r.get(2)?,
                    detail: r.get(3)?,
                    provider: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()
    }

    /// Claims a due row for sending: `queued` → `sending`, one more attempt. False when
    /// another dispatcher pass got it first.
    pub fn claim_notification(&self, id: i64) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE notification_outbox SET status = 'sending', attempts = attempts + 1
                 WHERE id = ?1 AND status = 'queued'",
            )?
            .execute([id])?;
        Ok(n == 1)
    }

    /// Ends a row (or an attempt) in one transaction: the new status, the next attempt
    /// time when it is `queued` again, and the outcome log entry.
    pub fn finish_notification(&self, id: i64, now_ms: i64, end: &Finish<'_>) -> Result<(), StoreError> {
        let tx = self.shared_transaction()?;
        // Only a row still in flight: a hub that lost the dispatch lease mid-request may
        // finish after the next holder settled or re-sent the row; its answer is logged,
        // and a status the other hub wrote since is kept.
        tx.tx
            .prepare_cached(
                "UPDATE notification_outbox SET status = ?2, next_attempt_ms = COALESCE(?3, next_attempt_ms)
                 WHERE id = ?1 AND status IN ('sending', 'unknown')",
            )?
            .execute(params![id, end.status, end.next_attempt_ms])?;
        tx.tx
            .prepare_cached(
                "INSERT INTO notification_outcomes (outbox_id, at_ms, outcome, provider, provider_id, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![id, now_ms, end.outcome, end.provider, end.provider_id, end.detail])?;
        tx.commit()
    }

    /// Whether the person a row goes to has another parcel with messages on this channel
    /// since `since_ms`: only then may another parcel's message join this one, and only
    /// then is it worth waiting for.
    pub fn has_other_parcel(&self, row: &OutboxRow, since_ms: i64) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM notification_outbox
                 WHERE channel = ?1 AND recipient = ?2 AND created_ms >= ?3 AND shipment_id != ?4 LIMIT 1",
            )?
            .exists(params![row.channel, row.recipient, since_ms, row.shipment_id])
    }

    /// Holds a queued row until `until_ms` without a log entry: a message waiting a few
    /// seconds for other parcels of the same person (see `NotifySettings::group_hold`).
    pub fn hold_notification(&self, id: i64, until_ms: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE notification_outbox SET next_attempt_ms = ?2 WHERE id = ?1 AND status = 'queued'",
            )?
            .execute(params![id, until_ms])?;
        Ok(())
    }

    /// Moves a queued row's next attempt to `until_ms` (quiet hours) and logs why.
    pub fn defer_notification(
        &self,
        id: i64,
        until_ms: i64,
        now_ms: i64,
        detail: &str,
    ) -> Result<(), StoreError> {
        let tx = self.shared_transaction()?;
        let n = tx
            .tx
            .prepare_cached(
                "UPDATE notification_outbox SET next_attempt_ms = ?2 WHERE id = ?1 AND status = 'queued'",
            )?
            .execute(params![id, until_ms])?;
        if n == 1 {
            log(tx.tx, id, now_ms, NoticeLogged::Deferred, None, Some(detail))?;
        }
        tx.commit()
    }

    /// Marks a queued row `skipped` and logs why. False when it was no longer queued.
    pub fn skip_notification(
        &self,
        id: i64,
        now_ms: i64,
        reason: &str,
        detail: &str,
    ) -> Result<bool, StoreError> {
        let tx = self.shared_transaction()?;
        let n = tx
            .tx
            .prepare_cached(
                "UPDATE notification_outbox SET status = 'skipped' WHERE id = ?1 AND status = 'queued'",
            )?
            .execute([id])?;
        if n == 1 {
            log(tx.tx, id, now_ms, NoticeLogged::Skipped, None, Some(&format!("{reason}: {detail}")))?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Whether a recipient opted out of a channel.
    pub fn is_opted_out(&self, channel: &str, recipient: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM notification_opt_outs WHERE channel = ?1 AND recipient = ?2")?
            .exists(params![channel, recipient])
    }

    /// Records an opt-out (`out`) or removes it (an opt-in).
    pub fn set_opt_out(
        &self,
        channel: &str,
        recipient: &str,
        out: bool,
        source: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if out {
            self.conn
                .prepare_cached(
                    "INSERT INTO notification_opt_outs (channel, recipient, source, at_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (channel, recipient) DO UPDATE SET source = ?3, at_ms = ?4",
                )?
                .execute(params![channel, recipient, source, now_ms])?;
        } else {
            self.conn
                .prepare_cached("DELETE FROM notification_opt_outs WHERE channel = ?1 AND recipient = ?2")?
                .execute(params![channel, recipient])?;
        }
        Ok(())
    }

    /// The GNSS time of the van's first delivery scan at the door of a shipment (its
    /// `delivered_at_address` timeline entry), ms; `None` when no van scanned it there (a
    /// delivery known from the carrier alone). The start of
    /// `doorstep_hub_scan_to_message_seconds`.
    pub fn delivery_scan_ms(&self, shipment_id: i64) -> Result<Option<i64>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT MIN(occurred_ms) FROM timeline
                 WHERE shipment_id = ?1 AND source = 'device' AND kind = 'delivered_at_address'",
            )?
            .query_row([shipment_id], |r| r.get(0))
    }

    /// The outbox row a provider message id belongs to.
    pub fn by_provider_id(&self, provider_id: &str) -> Result<Option<i64>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT outbox_id FROM notification_outcomes WHERE provider_id = ?1 ORDER BY id LIMIT 1",
            )?
            .query_row([provider_id], |r| r.get(0))
            .optional()
    }

    /// The channel and recipient of a row.
    pub fn row_target(&self, id: i64) -> Result<Option<(String, String)>, StoreError> {
        self.conn
            .prepare_cached("SELECT channel, recipient FROM notification_outbox WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    }

    /// The status of a row.
    pub fn row_status(&self, id: i64) -> Result<Option<OutboxStatus>, StoreError> {
        self.conn
            .prepare_cached("SELECT status FROM notification_outbox WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()
    }

    /// Applies a provider's report about a row: logs it once (a redelivered callback adds
    /// nothing) and moves the status forward — never back from `delivered`, and an open
    /// implies delivery. Returns whether it was new.
    pub fn provider_event(
        &self,
        outbox_id: i64,
        outcome: NoticeLogged,
        provider_id: Option<&str>,
        detail: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let tx = self.shared_transaction()?;
        let tx_conn: &super::Db = tx.tx;
        // One message may have told several parcels (one message per person and moment):
        // the report is about each row the message was sent for.
        let mut rows = vec![outbox_id];
        if let Some(pid) = provider_id {
            let mut stmt = tx_conn.prepare_cached(
                "SELECT DISTINCT outbox_id FROM notification_outcomes
                 WHERE provider_id = ?1 AND outcome = 'sent' AND outbox_id != ?2",
            )?;
            for id in stmt.query_map(params![pid, outbox_id], |r| r.get::<_, i64>(0))? {
                rows.push(id?);
            }
        }
        let mut first_new = false;
        for (i, &row) in rows.iter().enumerate() {
            let n = tx_conn
                .prepare_cached(
                    "INSERT INTO notification_outcomes (outbox_id, at_ms, outcome, provider_id, detail)
                     SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM notification_outbox WHERE id = ?1)
                       AND NOT EXISTS (SELECT 1 FROM notification_outcomes
                                       WHERE outbox_id = ?1 AND outcome = ?3 AND provider_id IS NOT DISTINCT FROM ?4)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![row, now_ms, outcome, provider_id, detail])?;
            if i == 0 {
                first_new = n == 1;
            }
            if n == 1
                && let Some((status, from)) = report_moves(outcome)
            {
                let from = serde_json::to_string(&from).map_err(|e| corrupt("statuses", e))?;
                let sql = format!(
                    "UPDATE notification_outbox SET status = ?2 WHERE id = ?1 AND status IN ({})",
                    tx_conn.dialect().json_texts(3)
                );
                tx_conn.execute(&sql, params![row, status, from])?;
            }
        }
        tx.commit()?;
        Ok(first_new)
    }

    /// Logs a customer's question and the hub's answer.
    pub fn record_question(&self, now_ms: i64, q: &NewQuestion<'_>) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO customer_questions (at_ms, channel, sender, question, kind, shipment_id, answer)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![now_ms, q.channel, q.sender, q.question, q.kind, q.shipment_id, q.answer])?;
        Ok(())
    }

    /// How many of a sender's questions on `channel` got an answer since `since_ms`.
    pub fn answers_since(&self, channel: &str, sender: &str, since_ms: i64) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT count(*) FROM customer_questions
                 WHERE sender = ?1 AND channel = ?2 AND at_ms >= ?3 AND answer IS NOT NULL",
            )?
            .query_row(params![sender, channel, since_ms], |r| r.get(0))
    }

    /// Alerts not acknowledged whose next step may be due: never posted, or posted at a
    /// step before the last at least `min_wait_ms` ago (`None`: steps only take over on
    /// failure, so posted alerts are done). Oldest first.
    pub fn due_alerts(
        &self,
        steps: u32,
        min_wait_ms: Option<i64>,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<DueAlert>, StoreError> {
        self
            .conn
            .prepare_cached(
                "SELECT a.id, a.code, a.detail, s.tracking_number, a.level, a.posted_ms FROM ops_alerts a
                 LEFT JOIN shipments s ON s.id = a.shipment_id
                 WHERE a.acked_ms IS NULL AND a.level < ?1
                   AND (a.level = 0 OR (CAST(?2 AS BIGINT) IS NOT NULL AND a.posted_ms <= CAST(?3 AS BIGINT) - ?2))
                 ORDER BY a.id LIMIT ?4",
            )?
            .query_map(params![steps, min_wait_ms, now_ms, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok(DueAlert {
                    alert: Alert {
                        id: r.get(0)?,
                        code: r.get(1)?,
                        detail: r.get(2)?,
                        tracking_number: r.get(3)?,
                    },
                    level: r.get(4)?,
                    posted_ms: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()
    }

    /// Records an alert posted at `level` (1-based), unless it was acknowledged or another
    /// hub posted it there first; false then.
    pub fn mark_alert_posted(
        &self,
        id: i64,
        from_level: u32,
        level: u32,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE ops_alerts SET sent = 1, level = ?3, posted_ms = ?4
                 WHERE id = ?1 AND level = ?2 AND acked_ms IS NULL",
            )?
            .execute(params![id, from_level, level, now_ms])?;
        Ok(n == 1)
    }

    /// Acknowledges an operations alert as `by` (an API key's name): its escalation stops.
    pub fn ack_alert(&self, id: i64, by: &str, now_ms: i64) -> Result<Ack, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE ops_alerts SET acked_ms = ?2, acked_by = ?3 WHERE id = ?1 AND acked_ms IS NULL",
            )?
            .execute(params![id, now_ms, by])?;
        if n == 1 {
            return Ok(Ack::Acknowledged);
        }
        let found = self
            .conn
            .prepare_cached("SELECT acked_by, acked_ms FROM ops_alerts WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<i64>>(1)?)))
            .optional()?;
        Ok(match found {
            Some((by, Some(at_ms))) => Ack::Already { by, at_ms },
            _ => Ack::Missing,
        })
    }
}

/// Where a provider's report moves a row: its new status and the statuses it may leave
/// (never back from `delivered`; an open implies delivery). `None`: the report moves
/// nothing. Both backends apply this table.
pub(super) fn report_moves(outcome: NoticeLogged) -> Option<(OutboxStatus, &'static [OutboxStatus])> {
    use OutboxStatus::{Delivered, Failed, Sending, Sent, Undelivered, Unknown};
    match outcome {
        NoticeLogged::Delivered | NoticeLogged::Opened => {
            Some((Delivered, &[Sending, Sent, Unknown, Undelivered, Failed]))
        }
        NoticeLogged::Undelivered => Some((Undelivered, &[Sending, Sent, Unknown])),
        NoticeLogged::Failed => Some((Failed, &[Sending, Sent, Unknown])),
        NoticeLogged::Sent => Some((Sent, &[Sending, Unknown])),
        _ => None,
    }
}

/// The outcome log's words for a row a new lease holder settles (both backends).
pub(super) const SETTLED_RESEND: &str = "hub stopped mid-send; resending (idempotent channel)";
/// The same, for a row that becomes `unknown`.
pub(super) const SETTLED_UNKNOWN: &str = "hub stopped mid-send; not resent (no idempotency guard)";

/// Rows a previous dispatcher left `sending` (a stopped hub, or a lease holder that lost
/// the lease): channels whose requests are safe to repeat (`resend_safe`) go back to
/// `queued`; the rest become `unknown` (the request may have been sent). Runs inside the
/// lease's take-over transaction. Returns (requeued, unknown).
pub(super) fn recover(
    tx: &super::Db,
    now_ms: i64,
    resend_safe: &[&str],
) -> Result<(usize, usize), StoreError> {
    let rows: Vec<(i64, String)> = tx
        .prepare_cached("SELECT id, channel FROM notification_outbox WHERE status = 'sending'")?
        .query_map(super::db::params![], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let (mut requeued, mut unknown) = (0, 0);
    for (id, channel) in rows {
        if resend_safe.contains(&channel.as_str()) {
            tx.execute(
                "UPDATE notification_outbox SET status = 'queued', next_attempt_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
            log(tx, id, now_ms, NoticeLogged::AttemptFailed, None, Some(SETTLED_RESEND))?;
            requeued += 1;
        } else {
            tx.execute("UPDATE notification_outbox SET status = 'unknown' WHERE id = ?1", [id])?;
            log(tx, id, now_ms, NoticeLogged::Unknown, None, Some(SETTLED_UNKNOWN))?;
            unknown += 1;
        }
    }
    Ok((requeued, unknown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delivery_scan_is_the_vans_first_scan_at_the_door() {
        let store = Store::open_in_memory().expect("schema");
        for id in 1..=4 {
            store
                .conn
                .execute(
                    "INSERT INTO shipments (id, tracking_number, contacts, locale, time_zone, milestone, created_ms, updated_ms)
                     VALUES (?1, ?2, '[]', 'en', 'UTC', 'created', 0, 0)",
                    params![id, format!("T{id}")],
                )
                .expect("shipment");
        }
        let add = |shipment: i64, at: i64, source: &str, kind: &str| {
            store
                .conn
                .execute(
                    "INSERT INTO timeline (shipment_id, occurred_ms, source, kind, detail) VALUES (?1, ?2, ?3, ?4, '{}')",
                    params![shipment, at, source, kind],
                )
                .expect("insert");
        };
        add(1, 1_000, "device", "nearby");
        add(1, 5_000, "device", "delivered_at_address");
        add(1, 9_000, "device", "delivered_at_address");
        add(1, 2_000, "easypost", "delivered");
        add(2, 3_000, "easypost", "delivered");
        add(3, 4_000, "device", "delivered_away_from_address");
        assert_eq!(store.delivery_scan_ms(1).expect("query"), Some(5_000));
        assert_eq!(store.delivery_scan_ms(2).expect("query"), None, "the carrier's word is not a scan");
        assert_eq!(store.delivery_scan_ms(3).expect("query"), None, "not at the door");
        assert_eq!(store.delivery_scan_ms(4).expect("query"), None);
    }
}
