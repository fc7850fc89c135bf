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
            // The ranking needs the current confidence at every slot of the block, decoded ones
            // included; the threshold rule reads only the masked ones, but scoring the whole
            // block keeps the step's shape, and so its workspace, the same within the block.
            Strategy::Reparam { .. } | Strategy::Threshold => b.slots.clone().collect(),
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
        match cfg.strategy {
            Strategy::Reparam { remask, noise_scale, schedule } => {
                // The plan is the whole block, in order.
                let rate = schedule.rate(self.taken + 1, b.steps);
                let k = stay_masked(b.slots.len(), rate);
                let noise = noise_scale.map(|c| RankNoise {
                    scale: (c * rate) as f32,
                    seed: cfg.seed,
                    stream: stream(RANK_NOISE, self.example, s),
                });
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
                let p: Vec<f32> = conf.iter().map(|&v| cfg.confidence.as_probability(v)).collect();
                let at: Vec<usize> = remask::threshold_commits(&masked, &p, cfg.threshold);
                let slots: Vec<usize> = at.iter().map(|&i| plan[i]).collect();
                let (t, l): (Vec<i32>, Vec<f32>) = at.iter().map(|&i| (tok[i], logprob[i])).unzip();
                remask::fill(&mut self.slots, &slots, &t, &l);
            }
            Strategy::Cmlm | Strategy::Ar => remask::fill(&mut self.slots, plan, tok, logprob),
        }
        self.advance(cfg);
    }

    /// Counts the step and moves to the next block when this one is finished: after its steps
    /// (top-k, `cmlm`, `ar`), or once it has no mask left (`threshold`).
    fn advance(&mut self, cfg: &SamplerConfig) {
        self.nfe += 1;
        self.taken += 1;
        if let Some(h) = self.history.as_mut() {
            h.push(self.slots.tokens.clone());
        }
        let b = &self.blocks[self.block];
        let finished = match cfg.strategy {
            Strategy::Threshold => !self.slots.masked[b.slots.clone()].iter().any(|&m| m),
            _ => self.taken >= b.steps,
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
