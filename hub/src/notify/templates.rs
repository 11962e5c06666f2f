//! Message templates per (milestone or update, channel, locale), and SMS length
//! arithmetic.
//!
//! A template is plain text with three placeholders: `{tracking_number}`, `{detail}`
//! (the reconciler's extra text: a revised expectation, a reason; empty when there is
//! none) and `{link}` (the signed tracking link, which every customer message carries:
//! a template without `{link}` is refused at start-up). English and German defaults
//! ship in code, for each milestone and for each [`Update`] (news between milestones: a
//! delay, "still on its way"); `[[notify.templates]]` entries override the milestones'
//! per locale and optionally channel. A locale is looked up exactly (`de-AT`), then by
//! language (`de`), then in the fallback locale, then in built-in English.
//!
//! SMS bodies are fitted, not cut: the detail is shortened first so the message fits one
//! segment (160 GSM-7 characters, or 70 UCS-2 code units once any character is outside
//! GSM-7), then within the configured maximum number of segments; the link and the
//! template's own words are never truncated.

use std::collections::HashMap;

use crate::model::{Milestone, Update};
use crate::store::ContactChannel;

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 3] = ["tracking_number", "detail", "link"];

/// Characters of the GSM 03.38 basic set (one septet each), without the escape.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Characters of the GSM 03.38 extension table (escape + one septet: two each).
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{0c}";

/// How an SMS is encoded on the air.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsEncoding {
    /// GSM 03.38 7-bit: 160 septets in one segment, 153 per segment when split.
    Gsm7,
    /// UCS-2 (UTF-16 code units): 70 in one segment, 67 per segment when split.
    Ucs2,
}

impl SmsEncoding {
    /// Units that fit an unsplit message.
    pub fn single_segment(self) -> usize {
        match self {
            SmsEncoding::Gsm7 => 160,
            SmsEncoding::Ucs2 => 70,
        }
    }

    /// Units per segment of a split message (the rest carries the concatenation header).
    pub fn per_segment(self) -> usize {
        match self {
            SmsEncoding::Gsm7 => 153,
            SmsEncoding::Ucs2 => 67,
        }
    }
}

/// The size of an SMS body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmsLength {
    /// The encoding a carrier will use for it.
    pub encoding: SmsEncoding,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2).
    pub units: usize,
    /// Segments it is billed and delivered as.
    pub segments: usize,
}

/// Measures an SMS body: GSM-7 when every character is in the GSM 03.38 basic or
/// extension table (extension characters count two septets), UCS-2 otherwise.
pub fn sms_length(text: &str) -> SmsLength {
    let mut septets = 0usize;
    let mut gsm = true;
    for c in text.chars() {
        if GSM7_BASIC.contains(c) {
            septets += 1;
        } else if GSM7_EXTENSION.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    let (encoding, units) =
        if gsm { (SmsEncoding::Gsm7, septets) } else { (SmsEncoding::Ucs2, text.encode_utf16().count()) };
    let segments =
        if units <= encoding.single_segment() { 1 } else { units.div_ceil(encoding.per_segment()) };
    SmsLength { encoding, units, segments }
}

/// `text` with the five HTML-significant characters escaped.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The HTML part of a message from the hub's own template: the text, escaped, with the
/// tracking link made clickable (and added when the text lacks it).
pub fn html_body(body: &str, link: &str) -> String {
    let text = html_escape(body).replace('\n', "<br>");
    if link.is_empty() {
        return format!("<p>{text}</p>");
    }
    let link = html_escape(link);
    let anchor = format!("<a href=\"{link}\">{link}</a>");
    if text.contains(&link) {
        format!("<p>{}</p>", text.replace(&link, &anchor))
    } else {
        format!("<p>{text}</p><p>{anchor}</p>")
    }
}

/// One message template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Email subject (other channels ignore it).
    pub subject: String,
    /// The text, with placeholders.
    pub body: String,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name}` is not one of [`PLACEHOLDERS`].
    #[error(
        "template for {milestone:?}/{locale}: unknown placeholder {{{name}}} (use {{tracking_number}}, {{detail}}, {{link}})"
    )]
    UnknownPlaceholder {
        /// Its milestone.
        milestone: Milestone,
        /// Its locale.
        locale: String,
        /// The placeholder.
        name: String,
    },
    /// Every customer message carries the tracking link.
    #[error(
        "template for {milestone:?}/{locale} has no {{link}}: every customer message carries the tracking link"
    )]
    NoLink {
        /// Its milestone.
        milestone: Milestone,
        /// Its locale.
        locale: String,
    },
}

/// What fills a template's placeholders.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    /// The parcel's tracking number.
    pub tracking_number: &'a str,
    /// Extra text, if any.
    pub detail: Option<&'a str>,
    /// The tracking link.
    pub link: &'a str,
}

/// The built-in templates: (milestone, language, subject, body).
const DEFAULTS: &[(Milestone, &str, &str, &str)] = &[
    (
        Milestone::Dispatched,
        "en",
        "Your parcel is on its way",
        "Doorstep: your parcel {tracking_number} is on its way. {detail} Track it: {link}",
    ),
    (
        Milestone::OutForDelivery,
        "en",
        "Your parcel arrives today",
        "Doorstep: your parcel {tracking_number} is out for delivery today. {detail} Track it: {link}",
    ),
    (
        Milestone::Nearby,
        "en",
        "Your driver is nearby",
        "Doorstep: the driver with your parcel {tracking_number} is nearby. {detail} Track it: {link}",
    ),
    (
        Milestone::Exception,
        "en",
        "A problem with your parcel",
        "Doorstep: there is a problem with your parcel {tracking_number}. {detail} Details: {link}",
    ),
    (
        Milestone::Delivered,
        "en",
        "Your parcel was delivered",
        "Doorstep: your parcel {tracking_number} was delivered. Proof of delivery: {link}",
    ),
    (
        Milestone::Dispatched,
        "de",
        "Ihr Paket ist unterwegs",
        "Doorstep: Ihr Paket {tracking_number} ist unterwegs. {detail} Verfolgen: {link}",
    ),
    (
        Milestone::OutForDelivery,
        "de",
        "Ihr Paket kommt heute",
        "Doorstep: Ihr Paket {tracking_number} wird heute zugestellt. {detail} Verfolgen: {link}",
    ),
    (
        Milestone::Nearby,
        "de",
        "Ihr Fahrer ist gleich da",
        "Doorstep: Ihr Fahrer ist gleich da mit Paket {tracking_number}. {detail} Verfolgen: {link}",
    ),
    (
        Milestone::Exception,
        "de",
        "Ein Problem mit Ihrem Paket",
        "Doorstep: Es gibt ein Problem mit Ihrem Paket {tracking_number}. {detail} Details: {link}",
    ),
    (
        Milestone::Delivered,
        "de",
        "Ihr Paket wurde zugestellt",
        "Doorstep: Ihr Paket {tracking_number} wurde zugestellt. Zustellnachweis: {link}",
    ),
];

/// The built-in templates of the updates: (update, language, subject, body). A delay's
/// `{detail}` is its new date in the customer's calendar (`exceptions::delay_words`),
/// kept whole on SMS.
const UPDATE_DEFAULTS: &[(Update, &str, &str, &str)] = &[
    (
        Update::Delayed,
        "en",
        "Your parcel is delayed",
        "Doorstep: your parcel {tracking_number} is delayed. {detail} Track it: {link}",
    ),
    (
        Update::StillOnItsWay,
        "en",
        "Your parcel is still on its way",
        "Doorstep: your parcel {tracking_number} is still on its way. Track it: {link}",
    ),
    (
        Update::Delayed,
        "de",
        "Ihr Paket verspätet sich",
        "Doorstep: Ihr Paket {tracking_number} verspätet sich. {detail} Verfolgen: {link}",
    ),
    (
        Update::StillOnItsWay,
        "de",
        "Ihr Paket ist weiter unterwegs",
        "Doorstep: Ihr Paket {tracking_number} ist weiter unterwegs. Verfolgen: {link}",
    ),
];

/// What a template is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Topic {
    Milestone(Milestone),
    Update(Update),
}

type Key = (Topic, Option<ContactChannel>, String);

/// The template table.
#[derive(Debug, Clone)]
pub struct Templates {
    map: HashMap<Key, Template>,
    fallback_locale: String,
}

fn normalize_locale(locale: &str) -> String {
    locale.trim().replace('_', "-").to_ascii_lowercase()
}

/// Checks a template's placeholders and that it carries the link.
pub fn check(milestone: Milestone, locale: &str, body: &str, subject: &str) -> Result<(), TemplateError> {
    for text in [body, subject] {
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else { break };
            let name = &after[..close];
            if !PLACEHOLDERS.contains(&name) {
                return Err(TemplateError::UnknownPlaceholder {
                    milestone,
                    locale: locale.to_owned(),
                    name: name.to_owned(),
                });
            }
            rest = &after[close + 1..];
        }
    }
    if !body.contains("{link}") {
        return Err(TemplateError::NoLink { milestone, locale: locale.to_owned() });
    }
    Ok(())
}

impl Templates {
    /// The locale looked up when a recipient's has no template.
    pub fn fallback_locale(&self) -> &str {
        &self.fallback_locale
    }

    /// The built-in English and German templates, with `fallback_locale` as the fallback.
    pub fn defaults(fallback_locale: &str) -> Self {
        let template = |subject: &str, body: &str| Template { subject: subject.into(), body: body.into() };
        let milestones = DEFAULTS.iter().map(|(m, lang, subject, body)| {
            ((Topic::Milestone(*m), None, (*lang).to_owned()), template(subject, body))
        });
        let updates = UPDATE_DEFAULTS.iter().map(|(u, lang, subject, body)| {
            ((Topic::Update(*u), None, (*lang).to_owned()), template(subject, body))
        });
        let map = milestones.chain(updates).collect();
        Self { map, fallback_locale: normalize_locale(fallback_locale) }
    }

    /// Adds or replaces a template; `channel` None applies it to every channel without
    /// a channel-specific one.
    pub fn insert(
        &mut self,
        milestone: Milestone,
        channel: Option<ContactChannel>,
        locale: &str,
        template: Template,
    ) -> Result<(), TemplateError> {
        check(milestone, locale, &template.body, &template.subject)?;
        self.map.insert((Topic::Milestone(milestone), channel, normalize_locale(locale)), template);
        Ok(())
    }

    /// The template for a message: exact locale, its language, the fallback locale,
    /// English; channel-specific before channel-agnostic at each step.
    pub fn lookup(&self, milestone: Milestone, channel: ContactChannel, locale: &str) -> Option<&Template> {
        self.lookup_with_locale(milestone, channel, locale).map(|(_, t)| t)
    }

    /// [`Templates::lookup`], with the locale the template is written in (lowercase,
    /// `-` separated): what a channel that names the message's language (WhatsApp) must
    /// say, which after a fallback is not the recipient's.
    pub fn lookup_with_locale(
        &self,
        milestone: Milestone,
        channel: ContactChannel,
        locale: &str,
    ) -> Option<(String, &Template)> {
        self.find(Topic::Milestone(milestone), channel, locale)
    }

    /// [`Templates::lookup_with_locale`] for an update's message.
    pub fn lookup_update_with_locale(
        &self,
        update: Update,
        channel: ContactChannel,
        locale: &str,
    ) -> Option<(String, &Template)> {
        self.find(Topic::Update(update), channel, locale)
    }

    fn find(&self, topic: Topic, channel: ContactChannel, locale: &str) -> Option<(String, &Template)> {
        let exact = normalize_locale(locale);
        let language = exact.split('-').next().unwrap_or_default().to_owned();
        let fallback_language = self.fallback_locale.split('-').next().unwrap_or_default().to_owned();
        for loc in [exact, language, self.fallback_locale.clone(), fallback_language, "en".to_owned()] {
            for ch in [Some(channel), None] {
                if let Some(t) = self.map.get(&(topic, ch, loc.clone())) {
                    return Some((loc, t));
                }
            }
        }
        None
    }
}

/// Fills a template's placeholders; runs of spaces left by an empty `{detail}` collapse.
pub fn fill(text: &str, vars: &Vars<'_>) -> String {
    let filled = text
        .replace("{tracking_number}", vars.tracking_number)
        .replace("{detail}", vars.detail.unwrap_or(""))
        .replace("{link}", vars.link);
    let mut out = String::with_capacity(filled.len());
    let mut last_space = false;
    for c in filled.chars() {
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        out.push(c);
    }
    out.trim().to_owned()
}

/// `detail` shortened to `keep` characters with an ASCII ellipsis (GSM-7 safe).
fn shorten(detail: &str, keep: usize) -> String {
    let total = detail.chars().count();
    if keep >= total {
        return detail.to_owned();
    }
    if keep == 0 {
        return String::new();
    }
    let mut s: String = detail.chars().take(keep).collect();
    s.truncate(s.trim_end().len());
    s.push_str("...");
    s
}

/// Renders an SMS body: one segment when shortening the detail can make it fit, else
/// at most `max_segments`, shortening the detail as far as needed. The link and the
/// template's own words are never cut; when they alone exceed the maximum, the body is
/// the tracking number and the link.
pub fn render_sms(body: &str, vars: &Vars<'_>, max_segments: usize) -> String {
    let detail = vars.detail.unwrap_or("");
    let detail_len = detail.chars().count();
    let candidate = |keep: usize| {
        let d = shorten(detail, keep);
        fill(body, &Vars { detail: (!d.is_empty()).then_some(d.as_str()), ..*vars })
    };
    for limit in [1, max_segments.max(1)] {
        // Longest detail first; details are short (a sentence), so a linear walk is fine.
        for keep in (0..=detail_len).rev() {
            let text = candidate(keep);
            if sms_length(&text).segments <= limit {
                return text;
            }
        }
    }
    format!("{} {}", vars.tracking_number, vars.link)
}

/// [`render_sms`] for a detail with a part that must stay whole (an exception's next
/// step): the whole detail in one segment, else only `kept` in one, else the whole in up
/// to `max_segments`, else only `kept`, shortened as a last resort.
pub fn render_sms_keeping(body: &str, vars: &Vars<'_>, kept: &str, max_segments: usize) -> String {
    let with = |detail: &str| fill(body, &Vars { detail: Some(detail), ..*vars });
    for limit in [1, max_segments.max(1)] {
        for detail in [vars.detail.unwrap_or(kept), kept] {
            let text = with(detail);
            if sms_length(&text).segments <= limit {
                return text;
            }
        }
    }
    render_sms(body, &Vars { detail: Some(kept), ..*vars }, max_segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_counts_septets_and_extension_characters_twice() {
        let l = sms_length(&"a".repeat(160));
        assert_eq!((l.encoding, l.units, l.segments), (SmsEncoding::Gsm7, 160, 1));
        let l = sms_length(&"a".repeat(161));
        assert_eq!((l.units, l.segments), (161, 2));
        let l = sms_length(&format!("{}€", "a".repeat(158)));
        assert_eq!((l.encoding, l.units, l.segments), (SmsEncoding::Gsm7, 160, 1));
        let l = sms_length(&format!("{}[", "a".repeat(159)));
        assert_eq!((l.units, l.segments), (161, 2));
        assert_eq!(sms_length(&"a".repeat(306)).segments, 2);
        assert_eq!(sms_length(&"a".repeat(307)).segments, 3);
        assert_eq!(sms_length("Grüße aus Köln").encoding, SmsEncoding::Gsm7);
    }

    #[test]
    fn one_character_outside_gsm7_makes_the_whole_message_ucs2() {
        let l = sms_length(&format!("{}ł", "a".repeat(69)));
        assert_eq!((l.encoding, l.units, l.segments), (SmsEncoding::Ucs2, 70, 1));
        let l = sms_length(&format!("{}ł", "a".repeat(70)));
        assert_eq!((l.units, l.segments), (71, 2));
        // An emoji is two UTF-16 code units.
        assert_eq!(sms_length("📦").units, 2);
        assert_eq!(sms_length(&"ł".repeat(134)).segments, 2);
        assert_eq!(sms_length(&"ł".repeat(135)).segments, 3);
    }

    const LINK: &str = "https://track.example.com/t/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn a_long_detail_is_shortened_to_fit_one_segment_and_the_link_survives() {
        let t = Templates::defaults("en");
        let body = &t.lookup(Milestone::Exception, ContactChannel::Sms, "en-US").expect("template").body;
        let detail =
            "The carrier says the address could not be reached and will try again tomorrow between 9 and 12.";
        let sms = render_sms(
            body,
            &Vars { tracking_number: "1Z999AA10123456784", detail: Some(detail), link: LINK },
            2,
        );
        assert_eq!(sms_length(&sms).segments, 1, "{sms}");
        assert!(sms.ends_with(LINK), "{sms}");
        assert!(sms.contains("The carri"), "{sms}");
        assert!(sms.contains("..."), "{sms}");
    }

    #[test]
    fn a_non_gsm_detail_is_shortened_to_the_ucs2_limit_and_never_past_the_maximum() {
        let body = "Doorstep: parcel {tracking_number}. {detail} {link}";
        let detail = "Zustellung verschoben – der Fahrer kommt morgen 📦 wieder vorbei, bitte halten Sie die Sendungsnummer bereit.";
        let vars = Vars { tracking_number: "1Z999AA10123456784", detail: Some(detail), link: LINK };
        let sms = render_sms(body, &vars, 2);
        let len = sms_length(&sms);
        assert!(len.segments <= 2, "{len:?}");
        assert!(sms.ends_with(LINK));
        // Without room for a detail, the template's words and the link stay whole.
        let sms = render_sms(body, &Vars { detail: Some(&"é".repeat(500)), ..vars }, 1);
        assert!(sms.starts_with("Doorstep: parcel 1Z999AA10123456784."), "{sms}");
        assert!(sms.ends_with(LINK));
        assert_eq!(sms_length(&sms).segments, 1);
    }

    #[test]
    fn locales_fall_back_by_language_then_to_the_fallback() {
        let mut t = Templates::defaults("en");
        assert!(
            t.lookup(Milestone::Delivered, ContactChannel::Sms, "de-AT")
                .expect("de")
                .body
                .contains("zugestellt")
        );
        assert!(
            t.lookup(Milestone::Delivered, ContactChannel::Sms, "fr-FR")
                .expect("en")
                .body
                .contains("delivered")
        );
        // The locale found says what language the text is in, not what was asked for.
        assert_eq!(
            t.lookup_with_locale(Milestone::Delivered, ContactChannel::Sms, "fr-FR").expect("en").0,
            "en"
        );
        assert_eq!(
            t.lookup_with_locale(Milestone::Delivered, ContactChannel::Sms, "de-AT").expect("de").0,
            "de"
        );
        t.insert(
            Milestone::Delivered,
            Some(ContactChannel::Email),
            "fr",
            Template { subject: "Livré".into(), body: "Livré : {link}".into() },
        )
        .expect("valid");
        assert_eq!(
            t.lookup(Milestone::Delivered, ContactChannel::Email, "fr-CA").expect("fr").subject,
            "Livré"
        );
        assert!(
            t.lookup(Milestone::Delivered, ContactChannel::Sms, "fr-CA")
                .expect("en")
                .body
                .contains("delivered")
        );
        let no_link = Template { subject: String::new(), body: "Delivered!".into() };
        assert!(matches!(
            t.insert(Milestone::Delivered, None, "en", no_link),
            Err(TemplateError::NoLink { .. })
        ));
        let typo = Template { subject: String::new(), body: "{tracking} {link}".into() };
        assert!(matches!(
            t.insert(Milestone::Delivered, None, "en", typo),
            Err(TemplateError::UnknownPlaceholder { .. })
        ));
    }

    #[test]
    fn an_absent_detail_leaves_no_double_space() {
        let t = Templates::defaults("en");
        let body = &t.lookup(Milestone::Dispatched, ContactChannel::Sms, "en").expect("t").body;
        let text = fill(body, &Vars { tracking_number: "TN1", detail: None, link: "L" });
        assert_eq!(text, "Doorstep: your parcel TN1 is on its way. Track it: L");
    }

    #[test]
    fn every_update_has_a_checked_template_in_both_languages_that_fits_the_sms_rules() {
        let t = Templates::defaults("en");
        let vars = |detail| Vars { tracking_number: "1Z999AA10123456784", detail, link: LINK };
        for update in Update::ALL {
            for (locale, language) in [("en-US", "en"), ("de-CH", "de"), ("fr-FR", "en")] {
                let (found, template) =
                    t.lookup_update_with_locale(update, ContactChannel::Sms, locale).expect("template");
                assert_eq!(found, language, "{update:?} in {locale}");
                check(Milestone::Dispatched, &found, &template.body, &template.subject).expect("valid");
                let detail = match (update, language) {
                    (Update::Delayed, "de") => {
                        Some("Es kommt jetzt voraussichtlich am Donnerstag, 10. September.")
                    }
                    (Update::Delayed, _) => Some("It is now expected on Wednesday 30 September."),
                    (Update::StillOnItsWay, _) => None,
                };
                let sms = render_sms_keeping(&template.body, &vars(detail), detail.unwrap_or(""), 2);
                let length = sms_length(&sms);
                assert!(length.segments <= 2 && length.encoding == SmsEncoding::Gsm7, "{sms}");
                assert!(detail.is_none_or(|d| sms.contains(d)), "the new date stays whole: {sms}");
                assert!(sms.ends_with(LINK) && !sms.contains('{'), "{sms}");
                if update == Update::StillOnItsWay {
                    assert_eq!(length.segments, 1, "a routine update costs one segment: {sms}");
                }
            }
        }
        // A milestone's override does not reach an update's text.
        let mut t = t;
        let over = Template { subject: "x".into(), body: "Dispatched {link}".into() };
        t.insert(Milestone::Dispatched, None, "en", over).expect("valid");
        let (_, still) =
            t.lookup_update_with_locale(Update::StillOnItsWay, ContactChannel::Email, "en").expect("t");
        assert!(still.body.contains("still on its way"));
    }
}
