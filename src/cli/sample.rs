//! `dlm-engine sample`: generate with the RDM sampler from JSONL records or prompts, write one
//! JSON line per input, and score the hypotheses when targets are given.

use super::args::{DataArgs, DeviceArgs, ScoreArgs};
use super::device::{dispatch, Job};
use super::length_beam::BeamOptions;
use crate::backend::Backend;
use crate::data::jsonl::read_jsonl;
use crate::diffusion::sampler::{generate, SamplerConfig, SpecialIds};
use crate::diffusion::Strategy;
use crate::metrics::{self, Metric};
use crate::model::XlmR;
use crate::tokenizer::Tok;
use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::path::PathBuf;

#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// Model directory (config.json, model.safetensors, tokenizer.json), e.g. `RUN/final`.
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
    /// reparam-{uncond,cond}-{deterministic,stochastic<c>}-{cosine,linear}, cmlm or ar.
    #[arg(long, default_value = "reparam-uncond-deterministic-cosine")]
    pub strategy: String,
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
    /// canvases and keep the one with the highest score (mean log-prob).
    #[arg(long, default_value_t = 1)]
    pub length_beam: usize,
    /// With `--length predict`: add `candidates` (every beam's length, score and text) to each
    /// output line.
    #[arg(long)]
    pub save_candidates: bool,
    /// Examples per forward batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the canvas of every step (drafting, then revising) to standard error.
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tgt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Vec<i32>>>,
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
    let mut hook = |step: usize, rows: &[Vec<i32>]| {
        for (r, row) in rows.iter().enumerate() {
            let shown: Vec<String> =
                row.iter().map(|&t| if t == tok.mask() { "▒".to_string() } else { tok.id_to_token(t).unwrap_or_default() }).collect();
            eprintln!("step {step:>3} row {r:>2}: {}", shown.join(" "));
        }
    };
    let hook_ref: Option<crate::diffusion::sampler::StepHook> = if opts.show_steps { Some(&mut hook) } else { None };
    let gens = generate(model, &prompts, lengths, special_ids(tok), &opts.sampler, opts.batch_size, hook_ref)?;
    let outs = reqs
        .iter()
        .zip(gens)
        .map(|(r, g)| {
            let hyp = tok.decode(&g.tokens, true)?;
            Ok(Output { src: r.src.clone(), hyp, score: g.score, tgt: r.tgt.clone(), steps: g.steps, length: None, candidates: None })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((outs, truncated))
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
            },
            length,
            batch_size: a.batch_size,
            show_steps: a.show_steps,
        };
        let names = (!a.truncate).then_some(self.names.as_slice());
        if a.length == "predict" {
            let beam = BeamOptions { beam: a.length_beam, save_candidates: a.save_candidates };
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
    super::length_beam::check_flags(&args.length, args.length_beam, args.save_candidates)?;
    // Every file this command reads; `--out` must not replace one of them.
    let mut inputs: Vec<PathBuf> = ["config.json", "model.safetensors", "tokenizer.json"].iter().map(|f| args.model.join(f)).collect();
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
    let (reqs, names): (Vec<Request>, Vec<String>) = match &args.input {
        Some(path) => {
            let file = read_jsonl(path, &args.data.jsonl(false))?;
            if file.skips.skipped > 0 {
                eprintln!("skipped {} bad line(s) of {}", file.skips.skipped, path.display());
            }
            file.records.into_iter().map(|r| (Request { src: r.src, tgt: r.tgt }, format!("{}:{}", path.display(), r.line))).unzip()
        }
        None => args.prompt.iter().enumerate().map(|(i, p)| (Request { src: p.clone(), tgt: None }, format!("--prompt {}", i + 1))).unzip(),
    };
    if reqs.is_empty() {
        bail!("nothing to sample: the input has no records");
    }
    let (run, score, out_path, force) = (args.run.clone(), args.score.clone(), args.out.clone(), args.force);
    let (outs, truncated) = dispatch(&run.device, run.threads, SampleJob { args, tok, reqs, names })?;
    if truncated > 0 {
        eprintln!("truncated {truncated} of {} prompt(s) from the left to fit the model (--truncate)", outs.len());
    }
    let mut text = String::new();
    for o in &outs {
        text.push_str(&serde_json::to_string(o)?);
        text.push('\n');
    }
    match out_path {
        Some(p) => crate::util::write_output(&p, text.as_bytes(), &inputs, force, "--force")?,
        None => super::write_stdout(&text)?,
    }
    print_scores(&outs, &score)
}
