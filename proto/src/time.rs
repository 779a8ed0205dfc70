//! Time as the cluster writes it: unix seconds in signatures and leases, unix
//! milliseconds in events and heartbeats, and RFC 3339 (UTC) wherever a person
//! reads one. One clock for every module of both binaries.

/// Seconds since the unix epoch (0 if the clock is before it).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A unix time in ms as RFC 3339 in UTC, to the second: `YYYY-MM-DDTHH:MM:SSZ`
/// (how every table, log message and console page shows a time; `--json`
/// keeps the number).
pub fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_utc_calendar_time() {
        assert_eq!(clock(0), "1970-01-01T00:00:00Z");
        assert_eq!(clock(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(clock(1_795_600_000_123), "2026-11-25T09:46:40Z");
    }
}
