//! Customers' questions by text message: "where is my parcel?".
//!
//! A customer who writes to the number their messages come from gets an immediate
//! answer with the parcel's current status and its tracking link, in the shipment's
//! language, when the hub can tell which parcel they mean: the message names one of
//! *their* parcels' tracking numbers, or it asks where the parcel is and exactly one of
//! their parcels is still open. With several open parcels the answer asks for the
//! tracking number. A number the hub has no parcel for, or a tracking number that is not
//! the sender's, gets the same polite generic answer: nothing about any shipment, not
//! even whether it exists. Text that is neither a question nor a tracking number ("thank
//! you") gets no answer. Each question and its answer is logged (`customer_questions`).
//!
//! [`answer`] is pure: the sender's shipments and the links come in, the text goes out.

use super::page::NotifyState;
use super::{NotifyError, now_ms};
use crate::model::Milestone;
use crate::store::{ContactChannel, NewQuestion, Shipment};

/// How far back a sender's parcels are looked for (days).
pub const LOOKBACK_DAYS: i64 = 60;
/// Longest question kept in the log, characters.
pub const MAX_LOGGED: usize = 500;
/// Answers one sender gets in an hour at most; every answer is a paid message, and a
/// number writing in a loop (or an attacker) must not run the bill up.
pub const MAX_ANSWERS_PER_HOUR: i64 = 5;

/// What kind of answer a question got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// It named one of the sender's parcels.
    Named,
    /// It asked, and the sender has exactly one open parcel.
    OnlyOpen,
    /// It asked, and the sender has several open parcels: which one?
    WhichOne,
    /// The hub has no parcel for this sender (or the number named is not theirs).
    Unknown,
    /// Not a question: no answer.
    NotAQuestion,
    /// The sender had their answers for this hour: no answer.
    TooMany,
}

impl Kind {
    /// Its name in the log and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Named => "named",
            Kind::OnlyOpen => "only_open",
            Kind::WhichOne => "which_one",
            Kind::Unknown => "unknown_sender",
            Kind::NotAQuestion => "not_a_question",
            Kind::TooMany => "too_many",
        }
    }
}

/// The answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What kind.
    pub kind: Kind,
    /// The shipment it is about, if one.
    pub shipment_id: Option<i64>,
    /// The reply's text (`None`: no reply).
    pub text: Option<String>,
}

/// Words that make a message a question about a parcel, in the languages the hub's
/// templates speak (lower case; matched as whole words), besides a question mark.
const QUESTION_WORDS: &[&str] = &[
    "where",
    "when",
    "status",
    "parcel",
    "package",
    "delivery",
    "track",
    "tracking",
    "wo",
    "wann",
    "paket",
    "sendung",
    "lieferung",
    "où",
    "quand",
    "colis",
    "dónde",
    "donde",
    "cuándo",
    "paquete",
];

fn is_question(text: &str) -> bool {
    text.contains('?')
        || text
            .split(|c: char| !c.is_alphanumeric())
            .any(|w| QUESTION_WORDS.contains(&w.to_lowercase().as_str()))
}

/// The sender's parcel whose tracking number the text names (spaces inside a number are
/// ignored, case too).
fn named<'a>(text: &str, shipments: &'a [Shipment]) -> Option<&'a Shipment> {
    let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_uppercase();
    shipments.iter().find(|s| squeezed.contains(&s.tracking_number.as_str().to_uppercase()))
}

fn german(locale: &str) -> bool {
    locale.to_ascii_lowercase().starts_with("de")
}

/// The status of a parcel in the customer's words.
fn status_words(milestone: Milestone, de: bool) -> &'static str {
    match (milestone, de) {
        (Milestone::Created, false) => "registered and not yet on its way",
        (Milestone::Dispatched, false) => "on its way",
        (Milestone::OutForDelivery, false) => "out for delivery today",
        (Milestone::Nearby, false) => "nearly there: the driver is nearby",
        (Milestone::Exception, false) => "held up; the link says what happens next",
        (Milestone::Delivered, false) => "delivered",
        (Milestone::Created, true) => "angemeldet und noch nicht unterwegs",
        (Milestone::Dispatched, true) => "unterwegs",
        (Milestone::OutForDelivery, true) => "heute in der Zustellung",
        (Milestone::Nearby, true) => "fast da: der Fahrer ist in der Nähe",
        (Milestone::Exception, true) => "aufgehalten; der Link sagt, wie es weitergeht",
        (Milestone::Delivered, true) => "zugestellt",
    }
}

fn status_text(s: &Shipment, link: &str) -> String {
    let de = german(&s.locale);
    let status = status_words(s.milestone, de);
    if de {
        format!("Doorstep: Ihr Paket {} ist {status}. Verfolgen: {link}", s.tracking_number)
    } else {
        format!("Doorstep: your parcel {} is {status}. Track it: {link}", s.tracking_number)
    }
}

/// Answers `text` from a sender whose parcels (newest first) are `shipments`; `link` makes
/// a shipment's tracking link.
pub fn answer(text: &str, shipments: &[Shipment], link: impl Fn(&Shipment) -> String) -> Answer {
    if let Some(s) = named(text, shipments) {
        return Answer { kind: Kind::Named, shipment_id: Some(s.id), text: Some(status_text(s, &link(s))) };
    }
    if !is_question(text) {
        return Answer { kind: Kind::NotAQuestion, shipment_id: None, text: None };
    }
    let open: Vec<&Shipment> = shipments.iter().filter(|s| s.milestone != Milestone::Delivered).collect();
    match (open.as_slice(), shipments.first()) {
        ([only], _) => {
            Answer { kind: Kind::OnlyOpen, shipment_id: Some(only.id), text: Some(status_text(only, &link(only))) }
        }
        ([_, _, ..], Some(newest)) => {
            let text = if german(&newest.locale) {
                format!(
                    "Doorstep: Sie haben {} Pakete bei uns unterwegs. Antworten Sie mit der Sendungsnummer des Pakets, das Sie meinen.",
                    open.len()
                )
            } else {
                format!(
                    "Doorstep: you have {} parcels on their way with us. Reply with the tracking number of the one you mean.",
                    open.len()
                )
            };
            Answer { kind: Kind::WhichOne, shipment_id: None, text: Some(text) }
        }
        // Everything delivered: the newest parcel is what they most likely mean.
        ([], Some(newest)) => {
            Answer { kind: Kind::OnlyOpen, shipment_id: Some(newest.id), text: Some(status_text(newest, &link(newest))) }
        }
        _ => Answer {
            kind: Kind::Unknown,
            shipment_id: None,
            text: Some(
                "Doorstep: we could not find a parcel for this number. Please reply with your tracking number, \
                 or open the tracking link in your shipping e-mail."
                    .into(),
            ),
        },
    }
}

/// Answers a customer's message on `channel` from `sender` against the database (their
/// parcels of the last [`LOOKBACK_DAYS`]), within [`MAX_ANSWERS_PER_HOUR`], and logs it.
pub async fn answer_and_log(
    state: &NotifyState,
    channel: ContactChannel,
    sender: &str,
    text: &str,
) -> Result<Answer, NotifyError> {
    let (sender, text) = (sender.to_owned(), text.to_owned());
    let settings = std::sync::Arc::clone(&state.settings);
    let now = now_ms();
    let answer = state
        .db
        .call(move |store| {
            let answered = store.answers_since(channel.as_str(), &sender, now.saturating_sub(3_600_000))?;
            let answer = if answered >= MAX_ANSWERS_PER_HOUR {
                Answer { kind: Kind::TooMany, shipment_id: None, text: None }
            } else {
                let since = now.saturating_sub(LOOKBACK_DAYS * 86_400_000);
                let shipments = store.shipments_for_contact(channel, &sender, since)?;
                answer(&text, &shipments, |s| settings.tracking_link(s.id, now))
            };
            let question: String = text.chars().take(MAX_LOGGED).collect();
            store.record_question(
                now,
                &NewQuestion {
                    channel: channel.as_str(),
                    sender: &sender,
                    question: &question,
                    kind: answer.kind.as_str(),
                    shipment_id: answer.shipment_id,
                    answer: answer.text.as_deref(),
                },
            )?;
            Ok(answer)
        })
        .await?;
    state.metrics.question(channel.as_str(), answer.kind.as_str());
    tracing::info!(channel = channel.as_str(), kind = answer.kind.as_str(), shipment = ?answer.shipment_id, "customer question");
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use doorstep_proto::TrackingNumber;

    fn shipment(id: i64, tracking: &str, milestone: Milestone, locale: &str) -> Shipment {
        Shipment::bare(id, TrackingNumber::new(tracking).expect("tn"), milestone, locale)
    }

    fn link(s: &Shipment) -> String {
        format!("https://t.example/t/{}", s.id)
    }

    #[test]
    fn one_open_parcel_is_answered_in_its_language_with_its_link() {
        let mine = [shipment(7, "1Z999AA10123456784", Milestone::OutForDelivery, "de-DE")];
        let a = answer("Wo ist mein Paket", &mine, link);
        assert_eq!((a.kind, a.shipment_id), (Kind::OnlyOpen, Some(7)));
        let text = a.text.expect("text");
        assert!(
            text.contains("heute in der Zustellung") && text.ends_with("https://t.example/t/7"),
            "{text}"
        );
    }

    #[test]
    fn a_named_parcel_wins_and_only_the_senders_own_parcels_can_be_named() {
        let mine = [
            shipment(1, "1Z999AA10123456784", Milestone::Dispatched, "en"),
            shipment(2, "9400111899223197428490", Milestone::Nearby, "en"),
        ];
        let a = answer("status of 9400 1118 9922 3197 4284 90 please", &mine, link);
        assert_eq!((a.kind, a.shipment_id), (Kind::Named, Some(2)));
        assert!(a.text.expect("text").contains("the driver is nearby"));
        let which = answer("where are my parcels?", &mine, link);
        assert_eq!(which.kind, Kind::WhichOne);
        assert!(!which.text.expect("text").contains("1Z999"), "no tracking number is volunteered");
        // Someone else's number, from a sender the hub knows nothing about.
        let stranger = answer("where is 1Z999AA10123456784?", &[], link);
        assert_eq!((stranger.kind, stranger.shipment_id), (Kind::Unknown, None));
        assert!(!stranger.text.expect("text").contains("1Z999"));
    }

    #[test]
    fn thanks_is_not_a_question() {
        let mine = [shipment(1, "1Z999AA10123456784", Milestone::Delivered, "en")];
        assert_eq!(answer("Thank you!", &mine, link).kind, Kind::NotAQuestion);
        assert_eq!(answer("ok", &[], link).text, None);
    }
}
