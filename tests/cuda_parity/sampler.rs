//! kernels/sampler.cu: the vocabulary pick and the re-masking step. CUDA launcher: src/backend/cuda/sampler.rs; CPU twin: src/backend/cpu/sampler.rs.

use super::*;

/// The step kernel on canvases of mixed lengths (one empty): random log-probs with ties and −inf,
/// a ranked value that is the log-prob or another confidence, windows that are the whole canvas
/// or a block of it, the top-k mode with every k from 0 past the window, both rules, with and
/// without ranking noise, and the threshold mode with cuts that take several slots, none (the
/// best one then) or all. Everything the kernel computes is exact in f32 except the noise's logf
/// (an ulp from the host's ln at most; the chance that this moves a slot across the cutoff is
/// negligible), so the slots, the ids and the masked counts left must agree exactly.
#[test]
fn reparam_step_matches_cpu() {
    let Some(g) = gpu("reparam_step_matches_cpu") else { return };
    let mut rng = fresh_rng("reparam_step");
    let lens = [7usize, 1, 0, 64, 33];
    let n: usize = lens.iter().sum();
    let seq = 80;
    let (mut meta, mut at) = (Vec::new(), 0);
    for (b, &l) in lens.iter().enumerate() {
        meta.extend([at as i32, l as i32, (b * seq + 5) as i32]);
        at += l;
    }
    let gmeta = g.upload_i32(&meta).unwrap();
    // Whole canvases, and blocks: [l/3, 2l/3) (empty for the short ones).
    let windows: [fn(usize) -> std::ops::Range<usize>; 2] = [|l| 0..l, |l| l / 3..2 * l / 3];
    let ks: [fn(usize) -> usize; 5] = [|_| 0, |w| w / 2, |w| w.saturating_sub(1), |w| w, |w| w + 3];
    for (cond, noise, separate_rank) in [(false, false, false), (true, false, true), (false, true, false), (true, true, true)] {
        let rule = ReparamRule { cond, noise, seed: rng.next_u64(), mask: 9 };
        // Slots: some masked (−inf), some committed with scores; picks with ties and repeats.
        let tokens: Vec<i32> = (0..n).map(|i| if i % 3 == 0 { 9 } else { 10 + (i % 5) as i32 }).collect();
        let masked: Vec<i32> = tokens.iter().map(|&t| (t == 9) as i32).collect();
        let scores: Vec<f32> = masked.iter().map(|&m| if m == 1 { f32::NEG_INFINITY } else { -rng.uniform() * 3.0 }).collect();
        let pick_token: Vec<i32> = (0..n).map(|i| 10 + (i % 4) as i32).collect();
        let pick_lp: Vec<f32> = (0..n)
            .map(|i| match i % 7 {
                0 => -0.5,
                1 => f32::NEG_INFINITY,
                _ => -rng.uniform() * 4.0,
            })
            .collect();
        let rank: Vec<f32> =
            if separate_rank { (0..n).map(|i| if i % 5 == 0 { 0.25 } else { rng.uniform() }).collect() } else { pick_lp.clone() };
        let mut cases: Vec<Vec<StepParams>> = Vec::new();
        for window in windows {
            for k_of in ks {
                cases.push(
                    lens.iter()
                        .enumerate()
                        .map(|(b, &l)| StepParams::top_k(k_of(window(l).len()), (b as u64) << 40 | 17, 0.7 + b as f32, window(l)))
                        .collect(),
                );
            }
            let cut = if separate_rank { 0.6 } else { -1.0 };
            for cut in [cut, f32::INFINITY, f32::NEG_INFINITY] {
                cases.push(lens.iter().map(|&l| StepParams::threshold(cut, window(l))).collect());
            }
        }
        for params in cases {
            let step = packed(&params).to_vec();
            let (mut wt, mut ws, mut wm, mut wids, mut wleft) =
                (tokens.clone(), scores.clone(), masked.clone(), vec![-1i32; lens.len() * seq], vec![-1i32; lens.len()]);
            cpu::sampler::reparam_step(
                &meta,
                &step,
                Picks { token: &pick_token, logprob: &pick_lp, rank: &rank },
                CanvasState { tokens: &mut wt, scores: &mut ws, masked: &mut wm, left: &mut wleft },
                &mut wids,
                rule,
            );
            let (mut gt, mut gm, mut gids, mut gleft) = (
                g.upload_i32(&tokens).unwrap(),
                g.upload_i32(&masked).unwrap(),
                g.upload_i32(&vec![-1; lens.len() * seq]).unwrap(),
                g.upload_i32(&vec![-1; lens.len()]).unwrap(),
            );
            let mut gs = g.upload_f32(&scores).unwrap();
            let (gpt, gpl, grank, gstep) = (
                g.upload_i32(&pick_token).unwrap(),
                g.upload_f32(&pick_lp).unwrap(),
                g.upload_f32(&rank).unwrap(),
                g.upload_i32(&step).unwrap(),
            );
            g.reparam_step(
                CanvasInputs { meta: &gmeta, n: lens.len(), step: &gstep },
                Picks { token: &gpt, logprob: &gpl, rank: &grank },
                CanvasState { tokens: &mut gt, scores: &mut gs, masked: &mut gm, left: &mut gleft },
                &mut gids,
                rule,
            )
            .unwrap();
            let p = &params[3];
            let tag =
                format!("reparam_step cond={cond} noise={noise} {:?} window {:?} k {} cut {}", p.step_mode(), p.window(), p.k, p.cut());
            assert_eq!(g.read_i32(&gt).unwrap(), wt, "{tag}: tokens");
            assert_eq!(g.read_i32(&gm).unwrap(), wm, "{tag}: masked");
            assert_eq!(g.read_i32(&gids).unwrap(), wids, "{tag}: ids");
            assert_eq!(g.read_i32(&gleft).unwrap(), wleft, "{tag}: masked slots left");
            let got = down(&g, &gs);
            assert!(
                got.iter().zip(&ws).all(|(a, b)| a == b || (a.is_infinite() && b.is_infinite() && a.signum() == b.signum())),
                "{tag}: scores {got:?} vs {ws:?}"
            );
        }
    }
}

#[test]
fn vocab_pick_matches_cpu() {
    let Some(g) = gpu("vocab_pick_matches_cpu") else { return };
    let mut rng = fresh_rng("vocab_pick");
    let forbid = [0, 5, 999, 2000, -1];
    for &(rows, vocab, valid) in &[(9usize, 1003usize, 1000usize), (4, 250_048, 250_002), (2, 33, 33)] {
        let mut v = normal_vec(&mut rng, rows * vocab, 2.0);
        // Row 0: a three-way tie for the maximum (the lowest id must win, as torch.argmax).
        for &c in &[17usize, 9, 30] {
            v[c.min(valid - 1)] = 50.0;
        }
        let (logits, lr) = up(&g, &v);
        let gforbid = g.upload_i32(&forbid).unwrap();
        for (temperature, seed) in [(1.0f32, None), (0.7, Some(12345u64)), (1.3, Some(u64::MAX))] {
            // Each row its own noise stream: seeds differ per row, streams count down.
            let noise: Option<Vec<(u64, u32)>> = seed.map(|s| (0..rows).map(|r| (s ^ (r as u64) << 40, (rows - r) as u32)).collect());
            let packed = noise.as_ref().map(|n| pack_gumbel(n));
            let gnoise = packed.as_ref().map(|(s, t)| (g.upload_i32(s).unwrap(), g.upload_i32(t).unwrap()));
            let mut token = g.upload_i32(&vec![-7; rows]).unwrap();
            let mut logprob = g.upload_f32(&poison(rows)).unwrap();
            g.vocab_pick(
                &logits,
                VocabShape { rows, vocab, valid },
                &gforbid,
                temperature,
                gnoise.as_ref().map(|(s, t)| (s, t)),
                PicksMut { token: &mut token, logprob: &mut logprob },
            )
            .unwrap();
            let got = RowStats { token: g.read_i32(&token).unwrap(), logprob: down(&g, &logprob), confidence: Vec::new() };
            let want = cpu::sampler::vocab_pick(
                &lr,
                VocabShape { rows, vocab, valid },
                &forbid,
                temperature,
                packed.as_ref().map(|(s, t)| (s.as_slice(), t.as_slice())),
            );
            let tag = format!("vocab_pick {rows}x{vocab} valid {valid} T {temperature} seed {seed:?}");
            for r in 0..rows {
                let (a, b) = (got.token[r] as usize, want.token[r] as usize);
                if a != b {
                    // Only a near-tie may differ (the device logf can differ from the host's in the
                    // last bit): the two candidates' keys must then agree to f32 rounding.
                    let key = |c: usize| match &noise {
                        None => lr[r * vocab + c],
                        Some(n) => lr[r * vocab + c] / temperature + dlm_engine::rng::philox_gumbel(n[r].0, n[r].1 as u64, c as u64),
                    };
                    assert!((key(a) - key(b)).abs() <= 1e-5 * key(b).abs().max(1.0), "{tag} row {r}: token {a} vs {b}");
                    assert!(!forbid.contains(&(a as i32)) && a < valid, "{tag} row {r}: picked excluded id {a}");
                    continue;
                }
                let d = (got.logprob[r] - want.logprob[r]).abs() as f64;
                assert!(
                    d <= TOL_STAT * (1.0 + want.logprob[r].abs() as f64),
                    "{tag} row {r}: logprob {} vs {}",
                    got.logprob[r],
                    want.logprob[r]
                );
            }
        }
    }
}

/// The margin and negative entropy of each row's softmax over the allowed columns, against the
/// CPU twin (f64) on bf16-rounded logits: f32 statistics, so `TOL_STAT` relative to 1 + |value|.
/// Includes a row with one allowed column (margin 1, entropy 0) and a row with a tie at the top
/// (margin 0).
#[test]
fn vocab_confidence_matches_cpu() {
    let Some(g) = gpu("vocab_confidence_matches_cpu") else { return };
    let mut rng = fresh_rng("vocab_confidence");
    for &(rows, vocab, valid) in &[(7usize, 1003usize, 1000usize), (3, 250_048, 250_002), (2, 33, 33), (1, 4, 3)] {
        let mut v = normal_vec(&mut rng, rows * vocab, 3.0);
        if rows > 1 {
            // Row 1: a tie at the top.
            v[vocab + 11] = 40.0;
            v[vocab + 12] = 40.0;
        }
        // (1, 4, 3): columns 0 and 2 forbidden, column 3 padding: one allowed column.
        let forbid: Vec<i32> = if vocab == 4 { vec![0, 2] } else { vec![0, 5, 999, -1] };
        let (logits, lr) = up(&g, &v);
        let gforbid = g.upload_i32(&forbid).unwrap();
        let shape = VocabShape { rows, vocab, valid };
        for kind in [ConfidenceKind::Margin, ConfidenceKind::Entropy] {
            let mut out = g.upload_f32(&poison(rows)).unwrap();
            g.vocab_confidence(&logits, shape, &gforbid, kind, &mut out).unwrap();
            let want = cpu::sampler::vocab_confidence(&lr, shape, &forbid, kind);
            let got = down(&g, &out);
            for r in 0..rows {
                let d = (got[r] - want[r]).abs() as f64;
                assert!(d <= TOL_STAT * (1.0 + want[r].abs() as f64), "{kind:?} {rows}x{vocab} row {r}: {} vs {}", got[r], want[r]);
            }
            if vocab == 4 {
                let one = if kind == ConfidenceKind::Margin { 1.0 } else { 0.0 };
                assert!((want[0] - one).abs() < 1e-6, "{kind:?} with one allowed column: {}", want[0]);
            }
            if rows > 1 && kind == ConfidenceKind::Margin {
                assert!(want[1].abs() < 1e-6, "a tie at the top has margin 0, got {}", want[1]);
            }
        }
    }
}

/// Classifier-free guidance on bf16 and f32 logits: one f32 expression per element, so bf16
/// output within one rounding of the CPU twin and f32 equal.
#[test]
fn cfg_combine_matches_cpu() {
    let Some(g) = gpu("cfg_combine_matches_cpu") else { return };
    let mut rng = fresh_rng("cfg_combine");
    let (rows, vocab) = (13usize, 517usize);
    let lr = bf16_round(&normal_vec(&mut rng, 2 * rows * vocab, 2.0));
    let shape = VocabShape { rows, vocab, valid: vocab };
    for scale in [0.0f32, 1.5] {
        let mut want = lr.clone();
        cpu::sampler::cfg_combine(&mut want, rows, vocab, scale);
        let mut gl = g.upload(&lr).unwrap();
        g.cfg_combine(&mut gl, shape, scale).unwrap();
        let got = down(&g, &gl);
        assert_close(&format!("cfg_combine bf16 scale {scale}"), &got, &want, TOL_BF16);
        assert_exact(&format!("cfg_combine keeps the unconditional rows (scale {scale})"), &got[rows * vocab..], &want[rows * vocab..]);
        let mut gf = g.upload_f32(&lr).unwrap();
        g.cfg_combine(&mut gf, shape, scale).unwrap();
        assert_exact(&format!("cfg_combine f32 scale {scale}"), &down(&g, &gf), &want);
    }
}
