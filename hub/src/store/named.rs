//! Names kept in text columns, read back as the types they name.
//!
//! The notification outbox keys each row by channel (`sms`) and notice (`delivered`,
//! `delayed:2026-08-09`). Several hubs share one database, and during a rolling upgrade a
//! newer hub may write a channel or notice an older one does not know yet. The older hub
//! must still read that row, and skip it with a reason an operator sees, rather than fail
//! the whole batch of due rows it came in. So such a column reads as [`Named::Known`]
//! when this hub knows the name and as [`Named::Unknown`] (the text as stored) when not:
//! typed where it can be, never a lost row.

use std::borrow::Cow;
use std::fmt;

use rusqlite::types::ValueRef;

use super::StoreError;
use super::db::{FromDb, ToValue, Value};
use crate::model::Notice;
use crate::store::ContactChannel;

/// What a text column can name.
pub trait StoredName: Sized {
    /// The value a stored name means, or `None` for one this hub does not know.
    fn from_name(name: &str) -> Option<Self>;
    /// The name as stored.
    fn name(&self) -> Cow<'_, str>;
}

impl StoredName for ContactChannel {
    fn from_name(name: &str) -> Option<Self> {
        ContactChannel::ALL.into_iter().find(|c| c.as_str() == name)
    }
    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.as_str())
    }
}

impl StoredName for Notice {
    fn from_name(name: &str) -> Option<Self> {
        Notice::parse(name)
    }
    fn name(&self) -> Cow<'_, str> {
        Cow::Owned(self.key())
    }
}

/// A closed set of names kept in a text column (a row's status, a log entry's outcome):
/// the enum, each variant's stored name (`as_str`), every variant (`ALL`), and what
/// [`Named`] and the statements need to read and bind it.
macro_rules! stored_names {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$doc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$doc])* $variant,)+
        }

        impl $name {
            /// Every value.
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            /// The name as stored.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl $crate::store::StoredName for $name {
            fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == name)
            }
            fn name(&self) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed(self.as_str())
            }
        }

        impl $crate::store::ToValue for $name {
            fn to_value(&self) -> $crate::store::Value<'_> {
                $crate::store::Value::Text(std::borrow::Cow::Borrowed(self.as_str()))
            }
        }
    };
}
pub(crate) use stored_names;

/// A stored name: the value it means, or the text this hub does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named<T> {
    /// A name this hub knows.
    Known(T),
    /// A name this hub does not know, as stored.
    Unknown(String),
}

impl<T: StoredName> Named<T> {
    /// Reads a stored name.
    pub fn parse(name: &str) -> Self {
        T::from_name(name).map_or_else(|| Named::Unknown(name.to_owned()), Named::Known)
    }

    /// The value, when this hub knows the name.
    pub fn known(&self) -> Option<&T> {
        match self {
            Named::Known(value) => Some(value),
            Named::Unknown(_) => None,
        }
    }

    /// The name as stored.
    pub fn name(&self) -> Cow<'_, str> {
        match self {
            Named::Known(value) => value.name(),
            Named::Unknown(text) => Cow::Borrowed(text),
        }
    }
}

impl<T> From<T> for Named<T> {
    fn from(value: T) -> Self {
        Named::Known(value)
    }
}

/// Reads a stored name ([`Named::parse`]).
impl<T: StoredName> From<&str> for Named<T> {
    fn from(name: &str) -> Self {
        Named::parse(name)
    }
}

impl<T: StoredName> fmt::Display for Named<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl<T: StoredName> serde::Serialize for Named<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name())
    }
}

impl<T: StoredName> FromDb for Named<T> {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, rusqlite::types::FromSqlError> {
        Ok(Named::parse(value.as_str()?))
    }
    fn from_postgres(row: &tokio_postgres::Row, idx: usize) -> Result<Self, StoreError> {
        Ok(Named::parse(&String::from_postgres(row, idx)?))
    }
}

impl<T: StoredName> ToValue for Named<T> {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self.name())
    }
}

/// Compares the name as stored (`row.channel == "sms"`).
impl<T: StoredName> PartialEq<&str> for Named<T> {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Milestone, Update};

    #[test]
    fn every_name_this_hub_writes_reads_back_as_what_it_names() {
        for channel in ContactChannel::ALL {
            assert_eq!(Named::<ContactChannel>::parse(channel.as_str()), Named::Known(channel));
        }
        let notices = [
            Notice::Milestone(Milestone::Delivered),
            Notice::delayed("2026-08-09"),
            Notice::still_on_its_way(2),
        ];
        for notice in notices {
            let named = Named::<Notice>::parse(&notice.key());
            assert_eq!(named.name(), notice.key());
            assert_eq!(named, Named::Known(notice));
        }
        assert!(matches!(
            Named::<Notice>::parse("delayed:x"),
            Named::Known(Notice::Update { update: Update::Delayed, .. })
        ));
        // The closed sets stored_names! declares: each name once, read back as itself.
        fn closed<T: StoredName + Copy + PartialEq + fmt::Debug>(all: &[T]) {
            let mut names: Vec<String> = all.iter().map(|v| v.name().into_owned()).collect();
            for v in all {
                assert_eq!(Named::<T>::parse(&v.name()), Named::Known(*v));
            }
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), all.len(), "a stored name used twice");
        }
        closed(crate::store::NoticeLogged::ALL);
        closed(crate::store::SinkLogged::ALL);
        closed(crate::store::SinkStatus::ALL);
    }

    #[test]
    fn a_name_from_a_newer_hub_is_kept_as_stored_not_refused() {
        let channel = Named::<ContactChannel>::parse("carrier_pigeon");
        assert_eq!(channel, Named::Unknown("carrier_pigeon".to_owned()));
        assert_eq!(channel.known(), None);
        assert_eq!(channel.to_string(), "carrier_pigeon");
        assert_eq!(serde_json::to_string(&channel).expect("json"), "\"carrier_pigeon\"");
        assert_eq!(Named::<Notice>::parse("signed_for_by_neighbour").name(), "signed_for_by_neighbour");
    }
}
