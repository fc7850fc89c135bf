//! `dlm-engine plan`: the memory table and its JSON, from a preset or a model directory.

mod common;
use common::fixtures;
use std::process::{Command, Output};

fn plan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlm-engine")).arg("plan").args(args).output().unwrap()
}

fn stdout(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&stdout(plan(&[args, &["--json"]].concat()))).unwrap()
}

#[test]
fn prints_the_table_for_every_zero_stage_and_both_cards() {
    let text = stdout(plan(&["--preset", "xl", "--gpus", "4", "--max-tokens", "4096"]));
    for want in [
        "per GPU (4 GPUs)",
        "training ZeRO-0",
        "training ZeRO-1",
        "training ZeRO-2",
        "weights (bf16)",
        "master copy (f32)",
        "AdamW moments (f32)",
        "gradients (f32)",
        "activations",
        "workspace",
        "total",
        "fits H100 80 GB",
        "fits H200 141 GB",
    ] {
        assert!(text.contains(want), "`{want}` missing from:\n{text}");
    }
    let one = stdout(plan(&["--preset", "xl", "--zero", "1", "--gpu-memory", "40G"]));
    assert!(one.contains("training ZeRO-1") && !one.contains("ZeRO-0") && one.contains("fits 40G GPU"), "{one}");
}

#[test]
fn json_totals_add_up_and_zero_stages_shrink_the_optimizer_state() {
    let v = json(&["--preset", "large", "--gpus", "8", "--max-tokens", "2048", "--max-len", "256"]);
    assert_eq!(v["train_encoder_tokens"], 4096, "the doubled micro-batch");
    let t = |z: &str, k: &str| v["training"][z][k].as_u64().unwrap();
    for z in ["zero0", "zero1", "zero2"] {
        let parts: u64 = ["weights_bf16", "master_f32", "moments", "gradients", "activations", "workspace"].iter().map(|k| t(z, k)).sum();
        assert_eq!(parts, t(z, "total"), "{z}");
    }
    let params = v["params"].as_u64().unwrap();
    assert_eq!(t("zero0", "moments"), 8 * params);
    assert_eq!(t("zero1", "moments"), (8 * params).div_ceil(8));
    assert!(t("zero2", "gradients") < t("zero1", "gradients"));
    assert_eq!(t("zero0", "activations"), t("zero2", "activations"));
    assert_eq!(v["training"]["zero0"]["fits"]["H100 80 GB"], true);
}

#[test]
fn a_model_directory_plans_as_its_preset() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    let out = Command::new(env!("CARGO_BIN_EXE_dlm-engine"))
        .args(["init", "--preset", "micro", "--tokenizer"])
        .arg(fixtures().join("tokenizer.json"))
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir = model.to_str().unwrap();
    let from_dir = json(&["--model", dir, "--max-tokens", "512"]);
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
    let h = cfg["hidden_size"].as_u64().unwrap();
    let vocab = cfg["vocab_size"].as_u64().unwrap();
    let padded = vocab.next_multiple_of(64);
    assert_eq!(from_dir["largest_param"].as_u64().unwrap(), padded * h, "the tied decoder padded to 64 rows");
    let with_validation = json(&["--model", dir, "--max-tokens", "512", "--validation"]);
    assert!(with_validation["training"]["zero0"]["activations"].as_u64() > from_dir["training"]["zero0"]["activations"].as_u64());
}

#[test]
fn bad_flags_are_one_line_errors() {
    for (args, want) in [
        (&["--preset", "nope"][..], "unknown preset `nope`"),
        (&["--preset", "base", "--gpu-memory", "lots"], "--gpu-memory lots"),
        (&["--preset", "base", "--max-len", "9999"], "--max-len 9999"),
        (&["--preset", "base", "--gpus", "0"], "--gpus (0) must be at least 1"),
        (&["--model", "/nonexistent/dir"], "/nonexistent/dir/config.json"),
    ] {
        let out = plan(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want) && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
    let help = stdout(plan(&["--help"]));
    assert!(help.contains("ZeRO") && help.contains("--gpu-memory") && help.contains("train --device cuda"), "{help}");
}
