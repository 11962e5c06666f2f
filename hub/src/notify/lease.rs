//! Which hub sends: the dispatch lease, renewed by a task of its own.
//!
//! Only the lease holder plans, claims and sends rows and posts operations alerts, so a
//! customer never hears twice and a provider's rate limit is kept once. The renewing task
//! (`Dispatcher::renew_lease`) takes or renews the lease every third of [`LEASE_TTL`],
//! whatever the sends are doing; when the hub stops, it gives the lease up after its last
//! request, and when it dies, the lease runs out and another hub takes it. The lease row,
//! and the settling of what a previous holder left `sending`, are the store's
//! ([`crate::store::Store::take_dispatch_lease`]).
//!
//! A holder that cannot reach its database for longer than the lease may still finish a
//! request after another hub took over; that answer is logged, and the row keeps the
//! status the new holder gave it (see [`crate::store::Store::finish_notification`]).

use std::time::Duration;

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// A random token for this process's leases.
pub fn process_token() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    // A failed draw leaves zeros: the token then only tells processes apart by chance,
    // and the lease still names the hub.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
