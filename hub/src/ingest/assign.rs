//! Which vans this hub hears (`mqtt.assign`).
//!
//! - **Round robin** (the default): every hub of a group subscribes to every van through
//!   one shared subscription, and the broker deals each message to the next hub. Every
//!   hub then holds a share of every van: their batches write the same vans' rows, and
//!   each van's acks advance only as fast as the slowest hub commits its share.
//! - **By van**: each hub subscribes to its own vans' topics only. The hubs alive in the
//!   database (`store::members`, a row each renewed every [`RENEW`]) give each van to
//!   one of them by rendezvous hashing ([`owner`]): every hub computes the same answer
//!   from the same rows, and a hub joining or leaving moves only the vans it takes or
//!   gives up. A van's events then reach one hub while the group is stable, which is
//!   what a broker's hash strategy (EMQX's `hash_clientid`) gives, on a broker that has
//!   none (Mosquitto).
//!
//! The broker keeps a hub's subscriptions with its session across restarts. A hub that
//! starts again therefore drops, at its first connection, every filter it must not hold
//! ([`Filters::release`]): the vans now given to others, and the filters of the other
//! way of splitting (a hub moved from one to the other).
//!
//! A change of hands is safe without any coordination beyond that: for a moment both
//! hubs, or neither, may hold a van. Both: its events are stored once and its acks never
//! move back (the database's guarantees). Neither: the broker has no subscriber for
//! them, and the van resends what was not acked after its ack timeout, as it does after
//! any loss.

use std::sync::Arc;
use std::time::{Duration, Instant};

use doorstep_proto::DeviceId;
use doorstep_proto::topic::{Channel, all_devices, one_device, shared};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

/// The channels a hub hears from its vans.
const CHANNELS: [Channel; 4] = [Channel::Evt, Channel::Blob, Channel::Pos, Channel::State];

/// How often a hub renews its membership and re-reads the group and the fleet.
pub const RENEW: Duration = Duration::from_secs(1);

/// How long a membership lasts without renewal: a hub that stops renewing (dead, cut off
/// from the database) has its vans taken by the others after this long.
pub const MEMBER_TTL: Duration = Duration::from_secs(5);

/// The topic filters a hub holds with the broker, and those it must not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Filters {
    /// Held.
    pub hold: Vec<String>,
    /// Dropped at the first connection of a process whose session the broker kept.
    pub release: Vec<String>,
}

impl Filters {
    /// Every van: one shared subscription per channel in a group, plain ones for a hub
    /// alone; releasing the plain ones in a group, and the filters of `devices` (every
    /// van, when this hub split by van before; else none).
    pub(super) fn every_van<'a>(group: Option<&str>, devices: impl IntoIterator<Item = &'a String>) -> Self {
        let mut release = these_vans(&ids(devices));
        if group.is_some() {
            release.extend(every_van(None));
        }
        Self { hold: every_van(group), release }
    }

    /// The vans of `fleet` (name, trusted) that are `mine`, in `group`: releasing every
    /// other van's filters (revoked ones too) and every kind of every-van filter.
    fn by_van(group: &str, fleet: &[(String, bool)], mine: impl Fn(&str) -> bool) -> Self {
        let held = |(van, trusted): &&(String, bool)| *trusted && mine(van);
        let mut release = these_vans(&ids(fleet.iter().filter(|v| !held(v)).map(|(van, _)| van)));
        release.extend(every_van(Some(group)));
        release.extend(every_van(None));
        Self { hold: these_vans(&ids(fleet.iter().filter(held).map(|(van, _)| van))), release }
    }
}

/// The valid device ids among stored names (a registered device always is one).
fn ids<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<DeviceId> {
    names.into_iter().filter_map(|d| DeviceId::new(d).ok()).collect()
}

/// The filters of a hub that hears every van: one shared subscription per channel in a
/// group, or plain ones for a hub alone.
pub(super) fn every_van(group: Option<&str>) -> Vec<String> {
    CHANNELS
        .iter()
        .map(|c| match group {
            Some(group) => shared(group, *c),
            None => all_devices(*c),
        })
        .collect()
}

/// The filters of a hub given `vans`: each van's channels, whatever fleet its topic names.
pub(super) fn these_vans(vans: &[DeviceId]) -> Vec<String> {
    vans.iter().flat_map(|van| CHANNELS.iter().map(move |c| one_device(van, *c))).collect()
}

/// The member of `members` that holds `device`: the highest SHA-256 of member and device
/// (rendezvous hashing), the same on every hub and every build. `None` without members.
pub fn owner<'m>(device: &str, members: &'m [String]) -> Option<&'m str> {
    members
        .iter()
        .map(|member| {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(member.as_bytes());
            ctx.update(&[0]);
            ctx.update(device.as_bytes());
            let digest = ctx.finish();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest.as_ref()[..8]);
            (u64::from_be_bytes(first), member.as_str())
        })
        .max()
        .map(|(_, member)| member)
}

/// The thread that keeps this hub in its group and tells the MQTT task which vans' topics
/// to hold.
///
/// It renews the hub's row only while the hub's broker session is up: a hub the database
/// sees but the broker does not (a broken link, a refused certificate) lets its row expire,
/// and the others take its vans. It joins once connected, after it has asked for the vans
/// it expects (read before the first connection, as if it were already a member), so
/// that its vans are, if anything, heard twice for a moment rather than by nobody.
pub(super) struct Members {
    store: Store,
    group: String,
    hub: String,
    filters: watch::Sender<Filters>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    /// The group's members the vans were last split among.
    members: Option<Vec<String>>,
    /// The fleet (each van, and whether it is trusted), and when it was read: at the
    /// keyring's pace, since a van the verifiers do not know yet is not heard anyway.
    fleet: Vec<(String, bool)>,
    fleet_read: Option<Instant>,
}

impl Members {
    /// Reads the group and this hub's vans, as if it were a member, before the MQTT
    /// session starts, so that its first connection holds them (and releases the rest).
    /// Writes nothing: [`Members::run`] joins once the broker session is up. The receiver
    /// follows changes while it runs.
    pub(super) fn read(
        store: Store,
        group: &str,
        hub: &str,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> Result<(Self, watch::Receiver<Filters>), crate::store::StoreError> {
        let (filters, rx) = watch::channel(Filters::default());
        let mut members = Self {
            store,
            group: group.to_owned(),
            hub: hub.to_owned(),
            filters,
            metrics,
            cancel,
            members: None,
            fleet: Vec::new(),
            fleet_read: None,
        };
        let live = members.store.group_members_and(group, hub)?;
        members.split(live)?;
        Ok((members, rx))
    }

    /// Splits the fleet among `members` again if they or the fleet changed.
    fn split(&mut self, members: Vec<String>) -> Result<(), crate::store::StoreError> {
        let new_members = self.members.as_ref() != Some(&members);
        let mut changed = new_members;
        if self.fleet_read.is_none_or(|at| at.elapsed() >= super::KEYRING_REFRESH) {
            let fleet = self.store.fleet_names()?;
            self.fleet_read = Some(Instant::now());
            changed |= fleet != self.fleet;
            self.fleet = fleet;
        }
        if !changed {
            return Ok(());
        }
        let mine = |van: &str| owner(van, &members) == Some(self.hub.as_str());
        let filters = Filters::by_van(&self.group, &self.fleet, mine);
        let vans = filters.hold.len() / CHANNELS.len();
        if new_members {
            tracing::info!(group = %self.group, ?members, vans, "hub group: vans split among its live hubs");
        }
        self.metrics.group_split(members.len(), vans);
        self.filters.send_replace(filters);
        self.members = Some(members);
        Ok(())
    }

    /// One renewal: while connected, renews this hub's row; while not, reads the group
    /// with this hub counted all the same, so that it holds its vans again the moment it
    /// reconnects (its row, once renewed, tells the others).
    fn tick(&mut self, connected: bool) -> Result<(), crate::store::StoreError> {
        let ttl_ms = i64::try_from(MEMBER_TTL.as_millis()).unwrap_or(i64::MAX);
        let members = if connected {
            self.store.renew_member(&self.group, &self.hub, ttl_ms)?
        } else {
            self.store.group_members_and(&self.group, &self.hub)?
        };
        self.split(members)
    }

    pub(super) fn run(mut self) {
        let mut renewing = false;
        while !self.cancel.is_cancelled() {
            let started = Instant::now();
            let connected = self.metrics.is_mqtt_connected();
            if connected != renewing {
                if connected {
                    tracing::info!(group = %self.group, "broker session up: this hub joins its group");
                } else {
                    tracing::warn!(group = %self.group, "broker session down: this hub stops renewing its membership, and the others take its vans");
                }
                renewing = connected;
            }
            // Keeps its vans meanwhile: if its row expires the others take them too, and
            // a van held by two hubs is still stored once.
            if let Err(e) = self.tick(connected) {
                tracing::warn!(error = %e, "cannot renew this hub's group membership; keeping its vans");
            }
            while started.elapsed() < RENEW && !self.cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // A graceful stop: the others take this hub's vans at their next renewal.
        if let Err(e) = self.store.leave_group(&self.group, &self.hub) {
            tracing::warn!(error = %e, "cannot leave the hub group; the others take its vans when its row expires");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hubs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("hub-{i}")).collect()
    }

    #[test]
    fn every_van_has_one_owner_and_a_leaving_hub_moves_only_its_own() {
        let vans: Vec<String> = (0..3000).map(|i| format!("van-{i}")).collect();
        let three = hubs(3);
        let before: Vec<&str> = vans.iter().map(|v| owner(v, &three).expect("owner")).collect();
        // Spread: each of three hubs holds about a third.
        for hub in &three {
            let held = before.iter().filter(|o| **o == hub.as_str()).count();
            assert!((800..=1200).contains(&held), "{hub} holds {held} of 3000");
        }
        // The same answer whatever order the members are listed in.
        let reversed: Vec<String> = three.iter().rev().cloned().collect();
        assert!(vans.iter().zip(&before).all(|(v, o)| owner(v, &reversed) == Some(*o)));
        // hub-1 leaves: its vans move, nobody else's do.
        let two = vec![three[0].clone(), three[2].clone()];
        for (van, was) in vans.iter().zip(&before) {
            let now = owner(van, &two).expect("owner");
            if *was == "hub-1" {
                assert_ne!(now, "hub-1");
            } else {
                assert_eq!(now, *was, "{van} moved without its hub leaving");
            }
        }
        assert_eq!(owner("van-1", &[]), None);
    }

    #[test]
    fn a_van_is_heard_on_every_channel_whatever_its_fleet() {
        let van = DeviceId::new("van-17").expect("id");
        assert_eq!(
            these_vans(std::slice::from_ref(&van)),
            [
                "doorstep/v1/+/van-17/evt",
                "doorstep/v1/+/van-17/blob",
                "doorstep/v1/+/van-17/pos",
                "doorstep/v1/+/van-17/state"
            ]
        );
        assert_eq!(every_van(Some("hubs"))[0], "$share/hubs/doorstep/v1/+/+/evt");
        assert_eq!(every_van(None)[3], "doorstep/v1/+/+/state");
    }

    #[test]
    fn a_hub_keeps_its_vans_while_disconnected_and_joins_only_once_connected() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("hub.db");
        let mut store = Store::open(&path, crate::store::StoreOptions::default()).expect("store");
        let fleet = doorstep_proto::FleetId::new("acme").expect("fleet");
        for i in 1..=6u8 {
            let key = doorstep_proto::SigningKey::from_seed(&[i; 32]).expect("seed").public_key();
            let van = DeviceId::new(format!("van-{i}")).expect("id");
            store.add_device(&fleet, &van, &key, false, 0).expect("add");
        }
        store.renew_member("hubs", "hub-b", 60_000).expect("hub-b lives");
        let mine = |store: &Store| -> usize {
            let fleet = store.fleet_names().expect("fleet");
            let two = ["hub-a".to_owned(), "hub-b".to_owned()];
            fleet.iter().filter(|(van, _)| owner(van, &two) == Some("hub-a")).count()
        };
        let expected = CHANNELS.len() * mine(&store);
        assert!(expected > 0, "hub-a holds a van of six");

        let other = Store::open(&path, crate::store::StoreOptions::default()).expect("store");
        let metrics = Arc::new(Metrics::default());
        let (mut members, rx) =
            Members::read(other, "hubs", "hub-a", metrics, CancellationToken::new()).expect("read");
        assert_eq!(rx.borrow().hold.len(), expected, "its vans before it connects");
        assert_eq!(store.group_members("hubs").expect("read"), ["hub-b"], "not joined yet");
        members.tick(false).expect("tick");
        assert_eq!(rx.borrow().hold.len(), expected, "still its vans while disconnected");
        assert_eq!(store.group_members("hubs").expect("read"), ["hub-b"], "still not joined");
        members.tick(true).expect("tick");
        assert_eq!(store.group_members("hubs").expect("read"), ["hub-a", "hub-b"], "joined once connected");
        assert_eq!(rx.borrow().hold.len(), expected);
    }

    #[test]
    fn a_hub_releases_every_filter_it_must_not_hold() {
        let devices = ["van-1".to_owned(), "van-2".to_owned()];
        let rr = Filters::every_van(Some("hubs"), &devices);
        assert_eq!(rr.hold, every_van(Some("hubs")));
        // Each van's own filters (from a time it split by van), and the plain ones (from a
        // time it was alone).
        assert_eq!(rr.release.len(), 2 * 4 + 4);
        assert!(rr.release.contains(&"doorstep/v1/+/van-2/blob".to_owned()));
        assert!(rr.release.contains(&"doorstep/v1/+/+/evt".to_owned()));
        assert_eq!(Filters::every_van(None, &devices).release.len(), 2 * 4);

        // van-3 is revoked: never held, even if the split gives it to this hub, and its
        // filters dropped like another hub's vans'.
        let fleet = [("van-1".to_owned(), true), ("van-2".to_owned(), true), ("van-3".to_owned(), false)];
        let split = Filters::by_van("hubs", &fleet, |d| d != "van-2");
        assert_eq!(split.hold, these_vans(&[DeviceId::new("van-1").expect("id")]));
        assert!(split.release.contains(&"doorstep/v1/+/van-2/evt".to_owned()));
        assert!(split.release.contains(&"doorstep/v1/+/van-3/state".to_owned()));
        assert!(!split.release.iter().any(|f| f.contains("van-1")));
        assert!(split.release.contains(&"$share/hubs/doorstep/v1/+/+/pos".to_owned()));
        assert!(split.release.contains(&"doorstep/v1/+/+/pos".to_owned()));
    }
}
