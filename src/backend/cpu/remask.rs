//! The sampler's re-masking on a batch of canvases whose slots live in flat arrays, as the CUDA
//! kernel `reparam_step` (kernels/sampler.cu) keeps them: the reference is diffusion::step, run
//! canvas by canvas.

use crate::backend::{unpack_seed, ReparamRule};
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
    for (c, st) in canvases.chunks_exact(3).zip(step.chunks_exact(4)) {
        let (s0, n, pos0) = (c[0] as usize, c[1] as usize, c[2] as usize);
        let slots = s0..s0 + n;
        let noise =
            rule.noise.then(|| RankNoise { scale: f32::from_bits(st[3] as u32), seed: rule.seed, stream: unpack_seed(&st[1..3], 0) });
        let lowest = remask::lowest_set(&remask::ranked(&pick_logprob[slots.clone()], noise), st[0] as usize);
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
