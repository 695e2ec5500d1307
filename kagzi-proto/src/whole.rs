//! Serde helpers for integer fields: JSON Schema counts `7.0` as an integer, so the protocol
//! accepts a whole number written with a fraction of zero, and refuses anything out of the
//! field's documented range (at most `i32::MAX` for what the server stores as a 32-bit
//! integer). Use them with `#[serde(deserialize_with = "kagzi_proto::whole::u31")]`.

use serde::de::{Deserialize, Deserializer, Error};

fn number<'de, D: Deserializer<'de>>(d: D, max: u64) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    let value = match (n.as_u64(), n.as_f64()) {
        (Some(v), _) => v,
        // A whole float in range converts exactly.
        (None, Some(f)) if f.fract() == 0.0 && f >= 0.0 && f <= max as f64 => f as u64,
        _ => {
            return Err(D::Error::custom(format!(
                "invalid value: {n}, expected a whole number from 0 to {max}"
            )));
        }
    };
    if value > max {
        return Err(D::Error::custom(format!(
            "invalid value: {value}, expected a whole number from 0 to {max}"
        )));
    }
    Ok(value)
}

/// A `u32` from 0 to `i32::MAX`.
///
/// # Errors
/// For anything but a whole number in that range.
pub fn u31<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    // The bound keeps the value in range.
    number(d, i32::MAX as u64).map(|v| v as u32)
}

/// An optional `u32` from 0 to `i32::MAX` (with `#[serde(default)]`).
///
/// # Errors
/// For anything but `null` or a whole number in that range.
pub fn opt_u31<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<serde_json::Number>::deserialize(d)?
        .map(|n| u31(n).map_err(D::Error::custom))
        .transpose()
}

/// A `u64` from 0 to `i64::MAX`.
///
/// # Errors
/// For anything but a whole number in that range.
pub fn u63<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    number(d, i64::MAX as u64)
}

/// An optional `u64` from 0 to `i64::MAX` (with `#[serde(default)]`).
///
/// # Errors
/// For anything but `null` or a whole number in that range.
pub fn opt_u63<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<serde_json::Number>::deserialize(d)?
        .map(|n| u63(n).map_err(D::Error::custom))
        .transpose()
}

/// Tells a field set to `null` (`Some(None)`) from an absent one (`None`, by
/// `#[serde(default)]`), for changes where `null` removes a value.
///
/// # Errors
/// When the value is neither `null` nor a `T`.
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Counts {
        #[serde(deserialize_with = "super::u31")]
        small: u32,
        #[serde(default, deserialize_with = "super::opt_u63")]
        large: Option<u64>,
    }

    #[test]
    fn whole_numbers_with_a_zero_fraction_are_accepted_and_the_range_is_kept() {
        let counts: Counts =
            serde_json::from_str(r#"{"small": 7.0, "large": 9}"#).expect("whole numbers");
        assert_eq!((counts.small, counts.large), (7, Some(9)));
        let absent: Counts = serde_json::from_str(r#"{"small": 0}"#).expect("large is optional");
        assert_eq!(absent.large, None);
        for bad in [
            r#"{"small": 2147483648}"#,
            r#"{"small": -1}"#,
            r#"{"small": 1.5}"#,
            r#"{"small": 1, "large": 9223372036854775808}"#,
        ] {
            let error = serde_json::from_str::<Counts>(bad).expect_err(bad);
            assert!(error.to_string().contains("expected"), "{error}");
        }
    }
}
