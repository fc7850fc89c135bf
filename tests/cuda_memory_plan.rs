//! The memory plan against the CUDA backend: on the software device, the most device memory a
//! training run holds at once (`DLM_SWDEV_PEAK=1`) must stay below what `plan` says and not far
//! below it; and `train --device cuda` refuses, with the plan's table, a run the device is too
//! small for, unless `--no-memory-check`. Skipped without a CUDA device, like the other CUDA tests.

mod common;
use common::{fixtures, gpu};
use dlm_engine::train::memory_plan::{CONTEXT_RESERVE, CUBLAS_WORKSPACE};
use std::path::Path;
use std::process::{Command, Output};

/// How far above the measured peak the plan may lie, as a fraction of it, for a model whose
/// encoder dominates (the micro shape: the plan counts its buffers exactly, and only the batches'
/// padding to the token budget is between them) and for one whose LM head does (vocabulary 6400):
/// the plan takes every token of the doubled batch as masked, while with `--timesteps 1` every
/// target slot is but the sources (one to four words of about fifteen tokens) are not.
const MARGINS: [(&str, usize, f64); 2] = [("micro", 0, 0.05), ("vocabulary 6400", 6400, 0.35)];

fn dlm(args: &[&str], paths: &[(&str, &Path)], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dlm-engine"));
    c.args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    c.envs(env.iter().copied());
    c.output().unwrap()
}

fn ok(out: Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed:\n{err}");
    String::from_utf8_lossy(&out.stdout).into_owned() + &err
}

/// A micro model (with `vocab` rows when not 0: the fixture tokenizer's ids, padded as XL's are)
/// and a copy task of short sources and longer targets.
fn setup(tmp: &Path, vocab: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let model = tmp.join("m");
    let tok = fixtures().join("tokenizer.json");
    ok(dlm(&["init", "--preset", "micro"], &[("--tokenizer", &tok), ("--out", &model)], &[]), "init");
    if vocab > 0 {
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
        cfg["vocab_size"] = vocab.into();
        let file = tmp.join("config.json");
        std::fs::write(&file, cfg.to_string()).unwrap();
        ok(dlm(&["init", "--force"], &[("--config", &file), ("--tokenizer", &tok), ("--out", &model)], &[]), "init --config");
    }
    let words = ["the", "cat", "dog", "sat", "on", "a", "mat", "big", "small", "house", "runs", "home"];
    let rows: Vec<String> = (0..40)
        .map(|i| {
            let src: Vec<&str> = (0..1 + i % 4).map(|j| words[(i + j) % words.len()]).collect();
            let tgt: Vec<&str> = (0..6 + i % 5).map(|j| words[(i * 7 + j * 5) % words.len()]).collect();
            serde_json::json!({"src": src.join(" "), "tgt": tgt.join(" ")}).to_string()
        })
        .collect();
    let data = tmp.join("train.jsonl");
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    (model, data)
}

const TRAIN: [&str; 14] = [
    "train",
    "--device",
    "cuda",
    "--max-steps",
    "2",
    "--max-tokens",
    "256",
    "--max-len",
    "32",
    "--timesteps",
    "1",
    "--save-every",
    "0",
    "--no-progress",
];

#[test]
fn the_plan_bounds_what_training_allocates() {
    let Some(g) = gpu("the_plan_bounds_what_training_allocates") else { return };
    drop(g);
    for (what, vocab, margin) in MARGINS {
        let tmp = tempfile::tempdir().unwrap();
        let (model, data) = setup(tmp.path(), vocab);
        let out = dlm(&["plan", "--max-tokens", "256", "--max-len", "32", "--zero", "0", "--json"], &[("--model", &model)], &[]);
        assert!(out.status.success(), "plan: {}", String::from_utf8_lossy(&out.stderr));
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let z0 = &plan["training"]["zero0"];
        let paths = [("--model", model.as_path()), ("--train", &data), ("--out", &tmp.path().join("run"))];
        let log = ok(dlm(&TRAIN, &paths, &[("DLM_SWDEV_PEAK", "1")]), "train");
        let Some(peak) = log.lines().find_map(|l| l.strip_prefix("swdev: peak device memory ")) else {
            eprintln!("skipped the comparison: not on the software device (no peak reported)");
            return;
        };
        let peak: u64 = peak.trim_end_matches(" bytes").parse().unwrap();
        // cuBLASLt's workspace is in both; the context allowance only in the plan.
        let measured = peak - CUBLAS_WORKSPACE;
        let planned = z0["total"].as_u64().unwrap() - CONTEXT_RESERVE - CUBLAS_WORKSPACE;
        let over = planned as f64 / measured as f64 - 1.0;
        eprintln!(
            "{what}: peak {peak} bytes; without cuBLASLt's workspace measured {measured}, planned {planned} (activations {}): {:.1}% over",
            z0["activations"],
            100.0 * over
        );
        assert!(measured <= planned, "{what}: the run held {measured} bytes, more than the plan's {planned}");
        assert!(over <= margin, "{what}: the plan ({planned}) is {over:.3} above the run's peak ({measured}), more than {margin}");
    }
}

#[test]
fn train_refuses_a_run_the_device_is_too_small_for() {
    let Some(g) = gpu("train_refuses_a_run_the_device_is_too_small_for") else { return };
    let name = dlm_engine::backend::Backend::name(&g);
    drop(g);
    if !name.contains(dlm_engine::backend::cuda::SOFTWARE_DEVICE_MARK) {
        eprintln!("skipped: the device's size is set only on the software device");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path(), 0);
    let small = [("DLM_SWDEV_MEMORY", "256M")];
    let out = dlm(&TRAIN, &[("--model", &model), ("--train", &data), ("--out", &tmp.path().join("run"))], &small);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("error: training needs") && err.contains("but cuda:0") && err.contains("256.0 MiB") && err.contains("short"),
        "{err}"
    );
    assert!(err.contains("training ZeRO-0") && err.contains("activations") && err.contains("total"), "the table is printed: {err}");
    assert!(!tmp.path().join("run/metrics.jsonl").exists(), "nothing was trained");
    // The micro model itself fits in 256 MiB; the plan's allowance for a real GPU's context does
    // not, and --no-memory-check lets the run start.
    let run = tmp.path().join("run2");
    ok(
        dlm(&[&TRAIN[..], &["--no-memory-check"]].concat(), &[("--model", &model), ("--train", &data), ("--out", &run)], &small),
        "train --no-memory-check",
    );
    assert!(run.join("final/model.safetensors").is_file());
}
