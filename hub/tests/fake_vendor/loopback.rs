//! What every loopback vendor and hub fixture of the notification and sink tests stands
//! on: a vendor's router served on a free loopback port, and a customer's shipment
//! written into the hub's database.

use std::path::Path;

use axum::Router;
use doorstep_hub::model::Milestone;
use doorstep_hub::store::{Contact, ContactChannel, NewShipment, Store, StoreOptions};
use doorstep_proto::TrackingNumber;

/// Serves `app` on a free loopback port for the rest of the test; its base URL.
pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// A UPS parcel `tracking` for a customer with these contacts, who reads `locale` and
/// lives in `time_zone`.
pub fn ups_shipment(
    tracking: &str,
    contacts: impl IntoIterator<Item = (ContactChannel, Contact)>,
    locale: &str,
    time_zone: &str,
) -> NewShipment {
    NewShipment {
        tracking_number: TrackingNumber::new(tracking).expect("tracking"),
        carrier: Some("ups".into()),
        order_id: None,
        contacts: contacts.into_iter().collect(),
        locale: locale.into(),
        time_zone: time_zone.into(),
    }
}

/// Writes `new` into the database at `path` as created at `created_ms` (at `milestone`,
/// when given); its id.
pub fn insert_shipment(path: &Path, new: &NewShipment, created_ms: i64, milestone: Option<Milestone>) -> i64 {
    let mut store = Store::open(path, StoreOptions { full_sync: false }).expect("open");
    let tx = store.transaction().expect("tx");
    let id = tx.insert_shipment(new, created_ms).expect("shipment");
    if let Some(milestone) = milestone {
        tx.save_reconcile(id, milestone, &serde_json::json!(null), created_ms).expect("milestone");
    }
    tx.commit().expect("commit");
    id
}
