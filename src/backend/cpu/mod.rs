//! The CPU backend: f32, multi-threaded (rayon), GEMMs through the `gemm` crate.
//!
//! It is the reference every CUDA kernel is tested against, and a real backend that trains and
//! samples small models. Each kernel family lives in its own file as plain slice functions, so a
//! CUDA parity test can call the CPU twin directly.

pub mod adamw;
pub mod attention;
pub mod elementwise;
pub mod embed;
pub mod layernorm;
pub mod linear;
pub mod pool;
pub mod rows;
pub mod sampler;
pub mod simd;
pub mod vocab;

use super::{Activation, AdamW, Backend, ConfidenceKind, Dropout, NoiseSpec, PoolShape, ReparamRule};
use crate::backend::{AdamWStep, CanvasInputs, CanvasState, LossSlots, Moments, Picks, PicksMut, VocabShape};
use crate::backend::{AttnCall, AttnSaved, Qkv, QkvGrads};
use crate::backend::{EmbedGrads, EmbedShape, EmbedTables, Gemm, LinearGrads, LnGrads, LnParams, LnSaved, LnStats, Residual, RowsShape};
use crate::rdm::noise;
use anyhow::Result;

#[derive(Clone, Debug)]
pub struct CpuBackend {
    vocab_align: usize,
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend { vocab_align: 1 }
    }
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A CPU backend that pads the LM head like a GPU one (`Backend::vocab_align`), so the
    /// padding logic is tested without a GPU.
    pub fn with_vocab_align(align: usize) -> Self {
        CpuBackend { vocab_align: align.max(1) }
    }

    /// Sets the size of the worker pool (0 = one per core). Call before any work.
    pub fn set_threads(n: usize) {
        if n > 0 {
            let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
        }
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type IBuf = Vec<i32>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn vocab_align(&self) -> usize {
        self.vocab_align
    }

    fn zeros(&self, n: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }
    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn upload_i32(&self, data: &[i32]) -> Result<Vec<i32>> {
        Ok(data.to_vec())
    }
    fn write_f32(&self, dst: &mut Vec<f32>, data: &[f32]) -> Result<()> {
        anyhow::ensure!(dst.len() == data.len(), "write_f32: {} values into a buffer of {}", data.len(), dst.len());
        dst.copy_from_slice(data);
        Ok(())
    }
    fn write_i32(&self, dst: &mut Vec<i32>, data: &[i32]) -> Result<()> {
        anyhow::ensure!(dst.len() == data.len(), "write_i32: {} values into a buffer of {}", data.len(), dst.len());
        dst.copy_from_slice(data);
        Ok(())
    }
    fn read_i32(&self, src: &Vec<i32>) -> Result<Vec<i32>> {
        Ok(src.clone())
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn fill_zero(&self, buf: &mut Vec<f32>) -> Result<()> {
        buf.fill(0.0);
        Ok(())
    }
    fn copy(&self, src: &Vec<f32>, dst: &mut Vec<f32>) -> Result<()> {
        dst.copy_from_slice(src);
        Ok(())
    }
    fn add_assign(&self, dst: &mut Vec<f32>, src: &Vec<f32>) -> Result<()> {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += s;
        }
        Ok(())
    }

    fn linear_fwd(&self, x: &Self::Buf, w: &Self::Buf, bias: Option<&Self::Buf>, y: &mut Self::Buf, dims: Gemm) -> Result<()> {
        let Gemm { m, n, k } = dims;
        linear::linear_fwd(x, w, bias.map(|b| b.as_slice()), y, Gemm { m, n, k });
        Ok(())
    }

    fn linear_bwd(&self, x: &Self::Buf, w: &Self::Buf, dy: &Self::Buf, grads: LinearGrads<'_, Self::Buf>, dims: Gemm) -> Result<()> {
        let Gemm { m, n, k } = dims;
        let LinearGrads { dx, dw, db } = grads;
        linear::linear_bwd(
            x,
            w,
            dy,
            LinearGrads { dx: dx.map(|d| d.as_mut_slice()), dw, db: db.map(|d| d.as_mut_slice()) },
            Gemm { m, n, k },
        );
        Ok(())
    }

    fn embed_fwd(
        &self,
        ids: &Self::IBuf,
        pos_ids: &Self::IBuf,
        tables: EmbedTables<'_, Self::Buf>,
        out: &mut Self::Buf,
        shape: EmbedShape,
    ) -> Result<()> {
        let EmbedTables { word, pos, typ } = tables;
        let EmbedShape { tokens, hidden } = shape;
        embed::embed_fwd(ids, pos_ids, EmbedTables { word, pos, typ }, out, EmbedShape { tokens, hidden });
        Ok(())
    }

    fn embed_bwd(
        &self,
        ids: &Self::IBuf,
        pos_ids: &Self::IBuf,
        dout: &Self::Buf,
        grads: EmbedGrads<'_, Self::Buf>,
        shape: EmbedShape,
        padding_idx: i32,
    ) -> Result<()> {
        let EmbedGrads { word: dword, pos: dpos, typ: dtyp } = grads;
        let EmbedShape { tokens, hidden } = shape;
        embed::embed_bwd(ids, pos_ids, dout, EmbedGrads { word: dword, pos: dpos, typ: dtyp }, EmbedShape { tokens, hidden }, padding_idx);
        Ok(())
    }

    fn dropout_fwd(&self, x: &mut Vec<f32>, drop: Dropout, stream: u64) -> Result<()> {
        elementwise::dropout_apply(x, drop.p, drop.seed, stream);
        Ok(())
    }
    fn dropout_bwd(&self, dx: &mut Vec<f32>, drop: Dropout, stream: u64) -> Result<()> {
        elementwise::dropout_apply(dx, drop.p, drop.seed, stream);
        Ok(())
    }
    fn gelu_fwd(&self, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        elementwise::gelu_fwd(x, y);
        Ok(())
    }
    fn gelu_bwd(&self, x: &Vec<f32>, dy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        elementwise::gelu_bwd(x, dy, dx);
        Ok(())
    }
    fn activation_fwd(&self, act: Activation, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        anyhow::ensure!(x.len() == y.len(), "activation_fwd: {} inputs, {} outputs", x.len(), y.len());
        elementwise::activation_fwd(act, x, y);
        Ok(())
    }
    fn activation_bwd(&self, act: Activation, saved: &Vec<f32>, dy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        anyhow::ensure!(saved.len() == dy.len() && dy.len() == dx.len(), "activation_bwd: lengths differ");
        elementwise::activation_bwd(act, saved, dy, dx);
        Ok(())
    }

    fn mean_pool_fwd(&self, x: &Vec<f32>, key_mask: &Vec<i32>, out: &mut Vec<f32>, shape: PoolShape) -> Result<()> {
        pool::check(x.len(), key_mask.len(), out.len(), shape)?;
        pool::mean_pool_fwd(x, key_mask, out, shape);
        Ok(())
    }
    fn mean_pool_bwd(&self, dout: &Vec<f32>, key_mask: &Vec<i32>, dx: &mut Vec<f32>, shape: PoolShape) -> Result<()> {
        pool::check(dx.len(), key_mask.len(), dout.len(), shape)?;
        pool::mean_pool_bwd(dout, key_mask, dx, shape);
        Ok(())
    }

    fn add_layernorm_fwd(
        &self,
        x: &Self::Buf,
        residual: Option<Residual<'_, Self::Buf>>,
        params: LnParams<'_, Self::Buf>,
        out: &mut Self::Buf,
        stats: LnStats<'_, Self::Buf>,
        shape: RowsShape,
    ) -> Result<()> {
        let (residual, sum) = Residual::unzip(residual);
        let LnParams { gamma, beta, eps } = params;
        let LnStats { mean, rstd } = stats;
        let RowsShape { rows, cols } = shape;
        layernorm::add_layernorm_fwd(
            x,
            residual.map(|r| r.as_slice()).zip(sum.map(|s| s.as_mut_slice())).map(|(residual, sum)| Residual { residual, sum }),
            LnParams { gamma, beta, eps },
            out,
            LnStats { mean, rstd },
            RowsShape { rows, cols },
        );
        Ok(())
    }

    fn layernorm_bwd(
        &self,
        x: &Self::Buf,
        dout: &Self::Buf,
        saved: LnSaved<'_, Self::Buf>,
        grads: LnGrads<'_, Self::Buf>,
        shape: RowsShape,
    ) -> Result<()> {
        let LnSaved { gamma, mean, rstd } = saved;
        let LnGrads { dx, accumulate, dgamma, dbeta } = grads;
        let RowsShape { rows, cols } = shape;
        layernorm::layernorm_bwd(
            x,
            dout,
            LnSaved { gamma, mean, rstd },
            LnGrads { dx, accumulate, dgamma, dbeta },
            RowsShape { rows, cols },
        );
        Ok(())
    }

    fn attention_fwd(
        &self,
        qkv: Qkv<'_, Self::Buf>,
        key_mask: &Self::IBuf,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        call: AttnCall,
    ) -> Result<()> {
        let Qkv { q, k, v } = qkv;
        let AttnCall { shape, drop, stream } = call;
        attention::attention_fwd(Qkv { q, k, v }, key_mask, out, lse, AttnCall { shape, drop, stream });
        Ok(())
    }

    fn attention_bwd(
        &self,
        qkv: Qkv<'_, Self::Buf>,
        key_mask: &Self::IBuf,
        saved: AttnSaved<'_, Self::Buf>,
        dout: &Self::Buf,
        grads: QkvGrads<'_, Self::Buf>,
        call: AttnCall,
    ) -> Result<()> {
        let Qkv { q, k, v } = qkv;
        let AttnCall { shape, drop, stream } = call;
        let AttnSaved { out, lse } = saved;
        let QkvGrads { dq, dk, dv } = grads;
        attention::attention_bwd(
            Qkv { q, k, v },
            key_mask,
            AttnSaved { out, lse },
            dout,
            QkvGrads { dq, dk, dv },
            AttnCall { shape, drop, stream },
        );
        Ok(())
    }

    fn gather_rows(&self, x: &Vec<f32>, rows: &Vec<i32>, out: &mut Vec<f32>, n_rows: usize, cols: usize) -> Result<()> {
        rows::gather_rows(x, rows, out, n_rows, cols);
        Ok(())
    }

    fn scatter_add_rows(&self, dout: &Vec<f32>, rows: &Vec<i32>, dx: &mut Vec<f32>, n_rows: usize, cols: usize) -> Result<()> {
        rows::scatter_add_rows(dout, rows, dx, n_rows, cols);
        Ok(())
    }

    fn scatter_rows(&self, x: &Vec<f32>, rows: &Vec<i32>, out: &mut Vec<f32>, n_rows: usize, cols: usize) -> Result<()> {
        rows::scatter_rows(x, rows, out, n_rows, cols);
        Ok(())
    }

    fn q_sample(
        &self,
        ids: &mut Self::IBuf,
        seq: usize,
        src_len: &[i32],
        spec: &NoiseSpec,
        out: LossSlots<'_, Self::Buf, Self::IBuf>,
    ) -> Result<usize> {
        let LossSlots { rows, targets, weights } = out;
        let n = ids.len();
        anyhow::ensure!(n == 2 * src_len.len() * seq, "q_sample: {n} ids for 2×{} rows of {seq}", src_len.len());
        anyhow::ensure!(
            rows.len() >= n && targets.len() >= n && weights.len() >= n,
            "q_sample: output buffers hold fewer than {n} entries"
        );
        let loss = noise::q_sample_flat(ids, seq, src_len, spec);
        let r = loss.rows.len();
        rows[..r].copy_from_slice(&loss.rows);
        targets[..r].copy_from_slice(&loss.targets);
        weights[..r].copy_from_slice(&loss.weights);
        Ok(r)
    }

    fn cross_entropy_fwd_bwd(
        &self,
        logits: &mut Self::Buf,
        targets: &Self::IBuf,
        weights: &[f32],
        shape: VocabShape,
        label_smoothing: f32,
    ) -> Result<Vec<f32>> {
        let VocabShape { rows, vocab, valid: valid_vocab } = shape;
        Ok(vocab::cross_entropy_fwd_bwd(logits, targets, weights, VocabShape { rows, vocab, valid: valid_vocab }, label_smoothing))
    }

    fn vocab_pick(
        &self,
        logits: &Self::Buf,
        shape: VocabShape,
        forbid: &Self::IBuf,
        temperature: f32,
        gumbel: Option<(&Self::IBuf, &Self::IBuf)>,
        out: PicksMut<'_, Self::Buf, Self::IBuf>,
    ) -> Result<()> {
        let VocabShape { rows, vocab, valid: valid_vocab } = shape;
        let PicksMut { token, logprob } = out;
        let st = sampler::vocab_pick(
            logits,
            VocabShape { rows, vocab, valid: valid_vocab },
            forbid,
            temperature,
            gumbel.map(|(s, t)| (s.as_slice(), t.as_slice())),
        );
        token[..rows].copy_from_slice(&st.token);
        logprob[..rows].copy_from_slice(&st.logprob);
        Ok(())
    }

    fn vocab_confidence(
        &self,
        logits: &Self::Buf,
        shape: VocabShape,
        forbid: &Self::IBuf,
        kind: ConfidenceKind,
        out: &mut Self::Buf,
    ) -> Result<()> {
        out[..shape.rows].copy_from_slice(&sampler::vocab_confidence(logits, shape, forbid, kind));
        Ok(())
    }

    fn cfg_combine(&self, logits: &mut Self::Buf, shape: VocabShape, scale: f32) -> Result<()> {
        sampler::cfg_combine(logits, shape.rows, shape.vocab, scale);
        Ok(())
    }

    fn reparam_step(
        &self,
        canvases: CanvasInputs<'_, Self::IBuf>,
        picks: Picks<'_, Self::Buf, Self::IBuf>,
        state: CanvasState<'_, Self::Buf, Self::IBuf>,
        ids: &mut Self::IBuf,
        rule: ReparamRule,
    ) -> Result<()> {
        let CanvasInputs { meta: canvases, n: n_canvases, step } = canvases;
        let Picks { token: pick_token, logprob: pick_logprob, rank } = picks;
        let CanvasState { tokens, scores, masked, left } = state;
        super::contract::check_canvases(canvases, step, n_canvases, tokens.len(), ids.len())?;
        anyhow::ensure!(left.len() >= n_canvases, "reparam_step: {} left counts for {n_canvases} canvases", left.len());
        sampler::reparam_step(
            canvases,
            step,
            Picks { token: pick_token, logprob: pick_logprob, rank },
            CanvasState { tokens, scores, masked, left },
            ids,
            rule,
        );
        Ok(())
    }

    fn sum_squares(&self, x: &Vec<f32>) -> Result<f64> {
        Ok(adamw::sum_squares(x))
    }
    fn adamw(&self, param: &mut Self::Buf, grad: &Self::Buf, moments: Moments<'_, Self::Buf>, hp: AdamW, at: AdamWStep) -> Result<()> {
        let Moments { m, v } = moments;
        let AdamWStep { lr, step, grad_scale } = at;
        adamw::adamw(param, grad, Moments { m, v }, hp, AdamWStep { lr, step, grad_scale });
        Ok(())
    }
}
