//! The sampler against `tests/golden/sampler_reference.py` (numpy, vectorised like the official
//! decoder): same fixed logits per step, every canvas after every step compared exactly, for the
//! deterministic reparam strategies, cmlm, ar, stochastic ranking and sampling, at every batch size.

mod sampler_mock;

use dlm_engine::diffusion::{generate, SamplerConfig, SpecialIds};
use sampler_mock::TableDenoiser;
use serde::Deserialize;

#[derive(Deserialize)]
struct Special {
    bos: i32,
    pad: i32,
    eos: i32,
    mask: i32,
}

#[derive(Deserialize)]
struct Case {
    strategy: String,
    sample: bool,
    temperature: f32,
    seed: u64,
    steps: Vec<Vec<Vec<i32>>>,
    tokens: Vec<Vec<i32>>,
    /// `None` = no slot kept (score −inf).
    scores: Vec<Option<f32>>,
}

#[derive(Deserialize)]
struct Fixture {
    vocab: usize,
    special: Special,
    steps: usize,
    prompts: Vec<Vec<i32>>,
    lengths: Vec<usize>,
    /// `[example][step][slot][vocab]`
    logits: Vec<Vec<Vec<Vec<f32>>>>,
    cases: Vec<Case>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/fixtures/sampler.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_step_matches_the_numpy_reference_at_every_batch_size() {
    let fx = fixture();
    let special = SpecialIds { bos: fx.special.bos, pad: fx.special.pad, eos: fx.special.eos, mask: fx.special.mask };
    assert!(fx.cases.len() >= 11);
    for case in &fx.cases {
        let cfg = SamplerConfig {
            steps: fx.steps,
            strategy: case.strategy.parse().unwrap(),
            temperature: case.temperature,
            sample: case.sample,
            seed: case.seed,
            record_steps: true,
            ..SamplerConfig::default()
        };
        for batch_size in [3, 2, 1] {
            let table = fx.logits.clone();
            let mut d =
                TableDenoiser::new(&fx.prompts, &fx.lengths, special, fx.vocab, Box::new(move |e, s, j| table[e][s - 1][j].clone()));
            let out = generate(&mut d, &fx.prompts, &fx.lengths, special, &cfg, batch_size, None).unwrap();
            let what = format!("{} sample={} batch_size={batch_size}", case.strategy, case.sample);
            assert_eq!(out.len(), fx.prompts.len());
            for (e, g) in out.iter().enumerate() {
                let steps = g.steps.as_ref().unwrap();
                assert_eq!(steps.len(), fx.steps, "{what}: example {e}, recorded steps");
                for (s, (got, want)) in steps.iter().zip(&case.steps[e]).enumerate() {
                    assert_eq!(got, want, "{what}: example {e}, canvas after step {}", s + 1);
                }
                assert_eq!(g.tokens, case.tokens[e], "{what}: example {e}, final tokens");
                match case.scores[e] {
                    None => assert_eq!(g.score, f32::NEG_INFINITY, "{what}: example {e}"),
                    Some(want) => assert!((g.score - want).abs() <= 1e-6, "{what}: example {e}, score {} vs {want}", g.score),
                }
            }
        }
    }
}
