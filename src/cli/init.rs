//! `dlm-engine init`: a randomly initialised model in the Hugging Face layout.

use crate::model::{random_init, shards, ModelConfig};
use crate::tokenizer::Tok;
use crate::train::defaults::TrainingDefaults;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;

#[derive(ClapArgs, Debug)]
#[command(group(clap::ArgGroup::new("shape").required(true).args(["config", "preset"])))]
pub struct Args {
    /// An HF config.json giving the model's shape.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A named shape: base, large, xl, xxl (real XLM-R shapes), tiny, tiny-xl, small, micro, micro-xl.
    /// The vocabulary size is taken from the tokenizer.
    #[arg(long)]
    pub preset: Option<String>,
    /// tokenizer.json to pair with the model (e.g. from `dlm-engine tokenizer train`).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Output directory (config.json, model.safetensors, tokenizer.json, training_defaults.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Largest shard of weights, as transformers' `max_shard_size`: a byte count or 200KB, 500MB,
    /// 5GB (powers of 1000), 1GiB (powers of 1024). A bigger model is written as
    /// model-00001-of-0000N.safetensors ... with model.safetensors.index.json.
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Replace an existing non-empty output directory.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args) -> Result<()> {
    let max_shard_size = shards::parse_size(&a.max_shard_size).context("--max-shard-size")?;
    let tok = Tok::load(&a.tokenizer)?;
    let cfg = match (&a.config, &a.preset) {
        (Some(path), _) => {
            let cfg = ModelConfig::from_file(path)?;
            cfg.check_tokenizer(tok.vocab_size(), &a.tokenizer.display().to_string(), &format!("{}: field `vocab_size`", path.display()))?;
            cfg
        }
        (None, Some(name)) => {
            let mut cfg = ModelConfig::preset(name)?;
            cfg.vocab_size = tok.vocab_size();
            cfg
        }
        (None, None) => unreachable!("clap requires --config or --preset"),
    };
    let what = match (&a.config, &a.preset) {
        (Some(p), _) => p.display().to_string(),
        (None, p) => format!("preset `{}`", p.as_deref().unwrap_or_default()),
    };
    cfg.check_fits_memory(&what)?;
    if a.out.exists() && a.out.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) && !a.force {
        bail!("{}: already exists and is not empty (use --force to replace it)", a.out.display());
    }
    let parent = a.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".init-tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    // Tensor by tensor from the seed straight to disk: the model is never whole in memory.
    let written = match random_init::write_random(&tmp, &cfg, a.seed, max_shard_size) {
        Ok(w) => w,
        Err(e) => {
            std::fs::remove_dir_all(&tmp).ok();
            return Err(e);
        }
    };
    tok.save(tmp.join("tokenizer.json"))?;
    TrainingDefaults::from_scratch().save(&tmp)?;
    crate::util::replace_dir(&tmp, &a.out).with_context(|| format!("{}: cannot write the model", a.out.display()))?;
    eprintln!(
        "wrote {} ({} parameters, {} layers, hidden {}, vocab {}; {})",
        a.out.display(),
        crate::model::weights::param_specs(&cfg, false).iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>(),
        cfg.layers,
        cfg.hidden,
        cfg.vocab_size,
        if written.len() > 1 { format!("{} shards", written.len() - 1) } else { shards::SINGLE_FILE.to_string() }
    );
    Ok(())
}
