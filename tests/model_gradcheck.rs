//! Finite-difference check of the whole model's gradients on tiny random models of both
//! architectures (the HF golden tests are the exact check; this one needs no fixtures and
//! exercises dropout's mask regeneration in the backward pass too).

use dlm_engine::backend::cpu::CpuBackend;
use dlm_engine::backend::Dropout;
use dlm_engine::model::{Batch, LossRows, ModelConfig, XlmR};

fn check(preset: &str, drop: Dropout) {
    let mut cfg = ModelConfig::preset(preset).unwrap();
    cfg.vocab_size = 40;
    cfg.hidden = 16;
    cfg.intermediate = 24;
    cfg.heads = 2;
    let mut model = XlmR::random(CpuBackend::new(), cfg.clone(), 3).unwrap();
    // Move every parameter away from its init so no gradient is trivially zero.
    let mut rng = dlm_engine::rng::Rng::new(11, 0);
    for i in 0..model.param_names().len() {
        let mut d = model.values()[i].clone();
        for x in d.iter_mut() {
            *x += 0.3 * rng.normal();
        }
        model.set_value(i, &d).unwrap();
    }
    let batch = Batch::from_rows(&[vec![0, 5, 9, 13, 7, 2], vec![0, 22, 31, 2]], 1);
    let loss = LossRows { rows: vec![1, 3, 5, 8, 9], targets: vec![4, 8, 2, 17, 30], weights: vec![0.5, 1.0, 0.25, 1.5, 1.0] };
    let l0 = model.loss_and_grad(&batch, &loss, drop, 0.0).unwrap();
    assert!(l0.is_finite());
    let grads: Vec<Vec<f32>> = model.grads().to_vec();
    let eval = |m: &mut XlmR<CpuBackend>| -> f64 {
        let mut m2 = std::mem::replace(m, XlmR::random(CpuBackend::new(), cfg.clone(), 0).unwrap());
        let r = m2.loss_and_grad(&batch, &loss, drop, 0.0).unwrap() as f64;
        *m = m2;
        r
    };
    let mut checked = 0;
    for (i, grad) in grads.iter().enumerate() {
        let n = grad.len();
        for &j in &[0, n / 3, n / 2, n - 1] {
            let orig = model.values()[i].clone();
            let eps = 1e-2f32;
            let mut p = orig.clone();
            p[j] += eps;
            model.set_value(i, &p).unwrap();
            let lp = eval(&mut model);
            p[j] -= 2.0 * eps;
            model.set_value(i, &p).unwrap();
            let lm = eval(&mut model);
            model.set_value(i, &orig).unwrap();
            let fd = (lp - lm) / (2.0 * eps as f64);
            let g = grad[j] as f64;
            assert!(
                (fd - g).abs() < 3e-3 + 0.03 * g.abs(),
                "{preset} {}[{j}]: finite difference {fd} vs backward {g}",
                model.param_names()[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 50);
}

#[test]
fn post_ln_gradients_match_finite_differences() {
    check("micro", Dropout::off());
}

#[test]
fn pre_ln_gradients_match_finite_differences() {
    check("micro-xl", Dropout::off());
}

#[test]
fn gradients_with_dropout_match_finite_differences() {
    check("micro", Dropout { p: 0.1, seed: 77 });
    check("micro-xl", Dropout { p: 0.1, seed: 78 });
}

/// The backward pass tells its `GradsReady` each trainable gradient once, in the order of
/// `grad_ready_groups`, and only when it is final: what was reported is what the pass ends with
/// (a gradient reported early, such as a tied decoder's word embeddings before the embeddings'
/// backward, would differ). Data-parallel training starts summing a gradient when it is reported.
fn reports_final_gradients(preset: &str) {
    use dlm_engine::rdm::noise::{doubled_batch, Example, NoiseSpec, Reweighting};
    let mut cfg = ModelConfig::preset(preset).unwrap();
    cfg.vocab_size = 40;
    cfg.hidden = 16;
    cfg.intermediate = 24;
    cfg.heads = 2;
    let mut model = XlmR::random(CpuBackend::new(), cfg, 3).unwrap();
    let rows = vec![Example { ids: vec![0, 5, 9, 13, 7, 2], src_len: 2 }, Example { ids: vec![0, 22, 31, 2], src_len: 1 }];
    let (batch, src_len) = doubled_batch(&rows, 1);
    let spec = NoiseSpec { key: 9, steps: 50, pad: 1, mask_id: 3, reweighting: Reweighting::Linear, scale: 1.0, first_example: 0 };
    let mut seen: Vec<(Vec<usize>, Vec<Vec<f32>>)> = Vec::new();
    let mut hook = |_: &CpuBackend, grads: &mut [Vec<f32>], ready: &[usize]| -> anyhow::Result<()> {
        seen.push((ready.to_vec(), ready.iter().map(|&i| grads[i].clone()).collect()));
        Ok(())
    };
    // A first micro-batch without a hook, as with --accumulate: the reporting pass adds to it.
    model.noised_loss_and_grad(&batch, &src_len, &spec, Dropout::off(), 0.0).unwrap();
    let drop = Dropout { p: 0.1, seed: 5 };
    let (_, masked) = model.noised_loss_and_grad_reporting(&batch, &src_len, &spec, drop, 0.0, Some(&mut hook)).unwrap();
    assert!(masked > 0, "the noise masked nothing");
    let groups: Vec<Vec<usize>> = seen.iter().map(|(g, _)| g.clone()).collect();
    assert_eq!(groups, model.grad_ready_groups(), "{preset}: the order grad_ready_groups promises");
    let mut all = groups.concat();
    all.sort_unstable();
    assert_eq!(all, (0..model.grads().len()).collect::<Vec<_>>(), "{preset}: every trainable gradient exactly once");
    for (group, values) in &seen {
        for (&i, v) in group.iter().zip(values) {
            assert!(model.grads()[i] == *v, "{preset}: {} was reported before its last addition", model.param_names()[i]);
            assert!(v.iter().any(|x| *x != 0.0), "{preset}: {} is all zeros", model.param_names()[i]);
        }
    }
}

#[test]
fn the_backward_pass_reports_each_gradient_once_when_final() {
    reports_final_gradients("micro");
    reports_final_gradients("micro-xl");
}
