//! What a customer can do from the tracking page, besides reading it.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/t/{token}/instructions` | delivery instructions for the driver (form field `instructions`, plain text, at most [`MAX_NOTE_CHARS`] characters; empty removes them) |
//! | POST | `/t/{token}/not-home` | nobody is at home today: an operations alert (`customer_not_home`) |
//!
//! Both take the page's own signed link (a bad token is a 404, an expired or withdrawn
//! one a 410, as for the page) and sit behind the page's rate limit. Both answer
//! `303 See Other` back to the page with `?done=instructions` or `?done=not-home`, which
//! the page confirms. Once the page no longer offers them (the parcel is delivered, going
//! back to the sender or waiting at a pickup point: [`super::page::actions_open`]) they
//! change nothing and say so (409); after a failed attempt that will be tried again, the
//! customer can still act. Bad input (not a form, no field, too long, a
//! control character) is a 400 page that says what to fix, counted on
//! `doorstep_hub_customer_actions_total` with its reason, and stores and sends nothing.
//!
//! Every action is written through the ingest writer, the hub's one database writer, in
//! one transaction with its timeline entry (source `customer`, kinds
//! `customer_instructions` and `customer_not_home`) and, for "not at home", the alert.
//! Instructions are sent to the van whose current route carries the parcel as a signed
//! [`StopNote`] for the parcel's stop, right after the commit; with no such van yet they
//! wait in the store and go out with the route when it is posted, and again whenever the
//! hub publishes that route again. Logs name the shipment by its id and say how long the
//! instructions are, never what they say.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use doorstep_proto::{DeviceId, MAX_NOTE_CHARS, NoteTextError, StopNote, check_note_text};

use super::now_ms;
use super::page::{
    NotifyState, PageWatches, actions_open, error_page, form_pairs, internal, linked_shipment, param,
};
use crate::ingest::WriterCtx;
use crate::model::Milestone;
use crate::store::{Shipment, StoreError};

/// Why an action was refused, for the counter and the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The body is not `application/x-www-form-urlencoded`.
    NotAForm,
    /// The form has no `instructions` field.
    NoField,
    /// The instructions break the note rules.
    Text(NoteTextError),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::NotAForm => "not_a_form",
            Refusal::NoField => "no_field",
            Refusal::Text(NoteTextError::TooLong { .. }) => "too_long",
            Refusal::Text(NoteTextError::ControlCharacter { .. }) => "control_character",
        }
    }

    fn words(&self, de: bool) -> String {
        match (self, de) {
            (Refusal::NotAForm | Refusal::NoField, false) => {
                "Your instructions did not arrive. Please use the form on the tracking page.".to_owned()
            }
            (Refusal::NotAForm | Refusal::NoField, true) => {
                "Ihre Hinweise sind nicht angekommen. Bitte nutzen Sie das Formular auf der Sendungsseite."
                    .to_owned()
            }
            (Refusal::Text(NoteTextError::TooLong { chars }), false) => format!(
                "Your instructions are {chars} characters long; the driver's screen takes at most {MAX_NOTE_CHARS}. \
                 Please shorten them and send them again."
            ),
            (Refusal::Text(NoteTextError::TooLong { chars }), true) => format!(
                "Ihre Hinweise sind {chars} Zeichen lang; der Bildschirm des Fahrers zeigt höchstens {MAX_NOTE_CHARS}. \
                 Bitte kürzen Sie sie und senden Sie sie erneut."
            ),
            (Refusal::Text(NoteTextError::ControlCharacter { .. }), false) => {
                "Your instructions contain a character the driver's screen cannot show. Please write plain text only."
                    .to_owned()
            }
            (Refusal::Text(NoteTextError::ControlCharacter { .. }), true) => {
                "Ihre Hinweise enthalten ein Zeichen, das der Bildschirm des Fahrers nicht zeigen kann. \
                 Bitte nur einfachen Text schreiben."
                    .to_owned()
            }
        }
    }
}

/// Reads the instructions from a form body (pure): line breaks (a multi-line text box
/// sends CR LF) become single spaces, the text is trimmed and then checked with
/// [`check_note_text`], so every other control character is refused. Empty is allowed: it
/// removes the instructions.
pub(crate) fn read_instructions(content_type: Option<&str>, body: &[u8]) -> Result<String, Refusal> {
    let is_form = content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(Refusal::NotAForm);
    }
    let pairs = form_pairs(body);
    let raw = param(&pairs, "instructions").ok_or(Refusal::NoField)?;
    let text = raw.replace("\r\n", " ").replace(['\r', '\n'], " ");
    let text = text.trim().to_owned();
    check_note_text(&text).map_err(Refusal::Text)?;
    Ok(text)
}

fn is_german(shipment: &Shipment) -> bool {
    shipment.locale.to_ascii_lowercase().starts_with("de")
}

fn closed_page(state: &NotifyState, shipment: &Shipment) -> Response {
    let message = match (shipment.milestone, is_german(shipment)) {
        (Milestone::Delivered, false) => {
            "This parcel has been delivered, so nothing about it can be changed any more."
        }
        (Milestone::Delivered, true) => {
            "Diese Sendung wurde zugestellt; daran lässt sich nichts mehr ändern."
        }
        (_, false) => {
            "This parcel is no longer out for delivery to you (it is going back to the sender or waits at a \
             pickup point), so the driver can no longer be told. Please contact the sender."
        }
        (_, true) => {
            "Diese Sendung wird nicht mehr an Sie zugestellt (sie geht an den Absender zurück oder wartet in \
             einer Abholstelle); der Fahrer kann nicht mehr benachrichtigt werden. Bitte wenden Sie sich an den Absender."
        }
    };
    error_page(StatusCode::CONFLICT, &state.settings.brand, message)
}

/// What the writer did with an action.
enum Done {
    /// Stored; for instructions, the van they were sent to (if a van's route carries
    /// the parcel), for "not at home", whether the alert is new.
    Stored { sent_to: Option<DeviceId>, alert_new: bool },
    /// The page no longer offers actions for the parcel: nothing stored.
    Closed(Box<Shipment>),
}

/// Saves instructions on the writer thread and sends them to the van carrying the parcel.
fn save_instructions(ctx: &mut WriterCtx<'_>, shipment_id: i64, text: &str) -> Result<Done, StoreError> {
    let now = now_ms();
    // Read before the transaction, on the one writer thread: nothing changes between.
    let timeline = ctx.store.timeline(shipment_id)?;
    let tx = ctx.store.transaction()?;
    let Some(shipment) = tx.shipment(shipment_id)? else {
        return Err(StoreError::NotFound(format!("shipment {shipment_id}")));
    };
    if !actions_open(shipment.milestone, &timeline) {
        return Ok(Done::Closed(Box::new(shipment)));
    }
    tx.save_customer_instructions(shipment_id, text, now)?;
    tx.commit()?;
    let Some((route, stop_id)) = ctx.store.current_route_of_parcel(&shipment.tracking_number)? else {
        return Ok(Done::Stored { sent_to: None, alert_new: false });
    };
    let note = StopNote {
        device: route.device.clone(),
        issued_ms: now,
        route_id: route.route.route_id.clone(),
        stop_id,
        tracking_number: shipment.tracking_number,
        text: text.to_owned(),
    };
    match ctx.publish_stop_note(&route.fleet, note) {
        Ok(()) => Ok(Done::Stored { sent_to: Some(route.device), alert_new: false }),
        Err(e) => {
            // Stored: the van gets them with its route when the hub publishes it again.
            tracing::error!(shipment = shipment_id, device = %route.device, error = %e, "cannot send delivery instructions to the van now");
            Ok(Done::Stored { sent_to: None, alert_new: false })
        }
    }
}

/// Records "not at home today" on the writer thread: timeline entry and alert.
fn save_not_home(ctx: &mut WriterCtx<'_>, shipment_id: i64) -> Result<Done, StoreError> {
    // Read before the transaction, on the one writer thread: nothing changes between.
    let timeline = ctx.store.timeline(shipment_id)?;
    let tx = ctx.store.transaction()?;
    let Some(shipment) = tx.shipment(shipment_id)? else {
        return Err(StoreError::NotFound(format!("shipment {shipment_id}")));
    };
    if !actions_open(shipment.milestone, &timeline) {
        return Ok(Done::Closed(Box::new(shipment)));
    }
    let alert_new = tx.customer_not_home(shipment_id, now_ms())?;
    tx.commit()?;
    Ok(Done::Stored { sent_to: None, alert_new })
}

/// The writer's lane the page was given; `None` for a page router built alone (tests),
/// which then refuses actions with a 503.
fn writer_of(watches: Option<Extension<PageWatches>>) -> Option<crate::ingest::Writer> {
    watches.map(|Extension(w)| w.writer().clone())
}

fn unavailable(state: &NotifyState, action: &'static str) -> Response {
    state.metrics.customer_action(action, "unavailable");
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        &state.settings.brand,
        "This is not available right now. Please try again later.",
    )
}

fn back_to_page(token: &str, done: &str) -> Response {
    Redirect::to(&format!("/t/{token}?done={done}")).into_response()
}

/// `POST /t/{token}/instructions`.
pub(crate) async fn instructions(
    State(state): State<NotifyState>,
    watches: Option<Extension<PageWatches>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const ACTION: &str = "instructions";
    let shipment = match linked_shipment(&state, &token).await {
        Err(e) => return internal(&e),
        Ok(Err(response)) => return response,
        Ok(Ok(shipment)) => shipment,
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let text = match read_instructions(content_type, &body) {
        Ok(text) => text,
        Err(refusal) => {
            state.metrics.customer_action(ACTION, refusal.reason());
            tracing::info!(
                shipment = shipment.id,
                reason = refusal.reason(),
                "delivery instructions refused"
            );
            let words = refusal.words(is_german(&shipment));
            return error_page(StatusCode::BAD_REQUEST, &state.settings.brand, &words);
        }
    };
    let Some(writer) = writer_of(watches) else { return unavailable(&state, ACTION) };
    let (id, chars) = (shipment.id, text.chars().count());
    let done = match writer.call(move |ctx| save_instructions(ctx, id, &text)).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return internal(&e.into()),
        Err(_) => return unavailable(&state, ACTION),
    };
    match done {
        Done::Closed(shipment) => {
            state.metrics.customer_action(ACTION, "closed");
            tracing::info!(shipment = id, milestone = ?shipment.milestone, "delivery instructions refused: the delivery is over");
            closed_page(&state, &shipment)
        }
        Done::Stored { sent_to, .. } => {
            state.metrics.customer_action(ACTION, "saved");
            tracing::info!(
                shipment = id,
                chars,
                removed = chars == 0,
                device = sent_to.as_ref().map(DeviceId::as_str),
                "customer left delivery instructions{}",
                if sent_to.is_some() {
                    "; sent to the van"
                } else {
                    "; kept until a van's route carries the parcel"
                }
            );
            back_to_page(&token, "instructions")
        }
    }
}

/// `POST /t/{token}/not-home`.
pub(crate) async fn not_home(
    State(state): State<NotifyState>,
    watches: Option<Extension<PageWatches>>,
    Path(token): Path<String>,
) -> Response {
    const ACTION: &str = "not_home";
    let shipment = match linked_shipment(&state, &token).await {
        Err(e) => return internal(&e),
        Ok(Err(response)) => return response,
        Ok(Ok(shipment)) => shipment,
    };
    let Some(writer) = writer_of(watches) else { return unavailable(&state, ACTION) };
    let id = shipment.id;
    let done = match writer.call(move |ctx| save_not_home(ctx, id)).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return internal(&e.into()),
        Err(_) => return unavailable(&state, ACTION),
    };
    match done {
        Done::Closed(shipment) => {
            state.metrics.customer_action(ACTION, "closed");
            tracing::info!(shipment = id, milestone = ?shipment.milestone, "not-at-home refused: the delivery is over");
            closed_page(&state, &shipment)
        }
        Done::Stored { alert_new, .. } => {
            state.metrics.customer_action(ACTION, "saved");
            tracing::info!(
                shipment = id,
                alert_new,
                "customer says nobody is at home today; operations alerted"
            );
            back_to_page(&token, "not-home")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn instructions_are_read_trimmed_with_line_breaks_as_spaces() {
        assert_eq!(read_instructions(FORM, b"instructions=+Ring+twice%21+"), Ok("Ring twice!".to_owned()));
        assert_eq!(
            read_instructions(
                Some("application/x-www-form-urlencoded; charset=UTF-8"),
                b"instructions=Hof%0D%0Ahinten"
            ),
            Ok("Hof hinten".to_owned())
        );
        assert_eq!(read_instructions(FORM, b"instructions=%20%20"), Ok(String::new()), "empty removes them");
    }

    #[test]
    fn bad_forms_are_refused_with_a_reason() {
        assert_eq!(read_instructions(Some("application/json"), b"{}"), Err(Refusal::NotAForm));
        assert_eq!(read_instructions(None, b"instructions=x"), Err(Refusal::NotAForm));
        assert_eq!(read_instructions(FORM, b"note=x"), Err(Refusal::NoField));
        let long = format!("instructions={}", "x".repeat(MAX_NOTE_CHARS + 1));
        let refused = read_instructions(FORM, long.as_bytes()).expect_err("too long");
        assert_eq!(refused.reason(), "too_long");
        assert!(refused.words(false).contains("301 characters"), "{}", refused.words(false));
        let escape = read_instructions(FORM, b"instructions=%1B%5B2J").expect_err("escape");
        assert_eq!(escape.reason(), "control_character");
        // Exactly the limit, counted after trimming.
        let fits = format!("instructions=++{}++", "x".repeat(MAX_NOTE_CHARS));
        assert_eq!(read_instructions(FORM, fits.as_bytes()).map(|t| t.len()), Ok(MAX_NOTE_CHARS));
    }
}
