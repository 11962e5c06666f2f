//! Business sinks: every reconciled milestone and operations alert reported to the systems
//! shippers' teams live in (an event stream, a helpdesk, a CRM), after the hub commits it.
//!
//! Ingest's writer enqueues one `sink_outbox` row per subscribed sink in the transaction
//! that moves the milestone or raises the alert ([`registry::Subscriptions`], read by
//! `ingest::apply`), so an event exists exactly when what it reports was committed, and
//! the row's unique key (sink, shipment, event) keeps a replayed input from enqueuing it
//! twice. The [`Dispatcher`] runs one loop per configured sink: it takes that sink's due
//! rows (one shipment's rows in order: a ticket before its comments), claims each, delivers
//! it through the sink's module under its rate limit and circuit, and writes the result and
//! an outcome-log entry together. Failures are retried with backoff (and `Retry-After`);
//! an ambiguous delivery is repeated only when the sink dedupes on the row's stable key
//! ([`SinkEvent::key`]: JetStream's `Nats-Msg-Id`, Zendesk's `Idempotency-Key` on ticket
//! creation), otherwise the row is `unknown` and never repeated.
//!
//! Adding a sink is one module under `sinks/` and its name in the `sinks!` line below.
//!
//! What this module must never do: report an event the hub did not commit, send an event
//! twice where the sink cannot dedupe it, or run SQLite on an async worker.

pub mod registry;
pub mod sink;

// The sink registry: one module per sink, listed once.
registry::sinks!(nats, zendesk, freshdesk, hubspot, salesforce, klaviyo, activecampaign);

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use registry::{SinkConfigError, Sinks, Subscriptions};
pub use sink::{Delivery, Sink, SinkType};

use crate::metrics::Metrics;
use crate::model::Milestone;
use crate::notify::SendResult;
use crate::store::{ContactChannel, SinkLogged, SinkRow, SinkStatus, Store, StoreError, StoreOptions};
use registry::Registered;

/// How often each sink's loop looks for due rows (ingest does not wake it: a stream
/// consumer or a helpdesk is not waiting on the second).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Due rows one sink takes per pass.
pub const BATCH: usize = 64;

/// Why the sink machinery failed (not a delivery failure: those are outcomes).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task panicked or was cancelled.
    #[error("sink task failed: {0}")]
    Task(String),
    /// The HTTP client could not be built.
    #[error("building the sinks' HTTP client: {0}")]
    Client(String),
}

/// What an event reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The shipment reached this milestone.
    Milestone(Milestone),
    /// Operations were alerted, with this code.
    Alert(String),
}

impl EventKind {
    /// The outbox's `event` column: `milestone:<name>` or `alert:<code>`.
    pub fn key(&self) -> String {
        match self {
            Self::Milestone(m) => format!("milestone:{}", crate::store::milestone_name(*m)),
            Self::Alert(code) => format!("alert:{code}"),
        }
    }

    /// Reads the outbox's `event` column.
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(code) = text.strip_prefix("alert:") {
            return Some(Self::Alert(code.to_owned()));
        }
        let name = text.strip_prefix("milestone:")?;
        registry::MILESTONES
            .into_iter()
            .find(|m| crate::store::milestone_name(*m) == name)
            .map(Self::Milestone)
    }
}

/// One event as a sink receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkEvent {
    /// The outbox row.
    pub row_id: i64,
    /// Stable across retries, restarts and hubs: `doorstep:{sink}:{tracking}:{event}`.
    /// What sinks dedupe on (`Nats-Msg-Id`, `Idempotency-Key`).
    pub key: String,
    /// The configured sink's name.
    pub sink: String,
    /// The parcel.
    pub tracking_number: String,
    /// The fleet of the van route the parcel was on, if any.
    pub fleet: Option<String>,
    /// What happened.
    pub kind: EventKind,
    /// The reason (an exception's), or the alert's sentence.
    pub detail: Option<String>,
    /// When the hub committed it, ms since the Unix epoch.
    pub occurred_ms: i64,
    /// The order's name as the customer knows it (`#1001`).
    pub order_name: Option<String>,
    /// The customer's e-mail address, when they consented to e-mail.
    pub customer_email: Option<String>,
    /// What this sink made for the shipment before (a ticket id).
    pub thread: Option<String>,
}

impl SinkEvent {
    /// The event of an outbox row, with what the shipment's record adds.
    pub fn from_row(row: &SinkRow, shipment: Option<&crate::store::Shipment>) -> Option<Self> {
        let kind = EventKind::parse(&row.event)?;
        let email = shipment
            .and_then(|s| s.contacts.get(&ContactChannel::Email))
            .filter(|c| c.consent)
            .map(|c| c.recipient.clone());
        Some(Self {
            row_id: row.id,
            key: format!("doorstep:{}:{}:{}", row.sink, row.tracking_number, row.event),
            sink: row.sink.clone(),
            tracking_number: row.tracking_number.clone(),
            fleet: row.fleet.clone(),
            kind,
            detail: row.detail.clone(),
            occurred_ms: row.created_ms,
            order_name: shipment.and_then(|s| s.order_name.clone()),
            customer_email: email,
            thread: row.thread.clone(),
        })
    }

    /// The event as JSON, as the event stream publishes it (and other sinks may quote).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": self.key,
            "tracking_number": self.tracking_number,
            "fleet": self.fleet,
            "occurred_ms": self.occurred_ms,
            "detail": self.detail,
            "order_name": self.order_name,
        });
        match &self.kind {
            EventKind::Milestone(m) => {
                v["type"] = "milestone".into();
                v["milestone"] = crate::store::milestone_name(*m).into();
            }
            EventKind::Alert(code) => {
                v["type"] = "alert".into();
                v["alert"] = code.as_str().into();
            }
        }
        v
    }
}

/// An event of parcel `1Z999AA10123456784` (order `#1001`, a customer who consented to
/// e-mail, 2025-07-01 08:00Z) for the sinks' unit tests.
#[cfg(test)]
pub(crate) fn test_event(sink: &str, kind: EventKind) -> SinkEvent {
    let tracking = "1Z999AA10123456784";
    SinkEvent {
        row_id: 1,
        key: format!("doorstep:{sink}:{tracking}:{}", kind.key()),
        sink: sink.into(),
        tracking_number: tracking.into(),
        fleet: None,
        kind,
        detail: None,
        occurred_ms: 1_751_356_800_000,
        order_name: Some("#1001".into()),
        customer_email: Some("ada@example.com".into()),
        thread: None,
    }
}

/// How a delivery ends a row: its new status, next attempt, and log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// `sent`, `skipped`, `queued` (again), `failed` or `unknown`.
    pub status: SinkStatus,
    /// When `queued` again.
    pub next_attempt_ms: Option<i64>,
    /// The log entry's outcome.
    pub outcome: SinkLogged,
    /// The sink's id for what it made.
    pub vendor_id: Option<String>,
    /// In words.
    pub detail: String,
    /// What the sink made for the shipment, to remember.
    pub thread: Option<String>,
}

/// How attempt number `attempt` of a row ends (pure: the policy of every sink).
pub fn ending(
    delivery: Delivery,
    attempt: i64,
    row_id: i64,
    retry: &crate::notify::config::RetryPolicy,
    resend_safe: bool,
    now_ms: i64,
) -> Ending {
    let can_retry = attempt < i64::from(retry.max_attempts);
    let retry_at = |after: Option<Duration>| {
        let wait = retry.backoff(attempt, row_id).max(after.unwrap_or_default());
        now_ms.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX))
    };
    let end = |status, next, outcome, detail| Ending {
        status,
        next_attempt_ms: next,
        outcome,
        vendor_id: None,
        detail,
        thread: None,
    };
    match delivery {
        Delivery::Accepted { vendor_id, thread, detail } => Ending {
            status: SinkStatus::Sent,
            next_attempt_ms: None,
            outcome: SinkLogged::Sent,
            vendor_id,
            detail,
            thread,
        },
        Delivery::Skipped { detail } => end(SinkStatus::Skipped, None, SinkLogged::Skipped, detail),
        Delivery::NotTaken(SendResult::Retry { detail, retry_after }) if can_retry => {
            let at = retry_at(retry_after);
            end(
                SinkStatus::Queued,
                Some(at),
                SinkLogged::AttemptFailed,
                format!("{detail}; attempt {attempt}, next at {at}"),
            )
        }
        Delivery::NotTaken(SendResult::Ambiguous { detail }) if resend_safe && can_retry => {
            let at = retry_at(None);
            let detail = format!("{detail}; attempt {attempt}, resending at {at} under the same key");
            end(SinkStatus::Queued, Some(at), SinkLogged::AttemptFailed, detail)
        }
        Delivery::NotTaken(SendResult::Ambiguous { detail }) if !resend_safe => end(
            SinkStatus::Unknown,
            None,
            SinkLogged::Unknown,
            format!("{detail}; not resent: the sink cannot dedupe it"),
        ),
        Delivery::NotTaken(SendResult::Retry { detail, .. } | SendResult::Ambiguous { detail }) => end(
            SinkStatus::Failed,
            None,
            SinkLogged::Failed,
            format!("{detail}; gave up after {attempt} attempts"),
        ),
        Delivery::NotTaken(
            SendResult::Rejected { detail }
            | SendResult::OptedOut { detail }
            | SendResult::Accepted { detail, .. },
        ) => end(SinkStatus::Failed, None, SinkLogged::Failed, detail),
    }
}

#[derive(Debug)]
struct Inner {
    sinks: Sinks,
    store: Mutex<Store>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

/// The sinks' dispatcher. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl Dispatcher {
    /// Opens the hub database at `database` (migrated like the store does) and builds the
    /// HTTP client (each HTTP sink bounds its own requests by its `request_timeout_s`).
    pub fn new(sinks: Sinks, database: &Path, metrics: Arc<Metrics>) -> Result<Self, SinkError> {
        // reqwest is built without a default crypto provider: choose ring (idempotent).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Store::open(database, StoreOptions::default())?;
        let timeout = sinks.all().iter().map(|s| s.timeout).max().unwrap_or(Duration::from_secs(10));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("doorstep-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SinkError::Client(e.to_string()))?;
        Ok(Self { inner: Arc::new(Inner { sinks, store: Mutex::new(store), client, metrics }) })
    }

    async fn db<R, F>(&self, f: F) -> Result<R, SinkError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut store = inner.store.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut store)
        })
        .await
        .map_err(|e| SinkError::Task(e.to_string()))?
        .map_err(SinkError::from)
    }

    /// Settles rows a previous run left in flight ([`Store::sink_recover`]): resent where
    /// the sink dedupes on the row's key, `unknown` elsewhere. Returns (requeued, unknown).
    pub async fn recover(&self, now_ms: i64) -> Result<(usize, usize), SinkError> {
        let sinks = self.inner.sinks.clone();
        self.db(move |store| {
            store.sink_recover(now_ms, |row| {
                let Some(sink) = sinks.by_name(&row.sink) else { return false };
                SinkEvent::from_row(row, None).is_some_and(|event| sink.sink.resend_safe(&event))
            })
        })
        .await
    }

    /// One pass of every sink at `now_ms`, waiting for all of it (tests drive time with
    /// this). Returns the rows delivered (sent, skipped or settled otherwise).
    pub async fn run_once(&self, now_ms: i64) -> Result<usize, SinkError> {
        let mut passes = JoinSet::new();
        for sink in self.inner.sinks.all() {
            let (this, sink) = (self.clone(), Arc::clone(sink));
            passes.spawn(async move { this.pass(&sink, now_ms, &CancellationToken::new()).await });
        }
        let mut done = 0;
        while let Some(joined) = passes.join_next().await {
            done += joined.map_err(|e| SinkError::Task(e.to_string()))??;
        }
        Ok(done)
    }

    /// Settles what a previous run left in flight, then runs one loop per sink until
    /// `cancel`. On cancellation each loop finishes the delivery in hand (bounded by the
    /// sink's timeout), claims no other row, and stops.
    pub fn spawn(self, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            match self.recover(crate::notify::now_ms()).await {
                Ok((requeued, unknown)) if requeued + unknown > 0 => {
                    tracing::warn!(requeued, unknown, "sink rows left in flight by a stopped hub settled");
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "settling sink rows left in flight failed"),
            }
            let mut loops = JoinSet::new();
            for sink in self.inner.sinks.all() {
                let (this, sink, cancel) = (self.clone(), Arc::clone(sink), cancel.clone());
                loops.spawn(async move {
                    loop {
                        if let Err(error) = this.pass(&sink, crate::notify::now_ms(), &cancel).await {
                            tracing::error!(sink = %sink.name, %error, "sink pass failed");
                        }
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            () = tokio::time::sleep(POLL_INTERVAL) => {}
                        }
                    }
                });
            }
            while loops.join_next().await.is_some() {}
            tracing::info!("sink dispatcher stopped");
        })
    }

    /// One sink's due rows at `now_ms`, one after another, until none is due: a
    /// shipment's next row becomes due once the one before it is settled.
    async fn pass(
        &self,
        sink: &Arc<Registered>,
        now_ms: i64,
        cancel: &CancellationToken,
    ) -> Result<usize, SinkError> {
        let mut done = 0;
        loop {
            let round = self.round(sink, now_ms, cancel).await?;
            if round == 0 {
                return Ok(done);
            }
            done += round;
        }
    }

    /// One batch of a sink's due rows (see [`Store::sink_due`]).
    async fn round(
        &self,
        sink: &Arc<Registered>,
        now_ms: i64,
        cancel: &CancellationToken,
    ) -> Result<usize, SinkError> {
        let name = sink.name.clone();
        let due = self.db(move |store| store.sink_due(&[name.as_str()], now_ms, BATCH)).await?;
        let mut done = 0;
        for row in due {
            // Open after repeated failures or for as long as a Retry-After asked: the rows
            // wait, unclaimed, for a later pass.
            if !sink.circuit().allows(now_ms) || cancel.is_cancelled() {
                break;
            }
            let id = row.id;
            let shipment_id = row.shipment_id;
            let claimed = self
                .db(move |store| {
                    if !store.sink_claim(id)? {
                        return Ok(None);
                    }
                    store.shipment(shipment_id)
                })
                .await?;
            let Some(shipment) = claimed else { continue };
            let attempt = row.attempts + 1;
            let ending = match SinkEvent::from_row(&row, Some(&shipment)) {
                None => ending(
                    Delivery::NotTaken(SendResult::Rejected {
                        detail: format!("unknown event {:?}", row.event),
                    }),
                    attempt,
                    id,
                    &sink.retry,
                    false,
                    now_ms,
                ),
                Some(event) => {
                    let delivery = sink.deliver(&self.inner.client, &event, now_ms).await;
                    let safe = sink.sink.resend_safe(&event);
                    ending(delivery, attempt, id, &sink.retry, safe, now_ms)
                }
            };
            self.record(sink, &row, attempt, &ending);
            let settled = ending.clone();
            self.db(move |store| {
                store.sink_finish(
                    id,
                    settled.status,
                    settled.next_attempt_ms,
                    now_ms,
                    settled.outcome,
                    settled.vendor_id.as_deref(),
                    &settled.detail,
                    settled.thread.as_deref(),
                )
            })
            .await?;
            done += 1;
        }
        Ok(done)
    }

    fn record(&self, sink: &Registered, row: &SinkRow, attempt: i64, ending: &Ending) {
        let outcome = ending.outcome.as_str();
        self.inner.metrics.sink_delivery(&sink.name, outcome);
        let detail = crate::mask::Masked(&ending.detail);
        match ending.outcome {
            SinkLogged::Sent | SinkLogged::Skipped => {
                tracing::info!(sink = %sink.name, row = row.id, tracking = %row.tracking_number, event = %row.event, attempt, outcome, vendor_id = ?ending.vendor_id, "sink event delivered");
            }
            _ => {
                tracing::warn!(sink = %sink.name, row = row.id, tracking = %row.tracking_number, event = %row.event, attempt, outcome, %detail, "sink event not delivered");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::config::RetryPolicy;

    const POLICY: RetryPolicy =
        RetryPolicy { max_attempts: 3, base: Duration::from_secs(30), max: Duration::from_secs(3600) };

    fn not_taken(result: SendResult) -> Delivery {
        Delivery::NotTaken(result)
    }

    #[test]
    fn event_keys_read_back() {
        for kind in
            registry::MILESTONES.map(EventKind::Milestone).into_iter().chain([EventKind::Alert("x_y".into())])
        {
            assert_eq!(EventKind::parse(&kind.key()), Some(kind));
        }
        assert_eq!(EventKind::parse("milestone:created"), None);
        assert_eq!(EventKind::parse("delivered"), None);
    }

    #[test]
    fn retries_wait_for_the_backoff_or_retry_after_and_ambiguity_is_repeated_only_where_deduped() {
        let retry = |after| not_taken(SendResult::Retry { detail: "429".into(), retry_after: after });
        let e = ending(retry(None), 1, 0, &POLICY, false, 1_000);
        assert_eq!((e.status, e.next_attempt_ms), (SinkStatus::Queued, Some(31_000)));
        let e = ending(retry(Some(Duration::from_secs(120))), 1, 0, &POLICY, false, 1_000);
        assert_eq!(e.next_attempt_ms, Some(121_000), "Retry-After is longer than the backoff");
        assert_eq!(ending(retry(None), 3, 0, &POLICY, true, 0).status, SinkStatus::Failed, "out of attempts");
        let ambiguous = || not_taken(SendResult::Ambiguous { detail: "timeout".into() });
        assert_eq!(ending(ambiguous(), 1, 0, &POLICY, true, 0).status, SinkStatus::Queued);
        assert_eq!(ending(ambiguous(), 1, 0, &POLICY, false, 0).status, SinkStatus::Unknown);
        assert_eq!(ending(ambiguous(), 3, 0, &POLICY, true, 0).status, SinkStatus::Failed);
        let refused = not_taken(SendResult::Rejected { detail: "422".into() });
        assert_eq!(ending(refused, 1, 0, &POLICY, true, 0).status, SinkStatus::Failed);
        let skipped = Delivery::Skipped { detail: "no ticket".into() };
        assert_eq!(ending(skipped, 1, 0, &POLICY, true, 0).status, SinkStatus::Skipped);
        let sent = Delivery::Accepted {
            vendor_id: Some("7".into()),
            thread: Some("7".into()),
            detail: "201".into(),
        };
        let e = ending(sent, 1, 0, &POLICY, false, 0);
        assert_eq!((e.status, e.thread.as_deref()), (SinkStatus::Sent, Some("7")));
    }
}
