//! Which hub sends: a lease row in the shared database.
//!
//! Hubs of one shared subscription group share one database, and every one of them can
//! run a dispatcher. Only the lease holder plans, claims and sends rows and posts
//! operations alerts, so a customer never hears twice and a provider's rate limit is
//! kept once. The holder renews its lease every third of [`LEASE_TTL`]; when it stops,
//! it gives the lease up, and when it dies, the lease runs out and another hub takes it.
//! The hub that takes the lease settles the rows the previous holder left `sending`
//! (see [`super::outbox::recover`]), as a restarted lone hub does.
//!
//! A holder stalled longer than the lease (a database locked for half a minute) may
//! still finish one request after another hub took over; that request's row is then
//! settled as after a crash: re-sent on the idempotent webhook channel, `unknown` on
//! the others.

use std::time::Duration;

use rusqlite::{Connection, params};

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// Takes the lease, or renews it, for `holder` until `now_ms + ttl_ms`. True when
/// `holder` holds it afterwards: it was free, expired, or already this holder's.
pub fn acquire(conn: &Connection, holder: &str, now_ms: i64, ttl_ms: i64) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT INTO dispatcher_lease (id, holder, expires_ms) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
             WHERE dispatcher_lease.holder = excluded.holder OR dispatcher_lease.expires_ms <= ?3",
        )?
        .execute(params![holder, now_ms.saturating_add(ttl_ms), now_ms])?;
    Ok(n == 1)
}

/// Gives the lease up (a graceful stop), so another hub need not wait for it to expire.
pub fn release(conn: &Connection, holder: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE dispatcher_lease SET expires_ms = 0 WHERE holder = ?1")?.execute([holder])?;
    Ok(())
}

/// The current holder and when its lease ends, if anyone ever held it.
pub fn holder(conn: &Connection) -> rusqlite::Result<Option<(String, i64)>> {
    use rusqlite::OptionalExtension as _;
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
        assert!(acquire(&conn, "hub-a", 1_000, 30_000).expect("a"), "free: a takes it");
        assert!(!acquire(&conn, "hub-b", 2_000, 30_000).expect("b"), "held by a");
        assert!(acquire(&conn, "hub-a", 11_000, 30_000).expect("a renews"));
        assert_eq!(holder(&conn).expect("holder"), Some(("hub-a".to_owned(), 41_000)));
        assert!(!acquire(&conn, "hub-b", 40_999, 30_000).expect("b"), "not expired yet");
        assert!(acquire(&conn, "hub-b", 41_000, 30_000).expect("b"), "expired: b takes it");
        assert!(!acquire(&conn, "hub-a", 42_000, 30_000).expect("a"), "a lost it");
        release(&conn, "hub-a").expect("a's release is a no-op");
        assert!(!acquire(&conn, "hub-a", 43_000, 30_000).expect("a"), "still b's");
        release(&conn, "hub-b").expect("b lets go");
        assert!(acquire(&conn, "hub-a", 44_000, 30_000).expect("a"), "given up: a takes it at once");
    }
}
