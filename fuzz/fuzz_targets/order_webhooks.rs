//! Order systems' webhooks: Shopify (`fulfillments/create|update`, `orders/fulfilled`) and
//! WooCommerce (`order.updated`) through `inbound::Source::receive`, with a body the
//! fuzzer chose, signed with the configured secret. The first byte picks the topic.
//!
//! Holds: no panic; a correctly signed body gives exactly what parsing it gives; unsigned
//! or wrongly signed is an authentication failure before any parsing; an order event
//! names at least one parcel, once each; its contacts are what the API would accept
//! (an e-mail with a domain, an E.164 phone), consented; "dispatched" has a time; the
//! event survives JSON.

#![no_main]

use base64::Engine as _;
use doorstep_hub::inbound::{Inbound, Source, shopify, woocommerce};
use doorstep_hub::store::ContactChannel;
use libfuzzer_sys::fuzz_target;
use ring::hmac;

const SECRET: &str = "doorstep fuzz order system secret";

fn signed(header: &str, secret: &str, topic: (&str, &str), body: &[u8]) -> Vec<(String, String)> {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), body);
    let value = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    vec![
        (header.to_owned(), value),
        (topic.0.to_owned(), topic.1.to_owned()),
        ("X-Shopify-Webhook-Id".to_owned(), "fuzz-delivery".to_owned()),
        ("X-Shopify-Triggered-At".to_owned(), "2026-12-01T14:12:31Z".to_owned()),
        ("X-WC-Webhook-Delivery-ID".to_owned(), "fuzz-delivery".to_owned()),
    ]
}

fuzz_target!(|input: &[u8]| {
    let Some((&pick, body)) = input.split_first() else { return };
    let shop = shopify::Shopify::new(SECRET).expect("secret");
    let woo = woocommerce::WooCommerce::new(SECRET).expect("secret");
    let (source, header, topic): (&dyn Source, &str, (&str, &str)) = match pick % 4 {
        0 => (&shop, shopify::SIGNATURE_HEADER, (shopify::TOPIC_HEADER, "fulfillments/create")),
        1 => (&shop, shopify::SIGNATURE_HEADER, (shopify::TOPIC_HEADER, "fulfillments/update")),
        2 => (&shop, shopify::SIGNATURE_HEADER, (shopify::TOPIC_HEADER, "orders/fulfilled")),
        _ => (&woo, woocommerce::SIGNATURE_HEADER, (woocommerce::TOPIC_HEADER, "order.updated")),
    };
    let got = source.receive(&signed(header, SECRET, topic, body), body, 0);
    let parsed = if pick % 4 == 3 {
        woocommerce::parse(topic.1, body).map(|(item, _)| item)
    } else {
        shopify::parse(topic.1, body)
    };
    match (&got, &parsed) {
        (Ok(received), Ok(item)) => assert_eq!(&received.item, item),
        (Err(e), Err(p)) => assert_eq!(e, p),
        // The ping (`webhook_id=`) is answered before parsing; a body over the limit is
        // refused before parsing.
        (Ok(received), Err(_)) => assert_eq!(received.item, Inbound::Ignored("ping")),
        (Err(e), Ok(_)) => assert_eq!(e.reason, "too_large", "{e}"),
    }
    let refused =
        source.receive(&signed(header, "another secret", topic, body), body, 0).expect_err("forged");
    assert!(refused.authentication || refused.reason == "too_large", "{refused}");
    let unsigned: Vec<(String, String)> = Vec::new();
    assert!(source.receive(&unsigned, body, 0).expect_err("unsigned").authentication || body.len() > 1 << 20);

    let Ok(Inbound::Order(order)) = parsed else { return };
    assert!(!order.parcels.is_empty(), "an order event without a parcel");
    for (i, p) in order.parcels.iter().enumerate() {
        assert!(order.parcels[..i].iter().all(|q| q.tracking_number != p.tracking_number), "parcel twice");
        if let Some(carrier) = &p.carrier {
            assert!(
                !carrier.is_empty()
                    && carrier
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            );
        }
    }
    for (channel, contact) in &order.contacts {
        assert!(contact.consent, "an unconsented contact from an order");
        match channel {
            ContactChannel::Email => assert!(
                contact.recipient.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
            ),
            ContactChannel::Sms => {
                let digits = contact.recipient.strip_prefix('+').expect("E.164");
                assert!((8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()));
            }
            other => panic!("an order gave a {other:?} contact"),
        }
    }
    assert!(order.object_key.starts_with("fulfillment/") || order.object_key.starts_with("order/"));
    assert!(!order.order_id.is_empty() && order.order_id.chars().count() <= 80);
    serde_json::to_string(&order).expect("an order event is JSON");
});
