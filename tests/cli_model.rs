//! The binary's model commands: `fill-mask` against the HF pipeline's answers, `init`, and
//! clean one-line errors (exit code 2, no panic) for bad checkpoints.

mod common;
use common::bin;
use common::fixtures;
use std::path::Path;

#[test]
fn fill_mask_matches_the_hf_pipeline() {
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("fill_mask.json")).unwrap()).unwrap();
    for arch in ["postln", "preln"] {
        let cases = want[arch].as_array().unwrap();
        let mut cmd = bin();
        cmd.args(["fill-mask", "--json", "--top-k", "5", "--model"]).arg(fixtures().join(arch));
        for c in cases {
            cmd.arg(c["text"].as_str().unwrap());
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<serde_json::Value> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), cases.len());
        for (got, exp) in lines.iter().zip(cases) {
            assert_eq!(got["text"], exp["text"]);
            assert_eq!(got["input_ids"], exp["input_ids"], "{arch}: tokenization differs");
            let (gm, em) = (got["masks"].as_array().unwrap(), exp["masks"].as_array().unwrap());
            assert_eq!(gm.len(), em.len());
            for (g, e) in gm.iter().zip(em) {
                assert_eq!(g["position"], e["position"]);
                let gt = g["top"].as_array().unwrap();
                let et = e["top"].as_array().unwrap();
                for (a, b) in gt.iter().zip(et) {
                    assert_eq!(a["id"], b["id"], "{arch}: top-k ids differ");
                    assert_eq!(a["token"], b["token"]);
                    let (pa, pb) = (a["prob"].as_f64().unwrap(), b["prob"].as_f64().unwrap());
                    assert!((pa - pb).abs() < 1e-5, "{arch}: prob {pa} vs {pb}");
                }
            }
        }
    }
}

/// Runs the binary and expects exit code 2 with one `error:` line naming `needle`.
fn expect_clean_error(args: &[&str], model: &Path, needle: &str) {
    let out = bin().args(args).arg("--model").arg(model).arg("a <mask> b").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "expected exit 2, stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "`{needle}` not in: {stderr}");
    assert!(!stderr.contains("panicked"));
}

fn copy_model(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("postln").join(f), to.join(f)).unwrap();
    }
}

#[test]
fn bad_checkpoints_give_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let fm = ["fill-mask"];
    expect_clean_error(&fm, &tmp.path().join("nope"), "nope");

    let d = tmp.path().join("missing-weights");
    copy_model(&d);
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    expect_clean_error(&fm, &d, "model.safetensors");

    let d = tmp.path().join("truncated");
    copy_model(&d);
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    expect_clean_error(&fm, &d, "not a valid safetensors file");

    let d = tmp.path().join("wrong-shape");
    copy_model(&d);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("\"intermediate_size\": 64", "\"intermediate_size\": 48");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    expect_clean_error(&fm, &d, "roberta.encoder.layer.0.intermediate.dense.weight");

    let d = tmp.path().join("unknown-arch");
    copy_model(&d);
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"xlm-roberta\"", "\"gpt2\"")
        .replace("XLMRobertaForMaskedLM", "GPT2LMHeadModel");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    expect_clean_error(&fm, &d, "unknown architecture");

    let d = tmp.path().join("no-tokenizer");
    copy_model(&d);
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    expect_clean_error(&fm, &d, "tokenizer.json");
}

#[test]
fn init_writes_a_loadable_model_with_training_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let st = bin()
        .args(["init", "--preset", "micro-xl", "--seed", "3", "--tokenizer"])
        .arg(fixtures().join("tokenizer.json"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    for f in ["config.json", "model.safetensors", "tokenizer.json", "training_defaults.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let m = dlm_engine::model::XlmR::load(dlm_engine::backend::cpu::CpuBackend::new(), &out).unwrap();
    assert_eq!(m.config().vocab_size, 302);
    assert_eq!(m.config().arch, dlm_engine::model::Arch::PreLn);
    // A second init into the same directory refuses without --force.
    let again = bin()
        .args(["init", "--preset", "micro", "--tokenizer"])
        .arg(fixtures().join("tokenizer.json"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
}
