//! `doorstep-hub broker-acl`: the broker's access rules, written from the device registry.
//!
//! Signatures make a forged event worthless to the hub, but the broker is where a van's
//! credential would otherwise reach everything else: read every van's positions, forge
//! "offline" for another van, flood another van's topics, or publish acks and routes that
//! only the hub may send (an agent checks their signatures, but it still has to receive,
//! parse and drop them). This module writes a Mosquitto `acl_file` that keeps each client
//! to its own topics:
//!
//! - an active device publishes only `doorstep/v1/{fleet}/{device}/{evt|pos|blob|state}`
//!   (its last will included: Mosquitto checks a will against the ACL when it fires) and
//!   reads only its own `ack` and `route`;
//! - the hub's account reads every device's `evt`, `pos`, `blob` and `state`, plain or
//!   through a shared subscription (`$share/{group}/...`), and writes every device's `ack`
//!   and `route`;
//! - a revoked device gets no line at all, so it can neither publish nor receive.
//!
//! Mosquitto's acl_file checks publishes and deliveries, never subscriptions: any client
//! may subscribe to anything, and each message is checked against the reader's rules when
//! it would be delivered. That is why the hub's `read` lines cover its `$share/...`
//! filters, and why a hub group's name must be one no van can guess: a van that joins the
//! group takes its turn of the messages, which the broker then drops.
//!
//! Clients authenticate with TLS client certificates from the fleet CA, and Mosquitto
//! takes the certificate's common name as the user name (`use_identity_as_username`): a
//! device's CN is its device id. The hub stores no broker passwords, and revoking a
//! device here takes its topics away at the broker's next reload. See `docs/broker.md`.
//!
//! The rules are built by a pure function ([`Acl::from_registry`], [`Acl::render`]);
//! [`run`] only reads the registry and writes the file. It must never grant a device a
//! topic of another device, nor let an unrecognised client (no `user` line) do anything.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use doorstep_proto::topic::{Channel, Topic, all_devices};
use doorstep_proto::{DeviceId, FleetId};

use crate::config::Config;
use crate::store::{DeviceRecord, DeviceStatus, Store, StoreOptions};

/// The hub's broker account when `--hub-user` is not given: the common name of the hub's
/// client certificate, and the hub's default `mqtt.client_id`.
pub const DEFAULT_HUB_USER: &str = "doorstep-hub";

/// Longest accepted `--hub-user`: with `use_username_as_clientid` it is the hub's client
/// id, which the hub's own config bounds the same way (`mqtt.client_id`).
const MAX_HUB_USER_LEN: usize = 64;

/// The `mosquitto.conf` text, in a macro so that `--help` can include it at compile time.
macro_rules! mosquitto_conf {
    () => {
        "\
# Doorstep: every van and the hub hold a certificate from the fleet CA.
listener 8883
cafile /etc/mosquitto/certs/doorstep-ca.pem
certfile /etc/mosquitto/certs/broker.pem
keyfile /etc/mosquitto/certs/broker-key.pem
# No certificate from the fleet CA, no connection. Its CN is the user name in the ACL,
# and the client id too, so that no van can take over another van's session.
require_certificate true
use_identity_as_username true
use_username_as_clientid true
allow_anonymous false
acl_file /etc/mosquitto/doorstep.acl
# Optional: refuse revoked certificates at the TLS handshake as well.
# crlfile /etc/mosquitto/certs/doorstep-ca.crl
"
    };
}

/// The `mosquitto.conf` lines the generated ACL relies on (a file for
/// `/etc/mosquitto/conf.d/`), shown in `--help` and at the top of every generated file so
/// that the file explains itself on the broker host. Mosquitto reads `#` only at the start
/// of a line, so every comment here has a line of its own.
pub const MOSQUITTO_CONF: &str = mosquitto_conf!();

/// The long help of `doorstep-hub broker-acl`.
const LONG_HELP: &str = concat!(
    "\
Every client authenticates with a TLS client certificate signed by the fleet CA; its
common name (CN) is its user name in the ACL: a van's CN is its device id, the hub's is
--hub-user. mosquitto.conf (e.g. /etc/mosquitto/conf.d/doorstep.conf) needs:

",
    mosquitto_conf!(),
    "
Run again after every `device add` or `device revoke`, then reload the broker so it reads
the file again (SIGHUP re-reads acl_file; connected clients keep their connection and are
checked against the new rules from then on):

    doorstep-hub broker-acl --out /etc/mosquitto/doorstep.acl && systemctl reload mosquitto

Hubs in a shared subscription group: give the group a name no van can guess. Mosquitto's
acl_file does not check subscriptions, so a van that joins the group takes its turn of the
messages, which the broker then drops at the ACL check. See docs/broker.md."
);

/// Options of `doorstep-hub broker-acl`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub struct BrokerAclArgs {
    /// Where to write the ACL: written beside it and renamed over it, so the broker never
    /// reads half a file. Standard output when absent.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Hub database; defaults to `hub.database` from the configuration.
    #[arg(long, value_name = "FILE")]
    pub database: Option<PathBuf>,
    /// The hub's broker user: the CN of its client certificate. Repeat it for each hub of
    /// a shared subscription group (each needs its own certificate, as
    /// `use_username_as_clientid` makes the CN its client id).
    #[arg(long = "hub-user", value_name = "CN", default_value = DEFAULT_HUB_USER)]
    pub hub_users: Vec<String>,
}

/// Why the access rules cannot be written as asked.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// A `--hub-user` that Mosquitto's ACL file cannot hold as one user name.
    #[error(
        "--hub-user {0:?} is not a usable broker user: 1 to {MAX_HUB_USER_LEN} letters, digits, \
         '.', '_', '-' or '@', starting with a letter or digit (it is the CN of the hub's certificate)"
    )]
    BadHubUser(String),
    /// A `--hub-user` that is also a registered device: that device would get the hub's rights.
    #[error(
        "--hub-user {0} is also a registered device id; give the hub's certificate another CN \
         (a device must never hold the hub's rights)"
    )]
    HubUserIsDevice(String),
}

/// Which way a channel flows, which decides who may write and who may read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Published by the device, read by the hub.
    FromDevice,
    /// Published by the hub, read by the device.
    ToDevice,
}

/// Every channel's direction. Exhaustive on purpose: a new channel does not compile until
/// someone decides who may publish on it.
fn direction(channel: Channel) -> Direction {
    match channel {
        // The agent's uplink publishes evt, pos and blob, and state both itself and as
        // its last will (agent/src/uplink.rs).
        Channel::Evt | Channel::Pos | Channel::Blob | Channel::State => Direction::FromDevice,
        Channel::Ack | Channel::Route => Direction::ToDevice,
    }
}

/// The channels flowing `way`, in `Channel::ALL` order.
fn channels(way: Direction) -> impl Iterator<Item = Channel> {
    Channel::ALL.into_iter().filter(move |c| direction(*c) == way)
}

/// The access rules for one registry: who may use which topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    hub_users: Vec<String>,
    /// Active devices, by fleet and id.
    active: Vec<(FleetId, DeviceId)>,
    /// Revoked devices: named in a comment, granted nothing.
    revoked: Vec<(FleetId, DeviceId)>,
}

impl Acl {
    /// Builds the rules for `devices` (as `Store::devices` lists them) and the hub's
    /// broker users. Refuses a hub user that is malformed or is also a device id.
    pub fn from_registry(devices: &[DeviceRecord], hub_users: &[String]) -> Result<Self, AclError> {
        let mut users: Vec<String> = Vec::new();
        for user in hub_users {
            if !valid_user(user) {
                return Err(AclError::BadHubUser(user.clone()));
            }
            if devices.iter().any(|d| d.device.as_str() == user) {
                return Err(AclError::HubUserIsDevice(user.clone()));
            }
            if !users.contains(user) {
                users.push(user.clone());
            }
        }
        let mut active = Vec::new();
        let mut revoked = Vec::new();
        for d in devices {
            let entry = (d.fleet.clone(), d.device.clone());
            match d.status {
                DeviceStatus::Active => active.push(entry),
                DeviceStatus::Revoked => revoked.push(entry),
            }
        }
        active.sort();
        revoked.sort();
        Ok(Self { hub_users: users, active, revoked })
    }

    /// How many devices may use the broker.
    pub fn active_devices(&self) -> usize {
        self.active.len()
    }

    /// How many revoked devices were left out.
    pub fn revoked_devices(&self) -> usize {
        self.revoked.len()
    }

    /// The ACL file's text. Deterministic (no dates), so two runs on the same registry
    /// give the same bytes and a diff shows exactly what a registry change did.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# Mosquitto ACL for Doorstep, written by `doorstep-hub broker-acl` from the hub's device\n\
             # registry. Do not edit: run it again after `doorstep-hub device add` or `device revoke`,\n\
             # then reload the broker (`systemctl reload mosquitto`; SIGHUP re-reads acl_file).\n\
             #\n\
             # Clients log in with TLS client certificates from the fleet CA; the certificate's CN\n\
             # is the user name below (a van's CN is its device id). mosquitto.conf:\n\
             #\n",
        );
        for line in MOSQUITTO_CONF.lines() {
            let _ = writeln!(out, "#   {line}");
        }
        let _ = writeln!(
            out,
            "#\n# {} active device(s); {} revoked device(s) get no line and so no access.\n\
             # A client with no `user` line below may do nothing. Hubs in a shared subscription\n\
             # group: name the group so that no van can guess it (see docs/broker.md).",
            self.active.len(),
            self.revoked.len()
        );
        for user in &self.hub_users {
            let _ =
                writeln!(out, "\n# The hub: reads what every van sends, writes every van's acks and routes.");
            let _ = writeln!(out, "user {user}");
            for channel in channels(Direction::FromDevice) {
                let _ = writeln!(out, "topic read {}", all_devices(channel));
            }
            for channel in channels(Direction::ToDevice) {
                let _ = writeln!(out, "topic write {}", all_devices(channel));
            }
        }
        for (fleet, device) in &self.active {
            let _ = writeln!(out, "\n# {fleet}/{device}\nuser {device}");
            for channel in channels(Direction::FromDevice) {
                let _ = writeln!(out, "topic write {}", Topic::new(fleet.clone(), device.clone(), channel));
            }
            for channel in channels(Direction::ToDevice) {
                let _ = writeln!(out, "topic read {}", Topic::new(fleet.clone(), device.clone(), channel));
            }
        }
        if !self.revoked.is_empty() {
            out.push_str("\n# Revoked, no access:");
            for (fleet, device) in &self.revoked {
                let _ = write!(out, " {fleet}/{device}");
            }
            out.push('\n');
        }
        out
    }
}

/// A user name the ACL file holds as one token, with no room for a comment or a second
/// `user` line to hide in it.
fn valid_user(user: &str) -> bool {
    let bytes = user.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_HUB_USER_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// Reads the registry and writes the ACL to `--out` (atomically) or standard output.
pub fn run(config: &Path, args: BrokerAclArgs) -> anyhow::Result<()> {
    let database = match args.database {
        Some(db) => db,
        None => {
            Config::load(config)
                .with_context(|| {
                    format!("loading {} (or name the database with --database)", config.display())
                })?
                .hub
                .database
        }
    };
    // Opening creates a missing database: an empty registry would lock every van out.
    if crate::store::database_url(&database).ok().flatten().is_none() && !database.exists() {
        anyhow::bail!(
            "the hub database {} does not exist; register devices with `doorstep-hub device add` \
             first, or name the right file with --database",
            crate::store::database_label(&database)
        );
    }
    let store = Store::open(&database, StoreOptions::default())
        .with_context(|| format!("opening the hub database {}", crate::store::database_label(&database)))?;
    let devices = store.devices().with_context(|| {
        format!("reading the device registry in {}", crate::store::database_label(&database))
    })?;
    drop(store);
    let acl = Acl::from_registry(&devices, &args.hub_users)?;
    let text = acl.render();
    let mut err = std::io::stderr().lock();
    if acl.active_devices() == 0 {
        writeln!(
            err,
            "warning: no active device in {}: only the hub may use the broker",
            crate::store::database_label(&database)
        )?;
    }
    match &args.out {
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
        Some(path) => {
            write_atomically(path, &text).with_context(|| format!("writing {}", path.display()))?;
            writeln!(
                err,
                "wrote {}: {} device(s), {} revoked left out; reload the broker to apply it: \
                 `systemctl reload mosquitto` (or `kill -HUP` its pid: SIGHUP re-reads acl_file)",
                path.display(),
                acl.active_devices(),
                acl.revoked_devices()
            )?;
        }
    }
    Ok(())
}

/// Writes `text` to a file beside `path` and renames it over `path`: a broker reloading
/// meanwhile reads the old rules or the new ones, never a truncated file that would lock
/// vans out. Keeps an existing file's mode; a new file is 0644, as the broker runs as its
/// own user and must read it.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "--out must name a file"))?;
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        // Set explicitly: a umask of 077 would otherwise hide the file from the broker.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename is durable only once the directory is.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use doorstep_proto::SigningKey;

    fn record(fleet: &str, device: &str, status: DeviceStatus) -> DeviceRecord {
        let key = SigningKey::from_seed(&[7; 32]).expect("key").public_key();
        DeviceRecord {
            fleet: FleetId::new(fleet).expect("fleet"),
            device: DeviceId::new(device).expect("device"),
            key,
            key_id: key.key_id(),
            status,
            added_ms: 0,
        }
    }

    fn registry() -> Vec<DeviceRecord> {
        vec![
            record("acme", "van-2", DeviceStatus::Active),
            record("acme", "van-1", DeviceStatus::Active),
            record("acme", "van-3", DeviceStatus::Revoked),
            record("bolt", "truck-9", DeviceStatus::Active),
        ]
    }

    /// The ACL's `(user, permission, topic)` rules, comments skipped.
    fn rules(text: &str) -> Vec<(String, String, String)> {
        let mut user = String::new();
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["user", name] => user = (*name).to_owned(),
                ["topic", access, topic] => {
                    out.push((user.clone(), (*access).to_owned(), (*topic).to_owned()))
                }
                _ => panic!("unexpected ACL line {line:?}"),
            }
        }
        out
    }

    fn granted(text: &str, user: &str) -> Vec<String> {
        rules(text).into_iter().filter(|(u, _, _)| u == user).map(|(_, a, t)| format!("{a} {t}")).collect()
    }

    #[test]
    fn a_device_writes_its_four_uplink_topics_and_reads_its_ack_and_route() {
        let text = Acl::from_registry(&registry(), &[DEFAULT_HUB_USER.into()]).expect("acl").render();
        assert_eq!(
            granted(&text, "van-1"),
            [
                "write doorstep/v1/acme/van-1/evt",
                "write doorstep/v1/acme/van-1/pos",
                "write doorstep/v1/acme/van-1/blob",
                "write doorstep/v1/acme/van-1/state",
                "read doorstep/v1/acme/van-1/ack",
                "read doorstep/v1/acme/van-1/route",
            ]
        );
        assert_eq!(granted(&text, "truck-9")[0], "write doorstep/v1/bolt/truck-9/evt", "its own fleet");
    }

    #[test]
    fn the_hub_reads_every_uplink_channel_and_writes_every_ack_and_route() {
        let text = Acl::from_registry(&registry(), &["hub-a".into(), "hub-b".into()]).expect("acl").render();
        let expected = [
            "read doorstep/v1/+/+/evt",
            "read doorstep/v1/+/+/pos",
            "read doorstep/v1/+/+/blob",
            "read doorstep/v1/+/+/state",
            "write doorstep/v1/+/+/ack",
            "write doorstep/v1/+/+/route",
        ];
        assert_eq!(granted(&text, "hub-a"), expected);
        assert_eq!(granted(&text, "hub-b"), expected);
    }

    #[test]
    fn a_revoked_device_and_anonymous_clients_get_no_rule_at_all() {
        let text = Acl::from_registry(&registry(), &[DEFAULT_HUB_USER.into()]).expect("acl").render();
        assert!(granted(&text, "van-3").is_empty());
        assert!(!text.lines().any(|l| l == "user van-3"));
        assert!(granted(&text, "").is_empty(), "no rule before the first user line");
        assert!(text.contains("# Revoked, no access: acme/van-3\n"));
        // Only the hub's rules have wildcards; no device may read another's topics.
        for (user, _, topic) in rules(&text) {
            assert_eq!(
                topic.contains('+') || topic.contains('#'),
                user == DEFAULT_HUB_USER,
                "{user} {topic}"
            );
            if user != DEFAULT_HUB_USER {
                assert!(topic.starts_with("doorstep/v1/") && topic.contains(&format!("/{user}/")));
            }
        }
    }

    #[test]
    fn every_channel_is_written_by_exactly_one_side() {
        for channel in Channel::ALL {
            let from_device = channels(Direction::FromDevice).any(|c| c == channel);
            let to_device = channels(Direction::ToDevice).any(|c| c == channel);
            assert!(from_device != to_device, "{channel:?}");
        }
    }

    #[test]
    fn the_same_registry_gives_the_same_bytes_in_any_order() {
        let mut shuffled = registry();
        shuffled.reverse();
        let hub = [DEFAULT_HUB_USER.to_owned()];
        assert_eq!(
            Acl::from_registry(&registry(), &hub).expect("acl").render(),
            Acl::from_registry(&shuffled, &hub).expect("acl").render()
        );
    }

    #[test]
    fn a_hub_user_that_could_smuggle_rules_or_is_a_device_is_refused() {
        for bad in ["", "hub\nuser van-1", "hub #x", "#hub", "a b", &"h".repeat(65)] {
            assert!(
                matches!(Acl::from_registry(&registry(), &[bad.to_owned()]), Err(AclError::BadHubUser(_))),
                "{bad:?}"
            );
        }
        let err = Acl::from_registry(&registry(), &["van-1".into()]).expect_err("a device");
        assert!(matches!(err, AclError::HubUserIsDevice(_)));
        assert!(err.to_string().contains("another CN"), "{err}");
        assert!(Acl::from_registry(&registry(), &["hub@ops.example".into()]).is_ok());
    }

    #[test]
    fn the_file_is_replaced_whole_and_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("doorstep.acl");
        write_atomically(&path, "old\n").expect("write");
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o644);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        write_atomically(&path, "new\n").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new\n");
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o640);
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, ["doorstep.acl"], "no temporary file left behind");
    }
}
