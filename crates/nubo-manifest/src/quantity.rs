//! Sizes (`128Mi`) and durations (`30s`) as written in manifests.
//!
//! Both keep the user's unit when printed back, so a stored revision reads like the manifest.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A byte size written with a binary suffix: `512Ki`, `128Mi`, `2Gi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

/// A duration written with a unit: `250ms`, `30s`, `5m`, `6h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(u64);

const SIZE_UNITS: [(&str, u64); 3] = [("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
const DURATION_UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)];

impl Size {
    pub const fn from_bytes(bytes: u64) -> Self {
        Size(bytes)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `128Mi`; the message says what is allowed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hint = "use a whole number with Ki, Mi or Gi, e.g. 128Mi";
        let text = text.trim();
        for (suffix, factor) in SIZE_UNITS {
            if let Some(number) = text.strip_suffix(suffix) {
                let n: u64 = number
                    .parse()
                    .map_err(|_| format!("invalid size {text:?}: {hint}"))?;
                return n
                    .checked_mul(factor)
                    .map(Size)
                    .ok_or_else(|| format!("size {text:?} is too large"));
            }
        }
        Err(format!("invalid size {text:?}: {hint}"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, factor) in SIZE_UNITS {
            if self.0 >= factor && self.0.is_multiple_of(factor) {
                return write!(f, "{}{suffix}", self.0 / factor);
            }
        }
        // Not representable with a suffix (only possible for values made in code).
        write!(f, "{}Ki", self.0.div_ceil(1024))
    }
}

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Duration(ms)
    }

    pub fn millis(self) -> u64 {
        self.0
    }

    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }

    /// Parses `30s`; the message says what is allowed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hint = "use a whole number with ms, s, m or h, e.g. 30s";
        let text = text.trim();
        // `ms` must be tried before `m` and `s`.
        for (suffix, factor) in DURATION_UNITS {
            if let Some(number) = text.strip_suffix(suffix)
                && !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
            {
                let n: u64 = number
                    .parse()
                    .map_err(|_| format!("duration {text:?} is too large"))?;
                return n
                    .checked_mul(factor)
                    .map(Duration)
                    .ok_or_else(|| format!("duration {text:?} is too large"));
            }
        }
        Err(format!("invalid duration {text:?}: {hint}"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, factor) in DURATION_UNITS.iter().rev() {
            if self.0 >= *factor && self.0.is_multiple_of(*factor) {
                return write!(f, "{}{suffix}", self.0 / factor);
            }
        }
        write!(f, "{}ms", self.0)
    }
}

macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                <$t>::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(Size);
string_serde!(Duration);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("128Mi").unwrap().bytes(), 128 << 20);
        assert_eq!(Size::parse("1Gi").unwrap().bytes(), 1 << 30);
        assert_eq!(Size::parse("512Ki").unwrap().bytes(), 512 << 10);
        for bad in [
            "128",
            "128MB",
            "Mi",
            "-1Mi",
            "1.5Gi",
            "",
            "99999999999999999Gi",
        ] {
            assert!(Size::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Size::parse("1024Mi").unwrap().to_string(), "1Gi");
        assert_eq!(Size::parse("1536Mi").unwrap().to_string(), "1536Mi");
    }

    #[test]
    fn durations() {
        assert_eq!(Duration::parse("250ms").unwrap().millis(), 250);
        assert_eq!(Duration::parse("30s").unwrap().millis(), 30_000);
        assert_eq!(Duration::parse("5m").unwrap().millis(), 300_000);
        assert_eq!(Duration::parse("6h").unwrap().millis(), 21_600_000);
        for bad in ["30", "1.5s", "s", "3d", "-1s", "1 s x"] {
            assert!(Duration::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Duration::parse("60s").unwrap().to_string(), "1m");
        assert_eq!(Duration::parse("1500ms").unwrap().to_string(), "1500ms");
    }
}
