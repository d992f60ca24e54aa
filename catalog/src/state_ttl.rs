//! How long a persistent query keeps state for a key it has not written: Flink's
//! `table.exec.state.ttl`.
//!
//! Semantics (Flink's, with its processing-time TTL): the state of a non-windowed `GROUP BY`
//! group, or a row kept by a regular join, expires once it has not been written for the TTL.
//! An expired group starts again from nothing when a row for it arrives (its next result is an
//! `+I`, as in Flink; the old result is not retracted); an expired join row no longer matches
//! rows of the other input. Window aggregates are not affected: their state ends with the
//! window. `0` (the default) keeps state forever.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{CatalogError, Result};

/// The session option, as Flink names it: `SET 'table.exec.state.ttl' = '1 h'`. Also a key
/// `RESUME JOB '<id>' WITH (...)` takes.
pub const SESSION_OPTION: &str = "table.exec.state.ttl";

/// The sink table's option, `WITH ('state.ttl' = '1 d')`, for every job writing into it; it
/// takes precedence over the session option.
pub const TABLE_OPTION: &str = "state.ttl";

/// Parses a duration as Flink's `TimeUtils.parseDuration` does: a whole number and an optional
/// unit (`ms`/`milli`/`millis`/`millisecond`/`milliseconds`, `s`/`sec`/`secs`/`second`/
/// `seconds`, `min`/`m`/`minute`/`minutes`, `h`/`hour`/`hours`, `d`/`day`/`days`), spaces
/// allowed between them; no unit means milliseconds. `Ok(None)` for a zero duration (state is
/// kept forever).
///
/// Errors: [`CatalogError::InvalidOption`] (SQLSTATE 22023) naming `key`, for anything else.
pub fn parse_ttl(key: &str, value: &str) -> Result<Option<Duration>> {
    let bad = || {
        CatalogError::InvalidOption(format!(
            "option '{key}' must be a duration such as '90 s', '30 min', '12 h' or '7 d' (a number alone is milliseconds), got '{value}'"
        ))
    };
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms_per = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "m" | "min" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(ms_per).ok_or_else(bad)?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

/// The TTL of a new job into a sink with `table_options`: the table's [`TABLE_OPTION`] if set,
/// else the session's [`SESSION_OPTION`] value if set, else none.
///
/// Errors: [`CatalogError::InvalidOption`] for a value that is not a duration.
pub fn ttl_for_sink(table_options: &BTreeMap<String, String>, session: Option<&str>) -> Result<Option<Duration>> {
    match (table_options.get(TABLE_OPTION), session) {
        (Some(v), _) => parse_ttl(TABLE_OPTION, v),
        (None, Some(v)) => parse_ttl(SESSION_OPTION, v),
        (None, None) => Ok(None),
    }
}

/// A TTL as Flink prints durations, for `SHOW JOBS` (`"0 ms"` for none).
pub fn format_ttl(ttl: Option<Duration>) -> String {
    let ms = ttl.map_or(0, |d| d.as_millis() as u64);
    for (unit, per) in [("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1_000)] {
        if ms > 0 && ms % per == 0 {
            return format!("{} {unit}", ms / per);
        }
    }
    format!("{ms} ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_flink_parses_them() {
        let p = |v: &str| parse_ttl(SESSION_OPTION, v).unwrap().map(|d| d.as_millis());
        assert_eq!(p("1500"), Some(1500));
        assert_eq!(p("90 s"), Some(90_000));
        assert_eq!(p("30min"), Some(1_800_000));
        assert_eq!(p(" 2 H "), Some(7_200_000));
        assert_eq!(p("7 days"), Some(604_800_000));
        assert_eq!(p("0 ms"), None);
        for bad in ["", "1.5 h", "-1 s", "1 week", "h", "99999999999999999999 d"] {
            let e = parse_ttl(SESSION_OPTION, bad).unwrap_err().to_string();
            assert!(e.contains("table.exec.state.ttl"), "{bad}: {e}");
        }
        assert_eq!(format_ttl(p("90 s").map(|m| Duration::from_millis(m as u64))), "90 s");
        assert_eq!(format_ttl(Some(Duration::from_millis(1500))), "1500 ms");
        assert_eq!(format_ttl(None), "0 ms");
    }

    #[test]
    fn the_table_option_wins_over_the_session() {
        let opts = BTreeMap::from([(TABLE_OPTION.to_string(), "1 h".to_string())]);
        assert_eq!(ttl_for_sink(&opts, Some("1 s")).unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(ttl_for_sink(&BTreeMap::new(), Some("1 s")).unwrap(), Some(Duration::from_secs(1)));
        assert_eq!(ttl_for_sink(&BTreeMap::new(), None).unwrap(), None);
    }
}
