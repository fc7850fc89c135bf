//! The `dlm-engine` subcommands; `main.rs` only parses and dispatches.
//! Each subcommand owns one file with its clap `Args` and a `run` function.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "dlm-engine",
    version,
    about = "Train and sample diffusion language models (RDM on XLM-R), on CPU or CUDA.",
    long_about = "dlm-engine turns a masked LM (XLM-R base/large/XL/XXL, Hugging Face layout) into a \
reparameterized absorbing diffusion model by finetuning with the RDM objective, and generates text by \
iterative top-k confidence unmasking (Ye et al., 2023). One binary, no Python at run time.\n\n\
Start with `dlm-engine demo`: it builds a small task, trains a tiny model on the CPU and samples it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Time the sampling or training step at a preset shape (`bench sample`, `bench train`).
    Bench(crate::cli::bench::Args),
    /// Convert a PyTorch checkpoint (pytorch_model.bin) into a model directory with model.safetensors.
    #[command(long_about = crate::cli::convert::LONG_ABOUT)]
    Convert(crate::cli::convert::Args),
    /// The embedded default job: make a small task, train a tokenizer, a tiny model and its length
    /// predictor on the CPU, sample held-out examples with oracle and predicted lengths and report
    /// exact match (about a minute on 2 cores).
    Demo(demo::Args),
    /// Score hypotheses against references: BLEU (as sacreBLEU), ROUGE-L, exact match or last integer.
    #[command(long_about = crate::cli::eval::LONG_ABOUT)]
    Eval(crate::cli::eval::Args),
    /// Predict the tokens at each <mask> of a text (the Hugging Face fill-mask pipeline).
    FillMask(crate::cli::fill_mask::Args),
    /// Write a randomly initialised model (config.json, model.safetensors or shards, tokenizer.json).
    Init(crate::cli::init::Args),
    /// The memory plan: what sampling and training need per GPU (weights, master copy, moments,
    /// gradients, activations, workspace) at each ZeRO stage, and whether it fits.
    #[command(long_about = crate::cli::plan::LONG_ABOUT)]
    Plan(crate::cli::plan::Args),
    /// Tokenizer tools (`tokenizer train`: a Unigram tokenizer in XLM-R layout from JSONL data).
    Tokenizer(crate::cli::tokenizer::Args),
    /// Diffusive adaptation: finetune a masked LM with the RDM objective on JSONL pairs.
    Train(Box<crate::cli::train::Args>),
    /// Generate with iterative top-k confidence unmasking (the RDM sampler).
    Sample(Box<crate::cli::sample::Args>),
}

pub mod args;
pub mod bench;
pub mod convert;
pub mod demo;
pub mod device;
pub mod eval;
pub mod fill_mask;
pub mod init;
pub mod length_beam;
pub mod plan;
pub mod sample;
mod show_steps;
pub mod tokenizer;
pub mod train;
pub mod train_data;
mod train_dist;

/// Runs a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(a) => bench::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Eval(a) => eval::run(a),
        Command::FillMask(a) => fill_mask::run(a),
        Command::Init(a) => init::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Tokenizer(a) => tokenizer::run(a),
        Command::Train(a) => train::run(*a),
        Command::Sample(a) => sample::run(*a),
    }
}

/// Standard output went away (a closed pipe, e.g. `| head -0`, or a closed descriptor): the
/// command ends quietly, as `cat` does, instead of failing on a result nobody reads.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
pub struct StdoutClosed;

/// Writes `text` to standard output; a closed output becomes `StdoutClosed`, never a panic.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        // EBADF: the descriptor was closed.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe || e.raw_os_error() == Some(9) => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to standard output")),
    }
}

/// `println!` that returns an error instead of panicking when standard output is closed.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}
