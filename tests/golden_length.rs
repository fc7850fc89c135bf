//! The length predictor (docs/method.md §5.1) on the CPU against PyTorch: `nn.TransformerEncoder`
//! (one post-LN ReLU layer) and the MLP of the official code over the frozen backbone's features,
//! made by tests/golden/make_golden.py (`postln/length.safetensors`: the module's parameters under
//! their official names, a right-padded batch of prompts, the logits, the mean CE loss and every
//! parameter's gradient). Tolerances as tests/golden_hf.rs: logits and loss 1e-5, gradients 1e-4,
//! relative to each tensor's largest magnitude.

mod common;
use common::*;
use dlm_engine::backend::cpu::CpuBackend;
use dlm_engine::backend::Dropout;
use dlm_engine::model::weights::read_safetensors;
use dlm_engine::model::{Part, XlmR};
use std::collections::HashMap;

/// The model's gradients under the official names: the `.q`, `.k`, `.v` parts of the attention's
/// input projection concatenated in that order, as PyTorch packs them.
fn official_grads(model: &XlmR<CpuBackend>) -> HashMap<String, Vec<f32>> {
    let mut out: HashMap<String, Vec<f32>> = HashMap::new();
    for (j, i) in model.trainable().enumerate() {
        let name = &model.param_names()[i];
        let g = model.download_param(i, &model.grads()[j]).unwrap();
        let base = name.strip_suffix(".q").or(name.strip_suffix(".k")).or(name.strip_suffix(".v")).unwrap_or(name);
        out.entry(base.to_string()).or_default().extend(g);
    }
    out
}

#[test]
fn length_predictor_matches_pytorch() {
    let g = read(&fixtures().join("postln/length.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    length_model_dir(tmp.path(), &length_fixture_params(&g));
    let mut model = XlmR::load(CpuBackend::new(), tmp.path()).unwrap();
    assert!(model.has_length_predictor());
    let prompts = length_prompts(&g);

    let logits = model.length_logits(&prompts).unwrap();
    let e = rel_err(&logits, &g["logits"].data);
    eprintln!("length logits relative error {e:e}");
    assert!(e < 1e-5, "length logits relative error {e:e}");

    model.set_trainable(Part::Length).unwrap();
    let classes = ids(&g["classes"]);
    let loss = model.length_loss_and_grad(&prompts, &classes, Dropout::off(), 1.0).unwrap();
    let want = g["loss"].data[0];
    assert!(((loss as f64 - want) / want).abs() < 1e-5, "length loss {loss} vs PyTorch {want}");
    // Only the module has gradients; each official tensor's is checked.
    assert_eq!(model.grads().len(), 20);
    let grads = official_grads(&model);
    let mut worst = (0.0f64, String::new());
    for (k, want) in g.iter().filter(|(k, _)| k.starts_with("grad.")) {
        let name = &k["grad.".len()..];
        let got = grads.get(name).unwrap_or_else(|| panic!("the model has no gradient for `{name}`"));
        let e = rel_err(got, &want.data);
        assert!(e < 1e-4, "gradient of {name}: relative error {e:e}");
        if e > worst.0 {
            worst = (e, name.to_string());
        }
    }
    assert_eq!(grads.len(), 16);
    eprintln!("length predictor: worst gradient relative error {:e} ({})", worst.0, worst.1);
}

/// Saving writes the module under its official names, bit for bit, beside the unchanged masked
/// LM; a model without the module loads as before and has none.
#[test]
fn length_predictor_round_trips_and_is_optional() {
    let g = read(&fixtures().join("postln/length.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    let params = length_fixture_params(&g);
    length_model_dir(&tmp.path().join("in"), &params);
    let model = XlmR::load(CpuBackend::new(), &tmp.path().join("in")).unwrap();
    model.save(&tmp.path().join("out")).unwrap();
    let saved = read_safetensors(&tmp.path().join("out/model.safetensors")).unwrap();
    let base = read_safetensors(&fixtures().join("postln/model.safetensors")).unwrap();
    assert_eq!(saved.len(), base.len() + params.len());
    for (n, s, d) in &params {
        assert_eq!((&saved[n].shape, &saved[n].data), (s, d), "{n}");
    }
    for (n, t) in &base {
        assert_eq!(saved[n].data, t.data, "{n}");
    }

    let plain = XlmR::load(CpuBackend::new(), &fixtures().join("postln")).unwrap();
    assert!(!plain.has_length_predictor());
    assert_eq!(plain.param_names().len(), base.len());
}

#[test]
fn an_incomplete_or_misshapen_length_predictor_is_an_error_naming_the_tensor() {
    let g = read(&fixtures().join("postln/length.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    let mut params = length_fixture_params(&g);
    params.retain(|(n, _, _)| n != "length_predictor.2.bias");
    length_model_dir(tmp.path(), &params);
    let err = XlmR::load(CpuBackend::new(), tmp.path()).err().unwrap().to_string();
    assert!(err.contains("missing tensor `length_predictor.2.bias`"), "{err}");

    let mut params = length_fixture_params(&g);
    params.iter_mut().find(|(n, _, _)| n == "length_predictor.0.bias").unwrap().2.pop();
    params.iter_mut().find(|(n, _, _)| n == "length_predictor.0.bias").unwrap().1[0] -= 1;
    length_model_dir(tmp.path(), &params);
    let err = XlmR::load(CpuBackend::new(), tmp.path()).err().unwrap().to_string();
    assert!(err.contains("`length_predictor.0.bias` has shape [63]"), "{err}");

    let mut params = length_fixture_params(&g);
    params.push(("length_trm.layers.1.norm1.bias".into(), vec![32], vec![0.0; 32]));
    length_model_dir(tmp.path(), &params);
    let err = XlmR::load(CpuBackend::new(), tmp.path()).err().unwrap().to_string();
    assert!(err.contains("unexpected tensor `length_trm.layers.1.norm1.bias`"), "{err}");
}

/// A model without the module gets a freshly initialised one; training it leaves every backbone
/// parameter untouched, and only the module has gradients.
#[test]
fn init_length_predictor_adds_a_trainable_module_and_freezes_the_backbone() {
    let mut model = XlmR::load_for_training(CpuBackend::new(), &fixtures().join("postln")).unwrap();
    let before: Vec<Vec<f32>> = model.values().to_vec();
    model.init_length_predictor(3).unwrap();
    assert!(model.init_length_predictor(3).is_err());
    model.set_trainable(Part::Length).unwrap();
    let mut opt = dlm_engine::train::optim::Optimizer::new(&model, Default::default()).unwrap();
    let prompts = vec![vec![0, 5, 6, 7], vec![0, 9]];
    let first = model.length_loss_and_grad(&prompts, &[2, 0], Dropout::off(), 1.0).unwrap();
    assert!((first - (514f32).ln()).abs() < 1.0, "a fresh module's loss {first} is far from ln 514");
    for _ in 0..40 {
        model.zero_grads().unwrap();
        model.length_loss_and_grad(&prompts, &[2, 0], Dropout { p: 0.1, seed: 5 }, 1.0).unwrap();
        opt.update(&mut model, 5e-3, Some(1.0)).unwrap();
    }
    model.zero_grads().unwrap();
    let last = model.length_loss_and_grad(&prompts, &[2, 0], Dropout::off(), 1.0).unwrap();
    assert!(last < first * 0.5, "the loss did not fall: {first} → {last}");
    for (i, b) in before.iter().enumerate() {
        assert!(&model.values()[i] == b, "backbone parameter {} changed", model.param_names()[i]);
    }
    // The backbone's own objective is refused while the module trains.
    let batch = dlm_engine::model::Batch { ids: vec![0, 5, 2], batch: 1, seq: 3 };
    let rows = dlm_engine::model::LossRows { rows: vec![1], targets: vec![5], weights: vec![1.0] };
    assert!(model.loss_and_grad(&batch, &rows, Dropout::off(), 0.0).is_err());
}

/// The frozen forward keeps one layer's buffers and two hidden-state buffers in turn; its
/// features must equal those of the encoder that keeps every activation (both architectures).
#[test]
fn the_frozen_forward_equals_the_one_that_keeps_its_activations() {
    for arch in ["postln", "preln"] {
        let load = || {
            let mut m = XlmR::load(CpuBackend::new(), &fixtures().join(arch)).unwrap();
            m.init_length_predictor(9).unwrap();
            m
        };
        let (mut lean, mut kept) = (load(), load());
        let prompts = vec![vec![0, 5, 6, 7, 8], vec![0, 9, 10]];
        // A forward of the same shape first: the length pass then reuses its (kept) workspace.
        kept.logits(&dlm_engine::model::Batch::from_rows(&prompts, 1), &[0]).unwrap();
        assert_eq!(lean.length_logits(&prompts).unwrap(), kept.length_logits(&prompts).unwrap(), "{arch}");
    }
}
