//! What the tracking page shows, built from what the hub knows (pure: no clock, no
//! store), and rendered through the page's templates in `hub/templates/`, which escape
//! every value for HTML unless the value is marked safe here.
//!
//! What the page must never show (the address, the stop's coordinates, the device, the
//! carrier's free text, the van for another customer's stop or after delivery) is never
//! put into the templates' context in the first place.

use std::sync::LazyLock;

use minijinja::{Environment, Value};
use serde::Serialize;

use super::brand::{Brand, CONFIRMED_TEXT, MUTED_TEXT, PROBLEM_TEXT};
use super::map::{MAP_ZOOM, tile_at};
use super::words::{Labels, VanWords, Words};
use super::{LIVE_REFRESH_S, MAX_TIMELINE, OUT_FOR_DELIVERY_REFRESH_S, Proof, VanView};
use crate::eta::ArrivalWindow;
use crate::model::Milestone;
use crate::notify::exceptions::{NextStep, default_step};
use crate::notify::quiet;
use crate::store::{Shipment, TimelineEntry};

/// The one script of the page (`templates/live.js`): refreshes a moving parcel's page in
/// place, and waits while the customer writes in a form. The page's
/// Content-Security-Policy allows exactly this text ([`live_script_source`]), nothing else.
pub(crate) const LIVE_SCRIPT: &str = include_str!("../../../templates/live.js");

/// `'sha256-…'` of [`LIVE_SCRIPT`], for the Content-Security-Policy's `script-src`.
pub(crate) fn live_script_source() -> String {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, LIVE_SCRIPT.as_bytes());
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest.as_ref()))
}

/// The page's templates, parsed once. A template that does not parse is a build of the
/// hub that cannot show any page: the tests render every one.
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    for (name, source) in [
        ("base.html", include_str!("../../../templates/base.html")),
        ("page.html", include_str!("../../../templates/page.html")),
        ("error.html", include_str!("../../../templates/error.html")),
    ] {
        env.add_template(name, source).expect("the tracking page's templates parse");
    }
    env
});

/// What a customer asked of the page in its query string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PageQuery<'a> {
    /// `done=instructions` or `done=not-home`: the action the customer just took (others
    /// are ignored).
    pub(super) done: Option<&'a str>,
}

impl<'a> PageQuery<'a> {
    /// Reads the pairs of the query string.
    pub(super) fn from_pairs(pairs: &'a [(String, String)]) -> Self {
        let value = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        Self { done: value("done") }
    }
}

/// Everything a tracking page is rendered from.
#[derive(Debug, Clone, Copy)]
pub(super) struct PageInput<'a> {
    pub(super) shipment: &'a Shipment,
    pub(super) timeline: &'a [TimelineEntry],
    pub(super) proof: Option<&'a Proof>,
    /// The van, only when it heads to this shipment's stop next.
    pub(super) van: Option<&'a VanView>,
    pub(super) window: Option<&'a ArrivalWindow>,
    pub(super) token: &'a str,
    pub(super) brand: &'a Brand,
    pub(super) query: PageQuery<'a>,
    /// The delivery instructions the customer saved before, shown back to them.
    pub(super) saved_instructions: Option<&'a str>,
}

/// A step of the progress bar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Step {
    pub(super) label: &'static str,
    /// `done`, `current`, `todo`, or `problem` (the current step when something went
    /// wrong).
    pub(super) state: &'static str,
}

impl Step {
    fn new(label: &'static str, state: &'static str) -> Self {
        Self { label, state }
    }
}

#[derive(Debug, Serialize)]
struct BrandView<'a> {
    name: &'a str,
    primary: String,
    text: String,
    muted: String,
    problem: String,
    confirmed: String,
    logo_url: Option<Value>,
}

impl<'a> BrandView<'a> {
    fn of(brand: &'a Brand) -> Self {
        Self {
            name: &brand.name,
            primary: brand.primary.hex(),
            text: brand.text.hex(),
            muted: MUTED_TEXT.hex(),
            problem: PROBLEM_TEXT.hex(),
            confirmed: CONFIRMED_TEXT.hex(),
            logo_url: brand.logo_url.clone().map(url),
        }
    }
}

#[derive(Debug, Serialize)]
struct Refresh {
    seconds: u16,
    url: Value,
}

/// The script, marked safe: it is this build's own text, never anyone's input.
fn live_script() -> Value {
    Value::from_safe_string(LIVE_SCRIPT.to_owned())
}

#[derive(Debug, Serialize)]
struct HistoryItem {
    datetime: String,
    local: String,
    label: &'static str,
}

#[derive(Debug, Serialize)]
struct MapView {
    src: Value,
    /// The marker's place in the tile, percent of its width and height.
    left: String,
    top: String,
}

#[derive(Debug, Serialize)]
struct VanSection {
    heading: &'static str,
    text: String,
    map: Option<MapView>,
}

/// "Verified at your door": the evidence of a delivery in the customer's words.
#[derive(Debug, Serialize)]
struct Verified {
    before: String,
    at_iso: String,
    at_local: String,
    after: String,
    carrier: &'static str,
    carrier_agrees: bool,
    photo_src: Option<Value>,
    photo_pending: bool,
}

#[derive(Debug, Serialize)]
struct Actions {
    instructions_url: Value,
    not_home_url: Value,
}

#[derive(Debug, Serialize)]
struct PageContext<'a> {
    lang: &'static str,
    brand: BrandView<'a>,
    t: &'static Labels,
    refresh: Option<Refresh>,
    live_script: Value,
    title: String,
    headline: &'static str,
    tracking_number: &'a str,
    order_name: Option<&'a str>,
    done: Option<&'static str>,
    progress: Vec<Step>,
    window: Option<String>,
    van: Option<VanSection>,
    verified: Option<Verified>,
    actions: Option<Actions>,
    saved_instructions: Option<&'a str>,
    history: Vec<HistoryItem>,
}

/// A URL the page links to, as a template value: marked safe when it holds only
/// characters that need no escaping in an attribute, else escaped like any value (the
/// browser reads both the same; this keeps the markup readable).
fn url(text: String) -> Value {
    let plain = text.chars().all(|c| c.is_ascii_alphanumeric() || "-._~/:?=%#".contains(c));
    if plain { Value::from_safe_string(text) } else { Value::from(text) }
}

/// The words for the shipment's customer.
pub(super) fn words_for(shipment: &Shipment) -> Words {
    Words { de: shipment.locale.to_ascii_lowercase().starts_with("de") }
}

/// How often the page refreshes itself (with JavaScript, `templates/live.js`, which waits
/// while the customer writes in a form): every few seconds while it shows the van, every
/// minute while the parcel is out for delivery, never once nothing will change soon.
pub(super) fn refresh_s(milestone: Milestone, van_shown: bool) -> Option<u16> {
    match milestone {
        Milestone::Delivered => None,
        _ if van_shown => Some(LIVE_REFRESH_S),
        Milestone::OutForDelivery | Milestone::Nearby => Some(OUT_FOR_DELIVERY_REFRESH_S),
        _ => None,
    }
}

/// The progress bar: ordered or dispatched, out for delivery, nearby, delivered. An
/// exception is shown where it happened (after the furthest step the timeline reached),
/// as the current step; the steps after it stay open, since a delivery can still follow.
pub(super) fn progress(milestone: Milestone, timeline: &[TimelineEntry], words: &Words) -> Vec<Step> {
    let left = timeline.iter().any(|e| {
        matches!(e.kind.as_str(), "dispatched" | "in_transit" | "out_for_delivery" | "nearby")
            || e.kind.starts_with("delivered")
    });
    let labels = words.steps(milestone == Milestone::Created || (milestone == Milestone::Exception && !left));
    let current = match milestone {
        Milestone::Created | Milestone::Dispatched => 0,
        Milestone::OutForDelivery => 1,
        Milestone::Nearby => 2,
        Milestone::Delivered => 3,
        Milestone::Exception => {
            let reached = timeline
                .iter()
                .map(|e| match (e.source.as_str(), e.kind.as_str()) {
                    (_, "out_for_delivery") => 1,
                    ("device", "nearby") => 2,
                    _ => 0,
                })
                .max()
                .unwrap_or(0);
            let mut steps: Vec<Step> = labels.iter().map(|l| Step::new(l, "todo")).collect();
            for step in steps.iter_mut().take(reached + 1) {
                step.state = "done";
            }
            steps.insert(reached + 1, Step::new(words.milestone(Milestone::Exception), "problem"));
            return steps;
        }
    };
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Step::new(
                l,
                match i.cmp(&current) {
                    std::cmp::Ordering::Less => "done",
                    std::cmp::Ordering::Equal => "current",
                    std::cmp::Ordering::Greater => "todo",
                },
            )
        })
        .collect()
}

/// Whether the customer can still tell the driver something: not once the parcel is
/// delivered, and not once it is going back to the sender or waits at a pickup point.
pub(super) fn actions_open(milestone: Milestone, timeline: &[TimelineEntry]) -> bool {
    match milestone {
        Milestone::Delivered => false,
        Milestone::Exception => {
            let last = timeline.iter().rev().find(|e| {
                matches!(
                    e.kind.as_str(),
                    "driver_exception"
                        | "attempt_failed"
                        | "exception"
                        | "returning"
                        | "available_for_pickup"
                )
            });
            let reason =
                last.map(|e| e.detail.get("reason").and_then(|r| r.as_str()).unwrap_or(e.kind.as_str()));
            !matches!(reason.map(default_step), Some(NextStep::ReturnToSender | NextStep::PickupPoint))
        }
        _ => true,
    }
}

/// Whether the carrier's own tracking says delivered.
pub(super) fn carrier_agrees(timeline: &[TimelineEntry]) -> bool {
    timeline.iter().any(|e| e.source != "device" && e.kind == "delivered")
}

fn local_time(ms: i64, tz: &jiff::tz::TimeZone) -> (String, String) {
    let zoned = quiet::zoned(ms, tz);
    (zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(), zoned.strftime("%Y-%m-%d %H:%M %Z").to_string())
}

/// Renders the tracking page (pure).
pub(super) fn render_page(input: &PageInput<'_>) -> Result<String, minijinja::Error> {
    let shipment = input.shipment;
    let words = words_for(shipment);
    let tz = quiet::zone(&shipment.time_zone);
    let token = input.token;
    let history = input
        .timeline
        .iter()
        .filter_map(|e| words.kind(&e.source, &e.kind).map(|label| (e, label)))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .take(MAX_TIMELINE)
        .map(|(e, label)| {
            let (datetime, local) = local_time(e.occurred_ms, &tz);
            HistoryItem { datetime, local, label }
        })
        .collect();
    let hm = |ms: i64| quiet::zoned(ms, &tz).strftime("%H:%M").to_string();
    let window = input.window.map(|w| words.window(w.stops_before, &hm(w.earliest_ms), &hm(w.latest_ms)));
    let van = input.van.map(|v| VanSection {
        heading: words.van_heading(),
        text: words.van(VanWords { distance_m: v.distance_m, age_s: v.age_s }),
        map: match (&input.brand.map_tiles, v.at) {
            (Some(tiles), Some((lat, lon))) => {
                let tile = tile_at(lat, lon, MAP_ZOOM);
                let (left, top) = tile.marker_percent();
                Some(MapView { src: url(tiles.url(&tile)), left, top })
            }
            _ => None,
        },
    });
    let verified = input.proof.map(|p| {
        let (before, after) = words.handover(p.distance_m);
        let (at_iso, at_local) = local_time(p.at_ms, &tz);
        let agrees = carrier_agrees(input.timeline);
        Verified {
            before,
            at_iso,
            at_local,
            after,
            carrier: words.carrier(agrees),
            carrier_agrees: agrees,
            photo_src: p.photo_ok.then(|| url(format!("/t/{token}/photo"))),
            photo_pending: !p.photo_ok && p.photo.is_some(),
        }
    });
    let refresh = refresh_s(shipment.milestone, input.van.is_some());
    let actions = actions_open(shipment.milestone, input.timeline).then(|| Actions {
        instructions_url: url(format!("/t/{token}/instructions")),
        not_home_url: url(format!("/t/{token}/not-home")),
    });
    let context = PageContext {
        lang: words.lang(),
        brand: BrandView::of(input.brand),
        t: words.labels(),
        refresh: refresh.map(|seconds| Refresh { seconds, url: url(format!("/t/{token}")) }),
        live_script: live_script(),
        title: format!("{}: {}", input.brand.name, shipment.tracking_number.as_str()),
        headline: words.milestone(shipment.milestone),
        tracking_number: shipment.tracking_number.as_str(),
        order_name: shipment.order_name.as_deref(),
        done: input.query.done.and_then(|d| words.done(d)),
        progress: progress(shipment.milestone, input.timeline, &words),
        window,
        van,
        verified,
        actions,
        saved_instructions: input.saved_instructions,
        history,
    };
    TEMPLATES.get_template("page.html")?.render(context)
}

/// Renders an error page (a bad or expired link, no photo) in the fleet's look: the
/// message and nothing about any shipment.
pub(super) fn render_error(brand: &Brand, message: &str) -> Result<String, minijinja::Error> {
    let context = minijinja::context! {
        lang => "en",
        brand => BrandView::of(brand),
        title => brand.name.as_str(),
        message => message,
    };
    TEMPLATES.get_template("error.html")?.render(context)
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

    fn entry(at_ms: i64, source: &str, kind: &str, detail: serde_json::Value) -> TimelineEntry {
        TimelineEntry { occurred_ms: at_ms, source: source.into(), kind: kind.into(), detail }
    }

    const HANDOVER_MS: i64 = 1_751_360_400_000;

    fn handover() -> Vec<TimelineEntry> {
        vec![entry(
            HANDOVER_MS,
            "device",
            "delivered_at_address",
            json!({"distance_m": 12, "photo_sha256": "ab"}),
        )]
    }

    fn proof(photo_ok: bool) -> Proof {
        Proof { at_ms: HANDOVER_MS, distance_m: Some(12), photo: Some("ab".into()), photo_ok }
    }

    /// Renders with everything but what `change` sets at its default.
    fn render<'a>(shipment: &'a Shipment, change: impl FnOnce(&mut PageInput<'a>)) -> String {
        static BRAND: LazyLock<Brand> = LazyLock::new(Brand::default);
        let mut input = PageInput {
            shipment,
            timeline: &[],
            proof: None,
            van: None,
            window: None,
            token: "TOKEN",
            brand: &BRAND,
            query: PageQuery::default(),
            saved_instructions: None,
        };
        change(&mut input);
        render_page(&input).expect("renders")
    }

    #[test]
    fn hostile_shipment_fields_and_brand_names_are_escaped() {
        // Dispatched: the instructions form is on the page, filled with what was saved.
        let mut s = shipment(Milestone::Dispatched, "en");
        s.order_name = Some("<script>alert(1)</script>\" onmouseover=\"x".into());
        let brand = Brand::new("Acme <b>&</b>", "#0b3d91", "#111111", None, None).expect("valid");
        let html = render(&s, |p| {
            p.brand = &brand;
            p.saved_instructions = Some("</textarea><script>steal()</script>");
        });
        for raw in ["<script>", "</textarea><script>", "\" onmouseover", "<b>&</b>"] {
            assert!(!html.contains(raw), "{raw} reached the page unescaped: {html}");
        }
        assert!(html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;&quot; onmouseover"), "{html}");
        assert!(html.contains("Acme &lt;b&gt;&amp;&lt;&#x2f;b&gt;"), "{html}");
        assert!(
            html.contains(">&lt;&#x2f;textarea&gt;&lt;script&gt;steal()&lt;&#x2f;script&gt;</textarea>"),
            "{html}"
        );
        // A token that is not plain URL characters is escaped in the links too.
        let html = render(&s, |p| p.token = "a\"b<c");
        assert!(!html.contains("a\"b<c") && html.contains("a&quot;b&lt;c"), "{html}");
    }

    #[test]
    fn the_page_is_semantic_html_in_the_customers_language() {
        let timeline = handover();
        let proof = proof(true);
        let html = render(&shipment(Milestone::Delivered, "de-DE"), |p| {
            p.timeline = &timeline;
            p.proof = Some(&proof);
        });
        assert!(html.starts_with("<!doctype html>\n<html lang=\"de\">"), "{html}");
        for part in
            ["<header>", "<main>", "<h1>Zugestellt</h1>", "<h2 id=\"verified\">", "aria-current=\"step\""]
        {
            assert!(html.contains(part), "{part}: {html}");
        }
        assert!(html.find("<h1>") < html.find("<h2"), "h1 before the h2s");
        assert!(
            html.contains("<time datetime=\"2025-07-01T11:00:00+02:00\">2025-07-01 11:00 CEST</time>"),
            "{html}"
        );
        assert!(html.contains("alt=\"Foto bei der Übergabe\""), "{html}");
        assert!(html.contains("<span class=\"name\">Doorstep</span>"), "{html}");
        assert!(!html.contains("<script"), "no script at all");
    }

    #[test]
    fn the_progress_bar_marks_done_current_and_a_problem_where_it_happened() {
        let words = Words { de: false };
        let states = |steps: Vec<Step>| steps.iter().map(|s| (s.label, s.state)).collect::<Vec<_>>();
        assert_eq!(
            states(progress(Milestone::Created, &[], &words)),
            [
                ("Order received", "current"),
                ("Out for delivery", "todo"),
                ("Nearby", "todo"),
                ("Delivered", "todo")
            ]
        );
        assert_eq!(
            states(progress(Milestone::Nearby, &[], &words)),
            [
                ("On its way", "done"),
                ("Out for delivery", "done"),
                ("Nearby", "current"),
                ("Delivered", "todo")
            ]
        );
        assert_eq!(
            states(progress(Milestone::Delivered, &[], &words)).last(),
            Some(&("Delivered", "current")),
            "delivered is where it ends"
        );
        let out = [
            entry(1, "ups", "out_for_delivery", json!({})),
            entry(2, "device", "driver_exception", json!({"reason": "recipient_absent"})),
        ];
        assert_eq!(
            states(progress(Milestone::Exception, &out, &words)),
            [
                ("On its way", "done"),
                ("Out for delivery", "done"),
                ("Delivery problem", "problem"),
                ("Nearby", "todo"),
                ("Delivered", "todo"),
            ],
            "the problem after the last step reached, the delivery still to come"
        );
        let html = render(&shipment(Milestone::Exception, "en"), |p| p.timeline = &out);
        assert!(html.contains("<li class=\"problem\" aria-current=\"step\">Delivery problem</li>"), "{html}");
        assert_eq!(html.matches("aria-current").count(), 1, "{html}");
        let before = [entry(1, "ups", "exception", json!({}))];
        assert_eq!(
            states(progress(Milestone::Exception, &before, &words))[..2],
            [("Order received", "done"), ("Delivery problem", "problem")],
            "a problem before anything left"
        );
    }

    #[test]
    fn verified_at_the_door_says_what_the_device_signed_and_whether_the_carrier_agrees() {
        let mut timeline = handover();
        let proof = proof(true);
        let html = render(&shipment(Milestone::Delivered, "en-US"), |p| {
            p.timeline = &timeline;
            p.proof = Some(&proof);
        });
        assert!(html.contains("<h2 id=\"verified\">Verified at your door</h2>"), "{html}");
        assert!(
            html.contains(
                "The driver’s device signed the handover at <time datetime=\"2025-07-01T11:00:00+02:00\">\
                 2025-07-01 11:00 CEST</time>, with the van parked 12 m from the address."
            ),
            "{html}"
        );
        assert!(html.contains("The carrier has not confirmed the delivery yet."), "{html}");
        assert!(html.contains("<img src=\"/t/TOKEN/photo\" alt=\"Photo taken at handover\">"), "{html}");
        // The carrier's own "delivered" arrives.
        timeline.push(entry(HANDOVER_MS + 600_000, "ups", "delivered", json!({"message": "Front porch"})));
        let html = render(&shipment(Milestone::Delivered, "en-US"), |p| {
            p.timeline = &timeline;
            p.proof = Some(&proof);
        });
        assert!(html.contains("<p class=\"confirmed\">The carrier confirms the delivery too.</p>"), "{html}");
        assert!(!html.contains("Front porch"), "never the carrier's free text");
        let html = render(&shipment(Milestone::Delivered, "de"), |p| {
            p.timeline = &timeline[..1];
            p.proof = Some(&proof);
        });
        assert!(html.contains("Der Versender hat die Zustellung noch nicht bestätigt."), "{html}");
        assert!(html.contains("der Lieferwagen stand 12 m von der Adresse entfernt."), "{html}");
        // A photo still uploading is said so, and not linked.
        let pending = Proof { photo_ok: false, ..proof.clone() };
        let html = render(&shipment(Milestone::Delivered, "en"), |p| p.proof = Some(&pending));
        assert!(
            html.contains("The handover photo is still on its way.") && !html.contains("/photo"),
            "{html}"
        );
    }

    #[test]
    fn the_map_is_shown_only_for_the_van_heading_here_next_and_only_with_a_tile_server() {
        let tiles =
            Brand::new("Acme", "#0b3d91", "#111111", None, Some("https://tile.example.org/{z}/{x}/{y}.png"))
                .expect("valid");
        let van = VanView { distance_m: Some(1_100.0), age_s: Some(4), at: Some((47.3779, 8.5403)) };
        let s = shipment(Milestone::OutForDelivery, "en");
        let html = render(&s, |p| {
            p.brand = &tiles;
            p.van = Some(&van);
        });
        assert!(
            html.contains("<img src=\"https://tile.example.org/15/17161/11474.png\" width=\"256\""),
            "{html}"
        );
        assert!(html.contains("style=\"left:35.7%;top:74.9%\""), "{html}");
        assert!(html.contains("about 1.1 km away"), "the distance in words too: {html}");
        for secret in ["47.37", "8.54"] {
            assert!(!html.contains(secret), "the page writes the position {secret}: {html}");
        }
        // The van heads to another customer's stop (the page is given no van): no map.
        let html = render(&s, |p| p.brand = &tiles);
        assert!(!html.contains("tile.example.org") && !html.contains("class=\"map\""), "{html}");
        // No recent position: words only.
        let stale = VanView { distance_m: None, age_s: None, at: None };
        let html = render(&s, |p| {
            p.brand = &tiles;
            p.van = Some(&stale);
        });
        assert!(!html.contains("tile.example.org"), "{html}");
        // No tile server configured (the default): words only.
        let html = render(&s, |p| p.van = Some(&van));
        assert!(!html.contains("<img src=\"https") && html.contains("about 1.1 km away"), "{html}");
    }

    #[test]
    fn the_page_refreshes_itself_while_things_move() {
        assert_eq!(refresh_s(Milestone::Nearby, true), Some(LIVE_REFRESH_S));
        assert_eq!(refresh_s(Milestone::OutForDelivery, false), Some(OUT_FOR_DELIVERY_REFRESH_S));
        assert_eq!(refresh_s(Milestone::Delivered, false), None);
        assert_eq!(refresh_s(Milestone::Dispatched, false), None);
        assert_eq!(refresh_s(Milestone::Exception, false), None);
    }

    #[test]
    fn the_customer_can_leave_instructions_or_say_not_at_home_until_it_is_settled() {
        let s = shipment(Milestone::Dispatched, "en");
        let html = render(&s, |_| {});
        assert!(html.contains("<form method=\"post\" action=\"/t/TOKEN/instructions\">"), "{html}");
        assert!(
            html.contains("<textarea id=\"instructions\" name=\"instructions\" maxlength=\"300\""),
            "{html}"
        );
        assert!(html.contains("<form method=\"post\" action=\"/t/TOKEN/not-home\">"), "{html}");
        assert!(html.contains("<h2 id=\"instructions-heading\">Delivery instructions for the driver</h2>"));
        assert!(html.contains("<h2 id=\"not-home\">Not at home today</h2>"), "{html}");
        // While the page refreshes itself, the form is there too: the page's script waits
        // while the customer writes, and without scripts nothing refreshes.
        let out = shipment(Milestone::OutForDelivery, "en");
        let html = render(&out, |p| p.saved_instructions = Some("Side door, please"));
        assert!(html.contains("<textarea") && html.contains("data-seconds=\"60\""), "{html}");
        assert!(
            html.contains("aria-describedby=\"instructions-hint\">Side door, please</textarea>"),
            "saved instructions are shown back: {html}"
        );
        assert!(!html.contains("http-equiv"), "no reload that would wipe what is typed: {html}");
        // Settled: delivered, or going back to the sender.
        assert!(!render(&shipment(Milestone::Delivered, "en"), |_| {}).contains("<form"));
        let back = [entry(1, "device", "driver_exception", json!({"reason": "refused"}))];
        assert!(!actions_open(Milestone::Exception, &back));
        let returning = [entry(1, "ups", "returning", json!({}))];
        assert!(!actions_open(Milestone::Exception, &returning));
        let absent = [entry(1, "device", "driver_exception", json!({"reason": "recipient_absent"}))];
        assert!(actions_open(Milestone::Exception, &absent), "another attempt follows");
    }

    #[test]
    fn the_page_confirms_what_the_customer_just_did_in_their_language() {
        let confirm = |locale: &str, done: &str| {
            let pairs = vec![("done".to_owned(), done.to_owned())];
            render(&shipment(Milestone::Dispatched, locale), |p| p.query = PageQuery::from_pairs(&pairs))
        };
        assert!(confirm("en", "instructions").contains(
            "<p class=\"notice\" role=\"status\">Thank you: your instructions for the driver are saved.</p>"
        ));
        assert!(
            confirm("de", "not-home").contains("Wir haben vermerkt, dass Sie heute nicht zu Hause sind.")
        );
        let other = confirm("en", "<script>");
        assert!(!other.contains("role=\"status\"") && !other.contains("<script>"), "{other}");
    }

    #[test]
    fn an_error_page_says_its_message_in_the_fleets_look_and_nothing_else() {
        let brand = Brand::new("Acme", "#0b3d91", "#111111", Some("/static/logo.svg"), None).expect("valid");
        let html = render_error(&brand, "This tracking link has expired.").expect("renders");
        assert!(html.contains("<h1>This tracking link has expired.</h1>"), "{html}");
        assert!(
            html.contains("<img src=\"&#x2f;static&#x2f;logo.svg\" alt=\"Acme\">")
                || html.contains("<img src=\"/static/logo.svg\" alt=\"Acme\">"),
            "{html}"
        );
        assert!(html.contains("--primary:#0b3d91"), "{html}");
    }
}
