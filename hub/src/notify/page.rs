//! The tracking page and the provider callbacks, as two axum routers for the hub's public
//! listener (each with its own rate limit there).
//!
//! | method | path | what |
//! |---|---|---|
//! | GET  | `/t/{token}` | the tracking page: milestone and progress bar, arrival window, timeline in the recipient's time zone, "verified at your door" once delivered, forms for the customer's instructions and "not at home today"; while the van heads to this stop next, how far away it is (and the van is asked to send its position every few seconds) |
//! | GET  | `/t/{token}/photo` | the delivery photo, when it arrived and matches the signed hash |
//! | POST | `/callbacks/twilio/status` | Twilio message status (signed) → outcome log |
//! | POST | `/callbacks/twilio/inbound` | Twilio inbound SMS (signed): STOP opts out, START opts back in |
//! | POST | `/callbacks/sendgrid/events` | SendGrid Event Webhook (signed, ECDSA) → outcome log, unsubscribes |
//! | GET  | `/callbacks/whatsapp` | Meta's webhook verification: echoes `hub.challenge` for the configured `verify_token` |
//! | POST | `/callbacks/whatsapp` | WhatsApp Cloud API statuses (signed, `X-Hub-Signature-256`) → outcome log; STOP opts out |
//!
//! Every callback checks its signature on the raw body before parsing it, and counts
//! each delivery on `doorstep_hub_webhooks_total` (provider, `stored` or `rejected`,
//! reason). A provider that is not configured is a plain 404.
//!
//! The page is rendered from the templates in `hub/templates/` (escaped by default; see
//! `page/view.rs`) in the fleet's look ([`Brand`], `[notify.brand]`), with its words in
//! `page/words.rs`. It never shows the address, the stop's coordinates, the device or the
//! carrier's free text: only milestone names, times, the van's distance from the address
//! at handover, and, only while the van is heading to this customer's stop next (see
//! [`next_stop`]) and the parcel is not delivered, how far away the van is and how old
//! that position is, and where the fleet configured a tile server, the van on one map tile
//! ([`map`]): never the van for another customer's stop, never after delivery.
//! Meanwhile the page reloads itself every few seconds, and a
//! view asks the van, through a signed watch the writer publishes, to send its live
//! position every [`PAGE_WATCH_EVERY_S`] seconds for [`PAGE_WATCH_FOR_S`], asking again at
//! most once per van every half watch while views continue ([`PageWatches`]). A bad token
//! is a plain 404, an expired or withdrawn one (the order system's
//! `POST /v1/shipments/{tracking}/links/revoke`) a plain 410; neither says anything about
//! the shipment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use doorstep_proto::{DeviceId, FleetId, Stop, StopId, Watch};

use super::config::NotifySettings;
use super::db::NotifyDb;
use super::token::TokenError;
use super::{NotifyError, now_ms};
use crate::ingest::Writer;
use crate::metrics::Metrics;
use crate::model::Milestone;
use crate::store::{LivePosition, Shipment, Store, TimelineEntry};

pub mod brand;
pub mod map;
mod view;
mod words;

pub use brand::Brand;

/// Largest callback body accepted, bytes (SendGrid batches events; Twilio's are small).
pub const MAX_CALLBACK_BODY: usize = 1024 * 1024;
/// Most timeline entries shown.
pub const MAX_TIMELINE: usize = 50;
/// How long the watch a page view asks for lasts, seconds. Views ask again every half
/// watch, so a customer who keeps the page open keeps the van sending, and one who
/// leaves costs at most this much more of it.
pub const PAGE_WATCH_FOR_S: u16 = 120;
/// How often the van sends its live position while watched from the page, seconds: with
/// the page reloading as often, the position a customer sees is about ten seconds old at
/// most. About 3 kB of the van's data a minute.
pub const PAGE_WATCH_EVERY_S: u16 = 5;
/// How often the page reloads itself while it shows the van, seconds.
pub const LIVE_REFRESH_S: u16 = 5;
/// How often the page reloads itself while the parcel is out for delivery and the van is
/// not heading to this stop yet, seconds: the arrival window moves with the route.
pub const OUT_FOR_DELIVERY_REFRESH_S: u16 = 60;
/// A live position older than this is not shown: the van is out of coverage, or has no
/// fix, and a distance from then would mislead.
pub const LIVE_MAX_AGE_MS: i64 = 15 * 60_000;
/// Vans [`PageWatches`] remembers having asked; past it, those asked longer than a watch
/// ago are forgotten.
pub const MAX_PACED_VANS: usize = 10_000;

/// What the page and callback handlers share.
#[derive(Debug, Clone)]
pub struct NotifyState {
    pub(crate) settings: Arc<NotifySettings>,
    pub(crate) db: Arc<NotifyDb>,
    pub(crate) metrics: Arc<Metrics>,
    /// For a callback that answers through the vendor's API (a WhatsApp reply).
    pub(crate) client: reqwest::Client,
}

impl NotifyState {
    /// State over an open database.
    pub fn new(
        settings: Arc<NotifySettings>,
        db: Arc<NotifyDb>,
        metrics: Arc<Metrics>,
        client: reqwest::Client,
    ) -> Self {
        Self { settings, db, metrics, client }
    }
}

/// The tracking page's router (customers' browsers: rate limited per client).
pub fn page_router(state: NotifyState) -> Router {
    Router::new()
        .route("/t/{token}", get(tracking_page))
        .route("/t/{token}/photo", get(tracking_photo))
        .route("/t/{token}/instructions", axum::routing::post(super::actions::instructions))
        .route("/t/{token}/not-home", axum::routing::post(super::actions::not_home))
        .layer(DefaultBodyLimit::max(MAX_CALLBACK_BODY))
        .with_state(state)
}

/// The provider callbacks' router (providers' servers: bursts from few addresses).
/// Each configured provider's routes, under `/callbacks/{name}/...` (see
/// [`super::Provider::callbacks`]).
pub fn callbacks_router(state: NotifyState) -> Router {
    state.settings.providers.callbacks().layer(DefaultBodyLimit::max(MAX_CALLBACK_BODY)).with_state(state)
}

/// A plain-text answer.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

/// A 500 for a failure of the hub's own (logged, not shown).
pub(crate) fn internal(error: &NotifyError) -> Response {
    tracing::error!(%error, "notification handler failed");
    plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
}

// ---- tracking page ------------------------------------------------------------------

const PAGE_HEADERS: [(header::HeaderName, &str); 4] = [
    (header::CACHE_CONTROL, "no-store"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::HeaderName::from_static("x-robots-tag"), "noindex"),
];

/// An HTML page of the tracking page's, with its headers: the Content-Security-Policy
/// is the brand's ([`Brand::csp`]: images from this hub, the logo's and the map tiles'
/// origins; forms to this hub; no scripts).
fn html_page(status: StatusCode, brand: &Brand, html: String) -> Response {
    (
        status,
        PAGE_HEADERS,
        [(header::CONTENT_SECURITY_POLICY, brand.csp()), (header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

pub(super) fn error_page(status: StatusCode, brand: &Brand, message: &str) -> Response {
    match view::render_error(brand, message) {
        Ok(html) => html_page(status, brand, html),
        Err(error) => {
            tracing::error!(%error, "cannot render the tracking page's error page");
            plain(status, "This page is not available.\n")
        }
    }
}

fn token_error(brand: &Brand, e: TokenError) -> Response {
    match e {
        TokenError::Invalid => error_page(StatusCode::NOT_FOUND, brand, "This tracking link is not valid."),
        TokenError::Expired => error_page(StatusCode::GONE, brand, "This tracking link has expired."),
    }
}

/// The handover a page shows as proof: time, distance, photo hash.
#[derive(Debug, Clone, PartialEq)]
struct Proof {
    at_ms: i64,
    distance_m: Option<u64>,
    photo: Option<String>,
    photo_ok: bool,
}

fn proof_of(
    shipment: &Shipment,
    timeline: &[TimelineEntry],
    store: &Store,
) -> Result<Option<Proof>, NotifyError> {
    if shipment.milestone != Milestone::Delivered {
        return Ok(None);
    }
    let Some(entry) =
        timeline.iter().rev().find(|e| e.source == "device" && e.kind == "delivered_at_address")
    else {
        return Ok(None);
    };
    let photo = entry.detail.get("photo_sha256").and_then(|v| v.as_str()).map(str::to_owned);
    let photo_ok = match &photo {
        Some(hash) => store.photo_is_proof(hash)?,
        None => false,
    };
    Ok(Some(Proof {
        at_ms: entry.occurred_ms,
        distance_m: entry.detail.get("distance_m").and_then(serde_json::Value::as_u64),
        photo,
        photo_ok,
    }))
}

// ---- the van on its way ----------------------------------------------------------------

/// The stop a van is heading to next on its route: the first stop after the furthest one
/// it is done with (`done`: a parcel handed over or given up there), or the first stop when
/// it has done none; `None` once it is past the last. A stop the driver skipped is not
/// "next" once a later stop is done: its customer is not shown a van serving others
/// (should the driver go back, that stop is simply not shown live).
pub fn next_stop<'a>(stops: &'a [Stop], done: &[StopId]) -> Option<&'a StopId> {
    let furthest = stops.iter().rposition(|s| done.contains(&s.stop_id));
    stops.get(furthest.map_or(0, |i| i + 1)).map(|s| &s.stop_id)
}

/// The van heading to a shipment's stop next, as the hub knows it.
#[derive(Debug, Clone, PartialEq)]
struct NextStop {
    fleet: FleetId,
    device: DeviceId,
    /// The stop's coordinates (never shown; the distance is).
    stop: (f64, f64),
    position: Option<LivePosition>,
}

/// What the page shows of a van heading to this stop next.
#[derive(Debug, Clone, Copy, PartialEq)]
struct VanView {
    /// Metres from the address, when the hub has a recent position.
    distance_m: Option<f64>,
    /// Age of that position, seconds (by its GNSS time).
    age_s: Option<i64>,
    /// The van's recent position, for the map tile only (never written on the page).
    at: Option<(f64, f64)>,
}

impl NextStop {
    fn view(&self, now_ms: i64) -> VanView {
        let fresh = self.position.filter(|p| now_ms - p.utc_ms <= LIVE_MAX_AGE_MS);
        VanView {
            distance_m: fresh.map(|p| {
                let (lat, lon) = (f64::from(p.lat_e7) / 1e7, f64::from(p.lon_e7) / 1e7);
                great_circle_m(lat, lon, self.stop.0, self.stop.1)
            }),
            age_s: fresh.map(|p| (now_ms - p.utc_ms).max(0) / 1000),
            at: fresh.map(|p| (f64::from(p.lat_e7) / 1e7, f64::from(p.lon_e7) / 1e7)),
        }
    }
}

/// The van heading to `shipment`'s stop next, if it is: the parcel is not delivered, a
/// van's current route carries it, and its stop is that route's [`next_stop`].
fn heading_here(shipment: &Shipment, store: &Store) -> Result<Option<NextStop>, NotifyError> {
    if shipment.milestone == Milestone::Delivered {
        return Ok(None);
    }
    let Some((route, stop_id)) = store.current_route_of_parcel(&shipment.tracking_number)? else {
        return Ok(None);
    };
    let done: Vec<StopId> =
        store.stops_done(&route.device, &route.route.route_id)?.into_iter().map(|(s, _)| s).collect();
    if next_stop(&route.route.stops, &done) != Some(&stop_id) {
        return Ok(None);
    }
    let Some(stop) = route.route.stops.iter().find(|s| s.stop_id == stop_id) else { return Ok(None) };
    let position = store.live_position(&route.device)?;
    Ok(Some(NextStop { fleet: route.fleet, device: route.device, stop: (stop.lat, stop.lon), position }))
}

/// When the van of the current route carrying `shipment` should reach its stop
/// ([`crate::eta::estimate`] from the route's order, the stops done and the van's last
/// position); `None` once delivered, or when no van's current route carries it.
pub(crate) fn arrival_window(
    shipment: &Shipment,
    store: &Store,
    now_ms: i64,
) -> Result<Option<crate::eta::ArrivalWindow>, NotifyError> {
    if matches!(shipment.milestone, Milestone::Delivered | Milestone::Exception) {
        return Ok(None);
    }
    let Some((route, stop_id)) = store.current_route_of_parcel(&shipment.tracking_number)? else {
        return Ok(None);
    };
    let stops = &route.route.stops;
    let Some(target) = stops.iter().position(|s| s.stop_id == stop_id) else { return Ok(None) };
    let places: Vec<(f64, f64)> = stops.iter().map(|s| (s.lat, s.lon)).collect();
    let done: Vec<(usize, i64)> = store
        .stops_done(&route.device, &route.route.route_id)?
        .into_iter()
        .filter_map(|(id, at)| stops.iter().position(|s| s.stop_id == id).map(|i| (i, at)))
        .collect();
    let van = store
        .live_position(&route.device)?
        .map(|p| (f64::from(p.lat_e7) / 1e7, f64::from(p.lon_e7) / 1e7, p.utc_ms));
    let progress = crate::eta::RouteProgress { stops: &places, done: &done, van };
    Ok(crate::eta::estimate(&progress, target, now_ms))
}

/// The arrival window as a "nearby" message says it at `now_ms`: the stops before the
/// customer's and how many minutes, rounded to five, in ASCII (a dash outside GSM-7 would
/// double an SMS's cost).
pub(crate) fn nearby_words(w: &crate::eta::ArrivalWindow, locale: &str, now_ms: i64) -> String {
    let de = locale.to_ascii_lowercase().starts_with("de");
    let minutes = |ms: i64| ((ms - now_ms).max(0) + 150_000) / 300_000 * 5;
    let (from, to) = (minutes(w.earliest_ms), minutes(w.latest_ms).max(5));
    let when = match (from, de) {
        (0, false) => format!("within {to} minutes"),
        (0, true) => format!("in den nächsten {to} Minuten"),
        (_, false) => format!("in about {from}-{to} minutes"),
        (_, true) => format!("in etwa {from}-{to} Minuten"),
    };
    match (w.stops_before, de) {
        (0, false) => format!("Yours is the next stop, {when}."),
        (0, true) => format!("Sie sind der nächste Halt, {when}."),
        (1, false) => format!("1 stop before yours, {when}."),
        (1, true) => format!("Noch 1 Halt vor Ihrem, {when}."),
        (n, false) => format!("{n} stops before yours, {when}."),
        (n, true) => format!("Noch {n} Halte vor Ihrem, {when}."),
    }
}

/// Great-circle distance, metres (haversine on the mean Earth radius).
fn great_circle_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let h = ((p2 - p1) / 2.0).sin().powi(2)
        + p1.cos() * p2.cos() * ((lon2 - lon1).to_radians() / 2.0).sin().powi(2);
    2.0 * 6_371_008.8 * h.sqrt().min(1.0).asin()
}

/// Asks vans for their live position while customers whose stop is next view the page:
/// a watch per van at most once per half watch ([`PAGE_WATCH_FOR_S`]) while views
/// continue, sent through the writer's outbound queue. `http::public_router` gives it to
/// the page; without it (a router built alone, in tests) the page shows what the hub has
/// and asks nothing.
#[derive(Clone)]
pub struct PageWatches {
    writer: Writer,
    /// Van → when a watch was last asked of it, hub ms.
    asked: Arc<Mutex<HashMap<DeviceId, i64>>>,
}

impl std::fmt::Debug for PageWatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageWatches").finish_non_exhaustive()
    }
}

/// Whether a van last asked at `last_ms` (if ever) should be asked again at `now_ms`:
/// once half the watch it was given has passed (pure).
fn watch_due(last_ms: Option<i64>, now_ms: i64) -> bool {
    last_ms.is_none_or(|last| now_ms - last >= i64::from(PAGE_WATCH_FOR_S) * 500)
}

impl PageWatches {
    /// Asks through `writer`.
    pub fn new(writer: Writer) -> Self {
        Self { writer, asked: Arc::default() }
    }

    /// The writer's lane, for the customer's actions ([`super::actions`]).
    pub(super) fn writer(&self) -> &Writer {
        &self.writer
    }

    /// A customer whose stop is next views the page at `now_ms`: ask `device` to send
    /// often, unless it was asked within the last half watch. Does not wait for the writer.
    fn ask(&self, fleet: &FleetId, device: &DeviceId, now_ms: i64) {
        {
            let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
            if !watch_due(asked.get(device).copied(), now_ms) {
                return;
            }
            if asked.len() >= MAX_PACED_VANS {
                asked.retain(|_, at| now_ms - *at < i64::from(PAGE_WATCH_FOR_S) * 1000);
            }
            asked.insert(device.clone(), now_ms);
        }
        let watch = Watch {
            device: device.clone(),
            issued_ms: now_ms,
            for_s: PAGE_WATCH_FOR_S,
            every_s: PAGE_WATCH_EVERY_S,
        };
        let (writer, fleet, device) = (self.writer.clone(), fleet.clone(), device.clone());
        tokio::spawn(async move {
            match writer.call(move |ctx| ctx.publish_watch(&fleet, watch)).await {
                Ok(Ok(())) => {
                    tracing::info!(device = %device, for_s = PAGE_WATCH_FOR_S, every_s = PAGE_WATCH_EVERY_S, "watch published: a customer whose stop is next is looking")
                }
                Ok(Err(e)) => {
                    tracing::warn!(device = %device, error = %e, "cannot publish a watch for the tracking page")
                }
                Err(e) => {
                    tracing::warn!(device = %device, error = %e, "cannot publish a watch for the tracking page")
                }
            }
        });
    }
}

/// What a page shows: the shipment, its timeline, the proof of delivery, and the van when
/// it heads to this shipment's stop next.
type Loaded =
    (Shipment, Vec<TimelineEntry>, Option<Proof>, Option<NextStop>, Option<crate::eta::ArrivalWindow>);

/// The shipment a tracking link names, checked as the page checks it (a bad token is a
/// 404, an expired or withdrawn one a 410), for the customer's actions.
pub(super) async fn linked_shipment(
    state: &NotifyState,
    token: &str,
) -> Result<Result<Shipment, Response>, NotifyError> {
    let (shipment_id, expires_ms) = match state.settings.link_signer.verify_with_expiry(token, now_ms()) {
        Ok(found) => found,
        Err(e) => return Ok(Err(token_error(&state.settings.brand, e))),
    };
    let settings = Arc::clone(&state.settings);
    state.db.call(move |store| link_target(store, &settings, shipment_id, expires_ms)).await
}

/// The shipment of a verified token, unless its links were withdrawn after it was issued.
fn link_target(
    store: &Store,
    settings: &NotifySettings,
    shipment_id: i64,
    expires_ms: i64,
) -> Result<Result<Shipment, Response>, NotifyError> {
    let ttl_ms = i64::try_from(settings.link_ttl.as_millis()).unwrap_or(i64::MAX);
    let Some(shipment) = store.shipment(shipment_id)? else {
        return Ok(Err(token_error(&settings.brand, TokenError::Invalid)));
    };
    // Issued (deadline minus lifetime) at or before the withdrawal: gone.
    if let Some(revoked_ms) = store.links_revoked_ms(shipment_id)?
        && expires_ms <= revoked_ms.saturating_add(ttl_ms)
    {
        return Ok(Err(token_error(&settings.brand, TokenError::Expired)));
    }
    Ok(Ok(shipment))
}

async fn load(state: &NotifyState, token: &str) -> Result<Result<Loaded, Response>, NotifyError> {
    let (shipment_id, expires_ms) = match state.settings.link_signer.verify_with_expiry(token, now_ms()) {
        Ok(found) => found,
        Err(e) => return Ok(Err(token_error(&state.settings.brand, e))),
    };
    let settings = Arc::clone(&state.settings);
    state
        .db
        .call(move |store| {
            let shipment = match link_target(store, &settings, shipment_id, expires_ms)? {
                Ok(shipment) => shipment,
                Err(response) => return Ok(Err(response)),
            };
            let timeline = store.timeline(shipment_id)?;
            let proof = proof_of(&shipment, &timeline, store)?;
            let next = heading_here(&shipment, store)?;
            let window = arrival_window(&shipment, store, now_ms())?;
            Ok(Ok((shipment, timeline, proof, next, window)))
        })
        .await
}

async fn tracking_page(
    State(state): State<NotifyState>,
    watches: Option<Extension<PageWatches>>,
    Path(token): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    match load(&state, &token).await {
        Err(e) => internal(&e),
        Ok(Err(response)) => response,
        Ok(Ok((shipment, timeline, proof, next, window))) => {
            let now = now_ms();
            if let (Some(next), Some(Extension(watches))) = (&next, &watches) {
                watches.ask(&next.fleet, &next.device, now);
            }
            let van = next.as_ref().map(|n| n.view(now));
            let pairs = form_pairs(query.unwrap_or_default().as_bytes());
            let brand = &state.settings.brand;
            let id = shipment.id;
            let saved = match state.db.call(move |store| Ok(store.customer_instructions(id)?)).await {
                Ok(saved) => saved,
                Err(e) => return internal(&e),
            };
            let page = view::PageInput {
                shipment: &shipment,
                timeline: &timeline,
                proof: proof.as_ref(),
                van: van.as_ref(),
                window: window.as_ref(),
                token: &token,
                brand,
                query: view::PageQuery::from_pairs(&pairs),
                saved_instructions: saved.as_ref().map(|i| i.text.as_str()),
            };
            match view::render_page(&page) {
                Ok(html) => html_page(StatusCode::OK, brand, html),
                Err(error) => {
                    tracing::error!(%error, "cannot render the tracking page");
                    plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                }
            }
        }
    }
}

/// Whether the customer can still tell the driver something, as the page offers it
/// ([`view::actions_open`]): the customer's actions ([`super::actions`]) refuse what the
/// page no longer offers.
pub(super) fn actions_open(milestone: Milestone, timeline: &[TimelineEntry]) -> bool {
    view::actions_open(milestone, timeline)
}

fn image_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        "image/jpeg"
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if bytes.len() > 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else {
        "application/octet-stream"
    }
}

async fn tracking_photo(State(state): State<NotifyState>, Path(token): Path<String>) -> Response {
    let proof = match load(&state, &token).await {
        Err(e) => return internal(&e),
        Ok(Err(response)) => return response,
        Ok(Ok((_, _, proof, _, _))) => proof,
    };
    let Some(Proof { photo: Some(hash), photo_ok: true, .. }) = proof else {
        return error_page(StatusCode::NOT_FOUND, &state.settings.brand, "No photo.");
    };
    match state.db.call(move |store| Ok(store.photo(&hash)?)).await {
        Ok(Some(photo)) if photo.verified => {
            let kind = image_type(&photo.bytes);
            // An image needs nothing from anywhere: the strictest policy.
            let csp = (header::CONTENT_SECURITY_POLICY, "default-src 'none'");
            (StatusCode::OK, PAGE_HEADERS, [csp, (header::CONTENT_TYPE, kind)], photo.bytes).into_response()
        }
        Ok(_) => error_page(StatusCode::NOT_FOUND, &state.settings.brand, "No photo."),
        Err(e) => internal(&e),
    }
}

// ---- helpers for the providers' callbacks ---------------------------------------------

/// The pairs of a form body or query string.
pub(crate) fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// The first value of `name`.
pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use doorstep_proto::TrackingNumber;
    use serde_json::json;

    fn shipment(milestone: Milestone, locale: &str) -> Shipment {
        let tn = TrackingNumber::new("1Z999AA10123456784").expect("tn");
        Shipment { carrier: Some("ups".into()), ..Shipment::bare(1, tn, milestone, locale) }
    }

    /// The page for the token `TOKEN`, in the default look, as first opened.
    fn render_page(
        shipment: &Shipment,
        timeline: &[TimelineEntry],
        proof: Option<&Proof>,
        van: Option<&VanView>,
        window: Option<&crate::eta::ArrivalWindow>,
    ) -> String {
        let brand = Brand::default();
        let page = view::PageInput {
            shipment,
            timeline,
            proof,
            van,
            window,
            token: "TOKEN",
            brand: &brand,
            query: view::PageQuery::default(),
            saved_instructions: None,
        };
        view::render_page(&page).expect("renders")
    }

    #[test]
    fn the_page_shows_local_times_and_distance_but_no_address_or_device_detail() {
        let timeline = vec![
            TimelineEntry {
                occurred_ms: 1_751_356_800_000,
                source: "ups".into(),
                kind: "out_for_delivery".into(),
                detail: json!({"message": "Out for delivery, 12 Main Street, Springfield", "raw_status": "OT"}),
            },
            TimelineEntry {
                occurred_ms: 1_751_360_400_000,
                source: "device".into(),
                kind: "delivered_at_address".into(),
                detail: json!({"device": "van-7", "stop_id": "stop-14", "distance_m": 12, "photo_sha256": "ab"}),
            },
            TimelineEntry {
                occurred_ms: 1_751_360_500_000,
                source: "device".into(),
                kind: "delivered_away_from_address".into(),
                detail: json!({"distance_m": 900}),
            },
        ];
        let proof = Proof {
            at_ms: 1_751_360_400_000,
            distance_m: Some(12),
            photo: Some("ab".into()),
            photo_ok: true,
        };
        let html = render_page(&shipment(Milestone::Delivered, "en-US"), &timeline, Some(&proof), None, None);
        assert!(html.contains("Delivered"), "{html}");
        assert!(html.contains("2025-07-01 11:00 CEST"), "{html}");
        assert!(html.contains("12 m from the address"), "{html}");
        assert!(html.contains("/t/TOKEN/photo"), "{html}");
        for secret in ["Main Street", "Springfield", "van-7", "stop-14", "900", "away"] {
            assert!(!html.contains(secret), "page leaks {secret}: {html}");
        }
        let html = render_page(&shipment(Milestone::Delivered, "de-DE"), &timeline, Some(&proof), None, None);
        assert!(html.contains("Zugestellt") && html.contains("12 m von der Adresse"), "{html}");
    }

    fn stops(ids: &[&str]) -> Vec<Stop> {
        ids.iter()
            .map(|id| Stop {
                stop_id: StopId::new(*id).expect("id"),
                lat: 47.37,
                lon: 8.54,
                tracking_numbers: vec![TrackingNumber::new("1Z999AA10123456784").expect("tn")],
                approach_m: None,
                arrival_m: None,
                dwell_s: None,
                label: None,
            })
            .collect()
    }

    fn ids(ids: &[&str]) -> Vec<StopId> {
        ids.iter().map(|id| StopId::new(*id).expect("id")).collect()
    }

    #[test]
    fn the_next_stop_is_the_first_after_the_furthest_one_done() {
        let route = stops(&["s1", "s2", "s3", "s4"]);
        let next = |done: &[&str]| next_stop(&route, &ids(done)).map(|s| s.as_str().to_owned());
        assert_eq!(next(&[]).as_deref(), Some("s1"), "nothing done: the first stop");
        assert_eq!(next(&["s1"]).as_deref(), Some("s2"));
        assert_eq!(next(&["s1", "s2"]).as_deref(), Some("s3"));
        // The driver skipped s2 and did s3: s2's customer is not shown a van serving s4.
        assert_eq!(next(&["s1", "s3"]).as_deref(), Some("s4"));
        assert_eq!(next(&["s3"]).as_deref(), Some("s4"));
        assert_eq!(next(&["s1", "s2", "s3", "s4"]), None, "past the last stop");
        assert_eq!(next(&["s4"]), None);
        assert_eq!(next_stop(&[], &[]), None);
    }

    #[test]
    fn the_van_is_shown_by_distance_and_age_only_and_the_page_reloads_meanwhile() {
        let near = VanView { distance_m: Some(1_234.0), age_s: Some(4), at: Some((47.38, 8.54)) };
        let html = render_page(&shipment(Milestone::Nearby, "en-US"), &[], None, Some(&near), None);
        assert!(html.contains("about 1.2 km away (position from 4 s ago)"), "{html}");
        assert!(html.contains("<script data-seconds=\"5\" data-url=\"/t/TOKEN\">"), "{html}");
        for secret in ["47.37", "8.54", "van-"] {
            assert!(!html.contains(secret), "page leaks {secret}: {html}");
        }
        let close = VanView { distance_m: Some(362.0), age_s: Some(130), at: Some((47.37, 8.54)) };
        let html = render_page(&shipment(Milestone::Nearby, "de-DE"), &[], None, Some(&close), None);
        assert!(html.contains("etwa 350 m entfernt (Position von vor 2 min)"), "{html}");
        let unknown = VanView { distance_m: None, age_s: None, at: None };
        let html = render_page(&shipment(Milestone::OutForDelivery, "en"), &[], None, Some(&unknown), None);
        assert!(html.contains("The van is heading to your address now.</p>"), "{html}");
        // Another customer's stop is next: no van, and the page reloads only every minute.
        let html = render_page(&shipment(Milestone::OutForDelivery, "en"), &[], None, None, None);
        assert!(!html.contains("heading to your address"), "{html}");
        assert!(html.contains("<script data-seconds=\"60\" data-url=\"/t/TOKEN\">"), "{html}");
    }

    #[test]
    fn nearby_says_the_stops_before_and_the_minutes_in_gsm_characters() {
        let now = 1_751_356_800_000;
        let w = crate::eta::ArrivalWindow {
            stops_before: 2,
            earliest_ms: now + 600_000,
            latest_ms: now + 1_200_000,
        };
        assert_eq!(nearby_words(&w, "en-US", now), "2 stops before yours, in about 10-20 minutes.");
        assert_eq!(nearby_words(&w, "de", now), "Noch 2 Halte vor Ihrem, in etwa 10-20 Minuten.");
        let next = crate::eta::ArrivalWindow {
            stops_before: 0,
            earliest_ms: now - 60_000,
            latest_ms: now + 600_000,
        };
        assert_eq!(nearby_words(&next, "en", now), "Yours is the next stop, within 10 minutes.");
    }

    #[test]
    fn the_arrival_window_is_told_in_local_time_with_the_stops_before() {
        let w = crate::eta::ArrivalWindow {
            stops_before: 2,
            earliest_ms: 1_751_356_800_000,
            latest_ms: 1_751_358_000_000,
        };
        let html = render_page(&shipment(Milestone::OutForDelivery, "en-US"), &[], None, None, Some(&w));
        assert!(html.contains("Expected between 10:00 and 10:20 (2 stops before yours)."), "{html}");
        let next = crate::eta::ArrivalWindow { stops_before: 0, ..w };
        let html = render_page(&shipment(Milestone::OutForDelivery, "de-DE"), &[], None, None, Some(&next));
        assert!(
            html.contains("Voraussichtlich zwischen 10:00 und 10:20 (Ihre Adresse ist der nächste Halt)."),
            "{html}"
        );
    }

    #[test]
    fn a_stale_position_is_not_shown() {
        let next = NextStop {
            fleet: FleetId::new("acme").expect("id"),
            device: DeviceId::new("van-1").expect("id"),
            stop: (47.37, 8.54),
            position: Some(LivePosition {
                utc_ms: 1_000_000,
                lat_e7: 473_800_000,
                lon_e7: 85_400_000,
                accuracy_dm: None,
                received_ms: 1_000_000,
            }),
        };
        let fresh = next.view(1_008_000);
        assert_eq!(fresh.age_s, Some(8));
        assert!(fresh.distance_m.is_some_and(|d| (1_100.0..1_125.0).contains(&d)), "{fresh:?}");
        assert_eq!(
            next.view(1_000_000 + LIVE_MAX_AGE_MS + 1),
            VanView { distance_m: None, age_s: None, at: None }
        );
    }

    #[test]
    fn the_page_is_served_with_the_brands_policy_allowing_the_tiles_and_forms_to_this_hub() {
        let tiles =
            Brand::new("Acme", "#0b3d91", "#111111", None, Some("https://tile.example.org/{z}/{x}/{y}.png"))
                .expect("valid");
        let response = html_page(StatusCode::OK, &tiles, String::new());
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let csp = header(header::CONTENT_SECURITY_POLICY);
        assert!(csp.starts_with("default-src 'none'; img-src 'self' https://tile.example.org;"), "{csp}");
        assert!(csp.contains("form-action 'self'"), "{csp}");
        // One script, the page's own refresher, by its hash; it fetches only this hub.
        let script = format!("script-src {};", view::live_script_source());
        assert!(csp.contains(&script) && csp.contains("connect-src 'self';"), "{csp}");
        assert_eq!(header(header::REFERRER_POLICY), "no-referrer", "the tile server learns no token");
        assert_eq!(header(header::CACHE_CONTROL), "no-store");
        let plain = html_page(StatusCode::OK, &Brand::default(), String::new());
        let csp = plain.headers().get(header::CONTENT_SECURITY_POLICY).and_then(|v| v.to_str().ok());
        assert!(csp.is_some_and(|c| c.contains("img-src 'self';")), "{csp:?}");
    }

    #[test]
    fn a_van_is_asked_again_once_half_the_watch_has_passed() {
        assert!(watch_due(None, 0));
        assert!(!watch_due(Some(1_000), 1_000 + 59_999));
        assert!(watch_due(Some(1_000), 1_000 + 60_000));
    }
}
