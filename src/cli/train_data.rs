//! `train`'s data flags: `--train FILE[:RATIO]` (repeatable), `--overlong`, `--batch-size` /
//! `--max-tokens`. Builds the batch source the trainer pulls from: the files concatenated into
//! one length-planned set of batches, or, when ratios are given, a per-sequence ratio mixture
//! (`data::mixture`).

use super::args::DataArgs;
use crate::data::batch::{Budget, ExampleBatches};
use crate::data::jsonl::read_jsonl;
use crate::data::layout::{build_examples, Overlong};
use crate::data::mixture::{Mixture, Source};
use crate::tokenizer::Tok;
use crate::train::BatchSource;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// What to do with a pair longer than `--max-len`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverlongArg {
    /// Remove the pair (fairseq's rule for task training); counted per file.
    #[default]
    Drop,
    /// Flan's rule: the target is cut to its last --max-len tokens, then the sequence
    /// `[<s>] source target [</s>]` keeps its last --max-len tokens, so the prompt loses its
    /// beginning (`<s>` included); counted per file.
    TruncateLeft,
}

impl From<OverlongArg> for Overlong {
    fn from(o: OverlongArg) -> Self {
        match o {
            OverlongArg::Drop => Overlong::Drop,
            OverlongArg::TruncateLeft => Overlong::Truncate,
        }
    }
}

/// One `--train` argument: a file and, for a mixture, its ratio.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSpec {
    pub path: PathBuf,
    pub ratio: Option<f64>,
}

/// Parses `FILE` or `FILE:RATIO`. An argument naming an existing file is that file even when it
/// holds a colon; otherwise the text after the last colon must be a positive number.
pub fn parse_spec(arg: &str) -> Result<TrainSpec> {
    if Path::new(arg).is_file() {
        return Ok(TrainSpec { path: arg.into(), ratio: None });
    }
    let Some((file, ratio)) = arg.rsplit_once(':') else {
        return Ok(TrainSpec { path: arg.into(), ratio: None });
    };
    let value: f64 =
        ratio.trim().parse().map_err(|_| anyhow::anyhow!("--train {arg}: the ratio `{ratio}` after the last `:` is not a number"))?;
    if !(value.is_finite() && value > 0.0) {
        bail!("--train {arg}: the ratio must be a positive number, got {ratio}");
    }
    if file.is_empty() {
        bail!("--train {arg}: no file before the ratio");
    }
    Ok(TrainSpec { path: file.into(), ratio: Some(value) })
}

/// Parses every `--train` argument: either all have a ratio or none has.
pub fn parse_specs(args: &[String]) -> Result<Vec<TrainSpec>> {
    let specs = args.iter().map(|a| parse_spec(a)).collect::<Result<Vec<_>>>()?;
    let with: Vec<&String> = args.iter().zip(&specs).filter(|(_, s)| s.ratio.is_some()).map(|(a, _)| a).collect();
    if !with.is_empty() && with.len() < specs.len() {
        let without: Vec<String> = specs.iter().filter(|s| s.ratio.is_none()).map(|s| s.path.display().to_string()).collect();
        bail!(
            "--train: give a ratio for every file or for none (ratios were given for {} but not for {})",
            with.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            without.join(", ")
        );
    }
    Ok(specs)
}

/// The ratios normalised to sum to 1, when the specs have them.
pub fn normalised_ratios(specs: &[TrainSpec]) -> Option<Vec<f64>> {
    let ratios: Option<Vec<f64>> = specs.iter().map(|s| s.ratio).collect();
    ratios.map(|r| {
        let total: f64 = r.iter().sum();
        r.iter().map(|v| v / total).collect()
    })
}

/// The training data, ready for the trainer.
pub struct TrainingData {
    pub source: Box<dyn BatchSource>,
    /// One line saying how batches are made (for the start-of-run message).
    pub note: String,
    pub examples: usize,
    /// Per-file lines for the training log (examples, over-long pairs, skipped lines), printed
    /// once every setting has been checked.
    pub log: Vec<String>,
}

/// Reads, lays out and batches the `--train` files; counts each file's examples and over-long
/// pairs dropped or truncated for the log.
pub fn load(
    tok: &Tok,
    specs: &[TrainSpec],
    data: &DataArgs,
    max_len: usize,
    overlong: OverlongArg,
    budget: Budget,
    seed: u64,
) -> Result<TrainingData> {
    let mut sources = Vec::with_capacity(specs.len());
    let mut log = Vec::new();
    for spec in specs {
        let file = read_jsonl(&spec.path, &data.jsonl(true))?;
        let name = spec.path.display().to_string();
        if file.skips.skipped > 0 {
            eprintln!(
                "{name}: skipped {} bad training line(s); first: {}",
                file.skips.skipped,
                file.skips.first_reasons.first().cloned().unwrap_or_default()
            );
        }
        let laid = build_examples(tok, &file.records, max_len, overlong.into())?;
        let over = match overlong {
            OverlongArg::Drop => format!("{} dropped", laid.dropped),
            OverlongArg::TruncateLeft => format!("{} truncated from the left", laid.truncated),
        };
        log.push(format!("{name}: {} examples ({over} as longer than {max_len} tokens)", laid.examples.len()));
        if spec.ratio.is_some() && laid.examples.is_empty() {
            let hint = if overlong == OverlongArg::Drop { "; --overlong truncate-left keeps over-long pairs" } else { "" };
            bail!("{name}: no usable training examples, so it cannot be sampled by ratio{hint}");
        }
        sources.push(Source { name, examples: laid.examples, weight: spec.ratio.unwrap_or(1.0) });
    }
    let examples: usize = sources.iter().map(|s| s.examples.len()).sum();
    if examples == 0 {
        bail!("no usable training examples in {}", specs.iter().map(|s| s.path.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    if normalised_ratios(specs).is_some() {
        let mixture = Mixture::new(sources, budget, seed)?;
        let shares: Vec<String> =
            mixture.sources().iter().zip(mixture.ratios()).map(|(s, r)| format!("{} {:.1}%", s.name, 100.0 * r)).collect();
        let note = format!("each sequence drawn by ratio from {}", shares.join(", "));
        return Ok(TrainingData { source: Box::new(mixture), note, examples, log });
    }
    let all: Vec<_> = sources.into_iter().flat_map(|s| s.examples).collect();
    let batches = ExampleBatches::with_budget(all, budget, seed)?;
    let note = format!("{} batches per epoch", batches.sampler().num_batches());
    Ok(TrainingData { source: Box::new(batches), note, examples, log })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_files_and_ratios() {
        assert_eq!(parse_spec("a.jsonl").unwrap(), TrainSpec { path: "a.jsonl".into(), ratio: None });
        assert_eq!(parse_spec("dir/a.jsonl:0.7").unwrap(), TrainSpec { path: "dir/a.jsonl".into(), ratio: Some(0.7) });
        assert_eq!(parse_spec("x:y.jsonl:3").unwrap(), TrainSpec { path: "x:y.jsonl".into(), ratio: Some(3.0) });
        for (bad, needle) in [
            ("a.jsonl:abc", "not a number"),
            ("a.jsonl:0", "positive"),
            ("a.jsonl:-1", "positive"),
            ("a.jsonl:inf", "positive"),
            (":1", "no file"),
        ] {
            let e = parse_spec(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(needle), "{bad}: {e}");
        }
        // An existing file whose name holds a colon is that file.
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a:b");
        std::fs::write(&odd, "").unwrap();
        assert_eq!(parse_spec(odd.to_str().unwrap()).unwrap().ratio, None);
    }

    /// `--overlong truncate-left` keeps an over-long pair as Flan does (the stream's last
    /// `max_len` tokens: the prompt's beginning and `<s>` cut, the target and `</s>` kept) and
    /// counts it; `drop` removes it. Both say so in the file's log line.
    #[test]
    fn overlong_rule_reaches_the_examples_and_the_log() {
        let tok = Tok::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/fixtures/tokenizer.json")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.jsonl");
        let long = "the cat sat on the mat ".repeat(10);
        std::fs::write(&file, format!("{{\"src\": \"{long}\", \"tgt\": \"die Katze\"}}\n{{\"src\": \"a\", \"tgt\": \"b\"}}\n")).unwrap();
        let specs = [TrainSpec { path: file.clone(), ratio: None }];
        let (src, tgt) = (tok.encode(&long).unwrap(), tok.encode("die Katze").unwrap());
        let max_len = 12;
        assert!(src.len() + tgt.len() - 2 > max_len && tgt.len() < max_len);
        let load_with = |rule| load(&tok, &specs, &DataArgs::default(), max_len, rule, Budget::Sequences(4), 1).unwrap();

        let mut kept = load_with(OverlongArg::TruncateLeft);
        assert_eq!(kept.examples, 2);
        assert!(kept.log[0].ends_with("d.jsonl: 2 examples (1 truncated from the left as longer than 12 tokens)"), "{:?}", kept.log);
        let rows = kept.source.next_batch().unwrap();
        let cut = rows.iter().find(|e| e.len() == max_len).expect("the long pair, cut to max_len");
        let full: Vec<i32> = [&src[..src.len() - 1], &tgt[1..]].concat();
        assert_eq!(cut.ids, full[full.len() - max_len..], "the stream's last max_len tokens");
        assert_ne!(cut.ids[0], tok.bos());
        assert_eq!(cut.src_len, max_len - (tgt.len() - 1));

        let dropped = load_with(OverlongArg::Drop);
        assert_eq!(dropped.examples, 1);
        assert!(dropped.log[0].ends_with("d.jsonl: 1 examples (1 dropped as longer than 12 tokens)"), "{:?}", dropped.log);
    }

    #[test]
    fn ratios_all_or_none_and_normalised() {
        let specs = |v: &[&str]| parse_specs(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let e = specs(&["a.jsonl:1", "b.jsonl"]).unwrap_err().to_string();
        assert!(e.contains("every file or for none") && e.contains("b.jsonl"), "{e}");
        assert_eq!(normalised_ratios(&specs(&["a", "b"]).unwrap()), None);
        assert_eq!(normalised_ratios(&specs(&["a:3", "b:1"]).unwrap()), Some(vec![0.75, 0.25]));
    }
}
