//! Runs the built `dlm-engine eval` on temporary files: plain text, JSONL from `sample`, and the
//! error paths (exit code 2 with the offending file and line named).

mod common;
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
    for word in
        ["--hyp", "--ref", "bleu", "rouge-l", "exact", "last-integer", "--group-key", "13a", "intl", "--lowercase", "--json", "sacreBLEU"]
    {
        assert!(text.contains(word), "help lacks {word}:\n{text}");
    }
}

/// `last-integer` scores the last integer of each line as the paper's GSM8K/MGSM script does,
/// and `exact --lowercase` is the paper's exact match (lowercase, strip).
#[test]
fn last_integer_and_the_papers_exact_match() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        ("She has 3 bags, so 3 x 4 = 12. The answer is 1,200", "#### 1200"),
        ("The answer is 12.", "12"),
        ("It is 7", "#### 8"),
        ("no number", "5"),
        ("-4", "4"),
    ];
    let text: String = lines.iter().map(|(h, r)| json!({"hyp": h, "tgt": r}).to_string() + "\n").collect();
    let f = write(dir.path(), "gsm.jsonl", &text);
    let j = stdout_json(&eval(&["--hyp", s(&f), "--metric", "last-integer", "--json"]));
    assert_eq!((j["matches"].clone(), j["sentences"].clone()), (json!(3), json!(5)));
    close(&j["last_integer"], &json!(60.0));
    let out = eval(&["--hyp", s(&f), "--metric", "last-integer"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Last-integer = 60.00 (3/5"), "{}", String::from_utf8_lossy(&out.stdout));

    let f = write(
        dir.path(),
        "mc.jsonl",
        &[("  (A) ", "(a)"), ("B\n", "b"), ("C", "D")]
            .iter()
            .map(|(h, r)| json!({"hyp": h, "tgt": r}).to_string() + "\n")
            .collect::<String>(),
    );
    let cased = stdout_json(&eval(&["--hyp", s(&f), "--metric", "exact", "--json"]));
    assert_eq!(cased["matches"], json!(0));
    let paper = stdout_json(&eval(&["--hyp", s(&f), "--metric", "exact", "--lowercase", "--json"]));
    assert_eq!(paper["matches"], json!(2));
}

/// `--group-key` scores each group apart and macro-averages them (BBH, TyDiQA); the field comes
/// from the --hyp records, or from --ref's when --hyp is plain text; a line without it is an error.
#[test]
fn group_key_reports_each_group_and_the_macro_average() {
    let dir = tempfile::tempdir().unwrap();
    // Group "en": 2 of 2 right; "sw": 1 of 4. Micro 3/6 = 50; macro (100 + 25) / 2 = 62.5.
    let rows = [("en", "a", "a"), ("sw", "b", "x"), ("en", "c", "c"), ("sw", "d", "d"), ("sw", "e", "y"), ("sw", "f", "z")];
    let text: String = rows.iter().map(|(g, h, r)| json!({"lang": g, "hyp": h, "tgt": r}).to_string() + "\n").collect();
    let f = write(dir.path(), "tydi.jsonl", &text);
    let j = stdout_json(&eval(&["--hyp", s(&f), "--metric", "exact", "--group-key", "lang", "--json"]));
    close(&j["exact"], &json!(50.0));
    close(&j["macro"], &json!(62.5));
    close(&j["groups"]["en"]["exact"], &json!(100.0));
    close(&j["groups"]["sw"]["exact"], &json!(25.0));
    assert_eq!(j["groups"]["sw"]["lines"], json!(4));
    assert_eq!(j["group_key"], json!("lang"));
    let out = eval(&["--hyp", s(&f), "--metric", "exact", "--group-key", "lang"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("en (2 lines): Exact = 100.00") && text.contains("sw (4 lines): Exact = 25.00"), "{text}");
    assert!(text.contains("macro average over 2 groups: 62.50"), "{text}");

    // Plain hypotheses, groups from the reference records.
    let hyp = write(dir.path(), "hyp.txt", &rows.iter().map(|(_, h, _)| format!("{h}\n")).collect::<String>());
    let j2 = stdout_json(&eval(&["--hyp", s(&hyp), "--ref", s(&f), "--metric", "exact", "--group-key", "lang", "--json"]));
    assert_eq!(j2["groups"], j["groups"]);

    // A record without the field: one error line naming the file, the line and the field.
    let broken = write(
        dir.path(),
        "broken.jsonl",
        &(json!({"lang": "en", "hyp": "a", "tgt": "a"}).to_string() + "\n" + &json!({"hyp": "b", "tgt": "b"}).to_string() + "\n"),
    );
    let out = eval(&["--hyp", s(&broken), "--group-key", "lang"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("broken.jsonl line 2") && err.contains("`lang`"), "{err}");
    let out = eval(&["--hyp", s(&hyp), "--ref", s(&hyp), "--group-key", "lang"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("--group-key lang"), "{}", stderr_of(&out));
}

/// `sample` copies the input records' other fields into its output, so its file feeds
/// `eval --group-key` directly.
#[test]
fn sample_output_carries_the_group_field_to_eval() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    common::init_micro(&model);
    let input = write(
        dir.path(),
        "in.jsonl",
        "{\"inputs\": \"the cat\", \"targets\": \"die\", \"task\": \"t1\", \"id\": 7}\n{\"inputs\": \"a dog\", \"targets\": \"ein\", \"task\": \"t2\"}\n",
    );
    let out_file = dir.path().join("hyp.jsonl");
    let st =
        common::bin().args(["sample", "--steps", "2", "--model", s(&model), "--input", s(&input), "--out", s(&out_file)]).output().unwrap();
    assert!(st.status.success(), "{}", stderr_of(&st));
    let lines: Vec<Value> = std::fs::read_to_string(&out_file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!((lines[0]["task"].clone(), lines[0]["id"].clone(), lines[1]["task"].clone()), (json!("t1"), json!(7), json!("t2")));
    assert_eq!(lines[0]["src"], json!("the cat"));
    assert!(lines[0].get("inputs").is_none() && lines[0].get("targets").is_none());
    let j = stdout_json(&eval(&["--hyp", s(&out_file), "--metric", "exact", "--group-key", "task", "--json"]));
    assert_eq!(j["groups"].as_object().unwrap().keys().collect::<Vec<_>>(), ["t1", "t2"]);
}

/// `rouge-l-py` through the binary: py-rouge's score without a word-form table, and with one read
/// from `word|form` lines (tests/golden/fixtures/rouge_py.json has both); a malformed table line
/// is an error naming the file and line.
#[test]
fn rouge_l_py_with_and_without_a_word_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/fixtures/rouge_py.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let c = fx["corpora"].as_array().unwrap().iter().find(|c| c["name"] == "headlines").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pairs = c["hyps"].as_array().unwrap().iter().zip(c["refs"].as_array().unwrap());
    let f = write(dir.path(), "gw.jsonl", &pairs.map(|(h, r)| json!({"hyp": h, "tgt": r}).to_string() + "\n").collect::<String>());
    let table: String = fx["small_table"].as_object().unwrap().iter().map(|(k, v)| format!("{k}|{}\n", v.as_str().unwrap())).collect();
    let t = write(dir.path(), "forms.txt", &table);
    let without = stdout_json(&eval(&["--hyp", s(&f), "--metric", "rouge-l-py", "--json"]));
    close(&without["rouge_l_py"], &json!(100.0 * c["no_table"]["mean"][2].as_f64().unwrap()));
    let with = stdout_json(&eval(&["--hyp", s(&f), "--metric", "rouge-l-py", "--rouge-table", s(&t), "--json"]));
    close(&with["rouge_l_py"], &json!(100.0 * c["small_table"]["mean"][2].as_f64().unwrap()));
    assert_eq!(with["word_table_entries"], json!(3));
    assert_ne!(with["rouge_l_py"], without["rouge_l_py"]);

    let bad = write(dir.path(), "bad.txt", "children|child\nno separator here\n");
    let out = eval(&["--hyp", s(&f), "--metric", "rouge-l-py", "--rouge-table", s(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("bad.txt:2: expected `word|form`"), "{}", stderr_of(&out));
    let out = eval(&["--hyp", s(&f), "--metric", "bleu", "--rouge-table", s(&t)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("--rouge-table is for --metric rouge-l-py"), "{}", stderr_of(&out));
}
