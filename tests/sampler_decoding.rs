//! The decoders beyond the paper on fixed logits (the mock denoiser): the threshold strategy's
//! commit counts and early stop, what each confidence ranks, block order, the guidance
//! combination, the prefix cache's refresh points, and batched output equal to one at a time.

mod sampler_mock;

use dlm_engine::diffusion::{generate, Confidence, Generated, SamplerConfig, SpecialIds};
use dlm_engine::rng::philox_uniform;
use sampler_mock::{LogitsFn, TableDenoiser};

const V: usize = 20;
const SPECIAL: SpecialIds = SpecialIds { bos: 0, pad: 1, eos: 2, mask: 19 };
const MASK: i32 = 19;

/// A row whose pick is `id` with probability ≈ `p` (the rest spread evenly over the other ids).
fn peaked(id: usize, p: f32) -> Vec<f32> {
    let rest = (1.0 - p) / (V - 2) as f32; // <mask> takes no mass: it is forbidden
    (0..V).map(|c| if c == id { p.ln() } else { rest.ln() }).collect()
}

fn cfg(strategy: &str, steps: usize) -> SamplerConfig {
    SamplerConfig { steps, strategy: strategy.parse().unwrap(), record_steps: true, ..SamplerConfig::default() }
}

fn run(d: &mut TableDenoiser, prompts: &[Vec<i32>], lengths: &[usize], c: &SamplerConfig, bs: usize) -> Vec<Generated> {
    generate(d, prompts, lengths, SPECIAL, c, bs, None).unwrap()
}

fn masked_count(slots: &[i32]) -> usize {
    slots.iter().filter(|&&t| t == MASK).count()
}

#[test]
fn threshold_commits_every_sure_slot_and_stops_when_none_is_masked() {
    // Slot j is sure (p = 0.99) from step j/2 + 1 on and unsure (p = 0.3) before.
    let logits: LogitsFn = Box::new(|_, s, j| peaked(3 + j, if j / 2 < s { 0.99 } else { 0.3 }));
    let prompts = vec![vec![0, 5]];
    let mut d = TableDenoiser::new(&prompts, &[6], SPECIAL, V, logits);
    let g = &run(&mut d, &prompts, &[6], &SamplerConfig { threshold: 0.9, ..cfg("threshold", 50) }, 1)[0];
    let steps = g.steps.as_ref().unwrap();
    assert_eq!(steps.iter().map(|s| masked_count(s)).collect::<Vec<_>>(), [4, 2, 0], "two sure slots a step");
    assert_eq!(g.nfe, 3, "decoding stops as soon as no slot is masked, long before K = 50");
    assert_eq!(d.steps_begun, 3);
    assert_eq!(g.tokens, [3, 4, 5, 6, 7, 8]);

    // Nothing ever reaches the threshold: one slot a step, the most confident (the highest p).
    let logits: LogitsFn = Box::new(|_, _, j| peaked(3 + j, 0.2 + 0.05 * j as f32));
    let mut d = TableDenoiser::new(&prompts, &[4], SPECIAL, V, logits);
    let g = &run(&mut d, &prompts, &[4], &SamplerConfig { threshold: 0.95, ..cfg("threshold", 50) }, 1)[0];
    let order: Vec<Vec<i32>> = g.steps.clone().unwrap();
    assert_eq!(g.nfe, 4);
    assert_eq!(order[0], [MASK, MASK, MASK, 6], "the most confident slot first");
    assert_eq!(order[1], [MASK, MASK, 5, 6]);
}

#[test]
fn each_confidence_ranks_the_slots_its_own_way() {
    // Slot 0: two nearly equal candidates (p ≈ 0.52 and 0.48): a high top probability, a tiny
    // margin, low entropy. Slot 1: a flat row with one slightly raised id (p ≈ 0.13): a low top
    // probability, a larger margin (≈ 0.08), high entropy.
    let slot0: Vec<f32> = (0..V).map(|c| [3.0, 2.9][..].get(c.wrapping_sub(4)).copied().unwrap_or(-10.0)).collect();
    let slot1: Vec<f32> = (0..V).map(|c| if c == 7 { 1.0 } else { 0.0 }).collect();
    let prompts = vec![vec![0, 5]];
    // Linear, K = 2: after step 1 one of the two slots stays masked, the less confident one.
    let kept_masked = |confidence: Confidence, seed: u64| {
        let (a, b) = (slot0.clone(), slot1.clone());
        let logits: LogitsFn = Box::new(move |_, _, j| if j == 0 { a.clone() } else { b.clone() });
        let mut d = TableDenoiser::new(&prompts, &[2], SPECIAL, V, logits);
        let c = SamplerConfig { confidence, seed, ..cfg("reparam-uncond-deterministic-linear", 2) };
        let g = run(&mut d, &prompts, &[2], &c, 1).remove(0);
        let first = &g.steps.unwrap()[0];
        assert_eq!(masked_count(first), 1, "{confidence:?}: k = 1 after step 1");
        first.iter().position(|&t| t == MASK).unwrap()
    };
    assert_eq!(kept_masked(Confidence::Prob, 0), 1, "prob: slot 1's top probability is lower");
    assert_eq!(kept_masked(Confidence::Entropy, 0), 1, "entropy: slot 1's distribution is flatter");
    assert_eq!(kept_masked(Confidence::Margin, 0), 0, "margin: slot 0's two candidates are nearly tied");
    // Random: the slot with the smaller uniform number of stream (4, example 0, step 1) stays masked.
    for seed in [1u64, 2, 3, 4] {
        let st = 4u64 << 56 | 1;
        let (u0, u1) = (philox_uniform(seed, st, 0), philox_uniform(seed, st, 1));
        assert_eq!(kept_masked(Confidence::Random, seed), usize::from(u1 < u0), "random, seed {seed}");
    }
}

#[test]
fn blocks_are_decoded_left_to_right_each_with_its_share_of_the_steps() {
    let prompts = vec![vec![0, 5, 6]];
    let logits: LogitsFn = Box::new(|_, s, j| peaked(3 + (j + s) % 10, 0.5 + 0.04 * j as f32));
    let mut d = TableDenoiser::new(&prompts, &[6], SPECIAL, V, logits);
    let c = SamplerConfig { block_length: Some(2), ..cfg("reparam-uncond-deterministic-cosine", 6) };
    let g = run(&mut d, &prompts, &[6], &c, 1).remove(0);
    let steps = g.steps.unwrap();
    assert_eq!(g.nfe, 6);
    for (s, slots) in steps.iter().enumerate() {
        let done_blocks = (s + 1).div_euclid(2);
        assert!(slots[2 * done_blocks..].iter().skip(2).all(|&t| t == MASK), "step {}: later blocks stay masked: {slots:?}", s + 1);
        assert!(slots[..2 * done_blocks].iter().all(|&t| t != MASK), "step {}: finished blocks are filled: {slots:?}", s + 1);
    }
    // Every slot is scored (as on the device), only the block's are used.
    assert!(d.scored.iter().all(|v| v.iter().map(|&(_, j)| j).eq(0..6)));
    // With the cache only the recomputed slots can be scored: the block and the later ones.
    let mut d = TableDenoiser::new(&prompts, &[6], SPECIAL, V, Box::new(|_, s, j| peaked(3 + (j + s) % 10, 0.5 + 0.04 * j as f32)));
    let cached = run(&mut d, &prompts, &[6], &SamplerConfig { cache: true, ..c.clone() }, 1).remove(0);
    let scored: Vec<usize> = d.scored.iter().map(|v| v[0].1).collect();
    assert_eq!(scored, [0, 0, 2, 2, 4, 4]);
    assert_eq!(cached.tokens, g.tokens, "the mock's logits do not depend on the cache");

    // A threshold run per block: a block ends as soon as it has no mask, so a sure block takes one pass.
    let logits: LogitsFn = Box::new(|_, _, j| peaked(3 + j, if j < 3 { 0.99 } else { 0.4 }));
    let mut d = TableDenoiser::new(&prompts, &[6], SPECIAL, V, logits);
    let c = SamplerConfig { block_length: Some(3), threshold: 0.9, ..cfg("threshold", 50) };
    let g = run(&mut d, &prompts, &[6], &c, 1).remove(0);
    assert_eq!(g.nfe, 1 + 3, "block 1 in one pass, block 2 one slot a pass");
    assert_eq!(g.tokens, [3, 4, 5, 6, 7, 8]);
}

#[test]
fn guidance_picks_from_the_combined_logits_with_the_prompt_masked_rows_in_the_batch() {
    let prompts = vec![vec![0, 5, 6, 7], vec![0, 8]];
    // Conditional: id 3 slightly ahead of id 4; unconditional: id 3 far ahead. Guidance pushes
    // away from the unconditional prediction, so with s = 1 the pick becomes id 4:
    // 3: u + 2(c − u) = 5 + 2(2 − 5) = −1;  4: 0 + 2(1.5 − 0) = 3.
    let row = |a: f32, b: f32| -> Vec<f32> { (0..V).map(|c| [a, b][..].get(c.wrapping_sub(3)).copied().unwrap_or(-5.0)).collect() };
    let cond = row(2.0, 1.5);
    let uncond = row(5.0, 0.0);
    let c = SamplerConfig { cfg_scale: 1.0, ..cfg("reparam-uncond-deterministic-cosine", 1) };
    let mk = |c: &Vec<f32>, u: &Vec<f32>| {
        let (c, u) = (c.clone(), u.clone());
        let mut d = TableDenoiser::new(&prompts, &[2, 3], SPECIAL, V, Box::new(move |_, _, _| c.clone()));
        d.uncond = Some(Box::new(move |_, _, _| u.clone()));
        d
    };
    let g = run(&mut mk(&cond, &uncond), &prompts, &[2, 3], &c, 2);
    assert_eq!(g[0].tokens, [4, 4]);
    assert_eq!(g[1].tokens, [4, 4, 4]);
    // Scale 0 is plain decoding: the conditional argmax.
    let g0 = run(&mut mk(&cond, &uncond), &prompts, &[2, 3], &SamplerConfig { cfg_scale: 0.0, ..c.clone() }, 2);
    assert_eq!(g0[0].tokens, [3, 3]);
    // The score is the log-prob under the combined distribution.
    let combined: Vec<f32> = cond.iter().zip(&uncond).map(|(c, u)| u + 2.0 * (c - u)).collect();
    let lse = combined.iter().enumerate().filter(|&(i, _)| i != MASK as usize).map(|(_, x)| x.exp()).sum::<f32>().ln();
    assert!((g[0].score - (combined[4] - lse)).abs() < 1e-5, "score {} vs {}", g[0].score, combined[4] - lse);
}

#[test]
fn the_prefix_cache_refreshes_each_row_at_the_first_step_of_its_blocks() {
    let prompts = vec![vec![0, 5, 6], vec![0, 7]];
    let logits: LogitsFn = Box::new(|e, s, j| peaked(3 + (e + j + s) % 9, 0.5 + 0.03 * j as f32));
    let mut d = TableDenoiser::new(&prompts, &[4, 2], SPECIAL, V, logits);
    let c = SamplerConfig { block_length: Some(2), cache: true, ..cfg("reparam-uncond-deterministic-cosine", 4) };
    run(&mut d, &prompts, &[4, 2], &c, 2);
    // Example 0 (prompt 3, two blocks of 2 steps): refresh, block 1 from 3, refresh, block 2 from 5.
    // Example 1 (prompt 2, one block of 4 steps): refresh, then from 2; done after step 4.
    assert_eq!(d.cached, [vec![0, 0], vec![3, 2], vec![0, 2], vec![5, 2]]);

    // A row that is done recomputes nothing (its active start is past the row).
    let mut d = TableDenoiser::new(&prompts, &[4, 2], SPECIAL, V, Box::new(|_, _, j| peaked(3 + j, 0.99)));
    let c = SamplerConfig { cache: true, block_length: Some(2), ..cfg("threshold", 10) };
    run(&mut d, &prompts, &[4, 2], &c, 2);
    let seq = 3 + 4 + 1;
    assert_eq!(d.cached, [vec![0, 0], vec![0, seq]]);
}

#[test]
fn every_new_option_gives_the_same_output_batched_and_one_at_a_time() {
    let prompts = vec![vec![0, 5], vec![0, 6, 7, 8], vec![0, 9, 3], vec![0, 10], vec![0, 11, 12, 13, 14, 15]];
    let lengths = [4usize, 9, 1, 0, 6];
    let hashed = |salt: u64| -> LogitsFn {
        Box::new(move |e, s, j| {
            (0..V).map(|c| 6.0 * philox_uniform(salt, ((e as u64) << 32) | ((s as u64) << 16) | j as u64, c as u64) - 3.0).collect()
        })
    };
    let base = cfg("reparam-uncond-deterministic-cosine", 8);
    let variants = [
        SamplerConfig { threshold: 0.3, ..cfg("threshold", 8) },
        SamplerConfig { threshold: 0.3, confidence: Confidence::Margin, ..cfg("threshold", 8) },
        SamplerConfig { confidence: Confidence::Entropy, ..base.clone() },
        SamplerConfig { confidence: Confidence::Random, seed: 9, ..base.clone() },
        SamplerConfig { block_length: Some(3), ..base.clone() },
        SamplerConfig { block_length: Some(2), threshold: 0.2, sample: true, seed: 4, ..cfg("threshold", 8) },
        SamplerConfig { cfg_scale: 0.5, ..base.clone() },
        SamplerConfig { cache: true, block_length: Some(4), ..cfg("reparam-cond-stochastic1.0-linear", 8) },
    ];
    for c in &variants {
        let go = |bs: usize| {
            let mut d = TableDenoiser::new(&prompts, &lengths, SPECIAL, V, hashed(3));
            d.uncond = Some(hashed(4));
            run(&mut d, &prompts, &lengths, c, bs)
        };
        let alone = go(1);
        assert!(alone
            .iter()
            .zip(&lengths)
            .all(|(g, &l)| g.steps.as_ref().unwrap().last().is_none_or(|s| masked_count(s) == 0) && (l == 0 || g.nfe > 0)));
        for bs in [2, 5] {
            assert_eq!(go(bs), alone, "{c:?} batch size {bs}");
        }
    }
}

#[test]
fn options_that_cannot_work_together_are_errors() {
    let prompts = vec![vec![0, 5]];
    let err = |c: SamplerConfig| {
        let mut d = TableDenoiser::new(&prompts, &[3], SPECIAL, V, Box::new(|_, _, _| vec![0.0; V]));
        generate(&mut d, &prompts, &[3], SPECIAL, &c, 1, None).unwrap_err().to_string()
    };
    let base = cfg("reparam-uncond-deterministic-cosine", 4);
    assert!(err(SamplerConfig { threshold: 0.0, ..cfg("threshold", 4) }).contains("threshold"));
    assert!(err(SamplerConfig { threshold: 1.5, ..cfg("threshold", 4) }).contains("threshold"));
    assert!(err(SamplerConfig { block_length: Some(0), ..base.clone() }).contains("block length"));
    assert!(err(SamplerConfig { cfg_scale: -1.0, ..base.clone() }).contains("guidance"));
    assert!(err(SamplerConfig { cfg_scale: 1.0, cache: true, ..base.clone() }).contains("prefix cache"));
    assert!(err(SamplerConfig { confidence: Confidence::Margin, ..cfg("cmlm", 4) }).contains("confidence"));
    assert!(err(SamplerConfig { block_length: Some(2), ..cfg("ar", 4) }).contains("blocks"));
}
