//! The length stage (`train --stage length`, docs/method.md §5.1): the same loop, checkpoints and
//! resume as diffusive adaptation, but each micro-batch runs the frozen backbone forward on the
//! examples' `[<s>] source` and trains only the length predictor, with plain cross-entropy over
//! `class = target tokens (without </s>) − 1`. Validation reports length accuracy.

use crate::backend::{Backend, Dropout};
use crate::data::layout::Example;
use crate::model::{length_class, Part, XlmR};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// What a training run trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Diffusive adaptation of the masked LM.
    #[default]
    Main,
    /// The length predictor, over the frozen masked LM.
    Length,
}

impl std::str::FromStr for Stage {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "main" => Ok(Stage::Main),
            "length" => Ok(Stage::Length),
            _ => bail!("--stage must be `main` or `length`, got `{s}`"),
        }
    }
}

/// Makes `model` ready for `stage`: for the length stage, a new predictor when it has none
/// (initialised from `seed`; returns true then) and only the predictor trainable.
pub fn prepare<B: Backend>(model: &mut XlmR<B>, stage: Stage, seed: u64) -> Result<bool> {
    match stage {
        Stage::Main => {
            model.set_trainable(Part::Backbone)?;
            Ok(false)
        }
        Stage::Length => {
            let fresh = !model.has_length_predictor();
            if fresh {
                model.init_length_predictor(seed)?;
            }
            model.set_trainable(Part::Length)?;
            Ok(fresh)
        }
    }
}

/// The length predictor's input and class for a training example: `[<s>] source` and
/// `length_class` of its target tokens (the stream less `<s>`, the source and the final `</s>`).
pub fn prompt_and_class(e: &Example) -> (Vec<i32>, i32) {
    let target = e.ids.len().saturating_sub(e.src_len + 1);
    (e.ids[..e.src_len].to_vec(), length_class(target))
}

/// One micro-batch of the length stage: the loss (times `scale`) and the prompt tokens it read.
pub fn micro_step<B: Backend>(model: &mut XlmR<B>, rows: &[Example], drop: Dropout, scale: f32) -> Result<(f32, u64)> {
    let (prompts, classes): (Vec<Vec<i32>>, Vec<i32>) = rows.iter().map(prompt_and_class).unzip();
    let loss = model.length_loss_and_grad(&prompts, &classes, drop, scale)?;
    Ok((loss, prompts.iter().map(|p| p.len() as u64).sum()))
}

/// Length accuracy in percent: the predicted length (the top class + 1) equal to the target's
/// token count, within ±1 and within ±2.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LengthAccuracy {
    pub length_exact: f64,
    pub length_within_1: f64,
    pub length_within_2: f64,
    pub examples: usize,
}

/// Scores the predictor on `prompts` (`[<s>] prompt`) whose targets have `lengths` tokens.
pub fn length_accuracy<B: Backend>(model: &mut XlmR<B>, prompts: &[Vec<i32>], lengths: &[usize], batch: usize) -> Result<LengthAccuracy> {
    if prompts.is_empty() || prompts.len() != lengths.len() {
        bail!("length accuracy needs as many target lengths ({}) as prompts ({}), at least one", lengths.len(), prompts.len());
    }
    let predicted = model.predict_lengths(prompts, &vec![usize::MAX; prompts.len()], 1, batch)?;
    let mut hits = [0usize; 3];
    for (p, &t) in predicted.iter().zip(lengths) {
        let d = p[0].length.abs_diff(t);
        for (tol, h) in hits.iter_mut().enumerate() {
            *h += (d <= tol) as usize;
        }
    }
    let pct = |h: usize| 100.0 * h as f64 / prompts.len() as f64;
    Ok(LengthAccuracy { length_exact: pct(hits[0]), length_within_1: pct(hits[1]), length_within_2: pct(hits[2]), examples: prompts.len() })
}
