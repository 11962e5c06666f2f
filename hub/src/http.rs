//! The hub's HTTP surface (axum): the order-system API, carrier webhooks, `/metrics`,
//! `/healthz`, and a slot for the tracking page.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/shipments` | create a shipment (tracking number, carrier, order id, contacts, consent, locale, time zone) → 201 |
//! | GET  | `/v1/shipments/{tracking}` | the shipment, its timeline, notifications and alerts |
//! | POST | `/v1/shipments/{tracking}/dispatched` | the order system says it left → milestone "dispatched" |
//! | POST | `/v1/routes` | store a device's route, raise "dispatched" for its parcels, publish it signed and retained (and again whenever the broker may have lost it: see `ingest`) |
//! | POST | `/webhooks/{aftership,easypost,shipengine}` | carrier tracking updates, signature checked on the raw body |
//! | GET  | `/metrics` | Prometheus text |
//! | GET  | `/healthz` | 200 when the broker session is up and the database answers |
//!
//! Handlers hold no SQL: their writes run on ingest's writer thread ([`Writer::call`]) in
//! one transaction each, so a webhook's dedupe, storage, reconciliation and enqueued
//! notifications commit together (invariants 4 and 7). Every body is bounded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::middleware;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use doorstep_proto::{DeviceId, FleetId, RouteManifest, SigningKey, TrackingNumber};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::access::{self, AuditSubject, Guard, Required, Scope};
use crate::carrier::{self, Verifier};
use crate::config::{CarrierSecrets, RateLimits};
use crate::limits;
use crate::ingest::{self, Effects, Writer, apply_to_shipment, now_ms};
use crate::metrics::Metrics;
use crate::model::{Carrier, CarrierEvent};
use crate::reconcile::Input;
use crate::store::{Contact, ContactChannel, NewShipment, StoreError};

/// How long `/healthz` waits for the database.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest order id, locale and time zone accepted, bytes.
pub const MAX_FIELD_LEN: usize = 128;
/// Longest contact (phone, email, URL), bytes.
pub const MAX_CONTACT_LEN: usize = 512;

/// The configured carrier webhook verifiers.
#[derive(Debug, Default)]
pub struct CarrierVerifiers {
    /// AfterShip.
    pub aftership: Option<Verifier>,
    /// EasyPost.
    pub easypost: Option<Verifier>,
    /// ShipEngine.
    pub shipengine: Option<Verifier>,
}

/// Why a carrier verifier could not be built.
#[derive(Debug, thiserror::Error)]
#[error("carriers.{carrier}: {source}")]
pub struct VerifierError {
    /// The config section.
    pub carrier: &'static str,
    /// What is wrong.
    pub source: carrier::KeyError,
}

impl CarrierVerifiers {
    /// Builds the verifiers the configuration has secrets for.
    pub fn from_secrets(secrets: &CarrierSecrets) -> Result<Self, VerifierError> {
        let err = |carrier| move |source| VerifierError { carrier, source };
        let aftership = secrets
            .aftership
            .as_deref()
            .map(|s| carrier::aftership::Verifier::new(s).map(Verifier::AfterShip))
            .transpose()
            .map_err(err("aftership"))?;
        let easypost = secrets
            .easypost
            .as_deref()
            .map(|s| carrier::easypost::Verifier::new(s).map(Verifier::EasyPost))
            .transpose()
            .map_err(err("easypost"))?;
        let shipengine = match &secrets.shipengine_keys {
            None => None,
            Some(text) => {
                let keys = if text.trim_start().starts_with('{') {
                    carrier::shipengine::Keys::from_jwks_json(text.as_bytes()).map_err(err("shipengine"))?
                } else {
                    let mut keys = carrier::shipengine::Keys::new();
                    let id = secrets.shipengine_key_id.as_deref().unwrap_or("default");
                    keys.add_pem(id, text).map_err(err("shipengine"))?;
                    keys
                };
                let window = i64::try_from(secrets.shipengine_window.as_millis()).unwrap_or(i64::MAX);
                Some(Verifier::ShipEngine(carrier::shipengine::Verifier::new(keys, window)))
            }
        };
        Ok(Self { aftership, easypost, shipengine })
    }

    fn get(&self, carrier: Carrier) -> Option<&Verifier> {
        match carrier {
            Carrier::AfterShip => self.aftership.as_ref(),
            Carrier::EasyPost => self.easypost.as_ref(),
            Carrier::ShipEngine => self.shipengine.as_ref(),
        }
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The single writer; it also publishes routes, through its outbound queue.
    pub writer: Writer,
    /// Signs routes (a route too big to send is refused before it is stored).
    pub hub_key: Arc<SigningKey>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Carrier webhook verifiers.
    pub carriers: Arc<CarrierVerifiers>,
    /// Largest request body.
    pub max_body_bytes: usize,
}

/// The public surface, the one the internet reaches: carrier webhooks, the tracking page
/// and provider callbacks (`page`, `callbacks`: `notify` brings their routes and state),
/// and `/healthz`, each with its per-client rate limit. Nothing of the private API is
/// routed here, so `/v1/...` and `/metrics` are a plain 404: not advertised.
pub fn public_router(state: AppState, page: Router, callbacks: Router, limits: &RateLimits) -> Router {
    let webhook_limit = state.max_body_bytes.min(carrier::MAX_WEBHOOK_BODY_BYTES);
    let metrics = Arc::clone(&state.metrics);
    let webhooks = Router::new()
        .route("/webhooks/{carrier}", post(webhook))
        .layer(DefaultBodyLimit::max(webhook_limit))
        .with_state(state.clone());
    let trust = limits.trust_forwarded_for;
    let (page_period, page_burst) = (limits.page_period, limits.page_burst);
    let (hook_period, hook_burst) = (limits.webhooks_period, limits.webhooks_burst);
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(state)
        .merge(limits::limit(webhooks, hook_period, hook_burst, trust, "webhooks", &metrics))
        .merge(limits::limit(callbacks, hook_period, hook_burst, trust, "callbacks", &metrics))
        .merge(limits::limit(page, page_period, page_burst, trust, "tracking_page", &metrics))
}

/// The private surface for order systems and staff: every route needs an API key with
/// its scope (see `access`), and every write leaves an audit line.
pub fn api_router(state: AppState) -> Router {
    let guard = Guard { writer: state.writer.clone(), metrics: Arc::clone(&state.metrics) };
    let need = |scope| middleware::from_fn_with_state(Required::new(&guard, scope), access::authorize);
    let orders = Router::new()
        .route("/v1/shipments", post(create_shipment))
        .route("/v1/shipments/{tracking}/dispatched", post(dispatched))
        .route("/v1/shipments/{tracking}/links/revoke", post(revoke_links))
        .route_layer(need(Scope::OrdersWrite));
    let reads =
        Router::new().route("/v1/shipments/{tracking}", get(show_shipment)).route_layer(need(Scope::ShipmentsRead));
    let routes = Router::new().route("/v1/routes", post(create_route)).route_layer(need(Scope::RoutesWrite));
    let metrics = Router::new().route("/metrics", get(metrics)).route_layer(need(Scope::MetricsRead));
    Router::new()
        .merge(orders)
        .merge(reads)
        .merge(routes)
        .merge(metrics)
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}

/// An API error: a status and one sentence saying what was wrong and what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists(what) => Self::new(StatusCode::CONFLICT, format!("{what} already exists")),
            StoreError::NotFound(what) => Self::new(StatusCode::NOT_FOUND, format!("{what} not found")),
            other => {
                tracing::error!(error = %other, "database error in HTTP handler");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "database error; see the hub's log")
            }
        }
    }
}

impl From<ingest::ApplyError> for ApiError {
    fn from(e: ingest::ApplyError) -> Self {
        match e {
            ingest::ApplyError::Store(e) => e.into(),
            other => {
                tracing::error!(error = %other, "reconciliation failed in HTTP handler");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

impl From<ingest::WriterGone> for ApiError {
    fn from(_: ingest::WriterGone) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down")
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::unprocessable(format!("invalid JSON body: {e}")))
}

// ---- shipments ----------------------------------------------------------------------------

/// Consent: one answer for every channel, or one per channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Consent {
    All(bool),
    PerChannel(BTreeMap<ContactChannel, bool>),
}

/// The body of `POST /v1/shipments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateShipment {
    tracking_number: TrackingNumber,
    #[serde(default)]
    carrier: Option<String>,
    #[serde(default)]
    order_id: Option<String>,
    #[serde(default)]
    contacts: BTreeMap<ContactChannel, String>,
    #[serde(default)]
    consent: Option<Consent>,
    #[serde(default)]
    locale: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
}

fn check_contact(channel: ContactChannel, value: &str) -> Result<(), String> {
    if value.len() > MAX_CONTACT_LEN || value.trim() != value || value.is_empty() {
        return Err(format!(
            "contacts.{}: empty, padded or longer than {MAX_CONTACT_LEN} bytes",
            channel.as_str()
        ));
    }
    let ok = match channel {
        ContactChannel::Sms | ContactChannel::Whatsapp => {
            let digits = value.strip_prefix('+').unwrap_or("");
            (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        }
        ContactChannel::Email => {
            let mut parts = value.splitn(2, '@');
            let (local, domain) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            !local.is_empty() && domain.contains('.') && !value.contains(char::is_whitespace)
        }
        ContactChannel::Webhook => {
            (value.starts_with("https://") || value.starts_with("http://"))
                && !value.contains(char::is_whitespace)
        }
    };
    if ok {
        Ok(())
    } else {
        let rule = match channel {
            ContactChannel::Sms | ContactChannel::Whatsapp => "an E.164 phone number (+15555550100)",
            ContactChannel::Email => "an email address",
            ContactChannel::Webhook => "an https:// URL",
        };
        Err(format!("contacts.{} must be {rule}", channel.as_str()))
    }
}

fn check_token(field: &str, value: &str, extra: &[u8]) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_FIELD_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if ok { Ok(()) } else { Err(ApiError::unprocessable(format!("{field} {value:?} is not valid"))) }
}

impl CreateShipment {
    fn validate(self) -> Result<NewShipment, ApiError> {
        let locale = self.locale.unwrap_or_else(|| "en".into());
        check_token("locale", &locale, b"-_")?;
        let time_zone = self.time_zone.unwrap_or_else(|| "UTC".into());
        check_token("time_zone", &time_zone, b"/_+-")?;
        if let Some(carrier) = &self.carrier {
            check_token("carrier", carrier, b"-_")?;
        }
        if let Some(order) = &self.order_id
            && (order.is_empty() || order.len() > MAX_FIELD_LEN || order.chars().any(char::is_control))
        {
            return Err(ApiError::unprocessable(format!(
                "order_id must be 1 to {MAX_FIELD_LEN} printable bytes"
            )));
        }
        if !self.contacts.is_empty() && self.consent.is_none() {
            return Err(ApiError::unprocessable(
                "consent is required with contacts: true, false, or per channel ({\"sms\": true})",
            ));
        }
        let mut contacts = BTreeMap::new();
        for (channel, recipient) in self.contacts {
            check_contact(channel, &recipient).map_err(ApiError::unprocessable)?;
            let consent = match &self.consent {
                Some(Consent::All(all)) => *all,
                Some(Consent::PerChannel(map)) => map.get(&channel).copied().unwrap_or(false),
                None => false,
            };
            contacts.insert(channel, Contact { recipient, consent });
        }
        Ok(NewShipment {
            tracking_number: self.tracking_number,
            carrier: self.carrier,
            order_id: self.order_id,
            contacts,
            locale,
            time_zone,
        })
    }
}

#[derive(Debug, Serialize)]
struct Created {
    id: i64,
    tracking_number: TrackingNumber,
    milestone: crate::model::Milestone,
}

async fn create_shipment(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let new = parse_json::<CreateShipment>(&body)?.validate()?;
    let tracking = new.tracking_number.clone();
    let id = state
        .writer
        .call(move |ctx| -> Result<i64, StoreError> {
            let tx = ctx.store.transaction()?;
            let id = tx.insert_shipment(&new, now_ms())?;
            tx.commit()?;
            Ok(id)
        })
        .await??;
    tracing::info!(shipment = %tracking, id, "shipment created");
    let subject = AuditSubject(format!("shipment {tracking}"));
    let created = Created { id, tracking_number: tracking, milestone: crate::model::Milestone::Created };
    let mut response = (StatusCode::CREATED, axum::Json(created)).into_response();
    response.extensions_mut().insert(subject);
    Ok(response)
}

async fn show_shipment(
    State(state): State<AppState>,
    Path(tracking): Path<String>,
) -> Result<Response, ApiError> {
    let tracking =
        TrackingNumber::new(tracking).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let shown = state
        .writer
        .call(move |ctx| -> Result<Option<serde_json::Value>, StoreError> {
            let Some(shipment) = ctx.store.shipment_by_tracking(&tracking)? else { return Ok(None) };
            let timeline = ctx.store.timeline(shipment.id)?;
            let notifications = ctx.store.outbox_for_shipment(shipment.id)?;
            let alerts: Vec<_> = ctx
                .store
                .alerts_for_shipment(shipment.id)?
                .into_iter()
                .map(|(code, detail)| json!({ "code": code, "detail": detail }))
                .collect();
            Ok(Some(json!({
                "shipment": shipment, "timeline": timeline, "notifications": notifications, "alerts": alerts,
            })))
        })
        .await??;
    match shown {
        Some(body) => Ok(axum::Json(body).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no shipment with this tracking number")),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DispatchedBody {
    #[serde(default)]
    at_ms: Option<i64>,
}

async fn dispatched(
    State(state): State<AppState>,
    Path(tracking): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tracking =
        TrackingNumber::new(tracking).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let body: DispatchedBody = if body.is_empty() { DispatchedBody::default() } else { parse_json(&body)? };
    let at_ms = body.at_ms.unwrap_or_else(now_ms);
    let metrics = Arc::clone(&state.metrics);
    let milestone = state
        .writer
        .call(move |ctx| -> Result<crate::model::Milestone, ApiError> {
            let now = now_ms();
            let tx = ctx.store.transaction()?;
            let Some(shipment) = tx.shipment_by_tracking(&tracking)? else {
                return Err(ApiError::new(StatusCode::NOT_FOUND, "no shipment with this tracking number"));
            };
            let input = Input::Dispatched { at_ms, on_route: false };
            let effects = apply_to_shipment(&tx, ctx.domain, &shipment, &input, now)?;
            let milestone = tx.shipment(shipment.id)?.map_or(shipment.milestone, |s| s.milestone);
            tx.commit()?;
            effects.record(&metrics);
            Ok(milestone)
        })
        .await??;
    Ok(axum::Json(json!({ "milestone": milestone })).into_response())
}

/// `POST /v1/shipments/{tracking}/links/revoke`: every tracking link sent for the parcel
/// so far stops working (410); links in later messages work.
async fn revoke_links(
    State(state): State<AppState>,
    Path(tracking): Path<String>,
) -> Result<Response, ApiError> {
    let tracking =
        TrackingNumber::new(tracking).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let revoked = state
        .writer
        .call(move |ctx| -> Result<Option<i64>, StoreError> {
            let Some(shipment) = ctx.store.shipment_by_tracking(&tracking)? else { return Ok(None) };
            let now = now_ms();
            ctx.store.revoke_links(shipment.id, now)?;
            tracing::info!(shipment = %tracking, "tracking links withdrawn");
            Ok(Some(now))
        })
        .await??;
    match revoked {
        Some(at_ms) => Ok(axum::Json(json!({ "links_revoked_ms": at_ms })).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no shipment with this tracking number")),
    }
}

// ---- routes -------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoute {
    fleet: FleetId,
    device: DeviceId,
    route: RouteManifest,
}

async fn create_route(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let CreateRoute { fleet, device, route } = parse_json(&body)?;
    let route_id = route.route_id.clone();
    route.validate().map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let issued_ms = now_ms();
    let message = ingest::route_message(&device, route.clone(), issued_ms);
    // Sealed before anything is stored: a route too big to send is refused whole.
    let sealed_ok = message.seal(&state.hub_key).map_err(|e| ApiError::unprocessable(e.to_string()));
    sealed_ok?;
    let metrics = Arc::clone(&state.metrics);
    let (fleet2, device2) = (fleet.clone(), device.clone());
    let dispatched = state
        .writer
        .call(move |ctx| -> Result<usize, ApiError> {
            match ctx.store.device(&device2)? {
                Some(d) if d.status == crate::store::DeviceStatus::Active && d.fleet == fleet2 => {}
                Some(d) if d.fleet != fleet2 => {
                    return Err(ApiError::unprocessable(format!(
                        "device {device2} belongs to fleet {}",
                        d.fleet
                    )));
                }
                Some(_) => return Err(ApiError::unprocessable(format!("device {device2} is revoked"))),
                None => {
                    return Err(ApiError::unprocessable(format!(
                        "device {device2} is not registered; add it with `doorstep-hub device add`"
                    )));
                }
            }
            let now = now_ms();
            let tx = ctx.store.transaction()?;
            let shipments = tx.upsert_route(&fleet2, &device2, &route, issued_ms)?;
            let mut effects = Effects::default();
            for id in &shipments {
                let Some(shipment) = tx.shipment(*id)? else { continue };
                let input = Input::Dispatched { at_ms: issued_ms, on_route: true };
                effects.merge(apply_to_shipment(&tx, ctx.domain, &shipment, &input, now)?);
            }
            tx.commit()?;
            effects.record(&metrics);
            // Stored first, then published: a failed publish is fixed by posting the route
            // again (or by the device coming online: the hub publishes its route again).
            // Queued by the writer, after any repeat of an older route it queued before.
            ctx.publish_route(&fleet2, &message, "posted").map_err(|e| {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("route stored but not published: {e}"))
            })?;
            Ok(shipments.len())
        })
        .await??;
    tracing::info!(fleet = %fleet, device = %device, dispatched, issued_ms, "route published");
    let mut response = (
        StatusCode::CREATED,
        axum::Json(json!({ "issued_ms": issued_ms, "shipments_dispatched": dispatched })),
    )
        .into_response();
    response.extensions_mut().insert(AuditSubject(format!("route {fleet}/{device}/{route_id}")));
    Ok(response)
}

// ---- webhooks -----------------------------------------------------------------------------

fn carrier_by_slug(slug: &str) -> Option<Carrier> {
    match slug {
        "aftership" => Some(Carrier::AfterShip),
        "easypost" => Some(Carrier::EasyPost),
        "shipengine" => Some(Carrier::ShipEngine),
        _ => None,
    }
}

async fn webhook(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(carrier) = carrier_by_slug(&slug) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown carrier; use aftership, easypost or shipengine",
        ));
    };
    let name = carrier::carrier_slug(carrier);
    let Some(verifier) = state.carriers.get(carrier) else {
        state.metrics.webhook(name, "rejected", "not_configured");
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{name} webhooks are not configured on this hub ([carriers.{name}])"),
        ));
    };
    let pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
        .collect();
    let event = match verifier.receive(&pairs, &body, now_ms()) {
        Ok(Some(event)) => event,
        Ok(None) => {
            state.metrics.webhook(name, "ignored", "not_a_tracking_update");
            return Ok((StatusCode::OK, axum::Json(json!({ "outcome": "ignored" }))).into_response());
        }
        Err(e) => {
            state.metrics.webhook(name, "rejected", e.reason());
            tracing::warn!(carrier = name, reason = e.reason(), error = %e, len = body.len(), "webhook rejected");
            let status = if e.is_authentication_failure() {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::BAD_REQUEST
            };
            return Err(ApiError::new(status, e.to_string()));
        }
    };
    let metrics = Arc::clone(&state.metrics);
    let raw = body.to_vec();
    let outcome = state
        .writer
        .call(move |ctx| -> Result<&'static str, ApiError> {
            let now = now_ms();
            let event = CarrierEvent { received_ms: Some(now), ..event };
            let normalized =
                serde_json::to_value(&event).map_err(|e| ApiError::unprocessable(e.to_string()))?;
            let tx = ctx.store.transaction()?;
            let new = tx.insert_carrier_event(
                carrier::carrier_slug(event.carrier),
                &event.event_key,
                event.tracking_number.as_str(),
                &raw,
                &normalized,
                event.occurred_ms,
                now,
            )?;
            if !new {
                return Ok("duplicate");
            }
            let outcome = match tx.shipment_by_tracking(&event.tracking_number)? {
                Some(shipment) => {
                    let effects = apply_to_shipment(&tx, ctx.domain, &shipment, &Input::Carrier(event), now)?;
                    tx.commit()?;
                    effects.record(&metrics);
                    "stored"
                }
                None => {
                    tx.commit()?;
                    "unmatched"
                }
            };
            Ok(outcome)
        })
        .await??;
    state.metrics.webhook(name, outcome, "ok");
    tracing::info!(carrier = name, outcome, "webhook accepted");
    Ok((StatusCode::OK, axum::Json(json!({ "outcome": outcome }))).into_response())
}

// ---- operations ---------------------------------------------------------------------------

async fn metrics(State(state): State<AppState>) -> Response {
    let depths =
        tokio::time::timeout(HEALTH_TIMEOUT, state.writer.call(|ctx| ctx.store.queue_depths())).await;
    if let Ok(Ok(Ok(depths))) = depths {
        state.metrics.store_depths(&depths);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    let db = tokio::time::timeout(HEALTH_TIMEOUT, state.writer.call(|ctx| ctx.store.schema_version())).await;
    let db_ok = matches!(db, Ok(Ok(Ok(_))));
    let mqtt_ok = state.metrics.is_mqtt_connected();
    let status = if db_ok && mqtt_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({ "database": db_ok, "mqtt": mqtt_ok }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_are_checked_per_channel() {
        assert!(check_contact(ContactChannel::Sms, "+15555550100").is_ok());
        assert!(check_contact(ContactChannel::Sms, "5555550100").is_err());
        assert!(check_contact(ContactChannel::Email, "a@example.com").is_ok());
        assert!(check_contact(ContactChannel::Email, "a example.com").is_err());
        assert!(check_contact(ContactChannel::Webhook, "https://example.com/hook").is_ok());
        assert!(check_contact(ContactChannel::Webhook, "ftp://example.com").is_err());
    }

    #[test]
    fn contacts_without_consent_are_refused_and_consent_applies_per_channel() {
        let body = br#"{"tracking_number": "1Z999AA10123456784", "contacts": {"sms": "+15555550100"}}"#;
        assert!(parse_json::<CreateShipment>(body).expect("json").validate().is_err());
        let body = br#"{"tracking_number": "1Z999AA10123456784",
            "contacts": {"sms": "+15555550100", "email": "a@example.com"}, "consent": {"sms": true}}"#;
        let new = parse_json::<CreateShipment>(body).expect("json").validate().expect("valid");
        assert!(new.contacts[&ContactChannel::Sms].consent);
        assert!(!new.contacts[&ContactChannel::Email].consent);
        assert_eq!(new.time_zone, "UTC");
    }
}
