//! `dlm-engine fill-mask`: the Hugging Face fill-mask pipeline's answer (top-k ids, tokens and
//! probabilities at every `<mask>`), from the masked LM as it is.

use super::device::{dispatch, Job};
use crate::backend::Backend;
use crate::model::{Batch, XlmR};
use crate::tokenizer::Tok;
use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::path::PathBuf;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model directory (config.json, model.safetensors or its shards and index, tokenizer.json), e.g. an HF XLM-R checkpoint.
    #[arg(long)]
    pub model: PathBuf,
    /// How many candidates to show per <mask>.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Print one JSON object per text instead of a readable table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub run: super::args::DeviceArgs,
    /// Texts containing one or more <mask> tokens.
    #[arg(required = true)]
    pub text: Vec<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: i32,
    pub token: String,
    pub prob: f64,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct MaskFill {
    pub position: usize,
    pub top: Vec<Candidate>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct FillResult {
    pub text: String,
    pub input_ids: Vec<i32>,
    pub masks: Vec<MaskFill>,
}

/// Top-k of softmax(logits) over the whole vocabulary at each `<mask>` of each text.
pub fn fill_mask<B: Backend>(model: &mut XlmR<B>, tok: &Tok, texts: &[String], top_k: usize) -> Result<Vec<FillResult>> {
    let mut out = Vec::new();
    for text in texts {
        let ids = tok.encode(text)?;
        let positions: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == tok.mask()).collect();
        if positions.is_empty() {
            bail!("text `{text}` has no <mask> token");
        }
        let batch = Batch { ids: ids.clone(), batch: 1, seq: ids.len() };
        let rows: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
        let logits = model.logits(&batch, &rows)?;
        let v = model.config().vocab_size;
        let mut masks = Vec::new();
        for (r, &p) in positions.iter().enumerate() {
            let row = &logits[r * v..][..v];
            let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = row.iter().map(|&x| (x as f64 - mx).exp()).sum();
            let mut order: Vec<usize> = (0..v).collect();
            // Stable sort by descending logit: equal logits keep the lower id first.
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let top = order
                .iter()
                .take(top_k)
                .map(|&i| Ok(Candidate { id: i as i32, token: tok.decode(&[i as i32], false)?, prob: (row[i] as f64 - mx).exp() / z }))
                .collect::<Result<Vec<_>>>()?;
            masks.push(MaskFill { position: p, top });
        }
        out.push(FillResult { text: text.clone(), input_ids: ids, masks });
    }
    Ok(out)
}

struct FillJob {
    args: Args,
    tok: Tok,
}

impl Job for FillJob {
    type Out = Vec<FillResult>;
    fn run<B: Backend>(self, backend: B) -> Result<Self::Out> {
        let mut model = XlmR::load(backend, &self.args.model)?;
        if self.tok.vocab_size() > model.config().vocab_size {
            bail!(
                "{}: the tokenizer has {} ids but the model only {} rows",
                self.args.model.join("tokenizer.json").display(),
                self.tok.vocab_size(),
                model.config().vocab_size
            );
        }
        fill_mask(&mut model, &self.tok, &self.args.text, self.args.top_k)
    }
}

pub fn run(args: Args) -> Result<()> {
    let tok = Tok::load(args.model.join("tokenizer.json"))?;
    let cfg_file = args.model.join("config.json");
    crate::model::ModelConfig::from_file(&cfg_file)?.check_tokenizer(
        tok.vocab_size(),
        &args.model.join("tokenizer.json").display().to_string(),
        &cfg_file.display().to_string(),
    )?;
    let (run, json) = (args.run.clone(), args.json);
    let results = dispatch(&run.device, run.threads, FillJob { args, tok })?;
    for r in &results {
        if json {
            crate::outln!("{}", serde_json::to_string(r)?)?;
        } else {
            crate::outln!("{}", r.text)?;
            for m in &r.masks {
                let cands: Vec<String> = m.top.iter().map(|c| format!("{:?} {:.4}", c.token, c.prob)).collect();
                crate::outln!("  <mask> at {}: {}", m.position, cands.join(", "))?;
            }
        }
    }
    Ok(())
}
