//! Wall-clock timestamps as microseconds since the Unix epoch: one integer type that sorts,
//! stores in any SQL database and needs no time-zone handling until it is shown.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

/// The current time.
pub fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// RFC 3339 in UTC with millisecond precision, for people and JSON.
pub fn format_rfc3339(micros: Micros) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Adds a duration to a timestamp, saturating.
pub fn add(micros: Micros, d: Duration) -> Micros {
    micros.saturating_add(d.as_micros().min(i64::MAX as u128) as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::format_rfc3339(1_500), "1970-01-01T00:00:00.001Z");
    }
}

/// Serde helpers that write timestamps as RFC 3339 strings in JSON.
pub mod rfc3339 {
    use super::{Micros, format_rfc3339};

    pub fn serialize<S: serde::Serializer>(t: &Micros, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_rfc3339(*t))
    }

    pub mod option {
        use super::super::{Micros, format_rfc3339};

        pub fn serialize<S: serde::Serializer>(
            t: &Option<Micros>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&format_rfc3339(*t)),
                None => s.serialize_none(),
            }
        }
    }
}
