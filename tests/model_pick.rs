//! The model's sampling step (`XlmR::pick_many`: encoder, LM head on the scored rows, pick)
//! against the same pick computed by hand from `XlmR::logits`, on the golden fixture, with and
//! without the GPU's head padding: argmax and Gumbel-max sampling, several groups with their own
//! seeds in one pass, the workspace reused across steps and shapes; and the device-resident
//! decode against the host loop.

mod common;
use common::*;
use dlm_engine::backend::cpu::CpuBackend;
use dlm_engine::diffusion::sampler::{generate, SpecialIds};
use dlm_engine::model::{Batch, PickOpts, XlmR};
use dlm_engine::rng::philox_gumbel;

/// Token and log-prob that `opts` must give on one row of logits (group row `i` for the noise).
fn by_hand(row: &[f32], opts: &PickOpts, i: usize) -> (i32, f32) {
    let allowed: Vec<usize> = (0..row.len()).filter(|c| !opts.forbid.contains(&(*c as i32))).collect();
    let mx = allowed.iter().map(|&c| row[c]).fold(f32::NEG_INFINITY, f32::max);
    let lse = mx + allowed.iter().map(|&c| ((row[c] - mx) as f64).exp()).sum::<f64>().ln() as f32;
    let key = |c: usize| match opts.sample_seed {
        None => row[c],
        Some(s) => row[c] / opts.temperature + philox_gumbel(s, i as u64, c as u64),
    };
    let best = allowed.iter().copied().fold(allowed[0], |b, c| if key(c) > key(b) { c } else { b });
    (best as i32, row[best] - lse)
}

fn check(backend: CpuBackend) {
    let dir = fixtures().join("postln");
    let g = read(&dir.join("golden.safetensors"));
    let t = &g["input_ids"];
    let a = Batch { ids: ids(t), batch: t.shape[0], seq: t.shape[1] };
    let mut b = a.clone();
    b.ids.iter_mut().filter(|t| **t > 3).for_each(|t| *t = 4 + (*t * 5) % 290);
    let mut m = XlmR::load(backend, &dir).unwrap();
    let v = m.config().vocab_size;
    let rows: Vec<i32> = (0..a.tokens() as i32).filter(|r| r % 4 != 3).collect();
    let (first, rest) = rows.split_at(rows.len() / 3);
    for (step, batch) in [&a, &b, &a, &b].into_iter().enumerate() {
        let logits = m.logits(batch, &rows).unwrap();
        for sampling in [false, true] {
            let opts = |k: u64| PickOpts::plain(vec![301, 5], 0.7, sampling.then_some(100 * step as u64 + k));
            let (o1, o2) = (opts(1), opts(2));
            // Twice: the second call reuses the step's workspace.
            for _ in 0..2 {
                let got = m.pick_many(batch, &[(first, &o1), (rest, &o2)]).unwrap();
                for (gi, (group, o, st)) in [(first, &o1, &got[0]), (rest, &o2, &got[1])].into_iter().enumerate() {
                    assert_eq!(st.token.len(), group.len());
                    for i in 0..group.len() {
                        let r = if gi == 0 { i } else { first.len() + i };
                        let (tok, lp) = by_hand(&logits[r * v..][..v], o, i);
                        assert_eq!(st.token[i], tok, "step {step} sampling {sampling} group {gi} row {i}: token");
                        assert!((st.logprob[i] - lp).abs() < 1e-4, "step {step} group {gi} row {i}: log-prob {} vs {lp}", st.logprob[i]);
                    }
                }
            }
        }
    }
    // Groups that differ in more than their seed still work (each group on its own).
    let (o1, o2) = (PickOpts::plain(vec![301], 1.0, None), PickOpts::plain(vec![301, 7], 1.0, None));
    let got = m.pick_many(&a, &[(first, &o1), (rest, &o2)]).unwrap();
    assert_eq!(got[0], m.pick(&a, first, &o1).unwrap());
    assert_eq!(got[1], m.pick(&a, rest, &o2).unwrap());
    assert!(!m.sampling_step_recorded(), "the CPU backend cannot record");
}

#[test]
fn pick_many_matches_the_logits() {
    check(CpuBackend::new());
}

#[test]
fn pick_many_matches_the_logits_with_a_padded_head() {
    check(CpuBackend::with_vocab_align(64));
}

/// The device-resident decode (canvases on the backend, `reparam_step` after each pick) gives
/// exactly the host loop's results for every reparameterized strategy and the threshold
/// strategy, with blocks and the model's confidences, argmax and sampling, prompts and targets
/// of mixed lengths (one empty), batches that split the input.
#[test]
fn device_decode_matches_the_host_loop() {
    let dir = fixtures().join("postln");
    let mut m = XlmR::load(CpuBackend::with_vocab_align(64), &dir).unwrap();
    let prompts: Vec<Vec<i32>> = vec![vec![0, 47, 108, 44], vec![0, 55], vec![0, 9, 10, 11, 12, 13], vec![0, 200, 201]];
    let lengths = [5, 9, 0, 3];
    let special = SpecialIds { bos: 0, pad: 1, eos: 2, mask: 301 };
    for cfg in device_configs(true) {
        let host = generate(&mut HostOnly(&mut m), &prompts, &lengths, special, &cfg, 3, None).unwrap();
        let dev = generate(&mut m, &prompts, &lengths, special, &cfg, 3, None).unwrap();
        assert_eq!(dev, host, "{cfg:?}");
        assert!(host.iter().any(|g| !g.tokens.is_empty()));
    }
}

/// The prefix-cache step (`pick_many_cached`) on the CPU: recomputed whole, or reusing keys and
/// values of the same batch, it is the plain step (to f32 rounding: the recomputed rows go
/// through the GEMMs packed); rows it does not recompute are never read (a changed prompt gives
/// the same picks); with changed targets it differs from the exact step, which it approximates.
/// Guidance against the prompt-masked copy changes the distribution.
#[test]
fn cached_and_guided_steps_on_the_cpu() {
    let dir = fixtures().join("postln");
    let g = read(&dir.join("golden.safetensors"));
    let t = &g["input_ids"];
    let batch = Batch { ids: ids(t), batch: t.shape[0], seq: t.shape[1] };
    let mut m = XlmR::load(CpuBackend::new(), &dir).unwrap();
    let v = step_variants(&mut m, &batch, 301);
    let close = |what: &str, a: &dlm_engine::backend::RowStats, b: &dlm_engine::backend::RowStats| {
        assert_eq!(a.token, b.token, "{what}: tokens");
        assert_close(&format!("{what}: log-probs"), &a.logprob, &b.logprob, 1e-5);
        assert_close(&format!("{what}: margins"), &a.confidence, &b.confidence, 1e-5);
    };
    assert_eq!(v.full.confidence.len(), v.full.token.len());
    close("whole row through the cache", &v.refresh, &v.full);
    close("cache reused on the same batch", &v.partial, &v.full);
    assert_eq!(v.partial_new_prompt, v.partial, "the prompt of a reused row must not be read");
    // Reusing an exact cache differs from the plain step by rounding only; stale prompt states
    // by far more (measured: 3.9e-5 against 0 on this 2-layer fixture).
    let rounding = rel_l2(&v.partial.logprob, &v.full.logprob);
    let stale = rel_l2(&v.partial_changed.logprob, &v.full_changed.logprob);
    assert!(stale > 1e-6 && stale > 10.0 * rounding, "the cached step must reuse the stale prompt states: {stale} vs rounding {rounding}");
    assert_ne!(v.full_changed.logprob, v.full.logprob);
    // The margin is p1 − p2 of the pick's row: within [0, 1], at most its probability.
    assert!(v.full.confidence.iter().zip(&v.full.logprob).all(|(&c, &lp)| (0.0..=1.0).contains(&c) && c <= lp.exp() + 1e-6));
    assert_ne!(v.guided.logprob, v.full.logprob, "guidance against the prompt-masked rows changes the distribution");
}
