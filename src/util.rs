//! Small shared helpers: atomic file and directory writes, duration parsing.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("{}: write failed", tmp.display()))?;
        f.sync_all().ok();
    }
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot move into place", path.display()))?;
    Ok(())
}

/// Range checks for flags and file fields; each error is one line naming `what`.
pub mod range {
    use anyhow::{bail, Result};

    /// A finite number greater than 0.
    pub fn positive(what: &str, v: f32) -> Result<()> {
        if !(v.is_finite() && v > 0.0) {
            bail!("{what} ({v}) must be a finite number greater than 0");
        }
        Ok(())
    }

    /// A finite number at least 0.
    pub fn non_negative(what: &str, v: f32) -> Result<()> {
        if !(v.is_finite() && v >= 0.0) {
            bail!("{what} ({v}) must be a finite number at least 0");
        }
        Ok(())
    }

    /// A probability-like number in [0, 1).
    pub fn unit(what: &str, v: f32) -> Result<()> {
        if !(0.0..1.0).contains(&v) {
            bail!("{what} ({v}) must be in [0, 1)");
        }
        Ok(())
    }

    /// A count of at least `min`.
    pub fn at_least(what: &str, v: u64, min: u64) -> Result<()> {
        if v < min {
            bail!("{what} ({v}) must be at least {min}");
        }
        Ok(())
    }
}

/// What is at a command's output path, as far as writing it goes.
#[derive(Debug, PartialEq, Eq)]
pub enum OutputTarget {
    /// Nothing, or a regular file: written beside it and renamed over it.
    Replace(PathBuf),
    /// A device, FIFO or socket (only with `force`): written into, never replaced.
    Stream(PathBuf),
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        #[cfg(unix)]
        (Ok(x), Ok(y)) => {
            use std::os::unix::fs::MetadataExt;
            x.dev() == y.dev() && x.ino() == y.ino()
        }
        #[cfg(not(unix))]
        (Ok(_), Ok(_)) => std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok(),
        _ => false,
    }
}

/// Checks an output path before any work is done: a regular file or nothing is fine; a
/// directory is an error; a symbolic link, a device, a FIFO, a socket or one of `inputs` is
/// refused unless `force` (`flag` names the option that forces it), and then a link is
/// followed to its target and a device is written into rather than replaced.
pub fn check_output(path: &Path, inputs: &[PathBuf], force: bool, flag: &str) -> Result<OutputTarget> {
    let mut at = path.to_path_buf();
    for _ in 0..16 {
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(OutputTarget::Replace(at)),
            Err(e) => return Err(e).with_context(|| format!("{}: cannot inspect the output path", at.display())),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let link = std::fs::read_link(&at).with_context(|| format!("{}: cannot read the link", at.display()))?;
            let target = at.parent().unwrap_or(Path::new(".")).join(link);
            if !force {
                bail!(
                    "{}: is a symbolic link (to {}); refusing to write through it (give {flag} to write to its target)",
                    path.display(),
                    target.display()
                );
            }
            at = target;
            continue;
        }
        if ft.is_dir() {
            bail!("{}: is a directory; give a file path", path.display());
        }
        if !ft.is_file() {
            if !force {
                bail!("{}: is not a regular file (a device, FIFO or socket); refusing to write to it (give {flag} to)", path.display());
            }
            return Ok(OutputTarget::Stream(at));
        }
        if let Some(inp) = inputs.iter().find(|i| same_file(&at, i)) {
            if !force {
                bail!(
                    "{}: is an input of this command ({}); write elsewhere (or give {flag} to replace it)",
                    path.display(),
                    inp.display()
                );
            }
        }
        return Ok(OutputTarget::Replace(at));
    }
    bail!("{}: too many levels of symbolic links", path.display())
}

/// Writes a command's output to `path` as `check_output` allows (see there).
pub fn write_output(path: &Path, bytes: &[u8], inputs: &[PathBuf], force: bool, flag: &str) -> Result<()> {
    match check_output(path, inputs, force, flag)? {
        OutputTarget::Replace(p) => write_atomic(&p, bytes),
        OutputTarget::Stream(p) => {
            let mut f = std::fs::OpenOptions::new().write(true).open(&p).with_context(|| format!("{}: cannot open", p.display()))?;
            f.write_all(bytes).with_context(|| format!("{}: write failed", p.display()))
        }
    }
}

/// Replaces directory `dst` by the fully written directory `tmp` (both on the same filesystem).
/// An existing `dst` is moved aside first and removed only after the new one is in place.
pub fn replace_dir(tmp: &Path, dst: &Path) -> Result<()> {
    let old: Option<PathBuf> = if dst.exists() {
        let aside = dst.with_file_name(format!(
            ".{}.old-{}",
            dst.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(dst, &aside).with_context(|| format!("{}: cannot move the old directory aside", dst.display()))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(tmp, dst).with_context(|| format!("{}: cannot move the new directory into place", dst.display()))?;
    if let Some(o) = old {
        std::fs::remove_dir_all(&o).ok();
    }
    Ok(())
}

/// Parses durations such as `300s`, `90m`, `2h`, `1h30m`, `45` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    if t.is_empty() {
        bail!("empty duration");
    }
    if let Ok(secs) = t.parse::<f64>() {
        return checked_duration(s, secs);
    }
    let mut total = 0.0f64;
    let mut num = String::new();
    for ch in t.chars() {
        if ch.is_ascii_digit() || ch == '.' {
            num.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => bail!("`{s}`: unknown unit `{ch}` (use s, m, h or d, e.g. 300s, 2h, 1h30m)"),
        };
        let v: f64 = num.parse().map_err(|_| anyhow::anyhow!("`{s}`: expected a number before `{ch}`"))?;
        total += v * unit;
        num.clear();
    }
    if !num.is_empty() {
        bail!("`{s}`: number `{num}` has no unit (use s, m, h or d)");
    }
    checked_duration(s, total)
}

/// The longest duration accepted: 100 years.
const MAX_DURATION_SECS: f64 = 100.0 * 365.0 * 86400.0;

fn checked_duration(s: &str, secs: f64) -> Result<Duration> {
    if !secs.is_finite() || secs <= 0.0 {
        bail!("`{s}`: a duration must be a positive, finite time (e.g. 300s, 2h)");
    }
    if secs > MAX_DURATION_SECS {
        bail!("`{s}`: too long ({secs:.3e} s); at most 100 years");
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300s").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("1h30").is_err());
        for bad in ["99999999999999999999h", "1e300", "inf", "nan", "-5", "0", "0s", "-1h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn atomic_write_replaces_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
