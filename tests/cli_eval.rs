//! Runs the built `dlm-engine eval` on temporary files: plain text, JSONL from `sample`, and the
//! error paths (exit code 2 with the offending file and line named).

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlm-engine")).arg("eval").args(args).output().expect("run dlm-engine")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stdout_json(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(text.trim().lines().count(), 1, "--json must print exactly one line: {text}");
    serde_json::from_str(text.trim()).unwrap()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The "mixed" corpus of the metrics fixture, with sacreBLEU's score for a given setting.
fn mixed_corpus() -> (Vec<String>, Vec<String>, Value) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/fixtures/metrics.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let c = fx["corpora"].as_array().unwrap().iter().find(|c| c["name"] == "mixed").unwrap().clone();
    let list = |k: &str| c[k].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect();
    (list("hyps"), list("refs"), c)
}

fn close(got: &Value, want: &Value) {
    let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
    assert!((g - w).abs() <= 1e-9 * w.abs().max(1e-300), "got {g}, want {w}");
}

#[test]
fn jsonl_from_sample_matches_sacrebleu() {
    let dir = tempfile::tempdir().unwrap();
    let (hyps, refs, c) = mixed_corpus();
    // JSONL can carry the fixture's embedded newlines; also add a blank line, which is skipped.
    let mut text = String::new();
    for (i, (h, r)) in hyps.iter().zip(&refs).enumerate() {
        text += &json!({"id": i, "src": "x", "hyp": h, "tgt": r}).to_string();
        text += if i == 3 { "\n\n" } else { "\n" };
    }
    let f = write(dir.path(), "samples.jsonl", &text);
    for (i, (tok, lc)) in [("13a", false), ("13a", true), ("intl", false), ("intl", true)].into_iter().enumerate() {
        let mut args = vec!["--hyp", s(&f), "--metric", "bleu", "--tokenize", tok, "--json"];
        if lc {
            args.push("--lowercase");
        }
        let got = stdout_json(&eval(&args));
        let want = &c["bleu"][i];
        assert_eq!((want["tokenize"].as_str(), want["lowercase"].as_bool()), (Some(tok), Some(lc)));
        close(&got["bleu"], &want["score"]);
        assert_eq!(got["tokenize"], tok);
    }
    let got = stdout_json(&eval(&["--hyp", s(&f), "--metric", "rouge-l", "--json"]));
    close(&got["rouge_l"], &json!(100.0 * c["rouge_l"]["mean_f"].as_f64().unwrap()));
    let got = stdout_json(&eval(&["--hyp", s(&f), "--metric", "exact", "--lowercase", "--json"]));
    close(&got["exact"], &c["exact"][1]["percent"]);
}

#[test]
fn plain_text_files() {
    let dir = tempfile::tempdir().unwrap();
    // Windows line endings and a final empty hypothesis must not shift the pairing.
    let hyp = write(dir.path(), "hyp.txt", "The cat sat on the mat.\r\nHello World\r\n\n");
    let reference = write(dir.path(), "ref.txt", "the cat sat on the mat .\nhello world\nnothing\n");
    let got = stdout_json(&eval(&["--hyp", s(&hyp), "--ref", s(&reference), "--metric", "exact", "--lowercase", "--json"]));
    // Line 1 differs in its tokenization ("mat." vs "mat ."), line 2 only in case.
    assert_eq!(got["exact"].as_f64().unwrap(), 100.0 / 3.0);
    assert_eq!(got["matches"], 1);
    assert_eq!(got["sentences"], 3);

    // Hand-checked BLEU: after 13a tokenization and lowercasing, lines 1 and 2 are identical to
    // their references and line 3 is empty: 9 hypothesis tokens against 10 reference tokens.
    let out = eval(&["--hyp", s(&hyp), "--ref", s(&reference), "--lowercase"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let line = String::from_utf8(out.stdout).unwrap();
    let bp = (1.0f64 - 10.0 / 9.0).exp();
    assert!(
        line.starts_with(&format!(
            "BLEU = {:.2} (13a, lowercased) 100.0/100.0/100.0/100.0 BP={bp:.3} ratio=0.900 hyp_len=9 ref_len=10",
            100.0 * bp
        )),
        "{line}"
    );
}

#[test]
fn mismatched_line_counts_exit_2_naming_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let hyp = write(dir.path(), "three.txt", "a\nb\nc\n");
    let reference = write(dir.path(), "two.txt", "a\nb\n");
    let out = eval(&["--hyp", s(&hyp), "--ref", s(&reference)]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(err.starts_with("error: ") && err.contains("three.txt") && err.contains("two.txt"), "{err}");
    assert!(err.contains("3 lines") && err.contains("2 lines"), "{err}");
}

#[test]
fn bad_inputs_exit_2_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("missing_tgt.jsonl", "{\"hyp\": \"a\", \"tgt\": \"a\"}\n{\"hyp\": \"b\"}\n", "line 2: missing field `tgt`"),
        ("broken.jsonl", "{\"hyp\": \"a\", \"tgt\": \"a\"}\n{\"hyp\": \"b\", \n", "line 2: invalid JSON"),
        ("number.jsonl", "{\"hyp\": 5, \"tgt\": \"a\"}\n", "line 1: field `hyp` is not a string"),
        ("plain.txt", "just text\n", "--ref is required"),
    ];
    for (name, text, expect) in cases {
        let f = write(dir.path(), name, text);
        let out = eval(&["--hyp", s(&f)]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = stderr_of(&out);
        assert!(err.contains(name) && err.contains(expect), "{name}: {err}");
    }
    let mut latin1 = b"ok\n".to_vec();
    latin1.extend_from_slice(b"caf\xe9\n");
    let bad = dir.path().join("latin1.txt");
    std::fs::write(&bad, latin1).unwrap();
    let out = eval(&["--hyp", s(&bad), "--ref", s(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("latin1.txt line 2: not valid UTF-8"), "{}", stderr_of(&out));

    let out = eval(&["--hyp", s(&dir.path().join("absent.txt")), "--ref", s(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("cannot read") && stderr_of(&out).contains("absent.txt"));
}

#[test]
fn help_lists_metrics_and_tokenizers() {
    let out = eval(&["--help"]);
    let text = String::from_utf8(out.stdout).unwrap();
    for word in ["--hyp", "--ref", "bleu", "rouge-l", "exact", "13a", "intl", "--lowercase", "--json", "sacreBLEU"] {
        assert!(text.contains(word), "help lacks {word}:\n{text}");
    }
}
