//! Option groups several subcommands share (flattened into their `Args`).

use super::device::Device;
use crate::data::jsonl::{JsonlOptions, Keys};
use crate::metrics::{Metric, Tokenize};
use clap::Args as ClapArgs;

/// Which JSONL fields hold the texts, and what to do with malformed lines.
#[derive(ClapArgs, Debug, Clone, Default)]
pub struct DataArgs {
    /// Key of the source text (default: detected per file: src/tgt or inputs/targets).
    #[arg(long, requires = "tgt_key")]
    pub src_key: Option<String>,
    /// Key of the target text (default: detected per file).
    #[arg(long, requires = "src_key")]
    pub tgt_key: Option<String>,
    /// Skip and count malformed lines instead of stopping at the first one.
    #[arg(long)]
    pub skip_bad_lines: bool,
}

impl DataArgs {
    pub fn jsonl(&self, require_tgt: bool) -> JsonlOptions {
        let keys = self.src_key.clone().zip(self.tgt_key.clone()).map(|(s, t)| Keys::new(s, t));
        JsonlOptions { keys, require_tgt, skip_bad_lines: self.skip_bad_lines, keep_extra: false }
    }
}

/// Where to run.
#[derive(ClapArgs, Debug, Clone)]
pub struct DeviceArgs {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// CPU worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl Default for DeviceArgs {
    fn default() -> Self {
        DeviceArgs { device: Device::Cpu, threads: 0 }
    }
}

/// How hypotheses are scored against references.
#[derive(ClapArgs, Debug, Clone)]
pub struct ScoreArgs {
    /// Metric to compute.
    #[arg(long, value_enum, default_value_t = Metric::Bleu)]
    pub metric: Metric,
    /// BLEU tokenizer (ignored by rouge-l and exact).
    #[arg(long, value_enum, default_value_t = Tokenize::Tok13a)]
    pub tokenize: Tokenize,
    /// Lowercase hypotheses and references before scoring (as the paper's code does;
    /// ROUGE-L always lowercases).
    #[arg(long)]
    pub lowercase: bool,
}
