//! Contacts in logs, masked: `+491•••••••678`, `j•••@example.com`. Logs travel further than
//! the database (aggregators, support tickets, screenshots), so no log line carries a
//! customer's full phone number or e-mail address. [`Masked`] masks every phone-number-like
//! run of digits and every e-mail-like word in free text too, such as a provider's error
//! message that quotes the number it refused.

use std::fmt;

/// Digits of a phone number left visible at each end.
const PHONE_KEEP_HEAD: usize = 3;
const PHONE_KEEP_TAIL: usize = 3;
/// Shortest digit run treated as a phone number (shorter ones are counts, codes, ids).
const PHONE_MIN_DIGITS: usize = 7;
const DOT: char = '•';

/// `text` with phone numbers and e-mail addresses masked, for a log field:
/// `tracing::info!(recipient = %Masked(&to), ...)`.
#[derive(Debug, Clone, Copy)]
pub struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask(self.0))
    }
}

/// `text` with phone numbers and e-mail addresses masked.
pub fn mask(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Words split on whitespace and on characters that never occur inside an address or
    // a number, keeping the separators as they were.
    let mut word = String::new();
    for c in text.chars() {
        if c.is_whitespace()
            || matches!(c, ',' | ';' | '"' | '\'' | '<' | '>' | '(' | ')' | '[' | ']' | '{' | '}' | '=' | ':')
        {
            out.push_str(&mask_word(&word));
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    out.push_str(&mask_word(&word));
    out
}

fn mask_word(word: &str) -> String {
    if let Some((local, domain)) = word.split_once('@')
        && !local.is_empty()
        && domain.contains('.')
    {
        let first = local.chars().next().map_or(String::new(), |c| c.to_string());
        return format!("{first}{DOT}{DOT}{DOT}@{domain}");
    }
    mask_digits(word)
}

/// Masks the middle of every run of at least [`PHONE_MIN_DIGITS`] digits (spaces, dots and
/// dashes inside a number do not end the run; they are kept).
fn mask_digits(word: &str) -> String {
    let chars: Vec<char> = word.chars().collect();
    let mut out = String::with_capacity(word.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i;
        let mut digits = 0;
        while i < chars.len() && (chars[i].is_ascii_digit() || matches!(chars[i], '-' | '.')) {
            if chars[i].is_ascii_digit() {
                digits += 1;
            }
            i += 1;
        }
        let run = &chars[start..i];
        if digits < PHONE_MIN_DIGITS {
            out.extend(run);
            continue;
        }
        let mut seen = 0;
        for &c in run {
            if c.is_ascii_digit() {
                seen += 1;
                let visible = seen <= PHONE_KEEP_HEAD || seen > digits - PHONE_KEEP_TAIL;
                out.push(if visible { c } else { DOT });
            } else {
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_and_emails_are_masked_and_the_rest_is_left_alone() {
        assert_eq!(mask("+4915112345678"), "+491•••••••678");
        assert_eq!(mask("jane.doe@example.com"), "j•••@example.com");
        assert_eq!(
            mask("Twilio 21211: The 'To' number +15555550100 is not valid (attempt 3 of 5)"),
            "Twilio 21211: The 'To' number +155•••••100 is not valid (attempt 3 of 5)"
        );
        assert_eq!(mask("to=<ben@example.org>, order 1234"), "to=<b•••@example.org>, order 1234");
        assert_eq!(mask("555-555-0100"), "555-•••-•100");
        assert_eq!(mask(""), "");
        assert_eq!(format!("{}", Masked("call +4930123456")), "call +493••••456");
    }

    #[test]
    fn no_full_number_survives_whatever_surrounds_it() {
        for text in
            ["x+4915112345678y", "+49 151 12345678", "tel:+4915112345678;ext=1", "\u{e9}4915112345678"]
        {
            let masked = mask(text);
            assert!(!masked.contains("12345678"), "{text} -> {masked}");
        }
    }
}
