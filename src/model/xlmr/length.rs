//! The length predictor (docs/method.md §5.1): one post-LN Transformer encoder layer (ReLU
//! feed-forward) over the frozen backbone's final hidden states of `[<s>] prompt`, mean pooling
//! over the real positions, then `Linear(H→FFN) → tanh → Linear(FFN→514)`: logits over the
//! classes 0..513, class c meaning c + 1 target tokens.
//!
//! Its tensors carry the names PyTorch's `nn.TransformerEncoder` and `nn.Sequential` give them in
//! the official code (`length_trm.layers.0.*`, `length_predictor.{0,2}.*`) and live in
//! `model.safetensors` beside the masked LM's. In memory the attention's packed input projection
//! (`in_proj_weight` `[3H, H]`, `in_proj_bias` `[3H]`) is held as three `[H, H]` projections (and
//! three biases), so the attention ops take Q, K and V as the encoder's do; `merge` packs them
//! again for saving.

use super::backward::{AttnScratch, BlockInput, ParamGrads};
use super::*;
use crate::backend::{Activation, PoolShape, VocabShape};
use crate::model::shards::WeightFiles;
use crate::model::weights::{NamedTensor, Planned};

/// Classes of the length predictor (the official module's fixed output size).
pub const LENGTH_CLASSES: usize = 514;
/// `nn.TransformerEncoderLayer`'s default LayerNorm epsilon.
const LN_EPS: f32 = 1e-5;
const TRM: &str = "length_trm.layers.0.";
const MLP: &str = "length_predictor.";

/// The encoder layer's tensors among the module's own, in `internal_specs` order.
const LAYER: Layer = Layer {
    q: Linear { w: 0, b: 1 },
    k: Linear { w: 2, b: 3 },
    v: Linear { w: 4, b: 5 },
    o: Linear { w: 6, b: 7 },
    ffn_in: Linear { w: 8, b: 9 },
    ffn_out: Linear { w: 10, b: 11 },
    attn_ln: Norm { g: 12, b: 13 },
    ffn_ln: Norm { g: 14, b: 15 },
};
const MLP_IN: Linear = Linear { w: 16, b: 17 };
const MLP_OUT: Linear = Linear { w: 18, b: 19 };

/// Dropout streams of the module's sites, apart from the backbone's (`super::stream`).
const S_PROBS: u64 = 1 << 40;
const S_ATTN_OUT: u64 = (1 << 40) + 1;
const S_FFN_MID: u64 = (1 << 40) + 2;
const S_FFN_OUT: u64 = (1 << 40) + 3;

/// The class of a target of `tokens` tokens (without `</s>`): `max(tokens, 1) − 1`, as the
/// official trainer computes it, capped at the last class.
pub fn length_class(tokens: usize) -> i32 {
    (tokens.max(1) - 1).min(LENGTH_CLASSES - 1) as i32
}

/// The module's tensors under their official names, in `state_dict` order.
pub fn official_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, f) = (cfg.hidden, cfg.intermediate);
    let t = |n: &str, s: Vec<usize>| (format!("{TRM}{n}"), s);
    vec![
        t("self_attn.in_proj_weight", vec![3 * h, h]),
        t("self_attn.in_proj_bias", vec![3 * h]),
        t("self_attn.out_proj.weight", vec![h, h]),
        t("self_attn.out_proj.bias", vec![h]),
        t("linear1.weight", vec![f, h]),
        t("linear1.bias", vec![f]),
        t("linear2.weight", vec![h, f]),
        t("linear2.bias", vec![h]),
        t("norm1.weight", vec![h]),
        t("norm1.bias", vec![h]),
        t("norm2.weight", vec![h]),
        t("norm2.bias", vec![h]),
        (format!("{MLP}0.weight"), vec![f, h]),
        (format!("{MLP}0.bias"), vec![f]),
        (format!("{MLP}2.weight"), vec![LENGTH_CLASSES, f]),
        (format!("{MLP}2.bias"), vec![LENGTH_CLASSES]),
    ]
}

/// The in-memory names (the packed projection split into `.q`, `.k`, `.v`), in the order of
/// `LAYER`, `MLP_IN` and `MLP_OUT`.
fn internal_names(official: &[(String, Vec<usize>)]) -> Vec<String> {
    let mut names = Vec::with_capacity(official.len() + 4);
    for part in ["q", "k", "v"] {
        names.push(format!("{}.{part}", official[0].0));
        names.push(format!("{}.{part}", official[1].0));
    }
    names.extend(official[2..].iter().map(|(n, _)| n.clone()));
    names
}

/// The in-memory tensors' names and shapes, in the order of `LAYER`, `MLP_IN` and `MLP_OUT`.
pub fn internal_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let official = official_specs(cfg);
    let h = cfg.hidden;
    let shapes = [vec![h, h], vec![h]].into_iter().cycle().take(6).chain(official[2..].iter().map(|(_, s)| s.clone()));
    internal_names(&official).into_iter().zip(shapes).collect()
}

/// Official tensors (in `official_specs` order) to the in-memory ones.
fn split(cfg: &ModelConfig, official: Vec<Vec<f32>>) -> Vec<NamedTensor> {
    let mut splitter = Splitter::new(cfg);
    let mut it = official.into_iter();
    let mut out = Vec::new();
    for (name, shape) in internal_specs(cfg) {
        match splitter.next(|| it.next().context("internal: too few length predictor tensors")) {
            Ok(data) => out.push((name, shape, data)),
            Err(_) => break,
        }
    }
    out
}

/// Turns the official tensors, taken one at a time, into the in-memory ones: the packed input
/// projection and its bias are split when the first of their parts is asked for, and their other
/// parts kept until asked for; the other tensors pass through.
struct Splitter {
    hidden: usize,
    /// The parts of the packed projection not yet handed out (weights and biases interleaved).
    pending: std::collections::VecDeque<Vec<f32>>,
    /// In-memory tensors handed out so far.
    taken: usize,
}

impl Splitter {
    fn new(cfg: &ModelConfig) -> Self {
        Splitter { hidden: cfg.hidden, pending: Default::default(), taken: 0 }
    }

    /// The next in-memory tensor; `official` gives the next official tensor when one is needed.
    fn next(&mut self, mut official: impl FnMut() -> Result<Vec<f32>>) -> Result<Vec<f32>> {
        let h = self.hidden;
        if self.taken == 0 {
            let (w, b) = (official()?, official()?);
            for p in 0..3 {
                self.pending.push_back(w[p * h * h..(p + 1) * h * h].to_vec());
                self.pending.push_back(b[p * h..(p + 1) * h].to_vec());
            }
        }
        self.taken += 1;
        match self.pending.pop_front() {
            Some(d) => Ok(d),
            None => official(),
        }
    }
}

/// Reads the length predictor's in-memory tensors one at a time, in order, from the official
/// tensors `take_tensors` planned.
pub struct Feed {
    sources: std::vec::IntoIter<Planned>,
    splitter: Splitter,
}

impl Feed {
    pub fn new(cfg: &ModelConfig, sources: Vec<Planned>) -> Self {
        Feed { sources: sources.into_iter(), splitter: Splitter::new(cfg) }
    }

    /// The next in-memory tensor, and the file tensor it came from (for error messages).
    pub fn next(&mut self, files: &WeightFiles) -> Result<(Vec<f32>, String)> {
        let sources = &mut self.sources;
        let mut last = String::new();
        let data = self.splitter.next(|| {
            let p = sources.next().context("internal: the length predictor has no more tensors")?;
            last = p.source.clone();
            files.read_f32(&p.source, 0)
        })?;
        Ok((data, last))
    }
}

/// The official tensor `k` (in `official_specs` order) from the in-memory ones, which `get`
/// downloads one at a time (by index into `internal_specs`): the packed projection and its bias
/// are concatenated from their three parts.
pub fn official_tensor(k: usize, mut get: impl FnMut(usize) -> Result<Vec<f32>>) -> Result<Vec<f32>> {
    match k {
        0 | 1 => Ok([get(k)?, get(k + 2)?, get(k + 4)?].concat()),
        _ => get(k + 4),
    }
}

/// Takes the length predictor's tensors out of a file's `catalog` (every one of them, checked
/// against `cfg`, or none) and returns them in `official_specs` order (empty when the file has
/// none); `Feed` reads them.
pub fn take_tensors(cfg: &ModelConfig, catalog: &mut HashMap<String, Vec<usize>>, files: &WeightFiles) -> Result<Vec<Planned>> {
    let ours = |n: &str| n.starts_with(TRM.trim_end_matches("layers.0.")) || n.starts_with(MLP);
    if !catalog.keys().any(|n| ours(n)) {
        return Ok(Vec::new());
    }
    let mut planned = Vec::new();
    for (name, shape) in official_specs(cfg) {
        let t = catalog.remove(&name).with_context(|| {
            format!("{}: the length predictor is incomplete: missing tensor `{name}` (expected shape {shape:?})", files.what())
        })?;
        if t != shape {
            bail!("{}: tensor `{name}` has shape {t:?}, expected {shape:?} from config.json", files.file_of(&name));
        }
        planned.push(Planned { source: name.clone(), name, shape });
    }
    let mut extra: Vec<&String> = catalog.keys().filter(|n| ours(n)).collect();
    extra.sort();
    if let Some(n) = extra.first() {
        bail!("{}: unexpected tensor `{n}` (the length predictor has one layer, `{TRM}*`, and `{MLP}{{0,2}}.*`)", files.file_of(n));
    }
    Ok(planned)
}

/// A new module with PyTorch's default initialisation: Xavier-uniform packed projection with
/// zero biases (`nn.MultiheadAttention`), U(±1/√fan_in) weights and biases for the other linear
/// layers (`nn.Linear`; the attention output's bias zero), unit LayerNorms.
fn random(cfg: &ModelConfig, seed: u64) -> Vec<NamedTensor> {
    let mut rng = crate::rng::Rng::new(seed, 0x1E46);
    let mut uniform = |n: usize, bound: f32| (0..n).map(|_| bound * (2.0 * rng.uniform() - 1.0)).collect::<Vec<f32>>();
    // Each bias follows its weight in `official_specs`, so it takes the fan-in last seen.
    let mut fan_in = cfg.hidden;
    let data: Vec<Vec<f32>> = official_specs(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            if shape.len() == 2 {
                fan_in = shape[1];
            }
            if name.ends_with("in_proj_weight") {
                uniform(n, (6.0 / (shape[0] + shape[1]) as f32).sqrt())
            } else if name.ends_with("in_proj_bias") || name.ends_with("out_proj.bias") {
                vec![0.0; n]
            } else if name.contains(".norm") {
                vec![if name.ends_with("weight") { 1.0 } else { 0.0 }; n]
            } else {
                uniform(n, 1.0 / (fan_in as f32).sqrt())
            }
        })
        .collect();
    split(cfg, data)
}

/// A part of the model that trains on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The masked LM (embeddings, encoder, LM head): diffusive adaptation.
    Backbone,
    /// The length predictor over the frozen backbone's features (docs/method.md §5.1).
    Length,
}

impl<B: Backend> XlmR<B> {
    /// The parameters training updates (indices into `param_names`): the backbone's unless
    /// `set_trainable(Part::Length)`.
    pub fn trainable(&self) -> std::ops::Range<usize> {
        self.p.trainable.clone()
    }

    /// Chooses the part that trains; the other one's parameters get no gradient and are never
    /// changed. Gradients of the previous choice are dropped.
    pub fn set_trainable(&mut self, part: Part) -> Result<()> {
        let n = self.p.names.len();
        self.p.trainable = match (part, self.p.length) {
            (Part::Backbone, l) => 0..l.unwrap_or(n),
            (Part::Length, Some(l)) => l..n,
            (Part::Length, None) => bail!("the model has no length predictor to train (see `init_length_predictor`)"),
        };
        self.p.grads.clear();
        Ok(())
    }

    /// Fails unless `part` is the one that trains (its gradients are the ones kept).
    pub(super) fn require_trainable(&self, part: Part) -> Result<()> {
        let want = match (part, self.p.length) {
            (Part::Backbone, l) => 0..l.unwrap_or(self.p.names.len()),
            (Part::Length, l) => l.unwrap_or(self.p.names.len())..self.p.names.len(),
        };
        if self.p.trainable != want {
            bail!("internal: a {part:?} gradient was asked for while the other part trains");
        }
        Ok(())
    }
}

/// The module's activations on one batch of prompts (its encoder layer's in `acts`).
pub(super) struct Work<B: Backend> {
    batch: usize,
    seq: usize,
    acts: LayerActs<B>,
    /// The layer's output, pooled, the MLP's hidden layer before and after tanh, and the logits
    /// (their gradient after a loss).
    out: B::Buf,
    pooled: B::Buf,
    m1: B::Buf,
    t: B::Buf,
    logits: B::Buf,
}

impl<B: Backend> XlmR<B> {
    pub fn has_length_predictor(&self) -> bool {
        self.p.length.is_some()
    }

    /// Gives a model that has none a new length predictor (PyTorch's default initialisation,
    /// from `seed`), stored at full precision for training.
    pub fn init_length_predictor(&mut self, seed: u64) -> Result<()> {
        if self.p.length.is_some() {
            bail!("the model already has a length predictor");
        }
        let start = self.p.names.len();
        for (name, shape, data) in random(&self.p.cfg, seed) {
            self.p.stored.push(data.len());
            self.p.names.push(name);
            self.p.shapes.push(shape);
            let buf = self.p.upload_param(self.p.names.len() - 1, &data, ParamStorage::Master)?;
            self.p.values.push(buf);
        }
        self.p.length = Some(start);
        Ok(())
    }

    /// The length logits (`[prompts.len(), LENGTH_CLASSES]`, row-major) of prompts given as
    /// `[<s>] prompt` ids (no `</s>`), without dropout.
    pub fn length_logits(&mut self, prompts: &[Vec<i32>]) -> Result<Vec<f32>> {
        self.run_length(prompts, Dropout::off())?;
        let w = self.work.length.as_ref().context("no length pass")?;
        self.p.backend.download(&w.logits)
    }

    /// Forward and backward of `scale · mean_b CE(logits_b, classes[b])` over the prompts (as in
    /// `length_logits`); gradients accumulate into the length predictor's (which must be the
    /// trainable part). The backbone runs forward only, without dropout and without keeping its
    /// activations. Returns the loss.
    pub fn length_loss_and_grad(&mut self, prompts: &[Vec<i32>], classes: &[i32], drop: Dropout, scale: f32) -> Result<f32> {
        if classes.len() != prompts.len() {
            bail!("{} length classes for {} prompts", classes.len(), prompts.len());
        }
        if let Some(&c) = classes.iter().find(|&&c| c < 0 || c as usize >= LENGTH_CLASSES) {
            bail!("length class {c} is outside 0..{LENGTH_CLASSES}");
        }
        self.require_trainable(Part::Length)?;
        self.ensure_grads()?;
        self.run_length(prompts, drop)?;
        let XlmR { p, work } = self;
        let (enc, w) = (work.enc.as_ref().context("no encoder pass")?, work.length.as_mut().context("no length pass")?);
        let be = &p.backend;
        let b = prompts.len();
        let targets = be.upload_i32(classes)?;
        let weights = vec![scale / b as f32; b];
        let shape = VocabShape { rows: b, vocab: LENGTH_CLASSES, valid: LENGTH_CLASSES };
        let per_row = be.cross_entropy_fwd_bwd(&mut w.logits, &targets, &weights, shape, 0.0)?;
        let loss: f64 = per_row.iter().zip(&weights).map(|(&l, &wt)| l as f64 * wt as f64).sum();
        p.length_backward(enc, w, drop)?;
        Ok(loss as f32)
    }

    /// The frozen backbone on the prompts, then the module's forward.
    fn run_length(&mut self, prompts: &[Vec<i32>], drop: Dropout) -> Result<()> {
        if self.p.length.is_none() {
            bail!("the model has no length predictor (train one with `train --stage length`)");
        }
        if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
            bail!("the length predictor needs at least one prompt, each with at least `<s>`");
        }
        let batch = Batch::from_rows(prompts, self.p.cfg.pad_id);
        self.p.check_batch(&batch)?;
        let enc = self.work.encoder(&self.p, &batch, false)?;
        self.p.set_encoder_inputs(enc, &batch)?;
        self.p.run_encoder(enc, Dropout::off())?;
        if !self.work.length.as_ref().is_some_and(|w| w.batch == batch.batch && w.seq == batch.seq) {
            self.work.length = None;
            self.work.length = Some(self.p.alloc_length(batch.batch, batch.seq)?);
        }
        let (enc, w) = (self.work.enc.as_ref().context("no encoder pass")?, self.work.length.as_mut().context("no length workspace")?);
        self.p.length_forward(enc, w, drop)
    }
}

impl<B: Backend> Params<B> {
    fn alloc_length(&self, batch: usize, seq: usize) -> Result<Work<B>> {
        let be = &self.backend;
        let (n, h, f) = (batch * seq, self.cfg.hidden, self.cfg.intermediate);
        let z = |k: usize| be.zeros(k);
        let acts = LayerActs {
            a_in: z(0)?,
            a_mean: z(0)?,
            a_rstd: z(0)?,
            q: z(n * h)?,
            k: z(n * h)?,
            v: z(n * h)?,
            ctx: z(n * h)?,
            lse: z(batch * self.cfg.heads * seq)?,
            attn: z(n * h)?,
            s1: z(n * h)?,
            mean1: z(n)?,
            rstd1: z(n)?,
            h1: z(n * h)?,
            f1: z(n * f)?,
            g: z(n * f)?,
            f2: z(n * h)?,
            s2: z(n * h)?,
            mean2: z(n)?,
            rstd2: z(n)?,
        };
        Ok(Work {
            batch,
            seq,
            acts,
            out: z(n * h)?,
            pooled: z(batch * h)?,
            m1: z(batch * f)?,
            t: z(batch * f)?,
            logits: z(batch * LENGTH_CLASSES)?,
        })
    }

    fn attn_call(&self, w: &Work<B>, drop: Dropout) -> AttnCall {
        AttnCall {
            shape: AttnShape { batch: w.batch, seq: w.seq, heads: self.cfg.heads, head_dim: self.cfg.head_dim() },
            drop,
            stream: S_PROBS,
        }
    }

    /// `nn.TransformerEncoderLayer` (post-LN, ReLU; dropout `drop` after the attention
    /// probabilities, the attention output, the ReLU and the second linear layer), mean pooling
    /// and the MLP, on the encoder's output.
    fn length_forward(&self, enc: &Encoder<B>, w: &mut Work<B>, drop: Dropout) -> Result<()> {
        let start = self.length.context("no length predictor")?;
        let (v, be) = (&self.values[start..], &self.backend);
        let (b, h, f) = (w.batch, self.cfg.hidden, self.cfg.intermediate);
        let n = b * w.seq;
        let x = self.encoder_output(enc);
        let call = self.attn_call(w, drop);
        let a = &mut w.acts;
        let (l, square, rows) = (LAYER, Gemm { m: n, n: h, k: h }, RowsShape { rows: n, cols: h });
        be.linear_fwd(x, &v[l.q.w], Some(&v[l.q.b]), &mut a.q, square)?;
        be.linear_fwd(x, &v[l.k.w], Some(&v[l.k.b]), &mut a.k, square)?;
        be.linear_fwd(x, &v[l.v.w], Some(&v[l.v.b]), &mut a.v, square)?;
        be.attention_fwd(Qkv { q: &a.q, k: &a.k, v: &a.v }, &enc.key_mask, &mut a.ctx, &mut a.lse, call)?;
        be.linear_fwd(&a.ctx, &v[l.o.w], Some(&v[l.o.b]), &mut a.attn, square)?;
        be.dropout_fwd(&mut a.attn, drop, S_ATTN_OUT)?;
        be.add_layernorm_fwd(
            &a.attn,
            Some(Residual { residual: x, sum: &mut a.s1 }),
            LnParams { gamma: &v[l.attn_ln.g], beta: &v[l.attn_ln.b], eps: LN_EPS },
            &mut a.h1,
            LnStats { mean: &mut a.mean1, rstd: &mut a.rstd1 },
            rows,
        )?;
        be.linear_fwd(&a.h1, &v[l.ffn_in.w], Some(&v[l.ffn_in.b]), &mut a.f1, Gemm { m: n, n: f, k: h })?;
        be.activation_fwd(Activation::Relu, &a.f1, &mut a.g)?;
        be.dropout_fwd(&mut a.g, drop, S_FFN_MID)?;
        be.linear_fwd(&a.g, &v[l.ffn_out.w], Some(&v[l.ffn_out.b]), &mut a.f2, Gemm { m: n, n: h, k: f })?;
        be.dropout_fwd(&mut a.f2, drop, S_FFN_OUT)?;
        be.add_layernorm_fwd(
            &a.f2,
            Some(Residual { residual: &a.h1, sum: &mut a.s2 }),
            LnParams { gamma: &v[l.ffn_ln.g], beta: &v[l.ffn_ln.b], eps: LN_EPS },
            &mut w.out,
            LnStats { mean: &mut a.mean2, rstd: &mut a.rstd2 },
            rows,
        )?;
        be.mean_pool_fwd(&w.out, &enc.key_mask, &mut w.pooled, PoolShape { batch: b, seq: w.seq, cols: h })?;
        be.linear_fwd(&w.pooled, &v[MLP_IN.w], Some(&v[MLP_IN.b]), &mut w.m1, Gemm { m: b, n: f, k: h })?;
        be.activation_fwd(Activation::Tanh, &w.m1, &mut w.t)?;
        be.linear_fwd(&w.t, &v[MLP_OUT.w], Some(&v[MLP_OUT.b]), &mut w.logits, Gemm { m: b, n: LENGTH_CLASSES, k: f })
    }

    /// The module's backward from the logits' gradient (in `w.logits`) to its parameters'
    /// gradients; nothing flows into the frozen backbone.
    fn length_backward(&mut self, enc: &Encoder<B>, w: &Work<B>, drop: Dropout) -> Result<()> {
        let start = self.length.context("no length predictor")?;
        let call = self.attn_call(w, drop);
        let x = self.encoder_output(enc);
        let be = &self.backend;
        let (b, h, f) = (w.batch, self.cfg.hidden, self.cfg.intermediate);
        let n = b * w.seq;
        let (a, l) = (&w.acts, LAYER);
        let mut pg = ParamGrads { be, v: &self.values[start..], g: &mut self.grads, rows: b };
        let mut dt = be.zeros(b * f)?;
        pg.linear(MLP_OUT, &w.t, &w.logits, Some(&mut dt), Gemm { m: b, n: LENGTH_CLASSES, k: f })?;
        let mut dm1 = be.zeros(b * f)?;
        be.activation_bwd(Activation::Tanh, &w.t, &dt, &mut dm1)?;
        let mut dpooled = be.zeros(b * h)?;
        pg.linear(MLP_IN, &w.pooled, &dm1, Some(&mut dpooled), Gemm { m: b, n: f, k: h })?;
        let mut dout = be.zeros(n * h)?;
        be.mean_pool_bwd(&dpooled, &enc.key_mask, &mut dout, PoolShape { batch: b, seq: w.seq, cols: h })?;

        pg.rows = n;
        // out = LN2(h1 + drop(W2 · drop(relu(W1 · h1 + b1)) + b2))
        let mut ds2 = be.zeros(n * h)?;
        pg.layernorm(l.ffn_ln, &a.s2, &dout, (&a.mean2, &a.rstd2), &mut ds2, false)?;
        let mut df2 = dout;
        be.copy(&ds2, &mut df2)?;
        be.dropout_bwd(&mut df2, drop, S_FFN_OUT)?;
        let mut dg = be.zeros(n * f)?;
        pg.linear(l.ffn_out, &a.g, &df2, Some(&mut dg), Gemm { m: n, n: h, k: f })?;
        be.dropout_bwd(&mut dg, drop, S_FFN_MID)?;
        let mut df1 = be.zeros(n * f)?;
        be.activation_bwd(Activation::Relu, &a.f1, &dg, &mut df1)?;
        let mut dh1 = df2;
        pg.linear(l.ffn_in, &a.h1, &df1, Some(&mut dh1), Gemm { m: n, n: f, k: h })?;
        be.add_assign(&mut dh1, &ds2)?;
        // h1 = LN1(x + drop(attention block)); x is frozen, so only the block's path matters.
        let mut ds1 = ds2;
        pg.layernorm(l.attn_ln, &a.s1, &dh1, (&a.mean1, &a.rstd1), &mut ds1, false)?;
        be.dropout_bwd(&mut ds1, drop, S_ATTN_OUT)?;
        let mut scratch = AttnScratch { dctx: dh1, dq: be.zeros(n * h)?, dk: be.zeros(n * h)?, dv: be.zeros(n * h)? };
        pg.attention_block(l, BlockInput { a, x, key_mask: &enc.key_mask }, call, &ds1, None, &mut scratch)
    }
}

/// A candidate target length and its log-probability under the length predictor (a
/// log-softmax over all classes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LengthGuess {
    pub length: usize,
    pub logprob: f32,
}

impl<B: Backend> XlmR<B> {
    /// The `k` most likely target lengths (class + 1) of every prompt among those no longer than
    /// its `room` (fewer when the room holds fewer), best first (a tie goes to the shorter
    /// length), `batch` prompts per forward pass.
    pub fn predict_lengths(&mut self, prompts: &[Vec<i32>], room: &[usize], k: usize, batch: usize) -> Result<Vec<Vec<LengthGuess>>> {
        if k == 0 || k > LENGTH_CLASSES {
            bail!("the length beam must be in 1..={LENGTH_CLASSES}, got {k}");
        }
        if room.len() != prompts.len() {
            bail!("{} length limits for {} prompts", room.len(), prompts.len());
        }
        let mut out = Vec::with_capacity(prompts.len());
        for (chunk, rooms) in prompts.chunks(batch.max(1)).zip(room.chunks(batch.max(1))) {
            let logits = self.length_logits(chunk)?;
            out.extend(logits.chunks(LENGTH_CLASSES).zip(rooms).map(|(row, &r)| top_lengths(row, k, r)));
        }
        Ok(out)
    }
}

/// The `k` classes with the highest logits whose length (class + 1) is at most `room` (ties to
/// the lower class), as lengths with their log-probabilities.
fn top_lengths(row: &[f32], k: usize, room: usize) -> Vec<LengthGuess> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_z = max + (row.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>()).ln() as f32;
    let mut order: Vec<usize> = (0..row.len().min(room)).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|c| LengthGuess { length: c + 1, logprob: row[c] - log_z }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_top_lengths() {
        assert_eq!((length_class(0), length_class(1), length_class(7), length_class(10_000)), (0, 0, 6, 513));
        let lengths = |row: &[f32], k, room| top_lengths(row, k, room).iter().map(|g| g.length).collect::<Vec<_>>();
        assert_eq!(lengths(&[0.5, 2.0, 2.0, -1.0], 3, usize::MAX), vec![2, 3, 1]);
        assert_eq!(lengths(&[0.5, 2.0, 2.0, -1.0], 3, 2), vec![2, 1]);
        // Log-probabilities over every class, whatever the room: ln(e^2 / (e^0.5 + 2e^2 + e^-1)).
        let z = (0.5f64.exp() + 2.0 * 2.0f64.exp() + (-1.0f64).exp()).ln();
        let g = top_lengths(&[0.5, 2.0, 2.0, -1.0], 2, 2);
        assert!((g[0].logprob as f64 - (2.0 - z)).abs() < 1e-6 && (g[1].logprob as f64 - (0.5 - z)).abs() < 1e-6, "{g:?}");
    }

    #[test]
    fn official_tensors_split_and_merge_back() {
        let cfg = ModelConfig::preset("micro").unwrap();
        let specs = official_specs(&cfg);
        let data: Vec<Vec<f32>> =
            specs.iter().enumerate().map(|(i, (_, s))| (0..s.iter().product::<usize>()).map(|j| (i * 1000 + j) as f32).collect()).collect();
        let inner = split(&cfg, data.clone());
        assert_eq!(inner.len(), 20);
        assert_eq!(inner[2].0, "length_trm.layers.0.self_attn.in_proj_weight.k");
        let h = cfg.hidden;
        assert_eq!(inner[2].2, data[0][h * h..2 * h * h]);
        let names: Vec<(String, Vec<usize>)> = inner.iter().map(|t| (t.0.clone(), t.1.clone())).collect();
        assert_eq!(names, internal_specs(&cfg));
        for (k, d) in data.iter().enumerate() {
            assert_eq!(&official_tensor(k, |m| Ok(inner[m].2.clone())).unwrap(), d, "{}", specs[k].0);
        }
    }
}
