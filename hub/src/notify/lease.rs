//! Which hub sends: a lease row in the shared database.
//!
//! Hubs of one shared subscription group share one database, and every one of them can
//! run a dispatcher. Only the lease holder plans, claims and sends rows and posts
//! operations alerts, so a customer never hears twice and a provider's rate limit is
//! kept once. A task of its own renews the lease every third of [`LEASE_TTL`], whatever
//! the sends are doing; when the hub stops, it gives the lease up after its last request,
//! and when it dies, the lease runs out and another hub takes it.
//!
//! The lease names the hub (its MQTT client id) and the process (a random token). A hub
//! restarted after a crash takes its own old lease at once. Whoever takes the lease
//! settles, in the same transaction, the rows the previous holder left `sending` (see
//! [`super::outbox::recover`]): the webhook channel is re-sent with the same id, the
//! others become `unknown`.
//!
//! A holder that cannot reach its database for longer than the lease may still finish a
//! request after another hub took over; that answer is logged, and the row keeps the
//! status the new holder gave it (see [`super::outbox::finish`]).

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, params};

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// What [`acquire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This process held it and renewed it.
    Renewed,
    /// This process took it: it was free, expired, or this hub's previous run's. The
    /// previous holder's name, if there was one.
    TookOver(Option<String>),
    /// Another hub holds it (its name).
    HeldBy(String),
}

/// A random token for this process's leases.
pub fn process_token() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    // A failed draw leaves zeros: the token then only tells processes apart by chance,
    // and the lease still names the hub.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Takes or renews the lease for `holder` (this process: `token`) until
/// `now_ms + ttl_ms`. Call inside a write transaction (`BEGIN IMMEDIATE`), with
/// whatever a take-over must settle.
///
/// `first` says this process has not held the lease yet: a live lease under its own
/// hub name is then its previous run's, taken at once. A process that held the lease
/// and lost it takes it back only once it expires.
pub fn acquire(
    tx: &Connection,
    holder: &str,
    token: &str,
    first: bool,
    now_ms: i64,
    ttl_ms: i64,
) -> rusqlite::Result<Acquired> {
    let current: Option<(String, String, i64)> = tx
        .query_row("SELECT holder, token, expires_ms FROM dispatcher_lease WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let until = now_ms.saturating_add(ttl_ms);
    let acquired = match current {
        Some((h, t, _)) if h == holder && t == token => Acquired::Renewed,
        Some((h, _, expires)) if expires > now_ms && !(first && h == holder) => {
            return Ok(Acquired::HeldBy(h));
        }
        Some((h, _, _)) => Acquired::TookOver(Some(h)),
        None => Acquired::TookOver(None),
    };
    tx.prepare_cached(
        "INSERT INTO dispatcher_lease (id, holder, token, expires_ms) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, token = excluded.token,
                                        expires_ms = excluded.expires_ms",
    )?
    .execute(params![holder, token, until])?;
    Ok(acquired)
}

/// Gives the lease up (a graceful stop), so another hub need not wait for it to expire.
/// Only this process's lease.
pub fn release(conn: &Connection, token: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE dispatcher_lease SET expires_ms = 0 WHERE token = ?1")?.execute([token])?;
    Ok(())
}

/// The current holder and when its lease ends, if anyone ever held it.
pub fn holder(conn: &Connection) -> rusqlite::Result<Option<(String, i64)>> {
    conn.query_row("SELECT holder, expires_ms FROM dispatcher_lease WHERE id = 1", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreOptions};

    #[test]
    fn one_holder_at_a_time_until_it_expires_or_lets_go() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("hub.db");
        drop(Store::open(&path, StoreOptions::default()).expect("schema"));
        let conn = Connection::open(&path).expect("open");
        let take = |holder: &str, token: &str, now: i64| {
            acquire(&conn, holder, token, false, now, 30_000).expect("lease")
        };
        let b = |name: &str| Acquired::HeldBy(name.to_owned());
        assert_eq!(take("hub-a", "a1", 1_000), Acquired::TookOver(None), "free: a takes it");
        assert_eq!(take("hub-b", "b1", 2_000), b("hub-a"));
        assert_eq!(take("hub-a", "a1", 11_000), Acquired::Renewed);
        assert_eq!(holder(&conn).expect("holder"), Some(("hub-a".to_owned(), 41_000)));
        assert_eq!(take("hub-b", "b1", 40_999), b("hub-a"), "not expired yet");
        assert_eq!(take("hub-b", "b1", 41_000), Acquired::TookOver(Some("hub-a".into())), "expired");
        assert_eq!(take("hub-a", "a1", 42_000), b("hub-b"), "a lost it");
        release(&conn, "a1").expect("a's release is a no-op");
        assert_eq!(take("hub-a", "a1", 43_000), b("hub-b"), "still b's");
        release(&conn, "b1").expect("b lets go");
        assert_eq!(take("hub-a", "a1", 44_000), Acquired::TookOver(Some("hub-b".into())), "at once");
        // hub-a crashes and restarts: the new process takes its own old lease at once; a
        // process that lost the lease does not take it back by name.
        let restarted = acquire(&conn, "hub-a", "a2", true, 45_000, 30_000).expect("lease");
        assert_eq!(restarted, Acquired::TookOver(Some("hub-a".into())));
        assert_eq!(take("hub-a", "a1", 46_000), b("hub-a"));
        assert_eq!(take("hub-a", "a2", 46_000), Acquired::Renewed);
        let stranger = acquire(&conn, "hub-b", "b2", true, 47_000, 30_000).expect("lease");
        assert_eq!(stranger, b("hub-a"), "first or not, another hub's live lease is its own");
    }
}
