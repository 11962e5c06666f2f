//! The hubs of a group that split the fleet by van (`mqtt.assign = "by_van"`): each hub
//! renews its row every second or so, and the rows still live are the group. Every hub
//! reads the same rows and gives each van to the same one of them (`ingest::assign`), so
//! a van's events reach one hub while the group is stable.
//!
//! Liveness is decided on the database's clock (PostgreSQL's, or SQLite's on the one
//! host that shares the file): hubs on several hosts never compare their own clocks.

use super::db::params;

use super::{DeviceStatus, Store, StoreError};

impl Store {
    /// Renews `hub`'s membership of `group` until `ttl_ms` from now (the database's
    /// clock), and returns the group's live members, sorted, this hub among them.
    pub fn renew_member(&self, group: &str, hub: &str, ttl_ms: i64) -> Result<Vec<String>, StoreError> {
        let now = self.conn.dialect().now_ms();
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO hub_members (grp, hub, expires_ms) VALUES (?1, ?2, {now} + ?3)
                 ON CONFLICT (grp, hub) DO UPDATE SET expires_ms = excluded.expires_ms"
            ))?
            .execute(params![group, hub, ttl_ms])?;
        // Counted even if its row expired between the two statements (a stalled renewal).
        self.group_members_and(group, hub)
    }

    /// `group`'s live members with `hub` counted among them, sorted; nothing is written.
    pub fn group_members_and(&self, group: &str, hub: &str) -> Result<Vec<String>, StoreError> {
        let mut members = self.group_members(group)?;
        if let Err(at) = members.binary_search_by(|m| m.as_str().cmp(hub)) {
            members.insert(at, hub.to_owned());
        }
        Ok(members)
    }

    /// `group`'s live members, sorted; nothing is written.
    pub fn group_members(&self, group: &str) -> Result<Vec<String>, StoreError> {
        let now = self.conn.dialect().now_ms();
        let mut members: Vec<String> = self
            .conn
            .prepare_cached(&format!("SELECT hub FROM hub_members WHERE grp = ?1 AND expires_ms > {now}"))?
            .query_map(params![group], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        // Sorted here, not by the database: PostgreSQL's collation may order otherwise.
        members.sort();
        Ok(members)
    }

    /// Leaves `group` (a graceful stop): the others take this hub's vans at their next
    /// renewal instead of waiting for its row to expire. The row stays, expired: it is
    /// how the hub knows, if it later hears every van, that its broker session may still
    /// hold single vans' filters ([`Store::split_by_van_before`]).
    pub fn leave_group(&self, group: &str, hub: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE hub_members SET expires_ms = 0 WHERE grp = ?1 AND hub = ?2")?
            .execute(params![group, hub])?;
        Ok(())
    }

    /// Whether `hub` ever split the vans with a group: its broker session may then hold
    /// filters of single vans.
    pub fn split_by_van_before(&self, hub: &str) -> Result<bool, StoreError> {
        self.conn.prepare_cached("SELECT 1 FROM hub_members WHERE hub = ?1")?.exists(params![hub])
    }

    /// Forgets that `hub` split the vans (it hears every van now, and has been told to
    /// drop the single vans' filters).
    pub fn forget_split(&self, hub: &str) -> Result<(), StoreError> {
        self.conn.prepare_cached("DELETE FROM hub_members WHERE hub = ?1")?.execute(params![hub])?;
        Ok(())
    }

    /// Every registered device, and whether its key is trusted (the vans a group splits;
    /// a revoked van's filters are only ever dropped), sorted.
    pub fn fleet_names(&self) -> Result<Vec<(String, bool)>, StoreError> {
        self.conn
            .prepare_cached("SELECT device, status FROM devices ORDER BY device")?
            .query_map(params![], |r| {
                Ok((r.get(0)?, r.get::<_, String>(1)? == DeviceStatus::Active.as_str()))
            })?
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_live_until_its_row_expires_or_it_leaves() {
        let store = Store::open_in_memory().expect("store");
        assert_eq!(store.renew_member("hubs", "hub-b", 60_000).expect("renew"), ["hub-b"]);
        assert_eq!(store.renew_member("hubs", "hub-a", 60_000).expect("renew"), ["hub-a", "hub-b"]);
        // Another group's members are not this group's.
        assert_eq!(store.renew_member("other", "hub-c", 60_000).expect("renew"), ["hub-c"]);
        // A row already expired is not a member (the renewing hub always counts itself);
        // renewing it makes it one again.
        assert_eq!(store.renew_member("hubs", "hub-b", -1).expect("renew"), ["hub-a", "hub-b"]);
        assert_eq!(store.renew_member("hubs", "hub-a", 60_000).expect("renew"), ["hub-a"]);
        assert_eq!(store.renew_member("hubs", "hub-b", 60_000).expect("renew"), ["hub-a", "hub-b"]);
        store.leave_group("hubs", "hub-a").expect("leave");
        assert_eq!(store.renew_member("hubs", "hub-b", 60_000).expect("renew"), ["hub-b"]);
        // Gone from the group, but known to have split by van, until forgotten.
        assert!(store.split_by_van_before("hub-a").expect("read"));
        assert!(!store.split_by_van_before("hub-z").expect("read"));
        assert_eq!(store.group_members("hubs").expect("read"), ["hub-b"]);
        assert_eq!(store.group_members_and("hubs", "hub-a").expect("read"), ["hub-a", "hub-b"]);
        store.forget_split("hub-a").expect("forget");
        assert!(!store.split_by_van_before("hub-a").expect("read"));
    }
}
