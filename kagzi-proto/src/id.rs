//! Ids: UUID newtypes, written on the wire as plain UUID strings.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The milliseconds [`v7_at`] made ids in lately, each with the sequence of its last id:
/// ids for an earlier millisecond may be asked for between two of a later one (concurrent
/// callers read the clock a little apart).
static RECENT: Mutex<VecDeque<(u64, u64)>> = Mutex::new(VecDeque::new());

/// How many milliseconds [`RECENT`] remembers.
const RECENT_MILLIS: usize = 64;

/// The sequence bits of a UUID v7 (`rand_a` and the top 30 bits of `rand_b`).
const SEQUENCE_BITS: u32 = 42;

/// A UUID v7 whose timestamp is the millisecond of `time` (before 1970: 0), with a
/// sequence that starts at a random value in each millisecond and counts up within it, so
/// that ids of one millisecond keep the order they were made in (RFC 9562, method 1).
fn v7_at(time: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(time.timestamp_millis()).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    let random = Uuid::new_v4().as_u128();
    let sequence = {
        let mut recent = RECENT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match recent.iter_mut().find(|(ms, _)| *ms == millis) {
            Some((_, last)) if *last + 1 < (1 << SEQUENCE_BITS) => {
                *last += 1;
                *last
            }
            _ => {
                // A fresh millisecond starts low enough in its range to count up a long way.
                let first = (random as u64) & ((1 << (SEQUENCE_BITS - 1)) - 1);
                recent.retain(|(ms, _)| *ms != millis);
                if recent.len() == RECENT_MILLIS {
                    recent.pop_front();
                }
                recent.push_back((millis, first));
                first
            }
        }
    };
    let value = (u128::from(millis) << 80)
        | (0x7 << 76)
        | (u128::from(sequence >> 30) << 64)
        | (0b10 << 62)
        | (u128::from(sequence & 0x3FFF_FFFF) << 32)
        | (random >> 96);
    Uuid::from_u128(value)
}

/// Declares a UUID newtype id with the conversions every id needs.
macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
        #[cfg_attr(
            feature = "utoipa",
            derive(utoipa::ToSchema),
            schema(value_type = String, format = Uuid, example = "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a")
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered (UUID v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// A new UUID v7 id stamped with the millisecond of `time`: ids made later sort
            /// after, and ids made in one millisecond sort in the order they were made.
            pub fn at(time: DateTime<Utc>) -> Self {
                Self(v7_at(time))
            }

            /// The underlying UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

id_type!(
    /// Identifies one workflow run.
    RunId
);
id_type!(
    /// Identifies one registered worker process.
    WorkerId
);
id_type!(
    /// Identifies one schedule.
    ScheduleId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_parses_displays_and_serializes_as_a_plain_uuid()
    -> Result<(), Box<dyn std::error::Error>> {
        let id: RunId = "0190b5a0-0000-7000-8000-000000000001".parse()?;
        assert_eq!(id.to_string(), "0190b5a0-0000-7000-8000-000000000001");
        assert_eq!(
            serde_json::to_string(&id)?,
            "\"0190b5a0-0000-7000-8000-000000000001\""
        );
        assert!("not-a-uuid".parse::<RunId>().is_err());
        assert_eq!(
            Uuid::from(ScheduleId::from(id.as_uuid())),
            id.as_uuid(),
            "ids convert to and from their UUID"
        );
        Ok(())
    }

    #[test]
    fn ids_made_at_a_time_carry_it_and_keep_their_order() {
        let at: DateTime<Utc> = "2026-11-26T09:00:00.123Z".parse().expect("a time");
        let ids: Vec<RunId> = (0..1000).map(|_| RunId::at(at)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in the order made");
        let first = ids[0].as_uuid();
        assert_eq!(first.get_version_num(), 7);
        assert_eq!(first.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = first.get_timestamp().expect("a v7 timestamp").to_unix();
        assert_eq!((secs, nanos), (1_795_683_600, 123_000_000));
        let later = RunId::at(at + chrono::Duration::milliseconds(1));
        let earlier = RunId::at(at - chrono::Duration::milliseconds(1));
        assert!(earlier < ids[0] && ids[999] < later);
    }
}
