//! Which hub sends: the dispatch lease, one row in the shared database.
//!
//! Hubs of one shared subscription group share one database, and every one of them can
//! run a dispatcher. Only the lease holder plans, claims and sends rows and posts
//! operations alerts, so a customer never hears twice and a provider's rate limit is
//! kept once. The notification module renews the lease (`notify::lease`); this module
//! keeps its row.
//!
//! The lease names the hub (its MQTT client id) and the process (a random token). A hub
//! restarted after a crash takes its own old lease at once. Whoever takes the lease
//! settles, in the same transaction, the rows the previous holder left `sending`: the
//! channels whose requests are safe to repeat go back to `queued`, the others become
//! `unknown`.

use super::db::{OptionalExtension as _, params};

use super::{Store, StoreError};

/// What [`Store::take_dispatch_lease`] found.
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

/// Who asks for the lease: [`Store::take_dispatch_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseClaim<'a> {
    /// The hub (its MQTT client id).
    pub holder: &'a str,
    /// This process (a random token).
    pub token: &'a str,
    /// This process has not held the lease yet: a live lease under its own hub name is
    /// then its previous run's, taken at once. A process that held the lease and lost it
    /// takes it back only once it expires.
    pub first: bool,
    /// How long the lease lasts without renewal, ms.
    pub ttl_ms: i64,
    /// The channels whose rows left `sending` by a previous holder may be sent again.
    pub resend_safe: &'a [&'a str],
}

/// A lease taken over, and what the previous holder left in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settled {
    /// Rows queued again (their channel is safe to repeat).
    pub requeued: usize,
    /// Rows now `unknown` (they may have been sent).
    pub unknown: usize,
}

impl Store {
    /// Takes or renews the dispatch lease until `now_ms + ttl_ms`, in one write
    /// transaction with the settling of what a previous holder left `sending`.
    pub fn take_dispatch_lease(
        &self,
        claim: &LeaseClaim<'_>,
        now_ms: i64,
    ) -> Result<(Acquired, Settled), StoreError> {
        // Hubs on several hosts never compare their own clocks: PostgreSQL decides on its.
        if let super::Db::Postgres(pg) = &self.conn {
            let (holder, token, first, ttl_ms) =
                (claim.holder.to_owned(), claim.token.to_owned(), claim.first, claim.ttl_ms);
            let resend_safe: Vec<String> = claim.resend_safe.iter().map(|c| (*c).to_owned()).collect();
            return pg.run(move |w| {
                let resend_safe: Vec<&str> = resend_safe.iter().map(String::as_str).collect();
                let claim =
                    LeaseClaim { holder: &holder, token: &token, first, ttl_ms, resend_safe: &resend_safe };
                w.with_store(|store| store.take_dispatch_lease(&claim))
            });
        }
        let tx = self.shared_transaction()?;
        let conn: &super::Db = tx.tx;
        let current: Option<(String, String, i64)> = conn
            .query_row(
                "SELECT holder, token, expires_ms FROM dispatcher_lease WHERE id = 1",
                super::db::params![],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let acquired = match current {
            Some((h, t, _)) if h == claim.holder && t == claim.token => Acquired::Renewed,
            Some((h, _, expires)) if expires > now_ms && !(claim.first && h == claim.holder) => {
                return Ok((Acquired::HeldBy(h), Settled::default()));
            }
            Some((h, _, _)) => Acquired::TookOver(Some(h)),
            None => Acquired::TookOver(None),
        };
        conn.prepare_cached(
            "INSERT INTO dispatcher_lease (id, holder, token, expires_ms) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, token = excluded.token,
                                            expires_ms = excluded.expires_ms",
        )?
        .execute(params![claim.holder, claim.token, now_ms.saturating_add(claim.ttl_ms)])?;
        let settled = match acquired {
            Acquired::TookOver(_) => {
                let (requeued, unknown) = super::dispatch::recover(conn, now_ms, claim.resend_safe)?;
                Settled { requeued, unknown }
            }
            _ => Settled::default(),
        };
        tx.commit()?;
        Ok((acquired, settled))
    }

    /// Gives the lease up (a graceful stop), so another hub need not wait for it to
    /// expire. Only this process's lease.
    pub fn release_dispatch_lease(&self, token: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE dispatcher_lease SET expires_ms = 0 WHERE token = ?1")?
            .execute([token])?;
        Ok(())
    }

    /// The current holder and when its lease ends, if anyone ever held it.
    pub fn dispatch_lease_holder(&self) -> Result<Option<(String, i64)>, StoreError> {
        self.conn
            .query_row(
                "SELECT holder, expires_ms FROM dispatcher_lease WHERE id = 1",
                super::db::params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_until_it_expires_or_lets_go() {
        // The hosts' clock, given here, decides on SQLite (one host); PostgreSQL decides on
        // its own clock, tested in tests/postgres.rs.
        let store = Store::setup(rusqlite::Connection::open_in_memory().expect("memory"), Default::default())
            .expect("schema");
        let claim = |holder: &'static str, token: &'static str, first: bool| LeaseClaim {
            holder,
            token,
            first,
            ttl_ms: 30_000,
            resend_safe: &[],
        };
        let take = |holder: &'static str, token: &'static str, now: i64| {
            store.take_dispatch_lease(&claim(holder, token, false), now).expect("lease").0
        };
        let b = |name: &str| Acquired::HeldBy(name.to_owned());
        assert_eq!(take("hub-a", "a1", 1_000), Acquired::TookOver(None), "free: a takes it");
        assert_eq!(take("hub-b", "b1", 2_000), b("hub-a"));
        assert_eq!(take("hub-a", "a1", 11_000), Acquired::Renewed);
        assert_eq!(store.dispatch_lease_holder().expect("holder"), Some(("hub-a".to_owned(), 41_000)));
        assert_eq!(take("hub-b", "b1", 40_999), b("hub-a"), "not expired yet");
        assert_eq!(take("hub-b", "b1", 41_000), Acquired::TookOver(Some("hub-a".into())), "expired");
        assert_eq!(take("hub-a", "a1", 42_000), b("hub-b"), "a lost it");
        store.release_dispatch_lease("a1").expect("a's release is a no-op");
        assert_eq!(take("hub-a", "a1", 43_000), b("hub-b"), "still b's");
        store.release_dispatch_lease("b1").expect("b lets go");
        assert_eq!(take("hub-a", "a1", 44_000), Acquired::TookOver(Some("hub-b".into())), "at once");
        // hub-a crashes and restarts: the new process takes its own old lease at once; a
        // process that lost the lease does not take it back by name.
        let restarted = store.take_dispatch_lease(&claim("hub-a", "a2", true), 45_000).expect("lease").0;
        assert_eq!(restarted, Acquired::TookOver(Some("hub-a".into())));
        assert_eq!(take("hub-a", "a1", 46_000), b("hub-a"));
        assert_eq!(take("hub-a", "a2", 46_000), Acquired::Renewed);
        let stranger = store.take_dispatch_lease(&claim("hub-b", "b2", true), 47_000).expect("lease").0;
        assert_eq!(stranger, b("hub-a"), "first or not, another hub's live lease is its own");
    }
}
