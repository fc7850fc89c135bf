//! The run directory of `train --out`: what may be written into, the lock that keeps a second
//! process out, the files a run owns (so nothing it needs lives in a checkpoint that pruning
//! deletes), and the cleanup of what interrupted runs left behind.

use super::checkpoint;
use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Marks a directory as a dlm-engine run and records the settings it was started with.
pub const RUN_FILE: &str = "run.json";
/// Held (an exclusive advisory lock) by the process training into the run; holds its pid.
pub const LOCK_FILE: &str = ".lock";
pub const METRICS_FILE: &str = "metrics.jsonl";

/// How `train --out` may treat an existing run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only an empty or missing directory.
    New,
    /// An existing run is continued.
    Resume,
    /// An existing run is cleared first (`--overwrite`).
    Overwrite,
}

/// An open run directory; the lock is released when it is dropped (or the process dies).
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    _lock: std::fs::File,
}

/// Whether `dir` holds a run of this tool (a run file, a metrics file or a checkpoint).
pub fn is_run(dir: &Path) -> bool {
    if dir.join(RUN_FILE).is_file() || dir.join(METRICS_FILE).is_file() {
        return true;
    }
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                (n == "final" || n.starts_with("checkpoint-")) && e.path().join(checkpoint::STATE_FILE).is_file()
            })
        })
        .unwrap_or(false)
}

/// Empty but for a lock file and the temporaries of a run killed before it marked the
/// directory as a run.
fn is_empty_but_lock(dir: &Path) -> Result<bool> {
    let d = std::fs::read_dir(dir).with_context(|| format!("{}: cannot read", dir.display()))?;
    Ok(d.flatten().all(|e| e.file_name() == LOCK_FILE || checkpoint::is_debris(&e.file_name().to_string_lossy())))
}

/// The lock on a run directory, taken before anything about the run is read; `open` turns it
/// into the open run. Dropped unopened, it removes the directory again if it created it.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    file: Option<std::fs::File>,
    created: bool,
}

/// Locks `out` for training: refuses a path that is not a directory or a non-empty directory
/// that is not a run (writing nothing there), creates it when missing, and takes the lock,
/// naming the process that holds it.
pub fn lock(out: &Path) -> Result<RunLock> {
    let mut created = false;
    match std::fs::metadata(out) {
        Ok(m) if !m.is_dir() => bail!("{}: exists and is not a directory; choose another --out", out.display()),
        Ok(_) => {
            if !is_empty_but_lock(out)? && !is_run(out) {
                bail!("{}: exists, is not empty and is not a dlm-engine run; choose another --out (nothing was written)", out.display());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create the run directory", out.display()))?;
            created = true;
        }
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", out.display())),
    }
    let file = match lock_file(out) {
        Ok(f) => f,
        Err(e) => {
            if created {
                std::fs::remove_file(out.join(LOCK_FILE)).ok();
                std::fs::remove_dir(out).ok();
            }
            return Err(e);
        }
    };
    Ok(RunLock { path: out.to_path_buf(), file: Some(file), created })
}

impl RunLock {
    /// Opens the locked run: refuses an existing run unless `mode` allows it, removes leftover
    /// temporaries and, with `Mode::Overwrite`, the old run's files, and writes `record` as the
    /// run file unless the run has one.
    pub fn open(mut self, mode: Mode, record: &serde_json::Value) -> Result<RunDir> {
        let out = self.path.clone();
        if mode == Mode::New && is_run(&out) {
            bail!(
                "{}: already holds a training run; give --resume {} to continue it, or --overwrite to delete it and start again",
                out.display(),
                out.display()
            );
        }
        checkpoint::clean_debris(&out)?;
        if mode == Mode::Overwrite {
            clear(&out)?;
        }
        let run_file = out.join(RUN_FILE);
        if !run_file.is_file() {
            crate::util::write_atomic(&run_file, serde_json::to_string_pretty(record)?.as_bytes())?;
        }
        let lock = self.file.take().context("run lock already used")?;
        Ok(RunDir { path: out, _lock: lock })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Not opened (an error came first): leave no directory behind that this process made.
        if self.file.is_some() && self.created && is_empty_but_lock(&self.path).unwrap_or(false) {
            std::fs::remove_file(self.path.join(LOCK_FILE)).ok();
            std::fs::remove_dir(&self.path).ok();
        }
    }
}

/// Deletes a run's own files (checkpoints, final model, metrics, run files); nothing else.
fn clear(out: &Path) -> Result<()> {
    for e in std::fs::read_dir(out).with_context(|| format!("{}: cannot read", out.display()))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        if (n == "final" || n.starts_with("checkpoint-")) && p.is_dir() {
            checkpoint::remove_dir_atomic(&p)?;
        } else if [RUN_FILE, METRICS_FILE, "tokenizer.json", "training_defaults.json"].contains(&n.as_str()) {
            std::fs::remove_file(&p).with_context(|| format!("{}: cannot delete", p.display()))?;
        }
    }
    Ok(())
}

/// Takes the run's lock file (an advisory lock the kernel drops when the process dies, so a
/// lock left by a dead process is simply taken over) and writes this process's id into it.
fn lock_file(out: &Path) -> Result<std::fs::File> {
    let path = out.join(LOCK_FILE);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("{}: cannot open the lock file", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            f.read_to_string(&mut holder).ok();
            let holder = holder.trim();
            let who = if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
            bail!("{}: in use by {who} (lock file {}); wait for it to finish or stop it", out.display(), path.display());
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("{}: cannot lock", path.display())),
    }
    f.set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| writeln!(f, "{}", std::process::id()).and_then(|_| f.flush()))
        .with_context(|| format!("{}: cannot write the lock file", path.display()))?;
    Ok(f)
}

/// Copies `name` from `from` into the run (atomically), if `from` has it; returns the new path.
pub fn adopt_file(run: &Path, from: &Path, name: &str) -> Result<Option<PathBuf>> {
    let src = from.join(name);
    if !src.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&src).with_context(|| format!("{}: cannot read", src.display()))?;
    let dst = run.join(name);
    crate::util::write_atomic(&dst, &bytes)?;
    Ok(Some(dst))
}

/// Keeps only the lines of `metrics.jsonl` logged at or before `step` (a resumed run logs the
/// later ones again); a torn last line from a killed process goes too.
pub fn truncate_metrics(run: &Path, step: u64) -> Result<()> {
    let p = run.join(METRICS_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", p.display())),
    };
    let mut kept = String::new();
    let mut dropped = 0usize;
    for line in text.split_inclusive('\n') {
        let complete = line.ends_with('\n');
        let at = serde_json::from_str::<serde_json::Value>(line.trim_end()).ok().and_then(|v| v.get("step").and_then(|s| s.as_u64()));
        match at {
            Some(s) if s <= step && complete => kept.push_str(line),
            _ => dropped += 1,
        }
    }
    if dropped > 0 {
        crate::util::write_atomic(&p, kept.as_bytes())?;
    }
    Ok(())
}
