//! The backward pass: the loss on the gathered rows, the LM head's backward and the encoder's,
//! layer by layer from the saved activations (dropout masks regenerated from their Philox streams).

use super::ready::{Done, GradsReady, Reporter};
use super::*;
use crate::backend::{AttnCall, AttnSaved, Qkv, QkvGrads};
use crate::backend::{EmbedGrads, EmbedShape, Gemm, LinearGrads, LnGrads, LnSaved, RowsShape};
use crate::backend::{LossSlots, VocabShape};

impl<B: Backend> XlmR<B> {
    /// Forward and backward of `Σ_r weight_r · CE(logits[rows[r]], targets[r])`; gradients
    /// accumulate into the parameter gradients (call `zero_grads` between optimizer steps).
    /// Returns the weighted sum of the per-row losses.
    pub fn loss_and_grad(&mut self, batch: &Batch, loss: &LossRows, drop: Dropout, label_smoothing: f32) -> Result<f32> {
        if loss.rows.len() != loss.targets.len() || loss.rows.len() != loss.weights.len() {
            bail!("loss rows, targets and weights differ in length");
        }
        self.require_trainable(Part::Backbone)?;
        self.ensure_grads()?;
        self.encode(batch, drop)?;
        let enc = self.work.enc.as_ref().context("no encoder pass")?;
        check_rows(&loss.rows, enc.batch * enc.seq)?;
        let be = &self.p.backend;
        let rows = be.upload_i32(&loss.rows)?;
        let targets = be.upload_i32(&loss.targets)?;
        self.head_loss_and_grad(rows, &targets, &loss.weights, drop, label_smoothing, None)
    }

    /// The RDM objective of one micro-batch with the noise drawn on the device: `batch` is the
    /// doubled clean batch and `src_len` its examples' source lengths (`noise::doubled_batch`);
    /// `Backend::q_sample` masks it in place after its inputs are written, then the forward and
    /// backward run as in `loss_and_grad`. Returns the loss and the number of masked slots.
    pub fn noised_loss_and_grad(
        &mut self,
        batch: &Batch,
        src_len: &[i32],
        spec: &NoiseSpec,
        drop: Dropout,
        label_smoothing: f32,
    ) -> Result<(f32, usize)> {
        self.noised_loss_and_grad_reporting(batch, src_len, spec, drop, label_smoothing, None)
    }

    /// `noised_loss_and_grad`, telling `ready` which gradients are final as the backward pass
    /// finishes them (`GradsReady`).
    pub fn noised_loss_and_grad_reporting(
        &mut self,
        batch: &Batch,
        src_len: &[i32],
        spec: &NoiseSpec,
        drop: Dropout,
        label_smoothing: f32,
        ready: Option<GradsReady<'_, B>>,
    ) -> Result<(f32, usize)> {
        self.p.check_batch(batch)?;
        let half = src_len.len() * batch.seq;
        if batch.batch != 2 * src_len.len() || batch.ids[..half] != batch.ids[half..] {
            bail!("noised batch: {} rows for {} examples, not the doubled batch (rows b and B+b equal)", batch.batch, src_len.len());
        }
        if spec.mask_id < 0 || spec.mask_id as usize >= self.p.cfg.vocab_size {
            bail!("<mask> id {} is outside the model's vocabulary of {}", spec.mask_id, self.p.cfg.vocab_size);
        }
        self.require_trainable(Part::Backbone)?;
        self.ensure_grads()?;
        let enc = self.work.encoder(&self.p, batch, true)?;
        let be = &self.p.backend;
        let cap = batch.tokens();
        let mut rows = be.upload_i32(&vec![0; cap])?;
        let mut targets = be.upload_i32(&vec![0; cap])?;
        let mut weights = be.zeros(cap)?;
        self.p.set_encoder_inputs(enc, batch)?;
        let n = be.q_sample(
            &mut enc.ids,
            batch.seq,
            src_len,
            spec,
            LossSlots { rows: &mut rows, targets: &mut targets, weights: &mut weights },
        )?;
        self.p.run_encoder(enc, drop)?;
        let mut w = be.download(&weights)?;
        w.truncate(n);
        let loss = self.head_loss_and_grad(rows, &targets, &w, drop, label_smoothing, ready)?;
        Ok((loss, n))
    }

    /// The head, the weighted CE and the whole backward on `n = weights.len()` rows of the last
    /// encoder run (positions in `rows`, clean ids in `targets`).
    fn head_loss_and_grad(
        &mut self,
        rows: B::IBuf,
        targets: &B::IBuf,
        weights: &[f32],
        drop: Dropout,
        label_smoothing: f32,
        ready: Option<GradsReady<'_, B>>,
    ) -> Result<f32> {
        let mut ready = Reporter::new(ready, &self.p);
        let r = weights.len();
        let enc = self.work.enc.as_ref().context("the head's backward needs an encoder pass first")?;
        let mut hd = self.p.alloc_head_on(rows, r)?;
        self.p.run_head(enc, &mut hd)?;
        let be = &self.p.backend;
        let vsz = self.head_vocab();
        let per_row = be.cross_entropy_fwd_bwd(
            &mut hd.logits,
            targets,
            weights,
            VocabShape { rows: r, vocab: vsz, valid: self.valid_vocab() },
            label_smoothing,
        )?;
        let total: f64 = per_row.iter().zip(weights).map(|(l, w)| (*l as f64) * (*w as f64)).sum();
        let mut dhidden = self.p.head_backward(enc, &hd)?;
        ready.report(&self.p.backend, &mut self.p.grads, Done::Head)?;
        let _range = nvtx::range!("encoder backward");
        self.p.encoder_backward(enc, &mut dhidden, drop, &mut ready)?;
        Ok(total as f32)
    }
}

/// The parameters' values and gradients of a backward pass, apart from the saved activations so
/// that both can be borrowed at once: each op finds its layer's parameters by index and adds to
/// their gradients.
pub(super) struct ParamGrads<'a, B: Backend> {
    pub(super) be: &'a B,
    pub(super) v: &'a [B::Buf],
    pub(super) g: &'a mut [B::Buf],
    /// Rows of the pass (tokens in the encoder, scored rows in the head).
    pub(super) rows: usize,
}

/// What the attention block's backward reads: the layer's saved activations, its input and the
/// batch's key-padding mask.
pub(super) struct BlockInput<'a, B: Backend> {
    pub(super) a: &'a LayerActs<B>,
    pub(super) x: &'a B::Buf,
    pub(super) key_mask: &'a B::IBuf,
}

/// The attention block's gradient buffers, shared by all layers.
pub(super) struct AttnScratch<B: Backend> {
    pub(super) dctx: B::Buf,
    pub(super) dq: B::Buf,
    pub(super) dk: B::Buf,
    pub(super) dv: B::Buf,
}

impl<B: Backend> ParamGrads<'_, B> {
    /// Linear layer `lin` on `x`: its weight and bias gradients, and `dx` when wanted.
    pub(super) fn linear(&mut self, lin: Linear, x: &B::Buf, dy: &B::Buf, dx: Option<&mut B::Buf>, dims: Gemm) -> Result<()> {
        let (dw, db) = two_mut(self.g, lin.w, lin.b);
        self.be.linear_bwd(x, &self.v[lin.w], dy, LinearGrads { dx, dw, db: Some(db) }, dims)
    }

    /// LayerNorm `ln` of `x` with its saved `(mean, rstd)`: its scale and shift gradients, and
    /// `dx` (overwritten, or added to with `accumulate`).
    pub(super) fn layernorm(
        &mut self,
        ln: Norm,
        x: &B::Buf,
        dout: &B::Buf,
        stats: (&B::Buf, &B::Buf),
        dx: &mut B::Buf,
        accumulate: bool,
    ) -> Result<()> {
        let (dgamma, dbeta) = two_mut(self.g, ln.g, ln.b);
        let saved = LnSaved { gamma: &self.v[ln.g], mean: stats.0, rstd: stats.1 };
        let shape = RowsShape { rows: self.rows, cols: self.be.len(&self.v[ln.g]) };
        self.be.layernorm_bwd(x, dout, saved, LnGrads { dx, accumulate, dgamma, dbeta }, shape)
    }

    /// Backward of `attn = O · attention(Q x, K x, V x)` (layer `layer`, its activations and its
    /// input `x`) given `dattn`; writes d(x) into `dx` when given (a frozen input needs none).
    pub(super) fn attention_block(
        &mut self,
        layer: Layer,
        BlockInput { a, x, key_mask }: BlockInput<'_, B>,
        call: AttnCall,
        dattn: &B::Buf,
        dx: Option<&mut B::Buf>,
        s: &mut AttnScratch<B>,
    ) -> Result<()> {
        let (n, h) = (call.shape.tokens(), call.shape.hidden());
        let square = Gemm { m: n, n: h, k: h };
        self.linear(layer.o, &a.ctx, dattn, Some(&mut s.dctx), square)?;
        self.be.attention_bwd(
            Qkv { q: &a.q, k: &a.k, v: &a.v },
            key_mask,
            AttnSaved { out: &a.ctx, lse: &a.lse },
            &s.dctx,
            QkvGrads { dq: &mut s.dq, dk: &mut s.dk, dv: &mut s.dv },
            call,
        )?;
        // dx = dq·Wq + dk·Wk + dv·Wv; `dctx` is free again and serves as scratch.
        let Some(dx) = dx else {
            for (lin, d) in [(layer.q, &s.dq), (layer.k, &s.dk), (layer.v, &s.dv)] {
                self.linear(lin, x, d, None, square)?;
            }
            return Ok(());
        };
        self.linear(layer.q, x, &s.dq, Some(dx), square)?;
        for (lin, d) in [(layer.k, &s.dk), (layer.v, &s.dv)] {
            self.linear(lin, x, d, Some(&mut s.dctx), square)?;
            self.be.add_assign(dx, &s.dctx)?;
        }
        Ok(())
    }
}

/// Layer `li`'s input and output among the hidden-state buffers `hs` (all L + 1 of them, or two
/// taken in turn).
pub(super) fn in_and_out<T>(hs: &mut [T], li: usize) -> (&T, &mut T) {
    let n = hs.len();
    let (i, o) = (li % n, (li + 1) % n);
    if i < o {
        let (a, b) = hs.split_at_mut(o);
        (&a[i], &mut b[0])
    } else {
        let (a, b) = hs.split_at_mut(i);
        (&b[0], &mut a[o])
    }
}

/// Two distinct mutable elements of a slice.
fn two_mut<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert_ne!(i, j);
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&mut a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&mut b[0], &mut a[j])
    }
}

/// Three distinct mutable elements of a slice.
fn three_mut<T>(v: &mut [T], i: usize, j: usize, k: usize) -> (&mut T, &mut T, &mut T) {
    assert!(i != j && j != k && i != k);
    let p = v.as_mut_ptr();
    assert!(i < v.len() && j < v.len() && k < v.len());
    // SAFETY: the indices are distinct and in bounds, so the references never alias.
    unsafe { (&mut *p.add(i), &mut *p.add(j), &mut *p.add(k)) }
}

impl<B: Backend> Params<B> {
    /// Backward of the head; returns d(encoder output), `[tokens, hidden]`.
    fn head_backward(&mut self, enc: &Encoder<B>, hd: &Head<B>) -> Result<B::Buf> {
        let _range = nvtx::range!("lm_head backward");
        let be = &self.backend;
        let (r, h, vsz) = (hd.rows, self.cfg.hidden, self.head_vocab());
        let decoder = Linear { w: self.decoder(), b: self.ix.head_bias };
        let mut pg = ParamGrads { be, v: &self.values, g: &mut self.grads, rows: r };
        let mut dz = be.zeros(r * h)?;
        pg.linear(decoder, &hd.z, &hd.logits, Some(&mut dz), Gemm { m: r, n: vsz, k: h })?;
        let mut dg1 = be.zeros(r * h)?;
        let ln = self.ix.head_ln;
        pg.layernorm(ln, &hd.g1, &dz, (&hd.mean, &hd.rstd), &mut dg1, false)?;
        let mut dd1 = be.zeros(r * h)?;
        be.gelu_bwd(&hd.d1, &dg1, &mut dd1)?;
        let dn = self.ix.head_dense;
        let mut dx = be.zeros(r * h)?;
        pg.linear(dn, &hd.x, &dd1, Some(&mut dx), Gemm { m: r, n: h, k: h })?;
        let mut dout = be.zeros(enc.batch * enc.seq * h)?;
        be.scatter_add_rows(&dx, &hd.idx, &mut dout, r, h)?;
        Ok(dout)
    }

    fn encoder_backward(&mut self, enc: &Encoder<B>, dcur: &mut B::Buf, drop: Dropout, ready: &mut Reporter<'_, B>) -> Result<()> {
        if !enc.keep {
            bail!("internal: the encoder pass kept no activations for a backward pass");
        }
        let be = &self.backend;
        let cfg = &self.cfg;
        let (n, h, f) = (enc.batch * enc.seq, cfg.hidden, cfg.intermediate);
        let mut pg = ParamGrads { be, v: &self.values, g: &mut self.grads, rows: n };
        let hidden_drop = Dropout { p: if drop.active() { cfg.hidden_dropout } else { 0.0 }, seed: drop.seed };
        let attn_drop = Dropout { p: if drop.active() { cfg.attention_dropout } else { 0.0 }, seed: drop.seed };
        let shape = AttnShape { batch: enc.batch, seq: enc.seq, heads: cfg.heads, head_dim: cfg.head_dim() };

        // Scratch buffers shared by all layers.
        let mut t_h1 = be.zeros(n * h)?;
        let mut t_h2 = be.zeros(n * h)?;
        let mut t_f1 = be.zeros(n * f)?;
        let mut t_f2 = be.zeros(n * f)?;
        let mut scratch = AttnScratch { dctx: be.zeros(n * h)?, dq: be.zeros(n * h)?, dk: be.zeros(n * h)?, dv: be.zeros(n * h)? };

        if let Some(ln) = self.ix.final_ln {
            pg.layernorm(ln, &enc.hs[cfg.layers], dcur, (&enc.out_mean, &enc.out_rstd), &mut t_h1, false)?;
            be.copy(&t_h1, dcur)?;
        }

        for li in (0..cfg.layers).rev() {
            let _r = nvtx::range!("layer {} backward", li);
            let layer = self.layers[li];
            let a = &enc.layers[li];
            let x = &enc.hs[li];
            // On entry dcur = d(layer output); on exit dcur = d(layer input).
            match cfg.arch {
                Arch::PostLn => {
                    // out = LN2(h1 + drop(f2))
                    let ds2 = &mut t_h1;
                    pg.layernorm(layer.ffn_ln, &a.s2, dcur, (&a.mean2, &a.rstd2), ds2, false)?;
                    let df2 = &mut t_h2;
                    be.copy(ds2, df2)?;
                    be.dropout_bwd(df2, hidden_drop, stream(li, S_FFN_OUT))?;
                    pg.linear(layer.ffn_out, &a.g, df2, Some(&mut t_f1), Gemm { m: n, n: h, k: f })?;
                    be.gelu_bwd(&a.f1, &t_f1, &mut t_f2)?;
                    pg.linear(layer.ffn_in, &a.h1, &t_f2, Some(dcur), Gemm { m: n, n: f, k: h })?;
                    // dh1 = ds2 + ffn path (in dcur)
                    be.add_assign(dcur, &t_h1)?;
                    // h1 = LN1(x + drop(attn))
                    pg.layernorm(layer.attn_ln, &a.s1, dcur, (&a.mean1, &a.rstd1), &mut t_h1, false)?;
                    // t_h1 = ds1: flows to x directly and through the attention block.
                    be.copy(&t_h1, &mut t_h2)?;
                    be.dropout_bwd(&mut t_h2, hidden_drop, stream(li, S_ATTN_OUT))?;
                    pg.attention_block(
                        layer,
                        BlockInput { a, x, key_mask: &enc.key_mask },
                        AttnCall { shape, drop: attn_drop, stream: stream(li, S_ATTN_PROBS) },
                        &t_h2,
                        Some(dcur),
                        &mut scratch,
                    )?;
                    be.add_assign(dcur, &t_h1)?;
                }
                Arch::PreLn => {
                    // out = h1 + W2·gelu(W1·LN_ffn(h1) + b1) + b2
                    pg.linear(layer.ffn_out, &a.g, dcur, Some(&mut t_f1), Gemm { m: n, n: h, k: f })?;
                    be.gelu_bwd(&a.f1, &t_f1, &mut t_f2)?;
                    pg.linear(layer.ffn_in, &a.h1, &t_f2, Some(&mut t_h1), Gemm { m: n, n: f, k: h })?;
                    pg.layernorm(layer.ffn_ln, &a.s1, &t_h1, (&a.mean1, &a.rstd1), dcur, true)?;
                    // dcur = d(h1); h1 = x + drop(O·attn(LN_attn(x)))
                    be.copy(dcur, &mut t_h2)?;
                    be.dropout_bwd(&mut t_h2, hidden_drop, stream(li, S_ATTN_OUT))?;
                    pg.attention_block(
                        layer,
                        BlockInput { a, x: &a.a_in, key_mask: &enc.key_mask },
                        AttnCall { shape, drop: attn_drop, stream: stream(li, S_ATTN_PROBS) },
                        &t_h2,
                        Some(&mut t_h1),
                        &mut scratch,
                    )?;
                    pg.layernorm(layer.attn_ln, x, &t_h1, (&a.a_mean, &a.a_rstd), dcur, true)?;
                }
            }
            ready.report(be, pg.g, Done::Layer(li))?;
        }

        // Embeddings.
        be.dropout_bwd(dcur, hidden_drop, S_EMB)?;
        let demb: &B::Buf = match self.ix.emb_ln {
            Some(ln) => {
                pg.layernorm(ln, &enc.emb, dcur, (&enc.emb_mean, &enc.emb_rstd), &mut t_h1, false)?;
                &t_h1
            }
            None => dcur,
        };
        let (gw, gp, gt) = three_mut(pg.g, self.ix.word, self.ix.pos, self.ix.typ);
        be.embed_bwd(
            &enc.ids,
            &enc.pos_ids,
            demb,
            EmbedGrads { word: gw, pos: gp, typ: gt },
            EmbedShape { tokens: n, hidden: h },
            cfg.pad_id,
        )?;
        ready.report(be, pg.g, Done::Embeddings)
    }
}
