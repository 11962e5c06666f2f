//! Exception messages that say what happened and what happens next, in the customer's
//! language.
//!
//! The reconciler hands over a reason code and the carrier's revised expectation
//! ([`ExceptionDetail`]); never words. Here each reason becomes a customer-facing phrase
//! (never the code, never the driver's note) and a next step: the carrier's new date when
//! it gave one, else the fleet's configured step for that reason (`[notify.exceptions]`,
//! defaults in [`default_step`]). On SMS the next step is the part kept whole: the phrase
//! is dropped before the next step is shortened (see `templates::render_sms_keeping`).
//!
//! A delay message ([`delay_words`]) says the carrier's new date the same way, in the
//! customer's calendar.

use std::collections::BTreeMap;

use jiff::civil::Date;
use serde::Deserialize;

use crate::reconcile::{DelayDetail, ExceptionDetail};

/// What happens after an exception, as the fleet handles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NextStep {
    /// Another attempt on the next working day.
    NextAttempt,
    /// The parcel waits at a pickup point (the tracking page says where).
    PickupPoint,
    /// The customer replies or opens the link to choose (another day, a neighbour, a
    /// pickup point).
    Choose,
    /// The parcel goes back; the sender arranges a replacement or refund.
    ReturnToSender,
    /// Nothing is decided yet: the customer hears as soon as it is.
    Updates,
}

/// The next step when the fleet configured none for a reason.
pub fn default_step(reason: &str) -> NextStep {
    match reason {
        "recipient_absent" | "unsafe" | "attempt_failed" => NextStep::NextAttempt,
        "no_access" | "address_not_found" => NextStep::Choose,
        "refused" | "damaged" | "returning" => NextStep::ReturnToSender,
        "available_for_pickup" => NextStep::PickupPoint,
        _ => NextStep::Updates,
    }
}

/// The reasons a driver or a carrier gives, for checking `[notify.exceptions]`.
pub const REASONS: [&str; 11] = [
    "recipient_absent",
    "no_access",
    "refused",
    "damaged",
    "address_not_found",
    "unsafe",
    "other",
    "attempt_failed",
    "exception",
    "available_for_pickup",
    "returning",
];

fn german(locale: &str) -> bool {
    locale.to_ascii_lowercase().starts_with("de")
}

/// What happened, in the customer's words.
fn what(reason: &str, de: bool) -> &'static str {
    match (reason, de) {
        ("recipient_absent", false) => "Nobody was at home to take it.",
        ("no_access", false) => "The driver could not get to your door.",
        ("refused", false) => "It was refused at the door.",
        ("damaged", false) => "It was damaged on the way.",
        ("address_not_found", false) => "The driver could not find your address.",
        ("unsafe", false) => "The driver could not deliver it safely today.",
        ("attempt_failed", false) => "The carrier could not deliver it.",
        ("exception", false) => "It is delayed.",
        ("available_for_pickup", false) => "It is waiting for you at a pickup point.",
        ("returning", false) => "It is on its way back to the sender.",
        (_, false) => "It could not be delivered today.",
        ("recipient_absent", true) => "Es war niemand da, um es anzunehmen.",
        ("no_access", true) => "Der Fahrer kam nicht bis zu Ihrer Tür.",
        ("refused", true) => "Die Annahme wurde verweigert.",
        ("damaged", true) => "Es wurde unterwegs beschädigt.",
        ("address_not_found", true) => "Der Fahrer hat Ihre Adresse nicht gefunden.",
        ("unsafe", true) => "Der Fahrer konnte heute nicht sicher zustellen.",
        ("attempt_failed", true) => "Der Zusteller konnte es nicht zustellen.",
        ("exception", true) => "Es verspätet sich.",
        ("available_for_pickup", true) => "Es liegt an einer Abholstelle für Sie bereit.",
        ("returning", true) => "Es ist auf dem Rückweg zum Absender.",
        (_, true) => "Es konnte heute nicht zugestellt werden.",
    }
}

fn step_words(step: NextStep, de: bool) -> &'static str {
    match (step, de) {
        (NextStep::NextAttempt, false) => "We will try again on the next working day.",
        (NextStep::PickupPoint, false) => "The link shows where to pick it up.",
        (NextStep::Choose, false) => "Reply or open the link to choose what happens next.",
        (NextStep::ReturnToSender, false) => "The sender will be in touch about a replacement or refund.",
        (NextStep::Updates, false) => "We will tell you as soon as we know more.",
        (NextStep::NextAttempt, true) => "Wir versuchen es am nächsten Werktag erneut.",
        (NextStep::PickupPoint, true) => "Der Link zeigt, wo Sie es abholen können.",
        (NextStep::Choose, true) => {
            "Antworten Sie oder öffnen Sie den Link, um zu wählen, wie es weitergeht."
        }
        (NextStep::ReturnToSender, true) => "Der Absender meldet sich wegen Ersatz oder Erstattung.",
        (NextStep::Updates, true) => "Wir melden uns, sobald wir mehr wissen.",
    }
}

const DAYS_EN: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
const DAYS_DE: [&str; 7] = ["Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag"];
const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const MONTHS_DE: [&str; 12] = [
    "Januar",
    "Februar",
    "März",
    "April",
    "Mai",
    "Juni",
    "Juli",
    "August",
    "September",
    "Oktober",
    "November",
    "Dezember",
];

/// The carrier's date as the customer's calendar shows it: a date, or an instant turned
/// into the day it is in their time zone. `None` when it is neither (the carrier's text
/// is then not shown: better no date than a garbled one).
fn local_date(expected: &str, time_zone: &str) -> Option<Date> {
    let text = expected.trim();
    if let Ok(date) = text.parse::<Date>() {
        return Some(date);
    }
    let instant = text.parse::<jiff::Timestamp>().ok()?;
    Some(instant.to_zoned(super::quiet::zone(time_zone)).date())
}

fn date_words(date: Date, de: bool) -> String {
    let day = usize::try_from(date.weekday().to_monday_zero_offset()).unwrap_or(0);
    let month = usize::try_from(date.month()).unwrap_or(1).saturating_sub(1);
    if de {
        format!("{}, {}. {}", DAYS_DE[day], date.day(), MONTHS_DE[month])
    } else {
        format!("{} {} {}", DAYS_EN[day], date.day(), MONTHS_EN[month])
    }
}

/// The two parts of an exception message: what happened, and what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words {
    /// What happened.
    pub what: String,
    /// What happens next (kept whole on SMS).
    pub next: String,
}

/// The words for an exception, in the language of `locale`, dates in `time_zone`.
pub fn words(
    detail: &ExceptionDetail,
    locale: &str,
    time_zone: &str,
    steps: &BTreeMap<String, NextStep>,
) -> Words {
    let de = german(locale);
    let reason = detail.reason.as_str();
    let step = steps.get(reason).copied().unwrap_or_else(|| default_step(reason));
    let dated = detail.expected.as_deref().and_then(|e| local_date(e, time_zone));
    let next = match dated {
        // A pickup point or a return is what happens; a date does not change it.
        Some(date) if !matches!(step, NextStep::PickupPoint | NextStep::ReturnToSender) => {
            if de {
                format!("Neue voraussichtliche Zustellung: {}.", date_words(date, true))
            } else {
                format!("New expected delivery: {}.", date_words(date, false))
            }
        }
        _ => step_words(step, de).to_owned(),
    };
    Words { what: what(reason, de).to_owned(), next }
}

/// The detail of a delay message: the carrier's new date in the customer's calendar
/// (`time_zone`) and language (`locale`). `None` when the date is unreadable, or falls on
/// the same or an earlier day in their calendar than the one they were told: a message
/// that says "delayed" must name a later day than the one they already have.
pub fn delay_words(detail: &DelayDetail, locale: &str, time_zone: &str) -> Option<String> {
    let date = local_date(&detail.expected, time_zone)?;
    let told = detail.previous.as_deref().and_then(|p| local_date(p, time_zone));
    if told.is_some_and(|told| date <= told) {
        return None;
    }
    Some(if german(locale) {
        format!("Es kommt jetzt voraussichtlich am {}.", date_words(date, true))
    } else {
        format!("It is now expected on {}.", date_words(date, false))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(reason: &str, expected: Option<&str>) -> ExceptionDetail {
        ExceptionDetail { reason: reason.into(), expected: expected.map(str::to_owned) }
    }

    #[test]
    fn every_reason_has_words_in_both_languages_and_never_shows_its_code() {
        for reason in REASONS.into_iter().chain(["driver_exception", "something_new"]) {
            for locale in ["en-US", "de-DE"] {
                let w = words(&detail(reason, None), locale, "Europe/Berlin", &BTreeMap::new());
                // No code (`recipient_absent`), whatever the reason; some codes are words.
                assert!(
                    !w.what.contains('_') && !w.next.contains('_') && !w.next.is_empty(),
                    "{reason}: {w:?}"
                );
            }
        }
    }

    #[test]
    fn the_carriers_new_date_is_the_next_step_in_the_customers_calendar() {
        let en = words(&detail("exception", Some("2026-08-09")), "en-GB", "Europe/London", &BTreeMap::new());
        assert_eq!(en.next, "New expected delivery: Sunday 9 August.");
        // 23:30 UTC on the 8th is already the 9th in Berlin.
        let de = words(
            &detail("attempt_failed", Some("2026-08-08T23:30:00Z")),
            "de-DE",
            "Europe/Berlin",
            &BTreeMap::new(),
        );
        assert_eq!(de.next, "Neue voraussichtliche Zustellung: Sonntag, 9. August.");
        let garbled = words(&detail("exception", Some("soon-ish")), "en", "UTC", &BTreeMap::new());
        assert_eq!(garbled.next, "We will tell you as soon as we know more.", "no garbled date");
        let pickup =
            words(&detail("available_for_pickup", Some("2026-08-09")), "en", "UTC", &BTreeMap::new());
        assert_eq!(pickup.next, "The link shows where to pick it up.");
    }

    #[test]
    fn a_fleet_chooses_its_own_next_step_per_reason() {
        let steps = BTreeMap::from([("recipient_absent".to_owned(), NextStep::PickupPoint)]);
        let w = words(&detail("recipient_absent", None), "en", "UTC", &steps);
        assert_eq!(w.next, "The link shows where to pick it up.");
    }

    fn delayed(expected: &str, previous: Option<&str>) -> DelayDetail {
        DelayDetail { expected: expected.into(), previous: previous.map(str::to_owned) }
    }

    #[test]
    fn a_delay_names_the_new_date_in_the_customers_calendar_and_language() {
        let d = delayed("2026-08-10", Some("2026-08-08"));
        assert_eq!(
            delay_words(&d, "en-GB", "Europe/London").as_deref(),
            Some("It is now expected on Monday 10 August.")
        );
        assert_eq!(
            delay_words(&d, "de-AT", "Europe/Vienna").as_deref(),
            Some("Es kommt jetzt voraussichtlich am Montag, 10. August.")
        );
        // 23:30 UTC on the 9th is the 10th in Berlin; the 8th at 08:00 UTC is still the 8th.
        let instant = delayed("2026-08-09T23:30:00Z", Some("2026-08-08T08:00:00Z"));
        assert_eq!(
            delay_words(&instant, "de-DE", "Europe/Berlin").as_deref(),
            Some("Es kommt jetzt voraussichtlich am Montag, 10. August.")
        );
    }

    #[test]
    fn a_delay_within_the_customers_day_or_to_an_unreadable_date_has_no_words() {
        // Eleven hours later by the carrier's clock, the same Saturday in New York.
        let same_day = delayed("2026-08-08T23:00:00-04:00", Some("2026-08-08T10:00:00-04:00"));
        assert_eq!(delay_words(&same_day, "en-US", "America/New_York"), None);
        assert_eq!(delay_words(&delayed("2026-08-07", Some("2026-08-08")), "en", "UTC"), None, "earlier");
        assert_eq!(delay_words(&delayed("next week", Some("2026-08-08")), "en", "UTC"), None);
        assert!(delay_words(&delayed("2026-08-09", None), "en", "UTC").is_some(), "nothing told before");
    }
}
