//! The RDM objective against the PyTorch reference in tests/golden/make_golden.py (docs/method.md §3):
//! fixed timesteps and nested masks, the doubled batch, per-row weights w(t)/N_i/(2B), CE only at
//! masked positions (gathered before the LM head). Tolerances as in golden_hf.rs.

mod common;
use common::*;
use dlm_engine::backend::cpu::CpuBackend;
use dlm_engine::backend::Dropout;
use dlm_engine::model::XlmR;
use dlm_engine::rdm::noise::{build_noised, doubled_batch, q_sample_coupled, Example, NoiseSpec, Reweighting};

/// The fixture directory, the PyTorch objective's dump and its clean examples (source length =
/// the `partial` flags).
fn golden_rows() -> (std::path::PathBuf, std::collections::HashMap<String, T>, Vec<Example>) {
    let dir = fixtures().join("postln");
    let g = read(&dir.join("rdm.safetensors"));
    let x0 = ids(&g["x0"]);
    let partial = ids(&g["partial"]);
    let (b, l) = (g["x0"].shape[0], g["x0"].shape[1]);
    let rows = (0..b)
        .map(|i| Example { ids: x0[i * l..(i + 1) * l].to_vec(), src_len: partial[i * l..(i + 1) * l].iter().filter(|&&p| p != 0).count() })
        .collect();
    (dir, g, rows)
}

#[test]
fn rdm_loss_and_gradients_match_pytorch() {
    let (dir, g, rows) = golden_rows();
    let (b, l) = (rows.len(), g["x0"].shape[1]);
    let t: Vec<u32> = ids(&g["t"]).iter().map(|&v| v as u32).collect();
    let lm = ids(&g["loss_mask"]);
    let masks: Vec<Vec<bool>> = (0..2 * b).map(|i| lm[i * l..(i + 1) * l].iter().map(|&m| m != 0).collect()).collect();
    let mask_id = 301;

    let noised = build_noised(&rows, &t, &masks, 1, mask_id, 50, Reweighting::Linear, 1.0);
    assert_eq!(noised.batch.ids, ids(&g["x_t"]), "noised batch differs from the reference's x_t");

    let mut model = XlmR::load(CpuBackend::new(), &dir).unwrap();
    let loss = model.loss_and_grad(&noised.batch, &noised.loss, Dropout::off(), 0.0).unwrap() as f64;
    let want = g["loss_linear"].data[0];
    assert!(((loss - want) / want).abs() < 1e-5, "linear RDM loss {loss} vs reference {want}");
    for (i, name) in model.param_names().iter().enumerate() {
        let want = &g[&format!("grad.{name}")];
        if !name.contains("attention.self.key.bias") {
            let e = rel_err(&model.grads()[i], &want.data);
            assert!(e < 1e-4, "gradient of {name}: relative error {e:e}");
        }
    }

    let noised = build_noised(&rows, &t, &masks, 1, mask_id, 50, Reweighting::Reciprocal, 1.0);
    let loss = model.loss_and_grad(&noised.batch, &noised.loss, Dropout::off(), 0.1).unwrap() as f64;
    let want = g["loss_reciprocal_ls"].data[0];
    assert!(((loss - want) / want).abs() < 1e-5, "reciprocal + label smoothing loss {loss} vs reference {want}");
}

#[test]
fn device_noise_path_gives_the_host_objective() {
    // `noised_loss_and_grad` (the noise drawn by the backend, what training runs) against
    // `loss_and_grad` on the host draw of the same key: same loss, same gradients, for several
    // keys, with dropout and label smoothing.
    let (dir, _, rows) = golden_rows();
    let mut host = XlmR::load(CpuBackend::new(), &dir).unwrap();
    let mut device = XlmR::load(CpuBackend::new(), &dir).unwrap();
    let (batch, src_len) = doubled_batch(&rows, 1);
    for key in [1u64, 0xdead_beef, u64::MAX] {
        let spec = NoiseSpec { key, steps: 50, pad: 1, mask_id: 301, reweighting: Reweighting::Reciprocal, scale: 0.5, first_example: 0 };
        let drop = Dropout { p: 0.1, seed: key ^ 5 };
        host.zero_grads().unwrap();
        device.zero_grads().unwrap();
        let noised = q_sample_coupled(&rows, &spec);
        assert!(!noised.loss.rows.is_empty(), "key {key} masked nothing");
        let want = host.loss_and_grad(&noised.batch, &noised.loss, drop, 0.1).unwrap();
        let (got, n) = device.noised_loss_and_grad(&batch, &src_len, &spec, drop, 0.1).unwrap();
        assert_eq!(n, noised.loss.rows.len(), "key {key}: masked count");
        assert_eq!(got.to_bits(), want.to_bits(), "key {key}: loss {got} vs {want}");
        for (i, name) in host.param_names().iter().enumerate() {
            assert!(host.grads()[i] == device.grads()[i], "key {key}: gradient of {name} differs");
        }
    }
    assert!(
        device
            .noised_loss_and_grad(
                &batch,
                &src_len[..1],
                &NoiseSpec { key: 0, steps: 50, pad: 1, mask_id: 301, reweighting: Reweighting::Linear, scale: 1.0, first_example: 0 },
                Dropout::off(),
                0.0
            )
            .is_err(),
        "a batch that is not the doubled one must be an error"
    );
}
