//! ROUGE-L F-measure (longest common subsequence, β = 1), matching the Python `rouge-score`
//! package: `RougeScorer(["rougeL"], use_stemmer=False)` scored pair by pair (target = reference)
//! and averaged over the corpus.
//!
//! Tokenization follows `rouge_score.tokenize`: `str.lower()`, every character outside ASCII
//! `[a-z0-9]` becomes a separator, no stemming. Text in other scripts (German umlauts, Chinese, …)
//! therefore loses those characters: "grüße" is the two tokens "gr" and "e". That is how
//! rouge-score behaves, and it is fine for the English Gigaword task this metric serves.
//!
//! The paper's scorer is py-rouge with its defaults, which stems, limits texts to 665 characters
//! and scores lines as sentences: `rouge_py.rs` (`--metric rouge-l-py`) implements it and lists
//! the differences.

use serde::Serialize;

/// Corpus ROUGE-L: per-pair values averaged over the corpus, in [0, 1] as rouge-score gives them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RougeLScore {
    /// Mean F-measure.
    pub f: f64,
    /// Mean precision (LCS / hypothesis tokens).
    pub precision: f64,
    /// Mean recall (LCS / reference tokens).
    pub recall: f64,
    /// Number of pairs averaged.
    pub sentences: usize,
}

/// One pair's precision, recall and F-measure, in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RougeLPair {
    pub precision: f64,
    pub recall: f64,
    pub f: f64,
}

/// `rouge_score.tokenize.tokenize(text, None)`.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Length of the longest common subsequence, with two rolling rows of the usual table.
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(cur[j]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L of one hypothesis against one reference.
pub fn rouge_l_pair(hyp: &str, reference: &str) -> RougeLPair {
    let hyp_tokens = rouge_tokens(hyp);
    let ref_tokens = rouge_tokens(reference);
    if hyp_tokens.is_empty() || ref_tokens.is_empty() {
        return RougeLPair { precision: 0.0, recall: 0.0, f: 0.0 };
    }
    let lcs = lcs_len(&ref_tokens, &hyp_tokens) as f64;
    let precision = lcs / hyp_tokens.len() as f64;
    let recall = lcs / ref_tokens.len() as f64;
    // Same operation order as rouge-score's `fmeasure`, so values agree to the last bit.
    let f = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    RougeLPair { precision, recall, f }
}

/// Mean ROUGE-L over (hypothesis, reference) pairs; all zeros for an empty corpus.
pub fn corpus_rouge_l<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> RougeLScore {
    let (mut f, mut precision, mut recall, mut sentences) = (0.0, 0.0, 0.0, 0usize);
    for (h, r) in pairs {
        let p = rouge_l_pair(h, r);
        f += p.f;
        precision += p.precision;
        recall += p.recall;
        sentences += 1;
    }
    let n = sentences.max(1) as f64;
    RougeLScore { f: f / n, precision: precision / n, recall: recall / n, sentences }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_pair() {
        // LCS of "a b c d" and "a c d e" is "a c d": P = 3/4, R = 3/4, F = 3/4.
        let p = rouge_l_pair("a c d e", "a b c d");
        assert_eq!(p.f, 0.75);
        // LCS of "the cat sat" (hyp) vs "cat the sat down" (ref) has length 2: P = 2/3, R = 1/2.
        let p = rouge_l_pair("the cat sat", "cat the sat down");
        assert!((p.precision - 2.0 / 3.0).abs() < 1e-15 && p.recall == 0.5);
        assert!((p.f - 2.0 * (2.0 / 3.0) * 0.5 / (2.0 / 3.0 + 0.5)).abs() < 1e-15);
    }

    #[test]
    fn tokens_drop_non_ascii() {
        assert_eq!(rouge_tokens("Grüße, WORLD-2!"), ["gr", "e", "world", "2"]);
        assert!(rouge_tokens("中文").is_empty());
    }
}
