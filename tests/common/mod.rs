//! Helpers shared by the integration tests: fixture paths, safetensors reading, comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fixtures")
}

/// A tensor from a fixture file as f64 values (ints and floats alike) with its shape.
pub struct T {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

pub fn read(path: &std::path::Path) -> HashMap<String, T> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let raw = v.data();
            let data: Vec<f64> = match v.dtype() {
                safetensors::Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                safetensors::Dtype::F64 => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
                safetensors::Dtype::I64 => raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                safetensors::Dtype::I32 => raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                safetensors::Dtype::BOOL => raw.iter().map(|&b| b as f64).collect(),
                d => panic!("{name}: unexpected dtype {d:?}"),
            };
            (name, T { shape: v.shape().to_vec(), data })
        })
        .collect()
}

/// Largest |a-b| / (atol_scale + max|b|) over the tensor: an error relative to the tensor's
/// scale, so tiny entries of a large tensor do not dominate.
pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let max_diff = a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((*x as f64 - y).abs()));
    if scale == 0.0 {
        max_diff
    } else {
        max_diff / scale
    }
}

pub fn ids(t: &T) -> Vec<i32> {
    t.data.iter().map(|&v| v as i32).collect()
}
