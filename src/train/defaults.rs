//! Recommended training settings stored beside a model (`training_defaults.json`).
//!
//! `init` writes them for a model trained from scratch (tuned on the demo task); `train` uses
//! them unless a flag says otherwise. A pretrained XLM-R checkpoint has no such file, and then
//! the paper's settings apply (docs/method.md §3.1).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FILE: &str = "training_defaults.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainingDefaults {
    pub lr: f32,
    pub schedule: String,
    /// Warmup updates; `None` = 1% of `--max-steps`.
    pub warmup_steps: Option<u64>,
    pub dropout: f32,
    pub label_smoothing: f32,
    pub max_tokens: usize,
    pub weight_decay: f32,
    pub clip_norm: f32,
    /// Why these values (shown in logs).
    pub note: String,
}

impl TrainingDefaults {
    /// The paper's task-finetuning settings for a pretrained XLM-R (docs/method.md §3.1).
    pub fn paper() -> Self {
        TrainingDefaults {
            lr: 5e-5,
            schedule: "warmup-constant".into(),
            warmup_steps: None,
            dropout: 0.1,
            label_smoothing: 0.0,
            max_tokens: 4096,
            weight_decay: 0.01,
            clip_norm: 1.0,
            note: "paper defaults for diffusive adaptation of a pretrained XLM-R".into(),
        }
    }

    /// Settings for a small model trained from scratch (what `dlm-engine demo` uses).
    pub fn from_scratch() -> Self {
        TrainingDefaults {
            lr: 1e-3,
            schedule: "linear".into(),
            warmup_steps: Some(100),
            dropout: 0.1,
            label_smoothing: 0.1,
            max_tokens: 1024,
            weight_decay: 0.01,
            clip_norm: 1.0,
            note: "from-scratch settings written by `dlm-engine init` (tuned on the demo task)".into(),
        }
    }

    /// The file in `model_dir`, or the paper's defaults when there is none.
    pub fn for_model(model_dir: &Path) -> Result<Self> {
        let p = model_dir.join(FILE);
        if !p.is_file() {
            return Ok(Self::paper());
        }
        let text = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
        let d: Self = serde_json::from_str(&text).with_context(|| format!("{}: not valid training defaults", p.display()))?;
        d.validate(&p.display().to_string())?;
        Ok(d)
    }

    /// Every field in its range; errors name the file and the field.
    pub fn validate(&self, file: &str) -> Result<()> {
        use crate::util::range;
        range::positive(&format!("{file}: field `lr`"), self.lr)?;
        range::unit(&format!("{file}: field `dropout`"), self.dropout)?;
        range::unit(&format!("{file}: field `label_smoothing`"), self.label_smoothing)?;
        range::at_least(&format!("{file}: field `max_tokens`"), self.max_tokens as u64, 1)?;
        range::non_negative(&format!("{file}: field `weight_decay`"), self.weight_decay)?;
        range::non_negative(&format!("{file}: field `clip_norm`"), self.clip_norm)?;
        self.schedule.parse::<super::schedule::Schedule>().with_context(|| format!("{file}: field `schedule`"))?;
        Ok(())
    }

    pub fn save(&self, model_dir: &Path) -> Result<()> {
        crate::util::write_atomic(&model_dir.join(FILE), serde_json::to_string_pretty(self)?.as_bytes())
    }
}
