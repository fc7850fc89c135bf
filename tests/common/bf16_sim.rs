//! A CPU backend that rounds to bf16 exactly where the CUDA backend stores bf16 (activations,
//! activation gradients, the weights forward ops read) and keeps f32 where it keeps f32 (parameter
//! gradients, Adam moments, master weights, LayerNorm and attention statistics). It measures how
//! far bf16 storage alone moves the model from the f32 CPU backend, which sets the GPU tests'
//! tolerances in tests/cuda_model.rs, and runs those tests' comparison code on every machine.

use dlm_engine::backend::cpu::{self as ck, CpuBackend};
use dlm_engine::backend::{Activation, AdamW, Backend, ConfidenceKind, Dropout, NoiseSpec, PoolShape, ReparamRule};
use dlm_engine::backend::{AdamWStep, CanvasInputs, CanvasState, LossSlots, Moments, Picks, PicksMut, VocabShape};
use dlm_engine::backend::{AttnCall, AttnSaved, Qkv, QkvGrads};
use dlm_engine::backend::{
    EmbedGrads, EmbedShape, EmbedTables, Gemm, LinearGrads, LnGrads, LnParams, LnSaved, LnStats, Residual, RowsShape,
};

/// A buffer: the values ops read (bf16-representable where the GPU stores bf16), and for a
/// parameter after its first AdamW step the f32 master that the update works on.
#[derive(Clone)]
pub struct SimBuf {
    v: Vec<f32>,
    master: Option<Vec<f32>>,
}

fn rnd(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = half::bf16::from_f32(*x).to_f32();
    }
}

pub struct Bf16Sim;
type R<T> = anyhow::Result<T>;

impl Backend for Bf16Sim {
    type Buf = SimBuf;
    type IBuf = Vec<i32>;
    fn name(&self) -> String {
        "cpu-bf16-sim".into()
    }
    fn zeros(&self, n: usize) -> R<SimBuf> {
        Ok(SimBuf { v: vec![0.0; n], master: None })
    }
    fn upload(&self, d: &[f32]) -> R<SimBuf> {
        let mut v = d.to_vec();
        rnd(&mut v);
        Ok(SimBuf { v, master: None })
    }
    fn download(&self, b: &SimBuf) -> R<Vec<f32>> {
        Ok(b.master.clone().unwrap_or_else(|| b.v.clone()))
    }
    fn upload_i32(&self, d: &[i32]) -> R<Vec<i32>> {
        Ok(d.to_vec())
    }
    fn write_f32(&self, dst: &mut SimBuf, d: &[f32]) -> R<()> {
        *dst = SimBuf { v: d.to_vec(), master: None };
        Ok(())
    }
    fn write_i32(&self, dst: &mut Vec<i32>, d: &[i32]) -> R<()> {
        dst.copy_from_slice(d);
        Ok(())
    }
    fn read_i32(&self, s: &Vec<i32>) -> R<Vec<i32>> {
        Ok(s.clone())
    }
    fn len(&self, b: &SimBuf) -> usize {
        b.v.len()
    }
    fn fill_zero(&self, b: &mut SimBuf) -> R<()> {
        b.v.fill(0.0);
        if let Some(m) = &mut b.master {
            m.fill(0.0)
        }
        Ok(())
    }
    fn copy(&self, s: &SimBuf, d: &mut SimBuf) -> R<()> {
        d.v.copy_from_slice(&s.v);
        d.master = s.master.clone();
        Ok(())
    }
    // The model adds only into activation gradients (bf16 on the GPU).
    fn add_assign(&self, d: &mut SimBuf, s: &SimBuf) -> R<()> {
        for (a, b) in d.v.iter_mut().zip(&s.v) {
            *a += b;
        }
        rnd(&mut d.v);
        Ok(())
    }
    fn linear_fwd(&self, x: &Self::Buf, w: &Self::Buf, bias: Option<&Self::Buf>, y: &mut Self::Buf, dims: Gemm) -> R<()> {
        let Gemm { m, n, k } = dims;
        ck::linear::linear_fwd(&x.v, &w.v, bias.map(|b| b.v.as_slice()), &mut y.v, Gemm { m, n, k });
        rnd(&mut y.v);
        Ok(())
    }
    fn linear_bwd(&self, x: &Self::Buf, w: &Self::Buf, dy: &Self::Buf, grads: LinearGrads<'_, Self::Buf>, dims: Gemm) -> R<()> {
        let Gemm { m, n, k } = dims;
        let LinearGrads { dx, dw, db } = grads;
        let mut dx = dx;
        ck::linear::linear_bwd(
            &x.v,
            &w.v,
            &dy.v,
            LinearGrads { dx: dx.as_mut().map(|d| d.v.as_mut_slice()), dw: &mut dw.v, db: db.map(|d| d.v.as_mut_slice()) },
            Gemm { m, n, k },
        );
        // dw and db are the f32 accumulators; only dx is bf16.
        if let Some(d) = dx {
            rnd(&mut d.v)
        }
        Ok(())
    }
    fn embed_fwd(
        &self,
        ids: &Self::IBuf,
        p: &Self::IBuf,
        tables: EmbedTables<'_, Self::Buf>,
        out: &mut Self::Buf,
        shape: EmbedShape,
    ) -> R<()> {
        let EmbedTables { word: w, pos: ps, typ: t } = tables;
        let EmbedShape { tokens: tok, hidden: h } = shape;
        ck::embed::embed_fwd(ids, p, EmbedTables { word: &w.v, pos: &ps.v, typ: &t.v }, &mut out.v, EmbedShape { tokens: tok, hidden: h });
        rnd(&mut out.v);
        Ok(())
    }
    fn embed_bwd(
        &self,
        ids: &Self::IBuf,
        p: &Self::IBuf,
        d: &Self::Buf,
        grads: EmbedGrads<'_, Self::Buf>,
        shape: EmbedShape,
        pad: i32,
    ) -> R<()> {
        let EmbedGrads { word: dw, pos: dp, typ: dt } = grads;
        let EmbedShape { tokens: tok, hidden: h } = shape;
        ck::embed::embed_bwd(
            ids,
            p,
            &d.v,
            EmbedGrads { word: &mut dw.v, pos: &mut dp.v, typ: &mut dt.v },
            EmbedShape { tokens: tok, hidden: h },
            pad,
        );
        Ok(())
    }
    fn dropout_fwd(&self, x: &mut SimBuf, d: Dropout, s: u64) -> R<()> {
        ck::elementwise::dropout_apply(&mut x.v, d.p, d.seed, s);
        rnd(&mut x.v);
        Ok(())
    }
    fn dropout_bwd(&self, x: &mut SimBuf, d: Dropout, s: u64) -> R<()> {
        ck::elementwise::dropout_apply(&mut x.v, d.p, d.seed, s);
        rnd(&mut x.v);
        Ok(())
    }
    fn gelu_fwd(&self, x: &SimBuf, y: &mut SimBuf) -> R<()> {
        ck::elementwise::gelu_fwd(&x.v, &mut y.v);
        rnd(&mut y.v);
        Ok(())
    }
    fn gelu_bwd(&self, x: &SimBuf, dy: &SimBuf, dx: &mut SimBuf) -> R<()> {
        ck::elementwise::gelu_bwd(&x.v, &dy.v, &mut dx.v);
        rnd(&mut dx.v);
        Ok(())
    }
    fn activation_fwd(&self, act: Activation, x: &SimBuf, y: &mut SimBuf) -> R<()> {
        ck::elementwise::activation_fwd(act, &x.v, &mut y.v);
        rnd(&mut y.v);
        Ok(())
    }
    fn activation_bwd(&self, act: Activation, saved: &SimBuf, dy: &SimBuf, dx: &mut SimBuf) -> R<()> {
        ck::elementwise::activation_bwd(act, &saved.v, &dy.v, &mut dx.v);
        rnd(&mut dx.v);
        Ok(())
    }
    fn mean_pool_fwd(&self, x: &SimBuf, key_mask: &Vec<i32>, out: &mut SimBuf, shape: PoolShape) -> R<()> {
        ck::pool::mean_pool_fwd(&x.v, key_mask, &mut out.v, shape);
        rnd(&mut out.v);
        Ok(())
    }
    fn mean_pool_bwd(&self, dout: &SimBuf, key_mask: &Vec<i32>, dx: &mut SimBuf, shape: PoolShape) -> R<()> {
        ck::pool::mean_pool_bwd(&dout.v, key_mask, &mut dx.v, shape);
        rnd(&mut dx.v);
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
    ) -> R<()> {
        let (res, sum) = Residual::unzip(residual);
        let LnParams { gamma: g, beta: b, eps } = params;
        let LnStats { mean, rstd } = stats;
        let RowsShape { rows, cols } = shape;
        // The kernel stores the bf16 sum and normalises that stored value.
        let input = match res {
            Some(r) => {
                let mut s: Vec<f32> = x.v.iter().zip(&r.v).map(|(a, b)| a + b).collect();
                rnd(&mut s);
                sum.unwrap().v.copy_from_slice(&s);
                s
            }
            None => x.v.clone(),
        };
        ck::layernorm::add_layernorm_fwd(
            &input,
            None,
            LnParams { gamma: &g.v, beta: &b.v, eps },
            &mut out.v,
            LnStats { mean: &mut mean.v, rstd: &mut rstd.v },
            RowsShape { rows, cols },
        );
        rnd(&mut out.v);
        Ok(())
    }
    fn layernorm_bwd(
        &self,
        x: &Self::Buf,
        d: &Self::Buf,
        saved: LnSaved<'_, Self::Buf>,
        grads: LnGrads<'_, Self::Buf>,
        shape: RowsShape,
    ) -> R<()> {
        let LnSaved { gamma: g, mean, rstd } = saved;
        let LnGrads { dx, accumulate: acc, dgamma: dg, dbeta: db } = grads;
        let RowsShape { rows, cols } = shape;
        ck::layernorm::layernorm_bwd(
            &x.v,
            &d.v,
            LnSaved { gamma: &g.v, mean: &mean.v, rstd: &rstd.v },
            LnGrads { dx: &mut dx.v, accumulate: acc, dgamma: &mut dg.v, dbeta: &mut db.v },
            RowsShape { rows, cols },
        );
        rnd(&mut dx.v);
        Ok(())
    }
    fn attention_fwd(
        &self,
        qkv: Qkv<'_, Self::Buf>,
        key_mask: &Self::IBuf,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        call: AttnCall,
    ) -> R<()> {
        let Qkv { q, k, v } = qkv;
        let AttnCall { shape: s, drop: d, stream: st } = call;
        let m = key_mask;
        ck::attention::attention_fwd(
            Qkv { q: &q.v, k: &k.v, v: &v.v },
            m,
            &mut out.v,
            &mut lse.v,
            AttnCall { shape: s, drop: d, stream: st },
        );
        rnd(&mut out.v);
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
    ) -> R<()> {
        let Qkv { q, k, v } = qkv;
        let AttnCall { shape: s, drop: d, stream: st } = call;
        let m = key_mask;
        let AttnSaved { out, lse } = saved;
        let QkvGrads { dq, dk, dv } = grads;
        ck::attention::attention_bwd(
            Qkv { q: &q.v, k: &k.v, v: &v.v },
            m,
            AttnSaved { out: &out.v, lse: &lse.v },
            &dout.v,
            QkvGrads { dq: &mut dq.v, dk: &mut dk.v, dv: &mut dv.v },
            AttnCall { shape: s, drop: d, stream: st },
        );
        rnd(&mut dq.v);
        rnd(&mut dk.v);
        rnd(&mut dv.v);
        Ok(())
    }
    fn gather_rows(&self, x: &SimBuf, rows: &Vec<i32>, out: &mut SimBuf, n: usize, c: usize) -> R<()> {
        CpuBackend::new().gather_rows(&x.v, rows, &mut out.v, n, c)
    }
    fn scatter_add_rows(&self, d: &SimBuf, rows: &Vec<i32>, dx: &mut SimBuf, n: usize, c: usize) -> R<()> {
        CpuBackend::new().scatter_add_rows(&d.v, rows, &mut dx.v, n, c)?;
        rnd(&mut dx.v);
        Ok(())
    }
    fn scatter_rows(&self, x: &SimBuf, rows: &Vec<i32>, out: &mut SimBuf, n: usize, c: usize) -> R<()> {
        CpuBackend::new().scatter_rows(&x.v, rows, &mut out.v, n, c)
    }
    fn vocab_confidence(&self, l: &SimBuf, shape: VocabShape, f: &Vec<i32>, kind: ConfidenceKind, out: &mut SimBuf) -> R<()> {
        CpuBackend::new().vocab_confidence(&l.v, shape, f, kind, &mut out.v)
    }
    fn cfg_combine(&self, l: &mut SimBuf, shape: VocabShape, scale: f32) -> R<()> {
        CpuBackend::new().cfg_combine(&mut l.v, shape, scale)?;
        rnd(&mut l.v);
        Ok(())
    }
    fn q_sample(
        &self,
        ids: &mut Self::IBuf,
        seq: usize,
        src_len: &[i32],
        spec: &NoiseSpec,
        out: LossSlots<'_, Self::Buf, Self::IBuf>,
    ) -> R<usize> {
        let LossSlots { rows, targets: t, weights: w } = out;
        // The weights are f32 on the GPU too.
        CpuBackend::new().q_sample(ids, seq, src_len, spec, LossSlots { rows, targets: t, weights: &mut w.v })
    }
    fn cross_entropy_fwd_bwd(&self, l: &mut Self::Buf, t: &Self::IBuf, w: &[f32], shape: VocabShape, ls: f32) -> R<Vec<f32>> {
        let VocabShape { rows, vocab: v, valid: vv } = shape;
        let r = ck::vocab::cross_entropy_fwd_bwd(&mut l.v, t, w, VocabShape { rows, vocab: v, valid: vv }, ls);
        rnd(&mut l.v);
        Ok(r)
    }
    fn vocab_pick(
        &self,
        l: &Self::Buf,
        shape: VocabShape,
        f: &Self::IBuf,
        t: f32,
        g: Option<(&Self::IBuf, &Self::IBuf)>,
        out: PicksMut<'_, Self::Buf, Self::IBuf>,
    ) -> R<()> {
        let VocabShape { rows, vocab: v, valid: vv } = shape;
        let PicksMut { token: tok, logprob: lp } = out;
        let st =
            ck::sampler::vocab_pick(&l.v, VocabShape { rows, vocab: v, valid: vv }, f, t, g.map(|(s, t)| (s.as_slice(), t.as_slice())));
        tok.copy_from_slice(&st.token);
        lp.v.copy_from_slice(&st.logprob);
        lp.master = None;
        Ok(())
    }
    fn reparam_step(
        &self,
        canvases: CanvasInputs<'_, Self::IBuf>,
        picks: Picks<'_, Self::Buf, Self::IBuf>,
        state: CanvasState<'_, Self::Buf, Self::IBuf>,
        ids: &mut Self::IBuf,
        rule: ReparamRule,
    ) -> R<()> {
        let CanvasInputs { meta: c, n: _n, step: st } = canvases;
        let Picks { token: pt, logprob: pl, rank } = picks;
        let CanvasState { tokens: tok, scores: sc, masked: m, left } = state;
        // Scores and log-probs are f32 on the GPU too.
        ck::sampler::reparam_step(
            c,
            st,
            Picks { token: pt, logprob: &pl.v, rank: &rank.v },
            CanvasState { tokens: tok, scores: &mut sc.v, masked: m, left },
            ids,
            rule,
        );
        Ok(())
    }
    fn sum_squares(&self, x: &SimBuf) -> R<f64> {
        Ok(ck::adamw::sum_squares(&x.v))
    }
    // The update works on the f32 master (made from the bf16 value on the first step); forward
    // ops then read its bf16 copy.
    fn adamw(&self, p: &mut Self::Buf, g: &Self::Buf, moments: Moments<'_, Self::Buf>, hp: AdamW, at: AdamWStep) -> R<()> {
        let Moments { m, v } = moments;
        let AdamWStep { lr, step, grad_scale: gs } = at;
        let pv = p.v.clone();
        let master = p.master.get_or_insert(pv);
        ck::adamw::adamw(master, &g.v, Moments { m: &mut m.v, v: &mut v.v }, hp, AdamWStep { lr, step, grad_scale: gs });
        p.v = master.clone();
        rnd(&mut p.v);
        Ok(())
    }
}
