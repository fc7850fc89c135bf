//! `dlm-engine eval`: score hypotheses against references with BLEU, ROUGE-L or exact match.
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
rouge-score package (no stemming). Exact match is the percentage of lines equal after stripping \
surrounding whitespace. All three print on a 0-100 scale.\n\n\
Each FILE is plain text (one sentence per line; an empty line is an empty sentence) or the JSONL \
written by `dlm-engine sample` (one object per line with fields `hyp` and `tgt`; empty lines are \
skipped). With a JSONL --hyp file and no --ref, references are the `tgt` fields.\n\n\
The paper lowercases hypotheses and references before BLEU: pass --lowercase to do the same \
(IWSLT14: --tokenize 13a, WMT14: --tokenize intl).";

#[derive(ClapArgs, Debug)]
#[command(after_help = "Examples:\n  dlm-engine eval --hyp samples.jsonl --metric bleu --lowercase\n  \
dlm-engine eval --hyp out.txt --ref test.en --metric rouge-l --json")]
pub struct Args {
    /// Hypotheses: plain text, or JSONL from `sample` (field `hyp`).
    #[arg(long, value_name = "FILE")]
    pub hyp: PathBuf,

    /// References: plain text, or JSONL (field `tgt`). Default: the `tgt` fields of a JSONL --hyp.
    #[arg(long = "ref", value_name = "FILE")]
    pub reference: Option<PathBuf>,

    #[command(flatten)]
    pub score: super::args::ScoreArgs,

    /// Print one JSON object, e.g. {"bleu": 35.78, ...}, instead of a readable line.
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

/// Reads the hypotheses and the references the arguments point at.
fn load_pairs(args: &Args) -> Result<(Vec<String>, Vec<String>)> {
    let hyp_file = load(&args.hyp)?;
    let hyps = match &hyp_file {
        Loaded::Plain(lines) => lines.clone(),
        Loaded::Jsonl(records) => field(records, "hyp", &args.hyp)?,
    };
    let (refs, ref_kind, ref_path) = match &args.reference {
        Some(path) => {
            let ref_file = load(path)?;
            let refs = match &ref_file {
                Loaded::Plain(lines) => lines.clone(),
                Loaded::Jsonl(records) => field(records, "tgt", path)?,
            };
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
    Ok((hyps, refs))
}

pub fn run(args: Args) -> Result<()> {
    let (hyps, refs) = load_pairs(&args)?;
    let report = metrics::report(&hyps, &refs, args.score.metric, args.score.tokenize, args.score.lowercase)?;
    if args.json {
        crate::outln!("{}", report.to_json())?;
    } else {
        crate::outln!("{report}")?;
    }
    Ok(())
}
