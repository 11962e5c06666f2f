//! Fixed-size byte strings (hashes, ids) that are compact on the wire and readable in JSON.
//!
//! In postcard a `[u8; N]` is N raw bytes with no length prefix; in JSON (golden vectors,
//! logs, the hub's API) it is a lowercase hex string.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `N` bytes, hex in human-readable formats.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HexBytes<const N: usize>(pub [u8; N]);

impl<const N: usize> HexBytes<N> {
    /// Parses lowercase or uppercase hex of exactly `2 * N` digits.
    pub fn from_hex(text: &str) -> Result<Self, hex::FromHexError> {
        let mut out = [0u8; N];
        hex::decode_to_slice(text, &mut out)?;
        Ok(Self(out))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl<const N: usize> fmt::Display for HexBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl<const N: usize> fmt::Debug for HexBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl<const N: usize> Serialize for HexBytes<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_hex())
        } else {
            // A tuple of u8: exactly N bytes in postcard.
            use serde::ser::SerializeTuple;
            let mut tuple = serializer.serialize_tuple(N)?;
            for byte in &self.0 {
                tuple.serialize_element(byte)?;
            }
            tuple.end()
        }
    }
}

impl<'de, const N: usize> Deserialize<'de> for HexBytes<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            Self::from_hex(&text).map_err(|e| D::Error::custom(format!("expected {} hex digits: {e}", 2 * N)))
        } else {
            struct Visitor<const M: usize>;
            impl<'de, const M: usize> serde::de::Visitor<'de> for Visitor<M> {
                type Value = HexBytes<M>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    write!(f, "{M} bytes")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Self::Value, A::Error> {
                    let mut out = [0u8; M];
                    for (i, slot) in out.iter_mut().enumerate() {
                        *slot = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(i, &self))?;
                    }
                    Ok(HexBytes(out))
                }
            }
            deserializer.deserialize_tuple(N, Visitor::<N>)
        }
    }
}
