//! Route manifest JSON: `RouteManifest::from_json`, which reads the files fleet IT feeds
//! the agent and the routes the hub's API takes in before it signs them.
//!
//! Holds: no panic; an accepted manifest is valid (`validate`), its JSON form
//! (`to_json`, the file format) reads back to the same manifest, and it travels signed to
//! a device and opens there unchanged.

#![no_main]

use doorstep_fuzz::{HUB_SEED, public_key, signing_key};
use doorstep_proto::{DeviceId, HubMessage, RouteAssignment, RouteManifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(route) = RouteManifest::from_json(data) else { return };
    assert!(route.validate().is_ok());
    for stop in &route.stops {
        assert!(stop.lat.is_finite() && stop.lon.is_finite());
        assert!((-90.0..=90.0).contains(&stop.lat) && (-180.0..=180.0).contains(&stop.lon), "{stop:?}");
    }
    let json = route.to_json();
    let back = RouteManifest::from_json(json.as_bytes()).expect("to_json output reads back");
    assert_eq!(back, route, "JSON round trip changed the route:\n{json}");

    let message = HubMessage::Route(RouteAssignment {
        device: DeviceId::new("van-17").expect("id"),
        issued_ms: 1_763_700_000_000,
        route: route.clone(),
    });
    // A route too big for one hub message is refused at sealing, never truncated.
    if let Ok(wire) = message.seal(&signing_key(&HUB_SEED)) {
        assert_eq!(HubMessage::open(&wire, &public_key(&HUB_SEED)), Ok(message));
    }
});
