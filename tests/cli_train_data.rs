//! `train`'s data flags from the command line: `--train FILE:RATIO` mixtures, `--overlong`,
//! `--batch-size`; their errors, their log lines, and an exact resume of a mixture run.

mod common;
use common::{bin, init_micro};
use serde_json::Value;
use std::path::Path;
use std::process::Output;

fn train(model: &Path, out: &Path, extra: &[&str]) -> Output {
    bin().args(["train", "--no-progress", "--log-every", "1", "--model"]).arg(model).arg("--out").arg(out).args(extra).output().unwrap()
}

/// Exit 2 with one `error:` line holding every needle.
fn refused(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
}

/// The loss of every step line of a run's metrics.jsonl, and the last line.
fn losses(run: &Path) -> (Vec<f64>, Value) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).filter(|v: &Value| v.get("loss").is_some()).collect();
    (lines.iter().map(|v| v["loss"].as_f64().unwrap()).collect(), lines.last().cloned().unwrap())
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The mixture run's flags: files `a` and `b` mixed 3:1, 2 sequences per batch, Flan's left
/// truncation at 16 tokens, a checkpoint every 2 steps.
fn mixture_flags(a: &str, b: &str, steps: &str) -> Vec<String> {
    let fixed = ["--train", a, "--train", b, "--batch-size", "2", "--overlong", "truncate-left", "--max-len", "16", "--save-every", "2"];
    fixed.iter().chain(&["--max-steps", steps]).map(|s| s.to_string()).collect()
}

#[test]
fn bad_data_flags_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, out) = (tmp.path().join("no-model"), tmp.path().join("run"));
    let cases: [(&[&str], &[&str]); 6] = [
        (&["--train", "a.jsonl:abc"], &["--train a.jsonl:abc", "not a number"]),
        (&["--train", "a.jsonl:0"], &["--train a.jsonl:0", "positive"]),
        (&["--train", "a.jsonl:-0.5"], &["--train a.jsonl:-0.5", "positive"]),
        (&["--train", "a.jsonl:0.7", "--train", "b.jsonl"], &["every file or for none", "b.jsonl"]),
        (&["--train", "a.jsonl", "--batch-size", "2", "--max-tokens", "64"], &["--batch-size", "--max-tokens"]),
        (&["--train", "a.jsonl", "--batch-size", "0"], &["--batch-size"]),
    ];
    for (args, needles) in cases {
        refused(&train(&m, &out, args), needles);
    }
    assert!(!out.exists(), "nothing written for refused flags");
}

/// A 3:1 mixture with 2 sequences per micro-batch and Flan's left truncation: the log counts each
/// file's examples and over-long pairs and the examples each file gave; metrics.jsonl carries the
/// per-file counts; stopping and resuming gives the uninterrupted run's losses; a resume that
/// changes the ratios, the over-long rule or the batch budget is refused.
#[test]
fn mixture_run_logs_counts_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    init_micro(&model);
    let (a, b) = (tmp.path().join("a.jsonl"), tmp.path().join("b.jsonl"));
    std::fs::write(&a, "{\"src\": \"the cat\", \"tgt\": \"die Katze\"}\n{\"src\": \"a dog\", \"tgt\": \"ein Hund\"}\n{\"src\": \"the sun\", \"tgt\": \"die\"}\n").unwrap();
    let long = "the cat sat on the mat ".repeat(12);
    std::fs::write(&b, format!("{{\"src\": \"{long}\", \"tgt\": \"die Katze\"}}\n{{\"src\": \"a cat\", \"tgt\": \"eine\"}}\n")).unwrap();
    let (sa, sb) = (format!("{}:3", a.display()), format!("{}:1", b.display()));
    let flags = |steps: &str| mixture_flags(&sa, &sb, steps);

    let straight = tmp.path().join("straight");
    let o = train(&model, &straight, &strs(&flags("4")));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("a.jsonl: 3 examples (0 truncated from the left"), "{err}");
    assert!(err.contains("b.jsonl: 2 examples (1 truncated from the left as longer than 16 tokens)"), "{err}");
    assert!(err.contains("each sequence drawn by ratio") && err.contains("75.0%") && err.contains("25.0%"), "{err}");
    assert!(err.contains("2 sequences/batch") && err.contains("examples used per file:"), "{err}");
    let (want, last) = losses(&straight);
    assert_eq!(want.len(), 4);
    let used: Vec<u64> = last["examples_per_file"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(used.len(), 2);
    assert_eq!(used.iter().sum::<u64>(), 4 * 2, "4 steps of 2 sequences");

    let resumed = tmp.path().join("resumed");
    assert!(train(&model, &resumed, &strs(&flags("2"))).status.success());
    let mut again = flags("4");
    again.extend(["--resume".to_string(), resumed.display().to_string()]);
    let o = train(&model, &resumed, &strs(&again));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(losses(&resumed).0, want, "a resumed mixture run has the uninterrupted run's losses");
    assert_eq!(losses(&resumed).1["examples_per_file"], last["examples_per_file"]);

    // Changed data settings are refused on resume, naming the flag.
    let a1 = format!("{}:1", a.display());
    let r = resumed.display().to_string();
    let changed: [([&str; 8], &str); 3] = [
        (["--train", &a1, "--train", &sb, "--batch-size", "2", "--overlong", "truncate-left"], "--train ratios"),
        (["--train", &sa, "--train", &sb, "--batch-size", "2", "--overlong", "drop"], "--overlong"),
        (["--train", &sa, "--train", &sb, "--max-tokens", "64", "--overlong", "truncate-left"], "--batch-size"),
    ];
    for (change, flag) in changed {
        let mut v = change.to_vec();
        v.extend(["--max-len", "16", "--max-steps", "6", "--resume", &r]);
        refused(&train(&model, &resumed, &v), &["--resume: the run was trained with other settings", flag]);
    }
    // Without --overlong the over-long pair is dropped, and the log says so per file.
    let mut v = flags("1");
    assert_eq!(v.drain(6..8).collect::<Vec<_>>(), ["--overlong", "truncate-left"]);
    let o = train(&model, &tmp.path().join("dropped"), &strs(&v));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("b.jsonl: 1 examples (1 dropped as longer than 16 tokens)"), "{err}");
}
