//! Corpus BLEU with the exact arithmetic of sacreBLEU 2.x `corpus_bleu(hyps, [refs])` defaults:
//! n-grams up to 4, one reference per segment, brevity penalty, smoothing "exp" (the NIST / mteval
//! rule: the k-th order with no match counts as 1/2^k matches), effective order off.
//!
//! Sufficient statistics (`BleuStats`) are plain integer counts, so per-shard or per-batch results
//! merge exactly by addition before the score is taken, as the paper's code does across GPUs.

use super::tokenize::py_rstrip;
use super::Tokenize;
use serde::Serialize;
use std::collections::HashMap;
use std::ops::AddAssign;

/// Highest n-gram order (sacreBLEU's `MAX_NGRAM_ORDER`).
pub const MAX_ORDER: usize = 4;

/// Integer statistics of one segment or of a whole corpus; add them to merge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BleuStats {
    /// Hypothesis length in tokens.
    pub sys_len: u64,
    /// Reference length in tokens.
    pub ref_len: u64,
    /// Clipped n-gram matches for n = 1..=4.
    pub correct: [u64; MAX_ORDER],
    /// Hypothesis n-grams for n = 1..=4.
    pub total: [u64; MAX_ORDER],
}

/// A corpus BLEU result, on sacreBLEU's 0..100 scale.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BleuScore {
    pub score: f64,
    /// Modified n-gram precisions in percent (smoothed where there was no match).
    pub precisions: [f64; MAX_ORDER],
    /// Brevity penalty.
    pub bp: f64,
    pub sys_len: u64,
    pub ref_len: u64,
    /// The raw counts the score came from, for merging with other shards.
    pub stats: BleuStats,
}

impl BleuScore {
    /// Hypothesis/reference length ratio, 0 when there is no reference text (as sacreBLEU).
    pub fn ratio(&self) -> f64 {
        if self.ref_len == 0 {
            0.0
        } else {
            self.sys_len as f64 / self.ref_len as f64
        }
    }
}

/// What sacreBLEU does to every segment before counting: optional `str.lower()`, then
/// `rstrip()`, then the tokenizer.
pub fn preprocess(segment: &str, tokenize: Tokenize, lowercase: bool) -> String {
    if lowercase {
        tokenize.apply(py_rstrip(&segment.to_lowercase()))
    } else {
        tokenize.apply(py_rstrip(segment))
    }
}

fn ngram_counts<'t, 's>(tokens: &'t [&'s str]) -> HashMap<&'t [&'s str], u64> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_ORDER.min(tokens.len()) {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

impl BleuStats {
    /// Statistics of already tokenized text (whitespace-separated tokens).
    pub fn from_tokenized(hyp: &str, reference: &str) -> Self {
        let hyp_tokens: Vec<&str> = super::tokenize::py_split(hyp).collect();
        let ref_tokens: Vec<&str> = super::tokenize::py_split(reference).collect();
        let ref_counts = ngram_counts(&ref_tokens);
        let mut stats = BleuStats { sys_len: hyp_tokens.len() as u64, ref_len: ref_tokens.len() as u64, ..Default::default() };
        for (gram, hyp_count) in ngram_counts(&hyp_tokens) {
            let order = gram.len() - 1;
            stats.total[order] += hyp_count;
            // Clipping: a hypothesis n-gram earns at most as many matches as the reference has.
            stats.correct[order] += hyp_count.min(ref_counts.get(gram).copied().unwrap_or(0));
        }
        stats
    }

    /// Statistics of one raw (untokenized) segment pair.
    pub fn from_segment(hyp: &str, reference: &str, tokenize: Tokenize, lowercase: bool) -> Self {
        Self::from_tokenized(&preprocess(hyp, tokenize, lowercase), &preprocess(reference, tokenize, lowercase))
    }

    /// The score of these statistics (sacreBLEU `BLEU.compute_bleu` with smoothing "exp").
    pub fn score(&self) -> BleuScore {
        let (sys_len, ref_len) = (self.sys_len, self.ref_len);
        let bp = if sys_len >= ref_len {
            1.0
        } else if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        };
        let mut precisions = [0.0f64; MAX_ORDER];
        let result = |score, precisions| BleuScore { score, precisions, bp, sys_len, ref_len, stats: *self };
        if self.correct.iter().all(|&c| c == 0) {
            return result(0.0, precisions);
        }
        let mut smooth = 1.0f64;
        // Indexing keeps the three per-order arrays visibly in lockstep.
        #[allow(clippy::needless_range_loop)]
        for n in 0..MAX_ORDER {
            let (correct, total) = (self.correct[n], self.total[n]);
            // No n-grams of this order at all: this and the higher precisions stay 0, which
            // makes the score 0 (sentences shorter than 4 tokens everywhere).
            if total == 0 {
                break;
            }
            precisions[n] = if correct == 0 {
                smooth *= 2.0;
                100.0 / (smooth * total as f64)
            } else {
                100.0 * correct as f64 / total as f64
            };
        }
        // sacreBLEU floors log(0) at this constant instead of -inf; summing left to right
        // from 0 keeps the float result identical to Python's `sum`.
        let log_sum = precisions.iter().fold(0.0f64, |acc, &p| acc + if p == 0.0 { -9_999_999_999.0 } else { p.ln() });
        result(bp * (log_sum / MAX_ORDER as f64).exp(), precisions)
    }
}

impl AddAssign for BleuStats {
    fn add_assign(&mut self, other: Self) {
        self.sys_len += other.sys_len;
        self.ref_len += other.ref_len;
        for n in 0..MAX_ORDER {
            self.correct[n] += other.correct[n];
            self.total[n] += other.total[n];
        }
    }
}

impl std::iter::Sum for BleuStats {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |mut acc, s| {
            acc += s;
            acc
        })
    }
}

/// Corpus BLEU of (hypothesis, reference) pairs.
pub fn corpus_bleu<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>, tokenize: Tokenize, lowercase: bool) -> BleuScore {
    pairs.into_iter().map(|(h, r)| BleuStats::from_segment(h, r, tokenize, lowercase)).sum::<BleuStats>().score()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_text_scores_100() {
        let s = corpus_bleu([("a b c d e", "a b c d e")], Tokenize::Tok13a, false);
        assert!((s.score - 100.0).abs() < 1e-12);
        assert_eq!(s.stats.correct, [5, 4, 3, 2]);
    }

    #[test]
    fn hand_computed_smoothing_and_brevity() {
        // hyp "a b x" vs ref "a b c d": 1-grams 2/3, 2-grams 1/2, 3-grams 0/1 -> 100/(2*1),
        // no 4-grams -> loop stops, p4 = 0 -> score 0.
        let s = BleuStats::from_tokenized("a b x", "a b c d");
        assert_eq!((s.correct, s.total), ([2, 1, 0, 0], [3, 2, 1, 0]));
        assert_eq!(s.score().score, 0.0);
        // Five tokens, one trigram and no 4-gram match: 1/2 then 1/4 smoothing.
        let s = BleuStats::from_tokenized("a b c x y", "a b c d y e");
        assert_eq!((s.correct, s.total), ([4, 2, 1, 0], [5, 4, 3, 2]));
        let p = [80.0f64, 50.0, 100.0 / 3.0, 100.0 / (2.0 * 2.0)];
        let bp = (1.0f64 - 6.0 / 5.0).exp();
        let expect = bp * ((p[0].ln() + p[1].ln() + p[2].ln() + p[3].ln()) / 4.0).exp();
        assert!((s.score().score - expect).abs() < 1e-12 * expect);
    }

    #[test]
    fn clipping_limits_repeated_ngrams() {
        let s = BleuStats::from_tokenized("the the the", "the cat");
        assert_eq!(s.correct[0], 1);
        assert_eq!(s.total[0], 3);
    }
}
