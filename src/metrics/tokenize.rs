//! sacreBLEU's word tokenizers `13a` and `intl`, reproduced rule by rule, plus the Python
//! whitespace rules that sacreBLEU relies on through `str.split()` / `str.rstrip()`.
//!
//! Both tokenizers are chains of regex substitutions. Python's `re.sub` and the `regex` crate's
//! `replace_all` both replace non-overlapping leftmost matches scanning left to right, so applying
//! the same patterns in the same order gives the same string.

use regex::Regex;
use std::sync::LazyLock;

/// Python's `str.isspace`: Unicode `White_Space` (what `char::is_whitespace` tests) plus the four
/// ASCII information separators U+001C..U+001F, which Python also treats as whitespace.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()` with no argument: runs of whitespace separate, empty pieces vanish.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// Python's `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// `' '.join(s.split())`: the last step of both tokenizers.
fn squeeze_spaces(s: &str) -> String {
    py_split(s).collect::<Vec<_>>().join(" ")
}

fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).expect("metric tokenizer patterns are constants and must compile")
}

/// The mteval-v13a rules (`TokenizerRegexp` in sacreBLEU). ASCII only: other scripts pass through.
static RULES_13A: LazyLock<[(Regex, &str); 4]> = LazyLock::new(|| {
    [
        // Every ASCII punctuation or symbol except `'`, `-`, `.` and `,`, which get special rules.
        (compile(r"([\{-\~\[-\`\x20-\&\(-\+\:-\@/])"), " ${1} "),
        // Period and comma split off unless they sit between digits.
        (compile(r"([^0-9])([\.,])"), "${1} ${2} "),
        (compile(r"([\.,])([^0-9])"), " ${1} ${2}"),
        // A dash after a digit is a range or minus sign, not a hyphen.
        (compile(r"([0-9])(-)"), "${1} ${2} "),
    ]
});

/// The mteval-v14 "international" rules: Unicode punctuation (`\p{P}`) splits off unless it sits
/// between digits (`\p{N}`), and every Unicode symbol (`\p{S}`) becomes its own token.
static RULES_INTL: LazyLock<[(Regex, &str); 3]> = LazyLock::new(|| {
    [(compile(r"(\P{N})(\p{P})"), "${1} ${2} "), (compile(r"(\p{P})(\P{N})"), " ${1} ${2}"), (compile(r"(\p{S})"), " ${1} ")]
});

fn apply_rules(rules: &[(Regex, &str)], line: String) -> String {
    rules.iter().fold(line, |text, (re, replacement)| re.replace_all(&text, *replacement).into_owned())
}

/// sacreBLEU `Tokenizer13a()(line)`.
pub fn tokenize_13a(line: &str) -> String {
    let mut text = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if text.contains('&') {
        // Sequential on purpose: "&amp;lt;" ends up as "<", as in sacreBLEU.
        text = text.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    // The padding lets the period/comma rules see a non-digit at both ends of the line.
    squeeze_spaces(&apply_rules(&*RULES_13A, format!(" {text} ")))
}

/// sacreBLEU `TokenizerV14International()(line)`. Unlike 13a there is no padding, so a number
/// followed by a final period ("in 2023.") keeps the period attached, as in mteval-v14.
pub fn tokenize_intl(line: &str) -> String {
    squeeze_spaces(&apply_rules(&*RULES_INTL, line.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_includes_information_separators() {
        assert_eq!(py_split("a\u{1f}b\u{3000}c\u{a0} d").collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(py_strip("\u{1c} x \t"), "x");
        // U+200B (zero width space) is not whitespace for Python or Unicode.
        assert_eq!(py_split("a\u{200b}b").count(), 1);
    }

    #[test]
    fn hand_checked_13a() {
        assert_eq!(tokenize_13a("Hello, world!"), "Hello , world !");
        assert_eq!(tokenize_13a("1,000.5 and 5-6"), "1,000.5 and 5 - 6");
        assert_eq!(tokenize_13a("&amp;lt;"), "<");
    }

    #[test]
    fn hand_checked_intl() {
        assert_eq!(tokenize_intl("in 2023."), "in 2023.");
        assert_eq!(tokenize_intl("3,5 €"), "3,5 €");
        assert_eq!(tokenize_intl("l'été"), "l ' été");
    }
}
