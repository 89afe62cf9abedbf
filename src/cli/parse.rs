//! The admin CLI's value parsers: durations (`30d`), rates (`10/1m`), pairs (`key=value`)
//! and times (RFC 3339). Pure functions; clap calls them, so that a bad value is a usage
//! error naming its flag (exit 2) and no call is made.

use std::time::Duration;

/// Parses a duration in the units people use: `90s`, `15m`, `1h`, `30d`, `2w`, `1h30m`
/// (humantime's syntax). A bare number is seconds.
pub fn duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("{value:?} is too long"));
    }
    humantime::parse_duration(value)
        .map_err(|_| format!("{value:?} is not a duration such as 90s, 15m, 1h, 30d or 2w"))
}

/// Parses a duration into protobuf's `Duration`, refusing what it cannot hold.
pub fn proto_duration(value: &str) -> Result<prost_types::Duration, String> {
    let parsed = duration(value)?;
    prost_types::Duration::try_from(parsed).map_err(|_| format!("{value:?} is too long"))
}

/// Parses a rate, `requests/interval`: `10/1m`, `100/1h`, `5/s` (an interval without a
/// number is one of its unit).
pub fn rate(value: &str) -> Result<(i64, prost_types::Duration), String> {
    let shape = || format!("{value:?} is not a rate such as 10/1m or 100/1h");
    let (requests, interval) = value.trim().split_once('/').ok_or_else(shape)?;
    let requests: i64 = requests.trim().parse().map_err(|_| shape())?;
    if requests < 1 {
        return Err(format!(
            "{value:?}: the number of requests must be at least 1"
        ));
    }
    let interval = interval.trim();
    let interval = match interval.starts_with(|c: char| c.is_ascii_alphabetic()) {
        true => proto_duration(&format!("1{interval}")),
        false => proto_duration(interval),
    }
    .map_err(|_| shape())?;
    Ok((requests, interval))
}

/// Parses `key=value`: the key is what precedes the first `=` and must not be empty; the
/// value is the rest, `=` included.
pub fn pair(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, rest)) if !key.is_empty() => Ok((key.to_owned(), rest.to_owned())),
        _ => Err(format!("{value:?} is not key=value")),
    }
}

/// Parses an RFC 3339 time, e.g. `2027-01-01T00:00:00Z`.
pub fn time(value: &str) -> Result<prost_types::Timestamp, String> {
    let parsed = chrono::DateTime::parse_from_rfc3339(value.trim())
        .map_err(|_| format!("{value:?} is not an RFC 3339 time such as 2027-01-01T00:00:00Z"))?;
    Ok(prost_types::Timestamp {
        seconds: parsed.timestamp(),
        nanos: parsed.timestamp_subsec_nanos() as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_days_weeks_and_compounds() {
        assert_eq!(duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "d", "30x", "-1d", "soon", "1d!"] {
            let error = duration(bad).unwrap_err();
            assert!(error.contains("is not a duration"), "{bad}: {error}");
        }
        assert!(duration("99999999999999999999").is_err());
        assert!(
            proto_duration("18446744073709551615").is_err(),
            "past i64 seconds"
        );
    }

    #[test]
    fn rates_are_requests_per_interval() {
        let seconds = |(n, d): (i64, prost_types::Duration)| (n, d.seconds);
        assert_eq!(rate("10/1m").map(seconds), Ok((10, 60)));
        assert_eq!(rate("5/s").map(seconds), Ok((5, 1)));
        assert_eq!(rate(" 100 / 1h ").map(seconds), Ok((100, 3_600)));
        for bad in [
            "10", "/1m", "x/1m", "10/", "10/soon", "0/1m", "-3/1m", "10/1m/2",
        ] {
            assert!(rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pairs_split_at_the_first_equals_sign() {
        assert_eq!(
            pair("reportId=r-17"),
            Ok(("reportId".into(), "r-17".into()))
        );
        assert_eq!(pair("k=a=b"), Ok(("k".into(), "a=b".into())));
        assert_eq!(pair("k="), Ok(("k".into(), String::new())));
        assert!(pair("=v").is_err());
        assert!(pair("novalue").is_err());
    }

    #[test]
    fn times_are_rfc_3339() {
        assert_eq!(time("2027-01-01T00:00:00Z").unwrap().seconds, 1_798_761_600);
        assert_eq!(
            time("2027-01-01T01:00:00+01:00").unwrap().seconds,
            1_798_761_600
        );
        assert!(time("2027-01-01").is_err());
        assert!(time("tomorrow").is_err());
    }
}
