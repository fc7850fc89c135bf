//! Hugging Face `config.json` for XLM-R (`XLMRobertaConfig`, post-LN) and XLM-R XL/XXL
//! (`XLMRobertaXLConfig`, pre-LN), and the engine's named presets.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;

/// Where the LayerNorms sit: base/large are post-LN BERT; XL/XXL are pre-LN with a final LN and no
/// embedding LN (docs/method.md §1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    PostLn,
    PreLn,
}

impl Arch {
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::PostLn => "xlm-roberta",
            Arch::PreLn => "xlm-roberta-xl",
        }
    }
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::PostLn => "XLMRobertaForMaskedLM",
            Arch::PreLn => "XLMRobertaXLForMaskedLM",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    pub pad_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub hidden_dropout: f32,
    pub attention_dropout: f32,
}

fn get_usize(v: &Value, key: &str, file: &str) -> Result<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .with_context(|| format!("{file}: field `{key}` is missing or not a non-negative integer"))
}

/// The shortest decimal that reads back as `x` (0.1, not 0.10000000149011612, the f32 widened to
/// f64), as transformers writes a config's floats (serde_json spells 1e-05 as 0.00001: the same
/// number to Python).
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// An optional number field; present but not a number (or null) is an error naming it.
fn get_f32(v: &Value, key: &str, default: f32, file: &str) -> Result<f32> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x.as_f64().map(|x| x as f32).with_context(|| format!("{file}: field `{key}` is not a number")),
    }
}

fn get_i32(v: &Value, key: &str, default: i32, file: &str) -> Result<i32> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_i64()
            .and_then(|x| i32::try_from(x).ok())
            .with_context(|| format!("{file}: field `{key}` is not an integer in the range of token ids")),
    }
}

/// Physical memory of this machine in bytes (Linux `/proc/meminfo`), if known.
pub fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Longest sequence the position table allows (positions start at `pad_id + 1`).
    pub fn max_seq_len(&self) -> usize {
        self.max_positions - (self.pad_id as usize + 1)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("{name}: cannot read"))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{name}: not valid JSON"))?;
        Self::from_json(&v, &name)
    }

    pub fn from_json(v: &Value, file: &str) -> Result<Self> {
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let arch_name = v.get("architectures").and_then(Value::as_array).and_then(|a| a.first()).and_then(Value::as_str).unwrap_or("");
        let arch = match (model_type, arch_name) {
            ("xlm-roberta", _) | ("roberta", _) => Arch::PostLn,
            ("xlm-roberta-xl", _) => Arch::PreLn,
            (_, "XLMRobertaForMaskedLM") | (_, "RobertaForMaskedLM") => Arch::PostLn,
            (_, "XLMRobertaXLForMaskedLM") => Arch::PreLn,
            _ => bail!(
                "{file}: unknown architecture (model_type `{model_type}`, architectures `{arch_name}`); \
                 supported: xlm-roberta (XLMRobertaForMaskedLM) and xlm-roberta-xl (XLMRobertaXLForMaskedLM)"
            ),
        };
        let act = v.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu");
        if act != "gelu" {
            bail!("{file}: field `hidden_act` is `{act}`; only exact-erf `gelu` is supported");
        }
        let pos_type = v.get("position_embedding_type").and_then(Value::as_str).unwrap_or("absolute");
        if pos_type != "absolute" {
            bail!("{file}: field `position_embedding_type` is `{pos_type}`; only `absolute` is supported");
        }
        let cfg = ModelConfig {
            arch,
            vocab_size: get_usize(v, "vocab_size", file)?,
            hidden: get_usize(v, "hidden_size", file)?,
            layers: get_usize(v, "num_hidden_layers", file)?,
            heads: get_usize(v, "num_attention_heads", file)?,
            intermediate: get_usize(v, "intermediate_size", file)?,
            max_positions: get_usize(v, "max_position_embeddings", file)?,
            type_vocab_size: match v.get("type_vocab_size") {
                None | Some(Value::Null) => 1,
                Some(_) => get_usize(v, "type_vocab_size", file)?,
            },
            layer_norm_eps: get_f32(v, "layer_norm_eps", 1e-5, file)?,
            pad_id: get_i32(v, "pad_token_id", 1, file)?,
            bos_id: get_i32(v, "bos_token_id", 0, file)?,
            eos_id: get_i32(v, "eos_token_id", 2, file)?,
            hidden_dropout: get_f32(v, "hidden_dropout_prob", 0.1, file)?,
            attention_dropout: get_f32(v, "attention_probs_dropout_prob", 0.1, file)?,
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Every field in its real range, each error naming the file and field; the shape's
    /// parameter count must not overflow.
    pub fn validate(&self, file: &str) -> Result<()> {
        let cfg = self;
        for (key, val) in [
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", cfg.hidden),
            ("num_hidden_layers", cfg.layers),
            ("num_attention_heads", cfg.heads),
            ("intermediate_size", cfg.intermediate),
        ] {
            if val == 0 {
                bail!("{file}: field `{key}` must be at least 1");
            }
        }
        if !(cfg.layer_norm_eps.is_finite() && cfg.layer_norm_eps > 0.0) {
            bail!("{file}: field `layer_norm_eps` ({}) must be a finite number greater than 0", cfg.layer_norm_eps);
        }
        for (key, p) in [("hidden_dropout_prob", cfg.hidden_dropout), ("attention_probs_dropout_prob", cfg.attention_dropout)] {
            if !(0.0..1.0).contains(&p) {
                bail!("{file}: field `{key}` ({p}) must be in [0, 1)");
            }
        }
        for (key, id) in [("pad_token_id", cfg.pad_id), ("bos_token_id", cfg.bos_id), ("eos_token_id", cfg.eos_id)] {
            if id < 0 || id as usize >= cfg.vocab_size {
                bail!("{file}: field `{key}` ({id}) is not an id below `vocab_size` ({})", cfg.vocab_size);
            }
        }
        if cfg.param_count().is_none() {
            bail!("{file}: this shape's parameter count overflows 64 bits; it cannot be built");
        }
        if cfg.heads == 0 || !cfg.hidden.is_multiple_of(cfg.heads) {
            bail!("{file}: field `hidden_size` ({}) is not a multiple of `num_attention_heads` ({})", cfg.hidden, cfg.heads);
        }
        if cfg.max_positions <= cfg.pad_id as usize + 1 {
            bail!("{file}: field `max_position_embeddings` ({}) leaves no positions after padding_idx", cfg.max_positions);
        }
        if cfg.type_vocab_size == 0 {
            bail!("{file}: field `type_vocab_size` must be at least 1");
        }
        Ok(())
    }

    /// The tokenizer (of `tok_ids` ids, from `tok_file`) must match the model's vocabulary: as
    /// many rows as ids, or, as XLM-R XL/XXL do (250,002 ids in 250,880 rows), rows padded
    /// to a multiple of 128 whose extra ids are never emitted.
    pub fn check_tokenizer(&self, tok_ids: usize, tok_file: &str, model_file: &str) -> Result<()> {
        let rows = self.vocab_size;
        if tok_ids > rows {
            bail!("{tok_file}: the tokenizer has {tok_ids} ids but the model ({model_file}) only {rows} rows");
        }
        if tok_ids < rows && !rows.is_multiple_of(128) {
            bail!(
                "{tok_file}: the tokenizer has {tok_ids} ids but the model ({model_file}) has {rows} rows; \
                 they must match (or the rows be padded to a multiple of 128, as XLM-R XL's)"
            );
        }
        Ok(())
    }

    /// Number of parameters of the shape (tied decoder), or `None` when it overflows.
    pub fn param_count(&self) -> Option<u64> {
        let (v, h, f, l) = (self.vocab_size as u64, self.hidden as u64, self.intermediate as u64, self.layers as u64);
        let emb = (v.checked_add(self.max_positions as u64)?.checked_add(self.type_vocab_size as u64)?).checked_mul(h)?;
        let layer = h.checked_mul(h)?.checked_mul(4)?.checked_add(h.checked_mul(f)?.checked_mul(2)?)?.checked_add(f + 9 * h)?;
        let head = h.checked_mul(h)?.checked_add(3 * h)?.checked_add(v)?;
        emb.checked_add(layer.checked_mul(l)?)?.checked_add(head)?.checked_add(4 * h)
    }

    /// Refuses a shape whose f32 weights alone would not fit in this machine's memory, saying
    /// how much they need (checked before anything is allocated).
    pub fn check_fits_memory(&self, what: &str) -> Result<()> {
        let params = self.param_count().with_context(|| format!("{what}: the shape's parameter count overflows"))?;
        let bytes = params as f64 * 4.0;
        if let Some(mem) = physical_memory() {
            if bytes > mem as f64 {
                bail!(
                    "{what}: this shape ({} layers, hidden {}, intermediate {}, {} positions, vocab {}) has {params} parameters, \
                     whose f32 weights alone need {}; this machine has {} of memory",
                    self.layers,
                    self.hidden,
                    self.intermediate,
                    self.max_positions,
                    self.vocab_size,
                    gib(bytes),
                    gib(mem as f64)
                );
            }
        }
        Ok(())
    }

    /// The HF `config.json` that `transformers` loads back.
    pub fn to_json(&self) -> Value {
        json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.intermediate,
            "hidden_act": "gelu",
            "hidden_dropout_prob": decimal(self.hidden_dropout),
            "attention_probs_dropout_prob": decimal(self.attention_dropout),
            "max_position_embeddings": self.max_positions,
            "type_vocab_size": self.type_vocab_size,
            "initializer_range": 0.02,
            "layer_norm_eps": decimal(self.layer_norm_eps),
            "pad_token_id": self.pad_id,
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "position_embedding_type": "absolute",
            "use_cache": true,
            "classifier_dropout": null,
            "tie_word_embeddings": true,
            "torch_dtype": "float32",
        })
    }

    /// Named shapes. The real XLM-R shapes (docs/method.md §1.1) and small ones for tests and demos;
    /// `vocab_size` is taken from the tokenizer when one is given.
    pub fn preset(name: &str) -> Result<Self> {
        let (arch, vocab, hidden, layers, heads, ffn, maxpos) = match name {
            "base" => (Arch::PostLn, 250002, 768, 12, 12, 3072, 514),
            "large" => (Arch::PostLn, 250002, 1024, 24, 16, 4096, 514),
            "xl" => (Arch::PreLn, 250880, 2560, 36, 32, 10240, 514),
            "xxl" => (Arch::PreLn, 250880, 4096, 48, 32, 16384, 514),
            "tiny" => (Arch::PostLn, 1000, 128, 2, 4, 512, 130),
            "tiny-xl" => (Arch::PreLn, 1000, 128, 2, 4, 512, 130),
            "small" => (Arch::PostLn, 8000, 256, 4, 4, 1024, 258),
            "micro" => (Arch::PostLn, 300, 32, 2, 4, 64, 34),
            "micro-xl" => (Arch::PreLn, 300, 32, 2, 4, 64, 34),
            _ => bail!("unknown preset `{name}`; known: {}", Self::preset_names().join(", ")),
        };
        Ok(ModelConfig {
            arch,
            vocab_size: vocab,
            hidden,
            layers,
            heads,
            intermediate: ffn,
            max_positions: maxpos,
            type_vocab_size: 1,
            layer_norm_eps: 1e-5,
            pad_id: 1,
            bos_id: 0,
            eos_id: 2,
            hidden_dropout: 0.1,
            attention_dropout: 0.1,
        })
    }

    pub fn preset_names() -> &'static [&'static str] {
        &["base", "large", "xl", "xxl", "tiny", "tiny-xl", "small", "micro", "micro-xl"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_through_json() {
        for name in ModelConfig::preset_names() {
            let c = ModelConfig::preset(name).unwrap();
            let back = ModelConfig::from_json(&c.to_json(), "x").unwrap();
            assert_eq!(c, back, "{name}");
        }
    }

    #[test]
    fn floats_are_written_as_their_shortest_decimals() {
        let mut c = ModelConfig::preset("micro").unwrap();
        c.layer_norm_eps = 1e-5;
        c.hidden_dropout = 0.3;
        let text = serde_json::to_string(&c.to_json()).unwrap();
        for want in [r#""hidden_dropout_prob":0.3"#, r#""attention_probs_dropout_prob":0.1"#, r#""layer_norm_eps":0.00001"#] {
            assert!(text.contains(want), "{want} not in {text}");
        }
        assert_eq!(ModelConfig::from_json(&c.to_json(), "x").unwrap(), c, "and read back to the same f32");
    }

    #[test]
    fn unknown_architecture_is_an_error_naming_the_file() {
        let v = json!({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]});
        let e = ModelConfig::from_json(&v, "dir/config.json").unwrap_err().to_string();
        assert!(e.contains("dir/config.json") && e.contains("unknown architecture"), "{e}");
    }
}
