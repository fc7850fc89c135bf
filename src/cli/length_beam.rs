//! `sample --length predict --length-beam N` (docs/method.md §5.2): the length predictor's N most
//! likely lengths of every input become N canvases of the same batch (each `[<s>] prompt
//! <mask>×L_b </s>` with its own prompt, right-padded by the sampler), decoded together; the
//! candidate with the highest score is kept, the first on ties: by default the mean committed
//! log-prob (the paper's rule), or with `--length-select joint` the joint log-probability of
//! length and text, log p(L) + the sum of the committed log-probs (docs/method.md §5.2).
//!
//! Each candidate is a request of its own to `sample::decode_lengths`, so every beam row gets its
//! own prompt and its own fixed (prompt) positions; the official release reuses the batch's
//! original prompt mask for the expanded rows instead, a bug this does not copy.

use super::sample::{decode_lengths, DecodeOptions, Output, Request};
use crate::backend::Backend;
use crate::model::{LengthGuess, XlmR, LENGTH_CLASSES};
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
    pub select: LengthSelect,
}

/// How the beam chooses among an input's candidates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LengthSelect {
    /// The highest mean committed log-prob: the paper's rule, length-normalised.
    #[default]
    Mean,
    /// The highest log p(L) + Σ committed log-probs: the joint log-probability of the length
    /// (under the length predictor) and of the text given that length (as the sampler committed
    /// it). Not length-normalised, so it leans towards shorter texts when tokens are uncertain.
    Joint,
}

impl LengthSelect {
    fn value(self, guess: &LengthGuess, out: &Output) -> f32 {
        match self {
            LengthSelect::Mean => out.score,
            // No kept token means a score of −inf; so is the joint value.
            LengthSelect::Joint if out.kept_tokens == 0 => f32::NEG_INFINITY,
            LengthSelect::Joint => guess.logprob + out.score * out.kept_tokens as f32,
        }
    }
}

/// One candidate of the beam, as `--save-candidates` writes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub length: usize,
    /// Target tokens kept in `hyp` (the committed slots `score` averages over).
    pub tokens: usize,
    /// The length predictor's log-probability of `length`.
    pub length_logprob: f32,
    pub score: f32,
    pub hyp: String,
}

/// `--length-beam` and the other beam flags (`flag`: the first of `--save-candidates` and
/// `--length-select` that was given) make sense only with `--length predict`.
pub fn check_flags(length: &str, beam: usize, flag: Option<&str>) -> Result<()> {
    crate::util::range::at_least("--length-beam", beam as u64, 1)?;
    if beam > LENGTH_CLASSES {
        bail!("--length-beam must be at most {LENGTH_CLASSES} (the length predictor's classes), got {beam}");
    }
    if length != "predict" {
        if let Some(flag) = if beam > 1 { Some("--length-beam") } else { flag } {
            bail!("{flag} needs --length predict (the lengths come from the model's length predictor)");
        }
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
    let (beams, truncated) = decode_candidates(model, tok, reqs, opts, beam.beam, names)?;
    Ok((beams.iter().map(|b| b.choose(beam.select, beam.save_candidates)).collect(), truncated))
}

/// One input's decoded candidates: its predicted lengths, best first, and their outputs.
pub struct Beam {
    pub guesses: Vec<LengthGuess>,
    pub outs: Vec<Output>,
}

impl Beam {
    /// The chosen candidate's output, with its length and, if asked, every candidate.
    pub fn choose(&self, select: LengthSelect, save_candidates: bool) -> Output {
        let best = best_index(self.outs.iter().zip(&self.guesses).map(|(c, g)| select.value(g, c)));
        let mut out = self.outs[best].clone();
        out.length = Some(self.guesses[best].length);
        if save_candidates {
            let all = self.outs.iter().zip(&self.guesses).map(|(c, g)| Candidate {
                length: g.length,
                tokens: c.kept_tokens,
                length_logprob: g.logprob,
                score: c.score,
                hyp: c.hyp.clone(),
            });
            out.candidates = Some(all.collect());
        }
        out
    }
}

/// The first half of `decode`: every input's `beam` most likely lengths, each decoded.
pub fn decode_candidates<B: Backend>(
    model: &mut XlmR<B>,
    tok: &Tok,
    reqs: &[Request],
    opts: &DecodeOptions,
    beam: usize,
    names: Option<&[String]>,
) -> Result<(Vec<Beam>, usize)> {
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
    let predicted = model.predict_lengths(&prompts, &room, beam, opts.batch_size)?;
    let (mut expanded, mut lengths, mut expanded_names) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (r, lens)) in reqs.iter().zip(&predicted).enumerate() {
        for g in lens {
            expanded.push(r.clone());
            lengths.push(g.length);
            if let Some(n) = names {
                expanded_names.push(n[i].clone());
            }
        }
    }
    let names = names.map(|_| expanded_names.as_slice());
    let (outs, truncated) = decode_lengths(model, tok, &expanded, &lengths, opts, names)?;
    let mut outs = outs.into_iter();
    let beams = predicted.into_iter().map(|guesses| Beam { outs: outs.by_ref().take(guesses.len()).collect(), guesses }).collect();
    // A prompt is cut only when even one target slot leaves no room for all of it; then its
    // room is 1 and it has a single candidate, so `truncated` counts inputs.
    Ok((beams, truncated))
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
        assert!(check_flags("predict", 3, Some("--save-candidates")).is_ok());
        assert!(check_flags("oracle", 1, None).is_ok());
        assert!(check_flags("oracle", 3, None).unwrap_err().to_string().contains("--length-beam needs --length predict"));
        assert!(check_flags("12", 1, Some("--save-candidates")).unwrap_err().to_string().contains("--save-candidates needs"));
        assert!(check_flags("12", 1, Some("--length-select")).unwrap_err().to_string().contains("--length-select needs"));
        assert!(check_flags("predict", 0, None).is_err());
        assert!(check_flags("predict", 515, None).is_err());
    }
}
