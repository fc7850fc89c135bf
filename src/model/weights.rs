//! The parameter list of an XLM-R masked LM by HF tensor names, and safetensors reading/writing.
//!
//! Names are canonicalised to what `named_parameters()` of the HF model reports
//! (`roberta.…`, `lm_head.…`): files may carry them with or without the `roberta.` prefix, or with
//! the `model.` prefix of the paper's training checkpoints. The decoder is tied to the word
//! embeddings unless the file holds a different `lm_head.decoder.weight`.

use super::config::{Arch, ModelConfig};
use super::shards::WeightFiles;
use anyhow::{bail, Context, Result};
use safetensors::Dtype;
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

/// Reads every tensor of one safetensors file as f32 (from f32, f16 or bf16), keyed by canonical
/// name. For small files (the optimizer's moments are read this way); models load through
/// `WeightFiles` a tensor at a time.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Loaded>> {
    let files = WeightFiles::open_file(path)?;
    let mut out = HashMap::new();
    for (name, shape) in files.catalog() {
        if ignorable(&name) && !files.readable(&name) {
            continue;
        }
        let data = files.read_f32(&name, 0)?;
        out.insert(name, Loaded { shape, data });
    }
    Ok(out)
}

/// A parameter by its HF name: shape and f32 values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// A parameter to be read: its HF name and shape, and the (canonical) name of the file tensor
/// that holds it.
#[derive(Clone, Debug)]
pub struct Planned {
    pub name: String,
    pub shape: Vec<usize>,
    pub source: String,
}

/// Matches the tensors of `files` (`catalog`: canonical name → shape, the length predictor's
/// already taken out) to the parameter list of `cfg`. Returns the parameters in `param_specs`
/// order with the tensor each is read from, and whether the decoder is untied.
pub fn resolve(cfg: &ModelConfig, mut catalog: HashMap<String, Vec<usize>>, files: &WeightFiles) -> Result<(Vec<Planned>, bool)> {
    let mut source: HashMap<String, String> = catalog.keys().map(|k| (k.clone(), k.clone())).collect();
    // The decoder bias is the same parameter as `lm_head.bias` in HF.
    if let Some(shape) = catalog.remove("lm_head.decoder.bias") {
        if !catalog.contains_key("lm_head.bias") {
            catalog.insert("lm_head.bias".into(), shape);
            source.insert("lm_head.bias".into(), "lm_head.decoder.bias".into());
        }
    }
    let (word, dec) = ("roberta.embeddings.word_embeddings.weight", "lm_head.decoder.weight");
    let untied = match catalog.contains_key(dec) {
        false => false,
        true if catalog.contains_key(word) && files.same_values(word, dec)? => {
            catalog.remove(dec);
            false
        }
        true => true,
    };
    let specs = param_specs(cfg, untied);
    let mut params = Vec::with_capacity(specs.len());
    for (name, shape) in specs {
        let t = catalog.remove(&name).with_context(|| format!("{}: missing tensor `{name}` (expected shape {shape:?})", files.what()))?;
        let src = source.remove(&name).unwrap_or_else(|| name.clone());
        if t != shape {
            bail!("{}: tensor `{name}` has shape {t:?}, expected {shape:?} from config.json", files.file_of(&src));
        }
        params.push(Planned { name, shape, source: src });
    }
    let mut unexpected: Vec<&String> = catalog.keys().filter(|n| !ignorable(n)).collect();
    unexpected.sort();
    if let Some(first) = unexpected.first() {
        bail!(
            "{}: unexpected tensor `{first}` (shape {:?}){}",
            files.file_of(first),
            catalog[*first],
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

/// Writes `config.json` for `cfg`, recording whether the decoder is tied to the word embeddings
/// (as `save_pretrained` does, the tied decoder is then absent from the weights).
pub fn write_config(dir: &Path, cfg: &ModelConfig, tied: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut json = cfg.to_json();
    json["tie_word_embeddings"] = serde_json::Value::Bool(tied);
    crate::util::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&json)?.as_bytes())
}
