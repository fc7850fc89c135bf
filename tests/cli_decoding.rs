//! `sample`'s decoding flags through the binary: every decoder writes `nfe` and
//! `tokens_per_pass` per line and a summary line; the threshold strategy stops early; bad values
//! and combinations are refused with one `error:` line and exit code 2.

mod common;
use common::{bin, init_micro};
use std::path::Path;
use std::process::Output;

fn sample(model: &Path, input: &Path, extra: &[&str]) -> Output {
    bin().args(["sample", "--model"]).arg(model).arg("--input").arg(input).args(["--threads", "1"]).args(extra).output().unwrap()
}

#[test]
fn every_decoder_reports_its_forward_passes() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    init_micro(&model);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"src\": \"a b c\", \"tgt\": \"d e f g\"}\n{\"src\": \"h\", \"tgt\": \"i j\"}\n").unwrap();
    let cases: [(&[&str], Option<usize>); 6] = [
        (&["--steps", "7"], Some(7)),
        (&["--steps", "7", "--confidence", "entropy", "--block-length", "2"], Some(7)),
        (&["--steps", "7", "--cache", "prefix", "--block-length", "3"], Some(7)),
        (&["--strategy", "threshold", "--threshold", "0.99"], None),
        (&["--strategy", "threshold", "--confidence", "margin", "--cfg-scale", "0.5"], None),
        (&["--strategy", "threshold", "--block-length", "1", "--cache", "prefix"], None),
    ];
    for (flags, want_nfe) in cases {
        let o = sample(&model, &input, flags);
        assert!(o.status.success(), "{flags:?}: {}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("decoded 2 example(s): NFE"), "{flags:?}: no summary in {err}");
        for line in String::from_utf8(o.stdout).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let (nfe, per_pass) = (v["nfe"].as_u64().unwrap() as usize, v["tokens_per_pass"].as_f64().unwrap());
            let slots = v["tokens_per_pass"].as_f64().unwrap() * nfe as f64;
            match want_nfe {
                Some(k) => assert_eq!(nfe, k, "{flags:?}: the top-k samplers take K passes"),
                // A threshold run commits at least one slot a pass, so it takes at most one pass a slot.
                None => assert!(nfe >= 1 && per_pass >= 1.0 - 1e-6, "{flags:?}: {nfe} passes, {per_pass} tokens a pass"),
            }
            assert!(slots >= 1.0, "{flags:?}: {line}");
        }
    }
}

#[test]
fn bad_decoding_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    init_micro(&model);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"src\": \"a b\", \"tgt\": \"c\"}\n").unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["--strategy", "threshold", "--threshold", "0"], "--threshold"),
        (&["--threshold", "1.5"], "--threshold"),
        (&["--confidence", "certainty"], "--confidence"),
        (&["--cache", "all"], "--cache"),
        (&["--block-length", "0"], "--block-length"),
        (&["--cfg-scale", "-1"], "--cfg-scale"),
        (&["--cfg-scale", "1", "--cache", "prefix"], "prefix cache"),
    ];
    for (flags, needle) in cases {
        let o = sample(&model, &input, flags);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.starts_with("error:") && err.contains(needle), "{flags:?}: {err}");
    }
}
