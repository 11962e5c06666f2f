//! The agent's configuration: `/etc/doorstep/agent.toml`.
//!
//! Two stages, as in every Doorstep binary: [`RawConfig`] is what the file says (serde,
//! unknown keys refused so a typo is an error and not a silently ignored setting), and
//! [`RawConfig::validate`] turns it into [`Config`], typed and checked, or an error that
//! names the key and what to put there. `doorstep-agent --print-default-config` prints
//! [`DEFAULT_CONFIG`], which is also what the documentation shows.

use std::path::PathBuf;
use std::time::Duration;

use doorstep_proto::{DeviceId, FleetId, MAX_TRAIL_SAMPLES};
use serde::Deserialize;

use crate::decide::{
    DEFAULT_POSITION_INTERVAL_MS, DEFAULT_TRAIL_BATCH_MAX_AGE_MS, DEFAULT_TRAIL_BATCH_SAMPLES, TrailConfig,
};
use crate::gate::GateConfig;
use crate::geofence::GeofenceConfig;
use crate::live::LiveConfig;
use crate::outbox::OutboxLimits;
use crate::uplink::UplinkConfig;

/// Where the agent looks for its configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/doorstep/agent.toml";

/// The commented default configuration.
pub const DEFAULT_CONFIG: &str = r#"# Doorstep agent configuration (/etc/doorstep/agent.toml).
# Every key is shown with its default; uncomment and change what your fleet needs.

[device]
# Your fleet and this unit, as registered at the hub (`doorstep-hub device add`).
fleet = "my-fleet"
id = "van-001"
# The device's Ed25519 key, written by `doorstep-agent keygen` (mode 0600).
key = "/var/lib/doorstep/device.key"
# Where the outbox (SQLite) and the status file live. Must survive reboots.
state_dir = "/var/lib/doorstep"

[gps]
# The GNSS receiver's serial port and baud rate (most receivers: 9600; u-blox often 38400).
device = "/dev/ttyACM0"
baud = 9600

[scanner]
# A serial barcode scanner sending one code per line. Leave device empty if there is none.
device = ""
baud = 9600

[driver]
# The Unix socket the driver's app talks to (JSON lines).
socket = "/run/doorstep/driver.sock"

[route]
# A route manifest file to drive without a hub (testing, demos). Routes from the hub,
# signed with its key, replace it.
# file = "/var/lib/doorstep/route.json"

[geofence]
# Approach ("nearby") and arrival ("at address") radii in metres, the dwell (seconds
# standing still in the arrival zone) before an arrival counts, and how long after the
# van left a stop a scan still counts as at its address. Stops may override radii and dwell.
approach_m = 600
arrival_m = 150
dwell_s = 30
scan_window_s = 120
# "Nearby" is said only for stops at most this many places past the furthest stop the
# van has reached, so a customer 70 stops later is not told at 9:00 because the van drove
# down their street. 0 lets every stop be announced whenever the van comes near.
nearby_lookahead = 3

[gate]
# Fixes worse than this are not used: HDOP, and the receiver's own error estimate (m).
max_hdop = 5.0
max_eph_m = 50.0

[outbox]
# What may wait for the hub, on this unit's storage. Position samples are thinned (oldest
# first) to stay under max_bytes; confirmations are never evicted: when they cannot be
# stored the agent says so loudly and keeps what it has.
max_bytes = 67108864          # 64 MiB of events
max_photo_bytes = 67108864    # 64 MiB of proof photos
# max_file_bytes = 268435456  # optional hard cap on the database file

[trail]
# The hub's record of the route driven. Samples travel in signed batches, each sample
# after the first as its difference from the one before: a sample costs about 12 bytes
# instead of a ~130-byte signed event of its own (10 samples: 224 bytes as one batch,
# 1,303 as ten events). At these defaults an hour of driving costs 2.2 kB of trail in
# 6 messages; one position event a minute cost 8.0 kB in 60. The live position is sent
# separately, newest only.
# Seconds between samples (0: no trail). 30 s is a sample every 300 m at city speed.
position_interval_s = 30
# Samples per batch (1 to 64). A batch also goes out when its oldest sample is
# batch_max_age_s old (GNSS time), and just before every confirmation, so the hub holds
# the trail leading to a delivery with it.
batch_samples = 20
# The batch being filled is only in memory: a crash or power cut loses at most this
# much of the trail (a graceful stop stores it). It also bounds how late the trail is.
batch_max_age_s = 600

[live]
# The live position (the `pos` topic: the newest fix only, for the tracking page and the
# operators' console). Nobody watches most of the time, so it is sent when the van moved
# min_distance_m, turned min_turn_deg while driving, or heartbeat_s passed; standing still
# costs one send per heartbeat. One send is about 258 bytes on the wire (172 of MQTT,
# ~30 of TLS, ~52 of TCP/IP). At these defaults town driving costs about 3 sends a km
# (0.8 kB/km; 2.6 to 3.4 on recorded drives) and a parked hour 12 sends (3 kB): a shift
# of 100 km is about 85 kB, where sending every fix cost 2.65 MB. A tracker's defaults
# (100 m, 10 degrees, 10 s) send 3 to 6 times as much driving and 93 kB per parked hour.
# While the hub says someone watches (the customer whose stop is next, an operator), the
# van sends every few seconds as the hub asks (every 5 s: about 3 kB a minute) and falls
# back by itself when the watch ends, even while the link is down.
min_distance_m = 400
min_turn_deg = 45
heartbeat_s = 300

# The link to the hub's MQTT broker. Without this section the agent works offline:
# confirmations wait in the outbox until a broker is configured.
# [uplink]
# host = "mqtt.example.com"
# port = 8883
# hub_key = "/etc/doorstep/hub.pub"     # or "ed25519:<hex>": only the hub's signed acks and routes are obeyed
# keepalive_s = 60
# [uplink.tls]
# ca = "/etc/doorstep/ca.pem"
# cert = "/etc/doorstep/device.crt"
# key = "/etc/doorstep/device-tls.key"
"#;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[device]`.
    pub device: RawDevice,
    /// `[gps]`.
    #[serde(default)]
    pub gps: RawSerial,
    /// `[scanner]`.
    #[serde(default)]
    pub scanner: RawSerial,
    /// `[driver]`.
    #[serde(default)]
    pub driver: RawDriver,
    /// `[route]`.
    #[serde(default)]
    pub route: RawRoute,
    /// `[geofence]`.
    #[serde(default)]
    pub geofence: RawGeofence,
    /// `[gate]`.
    #[serde(default)]
    pub gate: RawGate,
    /// `[trail]`.
    #[serde(default)]
    pub trail: RawTrail,
    /// `[live]`.
    #[serde(default)]
    pub live: RawLive,
    /// `[outbox]`.
    #[serde(default)]
    pub outbox: OutboxLimits,
    /// `[uplink]`: checked by [`UplinkConfig`]'s own rules; `fleet` defaults to `[device]`'s.
    #[serde(default)]
    pub uplink: Option<toml::Table>,
}

/// `[device]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    /// Fleet id.
    pub fleet: String,
    /// Device id.
    pub id: String,
    /// Key file.
    #[serde(default = "default_key")]
    pub key: PathBuf,
    /// State directory.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

fn default_key() -> PathBuf {
    PathBuf::from("/var/lib/doorstep/device.key")
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/doorstep")
}

/// A serial device section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSerial {
    /// Device path; empty for none.
    #[serde(default)]
    pub device: String,
    /// Baud rate.
    #[serde(default)]
    pub baud: Option<u32>,
}

/// `[driver]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDriver {
    /// Socket path.
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// `[route]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// A route manifest file.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// `[geofence]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeofence {
    /// Approach radius, m.
    pub approach_m: Option<f64>,
    /// Arrival radius, m.
    pub arrival_m: Option<f64>,
    /// Dwell, s.
    pub dwell_s: Option<u64>,
    /// Scan window, s.
    pub scan_window_s: Option<u64>,
    /// Stops past the furthest reached that may be announced as nearby.
    pub nearby_lookahead: Option<usize>,
}

/// `[gate]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    /// Largest HDOP.
    pub max_hdop: Option<f64>,
    /// Largest error estimate, m.
    pub max_eph_m: Option<f64>,
}

/// `[trail]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrail {
    /// Seconds between trail samples.
    pub position_interval_s: Option<u64>,
    /// Samples per trail batch.
    pub batch_samples: Option<usize>,
    /// Age of a batch's oldest sample at which it goes out, seconds.
    pub batch_max_age_s: Option<u64>,
}

/// Longest `[trail] batch_max_age_s` and `position_interval_s`: a day. A batch held longer
/// would put more than a working day of trail at the mercy of one power cut.
pub const MAX_TRAIL_BATCH_AGE_S: u64 = 86_400;

impl RawTrail {
    /// The sampling and batching the decider uses.
    fn validate(&self) -> Result<TrailConfig, ConfigError> {
        let secs_ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let interval_s =
            self.position_interval_s.unwrap_or(DEFAULT_POSITION_INTERVAL_MS.unsigned_abs() / 1000);
        if interval_s > MAX_TRAIL_BATCH_AGE_S {
            return Err(invalid(
                "trail",
                "position_interval_s",
                "must be at most 86400 s (30 is the default)",
            ));
        }
        let batch_samples = self.batch_samples.unwrap_or(DEFAULT_TRAIL_BATCH_SAMPLES);
        if !(1..=MAX_TRAIL_SAMPLES).contains(&batch_samples) {
            return Err(invalid(
                "trail",
                "batch_samples",
                format!("must be 1 to {MAX_TRAIL_SAMPLES} samples in one signed batch (20 is the default)"),
            ));
        }
        let max_age_s = self.batch_max_age_s.unwrap_or(DEFAULT_TRAIL_BATCH_MAX_AGE_MS.unsigned_abs() / 1000);
        if !(1..=MAX_TRAIL_BATCH_AGE_S).contains(&max_age_s) {
            return Err(invalid(
                "trail",
                "batch_max_age_s",
                "must be 1 to 86400 s: the most trail a power cut may lose (600 is the default)",
            ));
        }
        Ok(TrailConfig {
            interval_ms: secs_ms(interval_s),
            batch_samples,
            batch_max_age_ms: secs_ms(max_age_s),
        })
    }
}

/// `[live]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLive {
    /// Metres moved before the live position is sent again.
    pub min_distance_m: Option<f64>,
    /// Degrees turned while driving before it is sent again.
    pub min_turn_deg: Option<f64>,
    /// Seconds after which it is sent again anyway.
    pub heartbeat_s: Option<u64>,
}

impl RawLive {
    /// The live position's pace, checked.
    fn validate(&self) -> Result<LiveConfig, ConfigError> {
        let mut live = LiveConfig::default();
        if let Some(v) = self.min_distance_m {
            if !(v.is_finite() && (10.0..=100_000.0).contains(&v)) {
                return Err(invalid(
                    "live",
                    "min_distance_m",
                    "must be 10 to 100000 metres (400 is the default)",
                ));
            }
            live.min_distance_m = v;
        }
        if let Some(v) = self.min_turn_deg {
            if !(v.is_finite() && (5.0..=180.0).contains(&v)) {
                return Err(invalid("live", "min_turn_deg", "must be 5 to 180 degrees (45 is the default)"));
            }
            live.min_turn_deg = v;
        }
        if let Some(v) = self.heartbeat_s {
            if !(10..=86_400).contains(&v) {
                return Err(invalid("live", "heartbeat_s", "must be 10 to 86400 s (300 is the default)"));
            }
            live.heartbeat = Duration::from_secs(v);
        }
        Ok(live)
    }
}

/// A serial port to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPort {
    /// Device path.
    pub path: PathBuf,
    /// Baud rate.
    pub baud: u32,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Fleet.
    pub fleet: FleetId,
    /// Device.
    pub device: DeviceId,
    /// Key file.
    pub key_path: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// The GNSS receiver.
    pub gps: SerialPort,
    /// The barcode scanner, if any.
    pub scanner: Option<SerialPort>,
    /// The driver socket.
    pub driver_socket: PathBuf,
    /// A route file to load at start.
    pub route_file: Option<PathBuf>,
    /// Geofence parameters.
    pub geofence: GeofenceConfig,
    /// Stops past the furthest reached that may be announced as nearby.
    pub nearby_lookahead: usize,
    /// Quality gate thresholds.
    pub gate: GateConfig,
    /// How the trail is sampled and batched.
    pub trail: TrailConfig,
    /// When the live position is sent while nobody watches.
    pub live: LiveConfig,
    /// The MQTT link, when configured.
    pub uplink: Option<UplinkConfig>,
    /// The outbox's storage budget.
    pub outbox: OutboxLimits,
}

/// A configuration error: which key, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML for this format.
    #[error("{0}")]
    Toml(String),
    /// A value is invalid.
    #[error("[{section}] {key}: {message}")]
    Invalid {
        /// The section.
        section: &'static str,
        /// The key.
        key: &'static str,
        /// What is wrong and what to put there.
        message: String,
    },
}

fn invalid(section: &'static str, key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { section, key, message: message.into() }
}

impl RawConfig {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))
    }

    /// Checks every value and builds the typed configuration.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let fleet = FleetId::new(self.device.fleet).map_err(|e| invalid("device", "fleet", e.to_string()))?;
        let device = DeviceId::new(self.device.id).map_err(|e| invalid("device", "id", e.to_string()))?;
        if self.gps.device.is_empty() {
            return Err(invalid(
                "gps",
                "device",
                "set the GNSS receiver's serial port, e.g. \"/dev/ttyACM0\"",
            ));
        }
        let baud = |raw: &RawSerial, section: &'static str| -> Result<u32, ConfigError> {
            let baud = raw.baud.unwrap_or(9600);
            if [1200, 2400, 4800, 9600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600]
                .contains(&baud)
            {
                Ok(baud)
            } else {
                Err(invalid(
                    section,
                    "baud",
                    format!("{baud} is not a standard rate; NMEA receivers use 4800 to 115200"),
                ))
            }
        };
        let gps = SerialPort { path: PathBuf::from(&self.gps.device), baud: baud(&self.gps, "gps")? };
        let scanner = if self.scanner.device.is_empty() {
            None
        } else {
            Some(SerialPort {
                path: PathBuf::from(&self.scanner.device),
                baud: baud(&self.scanner, "scanner")?,
            })
        };
        let mut geofence = GeofenceConfig::default();
        if let Some(v) = self.geofence.approach_m {
            geofence.approach_m = v;
        }
        if let Some(v) = self.geofence.arrival_m {
            geofence.arrival_m = v;
        }
        if let Some(v) = self.geofence.dwell_s {
            geofence.dwell = Duration::from_secs(v);
        }
        if let Some(v) = self.geofence.scan_window_s {
            geofence.scan_window = Duration::from_secs(v);
        }
        geofence
            .validate()
            .map_err(|e| invalid("geofence", "approach_m/arrival_m/dwell_s", e.to_string()))?;
        let mut gate = GateConfig::default();
        if let Some(v) = self.gate.max_hdop {
            if !(v.is_finite() && v >= 1.0) {
                return Err(invalid(
                    "gate",
                    "max_hdop",
                    "must be a number of at least 1.0 (5.0 is a good start)",
                ));
            }
            gate.max_hdop = v;
        }
        if let Some(v) = self.gate.max_eph_m {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid("gate", "max_eph_m", "must be a positive number of metres"));
            }
            gate.max_eph_m = v;
        }
        let uplink = match self.uplink {
            None => None,
            Some(mut table) => {
                table.entry("fleet").or_insert_with(|| toml::Value::String(fleet.to_string()));
                let uplink: UplinkConfig = table
                    .try_into()
                    .map_err(|e: toml::de::Error| invalid("uplink", "*", e.message().to_owned()))?;
                uplink.validate().map_err(|e| invalid("uplink", "*", e.to_string()))?;
                Some(uplink)
            }
        };
        if self.outbox.max_bytes == 0 || self.outbox.max_photo_bytes == 0 {
            return Err(invalid(
                "outbox",
                "max_bytes/max_photo_bytes",
                "must be more than 0 bytes (64 MiB is the default)",
            ));
        }
        Ok(Config {
            outbox: self.outbox,
            uplink,
            live: self.live.validate()?,
            fleet,
            device,
            key_path: self.device.key,
            state_dir: self.device.state_dir,
            gps,
            scanner,
            driver_socket: self.driver.socket.unwrap_or_else(|| PathBuf::from("/run/doorstep/driver.sock")),
            route_file: self.route.file,
            geofence,
            nearby_lookahead: self
                .geofence
                .nearby_lookahead
                .unwrap_or(crate::decide::DEFAULT_NEARBY_LOOKAHEAD),
            gate,
            trail: self.trail.validate()?,
        })
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Toml(format!(
                "cannot read {}: {e}; write one with `doorstep-agent --print-default-config > {}`",
                path.display(),
                path.display()
            ))
        })?;
        RawConfig::parse(&text).and_then(RawConfig::validate)
    }

    /// The outbox database.
    pub fn outbox_path(&self) -> PathBuf {
        self.state_dir.join("outbox.db")
    }

    /// The status file `doorstep-agent status` reads.
    pub fn status_path(&self) -> PathBuf {
        self.state_dir.join("status.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` parsed and validated.
    fn parse_and_validate(text: &str) -> Result<Config, ConfigError> {
        RawConfig::parse(text).and_then(RawConfig::validate)
    }

    /// The default config with each of `edits` (text, its replacement, the key the error
    /// must start with) is refused, naming the key.
    fn assert_each_edit_is_refused(edits: &[(&str, &str, &str)]) {
        for (from, to, key) in edits {
            let err = parse_and_validate(&DEFAULT_CONFIG.replace(from, to)).expect_err(to);
            assert!(err.to_string().starts_with(key), "{to}: {err}");
        }
    }

    #[test]
    fn the_default_config_parses_and_validates() {
        let config = parse_and_validate(DEFAULT_CONFIG).expect("default is valid");
        assert_eq!(config.gps.baud, 9600);
        assert!(config.scanner.is_none());
        assert_eq!(config.geofence.arrival_m, 150.0);
        assert!(config.uplink.is_none());
        assert_eq!(config.outbox, OutboxLimits::default(), "the documented budget is the built-in one");
        let smaller = DEFAULT_CONFIG.replace("max_bytes = 67108864 ", "max_bytes = 1048576 ");
        let config = parse_and_validate(&smaller).expect("valid");
        assert_eq!(config.outbox.max_bytes, 1_048_576);
    }

    #[test]
    fn the_uplink_section_takes_its_fleet_from_the_device() {
        let key = doorstep_proto::SigningKey::from_seed(&[1; 32]).expect("seed").public_key();
        let text =
            format!("{DEFAULT_CONFIG}\n[uplink]\nhost = \"127.0.0.1\"\nport = 1883\nhub_key = \"{key}\"\n");
        let config = parse_and_validate(&text).expect("valid");
        let uplink = config.uplink.expect("uplink");
        assert_eq!(uplink.fleet.as_str(), "my-fleet");
        let bad = text.replace("hub_key", "hub_kee");
        let err = parse_and_validate(&bad).expect_err("typo");
        assert!(err.to_string().starts_with("[uplink]"), "{err}");
    }

    #[test]
    fn typos_and_bad_values_name_the_key_and_the_fix() {
        let typo = DEFAULT_CONFIG.replace("arrival_m = 150", "arival_m = 150");
        let err = RawConfig::parse(&typo).expect_err("unknown key");
        assert!(err.to_string().contains("arival_m"), "{err}");
        let bad = DEFAULT_CONFIG.replace("id = \"van-001\"", "id = \"Van 1\"");
        let err = parse_and_validate(&bad).expect_err("bad id");
        assert!(err.to_string().starts_with("[device] id: invalid device id"), "{err}");
        let baud = DEFAULT_CONFIG.replace("baud = 9600\n\n[scanner]", "baud = 9601\n\n[scanner]");
        let err = parse_and_validate(&baud).expect_err("bad baud");
        assert!(err.to_string().contains("[gps] baud"), "{err}");
    }

    #[test]
    fn the_trail_section_sets_the_batches_and_refuses_what_cannot_be_one_signed_batch() {
        let config = parse_and_validate(DEFAULT_CONFIG).expect("default is valid");
        assert_eq!(config.trail, TrailConfig::default(), "the documented trail is the built-in one");
        let text = DEFAULT_CONFIG
            .replace("position_interval_s = 30", "position_interval_s = 10")
            .replace("batch_samples = 20", "batch_samples = 64")
            .replace("batch_max_age_s = 600", "batch_max_age_s = 300");
        let config = parse_and_validate(&text).expect("valid");
        assert_eq!(
            config.trail,
            TrailConfig { interval_ms: 10_000, batch_samples: 64, batch_max_age_ms: 300_000 }
        );
        assert_each_edit_is_refused(&[
            ("batch_samples = 20", "batch_samples = 0", "[trail] batch_samples"),
            ("batch_samples = 20", "batch_samples = 65", "[trail] batch_samples"),
            ("batch_max_age_s = 600", "batch_max_age_s = 0", "[trail] batch_max_age_s"),
            ("position_interval_s = 30", "position_interval_s = 100000", "[trail] position_interval_s"),
        ]);
    }

    #[test]
    fn the_live_section_sets_the_pace_and_names_a_bad_value() {
        let config = parse_and_validate(DEFAULT_CONFIG).expect("valid");
        assert_eq!(config.live, LiveConfig::default(), "the documented pace is the built-in one");
        let tuned = DEFAULT_CONFIG.replace("min_distance_m = 400", "min_distance_m = 250");
        let config = parse_and_validate(&tuned).expect("valid");
        assert_eq!(config.live.min_distance_m, 250.0);
        assert_each_edit_is_refused(&[
            ("min_distance_m = 400", "min_distance_m = 0", "[live] min_distance_m"),
            ("min_turn_deg = 45", "min_turn_deg = 270", "[live] min_turn_deg"),
            ("heartbeat_s = 300", "heartbeat_s = 1", "[live] heartbeat_s"),
        ]);
    }
}
