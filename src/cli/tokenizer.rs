//! `dlm-engine tokenizer train`: train an XLM-R-shaped Unigram tokenizer on JSONL data.
use crate::data::jsonl::{JsonlReader, SkipReport};
use crate::tokenizer::train_unigram;
use anyhow::{anyhow, bail, Result};
use clap::{Args as ClapArgs, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: TokenizerCommand,
}

#[derive(Subcommand, Debug)]
pub enum TokenizerCommand {
    /// Train a Unigram tokenizer (XLM-R layout: <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last) on
    /// both fields of every JSONL record, and write tokenizer.json.
    Train(TrainArgs),
}

#[derive(ClapArgs, Debug)]
pub struct TrainArgs {
    /// JSONL files with {"src","tgt"} or {"inputs","targets"} records.
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// Total number of ids, special tokens included.
    #[arg(long)]
    pub vocab_size: usize,
    /// Where to write tokenizer.json.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub data: super::args::DataArgs,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        TokenizerCommand::Train(a) => train(a),
    }
}

/// What the streaming reader saw, shared with the iterator the trainer consumes on its threads.
#[derive(Default)]
struct ReadState {
    error: Option<anyhow::Error>,
    records: usize,
    skips: SkipReport,
}

fn train(a: TrainArgs) -> Result<()> {
    let started = Instant::now();
    crate::tokenizer::check_train_vocab(a.vocab_size)?;
    let opts = a.data.jsonl(true);
    // Open every file first so a wrong path fails before any work.
    let readers = a.input.iter().map(|p| JsonlReader::open(p, &opts)).collect::<Result<Vec<_>>>()?;

    let progress = ProgressBar::new_spinner();
    progress.set_style(ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("static template"));
    progress.enable_steady_tick(std::time::Duration::from_millis(200));
    let state = Mutex::new(ReadState::default());
    let texts = ReadTexts { readers, current: 0, pending_tgt: None, state: &state, progress: &progress };
    let trained = train_unigram(texts, a.vocab_size);
    progress.finish_and_clear();

    let st = state.into_inner().map_err(|_| anyhow!("reader state poisoned"))?;
    if let Some(e) = st.error {
        return Err(e);
    }
    if st.skips.skipped > 0 {
        eprintln!("skipped {} bad line(s); first ones:", st.skips.skipped);
        for r in &st.skips.first_reasons {
            eprintln!("  {r}");
        }
    }
    if st.records == 0 {
        bail!("no records found in {}", join_paths(&a.input));
    }
    let tok = trained?;
    tok.save(&a.out)?;
    let s = tok.special();
    crate::outln!(
        "trained Unigram tokenizer on {} record(s) ({} texts) from {} file(s) in {:.1}s",
        st.records,
        2 * st.records,
        a.input.len(),
        started.elapsed().as_secs_f64()
    )?;
    crate::outln!(
        "vocab size {} (asked {}); <s>={} <pad>={} </s>={} <unk>={} <mask>={}",
        tok.vocab_size(),
        a.vocab_size,
        s.bos,
        s.pad,
        s.eos,
        s.unk,
        s.mask
    )?;
    crate::outln!("wrote {}", a.out.display())?;
    Ok(())
}

fn join_paths(ps: &[PathBuf]) -> String {
    ps.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Streams source and target texts of all files. The trainer's iterator cannot return errors,
/// so the first error is parked in `state` and ends the stream; `train` reports it afterwards.
struct ReadTexts<'a> {
    readers: Vec<JsonlReader>,
    current: usize,
    pending_tgt: Option<String>,
    state: &'a Mutex<ReadState>,
    progress: &'a ProgressBar,
}

impl Iterator for ReadTexts<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if let Some(t) = self.pending_tgt.take() {
            return Some(t);
        }
        while self.current < self.readers.len() {
            let reader = &mut self.readers[self.current];
            match reader.next() {
                Some(Ok(rec)) => {
                    let mut st = self.state.lock().ok()?;
                    st.records += 1;
                    if st.records % 10_000 == 0 {
                        self.progress.set_message(format!("read {} records", st.records));
                    }
                    self.pending_tgt = rec.tgt;
                    return Some(rec.src);
                }
                Some(Err(e)) => {
                    if let Ok(mut st) = self.state.lock() {
                        st.error = Some(e);
                    }
                    self.current = self.readers.len();
                    return None;
                }
                None => {
                    if let Ok(mut st) = self.state.lock() {
                        st.skips.merge(reader.skips());
                    }
                    self.current += 1;
                }
            }
        }
        if let Ok(st) = self.state.lock() {
            self.progress.set_message(format!("read {} records; training the Unigram model", st.records));
        }
        None
    }
}
