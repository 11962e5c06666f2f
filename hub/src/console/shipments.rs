//! The shipment pages: search by tracking number, order id or the customer's phone
//! number or e-mail address, and one shipment with every signal (van, carrier, order
//! system) and its evidence, the van's proof, support contacts, alerts, and every message
//! with each attempt's outcome. Contacts are matched whole but shown masked.

use std::collections::BTreeSet;

use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use doorstep_proto::TrackingNumber;
use serde::Serialize;

use super::{AlertView, Console, Operator, age, answered, error_page, form_fields, page, when};
use crate::mask::mask;
use crate::store::{ContactChannel, OutboxRow, Outcome, Shipment, Store, StoreError};

/// Longest search accepted, bytes.
pub(crate) const MAX_QUERY_LEN: usize = 256;

/// The contacts a search may mean: an e-mail address as typed and in lower case; a phone
/// number in E.164 (`+` and digits) whatever spaces, dashes, dots or brackets it was typed
/// with, `00` read as `+`, and a number without either tried with `+`. Pure.
pub(crate) fn contact_candidates(q: &str) -> Vec<(ContactChannel, String)> {
    let mut out = Vec::new();
    if q.contains('@') {
        for email in [q.to_owned(), q.to_lowercase()] {
            if !out.iter().any(|(_, e)| *e == email) {
                out.push((ContactChannel::Email, email));
            }
        }
        return out;
    }
    let phone_like = q.chars().all(|c| c.is_ascii_digit() || " +-().".contains(c));
    let digits: String = q.chars().filter(char::is_ascii_digit).collect();
    if !phone_like || digits.len() < 7 {
        return out;
    }
    let digits = if q.trim_start().starts_with('+') {
        digits
    } else {
        digits.strip_prefix("00").map(str::to_owned).unwrap_or(digits)
    };
    for channel in [ContactChannel::Sms, ContactChannel::Whatsapp] {
        out.push((channel, format!("+{digits}")));
    }
    out
}

/// A contact as the console shows it: phone numbers and e-mail addresses masked, a
/// webhook by its host only (its path may hold a secret).
fn shown_contact(channel: ContactChannel, recipient: &str) -> String {
    match channel {
        ContactChannel::Webhook => {
            let rest = recipient.split_once("://").map_or(recipient, |(_, r)| r);
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            format!("{host}/…")
        }
        _ => mask(recipient),
    }
}

#[derive(Debug, Serialize)]
struct ContactView {
    channel: &'static str,
    shown: String,
    consent: bool,
}

#[derive(Debug, Serialize)]
struct ShipmentRow {
    tracking_number: String,
    order_id: Option<String>,
    order_name: Option<String>,
    carrier: Option<String>,
    milestone: &'static str,
    created: String,
    contacts: Vec<ContactView>,
}

fn contacts(s: &Shipment) -> Vec<ContactView> {
    s.contacts
        .iter()
        .map(|(channel, c)| ContactView {
            channel: channel.as_str(),
            shown: shown_contact(*channel, &c.recipient),
            consent: c.consent,
        })
        .collect()
}

fn row(s: &Shipment) -> ShipmentRow {
    ShipmentRow {
        tracking_number: s.tracking_number.to_string(),
        order_id: s.order_id.clone(),
        order_name: s.order_name.clone(),
        carrier: s.carrier.clone(),
        milestone: crate::store::milestone_name(s.milestone),
        created: when(s.created_ms),
        contacts: contacts(s),
    }
}

#[derive(Debug, Serialize)]
struct SearchView {
    q: String,
    searched: bool,
    results: Vec<ShipmentRow>,
}

/// Shipments matching `q` by tracking number, order id (or name), or contact.
fn find(store: &Store, q: &str) -> Result<Vec<Shipment>, StoreError> {
    let mut found = Vec::new();
    let mut seen = BTreeSet::new();
    let mut keep = |s: Shipment, found: &mut Vec<Shipment>| {
        if seen.insert(s.id) {
            found.push(s);
        }
    };
    if let Ok(tracking) = TrackingNumber::normalize(q)
        && let Some(s) = store.shipment_by_tracking(&tracking)?
    {
        keep(s, &mut found);
    }
    for id in store.shipment_ids_by_order(q)? {
        if let Some(s) = store.shipment(id)? {
            keep(s, &mut found);
        }
    }
    for (channel, recipient) in contact_candidates(q) {
        for s in store.shipments_for_contact(channel, &recipient, 0)? {
            keep(s, &mut found);
        }
    }
    Ok(found)
}

pub(super) async fn search(
    State(console): State<Console>,
    who: Operator,
    RawQuery(query): RawQuery,
) -> Response {
    let fields = form_fields(query.unwrap_or_default().as_bytes());
    let q = fields.get("q").map_or("", |q| q.trim()).to_owned();
    if q.len() > MAX_QUERY_LEN || q.chars().any(char::is_control) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Search not understood",
            &format!(
                "Search for a tracking number, an order id, a phone number or an e-mail address of at most {MAX_QUERY_LEN} characters."
            ),
            Some(&who),
        );
    }
    let mut view = SearchView { q: q.clone(), searched: !q.is_empty(), results: Vec::new() };
    if !q.is_empty() {
        let read = console.writer.call(move |ctx| find(ctx.store, &q)).await;
        match answered(read, &who) {
            Ok(found) => view.results = found.iter().map(row).collect(),
            Err(page) => return *page,
        }
    }
    page(StatusCode::OK, "search.html", &who, "shipments", view)
}

#[derive(Debug, Serialize)]
struct Evidence {
    name: String,
    value: String,
}

#[derive(Debug, Serialize)]
struct SignalView {
    when: String,
    source: String,
    kind: String,
    evidence: Vec<Evidence>,
    photo: Option<String>,
}

#[derive(Debug, Serialize)]
struct ProofView {
    when: String,
    kind: String,
    device: Option<String>,
    stop: Option<String>,
    distance_m: Option<i64>,
    dwell_s: Option<i64>,
    speed_kmh: Option<String>,
    photo: Option<String>,
}

#[derive(Debug, Serialize)]
struct AttemptView {
    when: String,
    outcome: String,
    provider: Option<String>,
    provider_id: Option<String>,
    detail: Option<String>,
}

#[derive(Debug, Serialize)]
struct MessageView {
    id: i64,
    milestone: String,
    channel: String,
    recipient: String,
    status: String,
    attempts: i64,
    created: String,
    outcomes: Vec<AttemptView>,
}

#[derive(Debug, Serialize)]
struct SupportView {
    helpdesk: String,
    ticket: String,
    opened: String,
}

#[derive(Debug, Serialize)]
struct ShipmentView {
    shipment: ShipmentRow,
    locale: String,
    time_zone: String,
    timeline: Vec<SignalView>,
    proof: Vec<ProofView>,
    messages: Vec<MessageView>,
    support: Vec<SupportView>,
    alerts: Vec<AlertView>,
    back: String,
}

/// A photo hash as stored: 64 lowercase hex digits, nothing else in a URL.
fn photo_hash(v: &serde_json::Value) -> Option<String> {
    let h = v.as_str()?;
    (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).then(|| h.to_ascii_lowercase())
}

/// A timeline entry's detail as name/value pairs, free text masked.
fn evidence(detail: &serde_json::Value) -> Vec<Evidence> {
    let Some(fields) = detail.as_object() else {
        return vec![Evidence { name: "detail".into(), value: mask(&detail.to_string()) }];
    };
    fields
        .iter()
        .filter(|(name, v)| !v.is_null() && name.as_str() != "photo_sha256")
        .map(|(name, v)| {
            let value = match v {
                serde_json::Value::String(s) => mask(s),
                other => mask(&other.to_string()),
            };
            Evidence { name: name.clone(), value }
        })
        .collect()
}

fn outcome_view(o: &Outcome) -> AttemptView {
    AttemptView {
        when: when(o.at_ms),
        outcome: o.outcome.name().into_owned(),
        provider: o.provider.clone(),
        provider_id: o.provider_id.clone(),
        detail: o.detail.as_deref().map(mask),
    }
}

fn message_view(row: &OutboxRow, outcomes: &[Outcome]) -> MessageView {
    let channel = row.channel.known().copied();
    MessageView {
        id: row.id,
        milestone: row.milestone.to_string(),
        channel: row.channel.to_string(),
        recipient: channel.map_or_else(|| mask(&row.recipient), |c| shown_contact(c, &row.recipient)),
        status: row.status.to_string(),
        attempts: row.attempts,
        created: when(row.created_ms),
        outcomes: outcomes.iter().map(outcome_view).collect(),
    }
}

pub(super) async fn show(
    State(console): State<Console>,
    who: Operator,
    Path(tracking): Path<String>,
) -> Response {
    let Ok(tracking) = TrackingNumber::new(tracking) else {
        return error_page(
            StatusCode::NOT_FOUND,
            "No such shipment",
            "That is not a tracking number. Search for the parcel instead.",
            Some(&who),
        );
    };
    let read = console
        .writer
        .call(move |ctx| -> Result<Option<ShipmentView>, StoreError> {
            let store = &*ctx.store;
            let Some(s) = store.shipment_by_tracking(&tracking)? else { return Ok(None) };
            let entries = store.timeline(s.id)?;
            let mut timeline = Vec::new();
            let mut proof = Vec::new();
            for e in &entries {
                let photo = e.detail.get("photo_sha256").and_then(photo_hash);
                let number = |k: &str| e.detail.get(k).and_then(serde_json::Value::as_i64);
                let text = |k: &str| e.detail.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                if e.source == "device"
                    && (e.kind == "delivered_at_address"
                        || e.kind == "delivered_away_from_address"
                        || e.kind == "at_address_while_moving")
                {
                    proof.push(ProofView {
                        when: when(e.occurred_ms),
                        kind: e.kind.clone(),
                        device: text("device"),
                        stop: text("stop_id"),
                        distance_m: number("distance_m"),
                        dwell_s: number("dwell_s"),
                        // cm/s to km/h: × 0.036.
                        speed_kmh: number("speed_cmps").map(|v| format!("{:.1}", v as f64 * 0.036)),
                        photo: photo.clone(),
                    });
                }
                timeline.push(SignalView {
                    when: when(e.occurred_ms),
                    source: e.source.clone(),
                    kind: e.kind.clone(),
                    evidence: evidence(&e.detail),
                    photo,
                });
            }
            let mut messages = Vec::new();
            for row in store.outbox_for_shipment(s.id)? {
                let outcomes = store.outcomes(row.id)?;
                messages.push(message_view(&row, &outcomes));
            }
            let support = store
                .support_contacts(s.id)?
                .into_iter()
                .map(|c| SupportView { helpdesk: c.source, ticket: c.ticket, opened: when(c.opened_ms) })
                .collect();
            let alerts = store.console_alerts_for_shipment(s.id)?.iter().map(AlertView::new).collect();
            Ok(Some(ShipmentView {
                back: format!("/console/shipments/{}", s.tracking_number),
                shipment: row(&s),
                locale: s.locale.clone(),
                time_zone: s.time_zone.clone(),
                timeline,
                proof,
                messages,
                support,
                alerts,
            }))
        })
        .await;
    match answered(read, &who) {
        Ok(Some(view)) => page(StatusCode::OK, "shipment.html", &who, "shipments", view),
        Ok(None) => error_page(
            StatusCode::NOT_FOUND,
            "No such shipment",
            "No shipment has this tracking number. Search by order id or contact instead.",
            Some(&who),
        ),
        Err(page) => *page,
    }
}

/// The image type of a photo, by its first bytes (the van sends JPEG or PNG).
fn image_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "image/jpeg"
    } else {
        "application/octet-stream"
    }
}

pub(super) async fn photo(
    State(console): State<Console>,
    who: Operator,
    Path(sha256): Path<String>,
) -> Response {
    let Some(hash) = photo_hash(&serde_json::Value::String(sha256)) else {
        return error_page(
            StatusCode::NOT_FOUND,
            "No such photo",
            "A photo is named by its SHA-256 (64 hex digits).",
            Some(&who),
        );
    };
    let read = console.writer.call(move |ctx| ctx.store.photo(&hash)).await;
    match answered(read, &who) {
        Ok(Some(photo)) if photo.verified => {
            ([(header::CONTENT_TYPE, image_type(&photo.bytes))], photo.bytes).into_response()
        }
        Ok(_) => error_page(
            StatusCode::NOT_FOUND,
            "No such photo",
            "The hub has no complete, verified photo with this hash (the van may still be sending it).",
            Some(&who),
        ),
        Err(page) => *page,
    }
}

/// How long ago, for the fleet page.
pub(super) fn ago(now_ms: i64, then_ms: i64) -> String {
    format!("{} ago", age(now_ms - then_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_searched_as_stored_whatever_they_were_typed_with() {
        let plus =
            |s: &str| vec![(ContactChannel::Sms, s.to_owned()), (ContactChannel::Whatsapp, s.to_owned())];
        assert_eq!(contact_candidates("+1 (555) 555-0100"), plus("+15555550100"));
        assert_eq!(contact_candidates("0049 151 2345678"), plus("+491512345678"));
        assert_eq!(contact_candidates("15555550100"), plus("+15555550100"));
        assert!(contact_candidates("A-1001").is_empty());
        assert!(contact_candidates("12345").is_empty(), "too short for a phone number");
    }

    #[test]
    fn e_mail_addresses_are_searched_as_typed_and_in_lower_case() {
        assert_eq!(
            contact_candidates("Kim@Example.com"),
            vec![
                (ContactChannel::Email, "Kim@Example.com".into()),
                (ContactChannel::Email, "kim@example.com".into())
            ]
        );
    }

    #[test]
    fn contacts_are_shown_masked_and_webhooks_by_host() {
        assert_eq!(shown_contact(ContactChannel::Sms, "+15555550100"), "+155•••••100");
        assert!(!shown_contact(ContactChannel::Email, "kim@example.com").contains("kim@"));
        assert_eq!(
            shown_contact(ContactChannel::Webhook, "https://hooks.example.com/secret/abc?x=1"),
            "hooks.example.com/…"
        );
    }

    #[test]
    fn evidence_masks_free_text_and_keeps_the_photo_out_of_it() {
        let detail = serde_json::json!({
            "message": "left with neighbour, call +15555550100", "distance_m": 12, "reason": null,
            "photo_sha256": "ab".repeat(32),
        });
        let shown = evidence(&detail);
        assert_eq!(shown.len(), 2);
        assert!(shown.iter().all(|e| !e.value.contains("5555550100")));
        assert_eq!(photo_hash(&detail["photo_sha256"]), Some("ab".repeat(32)));
        assert_eq!(photo_hash(&serde_json::json!("../etc/passwd")), None);
    }
}
