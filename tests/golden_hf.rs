//! The CPU backend against Hugging Face transformers (fixtures made by
//! tests/golden/make_golden.py): logits, MLM loss and the gradient of every parameter, for the
//! post-LN (XLM-R base/large) and pre-LN (XL/XXL) architectures, on a right-padded batch.
//!
//! Tolerances (f32 on both sides, different summation orders):
//! - logits and loss: 1e-5 relative to the tensor's largest magnitude;
//! - gradients: 1e-4 relative to each gradient tensor's largest magnitude, because gradients
//!   go through more reductions (a LayerNorm backward and attention backward per layer);
//! - attention key biases have an exactly zero true gradient (softmax is shift-invariant), so
//!   they are checked to be ≈ 0 in absolute terms instead.

mod common;
use common::*;
use dlm_engine::backend::cpu::CpuBackend;
use dlm_engine::backend::Dropout;
use dlm_engine::model::{Batch, LossRows, XlmR};

fn check_arch(arch: &str) {
    check_arch_on(arch, CpuBackend::new());
}

fn check_arch_on(arch: &str, backend: CpuBackend) {
    let dir = fixtures().join(arch);
    let g = read(&dir.join("golden.safetensors"));
    let mut model = XlmR::load(backend, &dir).unwrap();
    let ids_t = &g["input_ids"];
    let (b, t) = (ids_t.shape[0], ids_t.shape[1]);
    let batch = Batch { ids: ids(ids_t), batch: b, seq: t };
    let v = model.config().vocab_size;

    // Logits at every position, pads included.
    let all: Vec<i32> = (0..(b * t) as i32).collect();
    let logits = model.logits(&batch, &all).unwrap();
    let e = rel_err(&logits, &g["logits"].data);
    eprintln!("{arch}: logits relative error {e:e}");
    assert!(e < 1e-5, "{arch}: logits relative error {e:e}");
    assert_eq!(logits.len(), b * t * v);

    // MLM loss = mean CE over labelled positions, and every parameter's gradient.
    let labels = ids(&g["labels"]);
    let rows: Vec<i32> = (0..labels.len() as i32).filter(|&i| labels[i as usize] != -100).collect();
    let targets: Vec<i32> = rows.iter().map(|&i| labels[i as usize]).collect();
    let w = 1.0 / rows.len() as f32;
    let loss = LossRows { weights: vec![w; rows.len()], rows, targets };
    let l = model.loss_and_grad(&batch, &loss, Dropout::off(), 0.0).unwrap();
    let want = g["loss"].data[0];
    assert!(((l as f64 - want) / want).abs() < 1e-5, "{arch}: loss {l} vs HF {want}");
    check_grads(arch, &model, &g);
}

pub fn check_grads(what: &str, model: &XlmR<CpuBackend>, g: &std::collections::HashMap<String, T>) {
    let mut checked = 0;
    let mut worst = (0.0f64, String::new());
    for (i, name) in model.param_names().iter().enumerate() {
        let key = format!("grad.{name}");
        let want = g.get(&key).unwrap_or_else(|| panic!("{what}: fixture has no `{key}`"));
        let got = &model.download_param(i, &model.grads()[i]).unwrap();
        if name.contains("attention.self.key.bias") {
            let mx = got.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(mx < 1e-6, "{what}: {name} should be ~0, max |g| = {mx}");
        } else {
            let e = rel_err(got, &want.data);
            if e > worst.0 {
                worst = (e, name.clone());
            }
            assert!(e < 1e-4, "{what}: gradient of {name} relative error {e:e}");
        }
        checked += 1;
    }
    eprintln!("{what}: worst gradient relative error {:e} ({})", worst.0, worst.1);
    let in_fixture = g.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(checked, in_fixture, "{what}: the fixture has gradients the model does not");
}

#[test]
fn post_ln_matches_hf() {
    check_arch("postln");
}

#[test]
fn pre_ln_matches_hf() {
    check_arch("preln");
}

/// The GPU backend pads the head's vocabulary to a multiple of 64; the same padding on the CPU
/// must change nothing (302 ids → 320 head columns).
#[test]
fn padded_head_matches_hf() {
    let m = XlmR::load(CpuBackend::with_vocab_align(64), &fixtures().join("postln")).unwrap();
    assert_eq!((m.config().vocab_size, m.head_vocab()), (302, 320));
    check_arch_on("postln", CpuBackend::with_vocab_align(64));
    check_arch_on("preln", CpuBackend::with_vocab_align(64));
}

/// bf16 / f16 files and prefix-less names with an explicit tied decoder load to the same model.
#[test]
fn loader_variants_agree() {
    let base = XlmR::load(CpuBackend::new(), &fixtures().join("postln")).unwrap();
    for (dir, tol) in [("postln_noprefix", 0.0f32), ("postln_f16", 1e-3), ("postln_bf16", 8e-3)] {
        let m = XlmR::load(CpuBackend::new(), &fixtures().join(dir)).unwrap();
        assert_eq!(m.param_names(), base.param_names(), "{dir}");
        for (i, name) in base.param_names().iter().enumerate() {
            let (a, b) = (&m.values()[i], &base.values()[i]);
            let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1e-2)).fold(0.0f32, f32::max);
            assert!(worst <= tol, "{dir}: {name} differs by {worst}");
        }
    }
}
