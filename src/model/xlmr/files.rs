//! Building a model from its files (or at random) and saving it: one tensor at a time in both
//! directions, so the host never holds a second copy of the whole model (docs/design.md §5).

use super::*;
use crate::model::random_init::RandomInit;
use crate::model::shards::{self, TensorSpec, WeightFiles};
use std::collections::BTreeMap;

/// How `XlmR::save_with` writes the weights.
#[derive(Clone, Copy, Debug)]
pub struct SaveOpts {
    /// Bytes of tensor data per shard; a model within it is one `model.safetensors`.
    pub max_shard_size: u64,
}

impl Default for SaveOpts {
    fn default() -> Self {
        SaveOpts { max_shard_size: shards::DEFAULT_MAX_SHARD_SIZE }
    }
}

impl<B: Backend> XlmR<B> {
    /// Loads `config.json` and the weights (`model.safetensors`, or the shards of
    /// `model.safetensors.index.json`) from an HF checkpoint directory.
    pub fn load(backend: B, dir: &Path) -> Result<Self> {
        Self::load_with(backend, dir, ParamStorage::Compact)
    }

    /// `load` for training: the weights keep full f32 precision on every backend (the master
    /// copy the optimizer updates), so training, and an exact resume, start from the file's
    /// values rather than from a bf16 rounding of them.
    pub fn load_for_training(backend: B, dir: &Path) -> Result<Self> {
        Self::load_with(backend, dir, ParamStorage::Master)
    }

    fn load_with(backend: B, dir: &Path, storage: ParamStorage) -> Result<Self> {
        let mut plan = LoadPlan::open(dir)?;
        let build = Build {
            backend,
            cfg: plan.cfg.clone(),
            specs: plan.specs.clone(),
            n_backbone: plan.backbone.len(),
            untied: plan.untied,
            storage,
        };
        Self::from_specs(build, |i, capacity| plan.read(i, capacity))
    }

    /// A randomly initialised model with HF's init (`random_init`: normal(0, 0.02) weights and
    /// embeddings, the padding rows zero, zero biases, unit LayerNorms).
    pub fn random(backend: B, cfg: ModelConfig, seed: u64) -> Result<Self> {
        cfg.validate("the model configuration")?;
        cfg.check_fits_memory("the model configuration")?;
        let specs = weights::param_specs(&cfg, false);
        let n_backbone = specs.len();
        let cfg_copy = cfg.clone();
        let mut init = RandomInit::new(&cfg_copy, seed);
        let names = specs.clone();
        let build = Build { backend, cfg, specs, n_backbone, untied: false, storage: ParamStorage::Master };
        Self::from_specs(build, |i, capacity| Ok(init.next(&names[i].0, &names[i].1, capacity)))
    }

    /// Builds the model of `b.specs` (the backbone's `n_backbone` tensors, then the length
    /// predictor's, if any, in `length::internal_specs` order), asking `feed(i, capacity)` for
    /// each tensor's values in turn (in a vector with room for `capacity`, its padded length) and
    /// uploading each before the next is asked for.
    fn from_specs(b: Build<B>, mut feed: impl FnMut(usize, usize) -> Result<Vec<f32>>) -> Result<Self> {
        let Build { backend, cfg, specs, n_backbone, untied, storage } = b;
        let pos: HashMap<&str, usize> = specs.iter().enumerate().map(|(i, p)| (p.0.as_str(), i)).collect();
        let at = |n: &str| -> Result<usize> { pos.get(n).copied().with_context(|| format!("internal: parameter `{n}` missing")) };
        let lin = |p: &str| -> Result<Linear> { Ok(Linear { w: at(&format!("{p}.weight"))?, b: at(&format!("{p}.bias"))? }) };
        let norm = |p: &str| -> Result<Norm> { Ok(Norm { g: at(&format!("{p}.weight"))?, b: at(&format!("{p}.bias"))? }) };
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let l = format!("roberta.encoder.layer.{i}");
            let (attn_ln, ffn_ln) = match cfg.arch {
                Arch::PostLn => (norm(&format!("{l}.attention.output.LayerNorm"))?, norm(&format!("{l}.output.LayerNorm"))?),
                Arch::PreLn => (norm(&format!("{l}.attention.self_attn_layer_norm"))?, norm(&format!("{l}.LayerNorm"))?),
            };
            layers.push(Layer {
                q: lin(&format!("{l}.attention.self.query"))?,
                k: lin(&format!("{l}.attention.self.key"))?,
                v: lin(&format!("{l}.attention.self.value"))?,
                o: lin(&format!("{l}.attention.output.dense"))?,
                ffn_in: lin(&format!("{l}.intermediate.dense"))?,
                ffn_out: lin(&format!("{l}.output.dense"))?,
                attn_ln,
                ffn_ln,
            });
        }
        let ix = Index {
            word: at("roberta.embeddings.word_embeddings.weight")?,
            pos: at("roberta.embeddings.position_embeddings.weight")?,
            typ: at("roberta.embeddings.token_type_embeddings.weight")?,
            emb_ln: if cfg.arch == Arch::PostLn { Some(norm("roberta.embeddings.LayerNorm")?) } else { None },
            final_ln: if cfg.arch == Arch::PreLn { Some(norm("roberta.encoder.LayerNorm")?) } else { None },
            head_dense: lin("lm_head.dense")?,
            head_ln: norm("lm_head.layer_norm")?,
            head_bias: at("lm_head.bias")?,
            decoder: if untied { Some(at("lm_head.decoder.weight")?) } else { None },
        };
        let head_vocab = cfg.vocab_size.next_multiple_of(backend.vocab_align().max(1));
        let decoder = ix.decoder.unwrap_or(ix.word);
        let n_params = specs.len();
        let mut model = XlmR {
            p: Params {
                backend,
                cfg,
                names: Vec::new(),
                shapes: Vec::new(),
                values: Vec::new(),
                grads: Vec::new(),
                stored: Vec::new(),
                ix,
                layers,
                length: (n_params > n_backbone).then_some(n_backbone),
                trainable: 0..n_backbone,
                save_opts: SaveOpts::default(),
            },
            work: Workspace { enc: None, step: None, cache: None, length: None },
        };
        for (i, (n, s)) in specs.into_iter().enumerate() {
            let len: usize = s.iter().product();
            let padded = if i == decoder || i == ix.head_bias { len / model.p.cfg.vocab_size * head_vocab } else { len };
            model.p.stored.push(padded);
            model.p.names.push(n);
            model.p.shapes.push(s);
            let data = feed(i, padded)?;
            let buf = model.p.upload_owned(i, data, storage)?;
            model.p.values.push(buf);
        }
        Ok(model)
    }

    /// Writes `config.json` and the weights (f32, HF names; a tied decoder is omitted, as
    /// `save_pretrained` does) with the model's save options (`set_save_opts`; by default one
    /// `model.safetensors` up to 5 GB, shards past it).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_with(dir, self.p.save_opts)
    }

    /// The options every later `save` uses (a training run's checkpoints are saved this way).
    pub fn set_save_opts(&mut self, opts: SaveOpts) {
        self.p.save_opts = opts;
    }

    /// `save`, sharding past `opts.max_shard_size`. Each tensor is downloaded, written and
    /// dropped before the next; the files of a previous save in the other layout are removed.
    pub fn save_with(&self, dir: &Path, opts: SaveOpts) -> Result<()> {
        weights::write_config(dir, &self.p.cfg, self.p.ix.decoder.is_none())?;
        let n_backbone = self.p.length.unwrap_or(self.p.names.len());
        let mut specs: Vec<TensorSpec> =
            (0..n_backbone).map(|i| TensorSpec::f32(self.p.names[i].clone(), self.p.shapes[i].clone())).collect();
        // The length predictor under its official names (its attention's input projection whole).
        if self.p.length.is_some() {
            specs.extend(length::official_specs(&self.p.cfg).into_iter().map(|(n, s)| TensorSpec::f32(n, s)));
        }
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let get = |i: usize| self.download_param(i, &self.p.values[i]);
        shards::write_sharded(dir, specs, opts.max_shard_size, meta, |k, _| match k.checked_sub(n_backbone) {
            None => get(k),
            Some(j) => length::official_tensor(j, |m| get(n_backbone + m)),
        })?;
        Ok(())
    }
}

/// A model directory's weights matched to the parameter list (config.json, the backbone, the
/// length predictor if any), to be read one tensor at a time in parameter order: what `load`
/// does, without a backend.
pub struct LoadPlan {
    pub cfg: ModelConfig,
    /// Every parameter's name and shape, in the model's order.
    pub specs: Vec<(String, Vec<usize>)>,
    /// Whether the file holds a decoder of its own.
    pub untied: bool,
    files: WeightFiles,
    backbone: Vec<weights::Planned>,
    length: length::Feed,
}

impl LoadPlan {
    /// Reads config.json, maps the weights and checks every tensor's name and shape (no values
    /// are read but the two compared for a tied decoder).
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("{}: model directory not found", dir.display());
        }
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        cfg.check_fits_memory(&dir.join("config.json").display().to_string())?;
        let files = WeightFiles::open(dir)?;
        let mut catalog = files.catalog();
        let length_src = length::take_tensors(&cfg, &mut catalog, &files)?;
        let (backbone, untied) = weights::resolve(&cfg, catalog, &files)?;
        let mut specs: Vec<(String, Vec<usize>)> = backbone.iter().map(|p| (p.name.clone(), p.shape.clone())).collect();
        if !length_src.is_empty() {
            specs.extend(length::internal_specs(&cfg));
        }
        let length = length::Feed::new(&cfg, length_src);
        Ok(LoadPlan { cfg, specs, untied, files, backbone, length })
    }

    /// Parameter `i`'s values (call for i = 0, 1, ... in turn), in a vector with room for
    /// `capacity` values; a non-finite value is an error naming the file and tensor.
    pub fn read(&mut self, i: usize, capacity: usize) -> Result<Vec<f32>> {
        let (data, source) = match self.backbone.get(i) {
            Some(p) => (self.files.read_f32(&p.source, capacity)?, p.source.clone()),
            None => self.length.next(&self.files)?,
        };
        // A diverged or damaged model would sample to empty text and NaN scores.
        if let Some(j) = data.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: tensor `{source}` holds a non-finite value ({} at index {j}); the model is damaged (a diverged training?)",
                self.files.file_of(&source),
                data[j]
            );
        }
        Ok(data)
    }
}

/// What `from_specs` builds: the parameters' names and shapes, and how they are stored.
struct Build<B> {
    backend: B,
    cfg: ModelConfig,
    specs: Vec<(String, Vec<usize>)>,
    n_backbone: usize,
    untied: bool,
    storage: ParamStorage,
}

impl<B: Backend> Params<B> {
    /// `upload_param` for a vector the caller gives up: padded in place (without a copy when it
    /// has the room) to the stored length.
    fn upload_owned(&self, i: usize, mut data: Vec<f32>, storage: ParamStorage) -> Result<B::Buf> {
        let n: usize = self.shapes[i].iter().product();
        if data.len() != n {
            bail!("parameter `{}`: {} values given, expected {n}", self.names[i], data.len());
        }
        data.resize(self.stored[i], 0.0);
        match storage {
            ParamStorage::Compact => self.backend.upload(&data),
            ParamStorage::F32 => self.backend.upload_f32(&data),
            ParamStorage::Master => self.backend.upload_master(&data),
        }
    }
}
