//! Durations in config files: `500ms`, `30s`, `5m`, `24h`, `1h 30m`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration read from a human string (humantime's syntax), never longer
/// than [`ConfigDuration::MAX`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// The longest duration a config may hold: 100 years (of 365.25 days,
    /// as humantime counts them, so `100years` itself is accepted). Far past any
    /// setting's own bound, and short enough that `Instant::now() + d` and
    /// `SystemTime::now() + d` cannot overflow on any platform Rust supports
    /// (the narrowest keeps nanoseconds in a u64: about 584 years). So a
    /// value that passed parsing can never panic where it meets a clock,
    /// even before validation has judged it.
    pub const MAX: Duration = Duration::from_secs(100 * 31_557_600);

    /// From seconds.
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    /// From milliseconds.
    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// The value.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Debug for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConfigDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 30s, 5m or 24h")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                let d = humantime::parse_duration(text.trim()).map_err(|e| {
                    E::custom(format!("`{text}` is not a duration ({e}); write it like 500ms, 30s, 5m or 24h"))
                })?;
                if d > ConfigDuration::MAX {
                    return Err(E::custom(format!("`{text}` is longer than 100 years, the most any duration may be")));
                }
                Ok(ConfigDuration(d))
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Err(E::custom(format!("`{n}` has no unit; write `{n}s` for seconds or `{n}ms` for milliseconds")))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!("`{n}` is not a duration; write it like 500ms, 30s or 24h")))
            }

            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!("`{n}` is not a duration; write it like 500ms, 30s or 24h")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ConfigDuration, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_human_durations() {
        assert_eq!(parse("500ms").unwrap().get(), Duration::from_millis(500));
        assert_eq!(parse("30s").unwrap().get(), Duration::from_secs(30));
        assert_eq!(parse("24h").unwrap().get(), Duration::from_secs(86_400));
    }

    #[test]
    fn bare_numbers_and_nonsense_are_refused_with_a_hint() {
        assert!(parse("30").unwrap_err().contains("`30s`"));
        assert!(parse("soon").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn durations_a_clock_cannot_hold_are_refused_when_read() {
        let err = parse("500000000000years").unwrap_err();
        assert!(err.contains("longer than 100 years"), "{err}");
        // humantime's own overflow is a plain refusal too.
        assert!(parse("5000000000000years").unwrap_err().contains("not a duration"));
        assert_eq!(parse("100years").unwrap().get(), ConfigDuration::MAX);
        assert!(parse("100years 1s").unwrap_err().contains("longer than 100 years"));
        std::time::Instant::now().checked_add(ConfigDuration::MAX).expect("an Instant holds the longest duration");
        std::time::SystemTime::now().checked_add(ConfigDuration::MAX).expect("a SystemTime holds it too");
    }
}
