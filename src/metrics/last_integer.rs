//! `last-integer`: the paper's GSM8K/MGSM score (docs/method.md §5). A pair counts when the last
//! integer written in the hypothesis equals the last integer written in the reference.
//!
//! What counts as an integer follows the paper's scoring script (read, not run):
//! - a run of decimal digits, optionally continued by groups of `,` and more digits, so
//!   `1,234,567` is one number (the commas are dropped; any group size is accepted, `12,34` is
//!   1234); a `.` ends a number, so `3.75` ends with the integer 75;
//! - digits are any Unicode decimal digits (Python's `\d`), read at their value, so the Bengali
//!   `১২` is 12, as Python's `int()` reads it (MGSM hypotheses may use native digits);
//! - a minus sign is not part of the number: `-5` and `5` are equal (the script's pattern has no
//!   sign; GSM8K answers are non-negative counts and amounts);
//! - leading zeros do not matter (`007` = `7`), and numbers of any size compare exactly;
//! - a line with no integer matches only another line without one (the script gives both sides
//!   the same placeholder value).
//!
//! Lowercasing cannot change digits, so `--lowercase` has no effect here.

use super::ExactScore;
use regex::Regex;
use std::sync::OnceLock;

fn number_pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\d+(?:,\d+)*").expect("valid pattern"))
}

fn is_decimal_digit(c: char) -> bool {
    let mut buf = [0u8; 4];
    number_pattern().is_match(c.encode_utf8(&mut buf))
}

/// The value of a Unicode decimal digit. Unicode assigns decimal digits only in contiguous runs
/// of ten, 0 to 9, so the value is the distance from the start of the run, modulo 10 (runs of
/// several blocks, as the mathematical digits, hold whole blocks).
fn digit_value(c: char) -> u32 {
    if let Some(v) = c.to_digit(10) {
        return v;
    }
    let mut start = c as u32;
    while let Some(prev) = start.checked_sub(1).and_then(char::from_u32) {
        if !is_decimal_digit(prev) {
            break;
        }
        start -= 1;
    }
    (c as u32 - start) % 10
}

/// The last integer of `text` as canonical ASCII digits (no separators, no leading zeros), or
/// `None` when there is none.
pub fn last_integer(text: &str) -> Option<String> {
    let m = number_pattern().find_iter(text).last()?;
    let digits: String = m.as_str().chars().filter(|&c| c != ',').map(|c| char::from_digit(digit_value(c), 10).unwrap_or('0')).collect();
    let trimmed = digits.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0".to_owned() } else { trimmed.to_owned() })
}

/// Counts pairs whose last integers agree.
pub fn last_integer_match<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> ExactScore {
    let (mut matches, mut sentences) = (0, 0);
    for (h, r) in pairs {
        sentences += 1;
        matches += usize::from(last_integer(h) == last_integer(r));
    }
    ExactScore { matches, sentences }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(s: &str) -> Option<&'static str> {
        last_integer(s).map(|v| &*Box::leak(v.into_boxed_str()))
    }

    #[test]
    fn reads_the_last_integer_as_the_paper_script() {
        assert_eq!(last("#### ## She pays 3 times 12 = 36 dollars. The answer is 36"), Some("36"));
        assert_eq!(last("In total 1,234,567 apples."), Some("1234567"));
        assert_eq!(last("groups of any size: 12,34"), Some("1234"));
        assert_eq!(last("a comma after: 5, then words"), Some("5"));
        assert_eq!(last("the price is 3.75"), Some("75"));
        assert_eq!(last("it fell to -5"), Some("5"));
        assert_eq!(last("agent 007"), Some("7"));
        assert_eq!(last("zero 000"), Some("0"));
        assert_eq!(last("no number here"), None);
        assert_eq!(last(""), None);
        // Native digits at their value: Bengali ১২ = 12, Arabic-Indic ٣٤ = 34, Thai ๕ = 5,
        // fullwidth ９ = 9, mathematical bold 𝟕 = 7 (inside a run of five blocks).
        assert_eq!(last("উত্তর ১২"), Some("12"));
        assert_eq!(last("٣٤"), Some("34"));
        assert_eq!(last("๕"), Some("5"));
        assert_eq!(last("９"), Some("9"));
        assert_eq!(last("𝟕"), Some("7"));
        assert_eq!(last("𝟗𝟎"), Some("90"));
        // Not decimal digits: superscripts and fractions are no numbers.
        assert_eq!(last("x² ½"), None);
        // Numbers longer than any machine integer compare exactly.
        assert_eq!(last("99999999999999999999999999"), Some("99999999999999999999999999"));
    }

    #[test]
    fn scores_pairs() {
        let pairs = [
            ("The answer is 1,000.", "1000"),
            ("so 18", "#### 18"),
            ("so 17", "18"),
            ("no idea", "18"),
            ("nothing", "nothing either"),
            ("-3", "3"),
        ];
        let s = last_integer_match(pairs.iter().copied());
        assert_eq!((s.matches, s.sentences), (4, 6));
    }
}
