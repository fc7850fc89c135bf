//! Reading weights through memory maps: the headers of every file are parsed and checked up
//! front, and a tensor's bytes are converted to f32 only when it is asked for, so a loader can
//! take the model one tensor at a time (the mapped pages are the OS's to evict).

use super::{dtype_size, INDEX_FILE, SINGLE_FILE};
use crate::model::weights::canonical_name;
use anyhow::{bail, Context, Result};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One mapped safetensors file.
struct Mapped {
    path: String,
    map: Mmap,
}

/// Where a tensor's bytes are.
#[derive(Clone)]
struct Entry {
    file: usize,
    /// Its name in the file (before `canonical_name`).
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: std::ops::Range<usize>,
}

/// The weights of a model directory (either layout) or of one safetensors file, by canonical
/// tensor name (`weights::canonical_name`).
pub struct WeightFiles {
    /// The file that errors about the set as a whole name: the index, or the single file.
    what: String,
    files: Vec<Mapped>,
    tensors: HashMap<String, Entry>,
}

/// The shard files `dir`'s weights consist of: `model.safetensors`, or the shards its index
/// names (checked to exist), in order. An error when neither or both layouts are present.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(SINGLE_FILE);
    let index = dir.join(INDEX_FILE);
    match (single.is_file(), index.is_file()) {
        (true, true) => bail!(
            "{}: holds both {SINGLE_FILE} and {INDEX_FILE}, two copies of the weights; remove the one that is out of date",
            dir.display()
        ),
        (true, false) => Ok(vec![single]),
        (false, true) => Ok(read_index(&index)?.0.into_iter().map(|f| dir.join(f)).collect()),
        (false, false) => {
            bail!("{}: missing (expected the model weights in safetensors format, or {INDEX_FILE} and its shards)", single.display())
        }
    }
}

/// Parses an index: its shard files (sorted, each checked to be a plain file name that exists
/// beside it) and the weight map.
fn read_index(path: &Path) -> Result<(Vec<String>, BTreeMap<String, String>)> {
    let what = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("{what}: cannot read"))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{what}: not valid JSON: {e}"))?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).with_context(|| format!("{what}: no `weight_map` object"))?;
    let mut weight_map = BTreeMap::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else { bail!("{what}: field `weight_map.{tensor}` is not a file name") };
        if file.is_empty() || file.contains(['/', '\\']) || file == "." || file == ".." {
            bail!("{what}: field `weight_map.{tensor}`: `{file}` is not a file name in the model directory");
        }
        weight_map.insert(tensor.clone(), file.to_string());
    }
    if weight_map.is_empty() {
        bail!("{what}: the `weight_map` is empty");
    }
    let mut files: Vec<String> = weight_map.values().cloned().collect();
    files.sort();
    files.dedup();
    let dir = path.parent().unwrap_or(Path::new("."));
    for f in &files {
        if !dir.join(f).is_file() {
            let tensor = weight_map.iter().find(|(_, v)| *v == f).map(|(k, _)| k.as_str()).unwrap_or_default();
            bail!("{what}: shard `{f}` (holding tensor `{tensor}`) is missing from {}", dir.display());
        }
    }
    Ok((files, weight_map))
}

impl WeightFiles {
    /// The weights of a model directory: `model.safetensors` or `model.safetensors.index.json`
    /// with its shards (both present is an error naming them).
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        let files = weight_files(dir)?;
        if !index.is_file() {
            return Self::open_file(&files[0]);
        }
        let (names, weight_map) = read_index(&index)?;
        let mut w = WeightFiles { what: index.display().to_string(), files: Vec::new(), tensors: HashMap::new() };
        for (path, name) in files.iter().zip(&names) {
            let i = w.add_file(path)?;
            let shard = &w.files[i].path;
            for e in w.tensors.values().filter(|e| e.file == i) {
                match weight_map.get(&e.name) {
                    Some(f) if f == name => {}
                    Some(f) => bail!("{shard}: holds tensor `{}`, which {} puts in `{f}`", e.name, w.what),
                    None => bail!("{shard}: tensor `{}` is not in {}'s weight_map", e.name, w.what),
                }
            }
        }
        for (tensor, file) in &weight_map {
            if w.tensors.get(&canonical_name(tensor)).is_none_or(|e| &e.name != tensor) {
                bail!("{}: tensor `{tensor}` is not in its shard, {}", w.what, index.with_file_name(file).display());
            }
        }
        Ok(w)
    }

    /// The tensors of one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self> {
        let mut w = WeightFiles { what: path.display().to_string(), files: Vec::new(), tensors: HashMap::new() };
        w.add_file(path)?;
        Ok(w)
    }

    /// Maps `path`, checks its header and adds its tensors; returns its file number.
    fn add_file(&mut self, path: &Path) -> Result<usize> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).with_context(|| format!("{shown}: cannot read the weights file"))?;
        // SAFETY: the map is only read; a file truncated under a running process is the one
        // hazard of any map, as with every safetensors reader.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{shown}: cannot map the weights file"))?;
        let (n, meta) = SafeTensors::read_metadata(&map)
            .map_err(|e| anyhow::anyhow!("{shown}: not a valid safetensors file (truncated or corrupt?): {e}"))?;
        let start = 8 + n;
        let i = self.files.len();
        let mut names: Vec<(String, &safetensors::tensor::TensorInfo)> = meta.tensors().into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, info) in names {
            let canon = canonical_name(&name);
            if let Some(prev) = self.tensors.get(&canon) {
                // The file being added is not in `files` yet: a hit there is an earlier file.
                match self.files.get(prev.file) {
                    Some(other) => bail!("{shown}: tensor `{name}` is also in {}; a tensor must be in one file", other.path),
                    None => bail!("{shown}: tensor `{name}` appears twice (with and without a prefix)"),
                }
            }
            let (a, b) = info.data_offsets;
            let entry = Entry { file: i, name: name.clone(), dtype: info.dtype, shape: info.shape.clone(), bytes: start + a..start + b };
            self.tensors.insert(canon, entry);
        }
        self.files.push(Mapped { path: shown, map });
        Ok(i)
    }

    /// The file errors about the whole set should name (the index, or the single file).
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Every tensor's canonical name and shape.
    pub fn catalog(&self) -> HashMap<String, Vec<usize>> {
        self.tensors.iter().map(|(n, e)| (n.clone(), e.shape.clone())).collect()
    }

    /// The file that holds tensor `name` (for error messages), or the set's own name.
    pub fn file_of(&self, name: &str) -> &str {
        self.tensors.get(name).map_or(self.what.as_str(), |e| self.files[e.file].path.as_str())
    }

    /// Whether tensor `name` has a dtype the model reads (F32, F16, BF16).
    pub fn readable(&self, name: &str) -> bool {
        self.tensors.get(name).is_some_and(|e| dtype_size(e.dtype).is_some())
    }

    /// The value of `key` in the first file's `__metadata__`.
    pub fn metadata(&self, key: &str) -> Result<Option<String>> {
        let Some(f) = self.files.first() else { return Ok(None) };
        let (_, meta) = SafeTensors::read_metadata(&f.map).map_err(|e| anyhow::anyhow!("{}: {e}", f.path))?;
        Ok(meta.metadata().as_ref().and_then(|m| m.get(key).cloned()))
    }

    /// Tensor `name` as f32 values (from F32, F16 or BF16), in a vector with room for
    /// `capacity` values (at least its own length) so a caller can pad it without a copy.
    pub fn read_f32(&self, name: &str, capacity: usize) -> Result<Vec<f32>> {
        let e = self.entry(name)?;
        let raw = &self.files[e.file].map[e.bytes.clone()];
        let mut out = Vec::with_capacity(capacity.max(raw.len() / dtype_size(e.dtype).unwrap_or(4)));
        // A block at a time, each block's pages released once converted, so the file's bytes and
        // the f32 values are not both resident whole.
        const BLOCK: usize = 1 << 24;
        for (k, block) in raw.chunks(BLOCK).enumerate() {
            for_each_f32(block, e.dtype, |chunk| out.extend_from_slice(chunk));
            self.release(e.file, e.bytes.start + k * BLOCK, block.len());
        }
        Ok(out)
    }

    /// Whether two tensors hold the same shape and values (compared as f32, without reading
    /// either whole).
    pub fn same_values(&self, a: &str, b: &str) -> Result<bool> {
        let (ea, eb) = (self.entry(a)?, self.entry(b)?);
        if ea.shape != eb.shape {
            return Ok(false);
        }
        let (ra, rb) = (&self.files[ea.file].map[ea.bytes.clone()], &self.files[eb.file].map[eb.bytes.clone()]);
        let (sa, sb) = (dtype_size(ea.dtype).unwrap_or(4), dtype_size(eb.dtype).unwrap_or(4));
        const CHUNK: usize = 1 << 16;
        for (ca, cb) in ra.chunks(CHUNK * sa).zip(rb.chunks(CHUNK * sb)) {
            let (mut va, mut vb) = (Vec::with_capacity(CHUNK), Vec::with_capacity(CHUNK));
            for_each_f32(ca, ea.dtype, |c| va.extend_from_slice(c));
            for_each_f32(cb, eb.dtype, |c| vb.extend_from_slice(c));
            if va != vb {
                return Ok(false);
            }
        }
        self.release(ea.file, ea.bytes.start, ea.bytes.len());
        self.release(eb.file, eb.bytes.start, eb.bytes.len());
        Ok(true)
    }

    /// Drops `len` bytes from `start` of file `file` from this process's memory once read (the
    /// OS would evict them under pressure anyway, but until then they count as the process's
    /// resident memory). A later read faults them in again from the page cache or the file.
    fn release(&self, file: usize, start: usize, len: usize) {
        // SAFETY: the map is a read-only view of the file and no slice of it outlives the read
        // that called this; dropping the pages changes no byte a later access sees.
        unsafe { self.files[file].map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, len) }.ok();
    }

    /// The entry of `name`, whose dtype must be one the model reads.
    fn entry(&self, name: &str) -> Result<&Entry> {
        let e = self.tensors.get(name).with_context(|| format!("{}: no tensor `{name}`", self.what))?;
        if dtype_size(e.dtype).is_none() {
            bail!("{}: tensor `{}` has dtype {:?}; only F32, F16 and BF16 are supported", self.files[e.file].path, e.name, e.dtype);
        }
        Ok(e)
    }
}

/// Calls `f` on the f32 values of `raw` (little-endian `dtype`), a block at a time.
fn for_each_f32(raw: &[u8], dtype: Dtype, mut f: impl FnMut(&[f32])) {
    let size = dtype_size(dtype).unwrap_or(4);
    let mut block = Vec::with_capacity(4096);
    for chunk in raw.chunks(4096 * size) {
        block.clear();
        match dtype {
            Dtype::F16 => block.extend(chunk.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
            Dtype::BF16 => block.extend(chunk.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
            _ => block.extend(chunk.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        }
        f(&block);
    }
}
