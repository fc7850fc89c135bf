//! Checkpoints: the model in the HF layout plus everything needed to resume exactly
//! (optimizer moments, step, data position, RNG state), written atomically: into a temporary
//! directory first, then renamed into place.

use super::optim::Optimizer;
use crate::backend::Backend;
use crate::model::XlmR;
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Everything besides weights and moments that a resumed run needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer updates done.
    pub step: u64,
    /// The noise RNG (timesteps and masks).
    pub rng: Rng,
    /// Opaque position of the data sampler.
    pub data: serde_json::Value,
    pub tokens_seen: u64,
    pub skipped_steps: u64,
    pub elapsed_secs: f64,
    /// The settings the run was started with (informational; the CLI re-applies them).
    pub settings: serde_json::Value,
}

/// Writes `dir` (replacing any previous one) with config.json, the weights (`model.safetensors`,
/// or shards past `max_shard_size`: `XlmR::save_with`), tokenizer.json
/// (copied from `tokenizer`), optimizer.safetensors and trainer_state.json.
pub fn save<B: Backend>(dir: &Path, model: &XlmR<B>, opt: &Optimizer<B>, state: &TrainerState, tokenizer: &Path) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    let name = dir.file_name().with_context(|| format!("{}: not a directory path", dir.display()))?;
    let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).ok();
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    model.save(&tmp)?;
    std::fs::copy(tokenizer, tmp.join("tokenizer.json")).with_context(|| format!("{}: cannot copy the tokenizer", tokenizer.display()))?;
    let defaults = tokenizer.with_file_name("training_defaults.json");
    if defaults.is_file() {
        std::fs::copy(&defaults, tmp.join("training_defaults.json")).ok();
    }
    opt.save(model, &tmp.join(OPTIMIZER_FILE))?;
    crate::util::write_atomic(&tmp.join(STATE_FILE), serde_json::to_string_pretty(state)?.as_bytes())?;
    crate::util::replace_dir(&tmp, dir)
}

pub fn load_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read (is this a dlm-engine checkpoint?)", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a valid trainer state", p.display()))
}

/// The files a checkpoint must hold to be resumed from, besides its weights (`model.safetensors`
/// or a shard index and every shard it names).
pub const CHECKPOINT_FILES: [&str; 4] = ["config.json", "tokenizer.json", OPTIMIZER_FILE, STATE_FILE];

/// The first file a checkpoint directory lacks, if any.
pub fn missing_file(dir: &Path) -> Option<&'static str> {
    if let Some(f) = CHECKPOINT_FILES.iter().copied().find(|f| !dir.join(f).is_file()) {
        return Some(f);
    }
    crate::model::shards::weight_files(dir).is_err().then_some("weights (model.safetensors, or an index with all its shards)")
}

/// The step of a checkpoint directory's name: `checkpoint-N`, or `final` (its step is in its state).
fn checkpoint_step(name: &str) -> Option<u64> {
    name.strip_prefix("checkpoint-")?.parse().ok()
}

/// Resolves `--resume PATH`: a checkpoint directory, or a run directory whose newest complete
/// checkpoint (`checkpoint-N/` or `final/`, by step) is taken. Directories that lack one of the
/// checkpoint files (an interrupted write or prune) are never chosen.
pub fn resolve_resume(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        if let Some(f) = missing_file(path) {
            bail!("{}: incomplete checkpoint (no {f}); resume from another one", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let mut best: Option<(u64, PathBuf)> = None;
    let entries = std::fs::read_dir(path).with_context(|| format!("{}: cannot read the run directory", path.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if checkpoint_step(&name).is_none() && name != "final" {
            continue;
        }
        let p = e.path();
        if !p.is_dir() || missing_file(&p).is_some() {
            continue;
        }
        let st = load_state(&p)?;
        if best.as_ref().is_none_or(|(s, _)| st.step > *s) {
            best = Some((st.step, p));
        }
    }
    match best {
        Some((_, p)) => Ok(p),
        None => bail!(
            "{}: no complete checkpoint found (expected a directory with {} and the weights)",
            path.display(),
            CHECKPOINT_FILES.join(", ")
        ),
    }
}

/// Removes a directory atomically as far as readers go: it is first renamed to a hidden name
/// (so no partial directory is ever left under its real name), then deleted.
pub fn remove_dir_atomic(dir: &Path) -> Result<()> {
    let name = dir.file_name().with_context(|| format!("{}: not a directory path", dir.display()))?;
    let aside = dir.with_file_name(format!(".{}.deleting-{}", name.to_string_lossy(), std::process::id()));
    std::fs::rename(dir, &aside).with_context(|| format!("{}: cannot move aside for deletion", dir.display()))?;
    std::fs::remove_dir_all(&aside).with_context(|| format!("{}: cannot delete", aside.display()))
}

/// Removes (atomically) the `checkpoint-*` directories of a run past `step`: after a resume from
/// an earlier checkpoint they hold an abandoned continuation, which pruning would keep (their
/// numbers are higher) and `--resume RUN` would pick. Returns their names.
pub fn remove_after(run_dir: &Path, step: u64) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(run_dir).with_context(|| format!("{}: cannot read the run directory", run_dir.display()))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if checkpoint_step(&name).is_some_and(|s| s > step) {
            remove_dir_atomic(&e.path())?;
            removed.push(name);
        }
    }
    removed.sort();
    Ok(removed)
}

/// Removes all but the newest `keep` `checkpoint-*` directories of a run, each atomically.
pub fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    let mut cps: Vec<(u64, PathBuf)> = std::fs::read_dir(run_dir)
        .with_context(|| format!("{}: cannot read the run directory", run_dir.display()))?
        .flatten()
        .filter_map(|e| Some((checkpoint_step(&e.file_name().to_string_lossy())?, e.path())))
        .collect();
    cps.sort();
    while cps.len() > keep {
        let (_, p) = cps.remove(0);
        remove_dir_atomic(&p)?;
    }
    Ok(())
}

/// Whether `name` is a temporary left in a run directory by an interrupted checkpoint write,
/// replacement or prune, or an interrupted atomic file write.
pub fn is_debris(name: &str) -> bool {
    let ours = [".checkpoint-", ".final.", ".metrics.jsonl.", ".tokenizer.json.", ".training_defaults.json.", ".run.json."];
    ours.iter().any(|p| name.starts_with(p)) && [".tmp-", ".old-", ".deleting-"].iter().any(|m| name.contains(m))
}

/// Deletes what interrupted runs left behind in `run_dir` (call it holding the run's lock).
pub fn clean_debris(run_dir: &Path) -> Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(run_dir).with_context(|| format!("{}: cannot read the run directory", run_dir.display()))?.flatten() {
        if !is_debris(&e.file_name().to_string_lossy()) {
            continue;
        }
        let p = e.path();
        let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        r.with_context(|| format!("{}: cannot remove a leftover temporary", p.display()))?;
        n += 1;
    }
    Ok(n)
}
