//! Token-budget batching (fairseq `batch_by_size`, which the reference's `--batch_by_tokens` uses),
//! or a fixed number of sequences per batch (`Budget::Sequences`, the reference's instruction runs).
//!
//! - Examples are sorted by length (stable, so equal lengths keep index order) and cut greedily
//!   into batches whose *padded* size `longest × rows` stays within `max_tokens`, or into runs of
//!   N rows (the last batch of the plan may be shorter).
//! - An example longer than `max_tokens` on its own still forms a batch alone (nothing is lost;
//!   the layout's `max_len` already bounds lengths). The plan counts such batches as `oversize`,
//!   the only batches allowed to exceed the budget.
//! - The batches are fixed once; each epoch visits all of them in an order shuffled with
//!   `Rng` seeded from `(seed, epoch)`. (The reference cycles one length-sorted list without
//!   reshuffling, which docs/method.md §3.1 calls an artifact.)
//! - `BatchSampler`'s state is `(epoch, index)`: restoring it reproduces the following batches.

use super::layout::Example;
use crate::rng::Rng;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;

/// A right-padded batch of token ids, `batch × seq`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub ids: Vec<i32>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    /// Pads `rows` on the right with `pad` to the longest row.
    pub fn from_rows(rows: &[Vec<i32>], pad: i32) -> Self {
        let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * seq);
        for r in rows {
            ids.extend_from_slice(r);
            ids.extend(std::iter::repeat_n(pad, seq - r.len()));
        }
        Batch { ids, batch: rows.len(), seq }
    }

    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}

/// The rows (flat `b·seq + t` positions) that take part in the loss, their target ids and weights.
/// The model returns `Σ_r weight_r · CE_r`, so the caller's weights carry every normalisation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossRows {
    pub rows: Vec<i32>,
    pub targets: Vec<i32>,
    pub weights: Vec<f32>,
}

/// Tag for the batch-order RNG streams ("BTCH"), so they never coincide with the small stream
/// numbers other parts of the engine draw from with the same seed.
const BATCH_ORDER_STREAM: u64 = 0x4254_4348 << 32;

/// How big a micro-batch may be (before the coupled doubling).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Budget {
    /// Padded tokens: `longest × rows ≤ n` (a single longer example still forms a batch).
    Tokens(usize),
    /// Rows: exactly `n` sequences.
    Sequences(usize),
}

impl Budget {
    /// Whether a batch of `rows` rows whose longest has `longest` tokens fits.
    pub fn admits(self, longest: usize, rows: usize) -> bool {
        match self {
            Budget::Tokens(n) => longest * rows <= n,
            Budget::Sequences(n) => rows <= n,
        }
    }

    fn check(self) -> Result<()> {
        match self {
            Budget::Tokens(0) => bail!("the token budget per batch must be positive"),
            Budget::Sequences(0) => bail!("the batch size must be at least one sequence"),
            _ => Ok(()),
        }
    }
}

/// Batches as lists of example indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchPlan {
    pub batches: Vec<Vec<usize>>,
    /// Batches made of one example longer than `max_tokens`.
    pub oversize: usize,
}

/// Sorts by length and chunks greedily under `longest × rows ≤ max_tokens`.
pub fn plan_batches(lengths: &[usize], max_tokens: usize) -> BatchPlan {
    plan_batches_with(lengths, Budget::Tokens(max_tokens))
}

/// Sorts by length and chunks greedily while the budget admits the batch.
pub fn plan_batches_with(lengths: &[usize], budget: Budget) -> BatchPlan {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut plan = BatchPlan { batches: Vec::new(), oversize: 0 };
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Ascending order: the newcomer is the longest of the batch.
        if !current.is_empty() && !budget.admits(lengths[i], current.len() + 1) {
            plan.batches.push(std::mem::take(&mut current));
        }
        if current.is_empty() && !budget.admits(lengths[i], 1) {
            plan.oversize += 1;
        }
        current.push(i);
    }
    if !current.is_empty() {
        plan.batches.push(current);
    }
    plan
}

/// Where a `BatchSampler` stands: the next batch is number `index` of epoch `epoch`'s order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub epoch: u64,
    pub index: usize,
}

/// Cycles the batches of a plan forever, reshuffling their order every epoch.
#[derive(Clone, Debug)]
pub struct BatchSampler {
    plan: BatchPlan,
    seed: u64,
    state: SamplerState,
    /// The batch order of `state.epoch` (recomputed when the epoch changes).
    order: Vec<usize>,
}

impl BatchSampler {
    pub fn new(lengths: &[usize], max_tokens: usize, seed: u64) -> Result<Self> {
        Self::with_budget(lengths, Budget::Tokens(max_tokens), seed)
    }

    pub fn with_budget(lengths: &[usize], budget: Budget, seed: u64) -> Result<Self> {
        if lengths.is_empty() {
            bail!("no training examples to batch");
        }
        budget.check()?;
        let plan = plan_batches_with(lengths, budget);
        let order = epoch_order(plan.batches.len(), seed, 0);
        Ok(BatchSampler { plan, seed, state: SamplerState::default(), order })
    }

    pub fn plan(&self) -> &BatchPlan {
        &self.plan
    }

    pub fn num_batches(&self) -> usize {
        self.plan.batches.len()
    }

    pub fn state(&self) -> SamplerState {
        self.state
    }

    /// Continues from a saved state (the plan must come from the same data and budget).
    pub fn restore(&mut self, state: SamplerState) -> Result<()> {
        if state.index > self.num_batches() {
            bail!(
                "sampler state index {} is beyond the {} batches of an epoch: the data or the token budget changed",
                state.index,
                self.num_batches()
            );
        }
        self.order = epoch_order(self.num_batches(), self.seed, state.epoch);
        self.state = state;
        Ok(())
    }

    /// The batch order of one epoch, as indices into `plan().batches`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        epoch_order(self.num_batches(), self.seed, epoch)
    }

    /// The next batch (example indices); rolls over into the next epoch when one ends.
    pub fn next_batch(&mut self) -> &[usize] {
        if self.state.index >= self.num_batches() {
            self.state = SamplerState { epoch: self.state.epoch + 1, index: 0 };
            self.order = epoch_order(self.num_batches(), self.seed, self.state.epoch);
        }
        let b = self.order[self.state.index];
        self.state.index += 1;
        &self.plan.batches[b]
    }
}

fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed, BATCH_ORDER_STREAM ^ epoch).shuffle(&mut order);
    order
}

/// Examples together with their sampler: what a training loop pulls batches from.
#[derive(Clone, Debug)]
pub struct ExampleBatches {
    examples: Vec<Example>,
    sampler: BatchSampler,
}

impl ExampleBatches {
    pub fn new(examples: Vec<Example>, max_tokens: usize, seed: u64) -> Result<Self> {
        Self::with_budget(examples, Budget::Tokens(max_tokens), seed)
    }

    pub fn with_budget(examples: Vec<Example>, budget: Budget, seed: u64) -> Result<Self> {
        let lengths: Vec<usize> = examples.iter().map(Example::len).collect();
        let sampler = BatchSampler::with_budget(&lengths, budget, seed)?;
        Ok(ExampleBatches { examples, sampler })
    }

    pub fn examples(&self) -> &[Example] {
        &self.examples
    }

    pub fn sampler(&self) -> &BatchSampler {
        &self.sampler
    }

    /// The next batch's examples (copied, in the plan's length order).
    pub fn next_batch(&mut self) -> Vec<Example> {
        let idx = self.sampler.next_batch();
        idx.iter().map(|&i| self.examples[i].clone()).collect()
    }

    pub fn state(&self) -> SamplerState {
        self.sampler.state()
    }

    pub fn restore(&mut self, state: SamplerState) -> Result<()> {
        self.sampler.restore(state)
    }
}

/// Right-pads examples into a `Batch`; also returns each row's fixed-prefix length.
pub fn pad_batch<E: Borrow<Example>>(rows: &[E], pad_id: i32) -> (Batch, Vec<usize>) {
    let ids: Vec<Vec<i32>> = rows.iter().map(|e| e.borrow().ids.clone()).collect();
    let src_lens = rows.iter().map(|e| e.borrow().src_len).collect();
    (Batch::from_rows(&ids, pad_id), src_lens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_chunks_on_a_hand_case() {
        // Sorted (ties by index): idx 1 (2), 0 (3), 3 (3), 4 (5), 2 (9). Budget 10:
        // [1] 2x1; +0 -> 3x2=6 ok; +3 -> 3x3=9 ok; +4 -> 5x4=20 no -> new [4] 5; +2 -> 9x2=18 no -> [2].
        let plan = plan_batches(&[3, 2, 9, 3, 5], 10);
        assert_eq!(plan.batches, vec![vec![1, 0, 3], vec![4], vec![2]]);
        assert_eq!(plan.oversize, 0);
    }

    #[test]
    fn sequence_budget_cuts_length_sorted_runs_of_n() {
        // Sorted: 1 (2), 0 (3), 3 (3), 4 (5), 2 (9); runs of 2, the last one shorter.
        let plan = plan_batches_with(&[3, 2, 9, 3, 5], Budget::Sequences(2));
        assert_eq!(plan.batches, vec![vec![1, 0], vec![3, 4], vec![2]]);
        assert_eq!(plan.oversize, 0);
        assert!(BatchSampler::with_budget(&[3], Budget::Sequences(0), 0).is_err());
    }

    #[test]
    fn single_long_example_forms_its_own_batch() {
        let plan = plan_batches(&[4, 30, 4], 10);
        assert_eq!(plan.batches, vec![vec![0, 2], vec![1]]);
        assert_eq!(plan.oversize, 1);
    }

    #[test]
    fn pad_batch_pads_right_and_reports_src_lens() {
        let a = Example { ids: vec![0, 5, 6, 2], src_len: 2 };
        let b = Example { ids: vec![0, 7, 2], src_len: 1 };
        let (batch, src) = pad_batch(&[&a, &b], 1);
        assert_eq!((batch.batch, batch.seq), (2, 4));
        assert_eq!(batch.ids, vec![0, 5, 6, 2, 0, 7, 2, 1]);
        assert_eq!(src, vec![2, 1]);
    }

    #[test]
    fn epoch_orders_differ_and_are_permutations() {
        let lens: Vec<usize> = (0..200).map(|i| 1 + i % 17).collect();
        let s = BatchSampler::new(&lens, 20, 42).unwrap();
        let (a, b) = (s.epoch_order(0), s.epoch_order(1));
        assert_ne!(a, b);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..s.num_batches()).collect::<Vec<_>>());
    }

    #[test]
    fn rejects_empty_data_and_zero_budget() {
        assert!(BatchSampler::new(&[], 10, 0).is_err());
        assert!(BatchSampler::new(&[3], 0, 0).is_err());
    }
}
