//! Validated identities: fleets, devices, routes, stops, tracking numbers and barcodes.
//!
//! Every identity that crosses the wire or lands in a topic is checked when it is built
//! and again when it is decoded (`serde(try_from)`), so a malformed id can never reach a
//! store or a topic string. The rules are deliberately narrow: an id that needs quoting
//! in a shell, a SQL log or an MQTT topic is refused at the edge.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct IdError {
    /// Which kind of identity was being built ("device id", "tracking number", ...).
    pub kind: &'static str,
    /// The refused input, truncated to 80 characters for the log line.
    pub value: String,
    /// The rule it broke, phrased so that the operator knows what to fix.
    pub rule: &'static str,
}

impl IdError {
    fn new(kind: &'static str, value: &str, rule: &'static str) -> Self {
        Self { kind, value: value.chars().take(80).collect(), rule }
    }
}

macro_rules! identity {
    ($(#[$meta:meta])* $name:ident, $kind:literal, $check:path) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                match $check(&value) {
                    Ok(()) => Ok(Self(value)),
                    Err(rule) => Err(IdError::new($kind, &value, rule)),
                }
            }

            /// The identity as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

/// Longest fleet or device id: 64 characters, so a topic stays well under MQTT limits.
pub const MAX_NAME_LEN: usize = 64;
/// Longest stop or route id.
pub const MAX_STOP_ID_LEN: usize = 64;
/// Shortest tracking number accepted; shorter strings are scanner noise, not parcels.
pub const MIN_TRACKING_LEN: usize = 4;
/// Longest tracking number accepted. Carriers use up to about 40 alphanumerics
/// (USPS IMpb is 34 digits with its routing prefix).
pub const MAX_TRACKING_LEN: usize = 40;
/// Longest raw barcode kept as evidence (GS1-128 labels run to about 48 characters).
pub const MAX_BARCODE_LEN: usize = 80;

/// `[a-z0-9][a-z0-9-]{0,63}`: safe in topics, file names and logs.
fn check_name(value: &str) -> Result<(), &'static str> {
    let bytes = value.as_bytes();
    match bytes.first() {
        None => return Err("must not be empty"),
        Some(b) if !(b.is_ascii_lowercase() || b.is_ascii_digit()) => {
            return Err("must start with a lowercase letter or a digit");
        }
        _ => {}
    }
    if bytes.len() > MAX_NAME_LEN {
        return Err("must be at most 64 characters");
    }
    if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-') {
        return Err("may contain only a-z, 0-9 and '-'");
    }
    Ok(())
}

/// `[A-Za-z0-9._-]{1,64}`: what order systems and route planners use for stop and route ids.
fn check_stop(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.len() > MAX_STOP_ID_LEN {
        return Err("must be at most 64 characters");
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err("may contain only A-Z, a-z, 0-9, '.', '_' and '-'");
    }
    Ok(())
}

/// Upper-case letters and digits, 4 to 40 long: every major carrier's format fits.
fn check_tracking(value: &str) -> Result<(), &'static str> {
    if value.len() < MIN_TRACKING_LEN || value.len() > MAX_TRACKING_LEN {
        return Err("must be 4 to 40 characters long");
    }
    if !value.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
        return Err("may contain only A-Z and 0-9 (normalize with TrackingNumber::normalize)");
    }
    Ok(())
}

/// Printable ASCII without spaces at the ends, 1 to 80 long.
fn check_barcode(value: &str) -> Result<(), &'static str> {
    if value.is_empty() || value.len() > MAX_BARCODE_LEN {
        return Err("must be 1 to 80 characters long");
    }
    if !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err("may contain only printable ASCII");
    }
    if value.starts_with(' ') || value.ends_with(' ') {
        return Err("must not start or end with a space");
    }
    Ok(())
}

identity!(
    /// A fleet: one customer of Doorstep, owning devices and routes.
    FleetId, "fleet id", check_name
);
identity!(
    /// One in-cab unit. Its events are numbered and signed per device.
    DeviceId, "device id", check_name
);
identity!(
    /// One route: a van's ordered list of stops for a shift.
    RouteId, "route id", check_stop
);
identity!(
    /// One stop of a route: an address where parcels are handed over.
    StopId, "stop id", check_stop
);
identity!(
    /// A carrier tracking number, normalized to upper-case alphanumerics.
    TrackingNumber, "tracking number", check_tracking
);
identity!(
    /// A raw barcode as the scanner read it, kept as evidence when it matches nothing.
    Barcode, "barcode", check_barcode
);

impl TrackingNumber {
    /// Normalizes what people and scanners produce ("1z 999-aa1 0123456784") into
    /// the canonical form, then validates it.
    pub fn normalize(raw: &str) -> Result<Self, IdError> {
        let cleaned: String =
            raw.chars().filter(|c| !matches!(c, ' ' | '-' | '\t')).map(|c| c.to_ascii_uppercase()).collect();
        Self::new(cleaned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_follow_the_topic_safe_rule() {
        assert!(DeviceId::new("van-17").is_ok());
        assert!(DeviceId::new("0").is_ok());
        assert!(DeviceId::new("a".repeat(64)).is_ok());
        assert!(DeviceId::new("a".repeat(65)).is_err());
        assert!(DeviceId::new("").is_err());
        assert!(DeviceId::new("-van").is_err());
        assert!(DeviceId::new("Van").is_err());
        assert!(DeviceId::new("van/1").is_err());
        assert!(DeviceId::new("van+").is_err());
        assert!(DeviceId::new("van#").is_err());
    }

    #[test]
    fn tracking_numbers_are_normalized_from_what_drivers_type() {
        let t = TrackingNumber::normalize("1z 999-aa1 0123456784").expect("valid");
        assert_eq!(t.as_str(), "1Z999AA10123456784");
        assert!(TrackingNumber::new("1z999").is_err());
        assert!(TrackingNumber::new("ABC").is_err());
        assert!(TrackingNumber::new("A".repeat(41)).is_err());
    }

    #[test]
    fn decoding_a_bad_id_is_an_error_not_a_panic() {
        let err = serde_json::from_str::<DeviceId>("\"Not Valid\"").expect_err("must fail");
        assert!(err.to_string().contains("invalid device id"), "{err}");
    }

    #[test]
    fn id_errors_say_what_to_fix() {
        let err = StopId::new("stop 1").expect_err("space");
        assert_eq!(
            err.to_string(),
            "invalid stop id \"stop 1\": may contain only A-Z, a-z, 0-9, '.', '_' and '-'"
        );
    }
}
