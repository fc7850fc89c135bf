//! `dlm-engine eval`: score hypotheses against references with BLEU, ROUGE-L, exact match or the
//! last-integer match, overall and, with `--group-key`, per group with the groups' macro average.
//!
//! Inputs are plain text (one sentence per line) or the JSONL that `sample` writes (one object
//! per line with `hyp` and `tgt`). A file counts as JSONL when its first non-empty line is a JSON
//! object with a `hyp` or `tgt` field; from then on every non-empty line must be such an object,
//! so a damaged JSONL file is an error naming the line rather than being scored as plain text.

use crate::metrics;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The long `--help` text; `cli/mod.rs` attaches it to the subcommand, because the variant's
/// doc comment there would otherwise replace a `long_about` set on this struct.
pub const LONG_ABOUT: &str = "Score hypotheses against references, line by line.\n\n\
BLEU is corpus BLEU computed exactly as sacreBLEU 2.x `corpus_bleu` with default settings (4-grams, \
brevity penalty, smoothing \"exp\", one reference). ROUGE-L is the mean F-measure of the Python \
rouge-score package (no stemming); rouge-l-py is the mean F of the paper's scorer, py-rouge with \
its defaults (Porter stemming, 665-character limit, lines as sentences), except its table of \
irregular word forms unless --rouge-table gives it. Exact match is the percentage of lines equal after stripping \
surrounding whitespace; with --lowercase it is the paper's exact match (lowercase and strip, as \
for MMLU, BBH and TyDiQA). last-integer is the percentage of lines whose last integer equals the \
reference's, as the paper scores GSM8K/MGSM: digits with optional `,` groups (1,234 is 1234), any \
script's decimal digits, no sign (-5 counts as 5), a line without an integer matching only another \
line without one. All print on a 0-100 scale.\n\n\
--group-key FIELD scores every group of lines apart (as the paper reports BBH per subtask and \
TyDiQA per language) and prints each group's score and their unweighted mean (macro average) \
after the overall score. FIELD is read from each --hyp JSONL record (`sample` copies the input \
records' other fields, e.g. a `task` field, into its output), or from the --ref JSONL records \
when --hyp is plain text; a line without it is an error.\n\n\
Each FILE is plain text (one sentence per line; an empty line is an empty sentence) or the JSONL \
written by `dlm-engine sample` (one object per line with fields `hyp` and `tgt`; empty lines are \
skipped). With a JSONL --hyp file and no --ref, references are the `tgt` fields.\n\n\
The paper lowercases hypotheses and references before BLEU: pass --lowercase to do the same \
(IWSLT14: --tokenize 13a, WMT14: --tokenize intl).";

#[derive(ClapArgs, Debug)]
#[command(after_help = "Examples:\n  dlm-engine eval --hyp samples.jsonl --metric bleu --lowercase\n  \
dlm-engine eval --hyp out.txt --ref test.en --metric rouge-l --json\n  \
dlm-engine eval --hyp bbh.jsonl --metric exact --lowercase --group-key task\n  \
dlm-engine eval --hyp gsm8k.jsonl --metric last-integer")]
pub struct Args {
    /// Hypotheses: plain text, or JSONL from `sample` (field `hyp`).
    #[arg(long, value_name = "FILE")]
    pub hyp: PathBuf,

    /// References: plain text, or JSONL (field `tgt`). Default: the `tgt` fields of a JSONL --hyp.
    #[arg(long = "ref", value_name = "FILE")]
    pub reference: Option<PathBuf>,

    #[command(flatten)]
    pub score: super::args::ScoreArgs,

    /// Also score each group of lines apart and print the groups' macro average; FIELD is read
    /// from the --hyp JSONL records (from --ref's when --hyp is plain text).
    #[arg(long, value_name = "FIELD")]
    pub group_key: Option<String>,

    /// With rouge-l-py: a table of word forms consulted before stemming, lines `word|form`
    /// (repeatable). py-rouge's own two files (wordnet_key_value.txt and
    /// wordnet_key_value_special_cases.txt in its package directory) make the score py-rouge's.
    #[arg(long, value_name = "FILE")]
    pub rouge_table: Vec<PathBuf>,

    /// Print one JSON object, e.g. {"bleu": 35.78, ...}, instead of a readable line (with
    /// --group-key it gains "groups": {NAME: {...}} and "macro").
    #[arg(long)]
    pub json: bool,
}

/// A loaded input file: its sentences, or its JSON records with their 1-based line numbers.
enum Loaded {
    Plain(Vec<String>),
    Jsonl(Vec<(usize, Map<String, Value>)>),
}

/// Reads a file as UTF-8 lines. A final newline does not start another (empty) line; a '\r'
/// before '\n' is dropped so that Windows files read the same.
fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..valid].iter().filter(|&&b| b == b'\n').count();
            bail!("{} line {line}: not valid UTF-8", path.display());
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    Ok(body.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned()).collect())
}

fn as_record(line: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn load(path: &Path) -> Result<Loaded> {
    let lines = read_lines(path)?;
    let first = lines.iter().find(|l| !l.trim().is_empty());
    let is_jsonl = first.and_then(|l| as_record(l.trim())).is_some_and(|m| m.contains_key("hyp") || m.contains_key("tgt"));
    if !is_jsonl {
        if lines.is_empty() {
            bail!("{}: empty file, nothing to score", path.display());
        }
        return Ok(Loaded::Plain(lines));
    }
    let mut records = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => records.push((i + 1, map)),
            Ok(_) => bail!("{} line {}: expected a JSON object like the lines before it", path.display(), i + 1),
            Err(e) => bail!("{} line {}: invalid JSON ({e})", path.display(), i + 1),
        }
    }
    Ok(Loaded::Jsonl(records))
}

/// The string field `name` of every record.
fn field(records: &[(usize, Map<String, Value>)], name: &str, path: &Path) -> Result<Vec<String>> {
    records
        .iter()
        .map(|(line, map)| match map.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => bail!("{} line {line}: field `{name}` is not a string (found {other})", path.display()),
            None => bail!("{} line {line}: missing field `{name}`", path.display()),
        })
        .collect()
}

fn describe(loaded: &Loaded) -> &'static str {
    match loaded {
        Loaded::Plain(_) => "lines",
        Loaded::Jsonl(_) => "JSON records",
    }
}

/// Each record's group label: the field `name` as text (a string, or a number or boolean as JSON
/// writes it).
fn group_field(records: &[(usize, Map<String, Value>)], name: &str, path: &Path) -> Result<Vec<String>> {
    records
        .iter()
        .map(|(line, map)| match map.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
            Some(other) => {
                bail!("{} line {line}: field `{name}` (--group-key) must be a string or a number, found {other}", path.display())
            }
            None => bail!("{} line {line}: missing field `{name}` (--group-key)", path.display()),
        })
        .collect()
}

/// Hypotheses, references and, with `--group-key`, each line's group.
struct Pairs {
    hyps: Vec<String>,
    refs: Vec<String>,
    groups: Option<Vec<String>>,
}

/// Reads the hypotheses and the references the arguments point at.
fn load_pairs(args: &Args) -> Result<Pairs> {
    let hyp_file = load(&args.hyp)?;
    let hyps = match &hyp_file {
        Loaded::Plain(lines) => lines.clone(),
        Loaded::Jsonl(records) => field(records, "hyp", &args.hyp)?,
    };
    let mut groups = None;
    if let (Some(key), Loaded::Jsonl(records)) = (&args.group_key, &hyp_file) {
        groups = Some(group_field(records, key, &args.hyp)?);
    }
    let (refs, ref_kind, ref_path) = match &args.reference {
        Some(path) => {
            let ref_file = load(path)?;
            let refs = match &ref_file {
                Loaded::Plain(lines) => lines.clone(),
                Loaded::Jsonl(records) => field(records, "tgt", path)?,
            };
            if let (Some(key), None) = (&args.group_key, &groups) {
                match &ref_file {
                    Loaded::Jsonl(records) => groups = Some(group_field(records, key, path)?),
                    Loaded::Plain(_) => bail!(
                        "--group-key {key}: {} and {} are plain text; the field must come from JSONL records",
                        args.hyp.display(),
                        path.display()
                    ),
                }
            }
            (refs, describe(&ref_file), path.as_path())
        }
        // Same records as the hypotheses, so the counts agree by construction.
        None => match &hyp_file {
            Loaded::Jsonl(records) => (field(records, "tgt", &args.hyp)?, describe(&hyp_file), args.hyp.as_path()),
            Loaded::Plain(_) => bail!(
                "--ref is required: {} is plain text, and only JSONL from `sample` carries references (field `tgt`)",
                args.hyp.display()
            ),
        },
    };
    if hyps.len() != refs.len() {
        bail!(
            "--hyp {} has {} {} but --ref {} has {} {}",
            args.hyp.display(),
            hyps.len(),
            describe(&hyp_file),
            ref_path.display(),
            refs.len(),
            ref_kind
        );
    }
    if hyps.is_empty() {
        bail!("{}: no records to score", args.hyp.display());
    }
    Ok(Pairs { hyps, refs, groups })
}

pub fn run(args: Args) -> Result<()> {
    let s = &args.score;
    if !args.rouge_table.is_empty() && s.metric != metrics::Metric::RougeLPy {
        bail!("--rouge-table is for --metric rouge-l-py");
    }
    let table = metrics::rouge_py::read_word_tables(&args.rouge_table)?;
    let scorer = metrics::Scorer { metric: s.metric, tokenize: s.tokenize, lowercase: s.lowercase, word_table: Some(&table) };
    let Pairs { hyps, refs, groups } = load_pairs(&args)?;
    match (groups, &args.group_key) {
        (Some(groups), Some(key)) => {
            let g = metrics::group::grouped_report(&hyps, &refs, &groups, &scorer)?;
            if args.json {
                crate::outln!("{}", g.to_json(key))?;
            } else {
                crate::outln!("{g}")?;
            }
        }
        _ => {
            let report = scorer.score(&hyps, &refs)?;
            if args.json {
                crate::outln!("{}", report.to_json())?;
            } else {
                crate::outln!("{report}")?;
            }
        }
    }
    Ok(())
}
