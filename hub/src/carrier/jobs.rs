//! Carrier jobs: work the hub does *towards* a carrier aggregator for each shipment of a
//! configured carrier, durable in the store's `carrier_jobs` and retried on a schedule.
//! Two kinds today, one [`Vendor`] each: polling ShipEngine for carriers that never call
//! ([`super::poll`]) and registering parcels with AfterShip so its webhooks flow
//! ([`super::registration`]).
//!
//! One worker task per kind ([`spawn`]) does, in a loop:
//!
//! 1. **Sweep**: every [`JobSettings::sweep_every`], shipments created since the last sweep
//!    whose carrier the vendor handles get a job (`StoreTx::sweep_carrier_jobs`). Whatever
//!    created the shipment (the API, an order system's webhook), the sweep finds it, and a
//!    hub that was down finds what was created meanwhile.
//! 2. **Claim** the most overdue job with one `UPDATE ... RETURNING` under a lease
//!    ([`JobSettings::lease`]), at most [`JobSettings::per_second`] a second and
//!    [`MAX_IN_FLIGHT`] at once, and never while the vendor has paused the kind.
//! 3. **Attempt** it ([`Vendor::attempt`]: one HTTP request, read into an [`Attempt`]).
//! 4. **Settle**: [`plan`] (pure) says what to write back; a polled status goes through
//!    `inbound::apply_carrier`, the webhook's own dedupe and reconciliation, in the same
//!    writer transaction that reschedules the job.
//!
//! A rate limit (429) or a refused key (401/403) is about the account, not one parcel: it
//! pauses every job of the kind ([`Attempt::Pause`]) instead of letting each job find out
//! for itself. A refused key is logged as a configuration error and counted
//! (`outcome="auth_error"`); the worker asks again only after [`AUTH_PAUSE`].
//!
//! The worker must never write a carrier event any other way than the webhook does, and
//! never hold a job beyond its lease without writing it back under its claim.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::schedule::{self, Schedule};
use crate::inbound::{self, Outcome};
use crate::ingest::{Writer, now_ms};
use crate::metrics::Metrics;
use crate::model::{CanonicalStatus, CarrierEvent};
use crate::notify::ratelimit::{Bucket, RateLimit};
use crate::store::{ClaimedJob, JobState, JobUpdate, StoreError};

/// Requests of one kind in flight at once, at most.
pub const MAX_IN_FLIGHT: usize = 4;
/// How long every job of a kind waits after the vendor refused the API key (401/403):
/// long enough not to hammer a vendor with a key that will not work until someone fixes
/// the configuration, short enough that a fixed key is used the same hour.
pub const AUTH_PAUSE: Duration = Duration::from_secs(10 * 60);
/// The wait after a 429 that says nothing about how long.
pub const RATE_LIMIT_PAUSE: Duration = Duration::from_secs(60);
/// The longest wait a vendor's `Retry-After` or `X-RateLimit-Reset` is honoured for.
pub const MAX_PAUSE: Duration = Duration::from_secs(60 * 60);
/// The largest vendor answer read (1 MiB, as for webhooks); the rest is cut off.
pub const MAX_ANSWER_BYTES: usize = super::MAX_WEBHOOK_BODY_BYTES;
/// Default [`JobSettings::sweep_every`].
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Default [`JobSettings::lease`]: far beyond one request's timeout.
pub const LEASE: Duration = Duration::from_secs(5 * 60);
/// Default [`JobSettings::request_timeout`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How one kind of carrier job runs.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    /// Requests a second, at most, over all of this hub's jobs of the kind.
    pub per_second: f64,
    /// When attempts run.
    pub schedule: Schedule,
    /// How often new shipments are looked for (and how long an idle worker sleeps).
    pub sweep_every: Duration,
    /// How long a claimed job is held before another hub may take it.
    pub lease: Duration,
    /// One request's timeout.
    pub request_timeout: Duration,
}

/// A carrier name as shipments and configuration are matched on: trimmed, lower case
/// (`" UPS "` and `"ups"` are one carrier).
pub fn carrier_key(name: &str) -> String {
    name.trim().to_ascii_lowercase()
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The carrier's tracking was read (polls). `event` is what the webhook with the same
    /// tracking would store; `None` while nothing is dated yet.
    Tracked {
        /// The carrier's raw status (`IT`, `NY`).
        raw_status: String,
        /// Its canonical status.
        status: CanonicalStatus,
        /// The update to store.
        event: Option<CarrierEvent>,
        /// The vendor's answer, stored with the event.
        raw: Vec<u8>,
    },
    /// Finished for good: registered, already registered, or nothing left to do.
    Done {
        /// The outcome label (`registered`, `already_registered`, `not_configured`).
        outcome: &'static str,
        /// The vendor's id or words.
        detail: Option<String>,
    },
    /// Failed, for now: a 5xx, a network error, an unreadable answer. Retried on the
    /// schedule's backoff.
    Retry {
        /// The outcome label (`server_error`, `network_error`, `malformed`).
        outcome: &'static str,
        /// What went wrong, for the job's record and the log.
        detail: String,
    },
    /// The vendor refused the account, not this job (429, 401, 403): every job of the
    /// kind waits `wait`, this one included.
    Pause {
        /// `rate_limited` or `auth_error`.
        outcome: &'static str,
        /// What the vendor said.
        detail: String,
        /// How long.
        wait: Duration,
    },
    /// The vendor refused this job's input (an unknown courier slug, a malformed tracking
    /// number): recorded with the vendor's message, never retried.
    Failed {
        /// The outcome label (`rejected`).
        outcome: &'static str,
        /// The vendor's message.
        detail: String,
    },
}

/// What to write back for a job after an attempt (see [`plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Where the job stands.
    pub state: JobState,
    /// When it is due next.
    pub due_ms: i64,
    /// Failed attempts in a row.
    pub errors: u32,
    /// Answers in a row that told nothing new.
    pub unchanged: u32,
    /// The carrier's raw status read.
    pub last_status: Option<String>,
    /// The outcome label (a stored event's own outcome replaces it for polls).
    pub outcome: &'static str,
    /// The vendor's words or id.
    pub detail: Option<String>,
}

fn update<'a>(plan: &'a Plan, outcome: &'a str) -> JobUpdate<'a> {
    JobUpdate {
        state: plan.state,
        due_ms: plan.due_ms,
        errors: plan.errors,
        unchanged: plan.unchanged,
        last_status: plan.last_status.as_deref(),
        outcome,
        detail: plan.detail.as_deref(),
    }
}

/// The pure decision after an attempt at `now_ms`: the job's next due time, counters
/// and state.
pub fn plan(schedule: &Schedule, job: &ClaimedJob, attempt: &Attempt, now_ms: i64) -> Plan {
    let seed = schedule::seed(job.shipment_id, job.attempts);
    let keep = Plan {
        state: JobState::Pending,
        due_ms: now_ms,
        errors: job.errors,
        unchanged: job.unchanged,
        last_status: None,
        outcome: "",
        detail: None,
    };
    match attempt {
        Attempt::Tracked { raw_status, status, event, .. } => {
            let changed = job.last_status.as_deref() != Some(raw_status.as_str());
            let unchanged = if changed { 0 } else { job.unchanged.saturating_add(1) };
            let outcome = if event.is_some() { "stored" } else { "not_yet" };
            let last_status = Some(raw_status.clone());
            if schedule::is_final(*status) {
                return Plan { state: JobState::Done, errors: 0, unchanged, last_status, outcome, ..keep };
            }
            let due_ms = schedule::due_after(now_ms, schedule.poll_wait(unchanged, *status), seed);
            Plan { due_ms, errors: 0, unchanged, last_status, outcome, ..keep }
        }
        Attempt::Done { outcome, detail } => {
            Plan { state: JobState::Done, errors: 0, outcome, detail: detail.clone(), ..keep }
        }
        Attempt::Retry { outcome, detail } => {
            let errors = job.errors.saturating_add(1);
            let due_ms = schedule::due_after(now_ms, schedule.retry_wait(errors), seed);
            Plan { due_ms, errors, outcome, detail: Some(detail.clone()), ..keep }
        }
        Attempt::Pause { outcome, detail, wait } => {
            // The whole kind waits; this job comes back just after the pause, spread so the
            // paused jobs do not all return at once.
            let after_pause = now_ms.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
            let due_ms = schedule::due_after(after_pause, *wait / 10, seed);
            Plan { due_ms, outcome, detail: Some(detail.clone()), ..keep }
        }
        Attempt::Failed { outcome, detail } => {
            Plan { state: JobState::Failed, outcome, detail: Some(detail.clone()), ..keep }
        }
    }
}

/// The attempt for a job whose shipment is past the schedule's maximum age: a job that
/// was still failing has given up; one that was not has simply run its course.
pub fn too_old(job: &ClaimedJob) -> Attempt {
    if job.errors > 0 {
        Attempt::Failed {
            outcome: "gave_up",
            detail: "the shipment is older than the job's maximum age".into(),
        }
    } else {
        Attempt::Done { outcome: "too_old", detail: None }
    }
}

/// A vendor answer, read and bounded.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The headers, lower-case names, first value each.
    pub headers: BTreeMap<String, String>,
    /// The body, at most [`MAX_ANSWER_BYTES`].
    pub body: Vec<u8>,
}

impl Answer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// The start of the body as text, for records and logs.
    pub fn excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body).chars().take(300).collect()
    }
}

/// Sends a request and reads the answer (at most [`MAX_ANSWER_BYTES`]); a transport
/// failure is a [`Attempt::Retry`].
pub async fn send(request: reqwest::RequestBuilder, vendor: &str) -> Result<Answer, Attempt> {
    let mut response = request.send().await.map_err(|e| Attempt::Retry {
        outcome: "network_error",
        detail: format!("{vendor}: {}", error_chain(&e)),
    })?;
    let status = response.status().as_u16();
    let mut headers = BTreeMap::new();
    for (name, value) in response.headers() {
        if let Ok(value) = value.to_str() {
            headers.entry(name.as_str().to_owned()).or_insert_with(|| value.to_owned());
        }
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ANSWER_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_ANSWER_BYTES {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(Attempt::Retry {
                    outcome: "network_error",
                    detail: format!("{vendor}: reading the answer: {}", error_chain(&e)),
                });
            }
        }
    }
    Ok(Answer { status, headers, body })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The answers every vendor gives the same meaning: a rate limit pauses the kind, a
/// refused key pauses it longer and is a configuration error, a 5xx is retried. `None`
/// for the rest, which each vendor reads itself.
pub fn common_refusal(vendor: &str, answer: &Answer, now_ms: i64) -> Option<Attempt> {
    match answer.status {
        429 => {
            let wait = schedule::rate_limit_wait(
                answer.header("retry-after"),
                answer.header("x-ratelimit-reset"),
                now_ms,
                RATE_LIMIT_PAUSE,
                MAX_PAUSE,
            );
            Some(Attempt::Pause {
                outcome: "rate_limited",
                detail: format!("{vendor} HTTP 429: {}", answer.excerpt()),
                wait,
            })
        }
        401 | 403 => Some(Attempt::Pause {
            outcome: "auth_error",
            detail: format!("{vendor} refused the API key (HTTP {}): {}", answer.status, answer.excerpt()),
            wait: AUTH_PAUSE,
        }),
        408 | 500..=599 => Some(Attempt::Retry {
            outcome: "server_error",
            detail: format!("{vendor} HTTP {}: {}", answer.status, answer.excerpt()),
        }),
        _ => None,
    }
}

/// One aggregator's side of a job kind.
pub trait Vendor: Send + Sync + 'static {
    /// The job kind in the store: `poll` or `register`.
    const KIND: &'static str;
    /// The vendor's name in logs and records (`shipengine`, `aftership`).
    const VENDOR: &'static str;

    /// How the kind runs.
    fn settings(&self) -> &JobSettings;

    /// The carriers (as [`carrier_key`]s) whose shipments get a job.
    fn carriers(&self) -> Vec<String>;

    /// The vendor's code for a carrier it handles (ShipEngine's `carrier_code`,
    /// AfterShip's slug); `None` for a carrier it does not.
    fn code_for(&self, carrier: &str) -> Option<String>;

    /// Makes one request for `job`, whose carrier has the vendor code `code`.
    fn attempt(
        &self,
        client: &reqwest::Client,
        job: &ClaimedJob,
        code: &str,
    ) -> impl Future<Output = Attempt> + Send;

    /// Counts one attempt's outcome for `carrier`.
    fn count(metrics: &Metrics, carrier: &str, outcome: &str);
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
#[error("building the {vendor} HTTP client: {detail}")]
pub struct StartError {
    /// The vendor.
    vendor: &'static str,
    /// What failed.
    detail: String,
}

/// Starts the worker for `vendor`'s jobs; it runs until `cancel`, then waits for the
/// requests in flight and writes their answers back.
pub fn spawn<V: Vendor>(
    vendor: V,
    writer: Writer,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let settings = vendor.settings().clone();
    let client = reqwest::Client::builder()
        .timeout(settings.request_timeout)
        .connect_timeout(settings.request_timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("doorstep-hub/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| StartError { vendor: V::VENDOR, detail: e.to_string() })?;
    let worker = Arc::new(Worker {
        vendor,
        settings,
        client,
        writer,
        metrics,
        paused_until: Mutex::new(None),
        claim_prefix: claim_prefix(),
        claims: AtomicU64::new(0),
    });
    Ok(tokio::spawn(worker.run(cancel)))
}

/// Starts a worker for each kind of carrier job `carriers` configures (ShipEngine polls,
/// AfterShip registrations); none when neither lists a carrier.
pub fn spawn_configured(
    carriers: &crate::config::CarrierSecrets,
    writer: &Writer,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, StartError> {
    let mut tasks = Vec::new();
    if let Some(settings) = &carriers.poll {
        let vendor = super::poll::ShipEnginePoll::new(settings.clone());
        tasks.push(spawn(vendor, writer.clone(), Arc::clone(metrics), cancel.clone())?);
    }
    if let Some(settings) = &carriers.register {
        let vendor = super::registration::AfterShipRegistration::new(settings.clone());
        tasks.push(spawn(vendor, writer.clone(), Arc::clone(metrics), cancel.clone())?);
    }
    Ok(tasks)
}

/// A prefix for claim tokens unique to this worker (random, so two hubs never share one).
fn claim_prefix() -> String {
    let mut bytes = [0u8; 8];
    // Without randomness, the time still tells workers apart in all but contrived cases.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        bytes = now_ms().to_be_bytes();
    }
    hex::encode(bytes)
}

struct Worker<V: Vendor> {
    vendor: V,
    settings: JobSettings,
    client: reqwest::Client,
    writer: Writer,
    metrics: Arc<Metrics>,
    /// Until when the vendor has paused every job of the kind.
    paused_until: Mutex<Option<Instant>>,
    claim_prefix: String,
    claims: AtomicU64,
}

impl<V: Vendor> Worker<V> {
    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let per_s = if self.settings.per_second > 0.0 { self.settings.per_second } else { 1.0 };
        let bucket = Bucket::new(RateLimit { per_s, burst: 1 });
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let idle = self.settings.sweep_every.max(Duration::from_millis(10));
        let mut tasks = JoinSet::new();
        let mut next_sweep = Instant::now();
        tracing::info!(kind = V::KIND, vendor = V::VENDOR, carriers = ?self.vendor.carriers(), "carrier jobs started");
        loop {
            while tasks.try_join_next().is_some() {}
            if Instant::now() >= next_sweep {
                self.sweep().await;
                next_sweep = Instant::now() + self.settings.sweep_every;
            }
            if let Some(until) = self.paused() {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep_until(until) => {}
                }
                continue;
            }
            let permit = tokio::select! {
                () = cancel.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            tokio::select! {
                () = cancel.cancelled() => break,
                () = bucket.acquire() => {}
            }
            // An answer that came in while this waited for its turn may have paused the kind.
            if self.paused().is_some() {
                continue;
            }
            match self.claim().await {
                Ok(Some(job)) => {
                    let worker = Arc::clone(&self);
                    tasks.spawn(async move {
                        worker.work(job).await;
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(idle) => {}
                    }
                }
                Err(error) => {
                    drop(permit);
                    tracing::error!(kind = V::KIND, %error, "cannot claim a carrier job");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(idle) => {}
                    }
                }
            }
        }
        while tasks.join_next().await.is_some() {}
        tracing::info!(kind = V::KIND, vendor = V::VENDOR, "carrier jobs stopped");
    }

    /// Until when the vendor has paused every job of the kind, if it has.
    fn paused(&self) -> Option<Instant> {
        let paused = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        paused.filter(|until| *until > Instant::now())
    }

    async fn sweep(&self) {
        let carriers = self.vendor.carriers();
        let schedule = self.settings.schedule;
        let first_ms = i64::try_from(schedule.first.as_millis()).unwrap_or(i64::MAX);
        let max_age_ms = i64::try_from(schedule.max_age.as_millis()).unwrap_or(i64::MAX);
        let added = self
            .writer
            .call(move |ctx| -> Result<usize, StoreError> {
                let now = now_ms();
                let tx = ctx.store.transaction()?;
                let added =
                    tx.sweep_carrier_jobs(V::KIND, &carriers, first_ms, now.saturating_sub(max_age_ms), now)?;
                tx.commit()?;
                Ok(added)
            })
            .await;
        match added {
            Ok(Ok(0)) => {}
            Ok(Ok(added)) => tracing::info!(kind = V::KIND, added, "carrier jobs added for new shipments"),
            Ok(Err(error)) => tracing::error!(kind = V::KIND, %error, "cannot look for new shipments"),
            Err(error) => tracing::error!(kind = V::KIND, %error, "cannot look for new shipments"),
        }
    }

    async fn claim(&self) -> Result<Option<ClaimedJob>, String> {
        let n = self.claims.fetch_add(1, Ordering::Relaxed);
        let claim = format!("{}-{n}", self.claim_prefix);
        let lease_ms = i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX);
        self.writer
            .call(move |ctx| -> Result<Option<ClaimedJob>, StoreError> {
                let tx = ctx.store.transaction()?;
                let job = tx.claim_carrier_job(V::KIND, &claim, lease_ms, now_ms())?;
                tx.commit()?;
                Ok(job)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn work(&self, job: ClaimedJob) {
        let carrier = job.carrier.as_deref().map(carrier_key).unwrap_or_default();
        let attempt = if self.settings.schedule.too_old(job.shipment_created_ms, now_ms()) {
            too_old(&job)
        } else {
            match self.vendor.code_for(&carrier) {
                Some(code) => self.vendor.attempt(&self.client, &job, &code).await,
                // The shipment's carrier changed, or left the configuration, since the sweep.
                None => Attempt::Done { outcome: "not_configured", detail: None },
            }
        };
        self.settle(job, &carrier, attempt).await;
    }

    async fn settle(&self, job: ClaimedJob, carrier: &str, attempt: Attempt) {
        let now = now_ms();
        let plan = plan(&self.settings.schedule, &job, &attempt, now);
        let label = if carrier.is_empty() { "unknown" } else { carrier };
        match &attempt {
            Attempt::Pause { outcome: "auth_error" | "config_error", detail, wait } => {
                tracing::error!(
                    kind = V::KIND,
                    vendor = V::VENDOR,
                    %detail,
                    pause_s = wait.as_secs(),
                    "configuration error: the vendor refused the API key; check [carriers.{}] api_key",
                    V::VENDOR
                );
            }
            Attempt::Pause { outcome, detail, wait } => {
                tracing::warn!(kind = V::KIND, vendor = V::VENDOR, outcome, %detail, pause_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "vendor paused the jobs");
            }
            Attempt::Retry { outcome, detail } => {
                tracing::warn!(kind = V::KIND, shipment = %job.tracking_number, carrier = label, outcome, %detail, errors = plan.errors, "carrier job will be retried");
            }
            Attempt::Failed { outcome, detail } => {
                tracing::warn!(kind = V::KIND, shipment = %job.tracking_number, carrier = label, outcome, %detail, "carrier job failed for good");
            }
            Attempt::Tracked { .. } | Attempt::Done { .. } => {}
        }
        if let Attempt::Pause { wait, .. } = &attempt {
            let until = Instant::now() + *wait;
            let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            *paused = Some(paused.map_or(until, |p| p.max(until)));
        }
        let event = match attempt {
            Attempt::Tracked { event: Some(event), raw, .. } => Some((event, raw)),
            _ => None,
        };
        let metrics = Arc::clone(&self.metrics);
        let schedule = self.settings.schedule;
        let tracking = job.tracking_number.clone();
        let written = self
            .writer
            .call(move |ctx| -> Result<(&'static str, bool), StoreError> {
                let mut plan = plan;
                if let Some((event, raw)) = event {
                    let tx = ctx.store.transaction()?;
                    match inbound::apply_carrier(&tx, ctx.domain, event, &raw, now) {
                        Ok((outcome, effects)) => {
                            let held = tx.finish_carrier_job(V::KIND, &job, &update(&plan, outcome.as_str()), now)?;
                            tx.commit()?;
                            if outcome != Outcome::Duplicate {
                                effects.record(&metrics);
                            }
                            return Ok((outcome.as_str(), held));
                        }
                        Err(error) => {
                            drop(tx);
                            tracing::error!(shipment = %job.tracking_number, %error, "cannot store a polled carrier status");
                            let errors = job.errors.saturating_add(1);
                            plan.state = JobState::Pending;
                            plan.errors = errors;
                            plan.detail = Some(error.to_string());
                            plan.due_ms = now.saturating_add(
                                i64::try_from(schedule.retry_wait(errors).as_millis()).unwrap_or(i64::MAX),
                            );
                            plan.outcome = "store_error";
                        }
                    }
                }
                let tx = ctx.store.transaction()?;
                let held = tx.finish_carrier_job(V::KIND, &job, &update(&plan, plan.outcome), now)?;
                tx.commit()?;
                Ok((plan.outcome, held))
            })
            .await;
        match written {
            Ok(Ok((outcome, held))) => {
                V::count(&self.metrics, label, outcome);
                if !held {
                    tracing::warn!(kind = V::KIND, shipment = %tracking, "carrier job's lease ran out before its answer; another hub's answer counts");
                }
                tracing::debug!(kind = V::KIND, shipment = %tracking, carrier = label, outcome, "carrier job attempted");
            }
            Ok(Err(error)) => {
                V::count(&self.metrics, label, "store_error");
                tracing::error!(kind = V::KIND, shipment = %tracking, %error, "cannot write a carrier job back; it comes due again when its lease ends");
            }
            Err(error) => {
                tracing::error!(kind = V::KIND, shipment = %tracking, %error, "cannot write a carrier job back; it comes due again when its lease ends");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use doorstep_proto::TrackingNumber;

    use super::*;

    use crate::carrier::schedule::tests::schedule;

    fn job(last_status: Option<&str>, unchanged: u32, errors: u32) -> ClaimedJob {
        ClaimedJob {
            shipment_id: 7,
            tracking_number: TrackingNumber::new("9405511899223197428490").expect("tn"),
            carrier: Some("usps".into()),
            shipment_created_ms: 0,
            attempts: 3,
            errors,
            unchanged,
            last_status: last_status.map(str::to_owned),
            claim: "c".into(),
        }
    }

    fn tracked(raw: &str, status: CanonicalStatus) -> Attempt {
        Attempt::Tracked { raw_status: raw.into(), status, event: None, raw: Vec::new() }
    }

    fn wait(plan: &Plan, now: i64) -> i64 {
        plan.due_ms - now
    }

    #[test]
    fn a_new_status_polls_again_at_the_base_interval_and_an_old_one_waits_longer() {
        let now = 1_000_000;
        let moved =
            plan(&schedule(), &job(Some("NY"), 2, 0), &tracked("IT", CanonicalStatus::InTransit), now);
        assert_eq!(
            (moved.state, moved.unchanged, moved.last_status.as_deref()),
            (JobState::Pending, 0, Some("IT"))
        );
        assert!((1_620_000..=1_980_000).contains(&wait(&moved, now)), "{moved:?}");
        let same = plan(&schedule(), &job(Some("IT"), 2, 0), &tracked("IT", CanonicalStatus::InTransit), now);
        // The third answer in a row with nothing new: eight times the base interval.
        assert_eq!(same.unchanged, 3);
        assert!((8 * 1_620_000..=8 * 1_980_000).contains(&wait(&same, now)), "{same:?}");
        assert_eq!(same.outcome, "not_yet");
    }

    #[test]
    fn a_final_status_ends_the_poll_and_clears_the_errors() {
        let done = plan(&schedule(), &job(Some("IT"), 0, 2), &tracked("DE", CanonicalStatus::Delivered), 5);
        assert_eq!((done.state, done.errors, done.last_status.as_deref()), (JobState::Done, 0, Some("DE")));
    }

    #[test]
    fn failures_back_off_and_a_pause_keeps_the_counters() {
        let now = 0;
        let retry = Attempt::Retry { outcome: "server_error", detail: "HTTP 503".into() };
        let third = plan(&schedule(), &job(Some("IT"), 4, 2), &retry, now);
        assert_eq!((third.state, third.errors, third.unchanged), (JobState::Pending, 3, 4));
        assert!((216_000..=264_000).contains(&wait(&third, now)), "{third:?}");
        assert_eq!(third.detail.as_deref(), Some("HTTP 503"));
        let pause =
            Attempt::Pause { outcome: "rate_limited", detail: "429".into(), wait: Duration::from_secs(10) };
        let paused = plan(&schedule(), &job(Some("IT"), 4, 2), &pause, now);
        assert_eq!((paused.errors, paused.unchanged, paused.state), (2, 4, JobState::Pending));
        assert!(wait(&paused, now) >= 10_000, "never before the vendor's time: {paused:?}");
        let failed = Attempt::Failed { outcome: "rejected", detail: "4010 slug invalid".into() };
        assert_eq!(plan(&schedule(), &job(None, 0, 0), &failed, now).state, JobState::Failed);
    }

    #[test]
    fn an_old_shipment_gives_up_only_when_it_was_failing() {
        assert!(matches!(too_old(&job(None, 0, 0)), Attempt::Done { outcome: "too_old", .. }));
        assert!(matches!(too_old(&job(None, 0, 1)), Attempt::Failed { outcome: "gave_up", .. }));
    }

    /// A vendor's answer, for the tests of each vendor's reading.
    pub(crate) fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
        Answer {
            status,
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn rate_limits_and_refused_keys_pause_the_kind_and_server_errors_retry() {
        let now = 1_700_000_000_000;
        let limited = common_refusal("shipengine", &answer(429, &[("retry-after", "3")], "{}"), now);
        assert!(
            matches!(limited, Some(Attempt::Pause { outcome: "rate_limited", wait, .. }) if wait == Duration::from_secs(3))
        );
        let reset =
            common_refusal("aftership", &answer(429, &[("x-ratelimit-reset", "1700000002")], "{}"), now);
        assert!(matches!(reset, Some(Attempt::Pause { wait, .. }) if wait == Duration::from_secs(2)));
        let key = common_refusal("shipengine", &answer(401, &[], r#"{"errors":[]}"#), now);
        assert!(matches!(key, Some(Attempt::Pause { outcome: "auth_error", wait: AUTH_PAUSE, .. })));
        assert!(matches!(
            common_refusal("shipengine", &answer(503, &[], "down"), now),
            Some(Attempt::Retry { outcome: "server_error", .. })
        ));
        assert!(common_refusal("shipengine", &answer(400, &[], "bad"), now).is_none());
        assert!(common_refusal("shipengine", &answer(200, &[], "{}"), now).is_none());
    }

    #[test]
    fn carrier_names_match_whatever_their_case_and_spacing() {
        assert_eq!(carrier_key("  UPS "), "ups");
        assert_eq!(carrier_key("DHL Express"), "dhl express");
    }
}
