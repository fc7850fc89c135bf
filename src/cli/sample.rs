//! `dlm-engine sample`: generate with the RDM sampler from JSONL records or prompts, write one
//! JSON line per input, and score the hypotheses when targets are given.

use super::args::{DataArgs, DeviceArgs, ScoreArgs};
use super::device::{dispatch, Job};
use super::length_beam::{BeamOptions, LengthSelect};
use crate::backend::Backend;
use crate::data::jsonl::read_jsonl;
use crate::diffusion::sampler::{generate, SamplerConfig, SpecialIds};
use crate::diffusion::{Confidence, Strategy};
use crate::metrics::{self, Metric};
use crate::model::XlmR;
use crate::tokenizer::Tok;
use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::path::PathBuf;

#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// Model directory (config.json, model.safetensors or its shards and index, tokenizer.json), e.g. `RUN/final`.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL inputs: {"src": ..., "tgt": ...} or {"inputs": ..., "targets": ...}; the target is
    /// optional unless `--length oracle`.
    #[arg(long, conflicts_with = "prompt", required_unless_present = "prompt")]
    pub input: Option<PathBuf>,
    /// A prompt to complete (repeatable); needs a fixed `--length N` or `--length predict`.
    #[arg(long)]
    pub prompt: Vec<String>,
    /// Where to write the JSON lines (default: standard output). Written beside the path and
    /// renamed over it; an input file, a symbolic link, a device or a FIFO is refused.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write `--out` even where it is refused: over an input file, through a symbolic link (to
    /// its target), or into a device or FIFO.
    #[arg(long)]
    pub force: bool,
    /// Denoising steps K.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// reparam-{uncond,cond}-{deterministic,stochastic<c>}-{cosine,linear} (the paper's top-k
    /// re-masking over K steps), threshold (commit every slot whose confidence reaches
    /// --threshold, at least one a step, stop when none is masked: K is not used), cmlm or ar.
    #[arg(long, default_value = "reparam-uncond-deterministic-cosine")]
    pub strategy: String,
    /// What ranks the slots (reparam) and what --threshold compares: prob (the pick's
    /// probability, the paper's), margin (p1 − p2), entropy (exp(−H), 1 when certain) or random.
    #[arg(long, default_value = "prob")]
    pub confidence: String,
    /// The threshold of `--strategy threshold`, in (0, 1].
    #[arg(long, default_value_t = 0.9)]
    pub threshold: f32,
    /// Semi-autoregressive decoding: blocks of this many target slots, left to right, each with
    /// its share of the K steps (or its own threshold run).
    #[arg(long)]
    pub block_length: Option<usize>,
    /// Unsupervised classifier-free guidance of scale s: each step also runs the canvases with
    /// the prompt masked and picks from uncond + (s+1)·(cond − uncond); 0 is off.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub cfg_scale: f32,
    /// `prefix`: reuse the keys and values before the current block across its steps,
    /// recomputing them at each block's first step (an approximation, as XLM-R attends both
    /// ways); `none`: recompute everything every step.
    #[arg(long, default_value = "none")]
    pub cache: String,
    /// Sample tokens from softmax(logits / T) instead of taking the argmax.
    #[arg(long)]
    pub sample: bool,
    /// Softmax temperature T for `--sample`.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Target length: `oracle` (from each record's target), `predict` (the model's length
    /// predictor, trained by `train --stage length`; see --length-beam) or a number of tokens.
    #[arg(long, default_value = "oracle")]
    pub length: String,
    /// With `--length predict`: decode the N most likely lengths of every input as separate
    /// canvases and keep the best one (see --length-select).
    #[arg(long, default_value_t = 1)]
    pub length_beam: usize,
    /// How the length beam chooses: `mean` (the highest mean log-prob of the committed tokens,
    /// the paper's rule) or `joint` (the highest log p(length) + sum of the committed log-probs,
    /// the model's joint log-probability of length and text).
    #[arg(long, value_enum, default_value = "mean")]
    pub length_select: LengthSelect,
    /// With `--length predict`: add `candidates` (every beam's length, score and text) to each
    /// output line.
    #[arg(long)]
    pub save_candidates: bool,
    /// Examples per forward batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Show the canvas of every step on standard error (drafting, then revising): redrawn in
    /// place on a terminal, one line per canvas and step otherwise.
    #[arg(long)]
    pub show_steps: bool,
    /// Cut prompts too long for the model from the left (after `<s>`) instead of refusing them;
    /// the summary says how many were cut.
    #[arg(long)]
    pub truncate: bool,
    /// Add `steps` (the target token ids after every step, <mask> included) to each output line.
    #[arg(long)]
    pub save_steps: bool,
    /// Scoring when targets are present (exact match is always printed too).
    #[command(flatten)]
    pub score: ScoreArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub run: DeviceArgs,
}

/// One input to generate from.
#[derive(Clone, Debug)]
pub struct Request {
    pub src: String,
    pub tgt: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Output {
    pub src: String,
    pub hyp: String,
    pub score: f32,
    /// Target tokens kept in the hypothesis (the slots `score` averages over).
    #[serde(skip)]
    pub kept_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tgt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Vec<i32>>>,
    /// Forward passes the example took part in, and target slots committed per pass.
    pub nfe: usize,
    pub tokens_per_pass: f32,
    /// With `--length predict`: the chosen candidate's number of target slots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
    /// With `--save-candidates`: every candidate of the length beam.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<super::length_beam::Candidate>>,
}

/// How to decode, independent of where the inputs come from.
#[derive(Clone, Debug)]
pub struct DecodeOptions {
    pub sampler: SamplerConfig,
    /// `None` = oracle length from the target.
    pub length: Option<usize>,
    pub batch_size: usize,
    pub show_steps: bool,
}

pub fn special_ids(tok: &Tok) -> SpecialIds {
    SpecialIds { bos: tok.bos(), pad: tok.pad(), eos: tok.eos(), mask: tok.mask() }
}

/// Builds canvases for `reqs`, runs the sampler and detokenises. Prompts too long for the model
/// are cut from the left (after `<s>`), as the reference layout does.
pub fn decode<B: Backend>(model: &mut XlmR<B>, tok: &Tok, reqs: &[Request], opts: &DecodeOptions) -> Result<Vec<Output>> {
    Ok(decode_checked(model, tok, reqs, opts, None)?.0)
}

/// `decode`, with the inputs' names (`file:line`) when a prompt too long for the model is an
/// error naming it; without names such prompts are cut from the left and counted (the second
/// value).
pub fn decode_checked<B: Backend>(
    model: &mut XlmR<B>,
    tok: &Tok,
    reqs: &[Request],
    opts: &DecodeOptions,
    names: Option<&[String]>,
) -> Result<(Vec<Output>, usize)> {
    let mut lengths = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.iter().enumerate() {
        lengths.push(match (opts.length, &r.tgt) {
            (Some(n), _) => n,
            (None, Some(t)) => tok.encode(t)?.len().saturating_sub(2),
            (None, None) => bail!("{} has no target, so `--length oracle` cannot work; give --length N", input_name(names, i)),
        });
    }
    decode_lengths(model, tok, reqs, &lengths, opts, names)
}

/// `file:line` of input `i` when names are given, else `input i+1`.
pub fn input_name(names: Option<&[String]>, i: usize) -> String {
    names.and_then(|n| n.get(i).cloned()).unwrap_or_else(|| format!("input {}", i + 1))
}

/// `decode_checked` with each request's number of target slots given (`lengths`).
pub fn decode_lengths<B: Backend>(
    model: &mut XlmR<B>,
    tok: &Tok,
    reqs: &[Request],
    lengths: &[usize],
    opts: &DecodeOptions,
    names: Option<&[String]>,
) -> Result<(Vec<Output>, usize)> {
    let max_len = model.config().max_seq_len();
    let mut prompts = Vec::with_capacity(reqs.len());
    let mut truncated = 0;
    for (i, (r, &len)) in reqs.iter().zip(lengths).enumerate() {
        let name = input_name(names, i);
        if len + 3 > max_len {
            bail!("{name}: a target of {len} tokens does not fit the model's {max_len} positions");
        }
        let mut src = tok.encode(&r.src)?;
        src.pop(); // </s>: the canvas is [<s>] prompt <mask>×L [</s>]
        let room = max_len - len - 1;
        if src.len() > room {
            if names.is_some() {
                bail!(
                    "{name}: the prompt has {} tokens, but with a target of {len} the model's {max_len} positions leave room for {room}; \
                     shorten it, or give --truncate to cut long prompts from the left",
                    src.len()
                );
            }
            let cut = src.len() - room;
            src.drain(1..1 + cut);
            truncated += 1;
        }
        prompts.push(src);
    }
    let mut view = super::show_steps::StepView::new();
    let mut hook = |step: usize, rows: &[Vec<i32>]| {
        let lines: Vec<String> = rows
            .iter()
            .enumerate()
            .map(|(r, row)| {
                let shown: Vec<String> =
                    row.iter().map(|&t| if t == tok.mask() { "▒".to_string() } else { tok.id_to_token(t).unwrap_or_default() }).collect();
                format!("step {step:>3} row {r:>2}: {}", shown.join(" "))
            })
            .collect();
        view.frame(step, &lines);
    };
    let hook_ref: Option<crate::diffusion::sampler::StepHook> = if opts.show_steps { Some(&mut hook) } else { None };
    let gens = generate(model, &prompts, lengths, special_ids(tok), &opts.sampler, opts.batch_size, hook_ref)?;
    let outs = reqs
        .iter()
        .zip(gens)
        .zip(lengths.iter())
        .map(|((r, g), &len)| {
            let tokens_per_pass = if g.nfe == 0 { 0.0 } else { len as f32 / g.nfe as f32 };
            Ok(Output {
                src: r.src.clone(),
                hyp: tok.decode(&g.tokens, true)?,
                score: g.score,
                kept_tokens: g.tokens.len(),
                tgt: r.tgt.clone(),
                steps: g.steps,
                nfe: g.nfe,
                tokens_per_pass,
                length: None,
                candidates: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((outs, truncated))
}

/// One line on the forward passes: their mean number per example (NFE), the target tokens each
/// committed, and the wall time (model loading included).
pub fn decode_summary(outs: &[Output], wall_s: f64) -> String {
    let n = outs.len().max(1) as f64;
    let nfe: usize = outs.iter().map(|o| o.nfe).sum();
    let slots: f64 = outs.iter().map(|o| o.tokens_per_pass as f64 * o.nfe as f64).sum();
    let per_pass = if nfe == 0 { 0.0 } else { slots / nfe as f64 };
    format!(
        "decoded {} example(s): NFE {:.1} per example, {per_pass:.2} target tokens per pass, {:.1} ms per example ({wall_s:.1} s in all)",
        outs.len(),
        nfe as f64 / n,
        1000.0 * wall_s / n
    )
}

/// Prints the metric and exact match of outputs that carry targets (to standard error).
pub fn print_scores(outs: &[Output], score: &ScoreArgs) -> Result<()> {
    let (metric, tokenize, lowercase) = (score.metric, score.tokenize, score.lowercase);
    let (hyps, refs): (Vec<&str>, Vec<&str>) = outs.iter().filter_map(|o| o.tgt.as_deref().map(|t| (o.hyp.as_str(), t))).unzip();
    if hyps.is_empty() {
        return Ok(());
    }
    eprintln!("{}", metrics::report(&hyps, &refs, metric, tokenize, lowercase)?);
    if metric != Metric::Exact {
        eprintln!("{}", metrics::report(&hyps, &refs, Metric::Exact, tokenize, lowercase)?);
    }
    Ok(())
}

struct SampleJob {
    args: Args,
    tok: Tok,
    reqs: Vec<Request>,
    /// `file:line` (or `--prompt N`) of each request, for errors.
    names: Vec<String>,
}

impl Job for SampleJob {
    type Out = (Vec<Output>, usize);
    fn run<B: Backend>(self, backend: B) -> Result<(Vec<Output>, usize)> {
        let a = &self.args;
        let mut model = XlmR::load(backend, &a.model)?;
        let strategy: Strategy = a.strategy.parse()?;
        let confidence: Confidence = a.confidence.parse().map_err(|e| anyhow::anyhow!("--confidence: {e}"))?;
        let cache = match a.cache.as_str() {
            "none" => false,
            "prefix" => true,
            other => bail!("--cache must be `prefix` or `none`, got `{other}`"),
        };
        let length = match a.length.as_str() {
            "oracle" | "predict" => None,
            n => Some(n.parse::<usize>().map_err(|_| anyhow::anyhow!("--length must be `oracle`, `predict` or a number, got `{n}`"))?),
        };
        let opts = DecodeOptions {
            sampler: SamplerConfig {
                steps: a.steps,
                strategy,
                temperature: a.temperature,
                sample: a.sample,
                seed: a.seed,
                record_steps: a.save_steps,
                confidence,
                threshold: a.threshold,
                block_length: a.block_length,
                cfg_scale: a.cfg_scale,
                cache,
            },
            length,
            batch_size: a.batch_size,
            show_steps: a.show_steps,
        };
        let names = (!a.truncate).then_some(self.names.as_slice());
        if a.length == "predict" {
            let beam = BeamOptions { beam: a.length_beam, save_candidates: a.save_candidates, select: a.length_select };
            return super::length_beam::decode(&mut model, &self.tok, &self.reqs, &opts, &beam, names);
        }
        decode_checked(&mut model, &self.tok, &self.reqs, &opts, names)
    }
}

pub fn run(args: Args) -> Result<()> {
    super::device::set_threads(args.run.threads);
    crate::util::range::at_least("--steps", args.steps as u64, 1)?;
    crate::util::range::at_least("--batch-size", args.batch_size as u64, 1)?;
    crate::util::range::positive("--temperature", args.temperature)?;
    if !(args.threshold > 0.0 && args.threshold <= 1.0) {
        bail!("--threshold must be in (0, 1], got {}", args.threshold);
    }
    if let Some(n) = args.block_length {
        crate::util::range::at_least("--block-length", n as u64, 1)?;
    }
    if !(args.cfg_scale.is_finite() && args.cfg_scale >= 0.0) {
        bail!("--cfg-scale must be finite and >= 0, got {}", args.cfg_scale);
    }
    let beam_flag = if args.save_candidates {
        Some("--save-candidates")
    } else {
        (args.length_select != LengthSelect::Mean).then_some("--length-select")
    };
    super::length_beam::check_flags(&args.length, args.length_beam, beam_flag)?;
    // Every file this command reads; `--out` must not replace one of them.
    let mut inputs: Vec<PathBuf> = ["config.json", "tokenizer.json"].iter().map(|f| args.model.join(f)).collect();
    inputs.extend(crate::model::shards::existing_weight_paths(&args.model));
    inputs.extend(args.input.clone());
    if let Some(p) = &args.out {
        crate::util::check_output(p, &inputs, args.force, "--force")?;
    }
    let tok = Tok::load(args.model.join("tokenizer.json"))?;
    let cfg_file = args.model.join("config.json");
    crate::model::ModelConfig::from_file(&cfg_file)?.check_tokenizer(
        tok.vocab_size(),
        &args.model.join("tokenizer.json").display().to_string(),
        &cfg_file.display().to_string(),
    )?;
    // The input records' other fields (a task, a language, ...), copied into the output lines.
    let mut extras: Vec<serde_json::Map<String, serde_json::Value>> = Vec::new();
    let (reqs, names): (Vec<Request>, Vec<String>) = match &args.input {
        Some(path) => {
            let file = read_jsonl(path, &crate::data::JsonlOptions { keep_extra: true, ..args.data.jsonl(false) })?;
            if file.skips.skipped > 0 {
                eprintln!("skipped {} bad line(s) of {}", file.skips.skipped, path.display());
            }
            extras = file.records.iter().map(|r| r.extra.clone()).collect();
            file.records.into_iter().map(|r| (Request { src: r.src, tgt: r.tgt }, format!("{}:{}", path.display(), r.line))).unzip()
        }
        None => args.prompt.iter().enumerate().map(|(i, p)| (Request { src: p.clone(), tgt: None }, format!("--prompt {}", i + 1))).unzip(),
    };
    if reqs.is_empty() {
        bail!("nothing to sample: the input has no records");
    }
    let (run, score, out_path, force) = (args.run.clone(), args.score.clone(), args.out.clone(), args.force);
    let started = std::time::Instant::now();
    let (outs, truncated) = dispatch(&run.device, run.threads, SampleJob { args, tok, reqs, names })?;
    let wall = started.elapsed().as_secs_f64();
    if truncated > 0 {
        eprintln!("truncated {truncated} of {} prompt(s) from the left to fit the model (--truncate)", outs.len());
    }
    eprintln!("{}", decode_summary(&outs, wall));
    let mut text = String::new();
    for (i, o) in outs.iter().enumerate() {
        match extras.get(i).filter(|e| !e.is_empty()) {
            None => text.push_str(&serde_json::to_string(o)?),
            Some(extra) => {
                let mut line = serde_json::to_value(o)?;
                let obj = line.as_object_mut().expect("an Output is an object");
                for (k, v) in extra {
                    obj.entry(k.clone()).or_insert_with(|| v.clone());
                }
                text.push_str(&serde_json::to_string(&line)?);
            }
        }
        text.push('\n');
    }
    match out_path {
        Some(p) => crate::util::write_output(&p, text.as_bytes(), &inputs, force, "--force")?,
        None => super::write_stdout(&text)?,
    }
    print_scores(&outs, &score)
}
