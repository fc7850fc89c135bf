//! The embedded default job end to end on the CPU: `dlm-engine demo` generates its task, trains
//! a tokenizer and a `tiny` model with the default settings `init` records, and must reach at
//! least 90% exact match on held-out sources it never saw (the diffusion issue's bar).

use std::process::Command;

#[test]
fn demo_learns_the_held_out_task() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dlm-engine"))
        // The time cap is generous here so that a busy CI machine still runs all the steps.
        .args(["demo", "--max-time", "900s", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    let line = stdout.lines().find(|l| l.contains("Exact =")).unwrap_or_else(|| panic!("no exact-match line in:\n{stdout}"));
    let pct: f64 = line.split("Exact =").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    eprintln!("{line}");
    assert!(pct >= 90.0, "held-out exact match {pct}% < 90%\n{stderr}");
    // The samples file is one JSON object per held-out example with the documented fields.
    let samples = std::fs::read_to_string(tmp.path().join("run/samples.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(samples.lines().next().unwrap()).unwrap();
    for k in ["src", "hyp", "score", "tgt", "steps"] {
        assert!(first.get(k).is_some(), "samples.jsonl lacks `{k}`");
    }
    assert!(tmp.path().join("run/final/optimizer.safetensors").is_file());
}
