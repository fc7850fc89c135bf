//! `sample --length predict --length-beam N` (docs/method.md §5.2): the length predictor's N most
//! likely lengths of every input become N canvases of the same batch (each `[<s>] prompt
//! <mask>×L_b </s>` with its own prompt, right-padded by the sampler), decoded together; the
//! candidate with the highest score (mean committed log-prob) is kept, the first on ties.
//!
//! Each candidate is a request of its own to `sample::decode_lengths`, so every beam row gets its
//! own prompt and its own fixed (prompt) positions; the official release reuses the batch's
//! original prompt mask for the expanded rows instead, a bug this does not copy.

use super::sample::{decode_lengths, DecodeOptions, Output, Request};
use crate::backend::Backend;
use crate::model::{XlmR, LENGTH_CLASSES};
use crate::tokenizer::Tok;
use anyhow::{bail, Result};
use serde::Serialize;

/// How the length beam runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BeamOptions {
    /// Lengths decoded per input (1 = the top prediction only).
    pub beam: usize,
    /// Keep every candidate in the output.
    pub save_candidates: bool,
}

/// One candidate of the beam, as `--save-candidates` writes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub length: usize,
    pub score: f32,
    pub hyp: String,
}

/// `--length-beam` and `--save-candidates` make sense only with `--length predict`.
pub fn check_flags(length: &str, beam: usize, save_candidates: bool) -> Result<()> {
    crate::util::range::at_least("--length-beam", beam as u64, 1)?;
    if beam > LENGTH_CLASSES {
        bail!("--length-beam must be at most {LENGTH_CLASSES} (the length predictor's classes), got {beam}");
    }
    if length != "predict" && (beam > 1 || save_candidates) {
        let flag = if beam > 1 { "--length-beam" } else { "--save-candidates" };
        bail!("{flag} needs --length predict (the lengths come from the model's length predictor)");
    }
    Ok(())
}

/// Predicts the lengths of `reqs`, decodes every candidate and keeps the best of each input.
/// Errors and truncation are `decode_lengths`'s (see `sample::decode_checked`); the second value
/// counts inputs whose prompt was cut. An input has fewer than `beam.beam` candidates when its
/// prompt leaves room for fewer lengths.
pub fn decode<B: Backend>(
    model: &mut XlmR<B>,
    tok: &Tok,
    reqs: &[Request],
    opts: &DecodeOptions,
    beam: &BeamOptions,
    names: Option<&[String]>,
) -> Result<(Vec<Output>, usize)> {
    if !model.has_length_predictor() {
        bail!("the model has no length predictor, so `--length predict` cannot work; train one with `dlm-engine train --stage length`");
    }
    let max_len = model.config().max_seq_len();
    let mut prompts = Vec::with_capacity(reqs.len());
    for r in reqs {
        let mut src = tok.encode(&r.src)?;
        src.pop(); // </s>
                   // The predictor reads `[<s>] prompt` alone; a prompt too long for a canvas is refused or
                   // cut by `decode_lengths` below.
        let keep = max_len.saturating_sub(2).max(1);
        if src.len() > keep {
            src.drain(1..1 + src.len() - keep);
        }
        prompts.push(src);
    }
    // Only lengths the model's positions can hold after this prompt are candidates (the
    // official code caps a longer prediction at 512 − 1 − src_len instead, which can decode the
    // same canvas twice).
    let room: Vec<usize> = prompts.iter().map(|p| max_len.saturating_sub(p.len() + 1).max(1)).collect();
    let predicted = model.predict_lengths(&prompts, &room, beam.beam, opts.batch_size)?;
    let (mut expanded, mut lengths, mut expanded_names) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (r, lens)) in reqs.iter().zip(&predicted).enumerate() {
        for &l in lens {
            expanded.push(r.clone());
            lengths.push(l);
            if let Some(n) = names {
                expanded_names.push(n[i].clone());
            }
        }
    }
    let names = names.map(|_| expanded_names.as_slice());
    let (outs, truncated) = decode_lengths(model, tok, &expanded, &lengths, opts, names)?;
    let mut chosen = Vec::with_capacity(reqs.len());
    let mut at = 0;
    for lens in &predicted {
        let cands = &outs[at..at + lens.len()];
        at += lens.len();
        let best = best_index(cands.iter().map(|c| c.score));
        let mut out = cands[best].clone();
        out.length = Some(lens[best]);
        if beam.save_candidates {
            let all = cands.iter().zip(lens).map(|(c, &length)| Candidate { length, score: c.score, hyp: c.hyp.clone() });
            out.candidates = Some(all.collect());
        }
        chosen.push(out);
    }
    // A prompt is cut only when even one target slot leaves no room for all of it; then its
    // room is 1 and it has a single candidate, so `truncated` counts inputs.
    Ok((chosen, truncated))
}

/// The index of the highest score, the first on ties (the rule of `sampler::best_candidate`, on
/// decoded outputs).
fn best_index(scores: impl Iterator<Item = f32>) -> usize {
    let mut best: Option<(usize, f32)> = None;
    for (i, s) in scores.enumerate() {
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_score_wins_and_ties_go_to_the_first() {
        assert_eq!(best_index([-1.0, -0.5, -0.5, -2.0].into_iter()), 1);
        assert_eq!(best_index([f32::NEG_INFINITY, -3.0].into_iter()), 1);
        assert_eq!(best_index([f32::NEG_INFINITY, f32::NEG_INFINITY].into_iter()), 0);
    }

    #[test]
    fn beam_flags_need_predict() {
        assert!(check_flags("predict", 3, true).is_ok());
        assert!(check_flags("oracle", 1, false).is_ok());
        assert!(check_flags("oracle", 3, false).unwrap_err().to_string().contains("--length-beam needs --length predict"));
        assert!(check_flags("12", 1, true).unwrap_err().to_string().contains("--save-candidates needs"));
        assert!(check_flags("predict", 0, false).is_err());
        assert!(check_flags("predict", 515, false).is_err());
    }
}
