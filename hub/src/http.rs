//! The hub's HTTP surface (axum): the order-system API, carrier webhooks, `/metrics`,
//! `/healthz`, and a slot for the tracking page.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/shipments` | create a shipment (tracking number, carrier, order id, contacts, consent, locale, time zone) → 201 |
//! | GET  | `/v1/shipments/{tracking}` | the shipment, its timeline, notifications and alerts |
//! | POST | `/v1/shipments/{tracking}/dispatched` | the order system says it left → milestone "dispatched" |
//! | POST | `/v1/shipments/{tracking}/links/revoke` | withdraw every tracking link sent so far |
//! | POST | `/v1/routes` | store a device's route, raise "dispatched" for its parcels, publish it signed and retained (and again whenever the broker may have lost it: see `ingest`) |
//! | POST | `/v1/devices/{device}/watch` | an operator looks at a van: a signed watch (QoS 1, not retained) asks it for its live position every few seconds for a while |
//! | GET  | `/v1/openapi.json` | the private API as OpenAPI 3.1 (see `openapi`) |
//! | POST | `/webhooks/{aftership,easypost,shipengine,shopify,woocommerce}` | carriers' tracking updates and order systems' fulfillments, signature checked on the raw body (see `inbound`) |
//! | GET  | `/v1/support/leak` | per milestone and channel: customers messaged, and those who still contacted support |
//! | POST | `/webhooks/{zendesk,freshdesk}` | helpdesks' new tickets naming a parcel: support contacts (see `inbound::helpdesks`) |
//! | GET  | `/metrics` | Prometheus text |
//! | GET  | `/healthz` | 200 when the broker session is up and the database answers |
//! | GET  | `/t/{token}` | the tracking page (see `notify::page`); a view while the van heads to that stop next asks the van for its live position by a signed watch |
//!
//! Handlers hold no SQL: their writes run on ingest's writer thread ([`Writer::call`]) in
//! one transaction each, so a webhook's dedupe, storage, reconciliation and enqueued
//! notifications commit together (invariants 4 and 7). Every body is bounded.
//!
//! Every refusal on the private listener is `{"error": "..."}` saying what to fix, axum's
//! own included (unknown path, wrong method, body over the limit, a path that is not
//! UTF-8): order systems parse one kind of error. Each private route carries a
//! `#[utoipa::path]` that `openapi` turns into the document; its tests fail when a route
//! has none, or names another scope than the router asks for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use doorstep_proto::{DeviceId, FleetId, RouteManifest, SigningKey, TrackingNumber, Watch};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::access::{self, AuditSubject, Guard, Required, Scope};
use crate::carrier;
use crate::config::RateLimits;
use crate::inbound;
use crate::ingest::{self, Effects, Writer, apply_to_shipment, now_ms};
use crate::limits;
use crate::metrics::Metrics;
use crate::model::Milestone;
use crate::openapi as doc;
use crate::reconcile::Input;
use crate::store::{Contact, ContactChannel, NewShipment, OutboxRow, Shipment, StoreError, TimelineEntry};

/// How long `/healthz` waits for the database.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest order id, locale and time zone accepted, bytes.
pub const MAX_FIELD_LEN: usize = 128;
/// Longest contact (phone, email, URL), bytes.
pub const MAX_CONTACT_LEN: usize = 512;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The single writer; it also publishes routes, through its outbound queue.
    pub writer: Writer,
    /// Signs routes (a route too big to send is refused before it is stored).
    pub hub_key: Arc<SigningKey>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The signed sources of `/webhooks/{source}`: carriers and order systems.
    pub sources: Arc<inbound::Sources>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// The operations console's options: its cookie, and the tile server for the fleet
    /// page's map (the tracking page's `[notify.brand] map_tiles`, when configured).
    pub console: crate::console::ConsoleOptions,
}

/// The public surface, the one the internet reaches: carrier webhooks, the tracking page
/// and provider callbacks (`page`, `callbacks`: `notify` brings their routes and state),
/// and `/healthz`, each with its per-client rate limit. The page is given the writer's
/// lane for watches ([`crate::notify::page::PageWatches`]), so a customer whose stop is
/// next gets a van sending its live position often. Nothing of the private API is
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
    let page = page.layer(axum::Extension(crate::notify::page::PageWatches::new(state.writer.clone())));
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(state)
        .merge(limits::limit(webhooks, hook_period, hook_burst, trust, "webhooks", &metrics))
        .merge(limits::limit(callbacks, hook_period, hook_burst, trust, "callbacks", &metrics))
        .merge(limits::limit(page, page_period, page_burst, trust, "tracking_page", &metrics))
        // Set last, so no rate limit layer wraps it: an unknown path is a static 404 that
        // costs nothing and does not use up a client's share of the tracking page.
        .fallback(|| async { access::not_found() })
}

/// The private surface for order systems and staff: every route needs an API key with
/// its scope (see `access`), and every write leaves an audit line. `/v1/openapi.json` and
/// `/healthz` need none (see `openapi` for why the document is open).
pub fn api_router(state: AppState) -> Router {
    let guard = Guard { writer: state.writer.clone(), metrics: Arc::clone(&state.metrics) };
    let need = |scope| middleware::from_fn_with_state(Required::new(&guard, scope), access::authorize);
    let orders = Router::new()
        .route("/v1/shipments", post(create_shipment))
        .route("/v1/shipments/{tracking}/dispatched", post(dispatched))
        .route("/v1/shipments/{tracking}/links/revoke", post(revoke_links))
        .route_layer(need(Scope::OrdersWrite));
    let reads = Router::new()
        .route("/v1/shipments/{tracking}", get(show_shipment))
        .route_layer(need(Scope::ShipmentsRead));
    let routes = Router::new()
        .route("/v1/routes", post(create_route))
        .route("/v1/devices/{device}/watch", post(watch_device))
        .route_layer(need(Scope::RoutesWrite));
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/support/leak", get(support_leak))
        .route_layer(need(Scope::MetricsRead));
    let alerts =
        Router::new().route("/v1/alerts/{id}/ack", post(ack_alert)).route_layer(need(Scope::AlertsWrite));
    let max_body_bytes = state.max_body_bytes;
    Router::new()
        .merge(orders)
        .merge(reads)
        .merge(routes)
        .merge(metrics)
        .merge(alerts)
        .route("/healthz", get(healthz))
        .route("/v1/openapi.json", get(doc::openapi_json))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(max_body_bytes, json_errors))
        .with_state(state.clone())
        // After the layers: the console answers in HTML pages, not the API's JSON errors.
        .merge(crate::console::router_with(&state, state.console.clone()))
}

/// Longest plain-text rejection [`json_errors`] reads to quote it, bytes. axum's own are
/// one line; anything longer is cut, not buffered.
const MAX_REJECTION_TEXT: usize = 4096;

/// Answers axum's own refusals on the private listener as the API's error body. They are
/// plain text or empty (405 and the default 404 have no body at all), and a client
/// should find out what to fix from every 4xx the same way.
async fn json_errors(State(max_body_bytes): State<usize>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), MAX_REJECTION_TEXT).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is larger than the {max_body_bytes} bytes this hub accepts ([http] max_body_bytes); send a smaller one"
        ),
        // axum adds `Allow` outside this layer, after the route's method router answered.
        StatusCode::METHOD_NOT_ALLOWED => format!(
            "this path does not take {method}; the Allow header lists the methods it takes, /v1/openapi.json what they need"
        ),
        _ if text.trim().is_empty() => format!(
            "{}; the routes and what they take are in /v1/openapi.json",
            status.canonical_reason().unwrap_or("refused")
        ),
        _ => format!("{}; the routes and what they take are in /v1/openapi.json", text.trim()),
    };
    ApiError::new(status, message).into_response()
}

/// Any path the private API does not have.
async fn unknown_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route on the hub's API; the routes are in /v1/openapi.json")
}

/// The body of every refusal of the private API.
#[derive(Debug, Serialize, ToSchema)]
#[schema(
    as = Error,
    example = json!({"error": "device van-9 is not registered; add it with `doorstep-hub device add`"})
)]
pub struct ErrorBody {
    /// What was wrong with which input, and what to do about it.
    pub error: String,
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
        (self.status, axum::Json(ErrorBody { error: self.message })).into_response()
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

/// Consent: one answer for every channel, or one per channel (`openapi::Consent`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Consent {
    All(bool),
    PerChannel(BTreeMap<ContactChannel, bool>),
}

/// A new shipment: the parcel, who to tell about it, and how.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "tracking_number": "1Z999AA10123456784", "carrier": "ups", "order_id": "A-1001",
    "contacts": {"sms": "+15555550100", "email": "kim@example.com"}, "consent": {"sms": true, "email": true},
    "locale": "en-US", "time_zone": "America/New_York",
}))]
struct CreateShipment {
    #[schema(value_type = doc::TrackingNumber)]
    tracking_number: TrackingNumber,
    /// The carrier's name as the order system knows it (`ups`, `usps`): letters, digits,
    /// `-` and `_`, at most 128.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    carrier: Option<String>,
    /// The order system's id: 1 to 128 bytes of UTF-8 without control characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$")]
    order_id: Option<String>,
    /// How to reach the customer, per channel. Needs `consent`.
    #[serde(default)]
    #[schema(value_type = doc::Contacts)]
    contacts: BTreeMap<ContactChannel, String>,
    /// Whether the customer agreed to messages: `true`/`false` for every channel in
    /// `contacts`, or per channel (`{"sms": true}`). Required with `contacts`.
    #[serde(default)]
    #[schema(value_type = Option<doc::Consent>)]
    consent: Option<Consent>,
    /// The customer's language (`en-US`) for messages and the tracking page; `en` when
    /// left out.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$", default = "en")]
    locale: Option<String>,
    /// The customer's IANA time zone (`America/New_York`) for quiet hours and local times;
    /// `UTC` when left out. A name the hub's time zone database lacks is refused.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9/_+-]{1,128}$", default = "UTC")]
    time_zone: Option<String>,
}

/// Longest push `external_id` (OneSignal allows 128 bytes).
pub const MAX_EXTERNAL_ID_LEN: usize = 128;

/// Whether `value` can be a contact on `channel`, as the API and the order systems'
/// webhooks accept one; the error says what it must be.
pub(crate) fn check_contact(channel: ContactChannel, value: &str) -> Result<(), String> {
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
        ContactChannel::Push => {
            value.len() <= MAX_EXTERNAL_ID_LEN && value.bytes().all(|b| b.is_ascii_graphic())
        }
    };
    if ok {
        Ok(())
    } else {
        let rule = match channel {
            ContactChannel::Sms | ContactChannel::Whatsapp => "an E.164 phone number (+15555550100)",
            ContactChannel::Email => "an email address",
            ContactChannel::Webhook => "an https:// URL",
            ContactChannel::Push => {
                "the customer's user id in the shipper's app (printable ASCII, at most 128 bytes)"
            }
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
        // Refused here, not found out later: the tracking page and quiet hours would fall
        // back to UTC, and a typo ("Europe/Berln") would text the customer at night.
        if jiff::tz::TimeZone::get(&time_zone).is_err() {
            return Err(ApiError::unprocessable(format!(
                "time_zone {time_zone:?} is not an IANA time zone this hub knows (such as Europe/Berlin or America/New_York)"
            )));
        }
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

/// A shipment was created.
#[derive(Debug, Serialize, ToSchema)]
struct Created {
    /// The hub's row id.
    id: i64,
    #[schema(value_type = doc::TrackingNumber)]
    tracking_number: TrackingNumber,
    #[schema(value_type = doc::Milestone)]
    milestone: Milestone,
}

/// Create a shipment
///
/// The order system registers a parcel with who to tell about it: contacts per channel
/// and the customer's consent. A tracking number can be created once (409 after).
#[utoipa::path(
    post,
    path = "/v1/shipments",
    operation_id = "createShipment",
    tag = "shipments",
    request_body = CreateShipment,
    responses(
        (status = 201, description = "The shipment exists now, at milestone `created`.", body = Created,
            links(
                ("ShowShipment" = (operation_id = "showShipment",
                    parameters(("tracking" = "$response.body#/tracking_number")))),
                ("MarkDispatched" = (operation_id = "markDispatched",
                    parameters(("tracking" = "$response.body#/tracking_number")))),
                ("RevokeLinks" = (operation_id = "revokeLinks",
                    parameters(("tracking" = "$response.body#/tracking_number")))),
            )),
        (status = 409, description = "A shipment with this tracking number exists.", body = ErrorBody),
        (status = 413, description = "The body is over `[http] max_body_bytes`.", body = ErrorBody),
        (status = 422, description = "The body is not JSON of this shape, or a field is invalid (the message names it).", body = ErrorBody),
    ),
    security(("api_key" = [Scope::OrdersWrite.as_str()])),
)]
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
    let created = Created { id, tracking_number: tracking, milestone: Milestone::Created };
    let mut response = (StatusCode::CREATED, axum::Json(created)).into_response();
    response.extensions_mut().insert(subject);
    Ok(response)
}

/// A shipment with everything the hub knows about it.
#[derive(Debug, Serialize, ToSchema)]
struct ShipmentView {
    #[schema(value_type = doc::Shipment)]
    shipment: Shipment,
    /// What happened, oldest first.
    #[schema(value_type = Vec<doc::TimelineEntry>)]
    timeline: Vec<TimelineEntry>,
    /// The customer messages queued or sent.
    #[schema(value_type = Vec<doc::Notification>)]
    notifications: Vec<OutboxRow>,
    /// Operations alerts raised for the parcel.
    alerts: Vec<Alert>,
    /// Helpdesk tickets the customer opened about the parcel.
    support_contacts: Vec<SupportContactView>,
}

/// A helpdesk ticket that named the parcel.
#[derive(Debug, Serialize, ToSchema)]
struct SupportContactView {
    /// The helpdesk (`zendesk`, `freshdesk`).
    helpdesk: String,
    /// The helpdesk's ticket id.
    ticket: String,
    /// When the customer opened it, ms since the Unix epoch.
    opened_ms: i64,
}

/// An operations alert about a shipment.
#[derive(Debug, Serialize, ToSchema)]
struct Alert {
    /// A short snake_case code (`carrier_delivered_device_away`).
    code: String,
    /// One sentence for the operator.
    detail: String,
}

/// Show a shipment
///
/// The shipment with its contacts, timeline, customer messages and operations alerts.
#[utoipa::path(
    get,
    path = "/v1/shipments/{tracking}",
    operation_id = "showShipment",
    tag = "shipments",
    params(("tracking" = doc::TrackingNumber, Path, description = "The parcel's tracking number.")),
    responses(
        (status = 200, description = "The shipment.", body = ShipmentView),
        (status = 400, description = "The path is not valid percent-encoded UTF-8.", body = ErrorBody),
        (status = 404, description = "No shipment has this tracking number, or it is not one.", body = ErrorBody),
    ),
    security(("api_key" = [Scope::ShipmentsRead.as_str()])),
)]
async fn show_shipment(
    State(state): State<AppState>,
    Path(tracking): Path<String>,
) -> Result<Response, ApiError> {
    let tracking =
        TrackingNumber::new(tracking).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let shown = state
        .writer
        .call(move |ctx| -> Result<Option<ShipmentView>, StoreError> {
            let Some(shipment) = ctx.store.shipment_by_tracking(&tracking)? else { return Ok(None) };
            let timeline = ctx.store.timeline(shipment.id)?;
            let notifications = ctx.store.outbox_for_shipment(shipment.id)?;
            let alerts = ctx
                .store
                .alerts_for_shipment(shipment.id)?
                .into_iter()
                .map(|(code, detail)| Alert { code, detail })
                .collect();
            let support_contacts = ctx
                .store
                .support_contacts(shipment.id)?
                .into_iter()
                .map(|c| SupportContactView { helpdesk: c.source, ticket: c.ticket, opened_ms: c.opened_ms })
                .collect();
            Ok(Some(ShipmentView { shipment, timeline, notifications, alerts, support_contacts }))
        })
        .await??;
    match shown {
        Some(view) => Ok(axum::Json(view).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no shipment with this tracking number")),
    }
}

/// When the parcel left; the body may be left out altogether.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DispatchedBody {
    /// When it left, ms since the Unix epoch; now when left out.
    #[serde(default, deserialize_with = "whole_number")]
    at_ms: Option<i64>,
}

/// `at_ms` as JSON Schema reads "integer": `1764662400000.0` is one (Python's
/// `time.time() * 1000` writes that), `1.5`, `"1"` and numbers beyond `i64` are not.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    // 2^63 is exactly representable; every whole f64 in [-2^63, 2^63) fits an i64.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    let value = serde_json::Value::deserialize(deserializer)?;
    let whole = match &value {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Number(n) => n.as_i64().or_else(|| {
            let f = n.as_f64().filter(|f| f.fract() == 0.0 && (-LIMIT..LIMIT).contains(f))?;
            #[allow(clippy::cast_possible_truncation, reason = "whole and within i64, checked above")]
            Some(f as i64)
        }),
        _ => None,
    };
    match whole {
        Some(whole) => Ok(Some(whole)),
        None => Err(serde::de::Error::custom(format!(
            "at_ms must be whole milliseconds since the Unix epoch, not {value}"
        ))),
    }
}

/// The shipment's milestone after the call.
#[derive(Debug, Serialize, ToSchema)]
struct DispatchedReply {
    #[schema(value_type = doc::Milestone)]
    milestone: Milestone,
}

/// Mark a shipment dispatched
///
/// The order system says the parcel left. The customer is told once (milestone
/// `dispatched`); a shipment further along stays where it is.
#[utoipa::path(
    post,
    path = "/v1/shipments/{tracking}/dispatched",
    operation_id = "markDispatched",
    tag = "shipments",
    params(("tracking" = doc::TrackingNumber, Path, description = "The parcel's tracking number.")),
    request_body(content = Option<DispatchedBody>, description = "Optional: when the parcel left."),
    responses(
        (status = 200, description = "Recorded; the milestone the shipment is at now.", body = DispatchedReply),
        (status = 400, description = "The path is not valid percent-encoded UTF-8.", body = ErrorBody),
        (status = 404, description = "No shipment has this tracking number, or it is not one.", body = ErrorBody),
        (status = 413, description = "The body is over `[http] max_body_bytes`.", body = ErrorBody),
        (status = 422, description = "The body is not JSON of this shape.", body = ErrorBody),
    ),
    security(("api_key" = [Scope::OrdersWrite.as_str()])),
)]
async fn dispatched(
    State(state): State<AppState>,
    Path(tracking): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tracking =
        TrackingNumber::new(tracking).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    // No body, or JSON `null`, is "left now": the documented `Option<DispatchedBody>`.
    let body = if body.is_empty() { None } else { parse_json::<Option<DispatchedBody>>(&body)? };
    let body = body.unwrap_or_default();
    let at_ms = body.at_ms.unwrap_or_else(now_ms);
    let metrics = Arc::clone(&state.metrics);
    let milestone = state
        .writer
        .call(move |ctx| -> Result<Milestone, ApiError> {
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
    Ok(axum::Json(DispatchedReply { milestone }).into_response())
}

/// When the links were withdrawn.
#[derive(Debug, Serialize, ToSchema)]
struct LinksRevoked {
    /// Links sent before this time, ms since the Unix epoch, answer 410 from now on.
    links_revoked_ms: i64,
}

/// Withdraw a shipment's tracking links
///
/// Every tracking link sent for the parcel so far stops working (410); links in later
/// messages work. For a link that reached the wrong person.
#[utoipa::path(
    post,
    path = "/v1/shipments/{tracking}/links/revoke",
    operation_id = "revokeLinks",
    tag = "shipments",
    params(("tracking" = doc::TrackingNumber, Path, description = "The parcel's tracking number.")),
    responses(
        (status = 200, description = "Withdrawn.", body = LinksRevoked),
        (status = 400, description = "The path is not valid percent-encoded UTF-8.", body = ErrorBody),
        (status = 404, description = "No shipment has this tracking number, or it is not one.", body = ErrorBody),
    ),
    security(("api_key" = [Scope::OrdersWrite.as_str()])),
)]
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
        Some(at_ms) => Ok(axum::Json(LinksRevoked { links_revoked_ms: at_ms }).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no shipment with this tracking number")),
    }
}

// ---- alerts -------------------------------------------------------------------------------

/// An acknowledged operations alert.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertAcknowledged {
    /// The alert.
    pub alert_id: i64,
    /// When it was acknowledged, ms since the Unix epoch.
    pub acknowledged_ms: i64,
    /// The API key's name that acknowledged it.
    pub acknowledged_by: Option<String>,
    /// True when it had been acknowledged before this request (nothing changed).
    pub already: bool,
}

/// Acknowledges an operations alert: someone is on it, so its escalation stops.
#[utoipa::path(
    post,
    path = "/v1/alerts/{id}/ack",
    operation_id = "ackAlert",
    tag = "alerts",
    params(("id" = i64, Path, description = "The alert's id, as its message names it.")),
    responses(
        (status = 200, description = "Acknowledged (or already).", body = AlertAcknowledged),
        (status = 400, description = "The id is not a number.", body = ErrorBody),
        (status = 404, description = "No alert has this id.", body = ErrorBody),
    ),
    security(("api_key" = [Scope::AlertsWrite.as_str()])),
)]
pub(crate) async fn ack_alert(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    axum::Extension(caller): axum::Extension<access::Caller>,
) -> Result<Response, ApiError> {
    let by = caller.0;
    let result = state
        .writer
        .call(move |ctx| -> Result<(crate::store::Ack, i64, String), StoreError> {
            let now = now_ms();
            Ok((ctx.store.ack_alert(id, &by, now)?, now, by))
        })
        .await??;
    let body = match result {
        (crate::store::Ack::Acknowledged, now, by) => {
            tracing::info!(alert = id, by = %by, "operations alert acknowledged; its escalation stops");
            AlertAcknowledged {
                alert_id: id,
                acknowledged_ms: now,
                acknowledged_by: Some(by),
                already: false,
            }
        }
        (crate::store::Ack::Already { by, at_ms }, _, _) => {
            AlertAcknowledged { alert_id: id, acknowledged_ms: at_ms, acknowledged_by: by, already: true }
        }
        (crate::store::Ack::Missing, _, _) => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "no operations alert has this id"));
        }
    };
    Ok(axum::Json(body).into_response())
}

// ---- routes -------------------------------------------------------------------------------

/// A van's route for the shift, to sign and send to it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "fleet": "demo", "device": "van-1",
    "route": {"route_id": "r-2026-11-21-van1", "stops": [
        {"stop_id": "s1", "lat": 47.1, "lon": 8.5, "tracking_numbers": ["1Z999AA10123456784"], "arrival_m": 60},
    ]},
}))]
struct CreateRoute {
    #[schema(value_type = doc::FleetId)]
    fleet: FleetId,
    #[schema(value_type = doc::DeviceId)]
    device: DeviceId,
    #[schema(value_type = doc::RouteManifest)]
    route: RouteManifest,
}

/// The route was stored and queued for the van.
#[derive(Debug, Serialize, ToSchema)]
struct RoutePublished {
    /// The route message's issue time, ms since the Unix epoch.
    issued_ms: i64,
    /// Shipments on the route that the hub marked dispatched now.
    shipments_dispatched: usize,
}

/// Post a van's route
///
/// The hub stores the route, marks its parcels dispatched, signs it and publishes it,
/// retained, to the van (again whenever the broker may have lost it). The device must be
/// registered (`doorstep-hub device add`) in that fleet and not revoked.
#[utoipa::path(
    post,
    path = "/v1/routes",
    operation_id = "postRoute",
    tag = "routes",
    request_body = CreateRoute,
    responses(
        (status = 201, description = "Stored, signed and queued for the van.", body = RoutePublished),
        (status = 413, description = "The body is over `[http] max_body_bytes`.", body = ErrorBody),
        (status = 422, description = "The body is not a valid route, the signed route would be too big to send, or the device is not registered in this fleet or revoked (the message says which).", body = ErrorBody),
    ),
    security(("api_key" = [Scope::RoutesWrite.as_str()])),
)]
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
    let published = RoutePublished { issued_ms, shipments_dispatched: dispatched };
    let mut response = (StatusCode::CREATED, axum::Json(published)).into_response();
    response.extensions_mut().insert(AuditSubject(format!("route {fleet}/{device}/{route_id}")));
    Ok(response)
}

// ---- devices ------------------------------------------------------------------------------

/// Longest watch an operator may ask for, seconds (the wire's limit).
pub const MAX_WATCH_S: u16 = doorstep_proto::hub::MAX_WATCH_S;
/// Default watch an operator asks for, seconds.
pub const DEFAULT_WATCH_S: u16 = 300;
/// Default pace of an operator's watch, seconds between live positions.
pub const DEFAULT_WATCH_EVERY_S: u16 = 5;
/// Fastest pace an operator may ask for, seconds: each live position costs the van about
/// 258 bytes, so every 2 s is about 7.7 kB a minute.
pub const MIN_WATCH_EVERY_S: u16 = 2;
/// Slowest pace an operator may ask for, seconds (slower is the van's own pace).
pub const MAX_WATCH_EVERY_S: u16 = 60;

/// How long to watch a van, and how often it should send meanwhile; the body may be left
/// out altogether.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"for_s": 300, "every_s": 5}))]
struct WatchBody {
    /// How long, seconds: 1 to 900 (300 when left out). Ask again to watch longer.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 900, default = 300)]
    for_s: Option<u16>,
    /// Seconds between the van's live positions meanwhile: 2 to 60 (5 when left out).
    #[serde(default)]
    #[schema(minimum = 2, maximum = 60, default = 5)]
    every_s: Option<u16>,
}

/// The watch was signed and queued for the van.
#[derive(Debug, Serialize, ToSchema)]
struct WatchQueued {
    #[schema(value_type = doc::DeviceId)]
    device: DeviceId,
    /// When the hub issued it, ms since the Unix epoch.
    issued_ms: i64,
    /// How long it lasts, seconds.
    for_s: u16,
    /// Seconds between live positions meanwhile.
    every_s: u16,
    /// When it ends, ms since the Unix epoch (the van ends it by its own clock too, also
    /// when it gets it late).
    until_ms: i64,
}

/// Watch a van
///
/// An operator is looking at the van: the hub signs a watch and sends it to the van
/// (QoS 1, not retained), which then sends its live position every `every_s` seconds for
/// `for_s`, and falls back to its own pace by itself. A van out of coverage gets the
/// watch when it is back, if it is not over by then. The position arrives on the van's
/// `pos` topic as always; each costs the van about 258 bytes. The device must be
/// registered (`doorstep-hub device add`) and not revoked; its fleet is the registered one.
#[utoipa::path(
    post,
    path = "/v1/devices/{device}/watch",
    operation_id = "watchDevice",
    tag = "devices",
    params(("device" = doc::DeviceId, Path, description = "The van's device id.")),
    request_body(content = Option<WatchBody>, description = "Optional: how long, and how often."),
    responses(
        (status = 202, description = "Signed and queued for the van.", body = WatchQueued),
        (status = 400, description = "The path is not valid percent-encoded UTF-8.", body = ErrorBody),
        (status = 404, description = "No device has this id, or it is not one.", body = ErrorBody),
        (status = 413, description = "The body is over `[http] max_body_bytes`.", body = ErrorBody),
        (status = 422, description = "The body is not JSON of this shape, a value is out of range, or the device is revoked (the message says which).", body = ErrorBody),
    ),
    security(("api_key" = [Scope::RoutesWrite.as_str()])),
)]
async fn watch_device(
    State(state): State<AppState>,
    Path(device): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let device = DeviceId::new(device).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let body = if body.is_empty() { None } else { parse_json::<Option<WatchBody>>(&body)? };
    let body = body.unwrap_or_default();
    let for_s = body.for_s.unwrap_or(DEFAULT_WATCH_S);
    if !(1..=MAX_WATCH_S).contains(&for_s) {
        return Err(ApiError::unprocessable(format!(
            "for_s must be 1 to {MAX_WATCH_S} seconds; ask again to watch longer"
        )));
    }
    let every_s = body.every_s.unwrap_or(DEFAULT_WATCH_EVERY_S);
    if !(MIN_WATCH_EVERY_S..=MAX_WATCH_EVERY_S).contains(&every_s) {
        return Err(ApiError::unprocessable(format!(
            "every_s must be {MIN_WATCH_EVERY_S} to {MAX_WATCH_EVERY_S} seconds between live positions"
        )));
    }
    let issued_ms = now_ms();
    let watch = Watch { device: device.clone(), issued_ms, for_s, every_s };
    let who = device.clone();
    state
        .writer
        .call(move |ctx| -> Result<(), ApiError> {
            let fleet = match ctx.store.device(&who)? {
                Some(d) if d.status == crate::store::DeviceStatus::Active => d.fleet,
                Some(_) => return Err(ApiError::unprocessable(format!("device {who} is revoked"))),
                None => {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("device {who} is not registered; add it with `doorstep-hub device add`"),
                    ));
                }
            };
            ctx.publish_watch(&fleet, watch).map_err(|e| {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the watch could not be queued: {e}"))
            })
        })
        .await??;
    tracing::info!(device = %device, for_s, every_s, "watch published: an operator is looking");
    let until_ms = issued_ms + i64::from(for_s) * 1000;
    let queued = WatchQueued { device: device.clone(), issued_ms, for_s, every_s, until_ms };
    let mut response = (StatusCode::ACCEPTED, axum::Json(queued)).into_response();
    response.extensions_mut().insert(AuditSubject(format!("watch {device}")));
    Ok(response)
}

// ---- webhooks -----------------------------------------------------------------------------

/// A delivery from a carrier or an order system, at `/webhooks/{source}`: verified on
/// the raw body, parsed, deduped and applied by `inbound` in one writer transaction.
async fn webhook(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(source) = state.sources.get(&slug) else {
        let known = inbound::SLUGS.contains(&slug.as_str());
        if known {
            state.metrics.webhook(&slug, "rejected", "not_configured");
        }
        let message = if known {
            format!("{slug} webhooks are not configured on this hub (its secret in hub.toml)")
        } else {
            format!("unknown source; use one of {}", inbound::SLUGS.join(", "))
        };
        return Err(ApiError::new(StatusCode::NOT_FOUND, message));
    };
    let name = source.slug();
    let pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
        .collect();
    let received = match source.receive(&pairs, &body, now_ms()) {
        Ok(received) => received,
        Err(e) => {
            state.metrics.webhook(name, "rejected", e.reason);
            tracing::warn!(source = name, reason = e.reason, error = %e, len = body.len(), "webhook rejected");
            let status = if e.authentication { StatusCode::UNAUTHORIZED } else { StatusCode::BAD_REQUEST };
            return Err(ApiError::new(status, e.message));
        }
    };
    if let inbound::Inbound::Ignored(why) = received.item {
        state.metrics.webhook(name, "ignored", why);
        return Ok((StatusCode::OK, axum::Json(json!({ "outcome": "ignored", "why": why }))).into_response());
    }
    let metrics = Arc::clone(&state.metrics);
    let sources = Arc::clone(&state.sources);
    let raw = body.to_vec();
    let outcome = state
        .writer
        .call(move |ctx| -> Result<&'static str, ApiError> {
            let tx = ctx.store.transaction()?;
            let (outcome, effects) =
                inbound::apply(&tx, ctx.domain, &sources.defaults, name, received, &raw, now_ms())?;
            if outcome != inbound::Outcome::Duplicate {
                tx.commit()?;
                effects.record(&metrics);
            }
            Ok(outcome.as_str())
        })
        .await??;
    state.metrics.webhook(name, outcome, "ok");
    tracing::info!(source = name, outcome, "webhook accepted");
    Ok((StatusCode::OK, axum::Json(json!({ "outcome": outcome }))).into_response())
}

// ---- operations ---------------------------------------------------------------------------

/// Prometheus metrics
///
/// Counters and gauges in the Prometheus text format, for a scraper with a
/// `metrics:read` key.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4.", body = String,
            content_type = "text/plain"),
    ),
    security(("api_key" = [Scope::MetricsRead.as_str()])),
)]
async fn metrics(State(state): State<AppState>) -> Response {
    let since = now_ms().saturating_sub(LEAK_WINDOW_DAYS * DAY_MS);
    let read = state
        .writer
        .call(move |ctx| Ok::<_, StoreError>((ctx.store.queue_depths()?, ctx.store.support_leak(since)?)));
    if let Ok(Ok(Ok((depths, leak)))) = tokio::time::timeout(HEALTH_TIMEOUT, read).await {
        state.metrics.store_depths(&depths);
        state.metrics.support_leak(&leak);
    }
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.metrics.render()).into_response()
}

/// The leak report's default window, days (also `/metrics`').
pub const LEAK_WINDOW_DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;

/// The leak report's window.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct LeakQuery {
    /// Messages sent in the last this many days (1 to 365; default 30).
    days: Option<i64>,
}

/// One line of the leak report.
#[derive(Debug, Serialize, ToSchema)]
struct LeakLine {
    /// The milestone the message was about (`nearby`, `delivered`, `delayed`, ...).
    milestone: String,
    /// The channel it went out on; `all` counts each shipment once whatever its channels.
    channel: String,
    /// Shipments whose customer was sent this message.
    shipments: i64,
    /// Of those, shipments whose customer opened a helpdesk ticket about the parcel at or
    /// after the message.
    contacted: i64,
    /// `contacted / shipments`.
    share: f64,
}

/// The leak report.
#[derive(Debug, Serialize, ToSchema)]
struct LeakReport {
    /// The window, days.
    days: i64,
    /// Messages counted were sent at or after this time, ms since the Unix epoch.
    since_ms: i64,
    /// Per milestone and channel.
    lines: Vec<LeakLine>,
}

/// Support leak
///
/// Which customer messages still leave customers asking support: for each milestone and
/// channel, the shipments whose customer was sent that message in the window, and those
/// whose customer then opened a helpdesk ticket naming the parcel (Zendesk and Freshdesk
/// webhooks at `/webhooks/zendesk` and `/webhooks/freshdesk`). The same figures are the
/// `doorstep_hub_support_leak_*` gauges of `/metrics` (30 days).
#[utoipa::path(
    get,
    path = "/v1/support/leak",
    operation_id = "supportLeak",
    tag = "operations",
    params(LeakQuery),
    responses(
        (status = 200, description = "The report.", body = LeakReport),
        (status = 400, description = "`days` is not 1 to 365.", body = ErrorBody),
    ),
    security(("api_key" = [Scope::MetricsRead.as_str()])),
)]
async fn support_leak(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<LeakQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let query = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let days = query.days.unwrap_or(LEAK_WINDOW_DAYS);
    if !(1..=365).contains(&days) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "days must be 1 to 365"));
    }
    let since_ms = now_ms().saturating_sub(days * DAY_MS);
    let rows = state.writer.call(move |ctx| ctx.store.support_leak(since_ms)).await??;
    let lines = rows
        .into_iter()
        .map(|r| LeakLine {
            share: r.share(),
            milestone: r.milestone.name().into_owned(),
            channel: r.channel.name().into_owned(),
            shipments: r.shipments,
            contacted: r.contacted,
        })
        .collect();
    Ok(axum::Json(LeakReport { days, since_ms, lines }).into_response())
}

/// What `/healthz` found.
#[derive(Debug, Serialize, ToSchema)]
struct Health {
    /// The database answered within [`HEALTH_TIMEOUT`].
    database: bool,
    /// The broker session is up.
    mqtt: bool,
}

/// Health
///
/// 200 when the database answers and the broker session is up, 503 otherwise; the body
/// says which. Needs no key (load balancers and systemd probes call it).
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "health",
    tag = "operations",
    responses(
        (status = 200, description = "Healthy.", body = Health),
        (status = 503, description = "The database or the broker is not there.", body = Health),
    ),
)]
async fn healthz(State(state): State<AppState>) -> Response {
    let db = tokio::time::timeout(HEALTH_TIMEOUT, state.writer.call(|ctx| ctx.store.schema_version())).await;
    let database = matches!(db, Ok(Ok(Ok(_))));
    let mqtt = state.metrics.is_mqtt_connected();
    let status = if database && mqtt { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(Health { database, mqtt })).into_response()
}

/// A private API on a fresh database, for the tests of this module and of `openapi`.
#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
