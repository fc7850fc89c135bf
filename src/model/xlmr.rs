//! XLMRobertaForMaskedLM (post-LN) and XLMRobertaXLForMaskedLM (pre-LN): forward and backward,
//! written once against `Backend`.
//!
//! The encoder runs on every token; the MLM head runs only on the rows asked for (masked
//! positions in training, target slots in sampling), gathered BEFORE the head.

use super::config::{Arch, ModelConfig};
use super::weights;
use super::{Batch, LossRows};
use crate::backend::{AttnCall, Qkv};
use crate::backend::{AttnShape, Backend, Dropout, NoiseSpec};
use crate::backend::{EmbedShape, EmbedTables, Gemm, LnParams, LnStats, Residual, RowsShape};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;

mod backward;
mod cache;
use backward::in_and_out;
mod decode;
mod files;
mod length;
mod pick;
mod ready;

pub use decode::{CanvasSlots, CanvasStep, DecodeSpec};
pub use files::{LoadPlan, SaveOpts};
pub use length::{length_class, LengthGuess, Part, LENGTH_CLASSES};
pub use ready::GradsReady;

#[derive(Clone, Copy)]
struct Linear {
    w: usize,
    b: usize,
}

#[derive(Clone, Copy)]
struct Norm {
    g: usize,
    b: usize,
}

/// Parameter indices of one encoder layer. Post-LN uses `attn_ln`/`ffn_ln` after each residual;
/// pre-LN uses them before each block.
#[derive(Clone, Copy)]
struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_in: Linear,
    ffn_out: Linear,
    attn_ln: Norm,
    ffn_ln: Norm,
}

#[derive(Clone, Copy)]
struct Index {
    word: usize,
    pos: usize,
    typ: usize,
    emb_ln: Option<Norm>,
    final_ln: Option<Norm>,
    head_dense: Linear,
    head_ln: Norm,
    head_bias: usize,
    decoder: Option<usize>,
}

/// Activations of one layer saved for the backward pass (also the length predictor's layer).
struct LayerActs<B: Backend> {
    /// Pre-LN only: LN_attn(x) and its statistics.
    a_in: B::Buf,
    a_mean: B::Buf,
    a_rstd: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    ctx: B::Buf,
    lse: B::Buf,
    /// Attention output after the dense projection and dropout.
    attn: B::Buf,
    /// Post-LN: x + attn (LN1 input). Pre-LN: h1 = x + attn.
    s1: B::Buf,
    mean1: B::Buf,
    rstd1: B::Buf,
    /// Post-LN: LN1 output. Pre-LN: LN_ffn(h1).
    h1: B::Buf,
    f1: B::Buf,
    g: B::Buf,
    f2: B::Buf,
    /// Post-LN only: h1 + f2 (LN2 input) and its statistics.
    s2: B::Buf,
    mean2: B::Buf,
    rstd2: B::Buf,
}

/// Everything a forward pass over one batch shape keeps: reused across calls of the same shape.
struct Encoder<B: Backend> {
    batch: usize,
    seq: usize,
    /// Every layer's activations are kept (for a backward pass). Without, one set of layer
    /// buffers and two hidden-state buffers serve all layers in turn (a frozen forward).
    keep: bool,
    ids: B::IBuf,
    pos_ids: B::IBuf,
    key_mask: B::IBuf,
    /// Embedding sum (post-LN: LN input).
    emb: B::Buf,
    emb_mean: B::Buf,
    emb_rstd: B::Buf,
    /// `hs[l]` is the input of layer l; `hs[L]` the last layer's output. Without `keep`, two
    /// buffers taken in turn: layer l reads `hs[l % 2]` and writes `hs[(l + 1) % 2]`.
    hs: Vec<B::Buf>,
    layers: Vec<LayerActs<B>>,
    /// Pre-LN: the final encoder LayerNorm output and statistics.
    out: B::Buf,
    out_mean: B::Buf,
    out_rstd: B::Buf,
}

/// The head's activations on `rows` gathered rows.
struct Head<B: Backend> {
    rows: usize,
    idx: B::IBuf,
    x: B::Buf,
    d1: B::Buf,
    g1: B::Buf,
    z: B::Buf,
    mean: B::Buf,
    rstd: B::Buf,
    logits: B::Buf,
}

/// The model: its parameters, and the workspaces its passes reuse from call to call, kept in
/// separate structs so that a pass can read the one and write the other at once.
pub struct XlmR<B: Backend> {
    p: Params<B>,
    work: Workspace<B>,
}

/// The parameters, with the backend that holds them: the configuration, every tensor's name,
/// shape, value and gradient, and the index of each layer's tensors.
struct Params<B: Backend> {
    backend: B,
    cfg: ModelConfig,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    values: Vec<B::Buf>,
    grads: Vec<B::Buf>,
    /// Stored length of each parameter: its shape's product, except for the decoder weight and
    /// the head bias, whose vocabulary rows are padded with zeros up to `head_vocab` (see there).
    stored: Vec<usize>,
    ix: Index,
    layers: Vec<Layer>,
    /// Index of the length predictor's first tensor (its tensors come last), when the model has one.
    length: Option<usize>,
    /// The parameters training updates: the backbone's or the length predictor's (`Part`). Only
    /// they have gradients: `grads[j]` is parameter `trainable.start + j`'s.
    trainable: std::ops::Range<usize>,
    /// How `save` writes the weights (the shard size).
    save_opts: SaveOpts,
}

/// Buffers a pass keeps for the next one of the same shape.
struct Workspace<B: Backend> {
    /// The encoder's activations (kept for the backward pass).
    enc: Option<Encoder<B>>,
    /// The sampling step's own workspace (see `pick`).
    step: Option<pick::StepPlan<B>>,
    /// The prefix cache of the sampling steps that use one (see `cache`).
    cache: Option<cache::PrefixCache<B>>,
    /// The length predictor's activations (see `length`).
    length: Option<length::Work<B>>,
}

/// Dropout stream ids: one per site and layer, so no two sites share a mask.
fn stream(layer: usize, site: u64) -> u64 {
    (layer as u64 + 1) * 16 + site
}
const S_EMB: u64 = 0;
const S_ATTN_PROBS: u64 = 1;
const S_ATTN_OUT: u64 = 2;
const S_FFN_OUT: u64 = 3;

impl<B: Backend> XlmR<B> {
    /// Runs the encoder over `batch`, keeping every activation for a backward pass.
    fn encode(&mut self, batch: &Batch, drop: Dropout) -> Result<()> {
        self.p.check_batch(batch)?;
        let enc = self.work.encoder(&self.p, batch, true)?;
        self.p.set_encoder_inputs(enc, batch)?;
        self.p.run_encoder(enc, drop)
    }

    /// Uploads the values of parameter `i` (its HF shape), zero-padded to its stored length, in
    /// the given storage.
    pub fn upload_param(&self, i: usize, data: &[f32], storage: ParamStorage) -> Result<B::Buf> {
        self.p.upload_param(i, data, storage)
    }

    /// Ids the model may emit: XL/XXL carry 250880 rows for a 250002-id tokenizer, and the rows
    /// past the tokenizer must never be chosen (docs/method.md §1.1).
    pub fn valid_vocab(&self) -> usize {
        self.p.valid_vocab()
    }

    /// Columns of the LM head's logits: the vocabulary rounded up to the backend's
    /// `vocab_align`. The extra decoder rows are zero and their logits never take part.
    pub fn head_vocab(&self) -> usize {
        self.p.head_vocab()
    }

    /// Stored length of parameter `i` (its gradient and optimizer moments have the same).
    pub fn param_len(&self, i: usize) -> usize {
        self.p.stored[i]
    }

    /// Downloads a buffer of parameter `i` (value, gradient or moment) without its padding.
    pub fn download_param(&self, i: usize, buf: &B::Buf) -> Result<Vec<f32>> {
        let mut d = self.p.backend.download(buf)?;
        d.truncate(self.p.shapes[i].iter().product());
        Ok(d)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.p.cfg
    }

    /// Sets the training dropout of hidden states and attention probabilities (config.json's
    /// `hidden_dropout_prob` and `attention_probs_dropout_prob`).
    pub fn set_dropout(&mut self, p: f32) {
        self.p.cfg.hidden_dropout = p;
        self.p.cfg.attention_dropout = p;
    }

    pub fn backend(&self) -> &B {
        &self.p.backend
    }

    /// Parameter names and shapes, in HF `named_parameters()` order.
    pub fn param_names(&self) -> &[String] {
        &self.p.names
    }

    pub fn param_shapes(&self) -> &[Vec<usize>] {
        &self.p.shapes
    }

    pub fn param_count(&self) -> usize {
        self.p.shapes.iter().map(|s| s.iter().product::<usize>()).sum()
    }

    /// Calls `f(backend, i, value, grad)` for every trainable parameter i (after a `loss_and_grad`).
    pub fn for_each_param_mut(&mut self, mut f: impl FnMut(&B, usize, &mut B::Buf, &mut B::Buf) -> Result<()>) -> Result<()> {
        self.ensure_grads()?;
        self.forget_recording()?;
        let start = self.p.trainable.start;
        for (j, (v, g)) in self.p.values[self.p.trainable.clone()].iter_mut().zip(self.p.grads.iter_mut()).enumerate() {
            f(&self.p.backend, start + j, v, g)?;
        }
        Ok(())
    }

    pub fn values(&self) -> &[B::Buf] {
        &self.p.values
    }

    /// The gradients of the trainable parameters: `grads()[j]` is parameter `trainable().start + j`'s.
    pub fn grads(&self) -> &[B::Buf] {
        &self.p.grads
    }

    /// Calls `f` with the backend and the trainable part's values and gradients, to change them
    /// in place (data-parallel training sums the gradients over the ranks; a sharded optimizer
    /// writes the values it gathers).
    pub fn with_trainable_mut<R>(&mut self, f: impl FnOnce(&B, &mut [B::Buf], &mut [B::Buf]) -> Result<R>) -> Result<R> {
        self.ensure_grads()?;
        self.forget_recording()?;
        let range = self.p.trainable.clone();
        f(&self.p.backend, &mut self.p.values[range], &mut self.p.grads)
    }

    /// Replaces the value of parameter `i` (used when restoring checkpoints).
    pub fn set_value(&mut self, i: usize, data: &[f32]) -> Result<()> {
        self.forget_recording()?;
        self.p.values[i] = self.upload_param(i, data, ParamStorage::Compact)?;
        Ok(())
    }

    pub fn zero_grads(&mut self) -> Result<()> {
        for g in &mut self.p.grads {
            self.p.backend.fill_zero(g)?;
        }
        Ok(())
    }

    fn ensure_grads(&mut self) -> Result<()> {
        if self.p.grads.is_empty() {
            for &n in &self.p.stored[self.p.trainable.clone()] {
                self.p.grads.push(self.p.backend.zeros(n)?);
            }
        }
        Ok(())
    }

    /// MLM head on the flat positions `rows` of the last `encode`: dense → GELU → LN → decoder + bias.
    fn head_forward(&self, rows: &[i32]) -> Result<Head<B>> {
        let enc = self.work.enc.as_ref().context("no encoder pass")?;
        check_rows(rows, enc.batch * enc.seq)?;
        let mut hd = self.p.alloc_head(rows.len())?;
        self.p.backend.write_i32(&mut hd.idx, rows)?;
        self.p.run_head(enc, &mut hd)?;
        Ok(hd)
    }

    /// Logits (`[rows.len(), vocab_size]`, row-major) at the flat positions `rows` of `batch`.
    pub fn logits(&mut self, batch: &Batch, rows: &[i32]) -> Result<Vec<f32>> {
        self.encode(batch, Dropout::off())?;
        let hd = self.head_forward(rows)?;
        let all = self.p.backend.download(&hd.logits)?;
        let (v, hv) = (self.p.cfg.vocab_size, self.head_vocab());
        Ok(if v == hv { all } else { all.chunks(hv).flat_map(|row| &row[..v]).copied().collect() })
    }
}

/// How `XlmR::upload_param` stores a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamStorage {
    /// The backend's compact storage (`Backend::upload`: bf16 on the GPU), for inference.
    Compact,
    /// Full precision (`Backend::upload_f32`), e.g. optimizer moments.
    F32,
    /// A trained parameter (`Backend::upload_master`).
    Master,
}

/// Rejects flat positions outside a batch of `n`.
fn check_rows(rows: &[i32], n: usize) -> Result<()> {
    if let Some(&bad) = rows.iter().find(|&&x| x < 0 || x as usize >= n) {
        bail!("row {bad} is outside the batch of {n} positions");
    }
    Ok(())
}

impl<B: Backend> Params<B> {
    fn alloc_encoder(&self, batch: &Batch, keep: bool) -> Result<Encoder<B>> {
        let be = &self.backend;
        let (n, h, f) = (batch.tokens(), self.cfg.hidden, self.cfg.intermediate);
        let nh = self.cfg.heads;
        let pre = self.cfg.arch == Arch::PreLn;
        let z = |k: usize| be.zeros(k);
        let n_sets = if keep { self.cfg.layers } else { 1 };
        let mut layers = Vec::with_capacity(n_sets);
        for _ in 0..n_sets {
            layers.push(LayerActs {
                a_in: z(if pre { n * h } else { 0 })?,
                a_mean: z(if pre { n } else { 0 })?,
                a_rstd: z(if pre { n } else { 0 })?,
                q: z(n * h)?,
                k: z(n * h)?,
                v: z(n * h)?,
                ctx: z(n * h)?,
                lse: z(batch.batch * nh * batch.seq)?,
                attn: z(n * h)?,
                s1: z(n * h)?,
                mean1: z(n)?,
                rstd1: z(n)?,
                h1: z(n * h)?,
                f1: z(n * f)?,
                g: z(n * f)?,
                f2: z(n * h)?,
                s2: z(if pre { 0 } else { n * h })?,
                mean2: z(if pre { 0 } else { n })?,
                rstd2: z(if pre { 0 } else { n })?,
            });
        }
        Ok(Encoder {
            batch: batch.batch,
            seq: batch.seq,
            keep,
            ids: be.upload_i32(&vec![0; n])?,
            pos_ids: be.upload_i32(&vec![0; n])?,
            key_mask: be.upload_i32(&vec![0; n])?,
            emb: z(n * h)?,
            emb_mean: z(n)?,
            emb_rstd: z(n)?,
            hs: (0..if keep { self.cfg.layers + 1 } else { 2 }).map(|_| z(n * h)).collect::<Result<_>>()?,
            layers,
            out: z(if pre { n * h } else { 0 })?,
            out_mean: z(if pre { n } else { 0 })?,
            out_rstd: z(if pre { n } else { 0 })?,
        })
    }

    /// Writes the token ids of `batch` (checked, of the workspace's shape), their padding-aware
    /// positions (HF create_position_ids_from_input_ids) and the key mask into `enc`, in place.
    fn set_encoder_inputs(&self, enc: &mut Encoder<B>, batch: &Batch) -> Result<()> {
        let be = &self.backend;
        let (pos_ids, key_mask) = self.positions(batch);
        be.write_i32(&mut enc.ids, &batch.ids)?;
        be.write_i32(&mut enc.pos_ids, &pos_ids)?;
        be.write_i32(&mut enc.key_mask, &key_mask)
    }

    /// Every token's padding-aware position (HF create_position_ids_from_input_ids) and whether
    /// it is a real token (1) or padding (0), the attention's key mask.
    fn positions(&self, batch: &Batch) -> (Vec<i32>, Vec<i32>) {
        let pad = self.cfg.pad_id;
        let n = batch.tokens();
        let mut pos_ids = Vec::with_capacity(n);
        let mut key_mask = Vec::with_capacity(n);
        for row in batch.ids.chunks(batch.seq) {
            let mut c = 0;
            for &t in row {
                let real = t != pad;
                c += real as i32;
                pos_ids.push(if real { c + pad } else { pad });
                key_mask.push(real as i32);
            }
        }
        (pos_ids, key_mask)
    }

    /// The encoder over the inputs in `enc`: launches only (no allocation once every buffer has
    /// been written once, no host transfer), so a sampling step can be recorded.
    fn run_encoder(&self, enc: &mut Encoder<B>, drop: Dropout) -> Result<()> {
        self.run_encoder_on(enc, drop, None)
    }

    /// `run_encoder`, or with `cache` the encoder over some rows of a batch only (`enc` then holds
    /// those rows as one sequence, and attention reads the other rows' keys and values from the
    /// cache: see cache.rs).
    fn run_encoder_on(&self, enc: &mut Encoder<B>, drop: Dropout, mut cache: Option<&mut cache::KvCache<B>>) -> Result<()> {
        let _range = nvtx::range!("encoder");
        let be = &self.backend;
        let cfg = &self.cfg;
        let (n, h, f) = (enc.batch * enc.seq, cfg.hidden, cfg.intermediate);
        let eps = cfg.layer_norm_eps;
        let v = &self.values;
        let hidden_drop = Dropout { p: if drop.active() { cfg.hidden_dropout } else { 0.0 }, seed: drop.seed };
        let attn_drop = Dropout { p: if drop.active() { cfg.attention_dropout } else { 0.0 }, seed: drop.seed };

        be.embed_fwd(
            &enc.ids,
            &enc.pos_ids,
            EmbedTables { word: &v[self.ix.word], pos: &v[self.ix.pos], typ: &v[self.ix.typ] },
            &mut enc.emb,
            EmbedShape { tokens: n, hidden: h },
        )?;
        match self.ix.emb_ln {
            Some(ln) => be.add_layernorm_fwd(
                &enc.emb,
                None,
                LnParams { gamma: &v[ln.g], beta: &v[ln.b], eps },
                &mut enc.hs[0],
                LnStats { mean: &mut enc.emb_mean, rstd: &mut enc.emb_rstd },
                RowsShape { rows: n, cols: h },
            )?,
            None => be.copy(&enc.emb, &mut enc.hs[0])?,
        }
        be.dropout_fwd(&mut enc.hs[0], hidden_drop, S_EMB)?;

        let shape = AttnShape { batch: enc.batch, seq: enc.seq, heads: cfg.heads, head_dim: cfg.head_dim() };
        let sets = enc.layers.len();
        for (li, layer) in self.layers.iter().enumerate() {
            let _r = nvtx::range!("layer {}", li);
            let a = &mut enc.layers[li % sets];
            let (x, out) = in_and_out(&mut enc.hs, li);
            let attn_in: &B::Buf = if cfg.arch == Arch::PreLn {
                be.add_layernorm_fwd(
                    x,
                    None,
                    LnParams { gamma: &v[layer.attn_ln.g], beta: &v[layer.attn_ln.b], eps },
                    &mut a.a_in,
                    LnStats { mean: &mut a.a_mean, rstd: &mut a.a_rstd },
                    RowsShape { rows: n, cols: h },
                )?;
                &a.a_in
            } else {
                x
            };
            be.linear_fwd(attn_in, &v[layer.q.w], Some(&v[layer.q.b]), &mut a.q, Gemm { m: n, n: h, k: h })?;
            be.linear_fwd(attn_in, &v[layer.k.w], Some(&v[layer.k.b]), &mut a.k, Gemm { m: n, n: h, k: h })?;
            be.linear_fwd(attn_in, &v[layer.v.w], Some(&v[layer.v.b]), &mut a.v, Gemm { m: n, n: h, k: h })?;
            match cache.as_deref_mut() {
                None => be.attention_fwd(
                    Qkv { q: &a.q, k: &a.k, v: &a.v },
                    &enc.key_mask,
                    &mut a.ctx,
                    &mut a.lse,
                    AttnCall { shape, drop: attn_drop, stream: stream(li, S_ATTN_PROBS) },
                )?,
                Some(c) => c.attend(be, li, Qkv { q: &a.q, k: &a.k, v: &a.v }, &mut a.ctx)?,
            }
            be.linear_fwd(&a.ctx, &v[layer.o.w], Some(&v[layer.o.b]), &mut a.attn, Gemm { m: n, n: h, k: h })?;
            be.dropout_fwd(&mut a.attn, hidden_drop, stream(li, S_ATTN_OUT))?;
            match cfg.arch {
                Arch::PostLn => {
                    be.add_layernorm_fwd(
                        &a.attn,
                        Some(Residual { residual: x, sum: &mut a.s1 }),
                        LnParams { gamma: &v[layer.attn_ln.g], beta: &v[layer.attn_ln.b], eps },
                        &mut a.h1,
                        LnStats { mean: &mut a.mean1, rstd: &mut a.rstd1 },
                        RowsShape { rows: n, cols: h },
                    )?;
                    be.linear_fwd(&a.h1, &v[layer.ffn_in.w], Some(&v[layer.ffn_in.b]), &mut a.f1, Gemm { m: n, n: f, k: h })?;
                    be.gelu_fwd(&a.f1, &mut a.g)?;
                    be.linear_fwd(&a.g, &v[layer.ffn_out.w], Some(&v[layer.ffn_out.b]), &mut a.f2, Gemm { m: n, n: h, k: f })?;
                    be.dropout_fwd(&mut a.f2, hidden_drop, stream(li, S_FFN_OUT))?;
                    be.add_layernorm_fwd(
                        &a.f2,
                        Some(Residual { residual: &a.h1, sum: &mut a.s2 }),
                        LnParams { gamma: &v[layer.ffn_ln.g], beta: &v[layer.ffn_ln.b], eps },
                        out,
                        LnStats { mean: &mut a.mean2, rstd: &mut a.rstd2 },
                        RowsShape { rows: n, cols: h },
                    )?;
                }
                Arch::PreLn => {
                    be.copy(x, &mut a.s1)?;
                    be.add_assign(&mut a.s1, &a.attn)?;
                    be.add_layernorm_fwd(
                        &a.s1,
                        None,
                        LnParams { gamma: &v[layer.ffn_ln.g], beta: &v[layer.ffn_ln.b], eps },
                        &mut a.h1,
                        LnStats { mean: &mut a.mean1, rstd: &mut a.rstd1 },
                        RowsShape { rows: n, cols: h },
                    )?;
                    be.linear_fwd(&a.h1, &v[layer.ffn_in.w], Some(&v[layer.ffn_in.b]), &mut a.f1, Gemm { m: n, n: f, k: h })?;
                    be.gelu_fwd(&a.f1, &mut a.g)?;
                    // XL/XXL have no dropout after the FFN output projection.
                    be.linear_fwd(&a.g, &v[layer.ffn_out.w], Some(&v[layer.ffn_out.b]), &mut a.f2, Gemm { m: n, n: h, k: f })?;
                    be.copy(&a.s1, out)?;
                    be.add_assign(out, &a.f2)?;
                }
            }
        }
        if let Some(ln) = self.ix.final_ln {
            let last = &enc.hs[cfg.layers % enc.hs.len()];
            be.add_layernorm_fwd(
                last,
                None,
                LnParams { gamma: &v[ln.g], beta: &v[ln.b], eps },
                &mut enc.out,
                LnStats { mean: &mut enc.out_mean, rstd: &mut enc.out_rstd },
                RowsShape { rows: n, cols: h },
            )?;
        }
        Ok(())
    }

    /// The encoder's final hidden states (after the final LN for pre-LN models).
    fn encoder_output<'a>(&self, enc: &'a Encoder<B>) -> &'a B::Buf {
        if self.ix.final_ln.is_some() {
            &enc.out
        } else {
            &enc.hs[self.cfg.layers % enc.hs.len()]
        }
    }

    /// The head on the rows in `hd.idx` (launches only, as `run_encoder`).
    fn run_head(&self, enc: &Encoder<B>, hd: &mut Head<B>) -> Result<()> {
        let _range = nvtx::range!("lm_head");
        let be = &self.backend;
        let (r, h, vsz) = (hd.rows, self.cfg.hidden, self.head_vocab());
        let v = &self.values;
        be.gather_rows(self.encoder_output(enc), &hd.idx, &mut hd.x, r, h)?;
        let dn = self.ix.head_dense;
        be.linear_fwd(&hd.x, &v[dn.w], Some(&v[dn.b]), &mut hd.d1, Gemm { m: r, n: h, k: h })?;
        be.gelu_fwd(&hd.d1, &mut hd.g1)?;
        let ln = self.ix.head_ln;
        be.add_layernorm_fwd(
            &hd.g1,
            None,
            LnParams { gamma: &v[ln.g], beta: &v[ln.b], eps: self.cfg.layer_norm_eps },
            &mut hd.z,
            LnStats { mean: &mut hd.mean, rstd: &mut hd.rstd },
            RowsShape { rows: r, cols: h },
        )?;
        be.linear_fwd(&hd.z, &v[self.decoder()], Some(&v[self.ix.head_bias]), &mut hd.logits, Gemm { m: r, n: vsz, k: h })
    }

    fn alloc_head(&self, r: usize) -> Result<Head<B>> {
        self.alloc_head_on(self.backend.upload_i32(&vec![0; r])?, r)
    }

    /// A head workspace for `r` rows whose positions are the first `r` entries of `idx`.
    fn alloc_head_on(&self, idx: B::IBuf, r: usize) -> Result<Head<B>> {
        let be = &self.backend;
        let h = self.cfg.hidden;
        Ok(Head {
            rows: r,
            idx,
            x: be.zeros(r * h)?,
            d1: be.zeros(r * h)?,
            g1: be.zeros(r * h)?,
            z: be.zeros(r * h)?,
            mean: be.zeros(r)?,
            rstd: be.zeros(r)?,
            logits: be.zeros(r * self.head_vocab())?,
        })
    }

    fn decoder(&self) -> usize {
        self.ix.decoder.unwrap_or(self.ix.word)
    }

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        if batch.ids.len() != batch.tokens() {
            bail!("batch: {} ids for {}×{}", batch.ids.len(), batch.batch, batch.seq);
        }
        if batch.seq > self.cfg.max_seq_len() {
            bail!("sequence of {} tokens is longer than the model's maximum of {}", batch.seq, self.cfg.max_seq_len());
        }
        if let Some(&bad) = batch.ids.iter().find(|&&t| t < 0 || t as usize >= self.cfg.vocab_size) {
            bail!("token id {bad} is outside the model's vocabulary of {}", self.cfg.vocab_size);
        }
        Ok(())
    }

    /// Columns of the LM head's logits: the vocabulary rounded up to the backend's
    /// `vocab_align`. The extra decoder rows are zero and their logits never take part.
    pub fn head_vocab(&self) -> usize {
        self.stored[self.ix.head_bias]
    }

    /// Ids the model may emit: XL/XXL carry 250880 rows for a 250002-id tokenizer, and the rows
    /// past the tokenizer must never be chosen (docs/method.md §1.1).
    pub fn valid_vocab(&self) -> usize {
        if self.cfg.vocab_size == 250880 {
            250002
        } else {
            self.cfg.vocab_size
        }
    }

    /// Uploads the values of parameter `i` (its HF shape), zero-padded to its stored length, in
    /// the given storage.
    pub fn upload_param(&self, i: usize, data: &[f32], storage: ParamStorage) -> Result<B::Buf> {
        let n: usize = self.shapes[i].iter().product();
        if data.len() != n {
            bail!("parameter `{}`: {} values given, expected {n}", self.names[i], data.len());
        }
        let padded;
        let data = if self.stored[i] == n {
            data
        } else {
            padded = [data, &vec![0.0; self.stored[i] - n]].concat();
            &padded
        };
        match storage {
            ParamStorage::Compact => self.backend.upload(data),
            ParamStorage::F32 => self.backend.upload_f32(data),
            ParamStorage::Master => self.backend.upload_master(data),
        }
    }
}

impl<B: Backend> Workspace<B> {
    /// The encoder workspace for `batch`'s shape: the kept one when the shape is unchanged (and
    /// it keeps every layer's activations if `keep` asks for that), otherwise a new one (the old
    /// one is freed first).
    fn encoder(&mut self, p: &Params<B>, batch: &Batch, keep: bool) -> Result<&mut Encoder<B>> {
        if !self.enc.as_ref().is_some_and(|e| e.batch == batch.batch && e.seq == batch.seq && (e.keep || !keep)) {
            self.enc = None;
            return Ok(self.enc.insert(p.alloc_encoder(batch, keep)?));
        }
        self.enc.as_mut().context("the encoder workspace vanished")
    }
}
