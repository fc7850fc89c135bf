//! The prefix cache of the sampler (`sample --cache prefix`), after Fast-dLLM's, for a
//! bidirectional encoder.
//!
//! Each layer's keys and values of every position of the batch are kept between steps. A step
//! recomputes only the positions from `active_from[b]` on in row b (the current block, what
//! follows it and `</s>`): their hidden states, and their queries, keys and values, which
//! replace the cached ones. Attention then runs over the whole row, the earlier positions
//! reading the keys and values kept from the last step that recomputed them. A row with
//! `active_from = 0` is recomputed whole, which refreshes its cache (the sampler does so at the
//! first step of every block).
//!
//! This is an approximation: XLM-R attends both ways, so the prompt's states really depend on
//! the target slots, which change at every step; the cache keeps them as they were at the last
//! refresh. The saving is every GEMM of the cached rows.

use super::{check_rows, Encoder, XlmR};
use crate::backend::{AttnCall, AttnShape, Backend, Dropout, Qkv, RowStats};
use crate::model::{Batch, PickOpts};
use anyhow::{bail, ensure, Context, Result};

/// The keys and values of every position of a batch, per layer, and the positions a step
/// recomputes.
pub(super) struct KvCache<B: Backend> {
    shape: AttnShape,
    /// How many positions the current step recomputes, and their flat positions `b·seq + t`.
    rows: usize,
    idx: B::IBuf,
    key_mask: B::IBuf,
    q: B::Buf,
    k: Vec<B::Buf>,
    v: Vec<B::Buf>,
    ctx: B::Buf,
    lse: B::Buf,
}

impl<B: Backend> KvCache<B> {
    /// Attention of layer `layer` for the recomputed rows, whose queries, keys and values are
    /// `qkv` (packed, one row each); writes their outputs, packed, to `ctx`.
    pub(super) fn attend(&mut self, be: &B, layer: usize, qkv: Qkv<'_, B::Buf>, ctx: &mut B::Buf) -> Result<()> {
        let h = self.shape.hidden();
        be.scatter_rows(qkv.q, &self.idx, &mut self.q, self.rows, h)?;
        be.scatter_rows(qkv.k, &self.idx, &mut self.k[layer], self.rows, h)?;
        be.scatter_rows(qkv.v, &self.idx, &mut self.v[layer], self.rows, h)?;
        // Queries of the cached rows are stale; their outputs are computed and never read.
        be.attention_fwd(
            Qkv { q: &self.q, k: &self.k[layer], v: &self.v[layer] },
            &self.key_mask,
            &mut self.ctx,
            &mut self.lse,
            AttnCall { shape: self.shape, drop: Dropout::off(), stream: 0 },
        )?;
        be.gather_rows(&self.ctx, &self.idx, ctx, self.rows, h)
    }
}

/// The cache and the encoder workspace of the recomputed rows (one sequence of `kv.rows`).
pub(super) struct PrefixCache<B: Backend> {
    kv: KvCache<B>,
    act: Encoder<B>,
}

impl<B: Backend> XlmR<B> {
    /// `pick_many` with the prefix cache: row b of `batch` recomputes its positions from
    /// `active_from[b]` on (0: the whole row, refreshing its cache) and every scored row must be
    /// one of them. The first call for a batch shape must recompute every row whole.
    pub fn pick_many_cached(&mut self, batch: &Batch, groups: &[(&[i32], &PickOpts)], active_from: &[usize]) -> Result<Vec<RowStats>> {
        self.p.check_batch(batch)?;
        ensure!(active_from.len() == batch.batch, "cached step: {} row starts for a batch of {}", active_from.len(), batch.batch);
        ensure!(groups.iter().all(|g| g.1.cfg_scale.is_none()), "the prefix cache does not combine with classifier-free guidance");
        for (rows, _) in groups {
            check_rows(rows, batch.tokens())?;
        }
        let Some(key) = self.pick_key(batch, groups)? else { return Ok(vec![RowStats::default(); groups.len()]) };
        self.step_plan_for(key)?;
        let (pos_ids, key_mask) = self.p.positions(batch);
        let mut active = Vec::new();
        for (b, &from) in active_from.iter().enumerate() {
            let len = key_mask[b * batch.seq..(b + 1) * batch.seq].iter().filter(|&&m| m != 0).count();
            active.extend((from.min(len)..len).map(|t| (b * batch.seq + t) as i32));
        }
        let fresh = self.work.cache.as_ref().is_none_or(|c| c.kv.shape.batch != batch.batch || c.kv.shape.seq != batch.seq);
        if fresh && active_from.iter().any(|&f| f != 0) {
            bail!("cached step: a new batch shape must be computed whole first (every row from position 0)");
        }
        self.cache_for(batch, active.len())?;
        let be = &self.p.backend;
        let cache = self.work.cache.as_mut().context("no prefix cache after allocating one")?;
        let plan = self.work.step.as_mut().context("no step plan after planning one")?;
        let packed: Vec<i32> = {
            let mut at = vec![-1i32; batch.tokens()];
            for (i, &p) in active.iter().enumerate() {
                at[p as usize] = i as i32;
            }
            let mut out = Vec::new();
            for &r in groups.iter().flat_map(|g| g.0.iter()) {
                let i = at[r as usize];
                ensure!(i >= 0, "cached step: scored position {r} is not recomputed");
                out.push(i);
            }
            out
        };
        let pick = |v: &[i32]| active.iter().map(|&p| v[p as usize]).collect::<Vec<i32>>();
        be.write_i32(&mut cache.kv.idx, &active)?;
        be.write_i32(&mut cache.kv.key_mask, &key_mask)?;
        be.write_i32(&mut cache.act.ids, &pick(&batch.ids))?;
        be.write_i32(&mut cache.act.pos_ids, &pick(&pos_ids))?;
        be.write_i32(&mut cache.act.key_mask, &vec![1; active.len()])?;
        self.p.write_pick_inputs(plan, &packed, groups)?;
        let _range = nvtx::range!("cached sampling step");
        self.p.run_encoder_on(&mut cache.act, Dropout::off(), Some(&mut cache.kv))?;
        self.p.run_head(&cache.act, &mut plan.head)?;
        self.p.pick_ops(plan)?;
        self.p.read_picks(plan, groups)
    }

    /// Makes `self.work.cache` fit `batch` with `rows` recomputed rows, keeping the cached keys
    /// and values when the batch shape is unchanged.
    fn cache_for(&mut self, batch: &Batch, rows: usize) -> Result<()> {
        let p = &self.p;
        let be = &p.backend;
        let (h, layers) = (p.cfg.hidden, p.cfg.layers);
        let shape = AttnShape { batch: batch.batch, seq: batch.seq, heads: p.cfg.heads, head_dim: p.cfg.head_dim() };
        let one_row = |n: usize| Batch { ids: Vec::new(), batch: 1, seq: n.max(1) };
        match self.work.cache.as_mut() {
            Some(c) if c.kv.shape == shape => {
                if c.kv.rows != rows {
                    c.kv.rows = rows;
                    c.kv.idx = be.upload_i32(&vec![0; rows.max(1)])?;
                    c.act = p.alloc_encoder(&one_row(rows), false)?;
                }
            }
            _ => {
                self.work.cache = None;
                let n = shape.tokens();
                let kv = KvCache {
                    shape,
                    rows,
                    idx: be.upload_i32(&vec![0; rows.max(1)])?,
                    key_mask: be.upload_i32(&vec![0; n])?,
                    q: be.zeros(n * h)?,
                    k: (0..layers).map(|_| be.zeros(n * h)).collect::<Result<_>>()?,
                    v: (0..layers).map(|_| be.zeros(n * h)).collect::<Result<_>>()?,
                    ctx: be.zeros(n * h)?,
                    lse: be.zeros(shape.batch * shape.heads * shape.seq)?,
                };
                self.work.cache = Some(PrefixCache { kv, act: p.alloc_encoder(&one_row(rows), false)? });
            }
        }
        Ok(())
    }
}
