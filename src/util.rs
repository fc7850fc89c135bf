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
        return Ok(Duration::from_secs_f64(secs));
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
    Ok(Duration::from_secs_f64(total))
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
