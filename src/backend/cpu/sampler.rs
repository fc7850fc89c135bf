//! The sampler's kernels' CPU twins (kernels/sampler.cu): the per-row pick over the vocabulary
//! (argmax or Gumbel-max sample, and the log-prob of the pick), and the re-masking on a batch of
//! canvases whose slots live in flat arrays, as the kernel `reparam_step` keeps them (the
//! reference is rdm::remask, run canvas by canvas).

use super::simd;
use crate::backend::contract::{records, CanvasMeta, StepMode, StepParams};
use crate::backend::{unpack_seed, ConfidenceKind, ReparamRule, RowStats};
use crate::backend::{CanvasState, Picks, VocabShape};
use crate::rdm::remask::Remask;
use crate::rdm::remask::{self, RankNoise, Slots};
use crate::rng::philox_gumbel;
use rayon::prelude::*;

/// The CPU twin of `Backend::vocab_pick`; `gumbel` is the packed `(seeds, streams)` pair of
/// `backend::pack_gumbel`.
pub fn vocab_pick(logits: &[f32], shape: VocabShape, forbid: &[i32], temperature: f32, gumbel: Option<(&[i32], &[i32])>) -> RowStats {
    let VocabShape { rows, vocab, valid } = shape;
    let noise = gumbel.map(|(seeds, streams)| move |r: usize| (unpack_seed(seeds, r), streams[r] as u32 as u64));
    let picks: Vec<(i32, f32)> = logits[..rows * vocab]
        .par_chunks(vocab)
        .enumerate()
        .map_init(Vec::new, |buf, (r, row)| {
            // The allowed logits, forbidden ids at −inf (they then add nothing and are never the max).
            buf.clear();
            buf.extend_from_slice(&row[..valid]);
            for &f in forbid {
                if let Some(x) = usize::try_from(f).ok().and_then(|f| buf.get_mut(f)) {
                    *x = f32::NEG_INFINITY;
                }
            }
            let (mx, s) = simd::max_and_sum_exp(buf);
            let lse = mx + s.ln() as f32;
            let best = match noise {
                // The first maximum, as torch.argmax; 0 when every logit is −inf.
                None => buf.iter().position(|&x| x == mx && x > f32::NEG_INFINITY).unwrap_or(0),
                Some(stream_of) => {
                    let (seed, stream) = stream_of(r);
                    let mut best = (f32::NEG_INFINITY, 0usize);
                    for (c, &x) in buf.iter().enumerate() {
                        if x == f32::NEG_INFINITY && forbid.contains(&(c as i32)) {
                            continue;
                        }
                        let key = x / temperature + philox_gumbel(seed, stream, c as u64);
                        // Strict `>` keeps the lowest id on ties.
                        if key > best.0 {
                            best = (key, c);
                        }
                    }
                    best.1
                }
            };
            (best as i32, row[best] - lse)
        })
        .collect();
    RowStats { token: picks.iter().map(|p| p.0).collect(), logprob: picks.iter().map(|p| p.1).collect(), confidence: Vec::new() }
}

/// The CPU twin of `Backend::vocab_confidence`: per row, over the allowed columns, the margin
/// p(top1) − p(top2) or the negative entropy Σ p·x − logsumexp(x) of p = softmax(row), in f64.
pub fn vocab_confidence(logits: &[f32], shape: VocabShape, forbid: &[i32], kind: ConfidenceKind) -> Vec<f32> {
    let VocabShape { rows, vocab, valid } = shape;
    logits[..rows * vocab]
        .par_chunks(vocab)
        .map(|row| {
            let allowed: Vec<f64> =
                row[..valid].iter().enumerate().filter(|(c, _)| !forbid.contains(&(*c as i32))).map(|(_, &x)| x as f64).collect();
            let m = allowed.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                return f32::NEG_INFINITY;
            }
            let s: f64 = allowed.iter().map(|x| (x - m).exp()).sum();
            let lse = m + s.ln();
            match kind {
                ConfidenceKind::Margin => {
                    let (mut t1, mut t2) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
                    for &x in &allowed {
                        if x > t1 {
                            t2 = t1;
                            t1 = x;
                        } else if x > t2 {
                            t2 = x;
                        }
                    }
                    ((t1 - lse).exp() - (t2 - lse).exp()) as f32
                }
                ConfidenceKind::Entropy => (allowed.iter().map(|x| (x - m).exp() * x).sum::<f64>() / s - lse) as f32,
            }
        })
        .collect()
}

/// The CPU twin of `Backend::cfg_combine`: rows `[0, rows)` become
/// `uncond + (scale + 1)·(cond − uncond)` with the unconditional rows `[rows, 2·rows)`.
pub fn cfg_combine(logits: &mut [f32], rows: usize, vocab: usize, scale: f32) {
    let n = rows * vocab;
    let (cond, uncond) = logits[..2 * n].split_at_mut(n);
    for (c, &u) in cond.iter_mut().zip(uncond.iter()) {
        *c = u + (scale + 1.0) * (*c - u);
    }
}

/// See `Backend::reparam_step` for the layout of `canvases` and `step`.
pub fn reparam_step(
    canvases: &[i32],
    step: &[i32],
    picks: Picks<'_, [f32], [i32]>,
    state: CanvasState<'_, [f32], [i32]>,
    ids: &mut [i32],
    rule: ReparamRule,
) {
    let Picks { token: pick_token, logprob: pick_logprob, rank } = picks;
    let CanvasState { tokens, scores, masked, left } = state;
    for (b, (c, st)) in records::<CanvasMeta>(canvases).iter().zip(records::<StepParams>(step)).enumerate() {
        let (s0, n, pos0) = (c.first as usize, c.len as usize, c.pos0 as usize);
        let w = st.window();
        let slots = s0 + w.start..s0 + w.end;
        let noise = rule.noise.then(|| RankNoise { scale: st.scale(), seed: rule.seed, stream: st.stream() });
        let ranked = remask::ranked(&rank[slots.clone()], noise);
        let mut s = Slots {
            tokens: tokens[slots.clone()].to_vec(),
            scores: scores[slots.clone()].to_vec(),
            masked: masked[slots.clone()].iter().map(|&m| m != 0).collect(),
        };
        let (tok, lp) = (&pick_token[slots.clone()], &pick_logprob[slots.clone()]);
        match st.step_mode() {
            StepMode::TopK => {
                let lowest = remask::lowest_set(&ranked, st.k as usize);
                let remask = if rule.cond { Remask::Cond } else { Remask::Uncond };
                remask::reparam_update(&mut s, tok, lp, &lowest, remask, rule.mask);
            }
            StepMode::Threshold => {
                let at = remask::threshold_commits(&s.masked, &ranked, st.cut());
                let (t, l): (Vec<i32>, Vec<f32>) = at.iter().map(|&j| (tok[j], lp[j])).unzip();
                remask::fill(&mut s, &at, &t, &l);
            }
        }
        tokens[slots.clone()].copy_from_slice(&s.tokens);
        scores[slots.clone()].copy_from_slice(&s.scores);
        for (m, &v) in masked[slots].iter_mut().zip(&s.masked) {
            *m = v as i32;
        }
        ids[pos0..pos0 + n].copy_from_slice(&tokens[s0..s0 + n]);
        left[b] = s.masked.iter().filter(|&&m| m).count() as i32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_forbids_and_reports_log_prob() {
        let l = vec![0.0, 5.0, 1.0, 100.0];
        let st = vocab_pick(&l, VocabShape { rows: 1, vocab: 4, valid: 3 }, &[1], 1.0, None);
        assert_eq!(st.token, vec![2]);
        let lse = (1.0f32 + 1.0f32.exp()).ln();
        assert!((st.logprob[0] - (1.0 - lse)).abs() < 1e-6);
    }
}
