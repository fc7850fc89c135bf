//! kernels/adamw.cu: sums of squares and the AdamW update. CUDA launcher: src/backend/cuda/adamw.rs; CPU twin: src/backend/cpu/adamw.rs.

use super::*;

#[test]
fn optimizer_ops_match_cpu() {
    let Some(g) = gpu("optimizer_ops_match_cpu") else { return };
    let mut rng = fresh_rng("optimizer");
    let n = 100_003;
    let (x, xr) = up(&g, &normal_vec(&mut rng, n, 2.0));
    let want = cpu::adamw::sum_squares(&xr);
    let got = g.sum_squares(&x).unwrap();
    assert!(((got - want) / want).abs() < 1e-9, "sum_squares {got} vs {want}");

    let hp = AdamW::default();
    for f32_grads in [false, true] {
        let (mut p, mut pr) = up(&g, &normal_vec(&mut rng, n, 0.05));
        let (mut m, mut mr) = up(&g, &normal_vec(&mut rng, n, 0.01));
        let vinit: Vec<f32> = normal_vec(&mut rng, n, 0.01).iter().map(|v| v * v).collect();
        let (mut v, mut vr) = up(&g, &vinit);
        for step in 1..=3u64 {
            let gv = normal_vec(&mut rng, n, 0.1);
            let (grad, gr) = if f32_grads { (g.upload_f32(&gv).unwrap(), gv.clone()) } else { up(&g, &gv) };
            // Step 2 clips (a factor below 1 applied as the gradient is read).
            let gs = if step == 2 { 0.37 } else { 1.0 };
            g.adamw(&mut p, &grad, Moments { m: &mut m, v: &mut v }, hp, AdamWStep { lr: 1e-3, step, grad_scale: gs }).unwrap();
            cpu::adamw::adamw(&mut pr, &gr, Moments { m: &mut mr, v: &mut vr }, hp, AdamWStep { lr: 1e-3, step, grad_scale: gs });
        }
        let tag = format!("adamw (f32 grads: {f32_grads})");
        // Un-fused f32 operations in the same order on both sides: bit-equal.
        assert_exact(&format!("{tag} param"), &down(&g, &p), &pr);
        assert_exact(&format!("{tag} m"), &down(&g, &m), &mr);
        assert_exact(&format!("{tag} v"), &down(&g, &v), &vr);
        // The bf16 copy that forward ops read must follow the master.
        let row0 = g.upload_i32(&[0]).unwrap();
        let mut shadow = g.zeros(n).unwrap();
        g.gather_rows(&p, &row0, &mut shadow, 1, n).unwrap();
        assert_exact(&format!("{tag} bf16 copy"), &down(&g, &shadow), &bf16_round(&pr));
    }
}
