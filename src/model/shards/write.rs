//! Streamed safetensors writing: every tensor's name, dtype and shape is known before any data,
//! so each shard's header is written first and the tensors' bytes follow one tensor at a time.
//! Shards go to temporary files beside their final names and are renamed into place by `finish`,
//! which then writes the index (sharded layout only) and removes the other layout's files.

use super::{dtype_size, is_shard_name, shard_name, INDEX_FILE, SINGLE_FILE};
use crate::util::write_atomic;
use anyhow::{bail, Context, Result};
use safetensors::Dtype;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A tensor to be written: its name in the file, shape and on-disk dtype (F32, F16 or BF16).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
}

impl TensorSpec {
    pub fn f32(name: impl Into<String>, shape: Vec<usize>) -> Self {
        TensorSpec { name: name.into(), shape, dtype: Dtype::F32 }
    }

    fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    fn bytes(&self) -> u64 {
        (self.elements() * dtype_size(self.dtype).unwrap_or(4)) as u64
    }
}

/// The shard currently being written.
struct Open {
    shard: usize,
    file: BufWriter<File>,
    tmp: PathBuf,
}

/// Writes a model's tensors in a fixed order, one at a time, into `model.safetensors` (when they
/// fit in one shard) or into `model-0000i-of-0000n.safetensors` shards plus
/// `model.safetensors.index.json`. Call `write` (or `write_bytes`) once per tensor in the order
/// of the specs, then `finish`; a writer dropped before `finish` removes its temporary files.
pub struct ShardWriter {
    dir: PathBuf,
    specs: Vec<TensorSpec>,
    /// The shard of each tensor.
    shard_of: Vec<usize>,
    /// Final file names, one per shard.
    files: Vec<String>,
    metadata: BTreeMap<String, String>,
    /// The next tensor to be written.
    next: usize,
    /// Shards opened so far (the last one may still be open).
    opened: usize,
    open: Option<Open>,
    /// Temporary files of the shards already closed, by shard.
    closed: Vec<PathBuf>,
}

impl ShardWriter {
    /// Plans the shards: tensors are taken in order and a new shard starts when the next tensor
    /// would take the current one past `max_shard_size` bytes of tensor data (a tensor larger
    /// than that gets a shard of its own), as transformers' `save_pretrained` does. `metadata`
    /// goes into every shard's header (`__metadata__`).
    pub fn new(dir: &Path, specs: Vec<TensorSpec>, max_shard_size: u64, metadata: BTreeMap<String, String>) -> Result<Self> {
        if max_shard_size == 0 {
            bail!("the maximum shard size must be at least 1 byte");
        }
        let mut seen = HashSet::new();
        for s in &specs {
            if dtype_size(s.dtype).is_none() {
                bail!("tensor `{}`: dtype {:?} cannot be written (only F32, F16 and BF16)", s.name, s.dtype);
            }
            if s.name.is_empty() || s.name == "__metadata__" || !seen.insert(s.name.as_str()) {
                bail!("tensor `{}`: empty, reserved or given twice", s.name);
            }
        }
        let mut shard_of = Vec::with_capacity(specs.len());
        let (mut shard, mut size) = (0usize, 0u64);
        for (i, s) in specs.iter().enumerate() {
            if i > 0 && size > 0 && size + s.bytes() > max_shard_size {
                shard += 1;
                size = 0;
            }
            size += s.bytes();
            shard_of.push(shard);
        }
        let n = shard + 1;
        let files = if n == 1 { vec![SINGLE_FILE.to_string()] } else { (0..n).map(|i| shard_name(i, n)).collect() };
        Ok(ShardWriter { dir: dir.to_path_buf(), specs, shard_of, files, metadata, next: 0, opened: 0, open: None, closed: Vec::new() })
    }

    /// The final file names, one per shard (`model.safetensors` alone when there is one).
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Writes the next tensor from f32 values, converted to its spec's dtype.
    pub fn write(&mut self, name: &str, data: &[f32]) -> Result<()> {
        let spec = self.expect(name, data.len())?;
        let dtype = spec.dtype;
        let file = self.file_for_next()?;
        let mut buf = Vec::with_capacity(1 << 16);
        for chunk in data.chunks(1 << 14) {
            buf.clear();
            match dtype {
                Dtype::F16 => chunk.iter().for_each(|x| buf.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes())),
                Dtype::BF16 => chunk.iter().for_each(|x| buf.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes())),
                _ => chunk.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
            }
            file.file.write_all(&buf).with_context(|| format!("{}: write failed", file.tmp.display()))?;
        }
        self.next += 1;
        Ok(())
    }

    /// Writes the next tensor from its little-endian bytes in its spec's dtype, unchanged.
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let spec = self.expect(name, usize::MAX)?;
        if bytes.len() as u64 != spec.bytes() {
            bail!("tensor `{name}`: {} bytes given, its shape {:?} in {:?} needs {}", bytes.len(), spec.shape, spec.dtype, spec.bytes());
        }
        let file = self.file_for_next()?;
        file.file.write_all(bytes).with_context(|| format!("{}: write failed", file.tmp.display()))?;
        self.next += 1;
        Ok(())
    }

    /// Moves every shard into place, writes the index (sharded layout) and removes the files
    /// of a previous save that the new layout does not use: the other layout's weights file(s)
    /// and shards of another count. Returns the paths written.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        if self.next != self.specs.len() {
            bail!("internal: {} of {} tensors were written before finishing", self.next, self.specs.len());
        }
        // Shards with no tensors (only when there are none at all) still get their file.
        while self.opened < self.files.len() {
            self.open_shard(self.opened)?;
        }
        self.close()?;
        let mut written = Vec::new();
        for (tmp, name) in std::mem::take(&mut self.closed).iter().zip(&self.files) {
            let path = self.dir.join(name);
            std::fs::rename(tmp, &path).with_context(|| format!("{}: cannot move into place", path.display()))?;
            written.push(path);
        }
        if self.files.len() > 1 {
            let path = self.dir.join(INDEX_FILE);
            write_atomic(&path, self.index().as_bytes())?;
            written.push(path);
        }
        self.remove_stale()?;
        Ok(written)
    }

    /// transformers' index: `{"metadata": {"total_size": bytes of tensor data}, "weight_map": {tensor: shard}}`.
    fn index(&self) -> String {
        let total: u64 = self.specs.iter().map(TensorSpec::bytes).sum();
        let map: BTreeMap<&str, &str> =
            self.specs.iter().zip(&self.shard_of).map(|(s, &i)| (s.name.as_str(), self.files[i].as_str())).collect();
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": map });
        serde_json::to_string_pretty(&index).unwrap_or_default() + "\n"
    }

    /// Removes weights files of the other layout or of an older shard count.
    fn remove_stale(&self) -> Result<()> {
        let keep: HashSet<&str> = self.files.iter().map(String::as_str).collect();
        let entries = std::fs::read_dir(&self.dir).with_context(|| format!("{}: cannot list", self.dir.display()))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = if keep.contains(name.as_str()) {
                false
            } else if self.files.len() == 1 {
                name == INDEX_FILE || is_shard_name(&name)
            } else {
                name == SINGLE_FILE || is_shard_name(&name)
            };
            if stale {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("{}: cannot remove the previous save's file", e.path().display()))?;
            }
        }
        Ok(())
    }

    /// Checks that `name` is the next tensor and (unless `len` is `usize::MAX`) has `len` values.
    fn expect(&self, name: &str, len: usize) -> Result<TensorSpec> {
        let Some(spec) = self.specs.get(self.next) else { bail!("tensor `{name}`: all {} tensors were already written", self.specs.len()) };
        if spec.name != name {
            bail!("tensor `{name}` written out of order: the next one is `{}`", spec.name);
        }
        if len != usize::MAX && len != spec.elements() {
            bail!("tensor `{name}`: {len} values given, its shape {:?} has {}", spec.shape, spec.elements());
        }
        Ok(spec.clone())
    }

    /// The open file of the next tensor's shard, opening it (and closing the previous one).
    fn file_for_next(&mut self) -> Result<&mut Open> {
        let shard = self.shard_of[self.next];
        while self.open.as_ref().is_none_or(|o| o.shard != shard) {
            self.open_shard(self.opened)?;
        }
        self.open.as_mut().context("internal: no open shard")
    }

    /// Closes the open shard (if any) and opens shard `i` with its header written.
    fn open_shard(&mut self, i: usize) -> Result<()> {
        self.close()?;
        let tmp = self.dir.join(format!(".{}.tmp-{}", self.files[i], std::process::id()));
        let f = File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        let mut file = BufWriter::with_capacity(1 << 20, f);
        file.write_all(&self.header(i)).with_context(|| format!("{}: write failed", tmp.display()))?;
        self.opened = i + 1;
        self.open = Some(Open { shard: i, file, tmp });
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some(o) = self.open.take() {
            let f = o.file.into_inner().map_err(|e| anyhow::anyhow!("{}: write failed: {}", o.tmp.display(), e.error()))?;
            f.sync_all().ok();
            self.closed.push(o.tmp);
        }
        Ok(())
    }

    /// Shard `i`'s header: the 8-byte little-endian length, then the JSON (padded with spaces to
    /// a multiple of 8 bytes, as the safetensors library does) with each tensor's data offsets.
    fn header(&self, i: usize) -> Vec<u8> {
        let mut h = serde_json::Map::new();
        if !self.metadata.is_empty() {
            h.insert("__metadata__".into(), serde_json::json!(self.metadata));
        }
        let mut at = 0u64;
        for (s, _) in self.specs.iter().zip(&self.shard_of).filter(|(_, &sh)| sh == i) {
            let end = at + s.bytes();
            let dtype = match s.dtype {
                Dtype::F16 => "F16",
                Dtype::BF16 => "BF16",
                _ => "F32",
            };
            h.insert(s.name.clone(), serde_json::json!({ "dtype": dtype, "shape": s.shape, "data_offsets": [at, end] }));
            at = end;
        }
        let mut json = serde_json::to_vec(&h).unwrap_or_default();
        json.resize(json.len().next_multiple_of(8), b' ');
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        out
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if let Some(o) = self.open.take() {
            drop(o.file);
            std::fs::remove_file(&o.tmp).ok();
        }
        for t in &self.closed {
            std::fs::remove_file(t).ok();
        }
    }
}

/// Writes `specs` into `dir` with a `ShardWriter`, asking `fetch` for each tensor's values in
/// order (so only one tensor is in memory at a time). Returns the paths written.
pub fn write_sharded(
    dir: &Path,
    specs: Vec<TensorSpec>,
    max_shard_size: u64,
    metadata: BTreeMap<String, String>,
    mut fetch: impl FnMut(usize, &TensorSpec) -> Result<Vec<f32>>,
) -> Result<Vec<PathBuf>> {
    let mut w = ShardWriter::new(dir, specs.clone(), max_shard_size, metadata)?;
    for (i, s) in specs.iter().enumerate() {
        let data = fetch(i, s)?;
        w.write(&s.name, &data)?;
    }
    w.finish()
}
