//! Evaluation metrics of the paper (docs/method.md §6): corpus BLEU as sacreBLEU computes it,
//! ROUGE-L F as the `rouge-score` package (`rouge.rs`) or the paper's py-rouge (`rouge_py.rs`)
//! computes it, exact match, and the last-integer match of
//! GSM8K/MGSM; `group` scores each group of lines apart and macro-averages them.
//!
//! All scores are reported on a 0..100 scale (BLEU's usual scale; ROUGE-L and exact match are
//! multiplied by 100, the way the paper's tables print them). `report` is the one entry point the
//! `eval` and `sample` commands share.
//!
//! Lowercasing (`lowercase = true`) applies to hypotheses and references alike; the paper's
//! decoding code lowercases both before scoring, although its sacreBLEU signature says "mixed".

pub mod bleu;
pub mod group;
pub mod last_integer;
pub mod porter;
pub mod rouge;
pub mod rouge_py;
pub mod tokenize;

use anyhow::{bail, Result};
use bleu::BleuScore;
use rouge::RougeLScore;
use serde::Serialize;
use serde_json::json;
use std::fmt;

/// Which metric to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Metric {
    /// Corpus BLEU (sacreBLEU defaults).
    Bleu,
    /// Mean ROUGE-L F-measure (rouge-score, no stemming).
    #[value(name = "rouge-l")]
    RougeL,
    /// Mean ROUGE-L F-measure as the paper's scorer py-rouge computes it by default (Porter
    /// stemming, 665-character limit, summary-level LCS over lines).
    #[value(name = "rouge-l-py")]
    RougeLPy,
    /// Percentage of lines equal after stripping surrounding whitespace (with --lowercase:
    /// the paper's normalisation, lowercase and strip).
    Exact,
    /// Percentage of lines whose last integer equals the reference's (GSM8K/MGSM).
    #[value(name = "last-integer")]
    LastInteger,
}

/// BLEU word tokenizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Tokenize {
    /// mteval-v13a (sacreBLEU's default; the paper's IWSLT14 setting).
    #[default]
    #[value(name = "13a")]
    Tok13a,
    /// mteval-v14 international: Unicode punctuation and symbols (the paper's WMT14 setting).
    Intl,
}

impl Tokenize {
    /// The name sacreBLEU prints in its signature.
    pub fn name(self) -> &'static str {
        match self {
            Tokenize::Tok13a => "13a",
            Tokenize::Intl => "intl",
        }
    }

    /// Tokenizes one line, returning space-separated tokens.
    pub fn apply(self, line: &str) -> String {
        match self {
            Tokenize::Tok13a => tokenize::tokenize_13a(line),
            Tokenize::Intl => tokenize::tokenize_intl(line),
        }
    }
}

/// Exact-match count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ExactScore {
    pub matches: usize,
    pub sentences: usize,
}

impl ExactScore {
    /// Matches as a percentage of lines; 0 for no lines.
    pub fn percent(&self) -> f64 {
        if self.sentences == 0 {
            0.0
        } else {
            100.0 * self.matches as f64 / self.sentences as f64
        }
    }
}

/// Counts lines where `hyp.strip() == ref.strip()` (Python's whitespace), after optional lowercasing.
pub fn exact_match<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>, lowercase: bool) -> ExactScore {
    let norm = |s: &str| -> String {
        if lowercase {
            tokenize::py_strip(&s.to_lowercase()).to_owned()
        } else {
            tokenize::py_strip(s).to_owned()
        }
    };
    let (mut matches, mut sentences) = (0, 0);
    for (h, r) in pairs {
        sentences += 1;
        matches += usize::from(norm(h) == norm(r));
    }
    ExactScore { matches, sentences }
}

/// The result of `report`: one metric with the settings that produced it.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricReport {
    Bleu {
        score: BleuScore,
        tokenize: Tokenize,
        lowercase: bool,
    },
    RougeL {
        score: RougeLScore,
        lowercase: bool,
    },
    /// `word_table`: the number of entries of the word-form table used (0: none).
    RougeLPy {
        score: RougeLScore,
        word_table: usize,
    },
    Exact {
        score: ExactScore,
        lowercase: bool,
    },
    LastInteger {
        score: ExactScore,
    },
}

impl MetricReport {
    /// The headline number on a 0..100 scale.
    pub fn value(&self) -> f64 {
        match self {
            MetricReport::Bleu { score, .. } => score.score,
            MetricReport::RougeL { score, .. } | MetricReport::RougeLPy { score, .. } => 100.0 * score.f,
            MetricReport::Exact { score, .. } | MetricReport::LastInteger { score } => score.percent(),
        }
    }

    /// The JSON key of the headline number: "bleu", "rouge_l", "rouge_l_py", "exact" or "last_integer".
    pub fn key(&self) -> &'static str {
        match self {
            MetricReport::Bleu { .. } => "bleu",
            MetricReport::RougeL { .. } => "rouge_l",
            MetricReport::RougeLPy { .. } => "rouge_l_py",
            MetricReport::Exact { .. } => "exact",
            MetricReport::LastInteger { .. } => "last_integer",
        }
    }

    /// One JSON object: the headline number under `key()` (full precision, 0..100), plus details
    /// under other keys.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = match self {
            MetricReport::Bleu { score, tokenize, lowercase } => json!({
                "tokenize": tokenize.name(),
                "lowercase": lowercase,
                "precisions": score.precisions,
                "bp": score.bp,
                "ratio": score.ratio(),
                "sys_len": score.sys_len,
                "ref_len": score.ref_len,
                "counts": score.stats.correct,
                "totals": score.stats.total,
            }),
            MetricReport::RougeL { score, lowercase } => json!({
                "precision": 100.0 * score.precision,
                "recall": 100.0 * score.recall,
                "sentences": score.sentences,
                "lowercase": lowercase,
                "tokenizer": "rouge-score default, no stemming",
            }),
            MetricReport::RougeLPy { score, word_table } => json!({
                "precision": 100.0 * score.precision,
                "recall": 100.0 * score.recall,
                "sentences": score.sentences,
                "tokenizer": "py-rouge defaults: Porter stemming, 665-character limit",
                "word_table_entries": word_table,
            }),
            MetricReport::Exact { score, lowercase } => json!({
                "matches": score.matches,
                "sentences": score.sentences,
                "lowercase": lowercase,
            }),
            MetricReport::LastInteger { score } => json!({
                "matches": score.matches,
                "sentences": score.sentences,
            }),
        };
        obj[self.key()] = json!(self.value());
        obj
    }
}

fn case_word(lowercase: bool) -> &'static str {
    if lowercase {
        "lowercased"
    } else {
        "cased"
    }
}

impl fmt::Display for MetricReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricReport::Bleu { score, tokenize, lowercase } => {
                let p = score.precisions;
                write!(
                    f,
                    "BLEU = {:.2} ({}, {}) {:.1}/{:.1}/{:.1}/{:.1} BP={:.3} ratio={:.3} hyp_len={} ref_len={}",
                    score.score,
                    tokenize.name(),
                    case_word(*lowercase),
                    p[0],
                    p[1],
                    p[2],
                    p[3],
                    score.bp,
                    score.ratio(),
                    score.sys_len,
                    score.ref_len
                )
            }
            MetricReport::RougeL { score, .. } => write!(
                f,
                "ROUGE-L = {:.2} (F1, mean of {} pairs) P={:.2} R={:.2} (rouge-score tokens, no stemming)",
                100.0 * score.f,
                score.sentences,
                100.0 * score.precision,
                100.0 * score.recall
            ),
            MetricReport::RougeLPy { score, word_table } => write!(
                f,
                "ROUGE-L = {:.2} (py-rouge, F of {} pairs) P={:.2} R={:.2} (Porter stemming, 665-character limit, {})",
                100.0 * score.f,
                score.sentences,
                100.0 * score.precision,
                100.0 * score.recall,
                match word_table {
                    0 => "no word-form table".to_string(),
                    n => format!("word-form table of {n}"),
                }
            ),
            MetricReport::Exact { score, lowercase } => {
                write!(f, "Exact = {:.2} ({}/{} lines, {})", score.percent(), score.matches, score.sentences, case_word(*lowercase))
            }
            MetricReport::LastInteger { score } => {
                write!(f, "Last-integer = {:.2} ({}/{} lines whose last integer matches)", score.percent(), score.matches, score.sentences)
            }
        }
    }
}

/// Scores hypotheses against references, line by line. `tokenize` only matters for BLEU;
/// `lowercase` changes nothing for ROUGE-L, whose tokenizers always lowercase.
pub fn report<S: AsRef<str>>(hyps: &[S], refs: &[S], metric: Metric, tokenize: Tokenize, lowercase: bool) -> Result<MetricReport> {
    Scorer { metric, tokenize, lowercase, word_table: None }.score(hyps, refs)
}

/// A metric with its settings.
#[derive(Clone, Copy, Debug)]
pub struct Scorer<'a> {
    pub metric: Metric,
    /// BLEU's tokenizer.
    pub tokenize: Tokenize,
    pub lowercase: bool,
    /// `rouge-l-py`: py-rouge's word-form table (word → form, consulted before stemming).
    pub word_table: Option<&'a rouge_py::WordTable>,
}

impl Scorer<'_> {
    pub fn score<S: AsRef<str>>(&self, hyps: &[S], refs: &[S]) -> Result<MetricReport> {
        if hyps.len() != refs.len() {
            bail!("{} hypotheses but {} references: they must pair up line by line", hyps.len(), refs.len());
        }
        if hyps.is_empty() {
            bail!("nothing to score: no hypotheses");
        }
        let (tokenize, lowercase) = (self.tokenize, self.lowercase);
        let pairs = || hyps.iter().zip(refs).map(|(h, r)| (h.as_ref(), r.as_ref()));
        Ok(match self.metric {
            Metric::Bleu => MetricReport::Bleu { score: bleu::corpus_bleu(pairs(), tokenize, lowercase), tokenize, lowercase },
            // rouge-score's tokenizer lowercases everything, so `lowercase` cannot change the result.
            Metric::RougeL => MetricReport::RougeL { score: rouge::corpus_rouge_l(pairs()), lowercase },
            // py-rouge lowercases too.
            Metric::RougeLPy => {
                let empty = rouge_py::WordTable::new();
                let table = self.word_table.unwrap_or(&empty);
                MetricReport::RougeLPy { score: rouge_py::rouge_l_py_with(pairs(), table), word_table: table.len() }
            }
            Metric::Exact => MetricReport::Exact { score: exact_match(pairs(), lowercase), lowercase },
            Metric::LastInteger => MetricReport::LastInteger { score: last_integer::last_integer_match(pairs()) },
        })
    }
}
