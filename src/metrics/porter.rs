//! The Porter stemmer as published (M. F. Porter, "An algorithm for suffix stripping", 1980), in
//! the form NLTK's `PorterStemmer(mode="ORIGINAL_ALGORITHM")` runs it, which py-rouge uses.
//!
//! Conventions that decide edge cases (they follow NLTK's reading of the paper):
//! - a, e, i, o, u are vowels; `y` is a vowel after a consonant and a consonant at the start of a
//!   word or after a vowel; every other character (digits and `_` included) is a consonant;
//! - within a step the rules are tried in the paper's order and the *first rule whose suffix
//!   matches* decides: when its condition fails, the step leaves the word unchanged;
//! - step 2 has the paper's `ABLI → ABLE` (not the later `BLI → BLE`) and no `LOGI` rule;
//! - step 1c is the paper's `(*v*) Y → I`.
//!
//! Words are expected in lowercase ASCII; any other byte counts as a consonant.

fn consonant_flags(w: &[u8]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let cons = match c {
            b'a' | b'e' | b'i' | b'o' | b'u' => false,
            b'y' => i == 0 || !flags[i - 1],
            _ => true,
        };
        flags.push(cons);
    }
    flags
}

/// m in `[C](VC)^m[V]`: the number of vowel-to-consonant transitions.
fn measure(w: &[u8]) -> usize {
    consonant_flags(w).windows(2).filter(|p| !p[0] && p[1]).count()
}

fn has_vowel(w: &[u8]) -> bool {
    consonant_flags(w).iter().any(|&c| !c)
}

/// `*d`: ends with two equal consonants.
fn ends_double_consonant(w: &[u8]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && consonant_flags(w)[n - 1]
}

/// `*o`: ends consonant-vowel-consonant, the last not w, x or y.
fn ends_cvc(w: &[u8]) -> bool {
    let n = w.len();
    if n < 3 {
        return false;
    }
    let f = consonant_flags(w);
    f[n - 3] && !f[n - 2] && f[n - 1] && !matches!(w[n - 1], b'w' | b'x' | b'y')
}

type Condition = fn(&[u8]) -> bool;

fn m_positive(s: &[u8]) -> bool {
    measure(s) > 0
}

fn m_above_one(s: &[u8]) -> bool {
    measure(s) > 1
}

fn m_above_one_and_s_or_t(s: &[u8]) -> bool {
    measure(s) > 1 && matches!(s.last(), Some(b's' | b't'))
}

/// The first rule whose suffix matches decides; `None` when no suffix matches.
fn first_rule(w: &[u8], rules: &[(&str, &str, Condition)]) -> Option<Vec<u8>> {
    let (suffix, replacement, cond) = rules.iter().find(|(suffix, _, _)| w.ends_with(suffix.as_bytes()))?;
    let stem = &w[..w.len() - suffix.len()];
    Some(if cond(stem) { [stem, replacement.as_bytes()].concat() } else { w.to_vec() })
}

fn apply(w: Vec<u8>, rules: &[(&str, &str, Condition)]) -> Vec<u8> {
    first_rule(&w, rules).unwrap_or(w)
}

fn always(_: &[u8]) -> bool {
    true
}

fn step1a(w: Vec<u8>) -> Vec<u8> {
    apply(w, &[("sses", "ss", always), ("ies", "i", always), ("ss", "ss", always), ("s", "", always)])
}

fn step1b(w: Vec<u8>) -> Vec<u8> {
    if w.ends_with(b"eed") {
        let stem = &w[..w.len() - 3];
        return if measure(stem) > 0 { [stem, b"ee"].concat() } else { w };
    }
    let Some(stem) = [&b"ed"[..], b"ing"].iter().find_map(|s| w.strip_suffix(*s).filter(|stem| has_vowel(stem))) else {
        return w;
    };
    let stem = stem.to_vec();
    if let Some(v) = first_rule(&stem, &[("at", "ate", always), ("bl", "ble", always), ("iz", "ize", always)]) {
        return v;
    }
    if ends_double_consonant(&stem) {
        let last = stem[stem.len() - 1];
        return if matches!(last, b'l' | b's' | b'z') { stem } else { stem[..stem.len() - 1].to_vec() };
    }
    if measure(&stem) == 1 && ends_cvc(&stem) {
        return [&stem[..], b"e"].concat();
    }
    stem
}

fn step1c(w: Vec<u8>) -> Vec<u8> {
    apply(w, &[("y", "i", has_vowel)])
}

fn step2(w: Vec<u8>) -> Vec<u8> {
    let p: Condition = m_positive;
    apply(
        w,
        &[
            ("ational", "ate", p),
            ("tional", "tion", p),
            ("enci", "ence", p),
            ("anci", "ance", p),
            ("izer", "ize", p),
            ("abli", "able", p),
            ("alli", "al", p),
            ("entli", "ent", p),
            ("eli", "e", p),
            ("ousli", "ous", p),
            ("ization", "ize", p),
            ("ation", "ate", p),
            ("ator", "ate", p),
            ("alism", "al", p),
            ("iveness", "ive", p),
            ("fulness", "ful", p),
            ("ousness", "ous", p),
            ("aliti", "al", p),
            ("iviti", "ive", p),
            ("biliti", "ble", p),
        ],
    )
}

fn step3(w: Vec<u8>) -> Vec<u8> {
    let p: Condition = m_positive;
    apply(
        w,
        &[("icate", "ic", p), ("ative", "", p), ("alize", "al", p), ("iciti", "ic", p), ("ical", "ic", p), ("ful", "", p), ("ness", "", p)],
    )
}

fn step4(w: Vec<u8>) -> Vec<u8> {
    let q: Condition = m_above_one;
    let rules: [(&str, &str, Condition); 19] = [
        ("al", "", q),
        ("ance", "", q),
        ("ence", "", q),
        ("er", "", q),
        ("ic", "", q),
        ("able", "", q),
        ("ible", "", q),
        ("ant", "", q),
        ("ement", "", q),
        ("ment", "", q),
        ("ent", "", q),
        ("ion", "", m_above_one_and_s_or_t),
        ("ou", "", q),
        ("ism", "", q),
        ("ate", "", q),
        ("iti", "", q),
        ("ous", "", q),
        ("ive", "", q),
        ("ize", "", q),
    ];
    apply(w, &rules)
}

fn step5(w: Vec<u8>) -> Vec<u8> {
    let w = match w.strip_suffix(b"e") {
        Some(stem) if measure(stem) > 1 || (measure(stem) == 1 && !ends_cvc(stem)) => stem.to_vec(),
        _ => w,
    };
    if w.ends_with(b"ll") && measure(&w[..w.len() - 1]) > 1 {
        return w[..w.len() - 1].to_vec();
    }
    w
}

/// The stem of a lowercase word.
pub fn stem(word: &str) -> String {
    let w = word.as_bytes().to_vec();
    let w = step5(step4(step3(step2(step1c(step1b(step1a(w)))))));
    String::from_utf8(w).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_papers_examples() {
        // The examples printed beside each rule in Porter (1980).
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("cats", "cat"),
            ("feed", "feed"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("bled", "bled"),
            ("motoring", "motor"),
            ("sing", "sing"),
            ("conflated", "conflat"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("sky", "sky"),
            ("relational", "relat"),
            ("conditional", "condit"),
            ("rational", "ration"),
            ("triplicate", "triplic"),
            ("formative", "form"),
            ("hopefulness", "hope"),
            ("revival", "reviv"),
            ("allowance", "allow"),
            ("adjustment", "adjust"),
            ("adoption", "adopt"),
            ("probate", "probat"),
            ("rate", "rate"),
            ("cease", "ceas"),
            ("controlling", "control"),
            ("roll", "roll"),
            ("generalizations", "gener"),
            ("oscillators", "oscil"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }

    #[test]
    fn measure_and_y() {
        assert_eq!([measure(b"tr"), measure(b"tree"), measure(b"by")], [0, 0, 0]);
        assert_eq!([measure(b"trouble"), measure(b"oats"), measure(b"ivy")], [1, 1, 1]);
        assert_eq!([measure(b"troubles"), measure(b"private"), measure(b"orrery")], [2, 2, 2]);
        // `y` after a vowel is a consonant: "toy" = t o y = c v c.
        assert_eq!(consonant_flags(b"toy"), [true, false, true]);
        assert_eq!(consonant_flags(b"syzygy"), [true, false, true, false, true, false]);
    }
}
