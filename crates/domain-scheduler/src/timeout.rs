//! Task timeouts as written in a `TaskRequest`: `"500ms"`, `"30s"`, `"10m"`, `"2h"`, or a bare
//! number of milliseconds.

use std::time::Duration;

/// The longest timeout a task may ask for: one week. Longer values are almost certainly a unit
/// mistake, and keeping deadlines small keeps `now + timeout` far from overflowing.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a timeout string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    /// The string is empty (or only spaces).
    #[error("timeout is empty")]
    Empty,
    /// The string does not start with a decimal number.
    #[error("timeout {0:?} does not start with a number")]
    NoNumber(String),
    /// The unit after the number is not one of `ms`, `s`, `m`, `h`.
    #[error("timeout {input:?} has unknown unit {unit:?} (expected ms, s, m or h)")]
    UnknownUnit {
        /// The whole timeout string.
        input: String,
        /// The text after the number.
        unit: String,
    },
    /// The timeout is zero: a task could never start before its deadline.
    #[error("timeout {0:?} is zero")]
    Zero(String),
    /// The timeout is longer than [`MAX_TIMEOUT`] (or does not fit in 64 bits).
    #[error("timeout {0:?} is longer than the maximum of 7 days")]
    TooLong(String),
}

/// Parses a task timeout: a decimal number followed by `ms`, `s`, `m` or `h`; a bare number is
/// milliseconds. Zero and values above [`MAX_TIMEOUT`] are refused.
///
/// ```
/// use std::time::Duration;
/// use domain_scheduler::parse_timeout;
///
/// assert_eq!(parse_timeout("500ms")?, Duration::from_millis(500));
/// assert_eq!(parse_timeout("2h")?, Duration::from_secs(7200));
/// assert_eq!(parse_timeout("250")?, Duration::from_millis(250));
/// assert!(parse_timeout("10 parsecs").is_err());
/// # Ok::<(), domain_scheduler::TimeoutError>(())
/// ```
pub fn parse_timeout(input: &str) -> Result<Duration, TimeoutError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(TimeoutError::Empty);
    }
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(TimeoutError::NoNumber(input.to_owned()));
    }
    let too_long = || TimeoutError::TooLong(input.to_owned());
    let value: u64 = digits.parse().map_err(|_| too_long())?;
    let millis_per_unit: u64 = match unit.trim_start() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(TimeoutError::UnknownUnit {
                input: input.to_owned(),
                unit: other.to_owned(),
            });
        }
    };
    let millis = value.checked_mul(millis_per_unit).ok_or_else(too_long)?;
    let timeout = Duration::from_millis(millis);
    if timeout.is_zero() {
        return Err(TimeoutError::Zero(input.to_owned()));
    }
    if timeout > MAX_TIMEOUT {
        return Err(too_long());
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_documented_unit_parses() {
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_timeout("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("1500"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout(" 3 s "), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn malformed_timeouts_are_refused_with_their_reason() {
        assert_eq!(parse_timeout(""), Err(TimeoutError::Empty));
        assert_eq!(parse_timeout("s"), Err(TimeoutError::NoNumber("s".into())));
        assert_eq!(
            parse_timeout("-5s"),
            Err(TimeoutError::NoNumber("-5s".into()))
        );
        assert_eq!(
            parse_timeout("5d"),
            Err(TimeoutError::UnknownUnit {
                input: "5d".into(),
                unit: "d".into()
            })
        );
        assert_eq!(
            parse_timeout("1.5s"),
            Err(TimeoutError::UnknownUnit {
                input: "1.5s".into(),
                unit: ".5s".into()
            })
        );
        assert_eq!(parse_timeout("0ms"), Err(TimeoutError::Zero("0ms".into())));
        assert_eq!(
            parse_timeout("169h"),
            Err(TimeoutError::TooLong("169h".into()))
        );
        assert_eq!(
            parse_timeout("99999999999999999999999h"),
            Err(TimeoutError::TooLong("99999999999999999999999h".into()))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(input in ".{0,24}") {
            let _ = parse_timeout(&input);
        }

        #[test]
        fn seconds_are_a_thousand_milliseconds(n in 1u64..600_000) {
            prop_assert_eq!(parse_timeout(&format!("{n}s")), parse_timeout(&format!("{}", n * 1000)));
        }
    }
}
