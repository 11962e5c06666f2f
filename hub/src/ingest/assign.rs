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
pub(super) fn these_vans<'a>(vans: impl IntoIterator<Item = &'a DeviceId>) -> Vec<String> {
    vans.into_iter().flat_map(|van| CHANNELS.iter().map(move |c| one_device(van, *c))).collect()
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
pub(super) struct Members {
    pub store: Store,
    pub group: String,
    pub hub: String,
    pub filters: watch::Sender<Vec<String>>,
    pub metrics: Arc<Metrics>,
    pub cancel: CancellationToken,
}

impl Members {
    pub(super) fn run(self) {
        let ttl_ms = i64::try_from(MEMBER_TTL.as_millis()).unwrap_or(i64::MAX);
        let mut seen: Option<(Vec<String>, Vec<String>)> = None;
        while !self.cancel.is_cancelled() {
            let started = Instant::now();
            let read = self
                .store
                .renew_member(&self.group, &self.hub, ttl_ms)
                .and_then(|members| Ok((members, self.store.active_device_names()?)));
            match read {
                Ok(now) if seen.as_ref() != Some(&now) => {
                    let (members, devices) = &now;
                    let mine: Vec<DeviceId> = devices
                        .iter()
                        .filter(|d| owner(d, members) == Some(self.hub.as_str()))
                        .filter_map(|d| DeviceId::new(d).ok())
                        .collect();
                    if seen.as_ref().is_none_or(|(before, _)| before != members) {
                        tracing::info!(group = %self.group, ?members, vans = mine.len(), "hub group: vans split among its live hubs");
                    }
                    self.metrics.group_split(members.len(), mine.len());
                    self.filters.send_replace(these_vans(&mine));
                    seen = Some(now);
                }
                Ok(_) => {}
                // Keeps its vans meanwhile: if its row expires the others take them too,
                // and a van held by two hubs is still stored once.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew this hub's group membership; keeping its vans")
                }
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
            these_vans([&van]),
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
}
