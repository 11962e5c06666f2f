//! A device's online/offline state, retained on its `state` topic.
//!
//! JSON rather than postcard: operators read it with `mosquitto_sub`, and it carries no
//! evidence. The offline form is registered as the MQTT last will, so the broker marks a
//! van offline when its link dies without a goodbye.

use serde::{Deserialize, Serialize};

/// The retained state of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Whether the device's MQTT session is up.
    pub online: bool,
    /// Agent version, when online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Events waiting in the device's outbox when it came online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_depth: Option<u64>,
}

impl DeviceState {
    /// The last-will payload: `{"online":false}`.
    pub fn offline() -> Self {
        Self { online: false, agent_version: None, outbox_depth: None }
    }

    /// The payload published on connect.
    pub fn online(agent_version: &str, outbox_depth: u64) -> Self {
        Self { online: true, agent_version: Some(agent_version.to_owned()), outbox_depth: Some(outbox_depth) }
    }

    /// JSON bytes for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses the JSON form; at most 1 KiB is read.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > 1024 {
            return Err(format!("state message is {} bytes; the limit is 1024", bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}
