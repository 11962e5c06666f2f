//! The tracking page and the provider callbacks, as two axum routers for the hub's public
//! listener (each with its own rate limit there).
//!
//! | method | path | what |
//! |---|---|---|
//! | GET  | `/t/{token}` | the tracking page: milestone, timeline in the recipient's time zone, proof of delivery |
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
//! The page never shows the address, the stop's coordinates, the device or the
//! carrier's free text: only milestone names, times, and the van's distance from the
//! address at handover. A bad token is a plain 404, an expired or withdrawn one (the order
//! system's `POST /v1/shipments/{tracking}/links/revoke`) a plain 410; neither says
//! anything about the shipment.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::config::NotifySettings;
use super::outbox::NotifyDb;
use super::token::TokenError;
use super::{NotifyError, now_ms, quiet};
use crate::metrics::Metrics;
use crate::model::Milestone;
use crate::store::{Shipment, Store, TimelineEntry};

/// Largest callback body accepted, bytes (SendGrid batches events; Twilio's are small).
pub const MAX_CALLBACK_BODY: usize = 1024 * 1024;
/// Most timeline entries shown.
pub const MAX_TIMELINE: usize = 50;

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

const PAGE_HEADERS: [(header::HeaderName, &str); 5] = [
    (header::CACHE_CONTROL, "no-store"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::CONTENT_SECURITY_POLICY, "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"),
    (header::HeaderName::from_static("x-robots-tag"), "noindex"),
];

fn error_page(status: StatusCode, message: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Doorstep</title></head>\
         <body><p>{message}</p></body></html>"
    );
    (status, PAGE_HEADERS, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

fn token_error(e: TokenError) -> Response {
    match e {
        TokenError::Invalid => error_page(StatusCode::NOT_FOUND, "This tracking link is not valid."),
        TokenError::Expired => error_page(StatusCode::GONE, "This tracking link has expired."),
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

struct Words {
    de: bool,
}

impl Words {
    fn milestone(&self, m: Milestone) -> &'static str {
        match (m, self.de) {
            (Milestone::Created, false) => "Order received",
            (Milestone::Created, true) => "Bestellung erhalten",
            (Milestone::Dispatched, false) => "On its way",
            (Milestone::Dispatched, true) => "Unterwegs",
            (Milestone::OutForDelivery, false) => "Out for delivery",
            (Milestone::OutForDelivery, true) => "In Zustellung",
            (Milestone::Nearby, false) => "The driver is nearby",
            (Milestone::Nearby, true) => "Der Fahrer ist gleich da",
            (Milestone::Exception, false) => "Delivery problem",
            (Milestone::Exception, true) => "Zustellproblem",
            (Milestone::Delivered, false) => "Delivered",
            (Milestone::Delivered, true) => "Zugestellt",
        }
    }

    /// Customer words for a timeline kind; `None` hides internal kinds.
    fn kind(&self, source: &str, kind: &str) -> Option<&'static str> {
        let de = self.de;
        Some(match (source, kind) {
            (_, "dispatched") => {
                if de {
                    "Versandt"
                } else {
                    "Dispatched"
                }
            }
            (_, "accepted") | (_, "label_created") => {
                if de {
                    "Beim Versender angemeldet"
                } else {
                    "Registered with the carrier"
                }
            }
            (_, "in_transit") => {
                if de {
                    "Unterwegs"
                } else {
                    "In transit"
                }
            }
            (_, "out_for_delivery") => {
                if de {
                    "In Zustellung"
                } else {
                    "Out for delivery"
                }
            }
            ("device", "nearby") => {
                if de {
                    "Der Fahrer war in der Nähe"
                } else {
                    "The driver was nearby"
                }
            }
            ("device", "delivered_at_address") => {
                if de {
                    "An der Adresse übergeben"
                } else {
                    "Handed over at the address"
                }
            }
            ("device", "driver_exception") | (_, "attempt_failed") => {
                if de {
                    "Zustellversuch fehlgeschlagen"
                } else {
                    "Delivery attempt failed"
                }
            }
            (_, "available_for_pickup") => {
                if de {
                    "Zur Abholung bereit"
                } else {
                    "Ready for pickup"
                }
            }
            (_, "exception") => {
                if de {
                    "Problem gemeldet"
                } else {
                    "Problem reported"
                }
            }
            (_, "returning") => {
                if de {
                    "Auf dem Rückweg zum Absender"
                } else {
                    "Returning to the sender"
                }
            }
            (_, "delivered") => {
                if de {
                    "Zustellung vom Versender gemeldet"
                } else {
                    "Carrier reports delivered"
                }
            }
            _ => return None,
        })
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn local_time(ms: i64, tz: &jiff::tz::TimeZone) -> String {
    quiet::zoned(ms, tz).strftime("%Y-%m-%d %H:%M %Z").to_string()
}

/// Renders the tracking page (pure).
fn render_page(
    shipment: &Shipment,
    timeline: &[TimelineEntry],
    proof: Option<&Proof>,
    token: &str,
) -> String {
    let words = Words { de: shipment.locale.to_ascii_lowercase().starts_with("de") };
    let tz = quiet::zone(&shipment.time_zone);
    let lang = if words.de { "de" } else { "en" };
    let mut items = String::new();
    let shown: Vec<&TimelineEntry> =
        timeline.iter().filter(|e| words.kind(&e.source, &e.kind).is_some()).collect();
    for e in shown.iter().rev().take(MAX_TIMELINE) {
        let label = words.kind(&e.source, &e.kind).unwrap_or_default();
        items.push_str(&format!(
            "<li><time>{}</time> {}</li>",
            escape(&local_time(e.occurred_ms, &tz)),
            escape(label)
        ));
    }
    let proof_html = match proof {
        None => String::new(),
        Some(p) => {
            let mut s = format!(
                "<h2>{}</h2><p>{} {}",
                if words.de { "Zustellnachweis" } else { "Proof of delivery" },
                if words.de { "Übergeben" } else { "Handed over" },
                escape(&local_time(p.at_ms, &tz))
            );
            if let Some(d) = p.distance_m {
                if words.de {
                    s.push_str(&format!(", der Lieferwagen stand {d} m von der Adresse entfernt"));
                } else {
                    s.push_str(&format!(", with the van parked {d} m from the address"));
                }
            }
            s.push_str(".</p>");
            if p.photo_ok {
                s.push_str(&format!(
                    "<p><img src=\"/t/{}/photo\" alt=\"{}\" style=\"max-width:100%\"></p>",
                    escape(token),
                    if words.de { "Foto bei der Übergabe" } else { "Photo taken at handover" }
                ));
            } else if p.photo.is_some() {
                s.push_str(if words.de {
                    "<p>Das Foto der Übergabe wird noch übertragen.</p>"
                } else {
                    "<p>The handover photo is still on its way.</p>"
                });
            }
            s
        }
    };
    format!(
        "<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Doorstep {tn}</title>\
         <style>body{{font-family:sans-serif;max-width:36em;margin:1em auto;padding:0 1em}}time{{color:#555;margin-right:.5em}}</style>\
         </head><body><main><h1>{headline}</h1><p>{tn_label} {tn}</p>\
         <h2>{history}</h2><ol reversed>{items}</ol>{proof_html}</main></body></html>",
        tn = escape(shipment.tracking_number.as_str()),
        headline = escape(words.milestone(shipment.milestone)),
        tn_label = if words.de { "Sendungsnummer" } else { "Tracking number" },
        history = if words.de { "Verlauf" } else { "History" },
    )
}

async fn load(
    state: &NotifyState,
    token: &str,
) -> Result<Result<(Shipment, Vec<TimelineEntry>, Option<Proof>), Response>, NotifyError> {
    let (shipment_id, expires_ms) = match state.settings.link_signer.verify_with_expiry(token, now_ms()) {
        Ok(found) => found,
        Err(e) => return Ok(Err(token_error(e))),
    };
    let ttl_ms = i64::try_from(state.settings.link_ttl.as_millis()).unwrap_or(i64::MAX);
    state
        .db
        .call(move |_, store| {
            let Some(shipment) = store.shipment(shipment_id)? else {
                return Ok(Err(token_error(TokenError::Invalid)));
            };
            // Issued (deadline minus lifetime) at or before the withdrawal: gone.
            if let Some(revoked_ms) = store.links_revoked_ms(shipment_id)?
                && expires_ms <= revoked_ms.saturating_add(ttl_ms)
            {
                return Ok(Err(token_error(TokenError::Expired)));
            }
            let timeline = store.timeline(shipment_id)?;
            let proof = proof_of(&shipment, &timeline, store)?;
            Ok(Ok((shipment, timeline, proof)))
        })
        .await
}

async fn tracking_page(State(state): State<NotifyState>, Path(token): Path<String>) -> Response {
    match load(&state, &token).await {
        Err(e) => internal(&e),
        Ok(Err(response)) => response,
        Ok(Ok((shipment, timeline, proof))) => {
            let html = render_page(&shipment, &timeline, proof.as_ref(), &token);
            (StatusCode::OK, PAGE_HEADERS, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html)
                .into_response()
        }
    }
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
        Ok(Ok((_, _, proof))) => proof,
    };
    let Some(Proof { photo: Some(hash), photo_ok: true, .. }) = proof else {
        return error_page(StatusCode::NOT_FOUND, "No photo.");
    };
    match state.db.call(move |_, store| Ok(store.photo(&hash)?)).await {
        Ok(Some(photo)) if photo.verified => {
            let kind = image_type(&photo.bytes);
            (StatusCode::OK, PAGE_HEADERS, [(header::CONTENT_TYPE, kind)], photo.bytes).into_response()
        }
        Ok(_) => error_page(StatusCode::NOT_FOUND, "No photo."),
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
        let html = render_page(&shipment(Milestone::Delivered, "en-US"), &timeline, Some(&proof), "TOKEN");
        assert!(html.contains("Delivered"), "{html}");
        assert!(html.contains("2025-07-01 11:00 CEST"), "{html}");
        assert!(html.contains("12 m from the address"), "{html}");
        assert!(html.contains("/t/TOKEN/photo"), "{html}");
        for secret in ["Main Street", "Springfield", "van-7", "stop-14", "900", "away"] {
            assert!(!html.contains(secret), "page leaks {secret}: {html}");
        }
        let html = render_page(&shipment(Milestone::Delivered, "de-DE"), &timeline, Some(&proof), "TOKEN");
        assert!(html.contains("Zugestellt") && html.contains("12 m von der Adresse"), "{html}");
    }
}
