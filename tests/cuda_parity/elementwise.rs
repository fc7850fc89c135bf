//! kernels/elementwise.cu: copies, sums, dropout masks, GELU, Philox. CUDA launcher: src/backend/cuda/elementwise.rs; CPU twin: src/backend/cpu/elementwise.rs.

use super::*;

#[test]
fn memory_ops_round_trip() {
    let Some(g) = gpu("memory_ops_round_trip") else { return };
    let mut rng = fresh_rng("memory_ops_round_trip");
    for n in [1usize, 7, 1000, 65_537] {
        let (a, ar) = up(&g, &normal_vec(&mut rng, n, 3.0));
        assert_eq!(g.len(&a), n);
        assert_exact("upload/download", &down(&g, &a), &ar);
        let (b, br) = up(&g, &normal_vec(&mut rng, n, 1.0));
        let mut c = g.upload(&poison(n)).unwrap();
        g.copy(&a, &mut c).unwrap();
        assert_exact("copy", &down(&g, &c), &ar);
        g.add_assign(&mut c, &b).unwrap();
        let want: Vec<f32> = ar.iter().zip(&br).map(|(x, y)| x + y).collect();
        assert_exact("add_assign bf16", &down(&g, &c), &bf16_round(&want));
        let mut f = g.upload_f32(&ar).unwrap();
        g.add_assign(&mut f, &b).unwrap();
        assert_exact("add_assign into f32", &down(&g, &f), &want);
        g.fill_zero(&mut c).unwrap();
        assert_exact("fill_zero", &down(&g, &c), &vec![0.0; n]);
        assert_exact("zeros", &down(&g, &g.zeros(n).unwrap()), &vec![0.0; n]);
    }
    assert!(g.copy(&g.zeros(3).unwrap(), &mut g.zeros(4).unwrap()).is_err(), "length mismatch must be an error");
}

#[test]
fn philox_matches_cpu_bit_for_bit() {
    let Some(g) = gpu("philox_matches_cpu_bit_for_bit") else { return };
    for (seed, stream, first) in [(0u64, 0u64, 0u64), (42, 7, 5), (u64::MAX, 1 << 40, (1 << 32) - 9), (0x1234_5678_9abc, 3, 1 << 34)] {
        let dev = g.philox_u32_on_device(seed, stream, first, 1003).unwrap();
        let cpu: Vec<u32> = (0..1003).map(|i| dlm_engine::rng::philox_u32(seed, stream, first + i)).collect();
        assert_eq!(dev, cpu, "Philox stream (seed {seed}, stream {stream}) from {first}");
    }
}

#[test]
fn dropout_masks_match_cpu() {
    let Some(g) = gpu("dropout_masks_match_cpu") else { return };
    let mut rng = fresh_rng("dropout");
    for (n, p, seed, stream) in [(1000usize, 0.1f32, 42u64, 7u64), (70_001, 0.5, 3, 1 << 33)] {
        // Values kept away from zero so that a zero can only come from the mask.
        let v: Vec<f32> = normal_vec(&mut rng, n, 1.0).into_iter().map(|x| x + x.signum() * 0.5).collect();
        let drop = Dropout { p, seed };
        let (mut x, mut want) = up(&g, &v);
        g.dropout_fwd(&mut x, drop, stream).unwrap();
        cpu::elementwise::dropout_apply(&mut want, p, seed, stream);
        assert_exact("dropout_fwd (bf16)", &down(&g, &x), &bf16_round(&want));
        let mut xf = g.upload_f32(&v).unwrap();
        g.dropout_bwd(&mut xf, drop, stream).unwrap();
        let mut wf = v.clone();
        cpu::elementwise::dropout_apply(&mut wf, p, seed, stream);
        assert_exact("dropout_bwd (f32)", &down(&g, &xf), &wf);
    }
}

#[test]
fn gelu_matches_cpu() {
    let Some(g) = gpu("gelu_matches_cpu") else { return };
    let mut rng = fresh_rng("gelu");
    let n = 100_003;
    let (x, xr) = up(&g, &normal_vec(&mut rng, n, 3.0));
    let mut y = g.upload(&poison(n)).unwrap();
    g.gelu_fwd(&x, &mut y).unwrap();
    let mut want = vec![0.0; n];
    cpu::elementwise::gelu_fwd(&xr, &mut want);
    assert_close("gelu_fwd", &down(&g, &y), &want, TOL_BF16);
    let (dy, dyr) = up(&g, &normal_vec(&mut rng, n, 1.0));
    let mut dx = g.upload(&poison(n)).unwrap();
    g.gelu_bwd(&x, &dy, &mut dx).unwrap();
    let mut dwant = vec![0.0; n];
    cpu::elementwise::gelu_bwd(&xr, &dyr, &mut dwant);
    assert_close("gelu_bwd", &down(&g, &dx), &dwant, TOL_BF16);
}

/// The length predictor's ReLU and tanh (bf16 in and out, f32 arithmetic), forward and backward.
#[test]
fn relu_and_tanh_match_cpu() {
    let Some(g) = gpu("relu_and_tanh_match_cpu") else { return };
    let mut rng = fresh_rng("relu_and_tanh");
    let n = 70_001;
    let (x, xr) = up(&g, &normal_vec(&mut rng, n, 2.0));
    let (dy, dyr) = up(&g, &normal_vec(&mut rng, n, 1.0));
    for act in [Activation::Relu, Activation::Tanh] {
        let mut y = g.upload(&poison(n)).unwrap();
        g.activation_fwd(act, &x, &mut y).unwrap();
        let mut want = vec![0.0; n];
        cpu::elementwise::activation_fwd(act, &xr, &mut want);
        assert_close(&format!("{act:?} forward"), &down(&g, &y), &want, TOL_BF16);
        // The backward reads the forward's input (ReLU) or its stored output (tanh).
        let (saved, saved_host) = match act {
            Activation::Relu => (&x, xr.clone()),
            Activation::Tanh => (&y, down(&g, &y)),
        };
        let mut dx = g.upload(&poison(n)).unwrap();
        g.activation_bwd(act, saved, &dy, &mut dx).unwrap();
        let mut dwant = vec![0.0; n];
        cpu::elementwise::activation_bwd(act, &saved_host, &dyr, &mut dwant);
        assert_close(&format!("{act:?} backward"), &down(&g, &dx), &dwant, TOL_BF16);
    }
}
