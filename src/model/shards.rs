//! Model weights on disk: one `model.safetensors`, or transformers' sharded layout
//! (`model-00001-of-00003.safetensors`, ... with `model.safetensors.index.json`, whose
//! `weight_map` names the shard of every tensor). Both are read through memory maps one tensor at
//! a time (`read`) and written one tensor at a time (`write`), so neither side ever holds a whole
//! model's worth of f32 values besides the model itself.

use anyhow::{bail, Result};
use safetensors::Dtype;
use std::path::{Path, PathBuf};

mod read;
mod write;

pub use read::{weight_files, WeightFiles};
pub use write::{write_sharded, ShardWriter, TensorSpec};

/// The single-file layout's weights.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The sharded layout's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// transformers' default `max_shard_size` ("5GB", decimal).
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

/// The name of shard `i` (from 0) of `n`, as transformers names them.
pub fn shard_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
}

/// Whether `name` has the form of a shard's name (`model-NNNNN-of-NNNNN.safetensors`).
pub fn is_shard_name(name: &str) -> bool {
    let Some(mid) = name.strip_prefix("model-").and_then(|s| s.strip_suffix(".safetensors")) else { return false };
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    mid.split_once("-of-").is_some_and(|(a, b)| digits(a) && digits(b))
}

/// Bytes of one element of a weight dtype; the weights may be f32, f16 or bf16.
pub fn dtype_size(d: Dtype) -> Option<usize> {
    match d {
        Dtype::F32 => Some(4),
        Dtype::F16 | Dtype::BF16 => Some(2),
        _ => None,
    }
}

/// Parses a shard size as transformers does: a number of bytes, or with a unit `KB`/`MB`/`GB`
/// (powers of 1000) or `KiB`/`MiB`/`GiB` (powers of 1024), e.g. `5GB`, `200KB`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        _ => bail!("`{s}`: unknown size unit `{}` (use a byte count or KB, MB, GB, KiB, MiB, GiB, e.g. 5GB)", unit.trim()),
    };
    let v: f64 = num.parse().map_err(|_| anyhow::anyhow!("`{s}`: expected a size such as 5GB, 200KB or 1000000"))?;
    let bytes = v * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        bail!("`{s}`: a shard size must be at least 1 byte");
    }
    Ok(bytes as u64)
}

/// The weights file(s) of `dir` that exist, in either layout (for callers that must not
/// overwrite them). The index's shards are listed as the index names them.
pub fn existing_weight_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.join(SINGLE_FILE), dir.join(INDEX_FILE)];
    if let Ok(files) = weight_files(dir) {
        out.extend(files);
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_follow_transformers() {
        assert_eq!(shard_name(0, 3), "model-00001-of-00003.safetensors");
        assert!(is_shard_name("model-00012-of-00100.safetensors"));
        assert!(!is_shard_name("model.safetensors"));
        assert!(!is_shard_name("model-1-of-3.safetensors"));
        assert!(!is_shard_name("optimizer-00001-of-00002.safetensors"));
    }

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("200KB").unwrap(), 200_000);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("12345").unwrap(), 12345);
        assert!(parse_size("5XB").unwrap_err().to_string().contains("unknown size unit"));
        assert!(parse_size("0").is_err());
        assert!(parse_size("GB").is_err());
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;
    use std::collections::BTreeMap;

    fn specs() -> Vec<TensorSpec> {
        vec![
            TensorSpec::f32("a", vec![4, 8]),
            TensorSpec { name: "b".into(), shape: vec![16], dtype: safetensors::Dtype::BF16 },
            TensorSpec::f32("c", vec![20]),
            TensorSpec { name: "d".into(), shape: vec![3, 2], dtype: safetensors::Dtype::F16 },
        ]
    }

    fn values(i: usize, s: &TensorSpec) -> Vec<f32> {
        // Values every dtype holds exactly.
        (0..s.shape.iter().product::<usize>()).map(|j| (i * 100 + j) as f32 * 0.25 - 3.0).collect()
    }

    fn write(dir: &Path, max: u64) -> Vec<PathBuf> {
        write_sharded(dir, specs(), max, BTreeMap::from([("format".into(), "pt".into())]), |i, s| Ok(values(i, s))).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn shards_round_trip_and_follow_the_size_limit() {
        let d = tempfile::tempdir().unwrap();
        // 128 + 32 + 80 + 12 bytes: a alone (larger than the limit), b (b + c would pass 100),
        // then c and d.
        write(d.path(), 100);
        assert_eq!(
            names(d.path()),
            ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", INDEX_FILE]
        );
        let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join(INDEX_FILE)).unwrap()).unwrap();
        assert_eq!(index["metadata"]["total_size"], 128 + 32 + 80 + 12);
        assert_eq!(index["weight_map"]["a"], "model-00001-of-00003.safetensors");
        assert_eq!(index["weight_map"]["b"], "model-00002-of-00003.safetensors");
        assert_eq!(index["weight_map"]["c"], "model-00003-of-00003.safetensors");
        assert_eq!(index["weight_map"]["d"], "model-00003-of-00003.safetensors");
        let w = WeightFiles::open(d.path()).unwrap();
        for (i, s) in specs().iter().enumerate() {
            assert_eq!(w.read_f32(&s.name, 0).unwrap(), values(i, s), "{}", s.name);
        }
        // The safetensors library reads every shard, with the metadata.
        let bytes = std::fs::read(d.path().join("model-00002-of-00003.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("b").unwrap().dtype(), safetensors::Dtype::BF16);
        assert_eq!(w.metadata("format").unwrap().as_deref(), Some("pt"));
    }

    #[test]
    fn a_save_in_one_layout_removes_the_other() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), 100);
        write(d.path(), 1 << 20);
        assert_eq!(names(d.path()), [SINGLE_FILE]);
        write(d.path(), 200);
        assert_eq!(names(d.path()), ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", INDEX_FILE]);
        // Both layouts at once (e.g. copied by hand) are refused, naming both.
        std::fs::write(d.path().join(SINGLE_FILE), b"x").unwrap();
        let e = WeightFiles::open(d.path()).err().unwrap().to_string();
        assert!(e.contains(SINGLE_FILE) && e.contains(INDEX_FILE), "{e}");
    }

    #[test]
    fn the_writer_checks_order_and_sizes_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::new(d.path(), specs(), 130, BTreeMap::new()).unwrap();
        assert!(w.write("b", &[0.0; 16]).unwrap_err().to_string().contains("out of order"));
        assert!(w.write("a", &[0.0; 3]).unwrap_err().to_string().contains("3 values given"));
        w.write("a", &[0.0; 32]).unwrap();
        assert!(w.write_bytes("b", &[0; 4]).unwrap_err().to_string().contains("needs 32"));
        drop(w);
        assert!(names(d.path()).is_empty(), "temporaries removed: {:?}", names(d.path()));
        let dup = vec![TensorSpec::f32("a", vec![1]), TensorSpec::f32("a", vec![1])];
        assert!(ShardWriter::new(d.path(), dup, 10, BTreeMap::new()).is_err());
        let w = ShardWriter::new(d.path(), specs(), 130, BTreeMap::new()).unwrap();
        assert!(w.finish().unwrap_err().to_string().contains("0 of 4"));
    }
}
