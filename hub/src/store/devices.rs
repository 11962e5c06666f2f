//! Devices: the registry and its keys, and what each van last said of itself (its
//! online state and newest live position).

use std::collections::{BTreeMap, HashMap};

use super::db::{OptionalExtension, params};
use doorstep_proto::{DeviceId, FleetId, KeyId, PublicKey, TrustedKey};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, StoreTx, corrupt};

/// Whether a device's key is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Events signed with its key are accepted.
    Active,
    /// Its key is no longer trusted; its events are rejected as `unknown_key`.
    Revoked,
}

impl DeviceStatus {
    /// `active` or `revoked`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Active => "active",
            DeviceStatus::Revoked => "revoked",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "active" => Ok(DeviceStatus::Active),
            "revoked" => Ok(DeviceStatus::Revoked),
            other => Err(corrupt("device status", other)),
        }
    }
}

/// One registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its fleet.
    pub fleet: FleetId,
    /// The device.
    pub device: DeviceId,
    /// Its public key.
    pub key: PublicKey,
    /// The key's id on the wire.
    pub key_id: KeyId,
    /// Trusted or not.
    pub status: DeviceStatus,
    /// When it was registered, ms since the Unix epoch.
    pub added_ms: i64,
}

/// What a device last said about itself on its retained `state` and `pos` topics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveStatus {
    /// The device's MQTT session is up (its online state, or its last will said offline);
    /// `None` until a state message arrived.
    pub online: Option<bool>,
    /// The agent version it reported when it last came online.
    pub agent_version: Option<String>,
    /// Events waiting in its outbox when it last came online.
    pub outbox_depth: Option<u64>,
    /// Hub time of the last state message, ms since the Unix epoch.
    pub state_ms: Option<i64>,
    /// The newest live position, signed by the device.
    pub position: Option<LivePosition>,
}

/// A device's newest live position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivePosition {
    /// GNSS UTC time of the fix, ms since the Unix epoch.
    pub utc_ms: i64,
    /// Latitude, degrees × 10⁷.
    pub lat_e7: i32,
    /// Longitude, degrees × 10⁷.
    pub lon_e7: i32,
    /// Horizontal uncertainty, decimetres, when known.
    pub accuracy_dm: Option<u16>,
    /// Hub time it arrived.
    pub received_ms: i64,
}

impl Store {
    /// Registers a device with its public key. An existing device is an error unless
    /// `replace` is set, which rotates its key and makes it active again.
    pub fn add_device(
        &mut self,
        fleet: &FleetId,
        device: &DeviceId,
        key: &PublicKey,
        replace: bool,
        now_ms: i64,
    ) -> Result<DeviceRecord, StoreError> {
        let tx = self.transaction()?;
        let existing: Option<String> = tx
            .query_row("SELECT device FROM devices WHERE device = ?1", [device.as_str()], |r| r.get(0))
            .optional()?;
        if existing.is_some() && !replace {
            return Err(StoreError::Exists(format!(
                "device {device} (use --replace to rotate its key, or revoke it first)"
            )));
        }
        let key_id = key.key_id().to_hex();
        let owner: Option<String> = tx
            .query_row("SELECT device FROM devices WHERE key_id = ?1", [&key_id], |r| r.get(0))
            .optional()?;
        if let Some(owner) = owner
            && owner != device.as_str()
        {
            return Err(StoreError::Exists(format!("key {key_id} (registered to device {owner})")));
        }
        tx.execute(
            "INSERT INTO devices (device, fleet, public_key, key_id, status, added_ms)
             VALUES (?1, ?2, ?3, ?4, 'active', ?5)
             ON CONFLICT (device) DO UPDATE SET fleet = ?2, public_key = ?3, key_id = ?4,
                 status = 'active', added_ms = ?5, revoked_ms = NULL",
            params![device.as_str(), fleet.as_str(), key.to_string(), key_id, now_ms],
        )?;
        tx.commit()?;
        Ok(DeviceRecord {
            fleet: fleet.clone(),
            device: device.clone(),
            key: *key,
            key_id: key.key_id(),
            status: DeviceStatus::Active,
            added_ms: now_ms,
        })
    }

    /// Revokes a device's key. Returns false when the device is unknown.
    pub fn revoke_device(&mut self, device: &DeviceId, now_ms: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE devices SET status = 'revoked', revoked_ms = ?2 WHERE device = ?1",
            params![device.as_str(), now_ms],
        )?;
        Ok(n > 0)
    }

    /// Every registered device, by fleet and id.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT fleet, device, public_key, status, added_ms FROM devices ORDER BY fleet, device",
        )?;
        let rows = stmt.query_map(super::db::params![], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (fleet, device, key, status, added_ms) = row?;
            let key = PublicKey::from_text(&key).map_err(|e| corrupt("device key", e))?;
            out.push(DeviceRecord {
                fleet: FleetId::new(fleet).map_err(|e| corrupt("fleet id", e))?,
                device: DeviceId::new(device).map_err(|e| corrupt("device id", e))?,
                key,
                key_id: key.key_id(),
                status: DeviceStatus::parse(&status)?,
                added_ms,
            });
        }
        Ok(out)
    }

    /// One registered device.
    pub fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self.devices()?.into_iter().find(|d| d.device == *device))
    }

    /// The keys of every active device, by key id: the verifier's keyring.
    pub fn active_keys(&self) -> Result<HashMap<KeyId, (FleetId, TrustedKey)>, StoreError> {
        Ok(self
            .devices()?
            .into_iter()
            .filter(|d| d.status == DeviceStatus::Active)
            .map(|d| (d.key_id, (d.fleet, TrustedKey { device: d.device, key: d.key })))
            .collect())
    }

    /// A device's newest live position, if it ever sent one.
    pub fn live_position(&self, device: &DeviceId) -> Result<Option<LivePosition>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT pos_utc_ms, pos_lat_e7, pos_lon_e7, pos_accuracy_dm, pos_ms FROM device_status
                 WHERE device = ?1 AND pos_utc_ms IS NOT NULL",
            )?
            .query_row([device.as_str()], |r| {
                Ok(LivePosition {
                    utc_ms: r.get(0)?,
                    lat_e7: r.get(1)?,
                    lon_e7: r.get(2)?,
                    accuracy_dm: r.get(3)?,
                    received_ms: r.get(4)?,
                })
            })
            .optional()?;
        Ok(row)
    }

    /// What every device last said on its `state` and `pos` topics, by device.
    pub fn live_statuses(&self) -> Result<BTreeMap<DeviceId, LiveStatus>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT device, online, agent_version, outbox_depth, state_ms, pos_utc_ms, pos_lat_e7, pos_lon_e7,
                    pos_accuracy_dm, pos_ms FROM device_status",
        )?;
        let mut rows = stmt.query(super::db::params![])?;
        let mut out = BTreeMap::new();
        while let Some(r) = rows.next()? {
            let device = DeviceId::new(r.get::<_, String>(0)?).map_err(|e| corrupt("device id", e))?;
            let position = match (r.get::<_, Option<i64>>(5)?, r.get(6)?, r.get(7)?, r.get(9)?) {
                (Some(utc_ms), Some(lat_e7), Some(lon_e7), Some(received_ms)) => {
                    Some(LivePosition { utc_ms, lat_e7, lon_e7, accuracy_dm: r.get(8)?, received_ms })
                }
                _ => None,
            };
            let status = LiveStatus {
                online: r.get(1)?,
                agent_version: r.get(2)?,
                outbox_depth: r.get::<_, Option<i64>>(3)?.and_then(|d| u64::try_from(d).ok()),
                state_ms: r.get(4)?,
                position,
            };
            out.insert(device, status);
        }
        Ok(out)
    }
}

impl StoreTx<'_> {
    /// The fleet of an active device whose current key has this id, or `None` when the
    /// device is unknown, revoked, or has rotated to another key. Checked again inside the
    /// write transaction so a revocation made by the CLI a moment ago is honored exactly.
    pub fn active_device(&self, device: &DeviceId, key_id: &KeyId) -> Result<Option<FleetId>, StoreError> {
        let row: Option<String> = self
            .tx
            .prepare_cached(
                "SELECT fleet FROM devices WHERE device = ?1 AND key_id = ?2 AND status = 'active'",
            )?
            .query_row(params![device.as_str(), key_id.to_hex()], |r| r.get(0))
            .optional()?;
        row.map(|f| FleetId::new(f).map_err(|e| corrupt("fleet id", e))).transpose()
    }

    /// The fleet of a registered, active device (whatever its key), or `None`.
    pub fn active_fleet(&self, device: &DeviceId) -> Result<Option<FleetId>, StoreError> {
        let row: Option<String> = self
            .tx
            .prepare_cached("SELECT fleet FROM devices WHERE device = ?1 AND status = 'active'")?
            .query_row([device.as_str()], |r| r.get(0))
            .optional()?;
        row.map(|f| FleetId::new(f).map_err(|e| corrupt("fleet id", e))).transpose()
    }

    /// Records a device's retained state (online with its agent version and outbox depth,
    /// or offline from its last will). An offline message carries neither, so the last
    /// known version and depth stay.
    pub fn set_device_state(
        &self,
        device: &DeviceId,
        state: &doorstep_proto::state::DeviceState,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let depth = state.outbox_depth.map(|d| i64::try_from(d).unwrap_or(i64::MAX));
        self.tx
            .prepare_cached(
                "INSERT INTO device_status (device, online, agent_version, outbox_depth, state_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (device) DO UPDATE SET online = ?2,
                     agent_version = coalesce(?3, device_status.agent_version),
                     outbox_depth = coalesce(?4, device_status.outbox_depth),
                     state_ms = ?5",
            )?
            .execute(params![device.as_str(), state.online, state.agent_version, depth, now_ms])?;
        Ok(())
    }

    /// Records a device's live position unless a newer one (by GNSS time) is already
    /// stored: a retained message redelivered after a restart never moves a van back.
    /// Returns whether it was newer.
    pub fn set_live_position(
        &self,
        device: &DeviceId,
        fix: &doorstep_proto::FixEvidence,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT INTO device_status (device, pos_utc_ms, pos_lat_e7, pos_lon_e7, pos_accuracy_dm, pos_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (device) DO UPDATE SET pos_utc_ms = ?2, pos_lat_e7 = ?3, pos_lon_e7 = ?4,
                     pos_accuracy_dm = ?5, pos_ms = ?6
                 WHERE device_status.pos_utc_ms IS NULL OR device_status.pos_utc_ms < ?2",
            )?
            .execute(params![device.as_str(), fix.utc_ms, fix.lat_e7, fix.lon_e7, fix.accuracy_dm, now_ms])?;
        Ok(n == 1)
    }
}
