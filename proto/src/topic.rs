//! MQTT topics, built and parsed in one place.
//!
//! Every topic has the shape `doorstep/v1/{fleet}/{device}/{channel}`. Fleet and device ids
//! are validated identities, so they can never contain `/`, `+` or `#` and a topic built
//! here is always a valid MQTT topic name.

use std::fmt;
use std::str::FromStr;

use crate::ids::{DeviceId, FleetId, IdError};

/// The first two levels of every Doorstep topic. The version level lets a v2 contract
/// live beside v1 on the same broker.
pub const ROOT: &str = "doorstep/v1";

/// What travels on a topic, and in which direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Agent → hub: signed events (QoS 1, in sequence order).
    Evt,
    /// Agent → hub: the newest position only (QoS 0, retained) for live tracking.
    Pos,
    /// Agent → hub: photo chunks, lowest priority.
    Blob,
    /// Hub → agent: signed acknowledgements (events and photo chunks).
    Ack,
    /// Hub → agent: the signed route manifest (retained).
    Route,
    /// Agent → hub: online/offline state (retained; the offline form is the last will).
    State,
}

impl Channel {
    /// Every channel, for exhaustive tests and subscriptions.
    pub const ALL: [Channel; 6] =
        [Channel::Evt, Channel::Pos, Channel::Blob, Channel::Ack, Channel::Route, Channel::State];

    /// The channel's topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Evt => "evt",
            Channel::Pos => "pos",
            Channel::Blob => "blob",
            Channel::Ack => "ack",
            Channel::Route => "route",
            Channel::State => "state",
        }
    }
}

impl FromStr for Channel {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| TopicError::UnknownChannel(s.chars().take(32).collect()))
    }
}

/// Why a topic string is not a Doorstep topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic does not start with `doorstep/v1/`.
    #[error("topic does not start with {ROOT}/")]
    WrongRoot,
    /// The topic does not have exactly five levels.
    #[error("topic must be {ROOT}/<fleet>/<device>/<channel>; got {0} levels")]
    WrongShape(usize),
    /// The fleet or device level is not a valid id.
    #[error(transparent)]
    BadId(#[from] IdError),
    /// The last level is not a known channel.
    #[error("unknown channel {0:?} (expected evt, pos, blob, ack, route or state)")]
    UnknownChannel(String),
}

/// A parsed topic: which device, which channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    /// The device's fleet.
    pub fleet: FleetId,
    /// The device.
    pub device: DeviceId,
    /// What travels on it.
    pub channel: Channel,
}

impl Topic {
    /// A topic for one device and channel.
    pub fn new(fleet: FleetId, device: DeviceId, channel: Channel) -> Self {
        Self { fleet, device, channel }
    }

    /// Parses a topic name. Anything that is not exactly a Doorstep topic is an error.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let rest = topic.strip_prefix(ROOT).and_then(|r| r.strip_prefix('/')).ok_or(TopicError::WrongRoot)?;
        let levels: Vec<&str> = rest.split('/').collect();
        let [fleet, device, channel] = levels.as_slice() else {
            return Err(TopicError::WrongShape(levels.len() + 2));
        };
        Ok(Self { fleet: FleetId::new(*fleet)?, device: DeviceId::new(*device)?, channel: channel.parse()? })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ROOT}/{}/{}/{}", self.fleet, self.device, self.channel.as_str())
    }
}

/// The subscription filter for one channel of every device in every fleet
/// (`doorstep/v1/+/+/evt`): what a hub subscribes to.
pub fn all_devices(channel: Channel) -> String {
    format!("{ROOT}/+/+/{}", channel.as_str())
}

/// The subscription filter for one channel of one device, whatever fleet its topic names
/// (`doorstep/v1/+/van-17/evt`): what a hub subscribes to for each van it is given when
/// the hubs of a group split the fleet by van. The fleet stays a wildcard so that a van
/// publishing under the wrong fleet is still heard, and rejected with a reason.
pub fn one_device(device: &DeviceId, channel: Channel) -> String {
    format!("{ROOT}/+/{device}/{}", channel.as_str())
}

/// A shared subscription (`$share/{group}/doorstep/v1/+/+/{channel}`) so that several hubs
/// in one group split a broker's load, each message going to one of them.
pub fn shared(group: &str, channel: Channel) -> String {
    format!("$share/{group}/{}", all_devices(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn van() -> Topic {
        Topic::new(FleetId::new("acme").expect("id"), DeviceId::new("van-17").expect("id"), Channel::Evt)
    }

    #[test]
    fn every_channel_round_trips_through_its_topic_string() {
        for channel in Channel::ALL {
            let topic = Topic { channel, ..van() };
            assert_eq!(Topic::parse(&topic.to_string()), Ok(topic));
        }
        assert_eq!(van().to_string(), "doorstep/v1/acme/van-17/evt");
    }

    #[test]
    fn malformed_topics_are_errors_not_panics() {
        assert_eq!(Topic::parse(""), Err(TopicError::WrongRoot));
        assert_eq!(Topic::parse("doorstep/v2/acme/van/evt"), Err(TopicError::WrongRoot));
        assert_eq!(Topic::parse("doorstep/v1/acme/van"), Err(TopicError::WrongShape(4)));
        assert_eq!(Topic::parse("doorstep/v1/acme/van/evt/x"), Err(TopicError::WrongShape(6)));
        assert!(matches!(Topic::parse("doorstep/v1/ACME/van/evt"), Err(TopicError::BadId(_))));
        assert!(matches!(Topic::parse("doorstep/v1/acme/+/evt"), Err(TopicError::BadId(_))));
        assert!(matches!(Topic::parse("doorstep/v1/acme/van/what"), Err(TopicError::UnknownChannel(_))));
    }

    #[test]
    fn filters_cover_all_devices_and_shared_groups() {
        assert_eq!(all_devices(Channel::Evt), "doorstep/v1/+/+/evt");
        assert_eq!(shared("hubs", Channel::Blob), "$share/hubs/doorstep/v1/+/+/blob");
        let filter = one_device(&DeviceId::new("van-17").expect("id"), Channel::State);
        assert_eq!(filter, "doorstep/v1/+/van-17/state");
    }
}
