//! PyTorch checkpoints (`pytorch_model.bin`, `torch.save`'s zip format since PyTorch 1.6): a zip
//! holding `<prefix>/data.pkl` (the pickled state dict), one file `<prefix>/data/<key>` per storage
//! and `<prefix>/version`. The zip is read by `zip` (uncompressed entries only, CRC-checked), the
//! pickle by `pickle` (a strict unpickler that calls nothing and refuses every global but the
//! few a state dict of tensors uses). Tensors are read one at a time, so memory holds one storage.
//!
//! Supported: f32, f16 and bf16 storages (and i64, e.g. an old `position_ids` buffer), any strides
//! (a non-contiguous view is gathered into row-major order), storage offsets, and tensors sharing
//! a storage (a tied decoder shares the word embeddings'). The legacy format of PyTorch < 1.6 is
//! refused with a message saying how to convert it.

pub mod pickle;
mod zip;

use anyhow::{bail, Context, Result};
pub use pickle::{Dtype, Storage, TensorView};
use std::path::Path;

/// An open PyTorch checkpoint: its state dict's tensors in file order, and the archive their
/// storages are read from.
pub struct Checkpoint {
    zip: zip::Zip,
    prefix: String,
    pub tensors: Vec<(String, TensorView)>,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Self> {
        let mut zip = zip::Zip::open(path)?;
        let file = zip.name.clone();
        let pkls: Vec<&String> = zip.entries.keys().filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl")).collect();
        let pkl = match pkls.as_slice() {
            [one] => (*one).clone(),
            [] => bail!("{file}: no data.pkl in the archive (not a torch.save checkpoint)"),
            _ => bail!("{file}: {} data.pkl entries in the archive; expected one", pkls.len()),
        };
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if zip.size(&format!("{prefix}byteorder")).is_some() {
            let order = zip.read(&format!("{prefix}byteorder"))?;
            if order != b"little" {
                bail!("{file}: the storages are {}-endian; only little-endian checkpoints are supported", String::from_utf8_lossy(&order));
            }
        }
        let data = zip.read(&pkl)?;
        let value = pickle::load(&data).with_context(|| format!("{file}: {pkl}"))?;
        let pickle::Value::Dict(items) = value else { bail!("{file}: {pkl} holds no state dict (a dict of tensors)") };
        let mut tensors = Vec::with_capacity(items.len());
        for (k, v) in items {
            let pickle::Value::Str(name) = k else { bail!("{file}: a state dict key that is not a string: {k:?}") };
            let pickle::Value::Tensor(t) = v else { bail!("{file}: entry `{name}` of the state dict is not a tensor") };
            let ck = Checkpoint::check_view(&zip, &prefix, &name, &t);
            ck.with_context(|| format!("{file}: tensor `{name}`"))?;
            tensors.push((name, t));
        }
        Ok(Checkpoint { zip, prefix, tensors })
    }

    pub fn file(&self) -> &str {
        &self.zip.name
    }

    /// The view lies inside its storage, and the storage's file holds exactly its elements.
    fn check_view(zip: &zip::Zip, prefix: &str, name: &str, t: &TensorView) -> Result<()> {
        let entry = format!("{prefix}data/{}", t.storage.key);
        let size = zip.size(&entry).with_context(|| format!("its storage `{entry}` is not in the archive"))?;
        let want = t.storage.numel.checked_mul(t.storage.dtype.size() as u64);
        if want != Some(size) {
            bail!("its storage `{entry}` has {size} bytes, not {} elements of {:?}", t.storage.numel, t.storage.dtype);
        }
        let n = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        if n.is_none_or(|n| n > t.storage.numel) {
            bail!("size {:?} has more elements than its storage's {} (a broadcast view is not supported)", t.shape, t.storage.numel);
        }
        if t.shape.contains(&0) {
            return Ok(());
        }
        let last = t.shape.iter().zip(&t.stride).try_fold(t.offset, |a, (&d, &s)| a.checked_add((d as u64 - 1).checked_mul(s as u64)?));
        if last.is_none_or(|l| l >= t.storage.numel) {
            bail!("{name}: size {:?}, stride {:?} at offset {} reach past its storage of {}", t.shape, t.stride, t.offset, t.storage.numel);
        }
        Ok(())
    }

    /// The bytes of tensor `i` in row-major order, little-endian in its own dtype.
    pub fn tensor_bytes(&mut self, i: usize) -> Result<Vec<u8>> {
        let (name, t) = &self.tensors[i];
        let entry = format!("{}data/{}", self.prefix, t.storage.key);
        let storage = self.zip.read(&entry).with_context(|| format!("tensor `{name}`"))?;
        Ok(gather(&storage, t))
    }
}

/// The elements of view `t` of `storage` in row-major order (a contiguous view is one slice).
fn gather(storage: &[u8], t: &TensorView) -> Vec<u8> {
    let es = t.storage.dtype.size();
    let n: usize = t.shape.iter().product();
    let start = t.offset as usize * es;
    if is_contiguous(t) {
        return storage[start..start + n * es].to_vec();
    }
    let mut out = Vec::with_capacity(n * es);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..n {
        let at: usize = t.offset as usize + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[at * es..(at + 1) * es]);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// Row-major without gaps (dimensions of size 1 may carry any stride).
pub fn is_contiguous(t: &TensorView) -> bool {
    let mut expect = 1usize;
    for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
        if d != 1 && s != expect {
            return false;
        }
        expect *= d;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(shape: &[usize], stride: &[usize], offset: u64) -> TensorView {
        TensorView {
            storage: Storage { dtype: Dtype::I64, key: "0".into(), numel: 64 },
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    #[test]
    fn strided_views_are_gathered_in_row_major_order() {
        let storage: Vec<u8> = (0..64u64).flat_map(|x| x.to_le_bytes()).collect();
        let values =
            |t: &TensorView| gather(&storage, t).chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        assert!(is_contiguous(&view(&[2, 3], &[3, 1], 0)));
        assert!(is_contiguous(&view(&[1, 3], &[99, 1], 0)));
        assert_eq!(values(&view(&[2, 3], &[3, 1], 5)), [5, 6, 7, 8, 9, 10]);
        // The transpose of a 2×3 row-major matrix.
        assert!(!is_contiguous(&view(&[3, 2], &[1, 3], 0)));
        assert_eq!(values(&view(&[3, 2], &[1, 3], 0)), [0, 3, 1, 4, 2, 5]);
        assert_eq!(values(&view(&[], &[], 9)), [9]);
    }
}
