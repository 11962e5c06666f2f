//! The customer can act from the tracking page: delivery instructions reach the van whose
//! route carries the parcel as a signed stop note for the parcel's stop (and, left before
//! any van had a route, with the route once it is posted, and again whenever the hub
//! publishes it again); bad instructions are a 400 and change nothing; "not at home today"
//! raises an operations alert; every action is on the shipment's timeline; after a failed
//! attempt the customer can still act, but once the parcel is delivered or goes back to
//! the sender, actions are refused with a 409.
//!
//! A real Mosquitto, the hub in-process with the tracking page on its public listener, and
//! a simulated van (one MQTT session) that checks every hub message with the hub's key.

mod support;

use std::time::Duration;

use doorstep_hub::model::Milestone;
use doorstep_hub::store::{Store, StoreOptions};
use doorstep_proto::state::DeviceState;
use doorstep_proto::{
    DeliveryException, Event, ExceptionReason, FixEvidence, MAX_NOTE_CHARS, RouteId, StopId, StopNote,
    TrackingNumber,
};
use serde_json::json;
use support::*;

/// The stops of van-1's first route, in driving order, and the parcel of each.
const STOPS: [(&str, f64, f64, &str); 3] = [
    ("s1", 47.3700, 8.5400, "1ZACT000000000001"),
    ("s2", 47.3750, 8.5450, "1ZACT000000000002"),
    ("s3", 47.3800, 8.5500, "1ZACT000000000003"),
];
/// A parcel on no van's route yet.
const UNROUTED: &str = "1ZACT000000000004";
const WAIT: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    doorstep_hub::ingest::now_ms()
}

/// The hub with the three stops' parcels, then the unrouted one, and van-1 with its
/// first route.
async fn started() -> PageHub {
    started_with(HubOptions::default()).await
}

async fn started_with(options: HubOptions) -> PageHub {
    let parcels: Vec<&str> = STOPS.iter().map(|s| s.3).chain([UNROUTED]).collect();
    let case = PageHub::start(page_settings(""), options, &parcels).await;
    case.post_route("r-act-1", &STOPS.map(|(id, lat, lon, tn)| (id, lat, lon, vec![tn]))).await;
    assert!(case.fleet.wait_for(WAIT, |i| i.routes.len() == 1).await, "the van got its route");
    case
}

/// What the customer does on the tracking page, and what it leaves behind.
impl PageHub {
    /// Posts the instructions form of the shipment at `index`.
    async fn instruct(&self, index: usize, text: &str) -> reqwest::Response {
        let url = self.hub.url(&format!("{}/instructions", self.page.links[index]));
        self.page.http.post(url).form(&[("instructions", text)]).send().await.expect("post")
    }

    async fn not_home(&self, index: usize) -> reqwest::Response {
        let url = self.hub.url(&format!("{}/not-home", self.page.links[index]));
        self.page.http.post(url).send().await.expect("post")
    }

    fn notes(&self) -> Vec<StopNote> {
        self.fleet.inbox.lock().expect("inbox").stop_notes.clone()
    }

    fn store(&self) -> Store {
        Store::open(&self.ground.db, StoreOptions::default()).expect("store")
    }

    /// The customer's entries on a shipment's timeline: (kind, detail).
    fn customer_timeline(&self, index: usize) -> Vec<(String, String)> {
        let timeline = self.store().timeline(self.page.ids[index]).expect("timeline");
        timeline
            .into_iter()
            .filter(|e| e.source == "customer")
            .map(|e| (e.kind, e.detail.to_string()))
            .collect()
    }

    fn counted(&self, action: &str, outcome: &str) -> i64 {
        self.page
            .metrics
            .get("doorstep_hub_customer_actions_total", &[("action", action), ("outcome", outcome)])
    }
}

fn location(r: &reqwest::Response) -> &str {
    r.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instructions_reach_the_van_signed_for_the_parcels_stop_and_bad_ones_change_nothing() {
    let case = started().await;
    let text = "Leave it with the neighbour at no. 12, not at the back door";

    let r = case.instruct(1, text).await;
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), format!("{}?done=instructions", case.page.links[1]));
    assert!(case.fleet.wait_for(WAIT, |i| !i.stop_notes.is_empty()).await, "no stop note reached the van");
    let note = case.notes()[0].clone();
    assert_eq!(
        (note.device.as_str(), note.route_id.as_str(), note.stop_id.as_str(), note.tracking_number.as_str()),
        ("van-1", "r-act-1", "s2", STOPS[1].3)
    );
    assert_eq!(note.text, text);
    assert!((now_ms() - note.issued_ms).abs() < 10_000);
    assert!(case.fleet.inbox.lock().expect("inbox").refused.is_empty(), "every hub message verifies");
    assert_eq!(case.hub.metrics.get("doorstep_hub_stop_notes_published_total", &[]), 1);
    let saved = case.store().customer_instructions(case.page.ids[1]).expect("read").expect("saved");
    assert_eq!(saved.text, text);

    // Too long, a control character, not a form: a 400 that says what to fix, and nothing
    // stored, logged or sent.
    let r = case.instruct(1, &"x".repeat(MAX_NOTE_CHARS + 1)).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("body").contains("301 characters"));
    let r = case.instruct(1, "Ring \u{1b}[2J twice").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("body").contains("plain text only"));
    let url = case.hub.url(&format!("{}/instructions", case.page.links[1]));
    let r = case.page.http.post(&url).json(&json!({"instructions": "hi"})).send().await.expect("post");
    assert_eq!(r.status(), 400);
    let r = case.page.http.post(&url).form(&[("note", "hi")]).send().await.expect("post");
    assert_eq!(r.status(), 400);
    // A token that is not ours: the page's 404, nothing about the shipment.
    let forged = case.hub.url("/t/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/instructions");
    let r = case.page.http.post(&forged).form(&[("instructions", "hi")]).send().await.expect("post");
    assert_eq!(r.status(), 404);
    case.settle().await;
    assert_eq!(case.notes().len(), 1, "nothing more was sent");
    assert_eq!(
        case.store().customer_instructions(case.page.ids[1]).expect("read").expect("saved").text,
        text
    );
    assert_eq!(
        case.customer_timeline(1),
        [("customer_instructions".to_owned(), r#"{"chars":59}"#.to_owned())]
    );
    assert_eq!(
        [
            case.counted("instructions", "saved"),
            case.counted("instructions", "too_long"),
            case.counted("instructions", "control_character"),
            case.counted("instructions", "not_a_form"),
            case.counted("instructions", "no_field"),
        ],
        [1, 1, 1, 1, 1]
    );

    // Empty: the instructions are removed, and the van is told so.
    let r = case.instruct(1, "   ").await;
    assert_eq!(r.status(), 303);
    assert!(case.fleet.wait_for(WAIT, |i| i.stop_notes.len() == 2).await);
    assert_eq!((case.notes()[1].stop_id.as_str(), case.notes()[1].text.as_str()), ("s2", ""));
    assert_eq!(case.store().customer_instructions(case.page.ids[1]).expect("read"), None);
    assert_eq!(case.customer_timeline(1).len(), 2);
    case.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instructions_left_before_the_parcel_is_routed_go_out_with_the_route_and_again_when_the_van_comes_online()
 {
    let case = started().await;
    let r = case.instruct(3, "Gate code is on the label").await;
    assert_eq!(r.status(), 303);
    case.settle().await;
    assert!(case.notes().is_empty(), "no van's route carries the parcel yet");
    assert_eq!(case.customer_timeline(3).len(), 1, "logged all the same");

    // The next route carries it at s9: the note follows the route.
    case.post_route("r-act-2", &[("s8", 47.39, 8.55, vec![STOPS[2].3]), ("s9", 47.40, 8.56, vec![UNROUTED])])
        .await;
    assert!(case.fleet.wait_for(WAIT, |i| i.routes.len() == 2 && !i.stop_notes.is_empty()).await);
    let note = case.notes()[0].clone();
    assert_eq!(
        (note.route_id.as_str(), note.stop_id.as_str(), note.tracking_number.as_str(), note.text.as_str()),
        ("r-act-2", "s9", UNROUTED, "Gate code is on the label")
    );

    // The van comes online (its broker session may be gone): route and note again, the
    // same note (same issue time), which a van that has it keeps as it is.
    let online = DeviceState::online("0.9.0", 0).to_bytes();
    case.fleet
        .client
        .publish("doorstep/v1/acme/van-1/state", rumqttc::QoS::AtLeastOnce, true, online)
        .await
        .expect("publish");
    assert!(
        case.fleet.wait_for(WAIT, |i| i.routes.len() == 3 && i.stop_notes.len() == 2).await,
        "{:?}",
        case.notes()
    );
    assert_eq!(case.notes()[1], note);
    case.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_at_home_raises_an_operations_alert_and_a_timeline_entry() {
    let case = started().await;
    let r = case.not_home(0).await;
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), format!("{}?done=not-home", case.page.links[0]));
    let alerts = case.store().alerts_for_shipment(case.page.ids[0]).expect("alerts");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].0, "customer_not_home");
    assert!(alerts[0].1.contains("nobody is at home today"), "{}", alerts[0].1);
    assert_eq!(case.customer_timeline(0), [("customer_not_home".to_owned(), "{}".to_owned())]);
    // Said twice: on the timeline twice, one alert.
    assert_eq!(case.not_home(0).await.status(), 303);
    assert_eq!(case.store().alerts_for_shipment(case.page.ids[0]).expect("alerts").len(), 1);
    assert_eq!(case.customer_timeline(0).len(), 2);
    assert!(case.store().alerts_for_shipment(case.page.ids[1]).expect("alerts").is_empty());
    assert_eq!(case.counted("not_home", "saved"), 2);
    case.settle().await;
    assert!(case.notes().is_empty(), "the van's driver is not sent anything for it");
    case.stop().await;
}

/// A signed event of van-1 dated now.
fn signed(seq: u64, event: Event) -> Vec<u8> {
    seal_at(&key(1), &device("van-1"), seq, now_ms(), event)
}

fn driver_gives_up(stop: usize, reason: ExceptionReason) -> Event {
    Event::Exception(DeliveryException {
        route_id: Some(RouteId::new("r-act-1").expect("id")),
        stop_id: Some(StopId::new(STOPS[stop].0).expect("id")),
        reason,
        note: None,
        tracking_numbers: vec![TrackingNumber::new(STOPS[stop].3).expect("tn")],
        distance_m: Some(8),
        fix: Some(FixEvidence::new(now_ms(), STOPS[stop].1, STOPS[stop].2).with_speed_mps(0.0)),
        photo: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_attempt_the_customer_can_still_act_but_not_once_the_parcel_goes_back() {
    let case = started().await;
    // Nobody answered at s1: the parcel comes again, and the customer can say how.
    case.fleet
        .publish(
            "doorstep/v1/acme/van-1/evt",
            signed(1, driver_gives_up(0, ExceptionReason::RecipientAbsent)),
        )
        .await;
    assert!(case.fleet.wait_for(WAIT, |i| i.acked.get(&device("van-1")) == Some(&1)).await);
    assert_eq!(case.instruct(0, "Leave it in the garage").await.status(), 303);
    assert!(case.fleet.wait_for(WAIT, |i| i.stop_notes.len() == 1).await);

    // Refused at the door: it goes back to the sender, and the page's actions are closed.
    case.fleet
        .publish("doorstep/v1/acme/van-1/evt", signed(2, driver_gives_up(0, ExceptionReason::Refused)))
        .await;
    assert!(case.fleet.wait_for(WAIT, |i| i.acked.get(&device("van-1")) == Some(&2)).await);
    let r = case.instruct(0, "Try again tomorrow").await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.expect("body").contains("going back to the sender"));
    assert_eq!(case.not_home(0).await.status(), 409);
    case.settle().await;
    assert_eq!(case.notes().len(), 1, "nothing more was sent");
    let saved = case.store().customer_instructions(case.page.ids[0]).expect("read").expect("saved");
    assert_eq!(saved.text, "Leave it in the garage", "unchanged");
    assert_eq!(case.customer_timeline(0).len(), 1);
    assert!(
        case.store()
            .alerts_for_shipment(case.page.ids[0])
            .expect("alerts")
            .iter()
            .all(|(c, _)| c != "customer_not_home")
    );
    assert_eq!((case.counted("instructions", "closed"), case.counted("not_home", "closed")), (1, 1));
    case.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_the_parcel_is_delivered_actions_are_refused() {
    let case = started_with(HubOptions { hold_ms: 0, ..HubOptions::default() }).await;
    let handed_over = handed_over_now("r-act-1", "s2", STOPS[1].3, 47.3751, 8.5451);
    case.fleet.publish("doorstep/v1/acme/van-1/evt", signed(1, handed_over)).await;
    let delivered = || {
        case.store()
            .shipment(case.page.ids[1])
            .expect("read")
            .is_some_and(|s| s.milestone == Milestone::Delivered)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !delivered() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered(), "the handover with no hold delivers");
    let r = case.instruct(1, "Back door").await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.expect("body").contains("has been delivered"));
    assert_eq!(case.not_home(1).await.status(), 409);
    assert_eq!(case.store().customer_instructions(case.page.ids[1]).expect("read"), None);
    assert!(case.customer_timeline(1).is_empty());
    // The neighbour's parcel is still open to instructions.
    assert_eq!(case.instruct(2, "Back door").await.status(), 303);
    case.stop().await;
}
