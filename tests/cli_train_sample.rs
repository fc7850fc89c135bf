//! `train` and `sample` from the command line on a tiny model: bad data lines, skipping them,
//! checkpoints, and the sample output format.

mod common;
use common::fixtures;
use common::{bin, init_micro};
use std::path::Path;

fn write(p: &Path, lines: &[&str]) {
    std::fs::write(p, lines.join("\n") + "\n").unwrap();
}

const GOOD: &str = r#"{"src": "the cat sat", "tgt": "die Katze"}"#;

#[test]
fn bad_training_lines_name_file_line_and_key_unless_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    init_micro(&model);
    let data = tmp.path().join("train.jsonl");
    write(&data, &[GOOD, r#"{"src": "no target here"}"#, GOOD]);
    let out = bin()
        .args(["train", "--max-steps", "2", "--no-progress", "--model"])
        .arg(&model)
        .arg("--train")
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("train.jsonl:2") && err.contains("tgt"), "error should name file, line 2 and key `tgt`: {err}");

    write(&data, &[GOOD, "not json", GOOD, r#"{"src": 5, "tgt": "x"}"#]);
    let out = bin()
        .args(["train", "--max-steps", "3", "--save-every", "2", "--no-progress", "--skip-bad-lines", "--model"])
        .arg(&model)
        .arg("--train")
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("skipped 2 bad training line"), "{err}");
    let run = tmp.path().join("run");
    assert!(run.join("final/model.safetensors").is_file());
    assert!(run.join("checkpoint-2/trainer_state.json").is_file());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    for k in ["step", "loss", "lr", "grad_norm", "tokens_per_s"] {
        assert!(last.get(k).is_some(), "metrics.jsonl lacks `{k}`");
    }
}

#[test]
fn sample_writes_one_line_per_input_with_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    init_micro(&model);
    let input = tmp.path().join("in.jsonl");
    write(&input, &[GOOD, r#"{"src": "a dog", "tgt": "ein Hund bellt laut"}"#]);
    let outp = tmp.path().join("out.jsonl");
    let out = bin()
        .args(["sample", "--steps", "4", "--save-steps", "--metric", "exact", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&outp)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Exact ="));
    let tok = dlm_engine::tokenizer::Tok::load(fixtures().join("tokenizer.json")).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&outp).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for (l, tgt) in lines.iter().zip(["die Katze", "ein Hund bellt laut"]) {
        assert_eq!(l["tgt"], tgt);
        assert!(l["hyp"].is_string() && l["score"].is_number());
        let steps = l["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 4, "one canvas per step");
        let oracle = tok.encode(tgt).unwrap().len() - 2;
        assert!(steps.iter().all(|s| s.as_array().unwrap().len() == oracle), "each step holds the {oracle} target slots");
    }
    // A prompt without a target needs a fixed length.
    let out = bin().args(["sample", "--prompt", "hello", "--model"]).arg(&model).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--length"));
    let out = bin().args(["sample", "--prompt", "hello", "--length", "3", "--model"]).arg(&model).output().unwrap();
    assert!(out.status.success());
}

/// The path a user takes on new data, all from the command line with default settings:
/// tokenizer train → init → train → sample → eval.
#[test]
fn tokenizer_init_train_sample_eval_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d.jsonl");
    let rows: Vec<String> = (0..40).map(|i| format!(r#"{{"src": "number {} plus one", "tgt": "gives {}"}}"#, i, i + 1)).collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let tok = tmp.path().join("tok.json");
    let run = |args: &[&str], paths: &[(&str, &Path)]| {
        let mut c = bin();
        c.args(args);
        for (flag, p) in paths {
            c.arg(flag).arg(p);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    run(&["tokenizer", "train", "--vocab-size", "60"], &[("--input", &data), ("--out", &tok)]);
    let model = tmp.path().join("m");
    run(&["init", "--preset", "micro"], &[("--tokenizer", &tok), ("--out", &model)]);
    let rdir = tmp.path().join("run");
    run(&["train", "--max-steps", "5", "--no-progress"], &[("--model", &model), ("--train", &data), ("--out", &rdir)]);
    let hyp = tmp.path().join("hyp.jsonl");
    run(&["sample", "--steps", "3"], &[("--model", &rdir.join("final")), ("--input", &data), ("--out", &hyp)]);
    let out = run(&["eval", "--metric", "exact", "--json"], &[("--hyp", &hyp)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["exact"].is_number());
}

/// With the real model, batching with padding gives the same output as one input at a time.
#[test]
fn batched_sampling_equals_one_at_a_time_with_a_real_model() {
    use dlm_engine::backend::cpu::CpuBackend;
    use dlm_engine::cli::sample::{decode, DecodeOptions, Request};
    use dlm_engine::diffusion::sampler::SamplerConfig;
    let mut m = dlm_engine::model::XlmR::load(CpuBackend::new(), &fixtures().join("postln")).unwrap();
    let tok = dlm_engine::tokenizer::Tok::load(fixtures().join("tokenizer.json")).unwrap();
    let reqs: Vec<Request> = ["a cat", "the big dog runs home", "über"]
        .iter()
        .zip(["x y z", "one", "eins zwei drei vier"])
        .map(|(s, t)| Request { src: s.to_string(), tgt: Some(t.to_string()) })
        .collect();
    for strategy in ["reparam-uncond-deterministic-cosine", "reparam-cond-stochastic1.0-linear", "cmlm"] {
        let sampler = SamplerConfig {
            steps: 6,
            strategy: strategy.parse().unwrap(),
            sample: strategy == "cmlm",
            record_steps: true,
            ..SamplerConfig::default()
        };
        let opts = |bs| DecodeOptions { sampler: sampler.clone(), length: None, batch_size: bs, show_steps: false };
        let batched = decode(&mut m, &tok, &reqs, &opts(3)).unwrap();
        let single = decode(&mut m, &tok, &reqs, &opts(1)).unwrap();
        for (b, s) in batched.iter().zip(&single) {
            assert_eq!(b.steps, s.steps, "{strategy}: trajectories differ");
            assert_eq!(b.hyp, s.hyp);
            assert!((b.score - s.score).abs() < 1e-5, "{strategy}: {} vs {}", b.score, s.score);
        }
    }
}
