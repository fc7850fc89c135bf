//! The sampler's re-masking on a batch of canvases whose slots live in flat arrays, as the CUDA
//! kernel `reparam_step` (kernels/sampler.cu) keeps them: the reference is diffusion::step, run
//! canvas by canvas.

use crate::backend::contract::{records, CanvasMeta, StepParams};
use crate::backend::ReparamRule;
use crate::rdm::remask::Remask;
use crate::rdm::remask::{self, RankNoise, Slots};

/// See `Backend::reparam_step` for the layout of `canvases` and `step`.
#[allow(clippy::too_many_arguments)]
pub fn reparam_step(
    canvases: &[i32],
    step: &[i32],
    pick_token: &[i32],
    pick_logprob: &[f32],
    tokens: &mut [i32],
    scores: &mut [f32],
    masked: &mut [i32],
    ids: &mut [i32],
    rule: ReparamRule,
) {
    for (c, st) in records::<CanvasMeta>(canvases).iter().zip(records::<StepParams>(step)) {
        let (s0, n, pos0) = (c.first as usize, c.len as usize, c.pos0 as usize);
        let slots = s0..s0 + n;
        let noise = rule.noise.then(|| RankNoise { scale: st.scale(), seed: rule.seed, stream: st.stream() });
        let lowest = remask::lowest_set(&remask::ranked(&pick_logprob[slots.clone()], noise), st.k as usize);
        let mut s = Slots {
            tokens: tokens[slots.clone()].to_vec(),
            scores: scores[slots.clone()].to_vec(),
            masked: masked[slots.clone()].iter().map(|&m| m != 0).collect(),
        };
        let remask = if rule.cond { Remask::Cond } else { Remask::Uncond };
        remask::reparam_update(&mut s, &pick_token[slots.clone()], &pick_logprob[slots.clone()], &lowest, remask, rule.mask);
        tokens[slots.clone()].copy_from_slice(&s.tokens);
        scores[slots.clone()].copy_from_slice(&s.scores);
        for (m, &v) in masked[slots].iter_mut().zip(&s.masked) {
            *m = v as i32;
        }
        ids[pos0..pos0 + n].copy_from_slice(&s.tokens);
    }
}
