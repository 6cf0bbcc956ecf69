//! Human-readable durations for TTLs: `90s`, `15m`, `1h30m`, `2d`, or a bare number of
//! seconds (`3600`).
//!
//! Units are `d` (86400 seconds), `h`, `m` and `s`, lowercase. A duration is one or more
//! `NUMBER UNIT` pairs with no spaces between them, each unit at most once and from largest to
//! smallest. Numbers are whole and non-negative. There is no week, month or year unit because
//! their length is ambiguous. The maximum is [`MAX_DURATION`].

use std::time::Duration;

use thiserror::Error;

const SECONDS_PER_DAY: u64 = 86_400;

/// Maximum duration accepted: 100 years of 365 days (36500 days).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * SECONDS_PER_DAY);

/// Units from largest to smallest, with their length in seconds.
const UNITS: [(&str, u64); 4] = [("d", SECONDS_PER_DAY), ("h", 3_600), ("m", 60), ("s", 1)];

/// Reason a duration was rejected. Messages show the input with surrounding whitespace
/// trimmed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DurationError {
    #[error("empty duration; write a number and a unit, such as 90s, 15m, 1h30m or 2d")]
    Empty,

    #[error("invalid duration `{input}`: durations cannot be negative")]
    Negative { input: String },

    #[error(
        "invalid duration `{input}`: fractions are not supported; write whole units, such as \
         1h30m instead of 1.5h"
    )]
    Fractional { input: String },

    #[error("invalid duration `{input}`: unknown unit `{unit}`; use s, m, h or d")]
    UnknownUnit { input: String, unit: String },

    #[error(
        "invalid duration `{input}`: missing number before `{unit}`; write a number and then \
         a unit, such as 15m"
    )]
    MissingNumber { input: String, unit: String },

    #[error("invalid duration `{input}`: missing unit after `{number}`; add s, m, h or d")]
    MissingUnit { input: String, number: String },

    #[error(
        "invalid duration `{input}`: unexpected character `{}`; write numbers and units \
         without spaces or signs, such as 1h30m",
        .character.escape_default()
    )]
    UnexpectedCharacter { input: String, character: char },

    #[error(
        "invalid duration `{input}`: units must appear at most once each, from largest to \
         smallest (d, h, m, s), as in 1d2h30m"
    )]
    UnitOrder { input: String },

    #[error(
        "invalid duration `{input}`: it is longer than the maximum of 100 years; write at most \
         36500d"
    )]
    TooLong { input: String },
}

/// Parses a duration in the syntax described in the module documentation. Whitespace around
/// the input is ignored.
///
/// Zero (`0`, `0s`, `0h0m`) is accepted, and callers that need a positive TTL check for it.
/// Arithmetic is checked, so values too large for `u64` seconds are reported as
/// [`DurationError::TooLong`] and never wrap.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let input = input.trim();
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    if input.starts_with('-') {
        return Err(DurationError::Negative {
            input: input.to_owned(),
        });
    }
    let too_long = || DurationError::TooLong {
        input: input.to_owned(),
    };

    let seconds = if input.bytes().all(|byte| byte.is_ascii_digit()) {
        parse_number(input).ok_or_else(too_long)?
    } else {
        parse_units(input)?
    };

    let duration = Duration::from_secs(seconds);
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    Ok(duration)
}

/// Formats a duration in the syntax [`parse_duration`] reads, largest unit first, leaving out
/// zero units: `1h30m`, `15m`, `2d`, `0s`. The sub-second part is dropped.
pub fn format_duration(duration: Duration) -> String {
    let mut remaining = duration.as_secs();
    if remaining == 0 {
        return "0s".to_owned();
    }
    let mut formatted = String::new();
    for (unit, seconds) in UNITS {
        let count = remaining / seconds;
        remaining %= seconds;
        if count > 0 {
            formatted.push_str(&count.to_string());
            formatted.push_str(unit);
        }
    }
    formatted
}

/// Parses `NUMBER UNIT` pairs into a total number of seconds.
fn parse_units(input: &str) -> Result<u64, DurationError> {
    let owned_input = || input.to_owned();
    let too_long = || DurationError::TooLong {
        input: owned_input(),
    };

    let mut rest = input;
    let mut total: u64 = 0;
    // Index in `UNITS` of the previous unit, which the next unit must come after.
    let mut previous_unit: Option<usize> = None;

    while !rest.is_empty() {
        let (number, after_number) = split_while(rest, |c| c.is_ascii_digit());
        let (unit, after_unit) = split_while(after_number, char::is_alphabetic);

        if number.is_empty() {
            if !unit.is_empty() {
                return Err(DurationError::MissingNumber {
                    input: owned_input(),
                    unit: unit.to_owned(),
                });
            }
            return Err(unexpected_character(input, rest));
        }
        if unit.is_empty() {
            if after_number.is_empty() {
                return Err(DurationError::MissingUnit {
                    input: owned_input(),
                    number: number.to_owned(),
                });
            }
            if after_number.starts_with(['.', ',']) {
                return Err(DurationError::Fractional {
                    input: owned_input(),
                });
            }
            return Err(unexpected_character(input, after_number));
        }

        let Some(unit_index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit {
                input: owned_input(),
                unit: unit.to_owned(),
            });
        };
        if previous_unit.is_some_and(|previous| previous >= unit_index) {
            return Err(DurationError::UnitOrder {
                input: owned_input(),
            });
        }
        previous_unit = Some(unit_index);

        let (_, unit_seconds) = UNITS[unit_index];
        let seconds = parse_number(number)
            .and_then(|count| count.checked_mul(unit_seconds))
            .ok_or_else(too_long)?;
        total = total.checked_add(seconds).ok_or_else(too_long)?;
        rest = after_unit;
    }
    Ok(total)
}

/// Parses ASCII digits, returning `None` when the value does not fit in `u64`.
fn parse_number(digits: &str) -> Option<u64> {
    digits.bytes().try_fold(0u64, |value, digit| {
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

/// Splits `text` after its longest prefix whose characters all satisfy `predicate`.
fn split_while(text: &str, predicate: impl Fn(char) -> bool) -> (&str, &str) {
    let end = text
        .char_indices()
        .find(|&(_, character)| !predicate(character))
        .map_or(text.len(), |(index, _)| index);
    text.split_at(end)
}

fn unexpected_character(input: &str, at: &str) -> DurationError {
    DurationError::UnexpectedCharacter {
        input: input.to_owned(),
        character: at.chars().next().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn seconds(count: u64) -> Duration {
        Duration::from_secs(count)
    }

    #[test]
    fn parse_single_units() {
        assert_eq!(parse_duration("90s").unwrap(), seconds(90));
        assert_eq!(parse_duration("15m").unwrap(), seconds(900));
        assert_eq!(parse_duration("1h").unwrap(), seconds(3_600));
        assert_eq!(parse_duration("2d").unwrap(), seconds(172_800));
    }

    #[test]
    fn parse_combined_units() {
        assert_eq!(parse_duration("1h30m").unwrap(), seconds(5_400));
        assert_eq!(parse_duration("1d2h3m4s").unwrap(), seconds(93_784));
        assert_eq!(parse_duration("1d30s").unwrap(), seconds(86_430));
        assert_eq!(parse_duration("90m").unwrap(), seconds(5_400));
    }

    #[test]
    fn parse_bare_seconds() {
        assert_eq!(parse_duration("3600").unwrap(), seconds(3_600));
        assert_eq!(parse_duration("007").unwrap(), seconds(7));
    }

    #[test]
    fn parse_zero() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0h0m").unwrap(), Duration::ZERO);
    }

    #[test]
    fn parse_trims_whitespace() {
        assert_eq!(parse_duration(" 15m\n").unwrap(), seconds(900));
    }

    #[test]
    fn empty_rejected() {
        assert_eq!(parse_duration("").unwrap_err(), DurationError::Empty);
        assert_eq!(parse_duration("  ").unwrap_err(), DurationError::Empty);
    }

    #[test]
    fn negative_rejected() {
        let error = parse_duration("-5m").unwrap_err();
        assert_eq!(
            error,
            DurationError::Negative {
                input: "-5m".to_owned()
            }
        );
        assert_eq!(
            error.to_string(),
            "invalid duration `-5m`: durations cannot be negative"
        );
        assert!(matches!(
            parse_duration("-0").unwrap_err(),
            DurationError::Negative { .. }
        ));
    }

    #[test]
    fn fractional_rejected() {
        let error = parse_duration("1.5h").unwrap_err();
        assert_eq!(
            error,
            DurationError::Fractional {
                input: "1.5h".to_owned()
            }
        );
        assert!(error.to_string().contains("1h30m"), "{error}");
        assert!(matches!(
            parse_duration("1h0,5m").unwrap_err(),
            DurationError::Fractional { .. }
        ));
        assert!(matches!(
            parse_duration("2.5").unwrap_err(),
            DurationError::Fractional { .. }
        ));
    }

    #[test]
    fn unknown_unit_rejected() {
        for (input, unit) in [
            ("5y", "y"),
            ("1w", "w"),
            ("5M", "M"),
            ("10min", "min"),
            ("1hm", "hm"),
        ] {
            let error = parse_duration(input).unwrap_err();
            assert_eq!(
                error,
                DurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned()
                },
                "{input}"
            );
        }
        assert_eq!(
            parse_duration("5y").unwrap_err().to_string(),
            "invalid duration `5y`: unknown unit `y`; use s, m, h or d"
        );
    }

    #[test]
    fn missing_number_rejected() {
        assert_eq!(
            parse_duration("h").unwrap_err(),
            DurationError::MissingNumber {
                input: "h".to_owned(),
                unit: "h".to_owned()
            }
        );
        assert_eq!(
            parse_duration("1hm").unwrap_err(),
            DurationError::UnknownUnit {
                input: "1hm".to_owned(),
                unit: "hm".to_owned()
            }
        );
        assert_eq!(
            parse_duration("1h m").unwrap_err(),
            DurationError::UnexpectedCharacter {
                input: "1h m".to_owned(),
                character: ' '
            }
        );
    }

    #[test]
    fn missing_unit_rejected() {
        assert_eq!(
            parse_duration("1h30").unwrap_err(),
            DurationError::MissingUnit {
                input: "1h30".to_owned(),
                number: "30".to_owned()
            }
        );
    }

    #[test]
    fn unexpected_characters_rejected() {
        for (input, character) in [
            ("+5m", '+'),
            ("1h 30m", ' '),
            ("5m!", '!'),
            ("1h\t2m", '\t'),
        ] {
            let error = parse_duration(input).unwrap_err();
            assert_eq!(
                error,
                DurationError::UnexpectedCharacter {
                    input: input.to_owned(),
                    character
                },
                "{input}"
            );
        }
        assert_eq!(
            parse_duration("1h\t2m").unwrap_err().to_string(),
            "invalid duration `1h\t2m`: unexpected character `\\t`; write numbers and units \
             without spaces or signs, such as 1h30m"
        );
    }

    #[test]
    fn unit_order_rejected() {
        for input in ["1m1h", "1h1h", "1s1d", "1d1h1h"] {
            assert_eq!(
                parse_duration(input).unwrap_err(),
                DurationError::UnitOrder {
                    input: input.to_owned()
                },
                "{input}"
            );
        }
    }

    #[test]
    fn maximum_accepted() {
        assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("3153600000").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("36499d23h59m60s").unwrap(), MAX_DURATION);
    }

    #[test]
    fn too_long_rejected() {
        for input in [
            "36500d1s",
            "3153600001",
            "876001h",
            "18446744073709551615s",
            "18446744073709551616",
            "99999999999999999999999d",
            "213503982334602d",
            "213503982334601d23h",
            "106751991167300d23h59m59s",
        ] {
            assert_eq!(
                parse_duration(input).unwrap_err(),
                DurationError::TooLong {
                    input: input.to_owned()
                },
                "{input}"
            );
        }
        assert_eq!(
            parse_duration("36501d").unwrap_err().to_string(),
            "invalid duration `36501d`: it is longer than the maximum of 100 years; write at \
             most 36500d"
        );
    }

    #[test]
    fn format_examples() {
        assert_eq!(format_duration(seconds(5_400)), "1h30m");
        assert_eq!(format_duration(seconds(900)), "15m");
        assert_eq!(format_duration(seconds(45)), "45s");
        assert_eq!(format_duration(seconds(172_800)), "2d");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(seconds(93_784)), "1d2h3m4s");
        assert_eq!(format_duration(seconds(86_401)), "1d1s");
    }

    #[test]
    fn format_drops_sub_seconds() {
        assert_eq!(format_duration(Duration::from_millis(1_999)), "1s");
        assert_eq!(format_duration(Duration::from_millis(999)), "0s");
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(count in 0..=MAX_DURATION.as_secs()) {
            let duration = seconds(count);
            prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }

        #[test]
        fn parse_never_panics(input in any::<String>()) {
            let _ = parse_duration(&input);
        }

        #[test]
        fn parse_of_duration_mix_never_panics(input in "[0-9dhms.,+ -]{0,30}") {
            if let Ok(duration) = parse_duration(&input) {
                prop_assert!(duration <= MAX_DURATION);
            }
        }
    }
}
