//! Durations and sizes as people write them in the config, bundle manifests and flags: the one
//! place that reads `250ms`, `1.5s`, `10m`, `2h` and `4096`, `64Ki`, `1Mi`, `2Gi`, with the
//! serde helpers every such field uses (so that each error names the field and says what a
//! value looks like).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Why a size or a duration could not be read; the message quotes what was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{0:?} is not a size (bytes, or a number with Ki, Mi or Gi)")]
    NotASize(String),
    #[error("{0:?} needs a unit: ms, s, m or h (e.g. 5s)")]
    NoUnit(String),
    #[error("{written:?}: unknown unit {unit:?} (use ms, s, m or h)")]
    UnknownUnit { written: String, unit: String },
    #[error("{0:?} is not a duration (e.g. 500ms, 5s, 1m)")]
    NotADuration(String),
    #[error("{0:?} is out of range")]
    OutOfRange(String),
    #[error("{0:?} must be more than zero")]
    Zero(String),
}

/// A size in bytes, written as a number or with a binary suffix (`64Ki`, `1Mi`, `2Gi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, UnitError> {
        let s = s.trim();
        let (digits, mult) = match s {
            _ if s.ends_with("Ki") => (&s[..s.len() - 2], 1u64 << 10),
            _ if s.ends_with("Mi") => (&s[..s.len() - 2], 1 << 20),
            _ if s.ends_with("Gi") => (&s[..s.len() - 2], 1 << 30),
            _ => (s, 1),
        };
        digits
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .map(ByteSize)
            .ok_or_else(|| UnitError::NotASize(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes, or a number with Ki, Mi or Gi")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a duration as people write one: a number (decimals allowed) and a unit, `ms`, `s`,
/// `m` or `h`: `250ms`, `1.5s`, `10m`. Zero is allowed (some thresholds mean "everything").
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(UnitError::NoUnit(s.to_string())),
        _ => {
            return Err(UnitError::UnknownUnit {
                written: s.to_string(),
                unit: unit.to_string(),
            })
        }
    };
    let n: f64 = number
        .parse()
        .map_err(|_| UnitError::NotADuration(s.to_string()))?;
    Duration::try_from_secs_f64(n * scale).map_err(|_| UnitError::OutOfRange(s.to_string()))
}

/// Deserializes a duration written `250ms`, `2s` or `1m` (for config fields; serde's error
/// names the key and line).
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(de::Error::custom)
}

/// As [`parse_duration`], more than zero (flags such as `sonde trace --duration`).
pub fn positive_duration(s: &str) -> Result<Duration, UnitError> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(UnitError::Zero(s.trim().to_string()));
    }
    Ok(d)
}

/// Deserializes a duration field whose serde error would not name it (a setting of a probe,
/// read through its own function): the error starts with `key`.
pub fn named_duration<'de, D: Deserializer<'de>>(d: D, key: &str) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(|e| de::Error::custom(format!("{key}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("64Ki"), Ok(ByteSize(65536)));
        assert_eq!(ByteSize::parse("1Mi"), Ok(ByteSize(1 << 20)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert!(ByteSize::parse("1MB").is_err());
    }

    #[test]
    fn durations_as_people_write_them() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("5"), Err(UnitError::NoUnit("5".into())));
        assert!(parse_duration("5x")
            .unwrap_err()
            .to_string()
            .contains("unknown unit \"x\""));
        assert!(parse_duration("s").is_err());
        assert_eq!(positive_duration("0s"), Err(UnitError::Zero("0s".into())));
        assert_eq!(positive_duration("5s"), Ok(Duration::from_secs(5)));
    }
}
