//! The command line end to end on `--device cuda` against `--device cpu`: `train` for 20 steps of a
//! micro model and `sample` from the result. Runs on a GPU, or on the software device in CI
//! (`scripts/test.sh`); skipped elsewhere, like the other CUDA tests.
//!
//! The model's weights are rounded to bf16 first, so that both devices start from the same values
//! (the CUDA backend computes with a bf16 copy). Tolerances are those of `cuda_model.rs`:
//! training losses within 5e-3 relative per step; sampled lines agree where the CPU's choice is
//! clear, with mean log-probabilities within 0.05.

mod common;
use common::{fixtures, gpu, staged_binary as binary, write_reversal_pairs};
use std::path::Path;
use std::process::Command;

const TOL_TRAIN: f64 = 5e-3;

fn run(args: &[&str], paths: &[(&str, &Path)]) -> String {
    let mut c = Command::new(binary());
    c.args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?} failed:\n{err}");
    err
}

/// Rewrites every f32 tensor of `file` with its values rounded to bf16 (still stored as f32).
fn round_weights_to_bf16(file: &Path) {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        let vals: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let rounded: Vec<f32> = vals.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
        tensors.push((name, view.shape().to_vec(), bytemuck::cast_slice(&rounded).to_vec()));
    }
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, s, d)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), d).unwrap())).collect();
    std::fs::write(file, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn losses(run_dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v.get("loss").and_then(|l| l.as_f64()))
        .collect()
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn train_and_sample_on_cuda_match_the_cpu() {
    let Some(g) = gpu("train_and_sample_on_cuda_match_the_cpu") else { return };
    eprintln!("device: {}", dlm_engine::backend::Backend::name(&g));
    drop(g);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    run(&["init", "--preset", "micro"], &[("--tokenizer", &fixtures().join("tokenizer.json")), ("--out", &model)]);
    round_weights_to_bf16(&model.join("model.safetensors"));
    let data = tmp.path().join("train.jsonl");
    let examples = 48;
    write_reversal_pairs(&data, examples, 2);

    let train = ["train", "--max-steps", "20", "--seed", "7", "--no-progress", "--save-every", "20", "--log-every", "1"];
    let mut per_device = Vec::new();
    for device in ["cpu", "cuda"] {
        let out = tmp.path().join(format!("run-{device}"));
        run(&[&train[..], &["--device", device]].concat(), &[("--model", &model), ("--train", &data), ("--out", &out)]);
        per_device.push(losses(&out));
    }
    let (lc, lg) = (&per_device[0], &per_device[1]);
    assert_eq!((lc.len(), lg.len()), (20, 20), "one loss per step on each device");
    for (s, (c, g)) in lc.iter().zip(lg).enumerate() {
        let e = (g - c).abs() / c.abs();
        eprintln!("step {}: loss {g:.5} (cuda) vs {c:.5} (cpu), relative {e:.2e}", s + 1);
        assert!(e <= TOL_TRAIN, "step {}: loss {g} (cuda) vs {c} (cpu): relative {e:.3e} > {TOL_TRAIN:.0e}", s + 1);
    }

    // Both devices sample from the CPU-trained model, so only sampling differs: the paper's
    // sampler (device-resident on CUDA), and the threshold decoder with the margin confidence,
    // blocks and the prefix cache, then with guidance (the host loop over the device's steps).
    let trained = tmp.path().join("run-cpu/final");
    let decoders: [&[&str]; 3] = [
        &["--steps", "8"],
        &["--strategy", "threshold", "--threshold", "0.5", "--confidence", "margin", "--block-length", "3", "--cache", "prefix"],
        &["--strategy", "threshold", "--threshold", "0.5", "--cfg-scale", "0.5"],
    ];
    for flags in decoders {
        compare_samples(tmp.path(), &trained, &data, examples, flags);
    }
}

fn compare_samples(tmp: &Path, trained: &Path, data: &Path, n: usize, flags: &[&str]) {
    let mut outs = Vec::new();
    for device in ["cpu", "cuda"] {
        let hyp = tmp.join(format!("hyp-{device}.jsonl"));
        let args: Vec<&str> = ["sample", "--device", device].iter().copied().chain(flags.iter().copied()).collect();
        run(&args, &[("--model", trained), ("--input", data), ("--out", &hyp)]);
        outs.push(jsonl(&hyp));
    }
    assert_eq!(outs[0].len(), n);
    assert_eq!(outs[1].len(), n);
    let same = outs[0].iter().zip(&outs[1]).filter(|(c, g)| c["hyp"] == g["hyp"]).count();
    eprintln!("{flags:?}: sampled lines equal on both devices: {same}/{}", n);
    // bf16 logits may flip a near tie, which changes the rest of that line's trajectory; most
    // lines must come out identical, and those with identical output must score alike.
    assert!(same * 10 >= n * 8, "{flags:?}: only {same}/{} sampled lines agree", n);
    for (c, g) in outs[0].iter().zip(&outs[1]).filter(|(c, g)| c["hyp"] == g["hyp"]) {
        let (sc, sg) = (c["score"].as_f64().unwrap(), g["score"].as_f64().unwrap());
        assert!((sc - sg).abs() < 0.05, "{}: score {sg} (cuda) vs {sc} (cpu)", c["src"]);
    }
}

/// `train --stage length` on both devices: the same losses within TOL_TRAIN, and on the GPU too
/// the backbone comes back bit for bit; then `sample --length predict --length-beam 2` picks the
/// same lengths on both where the CPU's choice is clear.
#[test]
fn length_stage_and_beam_on_cuda_match_the_cpu() {
    let Some(g) = gpu("length_stage_and_beam_on_cuda_match_the_cpu") else { return };
    drop(g);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    run(&["init", "--preset", "micro"], &[("--tokenizer", &fixtures().join("tokenizer.json")), ("--out", &model)]);
    round_weights_to_bf16(&model.join("model.safetensors"));
    let words = ["the", "cat", "dog", "sat", "on", "a", "mat", "big", "small", "house", "runs", "home"];
    let rows: Vec<String> = (0..32)
        .map(|i| {
            let src: Vec<&str> = (0..1 + i % 4).map(|j| words[(i * 7 + j * 5) % words.len()]).collect();
            serde_json::json!({"src": src.join(" "), "tgt": src.join(" ")}).to_string()
        })
        .collect();
    let data = tmp.path().join("train.jsonl");
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    let train =
        ["train", "--stage", "length", "--max-steps", "10", "--lr", "3e-3", "--no-progress", "--log-every", "1", "--max-tokens", "256"];
    let mut per_device = Vec::new();
    for device in ["cpu", "cuda"] {
        let out = tmp.path().join(format!("len-{device}"));
        run(&[&train[..], &["--device", device]].concat(), &[("--model", &model), ("--train", &data), ("--out", &out)]);
        per_device.push(losses(&out));
        let before = dlm_engine::model::weights::read_safetensors(&model.join("model.safetensors")).unwrap();
        let after = dlm_engine::model::weights::read_safetensors(&out.join("final/model.safetensors")).unwrap();
        for (n, t) in &before {
            assert!(after[n].data == t.data, "{device}: backbone tensor {n} changed");
        }
        assert_eq!(after.len(), before.len() + 16, "{device}: the length predictor's 16 tensors");
    }
    let (lc, lg) = (&per_device[0], &per_device[1]);
    assert_eq!((lc.len(), lg.len()), (10, 10));
    for (s, (c, g)) in lc.iter().zip(lg).enumerate() {
        let e = (g - c).abs() / c.abs();
        eprintln!("length step {}: loss {g:.5} (cuda) vs {c:.5} (cpu), relative {e:.2e}", s + 1);
        assert!(e <= TOL_TRAIN, "length step {}: loss {g} vs {c}: relative {e:.3e} > {TOL_TRAIN:.0e}", s + 1);
    }
    let trained = tmp.path().join("len-cpu/final");
    let mut outs = Vec::new();
    for device in ["cpu", "cuda"] {
        let hyp = tmp.path().join(format!("beam-{device}.jsonl"));
        let args = ["sample", "--steps", "4", "--length", "predict", "--length-beam", "2", "--save-candidates", "--device", device];
        run(&args, &[("--model", &trained), ("--input", &data), ("--out", &hyp)]);
        outs.push(jsonl(&hyp));
    }
    let cand_lengths =
        |v: &serde_json::Value| -> Vec<u64> { v["candidates"].as_array().unwrap().iter().map(|c| c["length"].as_u64().unwrap()).collect() };
    let same = outs[0].iter().zip(&outs[1]).filter(|(c, g)| cand_lengths(c) == cand_lengths(g)).count();
    eprintln!("inputs with the same candidate lengths on both devices: {same}/{}", rows.len());
    assert!(same * 10 >= rows.len() * 8, "only {same}/{} inputs have the same candidate lengths", rows.len());
}
