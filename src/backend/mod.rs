//! The `Backend` interface: every op the XLM-R model and the diffusion objective need.
//!
//! The model (`crate::model::xlmr`) is written once against this trait. Tensors are opaque, flat
//! buffers; shapes travel as arguments, llm.c style, so a backend is free to store them in any
//! precision (the CPU backend keeps f32; the CUDA backend keeps bf16 activations and weights with
//! f32 master copies). All matrices are row-major. Weights follow the PyTorch `nn.Linear` layout
//! `[out_features, in_features]`.
//!
//! Each op has one CPU implementation in `cpu/` (the reference) and, where a GPU build exists, a
//! CUDA twin in `cuda/` that is tested against it.

pub mod contract;
pub mod cpu;
pub mod cuda;

pub use crate::rdm::noise::NoiseSpec;
use anyhow::Result;

/// Dropout settings for one forward pass. `seed` and the per-call `stream` id select a counter-based
/// (Philox) random stream, so the backward pass regenerates exactly the same mask without storing it,
/// and the CPU and CUDA backends draw identical masks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
}

impl Dropout {
    pub fn off() -> Self {
        Dropout { p: 0.0, seed: 0 }
    }
    pub fn active(&self) -> bool {
        self.p > 0.0
    }
}

/// Shape of one attention call: `batch` sequences of `seq` tokens, `heads` heads of `head_dim`.
/// Q, K, V and the output are `[batch, seq, heads * head_dim]` (the natural output of the linear
/// projections, no transposes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}

// ---- the ops' argument groups -----------------------------------------------------------------
// Small structs instead of long argument lists: each groups what travels together, over the
// backend's buffer types (`[f32]`/`[i32]` in the CPU twins).

/// The dense layers' product `[m, k] · [n, k]ᵀ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// A linear layer's gradients: `dx` (overwritten, when wanted), `dw` and `db` (accumulated).
pub struct LinearGrads<'a, B: ?Sized> {
    pub dx: Option<&'a mut B>,
    pub dw: &'a mut B,
    pub db: Option<&'a mut B>,
}

/// `tokens` rows of `hidden` features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbedShape {
    pub tokens: usize,
    pub hidden: usize,
}

/// The word, position and token-type embedding tables.
pub struct EmbedTables<'a, B: ?Sized> {
    pub word: &'a B,
    pub pos: &'a B,
    pub typ: &'a B,
}

/// The gradients of the three embedding tables.
pub struct EmbedGrads<'a, B: ?Sized> {
    pub word: &'a mut B,
    pub pos: &'a mut B,
    pub typ: &'a mut B,
}

/// An elementwise activation other than GELU (which has its own ops): the length predictor's
/// ReLU and tanh (docs/method.md §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `max(x, 0)`; its backward reads the forward's input.
    Relu,
    /// `tanh(x)`; its backward reads the forward's output (`1 − y²`).
    Tanh,
}

/// `batch` sequences of `seq` rows of `cols` values, and which rows are real (`key_mask`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub batch: usize,
    pub seq: usize,
    pub cols: usize,
}

/// `rows` rows of `cols` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowsShape {
    pub rows: usize,
    pub cols: usize,
}

/// A LayerNorm's residual input and where the sum `x + residual` it normalises is saved.
pub struct Residual<'a, B: ?Sized> {
    pub residual: &'a B,
    pub sum: &'a mut B,
}

impl<'a, B: ?Sized> Residual<'a, B> {
    /// The residual and the sum buffer as the two options the kernels take.
    pub fn unzip(r: Option<Self>) -> (Option<&'a B>, Option<&'a mut B>) {
        match r {
            Some(Residual { residual, sum }) => (Some(residual), Some(sum)),
            None => (None, None),
        }
    }
}

/// A LayerNorm's parameters.
pub struct LnParams<'a, B: ?Sized> {
    pub gamma: &'a B,
    pub beta: &'a B,
    pub eps: f32,
}

/// The per-row statistics a LayerNorm forward saves.
pub struct LnStats<'a, B: ?Sized> {
    pub mean: &'a mut B,
    pub rstd: &'a mut B,
}

/// What a LayerNorm backward reads: the scale and the saved statistics.
pub struct LnSaved<'a, B: ?Sized> {
    pub gamma: &'a B,
    pub mean: &'a B,
    pub rstd: &'a B,
}

/// A LayerNorm backward's outputs: `dx` (overwritten, or added to with `accumulate`), and the
/// accumulated `dgamma`, `dbeta`.
pub struct LnGrads<'a, B: ?Sized> {
    pub dx: &'a mut B,
    pub accumulate: bool,
    pub dgamma: &'a mut B,
    pub dbeta: &'a mut B,
}

/// Attention's queries, keys and values.
pub struct Qkv<'a, B: ?Sized> {
    pub q: &'a B,
    pub k: &'a B,
    pub v: &'a B,
}

/// Their gradients (overwritten).
pub struct QkvGrads<'a, B: ?Sized> {
    pub dq: &'a mut B,
    pub dk: &'a mut B,
    pub dv: &'a mut B,
}

/// What the attention forward saved for the backward: its output and log-sum-exps.
pub struct AttnSaved<'a, B: ?Sized> {
    pub out: &'a B,
    pub lse: &'a B,
}

/// One attention call: its shape, and the dropout of its probabilities with the call's stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnCall {
    pub shape: AttnShape,
    pub drop: Dropout,
    pub stream: u64,
}

/// `rows` rows of `vocab` logits, of which the first `valid` are real ids (the rest padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VocabShape {
    pub rows: usize,
    pub vocab: usize,
    pub valid: usize,
}

/// A pick per row: its token and log-prob, and the value the step ranks (the log-prob itself,
/// or another confidence).
pub struct Picks<'a, F: ?Sized, I: ?Sized> {
    pub token: &'a I,
    pub logprob: &'a F,
    pub rank: &'a F,
}

/// Where `vocab_pick` writes its picks.
pub struct PicksMut<'a, F: ?Sized, I: ?Sized> {
    pub token: &'a mut I,
    pub logprob: &'a mut F,
}

/// The canvases of `reparam_step`: `n` `contract::CanvasMeta` records and this step's
/// `contract::StepParams` records, packed as i32.
pub struct CanvasInputs<'a, I: ?Sized> {
    pub meta: &'a I,
    pub n: usize,
    pub step: &'a I,
}

/// The canvases' slots, flat: tokens, the score at commit (−inf while masked), masked (0/1);
/// and per canvas the masked slots left in its step's window after the step.
pub struct CanvasState<'a, F: ?Sized, I: ?Sized> {
    pub tokens: &'a mut I,
    pub scores: &'a mut F,
    pub masked: &'a mut I,
    pub left: &'a mut I,
}

/// Where `q_sample` writes the masked slots: flat positions, clean ids and loss weights.
pub struct LossSlots<'a, F: ?Sized, I: ?Sized> {
    pub rows: &'a mut I,
    pub targets: &'a mut I,
    pub weights: &'a mut F,
}

/// Adam's moments.
pub struct Moments<'a, B: ?Sized> {
    pub m: &'a mut B,
    pub v: &'a mut B,
}

/// What changes between optimizer steps: the learning rate, the 1-based step (bias correction)
/// and gradient clipping's factor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub step: u64,
    pub grad_scale: f32,
}

/// Per-row results of a pass over the vocabulary, used by the sampler.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowStats {
    /// Chosen token per row (argmax, or the Gumbel-max sample when sampling).
    pub token: Vec<i32>,
    /// log-softmax of the chosen token (at the given temperature).
    pub logprob: Vec<f32>,
    /// The confidence asked for (`PickOpts::confidence`), else empty.
    pub confidence: Vec<f32>,
}

/// Packs per-row Gumbel noise streams for `vocab_pick`: row r draws number c (the vocabulary id)
/// of Philox stream `rows[r] = (seed, stream)`. Seeds become two i32 per row (high, low bits).
pub fn pack_gumbel(rows: &[(u64, u32)]) -> (Vec<i32>, Vec<i32>) {
    let seeds = rows.iter().flat_map(|&(s, _)| pack_seed(s)).collect();
    (seeds, rows.iter().map(|&(_, st)| st as i32).collect())
}

/// A 64-bit seed or stream id as the kernels take it from an i32 buffer: high, low 32 bits.
pub fn pack_seed(s: u64) -> [i32; 2] {
    [(s >> 32) as u32 as i32, s as u32 as i32]
}

/// Row r's seed from the packed form of `pack_gumbel` (or of `pack_seed` at r = 0).
pub fn unpack_seed(seeds: &[i32], r: usize) -> u64 {
    ((seeds[2 * r] as u32 as u64) << 32) | seeds[2 * r + 1] as u32 as u64
}

/// `'static` (no borrowed backends or buffers): the data-parallel layer recognises the CUDA
/// backend and its buffers by type (`crate::dist::collective`).
pub trait Backend: 'static {
    /// Float storage (activations, parameters, gradients).
    type Buf: 'static;
    /// Integer storage (token ids, positions, masks, row indices).
    type IBuf;

    fn name(&self) -> String;

    /// The LM head's vocabulary dimension is padded to a multiple of this (the model pads the
    /// decoder rows with zeros): GEMMs whose leading dimension is not a multiple of 8 bf16
    /// values run ~2.8× slower in cuBLAS (docs/gpu.md §5).
    fn vocab_align(&self) -> usize {
        1
    }

    // ---- memory ------------------------------------------------------------------------------
    /// A zero-filled buffer of `n` floats.
    fn zeros(&self, n: usize) -> Result<Self::Buf>;
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// Uploads values that must keep full f32 precision: the master weights of a model being
    /// trained and the optimizer's moments (so a resumed run continues exactly). Backends that
    /// store bf16 keep an f32 copy; the default is `upload`.
    fn upload_f32(&self, data: &[f32]) -> Result<Self::Buf> {
        self.upload(data)
    }
    /// A parameter an optimizer will update: kept at full precision as `upload_f32` keeps it, and
    /// ready for forward ops (on the GPU its bf16 copy is made now, not converted for every op
    /// until the first update).
    fn upload_master(&self, data: &[f32]) -> Result<Self::Buf> {
        self.upload_f32(data)
    }
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// Waits until every op issued so far has finished (for timing; a no-op on synchronous
    /// backends).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn upload_i32(&self, data: &[i32]) -> Result<Self::IBuf>;
    /// Overwrites a buffer in place with as many values as it holds, kept at full precision as
    /// `upload_f32` keeps them (so a recorded step sees the new values).
    fn write_f32(&self, dst: &mut Self::Buf, data: &[f32]) -> Result<()>;
    /// Overwrites an integer buffer with as many values as it holds, without allocating (so a
    /// recorded step can be replayed on new inputs).
    fn write_i32(&self, dst: &mut Self::IBuf, data: &[i32]) -> Result<()>;
    /// The values of an integer buffer, including ones a kernel wrote (`vocab_pick`'s tokens).
    fn read_i32(&self, src: &Self::IBuf) -> Result<Vec<i32>>;
    fn len(&self, buf: &Self::Buf) -> usize;
    fn fill_zero(&self, buf: &mut Self::Buf) -> Result<()>;
    /// `dst = src` (same length).
    fn copy(&self, src: &Self::Buf, dst: &mut Self::Buf) -> Result<()>;
    /// `dst += src` (same length).
    fn add_assign(&self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<()>;

    // ---- dense layers -------------------------------------------------------------------------
    /// `y[m,n] = x[m,k] · w[n,k]ᵀ (+ bias[n])`.
    fn linear_fwd(&self, x: &Self::Buf, w: &Self::Buf, bias: Option<&Self::Buf>, y: &mut Self::Buf, dims: Gemm) -> Result<()>;

    /// Backward of `linear_fwd`: `dx = dy · w` (overwrites `dx` when given), `dw += dyᵀ · x`,
    /// `db += Σ_rows dy`. Parameter gradients accumulate so micro-batches can be summed.
    fn linear_bwd(&self, x: &Self::Buf, w: &Self::Buf, dy: &Self::Buf, grads: LinearGrads<'_, Self::Buf>, dims: Gemm) -> Result<()>;

    // ---- embeddings ---------------------------------------------------------------------------
    /// `out[i] = word[ids[i]] + pos[pos_ids[i]] + typ[0]`, rows of `hidden`.
    fn embed_fwd(
        &self,
        ids: &Self::IBuf,
        pos_ids: &Self::IBuf,
        tables: EmbedTables<'_, Self::Buf>,
        out: &mut Self::Buf,
        shape: EmbedShape,
    ) -> Result<()>;

    /// Scatter-add of `dout` into the three embedding tables' gradients. Like `nn.Embedding`
    /// with `padding_idx`, rows of the word and position tables at `padding_idx` get no gradient.
    fn embed_bwd(
        &self,
        ids: &Self::IBuf,
        pos_ids: &Self::IBuf,
        dout: &Self::Buf,
        grads: EmbedGrads<'_, Self::Buf>,
        shape: EmbedShape,
        padding_idx: i32,
    ) -> Result<()>;

    // ---- elementwise --------------------------------------------------------------------------
    /// In-place inverted dropout with the mask of (`drop.seed`, `stream`); a no-op when off.
    fn dropout_fwd(&self, x: &mut Self::Buf, drop: Dropout, stream: u64) -> Result<()>;
    /// Applies the same mask (and scale) to a gradient, in place.
    fn dropout_bwd(&self, dx: &mut Self::Buf, drop: Dropout, stream: u64) -> Result<()>;
    /// Exact-erf GELU: `y = gelu(x)`.
    fn gelu_fwd(&self, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// `dx = dy · gelu'(x)` (overwrites dx).
    fn gelu_bwd(&self, x: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;

    /// `y = act(x)` elementwise (same length).
    fn activation_fwd(&self, act: Activation, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// `dx = dy · act'(·)` (overwrites dx), from `saved`: the forward's input for ReLU, its output
    /// for tanh (see `Activation`).
    fn activation_bwd(&self, act: Activation, saved: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;

    // ---- pooling ------------------------------------------------------------------------------
    /// Mean over the real rows of each sequence: `out[b] = Σ_{s: key_mask[b·seq+s] ≠ 0} x[b, s] / count_b`
    /// (`x` is `[batch, seq, cols]`, `out` `[batch, cols]`; a sequence with no real row gives zeros).
    fn mean_pool_fwd(&self, x: &Self::Buf, key_mask: &Self::IBuf, out: &mut Self::Buf, shape: PoolShape) -> Result<()>;
    /// Backward of `mean_pool_fwd`: `dx[b, s] = dout[b] / count_b` at real rows, 0 at the others
    /// (overwrites dx).
    fn mean_pool_bwd(&self, dout: &Self::Buf, key_mask: &Self::IBuf, dx: &mut Self::Buf, shape: PoolShape) -> Result<()>;

    // ---- layer norm ---------------------------------------------------------------------------
    /// Fused residual add + LayerNorm over rows of `cols`:
    /// `sum = x + residual` (or `x`), `out = LN(sum)·gamma + beta`.
    /// `sum` (when `residual` is given), `mean` and `rstd` are saved for the backward pass.
    fn add_layernorm_fwd(
        &self,
        x: &Self::Buf,
        residual: Option<Residual<'_, Self::Buf>>,
        params: LnParams<'_, Self::Buf>,
        out: &mut Self::Buf,
        stats: LnStats<'_, Self::Buf>,
        shape: RowsShape,
    ) -> Result<()>;

    /// Backward of LayerNorm given its input `x` (the residual sum) and saved statistics:
    /// `dx = ∂/∂x` (overwrites, or adds to `dx` when `accumulate`), `dgamma += …`, `dbeta += …`.
    fn layernorm_bwd(
        &self,
        x: &Self::Buf,
        dout: &Self::Buf,
        saved: LnSaved<'_, Self::Buf>,
        grads: LnGrads<'_, Self::Buf>,
        shape: RowsShape,
    ) -> Result<()>;

    // ---- attention ----------------------------------------------------------------------------
    /// Bidirectional attention with a key-padding mask (`key_mask[b*seq + j] != 0` = real key).
    /// Writes `out` and the per-(batch, head, query) log-sum-exp of the scaled scores, `lse`
    /// (`[batch, heads, seq]`), which the backward pass uses to recompute probabilities.
    /// Attention-probability dropout uses stream `stream`.
    fn attention_fwd(
        &self,
        qkv: Qkv<'_, Self::Buf>,
        key_mask: &Self::IBuf,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        call: AttnCall,
    ) -> Result<()>;

    /// Backward of `attention_fwd`; overwrites `dq`, `dk`, `dv`.
    fn attention_bwd(
        &self,
        qkv: Qkv<'_, Self::Buf>,
        key_mask: &Self::IBuf,
        saved: AttnSaved<'_, Self::Buf>,
        dout: &Self::Buf,
        grads: QkvGrads<'_, Self::Buf>,
        call: AttnCall,
    ) -> Result<()>;

    // ---- rows ---------------------------------------------------------------------------------
    /// `out[r] = x[rows[r]]` for rows of `cols`.
    fn gather_rows(&self, x: &Self::Buf, rows: &Self::IBuf, out: &mut Self::Buf, n_rows: usize, cols: usize) -> Result<()>;
    /// `dx[rows[r]] += dout[r]` (rows are distinct).
    fn scatter_add_rows(&self, dout: &Self::Buf, rows: &Self::IBuf, dx: &mut Self::Buf, n_rows: usize, cols: usize) -> Result<()>;
    /// `out[rows[r]] = x[r]` (rows are distinct); the other rows of `out` keep their values.
    fn scatter_rows(&self, x: &Self::Buf, rows: &Self::IBuf, out: &mut Self::Buf, n_rows: usize, cols: usize) -> Result<()>;

    // ---- the training noise ---------------------------------------------------------------------
    /// The RDM forward noise of one step (docs/method.md §3) on the doubled clean batch `ids`
    /// (`[2·src_len.len(), seq]`; rows b and B+b hold example b, whose source is `src_len[b]`
    /// tokens), in place: draws the coupled timesteps and nested masks from `spec.key` (counter-based
    /// Philox, so every backend draws the same ones; `rdm::noise::q_sample_flat` is the
    /// reference), writes `<mask>` into the masked slots and their flat positions, clean ids and
    /// weights, in row-major order, into the first entries of `rows`, `targets` and `weights`
    /// (each at least `ids`' length). Returns how many slots were masked.
    fn q_sample(
        &self,
        ids: &mut Self::IBuf,
        seq: usize,
        src_len: &[i32],
        spec: &NoiseSpec,
        out: LossSlots<'_, Self::Buf, Self::IBuf>,
    ) -> Result<usize>;

    // ---- vocabulary ---------------------------------------------------------------------------
    /// Weighted softmax cross-entropy over `rows` rows of `vocab` logits, only the first
    /// `valid_vocab` columns taking part (the rest count as -inf). Returns per-row
    /// `CE(row) = logsumexp - logit[target]` (optionally label-smoothed) and overwrites `logits`
    /// with `d(Σ_r weight_r · CE_r)/d logits`.
    fn cross_entropy_fwd_bwd(
        &self,
        logits: &mut Self::Buf,
        targets: &Self::IBuf,
        weights: &[f32],
        shape: VocabShape,
        label_smoothing: f32,
    ) -> Result<Vec<f32>>;

    /// Per row of `vocab` logits, with the `forbid` ids and columns past `valid_vocab` excluded:
    /// picks the argmax, or, with `gumbel` (the packed `(seeds, streams)` of `pack_gumbel`), a
    /// sample from `softmax(logits / temperature)` by Gumbel-max. Writes the chosen id to `token`
    /// and its log-softmax at temperature 1, the confidence the RDM sampler ranks (docs/method.md §4.3),
    /// to `logprob`. Everything stays on the device (no host synchronisation).
    fn vocab_pick(
        &self,
        logits: &Self::Buf,
        shape: VocabShape,
        forbid: &Self::IBuf,
        temperature: f32,
        gumbel: Option<(&Self::IBuf, &Self::IBuf)>,
        out: PicksMut<'_, Self::Buf, Self::IBuf>,
    ) -> Result<()>;

    /// Per row, with the `forbid` ids and columns past `valid` excluded, a confidence of
    /// p = softmax(logits) other than the pick's log-prob (`ConfidenceKind`), into `out`.
    fn vocab_confidence(
        &self,
        logits: &Self::Buf,
        shape: VocabShape,
        forbid: &Self::IBuf,
        kind: ConfidenceKind,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Unsupervised classifier-free guidance in place: `logits` holds `2·shape.rows` rows, the
    /// conditional ones first and then the same slots with the prompt masked; the first
    /// `shape.rows` rows become `uncond + (scale + 1)·(cond − uncond)`.
    fn cfg_combine(&self, logits: &mut Self::Buf, shape: VocabShape, scale: f32) -> Result<()>;

    /// One decoding step on `n_canvases` canvases whose slots live in the flat arrays `tokens`,
    /// `scores` (log-prob at commit, −inf while masked) and `masked` (0/1), in place, on each
    /// canvas's window of this step: the reparameterized top-k (rdm::remask's ranking,
    /// `lowest_set` and `reparam_update`) or the threshold rule (`threshold_commits`). Every slot
    /// token is also written to `ids`, the next forward's input, and the masked slots left in the
    /// window to `left`.
    /// - `canvases`: `contract::CanvasMeta` per canvas: its first slot, its slot count n, and the
    ///   flat position in `ids` of its slot 0;
    /// - `step`: `contract::StepParams` per canvas for this step: the window, the mode, k, the
    ///   ranking-noise stream and scale (unused without `rule.noise`) and the threshold's cut;
    /// - `picks`: this step's picks at every slot, in slot order, and the values ranked.
    fn reparam_step(
        &self,
        canvases: CanvasInputs<'_, Self::IBuf>,
        picks: Picks<'_, Self::Buf, Self::IBuf>,
        state: CanvasState<'_, Self::Buf, Self::IBuf>,
        ids: &mut Self::IBuf,
        rule: ReparamRule,
    ) -> Result<()>;

    // ---- recorded steps (CUDA graphs) -----------------------------------------------------------
    /// Starts recording the ops issued from now on instead of running them. Returns false, and
    /// changes nothing, when the backend cannot record; the caller then runs the ops directly.
    /// Recorded ops must not allocate, copy from or to the host, or synchronise.
    fn begin_capture(&self) -> Result<bool> {
        Ok(false)
    }
    /// Ends a recording begun by `begin_capture` and returns its id for `replay`.
    fn end_capture(&self) -> Result<usize> {
        anyhow::bail!("{} cannot record steps", self.name())
    }
    /// Runs a recorded step again, on whatever its buffers now hold.
    fn replay(&self, _graph: usize) -> Result<()> {
        anyhow::bail!("{} cannot replay recorded steps", self.name())
    }
    /// Frees a recording.
    fn release(&self, _graph: usize) -> Result<()> {
        Ok(())
    }

    // ---- optimizer ----------------------------------------------------------------------------
    /// Σ x² over a buffer (for the global gradient norm).
    fn sum_squares(&self, x: &Self::Buf) -> Result<f64>;
    /// Σ x² over several buffers together. A GPU backend overrides it to wait for the device once
    /// rather than once per buffer (a model has a few hundred parameter tensors).
    fn sum_squares_all(&self, xs: &[&Self::Buf]) -> Result<f64> {
        xs.iter().map(|x| self.sum_squares(x)).sum()
    }
    /// One decoupled-weight-decay Adam update of `param` given `grad · grad_scale` and moments
    /// `m`, `v` (PyTorch `AdamW` semantics; `step` is 1-based, for bias correction). The scale is
    /// gradient clipping's factor, applied as the gradient is read rather than in a pass of its own.
    fn adamw(&self, param: &mut Self::Buf, grad: &Self::Buf, moments: Moments<'_, Self::Buf>, hp: AdamW, at: AdamWStep) -> Result<()>;
}

/// A slot's confidence besides the log-prob of its pick (`vocab_confidence`); the value is the
/// kernel's `kind` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfidenceKind {
    /// p(top1) − p(top2).
    Margin = 1,
    /// −H(p) = Σ p·x − logsumexp(x).
    Entropy = 2,
}

/// The fixed part of `reparam_step`: `Cond` re-masking, ranking noise on and its seed, `<mask>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReparamRule {
    pub cond: bool,
    pub noise: bool,
    pub seed: u64,
    pub mask: i32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    /// The paper's settings (docs/method.md §3.1).
    fn default() -> Self {
        AdamW { beta1: 0.9, beta2: 0.98, eps: 1e-8, weight_decay: 0.01 }
    }
}
