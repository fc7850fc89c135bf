//! kernels/noise.cu: the training noise, bit for bit. CUDA launcher: src/backend/cuda/noise.rs; CPU twin: src/backend/cpu/noise.rs (src/rdm/noise.rs for the noise).

use super::*;

#[test]
fn q_sample_matches_cpu_bit_for_bit() {
    // The device noise against the CPU twin: same masked ids, positions, targets and weights for
    // random batches (padding, an example with no maskable slot, every reweighting), and mask
    // rates that follow the host's timesteps (P(masked) = t/T for both coupled copies).
    let Some(g) = gpu("q_sample_matches_cpu_bit_for_bit") else { return };
    check_q_sample(&g);
}

#[test]
fn q_sample_check_holds_for_the_cpu_twin_itself() {
    // Runs everywhere: the harness above with the CPU backend on both sides, so its statistics
    // and shape checks are exercised even without a GPU.
    check_q_sample(&CpuBackend::new());
}

fn check_q_sample<B: Backend>(g: &B) {
    let mut rng = fresh_rng("q_sample");
    let (pad, mask_id) = (1, 3);
    let (mut excess, mut maskable_total) = (0.0f64, 0.0f64);
    for (trial, rw) in [Reweighting::Linear, Reweighting::Reciprocal, Reweighting::Constant].into_iter().cycle().take(24).enumerate() {
        let b = 1 + rng.int_in(0, 40) as usize;
        let rows: Vec<Example> = (0..b)
            .map(|i| {
                let len = 2 + rng.int_in(0, 300) as usize;
                let src_len = if i == 0 { len } else { 1 + rng.int_in(0, len as u64 - 2) as usize };
                Example { ids: (0..len).map(|_| 4 + rng.int_in(0, 5000) as i32).collect(), src_len }
            })
            .collect();
        let spec = NoiseSpec {
            key: rng.next_u64(),
            steps: [50, 1, 2, 1000][trial % 4],
            pad,
            mask_id,
            reweighting: rw,
            scale: 0.5,
            first_example: [0, 3, 0, 1 << 40][trial % 4],
        };
        let (batch, src_len) = doubled_batch(&rows, pad);
        let n = batch.ids.len();
        let cpu_be = CpuBackend::new();
        let (mut c_ids, mut c_rows, mut c_tgt, mut c_w) = (batch.ids.clone(), vec![-7; n], vec![-7; n], vec![f32::NAN; n]);
        let nc = cpu_be
            .q_sample(&mut c_ids, batch.seq, &src_len, &spec, LossSlots { rows: &mut c_rows, targets: &mut c_tgt, weights: &mut c_w })
            .unwrap();
        let mut g_ids = g.upload_i32(&batch.ids).unwrap();
        let (mut g_rows, mut g_tgt, mut g_w) =
            (g.upload_i32(&vec![-7; n]).unwrap(), g.upload_i32(&vec![-7; n]).unwrap(), g.upload_f32(&poison(n)).unwrap());
        let ng = g
            .q_sample(&mut g_ids, batch.seq, &src_len, &spec, LossSlots { rows: &mut g_rows, targets: &mut g_tgt, weights: &mut g_w })
            .unwrap();
        let tag = format!("q_sample trial {trial} (B={b}, seq={}, T={}, {rw:?})", batch.seq, spec.steps);
        assert_eq!(ng, nc, "{tag}: masked count");
        assert_eq!(g.read_i32(&g_ids).unwrap(), c_ids, "{tag}: noised ids");
        assert_eq!(&g.read_i32(&g_rows).unwrap()[..nc], &c_rows[..nc], "{tag}: positions");
        assert_eq!(&g.read_i32(&g_tgt).unwrap()[..nc], &c_tgt[..nc], "{tag}: targets");
        assert_exact(&format!("{tag}: weights"), &g.download(&g_w).unwrap()[..nc], &c_w[..nc]);
        for (ex, r) in rows.iter().enumerate() {
            let (ta, tb) = coupled_t(spec.key, spec.first_example as usize + ex, spec.steps);
            let maskable = (r.src_len..r.ids.len()).count() as f64;
            for (copy, t) in [(ex, ta), (b + ex, tb)] {
                let row = &c_ids[copy * batch.seq..][..batch.seq];
                let masked = row.iter().filter(|&&x| x == mask_id).count() as f64;
                excess += masked - maskable * t as f64 / spec.steps as f64;
                maskable_total += maskable;
            }
        }
    }
    let rate = excess / maskable_total;
    assert!(rate.abs() < 0.01, "device masks deviate from t/T by {rate} per maskable slot");
    // Bad shapes are errors, not launches.
    let mut short = g.upload_i32(&[5; 10]).unwrap();
    let spec = NoiseSpec { key: 1, steps: 50, pad, mask_id, reweighting: Reweighting::Linear, scale: 1.0, first_example: 0 };
    let (mut r, mut t, mut w) = (g.upload_i32(&[0; 10]).unwrap(), g.upload_i32(&[0; 10]).unwrap(), g.zeros(10).unwrap());
    assert!(
        g.q_sample(&mut short, 3, &[1, 1], &spec, LossSlots { rows: &mut r, targets: &mut t, weights: &mut w }).is_err(),
        "10 ids are not 2×2 rows of 3"
    );
}
