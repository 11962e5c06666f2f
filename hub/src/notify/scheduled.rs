//! Scheduled "still on its way" updates (opt-in: `[notify.still_on_its_way]`).
//!
//! A parcel long in transit with no word makes its customer write in ("where is my
//! parcel?"). A shipment in transit (dispatched, out for delivery or nearby; not
//! delivered, no exception, not cancelled by the carrier) whose customer has heard
//! nothing for [`Schedule::after`], counted from its dispatch and from its last message,
//! gets a "still on its way" update, and another every [`Schedule::every`] while nothing
//! else is sent; any other message (a delay, out for delivery) starts the silence again.
//!
//! The dispatcher runs [`sweep`] every [`SWEEP_INTERVAL`] while it holds the dispatch
//! lease. The updates go through the same outbox as every customer message, to the
//! consented contacts on the channels of the shipment's current milestone, keyed
//! `still_on_its_way:<n>` (`model::Notice::still_on_its_way`): the `n`th update of a
//! shipment is enqueued once whatever restarts or second hubs do, and the next is due only
//! `every` after it.

use std::time::Duration;

use crate::config::ChannelMap;
use crate::model::Notice;
use crate::store::{Store, StoreError};

/// How often the dispatcher looks for shipments due an update. The schedule counts in
/// days: a quarter of an hour late is on time.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Shipments looked at per transaction of a sweep (the sweep walks all in transit, a
/// batch at a time, so the write lock is never held for long).
pub const SWEEP_BATCH: usize = 200;

/// When "still on its way" updates go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Silence since dispatch and since the last other message before the first update.
    pub after: Duration,
    /// Between updates, while nothing else is sent.
    pub every: Duration,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Enqueues every "still on its way" update due at `now_ms`, on the channels
/// `channel_map` gives each shipment's current milestone. Returns (channel, `"still_on_its_way"`)
/// for each row enqueued, for counters.
pub fn sweep(
    store: &Store,
    schedule: &Schedule,
    channel_map: &ChannelMap,
    now_ms: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    let (after, every) = (millis(schedule.after), millis(schedule.every));
    let mut enqueued = Vec::new();
    let mut after_id = 0;
    loop {
        let tx = store.shared_transaction()?;
        let due = tx.quiet_in_transit(now_ms, after, every, after_id, SWEEP_BATCH)?;
        for &(shipment_id, updates) in &due {
            let Some(shipment) = tx.shipment(shipment_id)? else { continue };
            let notice = Notice::still_on_its_way(updates.saturating_add(1));
            let on = |channel| channel_map.allows(shipment.milestone, channel);
            for channel in tx.enqueue_to_contacts(&shipment, &notice.key(), None, now_ms, on)? {
                enqueued.push((channel.as_str().to_owned(), notice.kind().to_owned()));
            }
        }
        tx.commit()?;
        match due.last() {
            Some(&(last, _)) if due.len() == SWEEP_BATCH => after_id = last,
            _ => break,
        }
    }
    Ok(enqueued)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use doorstep_proto::TrackingNumber;

    use super::*;
    use crate::model::Milestone;
    use crate::notify::{NotifyConfig, NotifySettings, Plan, plan, templates};
    use crate::reconcile::{DelayDetail, ShipmentState};
    use crate::store::{Contact, ContactChannel, Named, NewShipment, OutboxRow, Shipment};

    const DAY: i64 = 86_400_000;
    /// 2026-08-07T08:00:00Z.
    const T0: i64 = 1_786_089_600_000;

    fn schedule() -> Schedule {
        Schedule { after: Duration::from_secs(3 * 86_400), every: Duration::from_secs(2 * 86_400) }
    }

    fn contacts(channels: &[(ContactChannel, &str, bool)]) -> BTreeMap<ContactChannel, Contact> {
        channels
            .iter()
            .map(|(channel, recipient, consent)| {
                (*channel, Contact { recipient: (*recipient).into(), consent: *consent })
            })
            .collect()
    }

    /// A shipment created and dispatched at `T0`, at `milestone`.
    fn shipment(store: &mut Store, tracking: &str, milestone: Milestone) -> i64 {
        let tx = store.transaction().expect("tx");
        let id = tx
            .insert_shipment(
                &NewShipment {
                    tracking_number: TrackingNumber::new(tracking).expect("tracking"),
                    carrier: None,
                    order_id: None,
                    contacts: contacts(&[
                        (ContactChannel::Sms, "+15555550100", true),
                        (ContactChannel::Email, "ada@example.com", false),
                    ]),
                    locale: "en-US".into(),
                    time_zone: "America/New_York".into(),
                },
                T0,
            )
            .expect("insert");
        let state = ShipmentState { milestone, dispatched_at_ms: Some(T0), ..ShipmentState::new() };
        tx.save_reconcile_json(id, milestone, &serde_json::to_string(&state).expect("json"), T0)
            .expect("save");
        tx.commit().expect("commit");
        id
    }

    /// Enqueues a customer message for `id` as ingest does, at `at_ms`.
    fn told(store: &mut Store, id: i64, key: &str, at_ms: i64) {
        let tx = store.transaction().expect("tx");
        let shipment = tx.shipment(id).expect("read").expect("shipment");
        tx.enqueue_to_contacts(&shipment, key, None, at_ms, |_| true).expect("enqueue");
        tx.commit().expect("commit");
    }

    fn keys(store: &Store, id: i64) -> Vec<(String, String)> {
        let rows = store.outbox_for_shipment(id).expect("outbox");
        rows.into_iter().map(|r| (r.milestone.to_string(), r.channel.to_string())).collect()
    }

    fn still(n: u32) -> (String, String) {
        (Notice::still_on_its_way(n).key(), "sms".into())
    }

    #[test]
    fn a_quiet_shipment_in_transit_is_told_after_n_days_then_every_interval_never_twice() {
        let mut store = Store::open_in_memory().expect("open");
        let id = shipment(&mut store, "1Z999AA10123456784", Milestone::Dispatched);
        told(&mut store, id, "dispatched", T0);
        let map = ChannelMap::default();
        let sweep_at = |store: &Store, at: i64| sweep(store, &schedule(), &map, at).expect("sweep").len();

        assert_eq!(sweep_at(&store, T0 + 3 * DAY - 1), 0, "not before three days of silence");
        assert_eq!(sweep_at(&store, T0 + 3 * DAY), 1, "sms only: e-mail has no consent");
        assert_eq!(
            sweep_at(&store, T0 + 3 * DAY + 1),
            0,
            "a second sweep (or a restarted hub) sends nothing"
        );
        assert_eq!(sweep_at(&store, T0 + 5 * DAY - 1), 0, "not again within the interval");
        assert_eq!(sweep_at(&store, T0 + 5 * DAY), 1);
        assert_eq!(
            keys(&store, id),
            vec![("dispatched".into(), "sms".into()), still(1), still(2)],
            "each update has its own number"
        );
    }

    #[test]
    fn any_other_message_starts_the_silence_again() {
        let mut store = Store::open_in_memory().expect("open");
        let id = shipment(&mut store, "1Z999AA10123456784", Milestone::Dispatched);
        let map = ChannelMap::default();
        assert_eq!(sweep(&store, &schedule(), &map, T0 + 3 * DAY).expect("sweep").len(), 1);
        told(&mut store, id, &Notice::delayed("2026-08-14").key(), T0 + 4 * DAY);
        assert_eq!(
            sweep(&store, &schedule(), &map, T0 + 6 * DAY).expect("sweep").len(),
            0,
            "the delay was news"
        );
        assert_eq!(sweep(&store, &schedule(), &map, T0 + 7 * DAY).expect("sweep").len(), 1);
        assert_eq!(keys(&store, id).last(), Some(&still(2)));
    }

    #[test]
    fn delivered_exception_and_cancelled_shipments_and_the_recently_dispatched_are_never_told() {
        let mut store = Store::open_in_memory().expect("open");
        let delivered = shipment(&mut store, "1Z999AA10000000001", Milestone::Delivered);
        let exception = shipment(&mut store, "1Z999AA10000000002", Milestone::Exception);
        let created = shipment(&mut store, "1Z999AA10000000003", Milestone::Created);
        let cancelled = shipment(&mut store, "1Z999AA10000000004", Milestone::Dispatched);
        let late = shipment(&mut store, "1Z999AA10000000005", Milestone::OutForDelivery);
        let out = shipment(&mut store, "1Z999AA10000000006", Milestone::OutForDelivery);
        {
            let tx = store.transaction().expect("tx");
            let state = ShipmentState {
                milestone: Milestone::Dispatched,
                dispatched_at_ms: Some(T0),
                carrier_cancelled_at_ms: Some(T0 + DAY),
                ..ShipmentState::new()
            };
            let json = serde_json::to_string(&state).expect("json");
            tx.save_reconcile_json(cancelled, Milestone::Dispatched, &json, T0 + DAY).expect("save");
            // Known since day 0, but dispatched only on day 2.
            let state = ShipmentState {
                milestone: Milestone::OutForDelivery,
                dispatched_at_ms: Some(T0 + 2 * DAY),
                ..ShipmentState::new()
            };
            let json = serde_json::to_string(&state).expect("json");
            tx.save_reconcile_json(late, Milestone::OutForDelivery, &json, T0 + 2 * DAY).expect("save");
            tx.commit().expect("commit");
        }
        let map = ChannelMap::default();
        let told = sweep(&store, &schedule(), &map, T0 + 4 * DAY).expect("sweep");
        assert_eq!(told.len(), 1, "{told:?}");
        for quiet in [delivered, exception, created, cancelled, late] {
            assert_eq!(keys(&store, quiet), vec![], "shipment {quiet}");
        }
        assert_eq!(keys(&store, out), vec![still(1)]);
    }

    #[test]
    fn the_channel_map_of_the_current_milestone_decides_where_an_update_goes() {
        let mut store = Store::open_in_memory().expect("open");
        let id = shipment(&mut store, "1Z999AA10123456784", Milestone::Dispatched);
        let email_only = ChannelMap::from_entries([(Milestone::Dispatched, vec![ContactChannel::Email])]);
        assert_eq!(sweep(&store, &schedule(), &email_only, T0 + 3 * DAY).expect("sweep"), vec![]);
        assert_eq!(
            keys(&store, id),
            vec![],
            "e-mail is mapped but not consented, SMS consented but not mapped"
        );
    }

    #[test]
    fn a_sweep_walks_every_shipment_in_batches() {
        let mut store = Store::open_in_memory().expect("open");
        let n = SWEEP_BATCH + 3;
        for i in 0..n {
            shipment(&mut store, &format!("1Z999AA1{i:010}"), Milestone::Dispatched);
        }
        let told = sweep(&store, &schedule(), &ChannelMap::default(), T0 + 3 * DAY).expect("sweep");
        assert_eq!(told.len(), n);
        assert!(told.iter().all(|(channel, kind)| channel == "sms" && kind == "still_on_its_way"));
    }

    // --- what the customer reads ----------------------------------------------------------

    fn settings() -> NotifySettings {
        let table: toml::Table = toml::from_str(
            "[twilio]\naccount_sid = \"AC1\"\nauth_token = \"t\"\nfrom = \"+15005550006\"\n\
             [sendgrid]\napi_key = \"k\"\nfrom_email = \"p@example.com\"\n",
        )
        .expect("toml");
        NotifyConfig::from_table(Some(&table))
            .expect("parse")
            .validate("https://track.example.com", b"0123456789abcdef0123456789abcdef")
            .expect("valid")
    }

    fn customer(locale: &str, milestone: Milestone) -> Shipment {
        let mut s =
            Shipment::bare(7, TrackingNumber::new("1Z999AA10123456784").expect("tn"), milestone, locale);
        s.contacts = contacts(&[
            (ContactChannel::Sms, "+15555550100", true),
            (ContactChannel::Email, "ada@example.com", true),
        ]);
        s
    }

    fn row(notice: &Notice, channel: ContactChannel, detail: Option<String>) -> OutboxRow {
        let recipient = match channel {
            ContactChannel::Sms => "+15555550100",
            _ => "ada@example.com",
        };
        OutboxRow {
            id: 1,
            shipment_id: 7,
            milestone: Named::Known(notice.clone()),
            channel: Named::Known(channel),
            recipient: recipient.into(),
            detail,
            status: crate::store::OutboxStatus::Queued,
            attempts: 0,
            next_attempt_ms: 0,
            created_ms: 0,
        }
    }

    /// Noon in Berlin, outside quiet hours.
    const NOON: i64 = 1_786_096_800_000;

    fn sent(p: Plan) -> crate::notify::Outgoing {
        match p {
            Plan::Send(msg) => *msg,
            other => panic!("expected a send, got {other:?}"),
        }
    }

    #[test]
    fn a_delay_message_names_the_new_date_in_each_language_and_channel() {
        let s = settings();
        let detail = DelayDetail { expected: "2026-08-10".into(), previous: Some("2026-08-08".into()) };
        let cases = [
            ("en-US", "It is now expected on Monday 10 August.", "Your parcel is delayed"),
            ("de-DE", "Es kommt jetzt voraussichtlich am Montag, 10. August.", "Ihr Paket verspätet sich"),
        ];
        for (locale, words, subject) in cases {
            for channel in [ContactChannel::Sms, ContactChannel::Email] {
                let r = row(&Notice::delayed(&detail.expected), channel, Some(detail.to_json()));
                let msg = sent(plan(&s, &r, Some(&customer(locale, Milestone::Dispatched)), false, NOON));
                let case = format!("{locale}/{}: {}", channel.as_str(), msg.body);
                assert!(msg.body.contains(words), "the new date, whole: {case}");
                assert!(msg.body.contains("1Z999AA10123456784") && msg.body.ends_with(&msg.link), "{case}");
                let text = msg.body.replace(&msg.link, "");
                assert!(
                    !text.contains('{') && !text.contains("2026-"),
                    "no placeholder, no raw date: {case}"
                );
                assert_eq!(msg.milestone, Milestone::Dispatched, "a delay is news of the current milestone");
                if channel == ContactChannel::Sms {
                    assert!(templates::sms_length(&msg.body).segments <= s.sms_max_segments, "{case}");
                } else {
                    assert_eq!(msg.subject, subject);
                }
            }
        }
    }

    #[test]
    fn a_still_on_its_way_message_reads_well_in_each_language_and_fits_one_sms() {
        let s = settings();
        for (locale, words, subject) in [
            ("en-GB", "is still on its way", "Your parcel is still on its way"),
            ("de-AT", "ist weiter unterwegs", "Ihr Paket ist weiter unterwegs"),
        ] {
            for channel in [ContactChannel::Sms, ContactChannel::Email] {
                let r = row(&Notice::still_on_its_way(2), channel, None);
                let msg = sent(plan(&s, &r, Some(&customer(locale, Milestone::OutForDelivery)), false, NOON));
                let case = format!("{locale}/{}: {}", channel.as_str(), msg.body);
                assert!(msg.body.contains(words) && msg.body.ends_with(&msg.link), "{case}");
                assert_eq!(msg.subject, subject, "{case}");
                if channel == ContactChannel::Sms {
                    assert_eq!(templates::sms_length(&msg.body).segments, 1, "{case}");
                }
            }
        }
    }

    #[test]
    fn an_update_overtaken_by_an_exception_or_a_delivery_or_naming_no_later_day_is_skipped() {
        let s = settings();
        let skipped = |p: Plan| match p {
            Plan::Skip { reason, .. } => reason,
            other => panic!("expected a skip, got {other:?}"),
        };
        let still = row(&Notice::still_on_its_way(1), ContactChannel::Sms, None);
        for milestone in [Milestone::Delivered, Milestone::Exception] {
            assert_eq!(
                skipped(plan(&s, &still, Some(&customer("en", milestone)), false, NOON)),
                "superseded"
            );
        }
        // Eleven hours later by the carrier's clock, still the Saturday in New York.
        let detail = DelayDetail {
            expected: "2026-08-08T23:00:00-04:00".into(),
            previous: Some("2026-08-08T12:00:00-04:00".into()),
        };
        let mut ny = customer("en-US", Milestone::Dispatched);
        ny.time_zone = "America/New_York".into();
        let same_day = row(&Notice::delayed(&detail.expected), ContactChannel::Sms, Some(detail.to_json()));
        assert_eq!(skipped(plan(&s, &same_day, Some(&ny), false, NOON)), "no_later_day");
    }

    #[test]
    fn a_row_a_newer_hub_wrote_is_read_beside_the_others_and_skipped_with_its_reason() {
        let mut store = Store::open_in_memory().expect("open");
        let id = shipment(&mut store, "1Z999AA10123456784", Milestone::OutForDelivery);
        for key in ["dispatched", "nearby", "out_for_delivery"] {
            told(&mut store, id, key, T0);
        }
        // A newer hub sharing the database knows a channel and a notice this one does not.
        let raw = store.raw();
        raw.execute(
            "UPDATE notification_outbox SET channel = 'carrier_pigeon' WHERE milestone = 'dispatched'",
            crate::store::NO_ARGS,
        )
        .expect("newer channel");
        raw.execute(
            "UPDATE notification_outbox SET milestone = 'left_with_neighbour' WHERE milestone = 'nearby'",
            crate::store::NO_ARGS,
        )
        .expect("newer notice");
        let rows = store.outbox_due(T0 + DAY, 10).expect("the due rows read, the unknown ones too");
        let names: Vec<(String, String)> =
            rows.iter().map(|r| (r.milestone.to_string(), r.channel.to_string())).collect();
        assert_eq!(
            names,
            [
                ("dispatched".to_owned(), "carrier_pigeon".to_owned()),
                ("left_with_neighbour".to_owned(), "sms".to_owned()),
                ("out_for_delivery".to_owned(), "sms".to_owned()),
            ]
        );
        assert_eq!(rows[0].channel, Named::Unknown("carrier_pigeon".to_owned()));
        assert_eq!(rows[1].milestone, Named::Unknown("left_with_neighbour".to_owned()));
        assert_eq!(rows[2].milestone, Named::Known(Notice::Milestone(Milestone::OutForDelivery)));
        let s = settings();
        let customer = store.shipment(id).expect("read").expect("shipment");
        let reasons: Vec<Option<&str>> = rows
            .iter()
            .map(|r| match plan(&s, r, Some(&customer), false, NOON) {
                Plan::Skip { reason, .. } => Some(reason),
                _ => None,
            })
            .collect();
        assert_eq!(reasons, [Some("unknown_channel"), Some("unknown_milestone"), None]);
    }
}
