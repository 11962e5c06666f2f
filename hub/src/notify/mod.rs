//! Customer notifications and operations alerts: the dispatcher over the transactional
//! outbox, the provider adapters, the tracking page and the provider callbacks.
//!
//! Ingest writes one `notification_outbox` row per (shipment, milestone, channel,
//! recipient) in the same transaction as the milestone change (invariant 4: the unique
//! key is the first guard against doubles). The [`Dispatcher`] takes due rows, decides
//! with the pure [`plan`] (consent, opt-out, a milestone since overtaken, quiet hours,
//! template and tracking link), claims each row (`queued` → `sending`, so no second pass
//! or hub can send it), sends through the channel's adapter under that provider's rate
//! limit, and writes the result and an outcome-log entry in one transaction.
//!
//! Sends go through the channel's providers in priority order ([`provider`], configured
//! by [`registry`]): the next provider takes a message only when the previous one
//! definitely did not (a refusal, 429, 5xx, connection refused, an open circuit); an
//! ambiguous send (a timeout once the request was out) is never repeated on another
//! provider, and is retried on the same one only when every provider of the channel
//! dedupes on a key the request carries (signed webhooks, OneSignal); otherwise the row is
//! `unknown`, completed by the provider's status callback if the message did go out. Rows
//! left `sending` by a stopped hub are treated the same way at start-up
//! ([`crate::store::Store::take_dispatch_lease`]). Each vendor's quirks are in its module and in
//! `docs/notifications.md`.
//!
//! What this module must never do: send a message twice on a channel without an
//! idempotency guard, send to a recipient who opted out or withdrew consent, put the
//! shipment's address in a message or on the tracking page, or run SQLite on an async
//! worker (every statement goes through [`db::NotifyDb::call`]).

pub mod actions;
pub mod config;
pub mod db;
pub mod exceptions;
pub mod lease;
pub mod page;
pub mod provider;
pub mod questions;
pub mod quiet;
pub mod ratelimit;
pub mod registry;
pub mod scheduled;
pub mod templates;
pub mod token;

// The provider registry: one module per provider, listed once.
registry::providers!(
    twilio,
    sns,
    sendgrid,
    mailgun,
    whatsapp,
    webhook,
    onesignal,
    slack,
    teams,
    google_chat,
    zapier
);

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{NotifyConfig, NotifyConfigError, NotifySettings};
pub use page::{NotifyState, callbacks_router, page_router};
pub use provider::{Channel, Provider, ProviderType};

use crate::metrics::Metrics;
use crate::model::{Milestone, Notice, Update};
use crate::store::{
    Acquired, ContactChannel, Finish, LeaseClaim, Named, NoticeLogged, OutboxRow, OutboxStatus, Settled,
    Shipment, StoreError, StoreOptions,
};
use provider::Registered;
use templates::{Vars, fill, render_sms, render_sms_keeping};

/// Most provider requests in flight at once, over all providers.
pub const MAX_IN_FLIGHT: usize = 32;
/// Largest provider response body read, bytes (a customer's webhook endpoint could
/// answer with anything).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How far back another parcel's messages make a person worth waiting for (see
/// `NotifySettings::group_hold`).
pub const GROUP_LOOKBACK_MS: i64 = 2 * 86_400_000;
/// Unsent operations alerts taken per pass.
pub const ALERT_BATCH: usize = 32;

/// Why the notification machinery failed (not a send failure: those are outcomes).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task panicked or was cancelled.
    #[error("notification task failed: {0}")]
    Task(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(String),
}

/// What a provider said about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    /// Accepted for delivery.
    Accepted {
        /// The provider's message id.
        provider_id: Option<String>,
        /// The provider's status, in words.
        detail: String,
    },
    /// Certainly not processed (nothing sent, 429, 5xx): safe to try again.
    Retry {
        /// What happened.
        detail: String,
        /// The provider's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// May or may not have been processed (a timeout once the request was out).
    Ambiguous {
        /// What happened.
        detail: String,
    },
    /// Refused for good (bad number, bad request, credentials).
    Rejected {
        /// What happened.
        detail: String,
    },
    /// The provider says the recipient opted out (Twilio 21610).
    OptedOut {
        /// What happened.
        detail: String,
    },
}

/// A provider's answer, read and bounded.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body, at most [`MAX_RESPONSE_BYTES`].
    pub body: Vec<u8>,
    /// `Retry-After`, in seconds form.
    pub retry_after: Option<Duration>,
}

/// Reads a response (at most [`MAX_RESPONSE_BYTES`]), or classifies a transport error.
pub async fn read_response(result: Result<reqwest::Response, reqwest::Error>) -> Result<Reply, SendResult> {
    let mut response = match result {
        Ok(r) => r,
        // Connecting failed (including a connect timeout): the request never left.
        Err(e) if e.is_connect() => {
            return Err(SendResult::Retry { detail: format!("connect: {e}"), retry_after: None });
        }
        Err(e) if e.is_builder() => return Err(SendResult::Rejected { detail: format!("bad request: {e}") }),
        Err(e) => return Err(SendResult::Ambiguous { detail: format!("no answer after sending: {e}") }),
    };
    let status = response.status();
    let headers = response.headers().clone();
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after(v, now_ms()));
    let mut body = Vec::new();
    // The status is what counts; a body cut short still leaves it known.
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    Ok(Reply { status, headers, body, retry_after })
}

/// A `Retry-After` value as a wait from `now_ms`: seconds, or an HTTP date (RFC 9110: an
/// IMF-fixdate, which RFC 2822 reads). A date in the past is no wait; anything else is
/// no value at all (the backoff applies).
pub fn retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(value).ok()?;
    let wait_ms = at.as_millisecond().saturating_sub(now_ms).max(0);
    Some(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)))
}

/// The result of a non-2xx status.
pub fn classify_status(status: StatusCode, retry_after: Option<Duration>, detail: String) -> SendResult {
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        SendResult::Retry { detail, retry_after }
    } else {
        SendResult::Rejected { detail }
    }
}

/// A non-2xx answer as a result, naming the vendor and quoting the start of its body.
pub fn refused(vendor: &str, reply: &Reply) -> SendResult {
    let text = String::from_utf8_lossy(&reply.body).chars().take(300).collect::<String>();
    classify_status(
        reply.status,
        reply.retry_after,
        format!("{vendor} HTTP {}: {text}", reply.status.as_u16()),
    )
}

/// One message, rendered and ready for its adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The outbox row.
    pub outbox_id: i64,
    /// The shipment.
    pub shipment_id: i64,
    /// The channel.
    pub channel: ContactChannel,
    /// Phone number, address or URL.
    pub recipient: String,
    /// The milestone.
    pub milestone: Milestone,
    /// The locale the body is written in: the recipient's, or the template fallback's
    /// when there is no template in their language (lowercase, `-` separated).
    pub locale: String,
    /// The parcel's tracking number.
    pub tracking_number: String,
    /// The reconciler's extra text.
    pub detail: Option<String>,
    /// Email subject.
    pub subject: String,
    /// The rendered text.
    pub body: String,
    /// The signed tracking link.
    pub link: String,
    /// Set when this is an operations alert (to staff), not a customer message.
    pub alert: Option<AlertRef>,
    /// Other outbox rows this message tells too (other parcels of the same person and
    /// moment); they end as this one does.
    pub merged: Vec<i64>,
}

/// The operations alert a staff message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRef {
    /// The alert's row id.
    pub id: i64,
    /// The reconciler's code (`delivered_without_scan`, ...).
    pub code: String,
    /// The escalation step it is posted at, from 1.
    pub step: u32,
}

/// What to do with a due row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Send it.
    Send(Box<Outgoing>),
    /// Do not send it, ever.
    Skip {
        /// A snake_case reason (`opted_out`, `no_consent`, `quiet_hours`, ...).
        reason: &'static str,
        /// Words for the outcome log.
        detail: String,
    },
    /// Not now: try again at `until_ms` (quiet hours).
    Defer {
        /// When.
        until_ms: i64,
    },
}

fn skip(reason: &'static str, detail: impl Into<String>) -> Plan {
    Plan::Skip { reason, detail: detail.into() }
}

/// Decides what to do with a due row (pure: no clock, no I/O).
pub fn plan(
    settings: &NotifySettings,
    row: &OutboxRow,
    shipment: Option<&Shipment>,
    opted_out: bool,
    now_ms: i64,
) -> Plan {
    let Named::Known(channel) = row.channel else {
        return skip("unknown_channel", format!("channel {:?}", row.channel.name()));
    };
    if !settings.configured(channel) {
        return skip("channel_not_configured", format!("no [notify] provider for {}", channel.as_str()));
    }
    let Some(shipment) = shipment else {
        return skip("shipment_missing", format!("shipment {}", row.shipment_id));
    };
    let Named::Known(notice) = &row.milestone else {
        return skip("unknown_milestone", format!("milestone {:?}", row.milestone.name()));
    };
    // An update (a delay, "still on its way") is news of the shipment's current milestone:
    // providers that know only milestones are told that one.
    let (milestone, update) = match &notice {
        Notice::Milestone(m) => (*m, None),
        Notice::Update { update, .. } => (shipment.milestone, Some(*update)),
    };
    match shipment.contacts.get(&channel) {
        Some(c) if c.consent && c.recipient == row.recipient => {}
        _ => return skip("no_consent", "the contact was removed or its consent withdrawn"),
    }
    if opted_out {
        return skip("opted_out", "the recipient opted out of this channel");
    }
    // An update is false once the parcel is delivered, or when an exception is what the
    // customer hears instead.
    if update.is_some() && matches!(shipment.milestone, Milestone::Exception | Milestone::Delivered) {
        return skip(
            "superseded",
            format!("shipment is already {}", crate::store::milestone_name(shipment.milestone)),
        );
    }
    // A message overtaken before it went out would now be false ("nearby" after the
    // parcel was delivered); the newer milestone has its own message.
    if shipment.milestone > milestone && milestone != Milestone::Delivered {
        return skip(
            "superseded",
            format!("shipment is already {}", crate::store::milestone_name(shipment.milestone)),
        );
    }
    if let Some(quiet) = &settings.quiet_hours
        && quiet.covers(channel)
        && let Some(until_ms) = quiet.quiet_until(now_ms, &quiet::zone(&shipment.time_zone))
    {
        if *notice == Notice::Milestone(Milestone::Nearby) {
            return skip("quiet_hours", "nearby during the recipient's quiet hours; stale by morning");
        }
        return Plan::Defer { until_ms };
    }
    let found = match update {
        None => settings.templates.lookup_with_locale(milestone, channel, &shipment.locale),
        Some(u) => settings.templates.lookup_update_with_locale(u, channel, &shipment.locale),
    };
    let Some((locale, template)) = found else {
        return skip("no_template", format!("no template for {}", row.milestone));
    };
    let link = settings.tracking_link(shipment.id, now_ms);
    // An exception is told in words: what happened and what happens next (never the
    // reason code or the driver's note); a detail from an older hub is its own text.
    let exception = (*notice == Notice::Milestone(Milestone::Exception))
        .then(|| row.detail.as_deref().and_then(crate::reconcile::ExceptionDetail::from_json))
        .flatten()
        .map(|d| exceptions::words(&d, &locale, &shipment.time_zone, &settings.exception_steps));
    // A delay says its new date (kept whole on SMS), and only a later day than the
    // customer had: "delayed" naming the day they already have would not be honest.
    let delay = match update {
        Some(Update::Delayed) => {
            let words = row
                .detail
                .as_deref()
                .and_then(crate::reconcile::DelayDetail::from_json)
                .and_then(|d| exceptions::delay_words(&d, &locale, &shipment.time_zone));
            let Some(words) = words else {
                return skip("no_later_day", "the new date is not a later day in the customer's calendar");
            };
            Some(words)
        }
        Some(Update::StillOnItsWay) | None => None,
    };
    let (detail, kept) = match (&exception, delay) {
        (Some(w), _) => (Some(format!("{} {}", w.what, w.next)), Some(w.next.clone())),
        (None, Some(words)) => (Some(words.clone()), Some(words)),
        (None, None) if update.is_some() => (None, None),
        (None, None) => (row.detail.clone(), None),
    };
    let vars =
        Vars { tracking_number: shipment.tracking_number.as_str(), detail: detail.as_deref(), link: &link };
    let body = render_body(settings, channel, &template.body, &vars, kept.as_deref());
    let subject = fill(&template.subject, &vars);
    Plan::Send(Box::new(Outgoing {
        outbox_id: row.id,
        shipment_id: shipment.id,
        channel,
        recipient: row.recipient.clone(),
        milestone,
        locale,
        tracking_number: shipment.tracking_number.to_string(),
        detail,
        subject,
        body,
        link,
        alert: None,
        merged: Vec::new(),
    }))
}

/// A message's text on its channel: SMS fitted to the segment limit (keeping `kept`, an
/// exception's next step, whole), other channels filled as written.
fn render_body(
    settings: &NotifySettings,
    channel: ContactChannel,
    template: &str,
    vars: &Vars<'_>,
    kept: Option<&str>,
) -> String {
    match (channel, kept) {
        (ContactChannel::Sms, Some(kept)) => {
            render_sms_keeping(template, vars, kept, settings.sms_max_segments)
        }
        (ContactChannel::Sms, None) => render_sms(template, vars, settings.sms_max_segments),
        _ => fill(template, vars),
    }
}

/// Whether a channel's messages go to a person, who should get one message for several
/// parcels of one moment (a signed webhook goes to a machine: one event per parcel).
pub fn groups(channel: ContactChannel) -> bool {
    channel != ContactChannel::Webhook
}

/// One message for several parcels of the same person, channel and milestone: the
/// template filled with every tracking number and every parcel's link. `first` leads
/// (its id, locale, detail); `others` were planned the same way.
pub fn combine(settings: &NotifySettings, first: Outgoing, others: Vec<Outgoing>) -> Outgoing {
    if others.is_empty() {
        return first;
    }
    let Some((_, template)) =
        settings.templates.lookup_with_locale(first.milestone, first.channel, &first.locale)
    else {
        return first;
    };
    let numbers: Vec<&str> = std::iter::once(first.tracking_number.as_str())
        .chain(others.iter().map(|o| o.tracking_number.as_str()))
        .collect();
    let links: Vec<&str> =
        std::iter::once(first.link.as_str()).chain(others.iter().map(|o| o.link.as_str())).collect();
    let (tracking_number, link) = (numbers.join(", "), links.join(" "));
    let vars = Vars { tracking_number: &tracking_number, detail: first.detail.as_deref(), link: &link };
    let body = render_body(settings, first.channel, &template.body, &vars, None);
    Outgoing {
        subject: fill(&template.subject, &vars),
        body,
        tracking_number,
        merged: others.iter().map(|o| o.outbox_id).collect(),
        ..first
    }
}

/// The current time, ms since the Unix epoch.
pub use doorstep_runtime::clock::now_ms;

/// What one dispatcher pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Rows handed to a provider.
    pub sent: usize,
    /// Rows skipped for good.
    pub skipped: usize,
    /// Rows deferred (quiet hours).
    pub deferred: usize,
    /// Operations alerts posted.
    pub alerts: usize,
}

#[derive(Debug)]
struct Inner {
    settings: Arc<NotifySettings>,
    db: Arc<db::NotifyDb>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    wake: Arc<Notify>,
    /// Alert id → earliest next post (ms), after a failed post.
    alert_retry: Mutex<HashMap<i64, (i64, i64)>>,
}

/// The notification dispatcher. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl Dispatcher {
    /// Opens the database at `database` (WAL, migrated) and
    /// builds the HTTP client. Then [`Dispatcher::spawn`] (which settles what a previous
    /// run left in flight when it takes the dispatch lease), or passes of
    /// [`Dispatcher::run_once`].
    pub fn new(
        settings: NotifySettings,
        database: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Self, NotifyError> {
        // reqwest is built without a default crypto provider: choose ring (idempotent).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("doorstep-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Client(e.to_string()))?;
        let db = Arc::new(db::NotifyDb::open(database, StoreOptions::default())?);
        Ok(Self {
            inner: Arc::new(Inner {
                settings: Arc::new(settings),
                db,
                client,
                metrics,
                permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                wake: Arc::new(Notify::new()),
                alert_retry: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The state the tracking page and provider callbacks need (see [`router`]).
    pub fn state(&self) -> NotifyState {
        NotifyState::new(
            Arc::clone(&self.inner.settings),
            Arc::clone(&self.inner.db),
            Arc::clone(&self.inner.metrics),
            self.inner.client.clone(),
        )
    }

    /// Wakes the dispatcher now (call after a commit that enqueued messages or alerts).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// A handle ingest can keep to wake the dispatcher.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.inner.wake)
    }

    /// One pass at `now_ms`: plans and sends every due row and posts unsent alerts, and
    /// waits for all of it (tests drive time with this).
    pub async fn run_once(&self, now_ms: i64) -> Result<PassReport, NotifyError> {
        let mut tasks = JoinSet::new();
        let mut report = self.dispatch_due(now_ms, &mut tasks).await?;
        while tasks.join_next().await.is_some() {}
        report.alerts = self.post_alerts(now_ms).await?;
        Ok(report)
    }

    /// Runs until `cancel` as `holder` (the hub's MQTT client id): a pass every poll
    /// interval or on [`Dispatcher::wake`] while this process holds the dispatch lease
    /// (see [`lease`]). On cancellation, waits for requests in flight (bounded by the
    /// request timeout and the rate limits), then gives the lease up.
    pub fn spawn(self, holder: impl Into<String>, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        self.spawn_with_lease(holder, lease::LEASE_TTL, cancel)
    }

    /// [`Dispatcher::spawn`] with a lease of `ttl`.
    pub fn spawn_with_lease(
        self,
        holder: impl Into<String>,
        ttl: Duration,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        // Until when this process holds the lease, as its renewal task last wrote it.
        let held_until = Arc::new(AtomicI64::new(i64::MIN));
        let stop_renewing = CancellationToken::new();
        let renewal = tokio::spawn(self.clone().renew_lease(
            holder.into(),
            ttl_ms,
            Arc::clone(&held_until),
            stop_renewing.clone(),
        ));
        tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            let mut next_sweep = i64::MIN;
            let sweep_every = i64::try_from(scheduled::SWEEP_INTERVAL.as_millis()).unwrap_or(i64::MAX);
            loop {
                let now = now_ms();
                if held_until.load(Ordering::SeqCst) > now {
                    if self.inner.settings.still_on_its_way.is_some() && now >= next_sweep {
                        next_sweep = now.saturating_add(sweep_every);
                        if let Err(error) = self.sweep_still_on_its_way(now).await {
                            tracing::error!(%error, "still-on-its-way sweep failed");
                        }
                    }
                    if let Err(error) = self.dispatch_due(now, &mut tasks).await {
                        tracing::error!(%error, "notification pass failed");
                    }
                    if let Err(error) = self.post_alerts(now).await {
                        tracing::error!(%error, "operations alert pass failed");
                    }
                }
                while tasks.try_join_next().is_some() {}
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(self.inner.settings.poll_interval) => {}
                    () = self.inner.wake.notified() => {}
                }
            }
            // The lease stays renewed until the last request has its answer.
            while tasks.join_next().await.is_some() {}
            stop_renewing.cancel();
            let _ = renewal.await;
            tracing::info!("notification dispatcher stopped");
        })
    }

    /// Enqueues the "still on its way" updates due at `now_ms` ([`scheduled::sweep`]);
    /// returns how many rows it enqueued. The dispatcher runs it every
    /// [`scheduled::SWEEP_INTERVAL`] while it holds the dispatch lease, when
    /// `[notify.still_on_its_way]` is configured (otherwise this does nothing).
    pub async fn sweep_still_on_its_way(&self, now_ms: i64) -> Result<usize, NotifyError> {
        let settings = Arc::clone(&self.inner.settings);
        let Some(schedule) = settings.still_on_its_way else { return Ok(0) };
        let enqueued = self
            .inner
            .db
            .call(move |store| Ok(scheduled::sweep(store, &schedule, &settings.channel_map, now_ms)?))
            .await?;
        for (channel, kind) in &enqueued {
            self.inner.metrics.notification_enqueued(channel, kind);
        }
        if !enqueued.is_empty() {
            tracing::info!(rows = enqueued.len(), "still-on-its-way updates enqueued");
        }
        Ok(enqueued.len())
    }

    /// Takes and renews the dispatch lease every third of `ttl_ms` until `stop`, apart
    /// from the sends (a slow provider cannot let it lapse); a take-over settles what
    /// the previous holder left in flight in the same transaction. Gives the lease up on
    /// the way out.
    async fn renew_lease(
        self,
        holder: String,
        ttl_ms: i64,
        held_until: Arc<AtomicI64>,
        stop: CancellationToken,
    ) {
        let holder: Arc<str> = holder.into();
        let token: Arc<str> = lease::process_token().into();
        // The channels whose rows left `sending` may be sent again (see `Store::take_dispatch_lease`).
        let resend_safe: Arc<Vec<&'static str>> = Arc::new(
            ContactChannel::ALL
                .into_iter()
                .filter(|c| self.inner.settings.providers.resend_safe(Channel::Customer(*c)))
                .map(ContactChannel::as_str)
                .collect(),
        );
        let mut first = true;
        loop {
            let now = now_ms();
            let (who, process) = (Arc::clone(&holder), Arc::clone(&token));
            let resend_safe = Arc::clone(&resend_safe);
            let result = self
                .inner
                .db
                .call(move |store| {
                    let claim = LeaseClaim {
                        holder: &who,
                        token: &process,
                        first,
                        ttl_ms,
                        resend_safe: &resend_safe,
                    };
                    Ok(store.take_dispatch_lease(&claim, now)?)
                })
                .await;
            match result {
                Ok((Acquired::Renewed, _)) => held_until.store(now.saturating_add(ttl_ms), Ordering::SeqCst),
                Ok((Acquired::TookOver(previous), Settled { requeued, unknown })) => {
                    first = false;
                    held_until.store(now.saturating_add(ttl_ms), Ordering::SeqCst);
                    tracing::info!(holder = %holder, previous = previous.as_deref().unwrap_or("none"), requeued, unknown, "this hub now sends notifications and alerts; what the previous holder left in flight is settled");
                    self.wake();
                }
                Ok((Acquired::HeldBy(other), _)) => {
                    if held_until.swap(i64::MIN, Ordering::SeqCst) > now {
                        tracing::warn!(holder = %holder, other, "the dispatch lease passed to another hub; this hub stops sending");
                    }
                }
                // The lease this hub may hold runs out by itself.
                Err(error) => tracing::error!(%error, "cannot take or renew the dispatch lease"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(u64::try_from(ttl_ms / 3).unwrap_or(1).max(1))) => {}
            }
        }
        held_until.store(i64::MIN, Ordering::SeqCst);
        if !first {
            let process = Arc::clone(&token);
            if let Err(error) =
                self.inner.db.call(move |store| Ok(store.release_dispatch_lease(&process)?)).await
            {
                tracing::warn!(%error, "cannot give the dispatch lease up; another hub waits for it to expire");
            }
        }
    }

    /// Plans due rows, settles skips and deferrals, claims and spawns the sends.
    async fn dispatch_due(&self, now_ms: i64, tasks: &mut JoinSet<()>) -> Result<PassReport, NotifyError> {
        let room = self.inner.permits.available_permits().min(self.inner.settings.batch);
        if room == 0 {
            return Ok(PassReport::default());
        }
        let settings = Arc::clone(&self.inner.settings);
        let (sends, mut report) = self
            .inner
            .db
            .call(move |store| {
                let mut report = PassReport::default();
                let mut sends = Vec::new();
                for mut row in store.outbox_due(now_ms, room)? {
                    let shipment = store.shipment(row.shipment_id)?;
                    // "Nearby" says when, as of its sending: the stops before the
                    // customer's and the arrival window of the van's current route.
                    if row.milestone == Named::Known(Notice::Milestone(Milestone::Nearby))
                        && row.detail.is_none()
                        && let Some(shipment) = &shipment
                        && let Some(window) = page::arrival_window(shipment, store, now_ms)?
                    {
                        row.detail = Some(page::nearby_words(&window, &shipment.locale, now_ms));
                    }
                    let opted_out = store.is_opted_out(&row.channel.name(), &row.recipient)?;
                    match plan(&settings, &row, shipment.as_ref(), opted_out, now_ms) {
                        Plan::Skip { reason, detail } => {
                            if store.skip_notification(row.id, now_ms, reason, &detail)? {
                                tracing::info!(outbox = row.id, channel = %row.channel, milestone = %row.milestone, reason, "notification skipped");
                                report.skipped += 1;
                            }
                        }
                        Plan::Defer { until_ms } => {
                            let detail = format!("quiet hours until {until_ms}");
                            store.defer_notification(row.id, until_ms, now_ms, &detail)?;
                            tracing::info!(outbox = row.id, channel = %row.channel, until_ms, "notification deferred");
                            report.deferred += 1;
                        }
                        Plan::Send(mut msg) => {
                            // One message for several parcels re-renders a milestone's
                            // template; an update goes alone.
                            let grouping = groups(msg.channel)
                                && !settings.group_window.is_zero()
                                && matches!(row.milestone, Named::Known(Notice::Milestone(_)));
                            let hold_ms = i64::try_from(settings.group_hold.as_millis()).unwrap_or(0);
                            // A person with another parcel in flight (messaged on this
                            // channel in the last two days): give that parcel's message a
                            // few seconds to join this one (two scans at one door). Someone
                            // with one parcel gets theirs at once.
                            if grouping
                                && row.attempts == 0
                                && row.created_ms.saturating_add(hold_ms) > now_ms
                                && store.has_other_parcel(&row, row.created_ms.saturating_sub(GROUP_LOOKBACK_MS))?
                            {
                                store.hold_notification(row.id, row.created_ms.saturating_add(hold_ms))?;
                                continue;
                            }
                            let mut others = Vec::new();
                            if grouping {
                                let window_ms = i64::try_from(settings.group_window.as_millis()).unwrap_or(0);
                                for sibling in store.outbox_siblings(&row, window_ms)? {
                                    let shipment = store.shipment(sibling.shipment_id)?;
                                    if let Plan::Send(m) = plan(&settings, &sibling, shipment.as_ref(), opted_out, now_ms) {
                                        others.push((sibling.id, *m));
                                    }
                                }
                            }
                            if store.claim_notification(row.id)? {
                                let mut joined = Vec::new();
                                for (id, m) in others {
                                    if store.claim_notification(id)? {
                                        joined.push(m);
                                    }
                                }
                                if !joined.is_empty() {
                                    tracing::info!(outbox = row.id, with = joined.len(), channel = %row.channel, milestone = %row.milestone, "one message for several parcels of one person");
                                    msg = Box::new(combine(&settings, *msg, joined));
                                }
                                // For the scan-to-message histogram only: a failed
                                // look-up leaves the message unmeasured, not unsent.
                                let scanned_ms = if msg.milestone == Milestone::Delivered {
                                    store.delivery_scan_ms(row.shipment_id).ok().flatten()
                                } else {
                                    None
                                };
                                sends.push((msg, row.attempts + 1, scanned_ms));
                            }
                        }
                    }
                }
                Ok((sends, report))
            })
            .await?;
        report.sent = sends.len();
        for (msg, attempt, scanned_ms) in sends {
            let Ok(permit) = Arc::clone(&self.inner.permits).acquire_owned().await else { break };
            let inner = Arc::clone(&self.inner);
            tasks.spawn(async move {
                let _permit = permit;
                let channel = msg.channel;
                let outbox_id = msg.outbox_id;
                if let Err(error) = deliver(&inner, *msg, attempt, now_ms, scanned_ms).await {
                    tracing::error!(outbox = outbox_id, channel = channel.as_str(), error = %crate::mask::Masked(&error.to_string()), "recording a send failed");
                }
            });
        }
        Ok(report)
    }

    /// Posts operations alerts that are due at their next step (see
    /// [`config::Step`]); returns how many were posted.
    async fn post_alerts(&self, now_ms: i64) -> Result<usize, NotifyError> {
        let steps = &self.inner.settings.escalation;
        if steps.is_empty() {
            return Ok(0);
        }
        let n = u32::try_from(steps.len()).unwrap_or(u32::MAX);
        let min_wait_ms = steps[..steps.len() - 1]
            .iter()
            .filter_map(|s| s.ack_timeout)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .min();
        let due = self
            .inner
            .db
            .call(move |store| Ok(store.due_alerts(n, min_wait_ms, now_ms, ALERT_BATCH)?))
            .await?;
        let mut posted = 0;
        for due in due {
            let alert = &due.alert;
            let from = usize::try_from(due.level).unwrap_or(usize::MAX);
            // Escalating: only once the step it was posted at has waited long enough.
            if from > 0 {
                let waited = steps.get(from - 1).and_then(|s| s.ack_timeout).is_some_and(|wait| {
                    due.posted_ms
                        .unwrap_or(i64::MAX)
                        .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX))
                        <= now_ms
                });
                if !waited {
                    continue;
                }
            }
            {
                let retry = self.inner.alert_retry.lock().unwrap_or_else(|e| e.into_inner());
                if retry.get(&alert.id).is_some_and(|(at, _)| *at > now_ms) {
                    continue;
                }
            }
            let mut taken = None;
            for (i, step) in steps.iter().enumerate().skip(from) {
                let step_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
                let msg = alert_message(alert, step.to.as_deref(), step_no, &self.inner.settings);
                let p = &step.provider;
                if !p.circuit().allows(now_ms) {
                    tracing::warn!(alert = alert.id, provider = %p.name, "alert step skipped: the provider is paused");
                    continue;
                }
                let result = p.send(&self.inner.client, &msg, now_ms).await;
                self.inner.metrics.provider_attempt(&p.name, outcome_label(&result));
                match result {
                    SendResult::Accepted { .. } | SendResult::OptedOut { .. } => {
                        taken = Some((step_no, p.name.clone(), result));
                        break;
                    }
                    // It may have gone out: a provider that cannot dedupe is not asked
                    // again, and the step counts as posted.
                    SendResult::Ambiguous { .. } if !p.provider.resend_safe() => {
                        taken = Some((step_no, p.name.clone(), result));
                        break;
                    }
                    other => {
                        tracing::warn!(alert = alert.id, provider = %p.name, result = ?other, "operations alert not taken at this step; trying the next");
                    }
                }
            }
            match taken {
                Some((level, provider, result)) => {
                    let (id, from_level) = (alert.id, due.level);
                    let marked = self
                        .inner
                        .db
                        .call(move |store| Ok(store.mark_alert_posted(id, from_level, level, now_ms)?))
                        .await?;
                    self.inner.alert_retry.lock().unwrap_or_else(|e| e.into_inner()).remove(&alert.id);
                    self.inner.metrics.notification("staff", NoticeLogged::Sent);
                    if from_level > 0 {
                        tracing::warn!(alert = alert.id, code = %alert.code, provider, step = level, "operations alert not acknowledged in time; escalated");
                    } else {
                        tracing::info!(alert = alert.id, code = %alert.code, provider, step = level, result = ?result, "operations alert posted");
                    }
                    posted += usize::from(marked);
                }
                None => {
                    let mut retry = self.inner.alert_retry.lock().unwrap_or_else(|e| e.into_inner());
                    let attempts = retry.get(&alert.id).map_or(1, |(_, n)| n + 1);
                    let wait = self.inner.settings.retry.backoff(attempts, alert.id);
                    let at = now_ms.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                    retry.insert(alert.id, (at, attempts));
                    self.inner.metrics.notification("staff", NoticeLogged::AttemptFailed);
                    tracing::warn!(alert = alert.id, code = %alert.code, next_at = at, "no step took the operations alert; will retry");
                }
            }
        }
        Ok(posted)
    }
}

/// The message an operations alert becomes; `to` is the address or number for a
/// provider that needs one (an on-call phone, an operations mailbox).
pub fn alert_message(
    alert: &crate::store::Alert,
    to: Option<&str>,
    step: u32,
    settings: &NotifySettings,
) -> Outgoing {
    let tn = alert.tracking_number.clone().unwrap_or_default();
    let subject = match &alert.tracking_number {
        Some(tn) => format!("Doorstep alert: {} ({tn})", alert.code),
        None => format!("Doorstep alert: {}", alert.code),
    };
    Outgoing {
        outbox_id: 0,
        shipment_id: 0,
        channel: ContactChannel::Webhook,
        recipient: to.unwrap_or_default().to_owned(),
        milestone: Milestone::Exception,
        locale: settings.templates.fallback_locale().to_owned(),
        tracking_number: tn,
        detail: Some(alert.detail.clone()),
        subject,
        body: alert.detail.clone(),
        link: String::new(),
        alert: Some(AlertRef { id: alert.id, code: alert.code.clone(), step }),
        merged: Vec::new(),
    }
}

/// What [`send_with_failover`] did.
#[derive(Debug, Default)]
struct Sent {
    /// Providers that definitely did not take the message, in order, and what they said.
    passed: Vec<(String, SendResult)>,
    /// The provider that took it, or whose answer ends the attempt (an ambiguous send
    /// or an opt-out); `None` when every provider passed.
    last: Option<(String, SendResult)>,
}

impl Sent {
    /// The result for the row: the last provider's, or, when all passed, a retry if any
    /// of them may take it later (the soonest `Retry-After`), else the refusals.
    fn result(&self) -> SendResult {
        if let Some((_, result)) = &self.last {
            return result.clone();
        }
        let detail = match self.passed.as_slice() {
            [] => return SendResult::Rejected { detail: "no provider configured for this channel".into() },
            [(_, only)] => detail_of(only).to_owned(),
            all => all.iter().map(|(p, r)| format!("{p}: {}", detail_of(r))).collect::<Vec<_>>().join("; "),
        };
        let retries: Vec<Option<Duration>> = self
            .passed
            .iter()
            .filter_map(|(_, r)| match r {
                SendResult::Retry { retry_after, .. } => Some(*retry_after),
                _ => None,
            })
            .collect();
        if retries.is_empty() {
            return SendResult::Rejected { detail };
        }
        let retry_after = retries.iter().map(|r| r.unwrap_or_default()).min().filter(|d| !d.is_zero());
        SendResult::Retry { detail, retry_after }
    }

    /// The provider the row's outcome names: the last one tried.
    fn provider(&self) -> Option<&str> {
        self.last.as_ref().or(self.passed.last()).map(|(p, _)| p.as_str())
    }
}

fn detail_of(result: &SendResult) -> &str {
    match result {
        SendResult::Accepted { detail, .. }
        | SendResult::Retry { detail, .. }
        | SendResult::Ambiguous { detail }
        | SendResult::Rejected { detail }
        | SendResult::OptedOut { detail } => detail,
    }
}

/// Sends through the channel's providers in priority order. The next one gets the
/// message only when the previous one definitely did not take it: it refused it, failed
/// before accepting it (connection refused, 429, 5xx), or its circuit is open. An
/// ambiguous send (a timeout once the request was out) ends the attempt: the message may
/// have gone out, and another provider would send it a second time.
async fn send_with_failover(inner: &Inner, channel: Channel, msg: &Outgoing, now_ms: i64) -> Sent {
    let mut sent = Sent::default();
    let providers: Vec<Arc<Registered>> = inner.settings.providers.for_channel(channel).cloned().collect();
    for p in providers {
        let circuit = p.circuit();
        if !circuit.allows(now_ms) {
            let retry_after = provider::wait_for(&circuit, now_ms);
            let detail = format!("{} paused (circuit open after failures or its Retry-After)", p.name);
            sent.passed.push((p.name.clone(), SendResult::Retry { detail, retry_after }));
            continue;
        }
        let result = p.send(&inner.client, msg, now_ms).await;
        inner.metrics.provider_attempt(&p.name, outcome_label(&result));
        match result {
            SendResult::Retry { .. } | SendResult::Rejected { .. } => {
                sent.passed.push((p.name.clone(), result))
            }
            other => {
                sent.last = Some((p.name.clone(), other));
                break;
            }
        }
    }
    sent
}

pub(crate) fn outcome_label(result: &SendResult) -> &'static str {
    match result {
        SendResult::Accepted { .. } => "accepted",
        SendResult::Retry { .. } => "retry",
        SendResult::Ambiguous { .. } => "ambiguous",
        SendResult::Rejected { .. } => "rejected",
        SendResult::OptedOut { .. } => "opted_out",
    }
}

/// Sends one claimed message and records the result. `scanned_ms` is the GNSS time of
/// the delivery scan a "delivered" message tells of, if a van made one.
async fn deliver(
    inner: &Inner,
    msg: Outgoing,
    attempt: i64,
    now_ms: i64,
    scanned_ms: Option<i64>,
) -> Result<(), NotifyError> {
    let settings = &inner.settings;
    let route = Channel::Customer(msg.channel);
    let sent = send_with_failover(inner, route, &msg, now_ms).await;
    let result = sent.result();
    let provider = sent.provider().map(str::to_owned);
    let resend_safe = settings.providers.resend_safe(route);
    // Every provider that passed the message on, but the last one tried, gets its own
    // entry; the row's final entry below names the last.
    let handed_on: Vec<(String, String)> = match sent.last {
        Some(_) => sent.passed.iter().map(|(p, r)| (p.clone(), detail_of(r).to_owned())).collect(),
        None => sent
            .passed
            .iter()
            .rev()
            .skip(1)
            .rev()
            .map(|(p, r)| (p.clone(), detail_of(r).to_owned()))
            .collect(),
    };
    let channel = msg.channel.as_str();
    let retry_at = |retry_after: Option<Duration>| {
        let wait = settings.retry.backoff(attempt, msg.outbox_id).max(retry_after.unwrap_or_default());
        now_ms.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX))
    };
    let can_retry = attempt < i64::from(settings.retry.max_attempts);
    // (status, next attempt, outcome, provider id, detail)
    let (status, next, outcome, provider_id, detail, opt_out) = match result {
        SendResult::Accepted { provider_id, detail } => {
            (OutboxStatus::Sent, None, NoticeLogged::Sent, provider_id, detail, false)
        }
        SendResult::Rejected { detail } => {
            (OutboxStatus::Failed, None, NoticeLogged::Failed, None, detail, false)
        }
        SendResult::OptedOut { detail } => {
            (OutboxStatus::Skipped, None, NoticeLogged::OptedOut, None, detail, true)
        }
        SendResult::Retry { detail, retry_after } if can_retry => {
            let at = retry_at(retry_after);
            (
                OutboxStatus::Queued,
                Some(at),
                NoticeLogged::AttemptFailed,
                None,
                format!("{detail}; attempt {attempt}, next at {at}"),
                false,
            )
        }
        SendResult::Ambiguous { detail } if resend_safe && can_retry => {
            let at = retry_at(None);
            let detail =
                format!("{detail}; attempt {attempt}, resending at {at} under the same idempotency key");
            (OutboxStatus::Queued, Some(at), NoticeLogged::AttemptFailed, None, detail, false)
        }
        SendResult::Ambiguous { detail } if !resend_safe => (
            OutboxStatus::Unknown,
            None,
            NoticeLogged::Unknown,
            None,
            format!("{detail}; not resent: {channel} has no idempotency guard"),
            false,
        ),
        SendResult::Retry { detail, .. } | SendResult::Ambiguous { detail } => (
            OutboxStatus::Failed,
            None,
            NoticeLogged::Failed,
            None,
            format!("{detail}; gave up after {attempt} attempts"),
            false,
        ),
    };
    match outcome {
        NoticeLogged::Sent => {
            if let Some(scanned_ms) = scanned_ms {
                // The provider's acceptance is now, on the wall clock (`now_ms` is the
                // pass's start, before the rate limit's wait and the request).
                inner.metrics.scan_to_message(channel, self::now_ms().saturating_sub(scanned_ms));
            }
            tracing::info!(outbox = msg.outbox_id, channel, milestone = ?msg.milestone, attempt, provider = ?provider, provider_id = ?provider_id, "notification sent")
        }
        _ => {
            tracing::warn!(outbox = msg.outbox_id, channel, milestone = ?msg.milestone, attempt, outcome = outcome.as_str(), detail = %crate::mask::Masked(&detail), "notification not sent")
        }
    }
    inner.metrics.notification(channel, outcome);
    let (id, recipient, ch) = (msg.outbox_id, msg.recipient.clone(), channel.to_owned());
    let merged = msg.merged.clone();
    inner
        .db
        .call(move |store| {
            if opt_out {
                store.set_opt_out(&ch, &recipient, true, "provider", now_ms)?;
            }
            // The row, then the other parcels' rows the same message told.
            for row in std::iter::once(id).chain(merged.iter().copied()) {
                for (p, d) in &handed_on {
                    store.record_attempt(row, now_ms, NoticeLogged::HandedOn, p, d)?;
                }
                let detail = if row == id {
                    detail.clone()
                } else {
                    format!("{detail} (one message with outbox {id})")
                };
                let (provider, provider_id) = (provider.as_deref(), provider_id.as_deref());
                let end = Finish {
                    status,
                    next_attempt_ms: next,
                    outcome,
                    provider,
                    provider_id,
                    detail: Some(&detail),
                };
                store.finish_notification(row, now_ms, &end)?;
            }
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests;
