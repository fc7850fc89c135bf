//! Properties of the sampler that hold for any model: batching never changes a result, K = 1 is
//! one argmax pass, the masked count follows k, `ar` fills left to right and keeps `</s>`, and bad
//! input is an error. The logits come from a hash, so they have no ties.

mod sampler_mock;

use dlm_engine::diffusion::{generate, Generated, SamplerConfig, SpecialIds, Strategy};
use dlm_engine::rng::philox_uniform;
use sampler_mock::{LogitsFn, TableDenoiser};

const V: usize = 20;
const SPECIAL: SpecialIds = SpecialIds { bos: 0, pad: 1, eos: 2, mask: 19 };

/// Logits in [-3, 3) from a hash of (example, step, slot, id).
fn hashed_logits(salt: u64) -> LogitsFn {
    Box::new(move |e, s, j| {
        (0..V).map(|c| 6.0 * philox_uniform(salt, ((e as u64) << 32) | ((s as u64) << 16) | j as u64, c as u64) - 3.0).collect()
    })
}

fn prompts() -> Vec<Vec<i32>> {
    vec![vec![0, 5], vec![0, 6, 7, 8], vec![0, 9, 3], vec![0, 10], vec![0, 11, 12, 13, 14, 15]]
}

const LENGTHS: [usize; 5] = [4, 9, 1, 0, 6];

fn cfg(strategy: &str, steps: usize, sample: bool, seed: u64) -> SamplerConfig {
    SamplerConfig {
        steps,
        strategy: strategy.parse().unwrap(),
        temperature: 0.9,
        sample,
        seed,
        record_steps: true,
        ..SamplerConfig::default()
    }
}

fn run(c: &SamplerConfig, batch_size: usize, prompts: &[Vec<i32>], lengths: &[usize], logits: LogitsFn) -> Vec<Generated> {
    let mut d = TableDenoiser::new(prompts, lengths, SPECIAL, V, logits);
    generate(&mut d, prompts, lengths, SPECIAL, c, batch_size, None).unwrap()
}

const STRATEGIES: [&str; 7] = [
    "reparam-uncond-deterministic-cosine",
    "reparam-cond-deterministic-linear",
    "reparam-uncond-stochastic1.0-linear",
    "reparam-cond-stochastic2.5-cosine",
    "cmlm",
    "ar",
    "reparam-uncond-stochastic0-cosine",
];

#[test]
fn batched_equals_one_at_a_time_for_every_strategy() {
    let p = prompts();
    for strategy in STRATEGIES {
        for sample in [false, true] {
            let c = cfg(strategy, 10, sample, 7);
            let alone = run(&c, 1, &p, &LENGTHS, hashed_logits(1));
            for bs in [2, 3, 5, 8] {
                assert_eq!(run(&c, bs, &p, &LENGTHS, hashed_logits(1)), alone, "{strategy} sample={sample} batch_size={bs}");
            }
        }
    }
}

#[test]
fn the_seed_matters_exactly_where_there_is_randomness() {
    let p = prompts();
    for strategy in STRATEGIES {
        for sample in [false, true] {
            let a = run(&cfg(strategy, 10, sample, 1), 5, &p, &LENGTHS, hashed_logits(1));
            let b = run(&cfg(strategy, 10, sample, 2), 5, &p, &LENGTHS, hashed_logits(1));
            let random = sample || strategy == "cmlm" || (strategy.contains("stochastic") && !strategy.contains("stochastic0-"));
            assert_eq!(a != b, random, "{strategy} sample={sample}");
        }
    }
}

#[test]
fn one_step_is_a_single_argmax_pass_with_mask_forbidden() {
    let p = prompts();
    // The mask id has the largest logit at every slot: the pick must skip it.
    let logits = |e: usize, s: usize, j: usize| {
        let mut r = hashed_logits(3)(e, s, j);
        r[SPECIAL.mask as usize] = 50.0;
        r
    };
    let mut d = TableDenoiser::new(&p, &LENGTHS, SPECIAL, V, Box::new(logits));
    let out = generate(&mut d, &p, &LENGTHS, SPECIAL, &cfg("reparam-uncond-deterministic-cosine", 1, false, 0), 5, None).unwrap();
    assert_eq!((d.steps_begun, d.picks), (1, 1));
    for (e, g) in out.iter().enumerate() {
        let (mut want, mut logps) = (Vec::new(), Vec::new());
        for j in 0..LENGTHS[e] {
            let row = logits(e, 1, j);
            let allowed: Vec<usize> = (0..V).filter(|&c| c != SPECIAL.mask as usize).collect();
            let best = *allowed.iter().max_by(|&&a, &&b| row[a].total_cmp(&row[b]).then(b.cmp(&a))).unwrap();
            let lse = allowed.iter().map(|&c| (row[c] as f64).exp()).sum::<f64>().ln();
            if ![SPECIAL.bos, SPECIAL.pad, SPECIAL.eos].contains(&(best as i32)) {
                want.push(best as i32);
                logps.push(row[best] as f64 - lse);
            }
        }
        assert_eq!(g.tokens, want, "example {e}");
        assert_eq!(g.steps.as_ref().unwrap().len(), 1);
        if logps.is_empty() {
            assert_eq!(g.score, f32::NEG_INFINITY);
        } else {
            let mean = logps.iter().sum::<f64>() / logps.len() as f64;
            assert!((g.score as f64 - mean).abs() < 1e-5, "example {e}: {} vs {mean}", g.score);
        }
    }
}

fn masks_per_step(g: &Generated) -> Vec<usize> {
    g.steps.as_ref().unwrap().iter().map(|s| s.iter().filter(|&&t| t == SPECIAL.mask).count()).collect()
}

#[test]
fn without_ties_the_masked_count_after_each_step_is_k() {
    let p = vec![vec![0, 5], vec![0, 6]];
    // Hand-computed k for N = 7, K = 4 (see strategy.rs) and N = 13, K = 8:
    // cosine 13·cos(sπ/16) = 12.75 12.01 10.81 9.19 7.22 4.97 2.54 0; linear 13·(1 − s/8).
    let lengths = [7, 13];
    for (schedule, k7, k13) in
        [("cosine", vec![6, 4, 2, 0], vec![12, 12, 10, 9, 7, 4, 2, 0]), ("linear", vec![5, 3, 1, 0], vec![11, 9, 8, 6, 4, 3, 1, 0])]
    {
        for mode in ["deterministic", "stochastic1.0"] {
            let uncond = format!("reparam-uncond-{mode}-{schedule}");
            let out7 = run(&cfg(&uncond, 4, false, 3), 2, &p, &lengths, hashed_logits(5));
            let out8 = run(&cfg(&uncond, 8, true, 3), 2, &p, &lengths, hashed_logits(5));
            assert_eq!(masks_per_step(&out7[0]), k7, "{uncond} N=7 K=4");
            assert_eq!(masks_per_step(&out8[1]), k13, "{uncond} N=13 K=8");
            // `cond` keeps some decoded slots of the lowest set, so it masks at most k.
            let cond = format!("reparam-cond-{mode}-{schedule}");
            let out = run(&cfg(&cond, 8, false, 3), 2, &p, &lengths, hashed_logits(5));
            assert!(masks_per_step(&out[1]).iter().zip(&k13).all(|(m, k)| m <= k), "{cond}");
            assert_eq!(*masks_per_step(&out[1]).last().unwrap(), 0);
        }
    }
}

#[test]
fn ar_fills_left_to_right_and_never_writes_the_final_eos() {
    let p = prompts();
    // The model prefers </s> at even slots, so it emits </s> into target slots, and never picks a
    // special token at odd slots.
    let logits = |e: usize, s: usize, j: usize| {
        let mut r = hashed_logits(9)(e, s, j);
        if j.is_multiple_of(2) {
            r[SPECIAL.eos as usize] = 20.0;
        } else {
            for special in [SPECIAL.bos, SPECIAL.pad, SPECIAL.eos] {
                r[special as usize] = -10.0;
            }
        }
        r
    };
    let steps = 12;
    let mut hook_calls = 0;
    let mut hook = |s: usize, rows: &[Vec<i32>]| {
        hook_calls += 1;
        for (e, row) in rows.iter().enumerate() {
            let (pl, l) = (p[e].len(), LENGTHS[e]);
            assert_eq!(row.len(), pl + l + 1);
            assert_eq!(row[pl + l], SPECIAL.eos, "step {s} example {e}: the final </s> was overwritten");
            let filled = s.min(l);
            assert!(row[pl..pl + filled].iter().all(|&t| t != SPECIAL.mask), "step {s} example {e}");
            assert!(row[pl + filled..pl + l].iter().all(|&t| t == SPECIAL.mask), "step {s} example {e}");
        }
    };
    let mut d = TableDenoiser::new(&p, &LENGTHS, SPECIAL, V, Box::new(logits));
    let out = generate(&mut d, &p, &LENGTHS, SPECIAL, &cfg("ar", steps, false, 0), 5, Some(&mut hook)).unwrap();
    assert_eq!(hook_calls, steps);
    for (e, g) in out.iter().enumerate() {
        // Even slots hold the emitted </s> and are dropped; odd slots keep their argmax.
        assert_eq!(g.tokens.len(), LENGTHS[e] / 2, "example {e}");
        assert!(!g.tokens.contains(&SPECIAL.eos));
    }
    // With fewer steps than slots, `ar` cannot finish: an error, not a half-masked output.
    let e = generate(&mut d, &p, &LENGTHS, SPECIAL, &cfg("ar", 8, false, 0), 5, None).unwrap_err();
    assert!(e.to_string().contains("ar"), "{e}");
}

#[test]
fn the_step_hook_sees_the_canvases_the_history_records() {
    let p = prompts();
    let c = cfg("reparam-cond-stochastic1.0-cosine", 6, true, 4);
    let mut seen: Vec<(usize, Vec<Vec<i32>>)> = Vec::new();
    let mut hook = |s: usize, rows: &[Vec<i32>]| seen.push((s, rows.to_vec()));
    let mut d = TableDenoiser::new(&p, &LENGTHS, SPECIAL, V, hashed_logits(2));
    let out = generate(&mut d, &p, &LENGTHS, SPECIAL, &c, 2, Some(&mut hook)).unwrap();
    // Batches [0, 1], [2, 3], [4], six steps each.
    assert_eq!(seen.len(), 18);
    for (i, (s, rows)) in seen.iter().enumerate() {
        let (batch, step) = (i / 6, i % 6 + 1);
        assert_eq!(*s, step);
        for (b, row) in rows.iter().enumerate() {
            let e = 2 * batch + b;
            let pl = p[e].len();
            assert_eq!(&row[..pl], &p[e][..]);
            assert_eq!(&row[pl..pl + LENGTHS[e]], &out[e].steps.as_ref().unwrap()[step - 1][..]);
        }
    }
    // Sampling gives each example with target slots its own pick call per step (its own seed).
    assert_eq!(d.picks, 6 * LENGTHS.iter().filter(|&&l| l > 0).count());
    let mut d = TableDenoiser::new(&p, &LENGTHS, SPECIAL, V, hashed_logits(2));
    generate(&mut d, &p, &LENGTHS, SPECIAL, &cfg("reparam-cond-stochastic1.0-cosine", 6, false, 4), 2, None).unwrap();
    assert_eq!(d.picks, 6 * 3, "argmax: one pick call per batch and step");
}

#[test]
fn bad_input_is_an_error() {
    let p = prompts();
    let mut d = TableDenoiser::new(&p, &LENGTHS, SPECIAL, V, hashed_logits(1));
    let ok = cfg("cmlm", 10, true, 0);
    let err = |d: &mut TableDenoiser, prompts: &[Vec<i32>], lengths: &[usize], c: &SamplerConfig, bs: usize| {
        generate(d, prompts, lengths, SPECIAL, c, bs, None).unwrap_err().to_string()
    };
    assert!(err(&mut d, &p, &LENGTHS[..4], &ok, 2).contains("lengths"));
    assert!(err(&mut d, &p, &LENGTHS, &ok, 0).contains("batch size"));
    assert!(err(&mut d, &p, &LENGTHS, &SamplerConfig { steps: 0, ..ok.clone() }, 2).contains("steps"));
    assert!(err(&mut d, &p, &LENGTHS, &SamplerConfig { temperature: 0.0, ..ok.clone() }, 2).contains("temperature"));
    let mut no_bos = p.clone();
    no_bos[2][0] = 7;
    assert!(err(&mut d, &no_bos, &LENGTHS, &ok, 2).contains("prompt 2"));
    for bad in ["reparam-uncond-deterministic", "reparam-sometimes-deterministic-cosine", "reparam-uncond-stochastic-cosine", "greedy"] {
        let e = bad.parse::<Strategy>().unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains("valid forms") && e.contains("cmlm, ar"), "{e}");
    }
}
