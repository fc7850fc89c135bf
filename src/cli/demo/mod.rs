//! `dlm-engine demo`: the embedded default job. It makes a small seq2seq task with the
//! project's own generator (`task`), trains a tokenizer and a `tiny` model on it with the default
//! settings `init` records, trains the length predictor over it, samples the held-out set with the
//! oracle length and with predicted lengths (a length beam), shows one denoising trajectory and
//! reports exact match and length accuracy — the same `tokenizer train → init → train → train
//! --stage length → sample` path a user takes.

pub mod task;

use super::device::Device;
use super::length_beam::{self, Beam, LengthSelect};
use super::sample::{decode, DecodeOptions, Output, Request};
use super::train::{train, Args as TrainArgs};
use crate::diffusion::sampler::SamplerConfig;
use crate::metrics::{self, Metric, Tokenize};
use crate::model::XlmR;
use crate::tokenizer::{train_unigram, Tok};
use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Working directory for the data, tokenizer, model and run (its demo files are replaced).
    #[arg(long, default_value = "dlm-demo")]
    pub out: PathBuf,
    /// Training examples to generate.
    #[arg(long, default_value_t = 6000)]
    pub train_examples: usize,
    /// Held-out examples (sources never seen in training).
    #[arg(long, default_value_t = 200)]
    pub valid_examples: usize,
    /// Optimizer updates.
    #[arg(long, default_value_t = 1500)]
    pub steps: u64,
    /// Wall-time cap on training (the run stops and saves at whichever limit comes first).
    #[arg(long, default_value = "270s")]
    pub max_time: String,
    /// Denoising steps when sampling the held-out set.
    #[arg(long, default_value_t = 10)]
    pub sample_steps: usize,
    /// Updates of the length predictor (`train --stage length`).
    #[arg(long, default_value_t = 800)]
    pub length_steps: u64,
    /// Predicted lengths decoded per held-out source (`sample --length predict --length-beam`).
    #[arg(long, default_value_t = 3)]
    pub length_beam: usize,
    /// Denoising steps of the comparison between oracle and predicted lengths (50, `sample`'s
    /// default and the official evaluation's).
    #[arg(long, default_value_t = 50)]
    pub beam_steps: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The task: `translate` (the default) or `sort` (a harder one: the words in alphabetical order).
    #[arg(long, value_enum, default_value = "translate")]
    pub task: task::Task,
    /// Words per source sentence: at least this many ...
    #[arg(long, default_value_t = 3)]
    pub min_words: usize,
    /// ... and at most this many (the target has as many words).
    #[arg(long, default_value_t = 7)]
    pub max_words: usize,
    /// CPU worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

fn write_jsonl(path: &Path, pairs: &[(String, String)]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("{}: cannot create", path.display()))?);
    for (s, t) in pairs {
        writeln!(f, "{}", serde_json::json!({ "src": s, "tgt": t }))?;
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    let t0 = std::time::Instant::now();
    let out = &a.out;
    for sub in ["data", "model", "run", "run-length"] {
        let p = out.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("{}: cannot clear", p.display()))?;
        }
    }
    std::fs::create_dir_all(out.join("data"))?;
    eprintln!("== 1/6 task: {}", a.task.describe());
    crate::util::range::at_least("--min-words", a.min_words as u64, 1)?;
    if a.max_words < a.min_words {
        anyhow::bail!("--max-words ({}) must be at least --min-words ({})", a.max_words, a.min_words);
    }
    let words = a.min_words..=a.max_words;
    let train_set = task::dataset(a.task, a.seed, a.train_examples, words.clone(), &HashSet::new());
    let seen: HashSet<String> = train_set.iter().map(|p| p.0.clone()).collect();
    let valid_set = task::dataset(a.task, a.seed + 1000, a.valid_examples, words, &seen);
    let (train_path, valid_path) = (out.join("data/train.jsonl"), out.join("data/valid.jsonl"));
    write_jsonl(&train_path, &train_set)?;
    write_jsonl(&valid_path, &valid_set)?;
    eprintln!(
        "   e.g. {:?} -> {:?}; {} train / {} held-out pairs in {}",
        train_set[0].0,
        train_set[0].1,
        train_set.len(),
        valid_set.len(),
        out.join("data").display()
    );

    eprintln!("== 2/6 tokenizer: Unigram, XLM-R special ids");
    let texts = train_set.iter().flat_map(|(s, t)| [s.clone(), t.clone()]);
    let tok = train_unigram(texts, 200)?;
    let tok_path = out.join("data/tokenizer.json");
    tok.save(&tok_path)?;
    eprintln!("   {} ids -> {}", tok.vocab_size(), tok_path.display());

    eprintln!("== 3/6 model: init --preset tiny");
    super::init::run(super::init::Args {
        config: None,
        preset: Some("tiny".into()),
        tokenizer: tok_path.clone(),
        out: out.join("model"),
        seed: a.seed,
        force: true,
        max_shard_size: "5GB".into(),
    })?;

    eprintln!("== 4/6 train: RDM objective with the model's default settings");
    let mut targs = default_train_args(&out.join("model"), &train_path, &out.join("run"));
    targs.max_steps = Some(a.steps);
    targs.max_time = Some(a.max_time.clone());
    targs.seed = a.seed;
    targs.run.threads = a.threads;
    let summary = train(targs)?;
    super::train::print_summary(&summary);

    eprintln!("== 5/6 train --stage length: the length predictor over the frozen model");
    let mut largs = default_train_args(&summary.checkpoint, &train_path, &out.join("run-length"));
    largs.stage = "length".into();
    largs.max_steps = Some(a.length_steps);
    largs.seed = a.seed;
    largs.run.threads = a.threads;
    let length_summary = train(largs)?;
    super::train::print_summary(&length_summary);

    eprintln!("== 6/6 sample the held-out set ({} steps, argmax): oracle lengths, then predicted ones", a.sample_steps);
    let tok = Tok::load(length_summary.checkpoint.join("tokenizer.json"))?;
    let mut model = XlmR::load(crate::backend::cpu::CpuBackend::new(), &length_summary.checkpoint)?;
    let reqs: Vec<Request> = valid_set.iter().map(|(s, t)| Request { src: s.clone(), tgt: Some(t.clone()) }).collect();
    let opts = DecodeOptions {
        sampler: SamplerConfig { steps: a.sample_steps, record_steps: true, ..SamplerConfig::default() },
        length: None,
        batch_size: 64,
        show_steps: false,
    };
    let outs = decode(&mut model, &tok, &reqs, &opts)?;
    let samples = out.join("run/samples.jsonl");
    write_samples(&samples, &outs)?;
    // Oracle against predicted lengths, both at `--beam-steps`.
    let k_opts = DecodeOptions { sampler: SamplerConfig { steps: a.beam_steps, ..SamplerConfig::default() }, ..opts.clone() };
    let oracle_k = decode(&mut model, &tok, &reqs, &k_opts)?;
    let beams = length_beam::decode_candidates(&mut model, &tok, &reqs, &k_opts, a.length_beam, None)?.0;
    // Decoding is argmax, without random numbers, so an input's first candidate (its most likely
    // length) is the canvas `--length-beam 1` decodes.
    let first = |b: &Beam| Beam { guesses: b.guesses[..1].to_vec(), outs: b.outs[..1].to_vec() }.choose(LengthSelect::Mean, false);
    let predicted_top1: Vec<Output> = beams.iter().map(first).collect();
    let predicted = beams.iter().map(|b| b.choose(LengthSelect::Mean, true)).collect::<Vec<_>>();
    let predicted_joint = beams.iter().map(|b| b.choose(LengthSelect::Joint, false)).collect::<Vec<_>>();
    write_samples(&out.join("run-length/samples.jsonl"), &predicted)?;

    let show = &outs[0];
    eprintln!("   one denoising trajectory ({:?} -> {:?}):", show.src, show.tgt.as_deref().unwrap_or(""));
    for (s, row) in show.steps.as_deref().unwrap_or(&[]).iter().enumerate() {
        let words: Vec<String> =
            row.iter().map(|&t| if t == tok.mask() { "▒".into() } else { tok.id_to_token(t).unwrap_or_default() }).collect();
        eprintln!("   step {:>2}: {}", s + 1, words.join(" "));
    }
    for o in outs.iter().take(3) {
        eprintln!("   {:?} -> {:?} (score {:.3})", o.src, o.hyp, o.score);
    }
    let hyps: Vec<&str> = outs.iter().map(|o| o.hyp.as_str()).collect();
    let refs: Vec<&str> = outs.iter().map(|o| o.tgt.as_deref().unwrap_or("")).collect();
    let exact = metrics::report(&hyps, &refs, Metric::Exact, Tokenize::Tok13a, false)?;
    let bleu = metrics::report(&hyps, &refs, Metric::Bleu, Tokenize::Tok13a, false)?;
    crate::outln!("held-out: {exact}")?;
    crate::outln!("held-out: {bleu}")?;
    let runs = [
        ("oracle lengths".to_string(), &oracle_k),
        ("predicted lengths (top 1)".to_string(), &predicted_top1),
        (format!("predicted lengths (beam {}, mean score)", a.length_beam), &predicted),
        (format!("predicted lengths (beam {}, joint score)", a.length_beam), &predicted_joint),
    ];
    for (what, outs) in runs {
        let hyps: Vec<&str> = outs.iter().map(|o| o.hyp.as_str()).collect();
        let exact = metrics::report(&hyps, &refs, Metric::Exact, Tokenize::Tok13a, false)?;
        crate::outln!("held-out, {what}, {} steps: {exact}", a.beam_steps)?;
    }
    let oracle_len: Vec<usize> = reqs.iter().map(|r| Ok(tok.encode(r.tgt.as_deref().unwrap_or(""))?.len() - 2)).collect::<Result<_>>()?;
    let pct = |n: usize| 100.0 * n as f64 / reqs.len() as f64;
    let off = |o: &Output, l: usize| o.length.map_or(usize::MAX, |p| p.abs_diff(l));
    let exact = predicted_top1.iter().zip(&oracle_len).filter(|(o, &l)| off(o, l) == 0).count();
    let near = predicted_top1.iter().zip(&oracle_len).filter(|(o, &l)| off(o, l) <= 1).count();
    let chosen = |outs: &[Output]| pct(outs.iter().zip(&oracle_len).filter(|(o, &l)| off(o, l) == 0).count());
    crate::outln!(
        "held-out length accuracy: top-1 prediction exact {:.2}%, within ±1 {:.2}%; beam {}'s chosen length exact {:.2}% (mean score), {:.2}% (joint score) ({} examples)",
        pct(exact),
        pct(near),
        a.length_beam,
        chosen(&predicted),
        chosen(&predicted_joint),
        reqs.len()
    )?;
    eprintln!(
        "demo finished in {:.0}s; samples in {}, model in {}",
        t0.elapsed().as_secs_f64(),
        samples.display(),
        summary.checkpoint.display()
    );
    Ok(())
}

fn write_samples(path: &Path, outs: &[Output]) -> Result<()> {
    let text: String = outs.iter().map(|o| serde_json::to_string(o).map(|s| s + "\n")).collect::<Result<_, _>>()?;
    crate::util::write_atomic(path, text.as_bytes())
}

/// `train` arguments as the CLI's defaults give them.
fn default_train_args(model: &Path, train: &Path, out: &Path) -> TrainArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        t: TrainArgs,
    }
    let argv = ["train", "--model", &model.to_string_lossy(), "--train", &train.to_string_lossy(), "--out", &out.to_string_lossy()];
    let mut t = Wrap::parse_from(argv).t;
    t.run.device = Device::Cpu;
    t
}
