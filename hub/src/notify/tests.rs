use super::*;
use crate::store::Contact;
use doorstep_proto::TrackingNumber;

fn settings() -> NotifySettings {
    let table: toml::Table = toml::from_str(
        r#"
        [quiet_hours]
        start = "21:00"
        end = "08:00"
        [twilio]
        account_sid = "AC1"
        auth_token = "t"
        from = "+15005550006"
        "#,
    )
    .expect("toml");
    NotifyConfig::from_table(Some(&table))
        .expect("parse")
        .validate("https://track.example.com", b"0123456789abcdef0123456789abcdef")
        .expect("valid")
}

fn shipment(milestone: Milestone, consent: bool) -> Shipment {
    let mut contacts = std::collections::BTreeMap::new();
    contacts.insert(ContactChannel::Sms, Contact { recipient: "+15555550100".into(), consent });
    let tn = TrackingNumber::new("1Z999AA10123456784").expect("tn");
    Shipment { contacts, ..Shipment::bare(7, tn, milestone, "de-DE") }
}

fn row(milestone: &str) -> OutboxRow {
    OutboxRow {
        id: 1,
        shipment_id: 7,
        milestone: milestone.into(),
        channel: "sms".into(),
        recipient: "+15555550100".into(),
        detail: None,
        status: crate::store::OutboxStatus::Queued,
        attempts: 0,
        next_attempt_ms: 0,
        created_ms: 0,
    }
}

// 2025-07-01 10:00 in Berlin, and 23:00 in Berlin.
const DAY: i64 = 1_751_356_800_000;
const NIGHT: i64 = 1_751_403_600_000;

#[test]
fn a_due_row_renders_in_the_recipients_language_with_a_working_link() {
    let s = settings();
    let Plan::Send(msg) =
        plan(&s, &row("delivered"), Some(&shipment(Milestone::Delivered, true)), false, DAY)
    else {
        panic!("expected a send")
    };
    assert!(msg.body.contains("zugestellt"), "{}", msg.body);
    let token = msg.link.strip_prefix("https://track.example.com/t/").expect("link");
    assert_eq!(s.link_signer.verify(token, DAY), Ok(7));
    assert!(msg.body.ends_with(&msg.link));
}

#[test]
fn consent_opt_out_and_overtaken_milestones_are_skipped() {
    let s = settings();
    let skipped = |p: Plan| match p {
        Plan::Skip { reason, .. } => reason,
        other => panic!("expected a skip, got {other:?}"),
    };
    assert_eq!(
        skipped(plan(&s, &row("nearby"), Some(&shipment(Milestone::Nearby, false)), false, DAY)),
        "no_consent"
    );
    assert_eq!(
        skipped(plan(&s, &row("nearby"), Some(&shipment(Milestone::Nearby, true)), true, DAY)),
        "opted_out"
    );
    assert_eq!(
        skipped(plan(&s, &row("nearby"), Some(&shipment(Milestone::Delivered, true)), false, DAY)),
        "superseded"
    );
    assert_eq!(skipped(plan(&s, &row("nearby"), None, false, DAY)), "shipment_missing");
    let mut email = row("delivered");
    email.channel = "email".into();
    assert_eq!(
        skipped(plan(&s, &email, Some(&shipment(Milestone::Delivered, true)), false, DAY)),
        "channel_not_configured"
    );
}

#[test]
fn quiet_hours_drop_nearby_and_defer_delivered_to_the_local_morning() {
    let s = settings();
    match plan(&s, &row("nearby"), Some(&shipment(Milestone::Nearby, true)), false, NIGHT) {
        Plan::Skip { reason, .. } => assert_eq!(reason, "quiet_hours"),
        other => panic!("{other:?}"),
    }
    match plan(&s, &row("delivered"), Some(&shipment(Milestone::Delivered, true)), false, NIGHT) {
        // 08:00 Berlin (CEST) on 2 July = 06:00Z.
        Plan::Defer { until_ms } => assert_eq!(until_ms, 1_751_436_000_000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn exception_messages_say_what_happened_and_what_happens_next_in_every_language_and_channel() {
    let table: toml::Table = toml::from_str(
        "[twilio]\naccount_sid = \"AC1\"\nauth_token = \"t\"\nfrom = \"+15005550006\"\n\
         [sendgrid]\napi_key = \"k\"\nfrom_email = \"p@example.com\"\n",
    )
    .expect("toml");
    let s = NotifyConfig::from_table(Some(&table))
        .expect("parse")
        .validate("https://track.example.com", b"0123456789abcdef0123456789abcdef")
        .expect("valid");
    for reason in exceptions::REASONS {
        for expected in [None, Some("2026-12-05")] {
            for locale in ["en-US", "de-DE"] {
                for (channel, recipient) in [("sms", "+15555550100"), ("email", "ada@example.com")] {
                    let mut ship = shipment(Milestone::Exception, true);
                    ship.locale = locale.into();
                    ship.contacts.insert(
                        ContactChannel::Email,
                        Contact { recipient: "ada@example.com".into(), consent: true },
                    );
                    let detail = crate::reconcile::ExceptionDetail {
                        reason: reason.into(),
                        expected: expected.map(str::to_owned),
                    };
                    let mut r = row("exception");
                    (r.channel, r.recipient, r.detail) =
                        (channel.into(), recipient.into(), Some(detail.to_json()));
                    let Plan::Send(msg) = plan(&s, &r, Some(&ship), false, DAY) else {
                        panic!("{reason} {channel}")
                    };
                    let words = exceptions::words(&detail, locale, &ship.time_zone, &s.exception_steps);
                    let case = format!("{reason}/{expected:?}/{locale}/{channel}: {}", msg.body);
                    // No code (they are snake_case; the link's token is base64url, no `_`
                    // check there) and no unfilled placeholder.
                    let text = msg.body.replace(&msg.link, "");
                    assert!(!text.contains('_') && !text.contains('{'), "{case}");
                    assert!(msg.body.contains(&words.next), "the next step is always whole: {case}");
                    assert!(msg.body.contains(&msg.link), "{case}");
                    if expected.is_some()
                        && !["available_for_pickup", "returning", "refused", "damaged"].contains(&reason)
                    {
                        assert!(msg.body.contains("5"), "the new date: {case}");
                    }
                    match channel {
                        "sms" => {
                            assert!(templates::sms_length(&msg.body).segments <= s.sms_max_segments, "{case}")
                        }
                        _ => assert!(msg.body.contains(&words.what), "e-mail says what happened too: {case}"),
                    }
                }
            }
        }
    }
}

#[test]
fn retry_after_is_read_in_seconds_and_as_an_http_date() {
    assert_eq!(retry_after(" 120 ", 0), Some(Duration::from_secs(120)));
    // RFC 9110's example date, 90 s before it.
    let at = 784_111_777_000;
    assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at - 90_000), Some(Duration::from_secs(90)));
    assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at + 1), Some(Duration::ZERO), "past: no wait");
    assert_eq!(retry_after("soon", 0), None);
    assert_eq!(retry_after("-5", 0), None);
}
