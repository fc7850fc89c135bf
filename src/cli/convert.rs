//! `dlm-engine convert`: a PyTorch checkpoint (`pytorch_model.bin`) into a model directory with
//! `model.safetensors`, read by `crate::model::pytorch` one tensor at a time and written as it is
//! read, so memory holds one storage whatever the model's size.

use crate::model::pytorch::{Checkpoint, Dtype, TensorView};
use crate::model::shards::{ShardWriter, TensorSpec};
use crate::model::weights::canonical_name;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const LONG_ABOUT: &str = "Convert a PyTorch checkpoint (pytorch_model.bin, the zip format torch.save writes since \
PyTorch 1.6) into a model directory this tool and transformers load: model.safetensors with the same tensors in their \
own dtype (f32, f16, bf16; in shards with an index past --max-shard-size), named as the loader names them (`roberta.` added where missing, a `model.` prefix dropped), \
plus config.json and the tokenizer files copied when the input directory has them. A tensor that is another's exact \
view of the same storage (the tied decoder) is written once, as save_pretrained does. The pickle inside the checkpoint \
is read by a strict reader that runs nothing and refuses anything but tensors; the legacy format of PyTorch < 1.6 is \
refused.\n\nExample: dlm-engine convert --in xlm-roberta-base/ --out xlmr-base";

/// Files copied from the input directory beside the weights, when present.
const COPIED: [&str; 6] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "training_defaults.json",
];

#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// A `pytorch_model.bin`, or a directory holding one (and its config.json and tokenizer files).
    #[arg(long = "in", value_name = "DIR_OR_FILE")]
    pub input: PathBuf,
    /// Output directory (config.json, model.safetensors, tokenizer files); replaced only with --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing non-empty output directory.
    #[arg(long)]
    pub force: bool,
    /// Past this many bytes of tensor data the weights go into shards with an index
    /// (`model-00001-of-0000N.safetensors`, `model.safetensors.index.json`), as transformers'
    /// save_pretrained writes them: a number of bytes or with a unit (KB, MB, GB, KiB, MiB, GiB).
    #[arg(long, default_value = "5GB", value_parser = crate::model::shards::parse_size)]
    pub max_shard_size: u64,
}

/// A tensor to write: its name, dtype and shape, and which of the checkpoint's tensors holds it.
struct Planned {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    index: usize,
}

fn st_dtype(d: Dtype) -> safetensors::Dtype {
    match d {
        Dtype::F32 => safetensors::Dtype::F32,
        Dtype::F16 => safetensors::Dtype::F16,
        Dtype::BF16 => safetensors::Dtype::BF16,
        Dtype::I64 => safetensors::Dtype::I64,
    }
}

/// Names that transformers ties to another tensor (the decoder to the word embeddings, its bias
/// to the head's): of an aliased pair, these are the ones left out.
const TIED: [&str; 2] = ["lm_head.decoder.weight", "lm_head.decoder.bias"];

/// The tensors to write, under the loader's canonical names, each storage view once: of tensors
/// that are exact aliases (the tied decoder and its bias), the one transformers does not tie to
/// the other is kept (else the first), with a note.
fn plan_tensors(ck: &Checkpoint) -> Result<Vec<Planned>> {
    let mut keep: HashMap<&TensorView, usize> = HashMap::new();
    for (i, (name, t)) in ck.tensors.iter().enumerate() {
        let kept = *keep.entry(t).or_insert(i);
        if kept != i && TIED.contains(&canonical_name(&ck.tensors[kept].0).as_str()) && !TIED.contains(&canonical_name(name).as_str()) {
            keep.insert(t, i);
        }
    }
    let mut names: HashMap<String, &str> = HashMap::new();
    let mut out = Vec::new();
    for (i, (name, t)) in ck.tensors.iter().enumerate() {
        let kept = keep[t];
        if kept != i {
            eprintln!("`{name}` is the same storage as `{}`: written once (the loader ties them)", ck.tensors[kept].0);
            continue;
        }
        if t.storage.dtype == Dtype::I64 {
            // Old checkpoints keep `position_ids` as an integer buffer; it is not a weight.
            eprintln!("`{name}` holds integers, not weights: left out");
            continue;
        }
        let canon = canonical_name(name);
        if let Some(other) = names.insert(canon.clone(), name) {
            bail!("{}: tensors `{other}` and `{name}` both name `{canon}`", ck.file());
        }
        out.push(Planned { name: canon, dtype: t.storage.dtype, shape: t.shape.clone(), index: i });
    }
    Ok(out)
}

/// Writes the checkpoint's tensors into `dir` with the shard writer (`model.safetensors`, or
/// shards and an index past `max_shard_size`): every header first (every shape is known from the
/// pickle), then each tensor as it is read. The one place that decides the output layout.
fn write_model(dir: &Path, ck: &mut Checkpoint, max_shard_size: u64) -> Result<usize> {
    let tensors = plan_tensors(ck)?;
    let specs = tensors.iter().map(|t| TensorSpec { name: t.name.clone(), shape: t.shape.clone(), dtype: st_dtype(t.dtype) }).collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut w = ShardWriter::new(dir, specs, max_shard_size, metadata)?;
    for t in &tensors {
        w.write_bytes(&t.name, &ck.tensor_bytes(t.index)?)?;
    }
    w.finish()?;
    Ok(tensors.len())
}

pub fn run(a: Args) -> Result<()> {
    let (src_dir, bin) = if a.input.is_dir() {
        let bin = a.input.join("pytorch_model.bin");
        if !bin.is_file() {
            if a.input.join("pytorch_model.bin.index.json").is_file() {
                bail!(
                    "{}: a sharded PyTorch checkpoint (pytorch_model.bin.index.json) is not supported; convert each shard's file",
                    a.input.display()
                );
            }
            bail!("{}: missing (expected a PyTorch checkpoint in the directory)", bin.display());
        }
        (Some(a.input.clone()), bin)
    } else if a.input.is_file() {
        (a.input.parent().map(Path::to_path_buf), a.input.clone())
    } else {
        bail!("{}: not found", a.input.display());
    };
    if a.out.exists() && !a.force && std::fs::read_dir(&a.out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{}: exists and is not empty (give --force to replace it)", a.out.display());
    }
    let mut ck = Checkpoint::open(&bin)?;
    let parent = a.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    let tmp = parent.join(format!(".{}.tmp-{}", a.out.file_name().map(|s| s.to_string_lossy()).unwrap_or_default(), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("{}: cannot remove", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    let written = (|| -> Result<(usize, Vec<&str>)> {
        let n = write_model(&tmp, &mut ck, a.max_shard_size)?;
        let mut copied = Vec::new();
        for f in COPIED.iter().filter(|f| src_dir.as_ref().is_some_and(|d| d.join(f).is_file())) {
            let from = src_dir.as_ref().map(|d| d.join(f)).unwrap_or_default();
            std::fs::copy(&from, tmp.join(f)).with_context(|| format!("{}: cannot copy", from.display()))?;
            copied.push(*f);
        }
        Ok((n, copied))
    })();
    let (n, copied) = match written {
        Ok(x) => x,
        Err(e) => {
            std::fs::remove_dir_all(&tmp).ok();
            return Err(e);
        }
    };
    crate::util::replace_dir(&tmp, &a.out)?;
    eprintln!(
        "wrote {} ({n} tensors){}",
        a.out.join("model.safetensors").display(),
        if copied.is_empty() { String::new() } else { format!(" and copied {}", copied.join(", ")) }
    );
    if !copied.contains(&"config.json") {
        eprintln!("note: no config.json beside the checkpoint; the model directory needs one to load");
    }
    Ok(())
}
