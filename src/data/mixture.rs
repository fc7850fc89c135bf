//! Ratio mixtures of training sources, the way the reference builds its Flan 2022 batches
//! (docs/method.md §5): each *sequence* first picks a source from a categorical distribution over
//! the sources' weights, then takes that source's next example.
//!
//! - Weights are normalised, so `7:3` and `0.7:0.3` are the same mixture.
//! - The pick is one `uniform_f64` draw of the mixture's own Philox stream per sequence, compared
//!   with the cumulative weights.
//! - Each source is read in passes: a pass visits every example of the source once, in an order
//!   shuffled from `(seed, source, pass)`; when a pass ends the next one starts with a new order.
//!   A small source is therefore repeated as often as its weight asks, a large one may never be
//!   finished.
//! - Batches are cut from the stream of picked examples: `Budget::Sequences(n)` takes n of them;
//!   `Budget::Tokens(n)` takes them while the padded size `longest × rows` stays within n (the
//!   first example of a batch is always taken). The example that does not fit is not lost: the
//!   draw is undone, and the next batch draws it again.
//! - The whole position is `MixtureState` (the RNG counter and a `(pass, index)` cursor per source):
//!   saved in checkpoints, it makes a resumed run pick exactly the examples the uninterrupted run
//!   would have picked.

use super::batch::Budget;
use super::layout::Example;
use crate::rng::Rng;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Tag of the mixture's RNG streams ("MIX"), apart from the other streams of the same seed.
const MIX_STREAM: u64 = 0x004D_4958 << 40;

/// One source of a mixture: its examples and its (unnormalised, positive) weight.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub examples: Vec<Example>,
    pub weight: f64,
}

/// Where a source stands: the next example is number `index` of pass `pass`'s order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub pass: u64,
    pub index: usize,
}

/// The whole position of a mixture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixtureState {
    /// The stream the per-sequence source picks are drawn from.
    pub rng: Rng,
    /// One cursor per source, in source order.
    pub cursors: Vec<Cursor>,
}

/// Sources sampled by ratio, cut into batches.
#[derive(Clone, Debug)]
pub struct Mixture {
    sources: Vec<Source>,
    /// Cumulative normalised weights; the last is 1.
    cumulative: Vec<f64>,
    seed: u64,
    budget: Budget,
    state: MixtureState,
    /// The shuffled order of each source's current pass, tagged with that pass.
    orders: Vec<(u64, Vec<usize>)>,
}

impl Mixture {
    pub fn new(sources: Vec<Source>, budget: Budget, seed: u64) -> Result<Self> {
        if sources.is_empty() {
            bail!("a mixture needs at least one source");
        }
        for s in &sources {
            if !(s.weight.is_finite() && s.weight > 0.0) {
                bail!("{}: the ratio must be a positive number, got {}", s.name, s.weight);
            }
            if s.examples.is_empty() {
                bail!("{}: no usable training examples to sample from", s.name);
            }
        }
        if let Budget::Tokens(0) | Budget::Sequences(0) = budget {
            bail!("the batch budget must be positive");
        }
        let total: f64 = sources.iter().map(|s| s.weight).sum();
        let mut acc = 0.0;
        let mut cumulative: Vec<f64> = sources
            .iter()
            .map(|s| {
                acc += s.weight / total;
                acc
            })
            .collect();
        *cumulative.last_mut().expect("non-empty") = 1.0;
        let state = MixtureState { rng: Rng::new(seed, MIX_STREAM), cursors: vec![Cursor::default(); sources.len()] };
        let orders = (0..sources.len()).map(|i| (0, pass_order(sources[i].examples.len(), seed, i, 0))).collect();
        Ok(Mixture { sources, cumulative, seed, budget, state, orders })
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Each source's share of the picks (the normalised weights).
    pub fn ratios(&self) -> Vec<f64> {
        let mut prev = 0.0;
        self.cumulative
            .iter()
            .map(|&c| {
                let r = c - prev;
                prev = c;
                r
            })
            .collect()
    }

    pub fn state(&self) -> &MixtureState {
        &self.state
    }

    /// Continues from a saved state (the sources must be the same files with the same examples).
    /// The pick stream continues as saved, with its own seed, even when the run's seed or the
    /// ratios were changed (`--allow-changes`).
    pub fn restore(&mut self, state: MixtureState) -> Result<()> {
        if state.cursors.len() != self.sources.len() {
            bail!(
                "the saved data position has {} source(s) but this run has {}: the --train files changed",
                state.cursors.len(),
                self.sources.len()
            );
        }
        for (c, s) in state.cursors.iter().zip(&self.sources) {
            if c.index > s.examples.len() {
                bail!("{}: the saved position (example {}) is beyond its {} examples: the data changed", s.name, c.index, s.examples.len());
            }
        }
        self.state = state;
        Ok(())
    }

    /// Examples taken from each source so far (over the whole run, a resumed one included).
    pub fn used(&self) -> Vec<u64> {
        self.state.cursors.iter().zip(&self.sources).map(|(c, s)| c.pass * s.examples.len() as u64 + c.index as u64).collect()
    }

    /// Picks a source and takes its next example, advancing the state.
    fn draw(&mut self) -> (usize, usize) {
        let u = self.state.rng.uniform_f64();
        let src = self.cumulative.iter().position(|&c| u < c).unwrap_or(self.sources.len() - 1);
        let n = self.sources[src].examples.len();
        let cursor = &mut self.state.cursors[src];
        if cursor.index >= n {
            *cursor = Cursor { pass: cursor.pass + 1, index: 0 };
        }
        let (pass, index) = (cursor.pass, cursor.index);
        cursor.index += 1;
        if self.orders[src].0 != pass {
            self.orders[src] = (pass, pass_order(n, self.seed, src, pass));
        }
        (src, self.orders[src].1[index])
    }

    /// The next batch (copied examples, in the order they were picked).
    pub fn next_batch(&mut self) -> Vec<Example> {
        let mut rows: Vec<Example> = Vec::new();
        let mut longest = 0;
        loop {
            let saved = self.state.clone();
            let (src, i) = self.draw();
            let len = self.sources[src].examples[i].len();
            if !rows.is_empty() && !self.budget.admits(longest.max(len), rows.len() + 1) {
                // Undo the draw: the next batch starts with this very pick.
                self.state = saved;
                return rows;
            }
            longest = longest.max(len);
            rows.push(self.sources[src].examples[i].clone());
            if let Budget::Sequences(n) = self.budget {
                if rows.len() == n {
                    return rows;
                }
            }
        }
    }
}

fn pass_order(n: usize, seed: u64, source: usize, pass: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let stream = MIX_STREAM ^ (1 << 39) ^ ((source as u64) << 24) ^ pass;
    Rng::new(seed, stream).shuffle(&mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Source `s`'s example `i` is `[s, i]` repeated to length `len`.
    fn source(s: i32, n: usize, len: usize, weight: f64) -> Source {
        let examples = (0..n as i32).map(|i| Example { ids: [s, i].iter().copied().cycle().take(len).collect(), src_len: 1 }).collect();
        Source { name: format!("s{s}"), examples, weight }
    }

    #[test]
    fn weights_are_normalised_and_checked() {
        let m = Mixture::new(vec![source(0, 3, 2, 7.0), source(1, 3, 2, 3.0)], Budget::Sequences(2), 1).unwrap();
        let r = m.ratios();
        assert!((r[0] - 0.7).abs() < 1e-12 && (r[1] - 0.3).abs() < 1e-12, "{r:?}");
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = Mixture::new(vec![source(0, 3, 2, bad)], Budget::Sequences(2), 1).unwrap_err().to_string();
            assert!(e.contains("s0") && e.contains("positive"), "{e}");
        }
        let e = Mixture::new(vec![source(0, 0, 2, 1.0)], Budget::Sequences(2), 1).unwrap_err().to_string();
        assert!(e.contains("s0") && e.contains("no usable"), "{e}");
    }

    #[test]
    fn each_pass_visits_every_example_once_in_a_new_order() {
        // One source: the stream is its passes one after the other.
        let mut m = Mixture::new(vec![source(0, 7, 2, 1.0)], Budget::Sequences(7), 3).unwrap();
        let a: Vec<i32> = m.next_batch().iter().map(|e| e.ids[1]).collect();
        let b: Vec<i32> = m.next_batch().iter().map(|e| e.ids[1]).collect();
        let sorted = |v: &[i32]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        assert_eq!(sorted(&a), (0..7).collect::<Vec<_>>());
        assert_eq!(sorted(&b), (0..7).collect::<Vec<_>>());
        assert_ne!(a, b, "the second pass is reshuffled");
        assert_eq!(m.used(), [14]);
        assert_eq!(m.state().cursors[0], Cursor { pass: 1, index: 7 });
    }

    #[test]
    fn token_budget_batches_fit_and_lose_no_pick() {
        // Lengths 3 and 8 mixed; budget 16 admits 5 short rows, 2 long ones, or 2 mixed.
        let mk = || Mixture::new(vec![source(0, 50, 3, 1.0), source(1, 50, 8, 1.0)], Budget::Tokens(16), 9).unwrap();
        let mut m = mk();
        let batches: Vec<Vec<Example>> = (0..40).map(|_| m.next_batch()).collect();
        for b in &batches {
            let longest = b.iter().map(Example::len).max().unwrap();
            assert!(longest * b.len() <= 16, "{b:?}");
            // Full: one more row of the next batch's first length would not fit (greedy cut).
        }
        for w in batches.windows(2) {
            let longest = w[0].iter().chain(&w[1][..1]).map(Example::len).max().unwrap();
            assert!(longest * (w[0].len() + 1) > 16, "a batch was cut early");
        }
        // The same picks as a sequence stream: nothing skipped, nothing repeated.
        let flat: Vec<Example> = batches.concat();
        let mut one = Mixture::new(vec![source(0, 50, 3, 1.0), source(1, 50, 8, 1.0)], Budget::Sequences(1), 9).unwrap();
        let singles: Vec<Example> = (0..flat.len()).flat_map(|_| one.next_batch()).collect();
        assert_eq!(flat, singles);
        assert_eq!(m.used().iter().sum::<u64>(), flat.len() as u64);
    }

    #[test]
    fn restored_state_continues_exactly() {
        let mk = || Mixture::new(vec![source(0, 5, 3, 0.2), source(1, 9, 4, 0.8)], Budget::Tokens(13), 4).unwrap();
        let mut a = mk();
        for _ in 0..17 {
            a.next_batch();
        }
        let saved = serde_json::to_value(a.state()).unwrap();
        let cont: Vec<Vec<Example>> = (0..30).map(|_| a.next_batch()).collect();
        let mut b = mk();
        b.restore(serde_json::from_value(saved.clone()).unwrap()).unwrap();
        let replay: Vec<Vec<Example>> = (0..30).map(|_| b.next_batch()).collect();
        assert_eq!(cont, replay);
        // A position that does not fit the sources is refused.
        let mut bad: MixtureState = serde_json::from_value(saved).unwrap();
        bad.cursors.pop();
        assert!(mk().restore(bad).unwrap_err().to_string().contains("source(s)"));
    }
}
