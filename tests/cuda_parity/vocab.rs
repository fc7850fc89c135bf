//! kernels/vocab.cu: the fused cross-entropy. CUDA launcher: src/backend/cuda/vocab.rs; CPU twin: src/backend/cpu/vocab.rs.

use super::*;

#[test]
fn cross_entropy_matches_cpu() {
    let Some(g) = gpu("cross_entropy_matches_cpu") else { return };
    let mut rng = fresh_rng("cross_entropy");
    for &(rows, vocab, valid, ls) in &[(7usize, 1003usize, 1000usize, 0.0f32), (5, 1003, 1003, 0.1), (3, 250_048, 250_002, 0.1)] {
        let (mut logits, lr) = up(&g, &normal_vec(&mut rng, rows * vocab, 3.0));
        let targets: Vec<i32> = (0..rows).map(|_| rng.int_in(0, valid as u64 - 1) as i32).collect();
        let weights: Vec<f32> = (0..rows).map(|_| rng.uniform() + 0.1).collect();
        let gt = g.upload_i32(&targets).unwrap();
        let loss = g.cross_entropy_fwd_bwd(&mut logits, &gt, &weights, VocabShape { rows, vocab, valid }, ls).unwrap();
        let mut grad = lr.clone();
        let want = cpu::vocab::cross_entropy_fwd_bwd(&mut grad, &targets, &weights, VocabShape { rows, vocab, valid }, ls);
        let tag = format!("cross_entropy {rows}x{vocab} valid {valid} ls {ls}");
        assert_close(&format!("{tag} loss"), &loss, &want, TOL_STAT);
        assert_close(&format!("{tag} dlogits"), &down(&g, &logits), &grad, TOL_BF16);
    }
    let (mut logits, _) = up(&g, &normal_vec(&mut rng, 2 * 10, 1.0));
    let bad = g.upload_i32(&[1, 10]).unwrap();
    assert!(
        g.cross_entropy_fwd_bwd(&mut logits, &bad, &[1.0, 1.0], VocabShape { rows: 2, vocab: 10, valid: 10 }, 0.0).is_err(),
        "a target past the vocabulary must be an error"
    );
}
