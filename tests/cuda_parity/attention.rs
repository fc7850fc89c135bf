//! kernels/attention.cu and attention_bwd.cu: flash-style attention with padding and dropout. CUDA launcher: src/backend/cuda/attention.rs; CPU twin: src/backend/cpu/attention.rs.

use super::*;

/// Right padding of random length per sequence (`padded`), else every key real; with batch > 2
/// and padding the last sequence is all padding.
fn key_mask(rng: &mut dlm_engine::rng::Rng, batch: usize, seq: usize, padded: bool) -> Vec<i32> {
    let mut mask = vec![0i32; batch * seq];
    for b in 0..batch {
        let len = if !padded {
            seq
        } else if batch > 2 && b == batch - 1 {
            0
        } else {
            rng.int_in(1, seq as u64) as usize
        };
        mask[b * seq..b * seq + len].fill(1);
    }
    mask
}

/// lse agrees to f32 rounding (a row of padding only is -inf on both sides).
fn assert_lse_close(tag: &str, got: &[f32], want: &[f32]) {
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let ok = if b.is_infinite() { a == b } else { (a - b).abs() as f64 <= TOL_STAT * (1.0 + b.abs() as f64) };
        assert!(ok, "{tag} lse[{i}]: got {a}, want {b}");
    }
}

/// Odd sizes, head dims from 1 to 128 (multiples of 16 and not, the test models' 8 included),
/// sequences longer than one 64-key tile, an all-padding sequence.
const ATTN_SHAPES: [(usize, usize, usize, usize); 8] =
    [(1, 1, 1, 1), (3, 37, 2, 8), (2, 128, 12, 64), (1, 50, 2, 80), (2, 33, 1, 128), (2, 70, 3, 40), (4, 17, 2, 7), (3, 45, 4, 32)];

#[test]
fn attention_forward_matches_cpu() {
    let Some(g) = gpu("attention_forward_matches_cpu") else { return };
    let mut rng = fresh_rng("attention");
    for &(batch, seq, heads, head_dim) in &ATTN_SHAPES {
        let s = AttnShape { batch, seq, heads, head_dim };
        let n = s.tokens() * s.hidden();
        let (q, qr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        let (k, kr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        let (v, vr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        for (padded, drop) in [
            (true, Dropout::off()),
            (false, Dropout::off()),
            (true, Dropout { p: 0.1, seed: 42 }),
            (false, Dropout { p: 0.5, seed: u64::MAX }),
        ] {
            let mask = key_mask(&mut rng, batch, seq, padded);
            let gm = g.upload_i32(&mask).unwrap();
            let stream = 17 + head_dim as u64;
            let mut out = g.upload(&poison(n)).unwrap();
            let mut lse = g.upload_f32(&poison(batch * heads * seq)).unwrap();
            g.attention_fwd(Qkv { q: &q, k: &k, v: &v }, &gm, &mut out, &mut lse, AttnCall { shape: s, drop, stream }).unwrap();
            let (mut o, mut l) = (vec![0.0; n], vec![0.0; batch * heads * seq]);
            cpu::attention::attention_fwd(Qkv { q: &qr, k: &kr, v: &vr }, &mask, &mut o, &mut l, AttnCall { shape: s, drop, stream });
            let tag = format!("attention {s:?} padded={padded} dropout={}", drop.p);
            assert_close(&format!("{tag} out"), &down(&g, &out), &o, TOL_BF16);
            assert_lse_close(&tag, &down(&g, &lse), &l);
        }
    }
}

/// The dropout mask itself, element by element: with Q = K = 0 every real key gets probability
/// 1/len, and with V_j the j-th unit vector, out[i][j] = keep_ij / len. A zero on one side only is
/// a mask mismatch (bf16 rounding never turns 1/(len·(1-p)) into zero).
#[test]
fn attention_dropout_mask_matches_cpu_exactly() {
    let Some(g) = gpu("attention_dropout_mask_matches_cpu_exactly") else { return };
    let s = AttnShape { batch: 3, seq: 45, heads: 3, head_dim: 64 };
    let n = s.tokens() * s.hidden();
    let mut vv = vec![0.0f32; n];
    for t in 0..s.tokens() {
        for h in 0..s.heads {
            vv[t * s.hidden() + h * s.head_dim + t % s.seq] = 1.0;
        }
    }
    let zeros = g.zeros(n).unwrap();
    let v = g.upload(&vv).unwrap();
    // Fixed lengths (45, 20, 0) keep the dropped count's spread small for the rate check below.
    let mask: Vec<i32> = (0..s.tokens()).map(|i| ((i % s.seq) < [45, 20, 0][i / s.seq]) as i32).collect();
    let gm = g.upload_i32(&mask).unwrap();
    for (p, seed, stream) in [(0.1f32, 3u64, 11u64), (0.5, 0xDEAD_BEEF_F00D, 1 << 35)] {
        let drop = Dropout { p, seed };
        let (mut out, mut lse) = (g.upload(&poison(n)).unwrap(), g.zeros(s.batch * s.heads * s.seq).unwrap());
        g.attention_fwd(Qkv { q: &zeros, k: &zeros, v: &v }, &gm, &mut out, &mut lse, AttnCall { shape: s, drop, stream }).unwrap();
        let (mut o, mut l) = (vec![0.0; n], vec![0.0; s.batch * s.heads * s.seq]);
        cpu::attention::attention_fwd(
            Qkv { q: &vec![0.0; n], k: &vec![0.0; n], v: &vv },
            &mask,
            &mut o,
            &mut l,
            AttnCall { shape: s, drop, stream },
        );
        let got = down(&g, &out);
        let (mut kept, mut dropped) = (0, 0);
        for (i, (&a, &b)) in got.iter().zip(&o).enumerate() {
            assert_eq!(a == 0.0, b == 0.0, "p={p}: mask differs at element {i} (gpu {a}, cpu {b})");
            assert!(!a.is_nan(), "p={p}: element {i} not written");
            if i % s.head_dim < s.seq && mask[(i / s.hidden() / s.seq) * s.seq + i % s.head_dim] != 0 {
                if b == 0.0 {
                    dropped += 1
                } else {
                    kept += 1
                }
            }
        }
        // Both decisions occur, near the expected rate.
        let rate = dropped as f64 / (kept + dropped) as f64;
        assert!((rate - p as f64).abs() < 0.05, "p={p}: dropped {dropped} of {} (rate {rate:.3})", kept + dropped);
    }
}

#[test]
fn attention_backward_matches_cpu() {
    let Some(g) = gpu("attention_backward_matches_cpu") else { return };
    let mut rng = fresh_rng("attention_backward");
    for &(batch, seq, heads, head_dim) in &ATTN_SHAPES {
        let s = AttnShape { batch, seq, heads, head_dim };
        let n = s.tokens() * s.hidden();
        let rows = batch * heads * seq;
        let (q, qr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        let (k, kr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        let (v, vr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        let (dout, dr) = up(&g, &normal_vec(&mut rng, n, 1.0));
        for (padded, drop) in [
            (true, Dropout::off()),
            (false, Dropout::off()),
            (true, Dropout { p: 0.1, seed: 7 }),
            (false, Dropout { p: 0.3, seed: 1 << 40 }),
        ] {
            let mask = key_mask(&mut rng, batch, seq, padded);
            let gm = g.upload_i32(&mask).unwrap();
            let stream = 3 + seq as u64;
            // The forward's outputs from the CPU, given to both sides: this isolates the backward.
            let (mut o, mut l) = (vec![0.0; n], vec![0.0; rows]);
            cpu::attention::attention_fwd(Qkv { q: &qr, k: &kr, v: &vr }, &mask, &mut o, &mut l, AttnCall { shape: s, drop, stream });
            let (out, or) = up(&g, &o);
            let lse = g.upload_f32(&l).unwrap();
            let (mut dq, mut dk, mut dv) = (g.upload(&poison(n)).unwrap(), g.upload(&poison(n)).unwrap(), g.upload(&poison(n)).unwrap());
            g.attention_bwd(
                Qkv { q: &q, k: &k, v: &v },
                &gm,
                AttnSaved { out: &out, lse: &lse },
                &dout,
                QkvGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv },
                AttnCall { shape: s, drop, stream },
            )
            .unwrap();
            let (mut wq, mut wk, mut wv) = (vec![f32::NAN; n], vec![f32::NAN; n], vec![f32::NAN; n]);
            cpu::attention::attention_bwd(
                Qkv { q: &qr, k: &kr, v: &vr },
                &mask,
                AttnSaved { out: &or, lse: &l },
                &dr,
                QkvGrads { dq: &mut wq, dk: &mut wk, dv: &mut wv },
                AttnCall { shape: s, drop, stream },
            );
            let tag = format!("attention_bwd {s:?} padded={padded} dropout={}", drop.p);
            assert_close(&format!("{tag} dq"), &down(&g, &dq), &wq, TOL_BF16);
            assert_close(&format!("{tag} dk"), &down(&g, &dk), &wk, TOL_BF16);
            assert_close(&format!("{tag} dv"), &down(&g, &dv), &wv, TOL_BF16);
        }
    }
    // A head past the kernels' 128 dims is an error, not a wrong answer.
    let s = AttnShape { batch: 1, seq: 2, heads: 1, head_dim: 129 };
    let (z, m) = (g.zeros(258).unwrap(), g.upload_i32(&[1; 2]).unwrap());
    let (mut a, mut b, mut c) = (g.zeros(258).unwrap(), g.zeros(258).unwrap(), g.zeros(258).unwrap());
    let l = g.zeros(2).unwrap();
    assert!(g
        .attention_bwd(
            Qkv { q: &z, k: &z, v: &z },
            &m,
            AttnSaved { out: &z, lse: &l },
            &z,
            QkvGrads { dq: &mut a, dk: &mut b, dv: &mut c },
            AttnCall { shape: s, drop: Dropout::off(), stream: 0 }
        )
        .is_err());
}
