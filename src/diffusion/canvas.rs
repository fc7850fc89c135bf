//! One canvas of the host decoding loop: its target slots, the blocks they are decoded in, and
//! what one step scores and commits. The batch loop around it is `sampler`.
//!
//! Blocks (`--block-length N`, LLaDA's semi-autoregressive decoding): the target slots are cut
//! into blocks of N, decoded left to right; a block is decoded like a whole target of its own
//! (the top-k schedule over its share of the K steps, or a threshold run until it has no mask)
//! while the later blocks stay `<mask>` in the canvas. Without blocks the target is one block
//! of K steps: the paper's sampler.

use super::sampler::{stream, SamplerConfig, SpecialIds, CMLM_DRAW, RANDOM_CONFIDENCE, RANK_NOISE};
use super::strategy::{stay_masked, Confidence, Strategy};
use crate::backend::contract::StepParams;
use crate::rdm::remask::{self, RankNoise, Slots};
use crate::rng::philox_uniform;
use std::ops::Range;

/// A block of target slots and the steps it gets (unused by `threshold`, which runs until the
/// block is filled).
#[derive(Clone, Debug, PartialEq)]
struct Block {
    slots: Range<usize>,
    steps: usize,
}

pub(super) struct Canvas<'a> {
    pub example: usize,
    pub prompt: &'a [i32],
    pub slots: Slots,
    pub history: Option<Vec<Vec<i32>>>,
    blocks: Vec<Block>,
    /// The block being decoded (`blocks.len()` once done) and the steps it has taken.
    block: usize,
    taken: usize,
    /// Forward passes this canvas has taken part in.
    pub nfe: usize,
    mask: i32,
}

/// The target's blocks: `ceil(len / block_length)` blocks sharing K steps as evenly as possible
/// (the earlier blocks get the remainder), at least one step each. An empty target is one empty
/// block of K steps (as the paper's loop runs), except for `threshold`, which has nothing to do.
fn blocks(len: usize, cfg: &SamplerConfig) -> Vec<Block> {
    if len == 0 {
        return match cfg.strategy {
            Strategy::Threshold => Vec::new(),
            _ => vec![Block { slots: 0..0, steps: cfg.steps }],
        };
    }
    let width = cfg.block_length.unwrap_or(len).min(len);
    let n = len.div_ceil(width);
    (0..n)
        .map(|i| Block { slots: i * width..((i + 1) * width).min(len), steps: (cfg.steps / n + usize::from(i < cfg.steps % n)).max(1) })
        .collect()
}

impl<'a> Canvas<'a> {
    pub fn new(example: usize, prompt: &'a [i32], len: usize, special: SpecialIds, cfg: &SamplerConfig) -> Self {
        Canvas {
            example,
            prompt,
            slots: Slots::all_masked(len, special.mask),
            history: cfg.record_steps.then(Vec::new),
            blocks: blocks(len, cfg),
            block: 0,
            taken: 0,
            nfe: 0,
            mask: special.mask,
        }
    }

    pub fn done(&self) -> bool {
        self.block >= self.blocks.len()
    }

    /// Whether the next step is the first of a block (the prefix cache refreshes then).
    pub fn at_block_start(&self) -> bool {
        self.taken == 0
    }

    /// The first target slot of the current block.
    pub fn block_start(&self) -> usize {
        self.blocks.get(self.block).map_or(self.slots.len(), |b| b.slots.start)
    }

    /// `[<s>] prompt slots </s>`.
    pub fn row(&self, special: SpecialIds) -> Vec<i32> {
        let mut r = Vec::with_capacity(self.prompt.len() + self.slots.len() + 1);
        r.extend_from_slice(self.prompt);
        r.extend_from_slice(&self.slots.tokens);
        r.push(special.eos);
        r
    }

    /// The row with the prompt masked (after `<s>`): classifier-free guidance's unconditional input.
    pub fn unconditional_row(&self, special: SpecialIds) -> Vec<i32> {
        let mut r = self.row(special);
        r[1..self.prompt.len()].fill(special.mask);
        r
    }

    /// The target slots step `s` scores (nothing once done).
    pub fn plan(&self, cfg: &SamplerConfig, s: usize) -> Vec<usize> {
        let Some(b) = self.blocks.get(self.block) else { return Vec::new() };
        match cfg.strategy {
            // The rules read the block's slots (the top-k ranks all of them, decoded ones
            // included). Every slot is scored, as the device-resident decode does, so both pick
            // the same rows with the same noise, and a step's shape (its workspace) never
            // changes; with the cache only the recomputed slots can be, from the block on.
            Strategy::Reparam { .. } | Strategy::Threshold => {
                let from = if cfg.cache { b.slots.start } else { 0 };
                (from..self.slots.len()).collect()
            }
            Strategy::Cmlm => {
                let p = (1.0 / (b.steps - self.taken) as f64) as f32;
                let st = stream(CMLM_DRAW, self.example, s);
                b.slots.clone().filter(|&j| self.slots.masked[j] && philox_uniform(cfg.seed, st, j as u64) < p).collect()
            }
            Strategy::Ar => b.slots.clone().find(|&j| self.slots.masked[j]).into_iter().collect(),
        }
    }

    /// Applies step `s`'s picks at the planned slots: tokens, their log-probs and the ranked
    /// confidence (the log-prob itself for `Confidence::Prob`; drawn here for `Random`).
    pub fn apply(&mut self, plan: &[usize], tok: &[i32], logprob: &[f32], confidence: &[f32], cfg: &SamplerConfig, s: usize) {
        let Some(b) = self.blocks.get(self.block).cloned() else { return };
        let conf: Vec<f32> = match cfg.confidence {
            Confidence::Prob => logprob.to_vec(),
            Confidence::Random => {
                let st = stream(RANDOM_CONFIDENCE, self.example, s);
                plan.iter().map(|&j| philox_uniform(cfg.seed, st, j as u64)).collect()
            }
            Confidence::Margin | Confidence::Entropy => confidence.to_vec(),
        };
        // The top-k and threshold rules work on the block, which the plan (a run of slots) holds.
        let (tok, logprob, conf, plan) = match cfg.strategy {
            Strategy::Reparam { .. } | Strategy::Threshold => {
                let p0 = plan.first().copied().unwrap_or(b.slots.start);
                let at = b.slots.start - p0..b.slots.end - p0;
                (&tok[at.clone()], &logprob[at.clone()], conf[at.clone()].to_vec(), &plan[at])
            }
            _ => (tok, logprob, conf, plan),
        };
        match cfg.strategy {
            Strategy::Reparam { remask, .. } => {
                // The plan is the whole block, in order.
                let (k, noise) = self.top_k(&b, cfg, s);
                let lowest = remask::lowest_set(&remask::ranked(&conf, noise), k);
                let mut sub = Slots {
                    tokens: self.slots.tokens[b.slots.clone()].to_vec(),
                    scores: self.slots.scores[b.slots.clone()].to_vec(),
                    masked: self.slots.masked[b.slots.clone()].to_vec(),
                };
                remask::reparam_update(&mut sub, tok, logprob, &lowest, remask, self.mask);
                self.slots.tokens[b.slots.clone()].copy_from_slice(&sub.tokens);
                self.slots.scores[b.slots.clone()].copy_from_slice(&sub.scores);
                self.slots.masked[b.slots.clone()].copy_from_slice(&sub.masked);
            }
            Strategy::Threshold => {
                let masked: Vec<bool> = plan.iter().map(|&j| self.slots.masked[j]).collect();
                let at: Vec<usize> = remask::threshold_commits(&masked, &conf, cfg.confidence.threshold_cut(cfg.threshold));
                let slots: Vec<usize> = at.iter().map(|&i| plan[i]).collect();
                let (t, l): (Vec<i32>, Vec<f32>) = at.iter().map(|&i| (tok[i], logprob[i])).unzip();
                remask::fill(&mut self.slots, &slots, &t, &l);
            }
            Strategy::Cmlm | Strategy::Ar => remask::fill(&mut self.slots, plan, tok, logprob),
        }
        let block_has_mask = self.slots.masked[b.slots].iter().any(|&m| m);
        self.advance(cfg, block_has_mask);
    }

    /// The top-k step's inputs in block `b` at step `s`: how many slots may stay masked, and the
    /// `stochastic<c>` ranking noise (scale `f32(c·rate)`).
    fn top_k(&self, b: &Block, cfg: &SamplerConfig, s: usize) -> (usize, Option<RankNoise>) {
        let Strategy::Reparam { noise_scale, schedule, .. } = cfg.strategy else { return (0, None) };
        let rate = schedule.rate(self.taken + 1, b.steps);
        let noise =
            noise_scale.map(|c| RankNoise { scale: (c * rate) as f32, seed: cfg.seed, stream: stream(RANK_NOISE, self.example, s) });
        (stay_masked(b.slots.len(), rate), noise)
    }

    /// Step `s` of a device-resident decode (the reparam and threshold strategies): the window
    /// and the rule `Backend::reparam_step` applies. A finished canvas gets an empty window.
    pub fn device_step(&self, cfg: &SamplerConfig, s: usize) -> StepParams {
        let n = self.slots.len();
        let Some(b) = self.blocks.get(self.block) else { return StepParams::top_k(0, 0, 0.0, n..n) };
        match cfg.strategy {
            Strategy::Threshold => StepParams::threshold(cfg.confidence.threshold_cut(cfg.threshold), b.slots.clone()),
            _ => {
                let (k, noise) = self.top_k(b, cfg, s);
                StepParams::top_k(k, noise.map_or(0, |n| n.stream), noise.map_or(0.0, |n| n.scale), b.slots.clone())
            }
        }
    }

    /// Counts the step and moves to the next block when this one is finished: after its steps
    /// (top-k, `cmlm`, `ar`), or once it has no mask left (`threshold`).
    pub fn advance(&mut self, cfg: &SamplerConfig, block_has_mask: bool) {
        self.nfe += 1;
        self.taken += 1;
        if let Some(h) = self.history.as_mut() {
            h.push(self.slots.tokens.clone());
        }
        let finished = match cfg.strategy {
            Strategy::Threshold => !block_has_mask,
            _ => self.taken >= self.blocks[self.block].steps,
        };
        if finished {
            self.block += 1;
            self.taken = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(strategy: &str, steps: usize, block_length: Option<usize>) -> SamplerConfig {
        SamplerConfig { steps, strategy: strategy.parse().unwrap(), block_length, ..SamplerConfig::default() }
    }

    #[test]
    fn blocks_split_the_target_and_share_the_steps() {
        let b = blocks(10, &cfg("reparam-uncond-deterministic-cosine", 7, Some(4)));
        assert_eq!(b.iter().map(|b| b.slots.clone()).collect::<Vec<_>>(), [0..4, 4..8, 8..10]);
        assert_eq!(b.iter().map(|b| b.steps).collect::<Vec<_>>(), [3, 2, 2]);
        // Fewer steps than blocks: one step each.
        assert_eq!(blocks(10, &cfg("cmlm", 2, Some(3))).iter().map(|b| b.steps).collect::<Vec<_>>(), [1, 1, 1, 1]);
        // No blocks, or a block longer than the target: one block of K steps.
        assert_eq!(blocks(5, &cfg("ar", 9, None)), [Block { slots: 0..5, steps: 9 }]);
        assert_eq!(blocks(5, &cfg("ar", 9, Some(64))), [Block { slots: 0..5, steps: 9 }]);
        assert_eq!(blocks(0, &cfg("cmlm", 4, Some(2))), [Block { slots: 0..0, steps: 4 }]);
        assert!(blocks(0, &cfg("threshold", 4, None)).is_empty());
    }
}
