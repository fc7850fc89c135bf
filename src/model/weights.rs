//! The parameter list of an XLM-R masked LM by HF tensor names, and safetensors reading/writing.
//!
//! Names are canonicalised to what `named_parameters()` of the HF model reports
//! (`roberta.…`, `lm_head.…`): files may carry them with or without the `roberta.` prefix, or with
//! the `model.` prefix of the paper's training checkpoints. The decoder is tied to the word
//! embeddings unless the file holds a different `lm_head.decoder.weight`.

use super::config::{Arch, ModelConfig};
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Every parameter the model owns, in HF `named_parameters()` order, with its shape.
/// `untied` adds a separate `lm_head.decoder.weight`.
pub fn param_specs(cfg: &ModelConfig, untied: bool) -> Vec<(String, Vec<usize>)> {
    let (h, f) = (cfg.hidden, cfg.intermediate);
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>| v.push((name, shape));
    let e = "roberta.embeddings";
    push(format!("{e}.word_embeddings.weight"), vec![cfg.vocab_size, h]);
    push(format!("{e}.position_embeddings.weight"), vec![cfg.max_positions, h]);
    push(format!("{e}.token_type_embeddings.weight"), vec![cfg.type_vocab_size, h]);
    let norm = |push: &mut dyn FnMut(String, Vec<usize>), p: String| {
        push(format!("{p}.weight"), vec![h]);
        push(format!("{p}.bias"), vec![h]);
    };
    if cfg.arch == Arch::PostLn {
        norm(&mut push, format!("{e}.LayerNorm"));
    }
    for i in 0..cfg.layers {
        let l = format!("roberta.encoder.layer.{i}");
        if cfg.arch == Arch::PreLn {
            norm(&mut push, format!("{l}.attention.self_attn_layer_norm"));
        }
        for p in ["query", "key", "value"] {
            push(format!("{l}.attention.self.{p}.weight"), vec![h, h]);
            push(format!("{l}.attention.self.{p}.bias"), vec![h]);
        }
        push(format!("{l}.attention.output.dense.weight"), vec![h, h]);
        push(format!("{l}.attention.output.dense.bias"), vec![h]);
        if cfg.arch == Arch::PostLn {
            norm(&mut push, format!("{l}.attention.output.LayerNorm"));
        }
        push(format!("{l}.intermediate.dense.weight"), vec![f, h]);
        push(format!("{l}.intermediate.dense.bias"), vec![f]);
        push(format!("{l}.output.dense.weight"), vec![h, f]);
        push(format!("{l}.output.dense.bias"), vec![h]);
        match cfg.arch {
            Arch::PostLn => norm(&mut push, format!("{l}.output.LayerNorm")),
            Arch::PreLn => norm(&mut push, format!("{l}.LayerNorm")),
        }
    }
    if cfg.arch == Arch::PreLn {
        norm(&mut push, "roberta.encoder.LayerNorm".into());
    }
    push("lm_head.dense.weight".into(), vec![h, h]);
    push("lm_head.dense.bias".into(), vec![h]);
    norm(&mut push, "lm_head.layer_norm".into());
    push("lm_head.bias".into(), vec![cfg.vocab_size]);
    if untied {
        push("lm_head.decoder.weight".into(), vec![cfg.vocab_size, h]);
    }
    v
}

/// Maps a file's tensor name to the canonical HF parameter name.
pub fn canonical_name(name: &str) -> String {
    let n = name.strip_prefix("model.").unwrap_or(name);
    if n.starts_with("embeddings.") || n.starts_with("encoder.") || n.starts_with("pooler.") {
        format!("roberta.{n}")
    } else {
        n.to_string()
    }
}

/// Tensors a checkpoint may hold that the masked LM does not use.
fn ignorable(name: &str) -> bool {
    name == "roberta.embeddings.position_ids" || name.starts_with("roberta.pooler.")
}

/// A tensor read from a file, converted to f32.
pub struct Loaded {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Reads every tensor of a safetensors file as f32 (from f32, f16 or bf16), keyed by canonical name.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Loaded>> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("{file}: cannot read the weights file"))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{file}: not a valid safetensors file (truncated or corrupt?): {e}"))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            d => {
                if ignorable(&canonical_name(&name)) {
                    continue;
                }
                bail!("{file}: tensor `{name}` has dtype {d:?}; only F32, F16 and BF16 are supported")
            }
        };
        let canon = canonical_name(&name);
        if out.contains_key(&canon) {
            bail!("{file}: tensor `{name}` appears twice (with and without a prefix)");
        }
        out.insert(canon, Loaded { shape: view.shape().to_vec(), data });
    }
    Ok(out)
}

/// A parameter by its HF name: shape and f32 values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Matches a file's tensors to the parameter list of `cfg`. Returns the parameters in
/// `param_specs` order and whether the decoder is untied.
pub fn resolve(cfg: &ModelConfig, mut tensors: HashMap<String, Loaded>, file: &str) -> Result<(Vec<NamedTensor>, bool)> {
    // The decoder bias is the same parameter as `lm_head.bias` in HF.
    if let Some(db) = tensors.remove("lm_head.decoder.bias") {
        tensors.entry("lm_head.bias".into()).or_insert(db);
    }
    let untied = match tensors.get("lm_head.decoder.weight") {
        None => false,
        Some(dec) => match tensors.get("roberta.embeddings.word_embeddings.weight") {
            Some(word) if word.shape == dec.shape && word.data == dec.data => {
                tensors.remove("lm_head.decoder.weight");
                false
            }
            _ => true,
        },
    };
    let specs = param_specs(cfg, untied);
    let mut params = Vec::with_capacity(specs.len());
    for (name, shape) in &specs {
        let t = tensors.remove(name).with_context(|| format!("{file}: missing tensor `{name}` (expected shape {shape:?})"))?;
        if &t.shape != shape {
            bail!("{file}: tensor `{name}` has shape {:?}, expected {shape:?} from config.json", t.shape);
        }
        params.push((name.clone(), shape.clone(), t.data));
    }
    let mut unexpected: Vec<&String> = tensors.keys().filter(|n| !ignorable(n)).collect();
    unexpected.sort();
    if let Some(first) = unexpected.first() {
        bail!(
            "{file}: unexpected tensor `{first}` (shape {:?}){}",
            tensors[*first].shape,
            if unexpected.len() > 1 { format!(" and {} more", unexpected.len() - 1) } else { String::new() }
        );
    }
    Ok((params, untied))
}

/// Writes f32 tensors by name, atomically (temp file + rename).
pub fn write_safetensors(path: &Path, tensors: &[(&str, &[usize], &[f32])], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let mut views = BTreeMap::new();
    for (name, shape, data) in tensors {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.to_vec(), bytes)
            .with_context(|| format!("tensor `{name}`: shape {shape:?} does not match its data"))?;
        views.insert(name.to_string(), view);
    }
    let bytes = safetensors::serialize(&views, metadata).context("serialising safetensors")?;
    crate::util::write_atomic(path, &bytes)
}
