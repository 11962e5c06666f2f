//! A customer's text message to the hub's number (`notify::questions::answer`, behind
//! Twilio's signed inbound callback): any text, from a sender with parcels and from a
//! stranger.
//!
//! Holds: no panic; an answer about a parcel is about one of the sender's own and
//! carries that parcel's link; a stranger's answer never names any tracking number or
//! link, whatever they write; a text that names none of the sender's parcels is answered
//! for a parcel only when it asks; every reply fits two SMS segments' worth of text.

#![no_main]

use doorstep_hub::model::Milestone;
use doorstep_hub::notify::questions::{Kind, answer};
use doorstep_hub::store::Shipment;
use doorstep_proto::TrackingNumber;
use libfuzzer_sys::fuzz_target;

fn shipment(id: i64, tracking: &str, milestone: Milestone, locale: &str) -> Shipment {
    Shipment::bare(id, TrackingNumber::new(tracking).expect("tn"), milestone, locale)
}

fn link(s: &Shipment) -> String {
    format!("https://track.example.com/t/{}", s.id)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let all = [
        shipment(1, "1Z999AA10123456784", Milestone::OutForDelivery, "de-DE"),
        shipment(2, "9400111899223197428490", Milestone::Delivered, "en"),
        shipment(3, "794843185271", Milestone::Exception, "en-GB"),
    ];
    // The sender's parcels: a subset chosen by the first byte.
    let mine: Vec<Shipment> = all.iter().enumerate().filter(|(i, _)| pick & (1 << i) != 0).map(|(_, s)| s.clone()).collect();
    let a = answer(&text, &mine, link);
    if let Some(reply) = &a.text {
        assert!(reply.chars().count() <= 320, "{reply}");
    }
    match a.shipment_id {
        Some(id) => {
            let s = mine.iter().find(|s| s.id == id).expect("an answer is about one of the sender's parcels");
            let reply = a.text.as_deref().expect("a parcel's answer has text");
            assert!(reply.contains(s.tracking_number.as_str()) && reply.contains(&link(s)), "{reply}");
            for other in all.iter().filter(|o| o.id != id) {
                assert!(!reply.contains(other.tracking_number.as_str()), "{reply}");
            }
        }
        None => {
            if let Some(reply) = &a.text {
                assert!(!reply.contains("/t/"), "{reply}");
                for s in &all {
                    assert!(!reply.contains(s.tracking_number.as_str()), "{reply}");
                }
            }
        }
    }
    if mine.is_empty() {
        assert!(matches!(a.kind, Kind::Unknown | Kind::NotAQuestion), "{:?}", a.kind);
    }
});
