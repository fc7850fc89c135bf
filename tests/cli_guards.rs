//! Issue 16: nothing lost, nothing silently wrong. `sample --out` never replaces what it should
//! not, long prompts are not cut silently, `--threads` never oversubscribes, flags and config
//! fields outside their range are one-line errors naming them, `--dropout` takes effect, and
//! nothing reachable from input panics or aborts.

mod common;
use common::fixtures;
use common::{bin, init_micro};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Exit 2 with one `error:` line holding every needle.
fn refused(o: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
    err
}

const GOOD: &str = r#"{"src": "the cat sat", "tgt": "die Katze"}"#;

fn sample(model: &Path, input: &Path, out: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["sample", "--steps", "2", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Case 2: `sample --out` refuses its own input, a symbolic link, a device and a FIFO unless
/// `--force`, and a directory always; refused targets are left as they were.
#[test]
fn sample_out_replaces_only_regular_files_that_are_not_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    init_micro(&model);
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, format!("{GOOD}\n")).unwrap();
    let original = std::fs::read(&input).unwrap();

    refused(&sample(&model, &input, &input, &[]), &["in.jsonl", "is an input", "--force"]);
    assert_eq!(std::fs::read(&input).unwrap(), original);
    let weights = model.join("model.safetensors");
    let w = std::fs::read(&weights).unwrap();
    refused(&sample(&model, &input, &weights, &[]), &["model.safetensors", "is an input"]);
    assert_eq!(std::fs::read(&weights).unwrap(), w);

    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let link = tmp.path().join("link.jsonl");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    refused(&sample(&model, &input, &link, &[]), &["link.jsonl", "symbolic link", "--force"]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    // With --force the link's target gets the output and the link stays a link.
    ok(&sample(&model, &input, &link, &["--force"]));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(std::fs::read_to_string(&victim).unwrap().contains("\"hyp\""));

    refused(&sample(&model, &input, Path::new("/dev/null"), &[]), &["/dev/null", "not a regular file", "--force"]);
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device_like());
    ok(&sample(&model, &input, Path::new("/dev/null"), &["--force"]));

    let fifo = tmp.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    refused(&sample(&model, &input, &fifo, &[]), &["fifo", "not a regular file"]);
    assert!(!std::fs::symlink_metadata(&fifo).unwrap().file_type().is_file(), "the FIFO is still a FIFO");

    refused(&sample(&model, &input, tmp.path(), &[]), &["is a directory"]);
    // A regular file that is not an input is replaced (written beside it, then renamed).
    let out = tmp.path().join("out.jsonl");
    std::fs::write(&out, "old").unwrap();
    ok(&sample(&model, &input, &out, &[]));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 1);
    let leftovers: Vec<_> =
        std::fs::read_dir(tmp.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

trait CharDevice {
    fn is_char_device_like(&self) -> bool;
}
impl CharDevice for std::fs::FileType {
    fn is_char_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_char_device()
    }
}

/// Case 7: a prompt too long for the model's positions is an error naming its file and line,
/// or cut with `--truncate`, which the summary counts.
#[test]
fn long_prompts_are_an_error_naming_the_line_unless_truncate() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    init_micro(&model);
    let input = tmp.path().join("in.jsonl");
    let long = "the cat sat ".repeat(100);
    std::fs::write(&input, format!("{GOOD}\n{{\"src\": \"{long}\", \"tgt\": \"die Katze\"}}\n")).unwrap();
    let out = tmp.path().join("out.jsonl");
    refused(&sample(&model, &input, &out, &[]), &["in.jsonl:2", "positions", "--truncate"]);
    assert!(!out.exists());
    let err = ok(&sample(&model, &input, &out, &["--truncate"]));
    assert!(err.contains("truncated 1 of 2 prompt"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 2);
}

/// Case 7: `--threads` above the cores is capped (and says so), in `sample` and `train` alike;
/// `--threads 1` is one worker in `train` too.
#[test]
fn threads_never_exceed_the_cores() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    init_micro(&model);
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, format!("{GOOD}\n")).unwrap();
    let err = ok(&sample(&model, &input, &tmp.path().join("o.jsonl"), &["--threads", "1000"]));
    assert!(err.contains(&format!("--threads 1000: capped to {cores}")), "{err}");
    let train = |threads: &str, out: &str| {
        bin()
            .args(["train", "--no-progress", "--max-steps", "1", "--threads", threads, "--model"])
            .arg(&model)
            .arg("--train")
            .arg(&input)
            .arg("--out")
            .arg(tmp.path().join(out))
            .output()
            .unwrap()
    };
    let err = ok(&train("1000", "r1"));
    assert!(err.contains(&format!("capped to {cores}")) && err.contains(&format!("cpu ({cores} threads)")), "{err}");
    let err = ok(&train("1", "r2"));
    assert!(err.contains("cpu (1 threads)"), "{err}");
}

/// Case 8: an error about a path names the path.
#[test]
fn path_errors_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    init_micro(&model);
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, format!("{GOOD}\n")).unwrap();
    // --out below a regular file: creating the run directory fails.
    let blocker = tmp.path().join("plain");
    std::fs::write(&blocker, "x").unwrap();
    let o = bin()
        .args(["train", "--no-progress", "--max-steps", "1", "--model"])
        .arg(&model)
        .arg("--train")
        .arg(&input)
        .arg("--out")
        .arg(blocker.join("run"))
        .output()
        .unwrap();
    refused(&o, &["plain/run"]);
    let o = sample(&model, &input, &blocker.join("out.jsonl"), &[]);
    refused(&o, &["plain/out.jsonl"]);
}

/// Case 5: a closed standard output ends the command quietly, never with a panic.
#[test]
fn closed_stdout_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let hyp = tmp.path().join("h.txt");
    std::fs::write(&hyp, "a b c\n").unwrap();
    let run_closed = |c: &mut Command| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader); // `| head -0`: nobody reads
        let o = c.stdout(writer).stderr(Stdio::piped()).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("panicked") && o.status.code() != Some(101), "{err}");
        assert!(o.status.success(), "{err}");
        assert!(err.is_empty(), "quietly: {err}");
    };
    run_closed(bin().args(["eval", "--metric", "exact", "--hyp"]).arg(&hyp).arg("--ref").arg(&hyp));
    run_closed(bin().args(["eval", "--json", "--hyp"]).arg(&hyp).arg("--ref").arg(&hyp));
    run_closed(bin().arg("fill-mask").arg("--model").arg(fixtures().join("postln")).arg("hello <mask> world"));
    run_closed(bin().arg("fill-mask").arg("--json").arg("--model").arg(fixtures().join("postln")).arg("hello <mask> world"));
}

fn write_config(dir: &Path, name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("postln/config.json")).unwrap()).unwrap();
    edit(&mut v);
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    p
}

/// Case 5 and 4: `init` refuses zero and absurd shapes (saying how much memory they need) and
/// fields outside their range, naming the field; `tokenizer train` refuses an absurd
/// vocabulary size; a huge `--max-time` is refused.
#[test]
fn absurd_shapes_sizes_and_durations_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let init = |cfg: &Path| {
        bin()
            .args(["init", "--tokenizer"])
            .arg(fixtures().join("tokenizer.json"))
            .arg("--config")
            .arg(cfg)
            .arg("--out")
            .arg(tmp.path().join("out"))
            .output()
            .unwrap()
    };
    for (key, needle) in
        [("hidden_size", "`hidden_size` must be at least 1"), ("intermediate_size", "`intermediate_size` must be at least 1")]
    {
        let c = write_config(tmp.path(), "c.json", |v| v[key] = 0.into());
        refused(&init(&c), &["c.json", needle]);
    }
    let c = write_config(tmp.path(), "c.json", |v| v["num_hidden_layers"] = 1_000_000_000u64.into());
    refused(&init(&c), &["c.json", "GiB", "1000000000 layers"]);
    let c = write_config(tmp.path(), "c.json", |v| v["max_position_embeddings"] = (1u64 << 40).into());
    refused(&init(&c), &["c.json", "GiB"]);
    for (key, val) in [("layer_norm_eps", -1.0), ("hidden_dropout_prob", 1.5), ("attention_probs_dropout_prob", -0.1)] {
        let c = write_config(tmp.path(), "c.json", |v| v[key] = val.into());
        refused(&init(&c), &["c.json", key]);
    }
    assert!(!tmp.path().join("out").exists());

    let data = tmp.path().join("d.jsonl");
    std::fs::write(&data, format!("{GOOD}\n")).unwrap();
    for n in ["4000000000", "0", "5"] {
        let o = bin()
            .args(["tokenizer", "train", "--vocab-size", n, "--input"])
            .arg(&data)
            .arg("--out")
            .arg(tmp.path().join("t.json"))
            .output()
            .unwrap();
        refused(&o, &["--vocab-size", n]);
    }

    let model = tmp.path().join("m");
    init_micro(&model);
    for t in ["99999999999999999999h", "-5", "inf"] {
        let o = bin()
            .args(["train", &format!("--max-time={t}"), "--model"])
            .arg(&model)
            .arg("--train")
            .arg(&data)
            .arg("--out")
            .arg(tmp.path().join("r"))
            .output()
            .unwrap();
        refused(&o, &["--max-time"]);
    }
    assert!(!tmp.path().join("r").exists(), "a refused run leaves no directory");
}

fn train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["train", "--no-progress", "--threads", "1", "--log-every", "1", "--model"])
        .arg(model)
        .arg("--train")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Case 4: training flags outside their range are refused naming the flag, before anything is
/// written.
#[test]
fn train_flags_out_of_range_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    init_micro(&model);
    let data = tmp.path().join("d.jsonl");
    std::fs::write(&data, format!("{GOOD}\n")).unwrap();
    let out = tmp.path().join("run");
    for (flag, val) in [
        ("--lr", "-1"),
        ("--lr", "nan"),
        ("--lr", "0"),
        ("--beta1", "1"),
        ("--beta2", "1"),
        ("--adam-eps", "0"),
        ("--timesteps", "0"),
        ("--dropout", "1.5"),
        ("--dropout", "-0.1"),
        ("--label-smoothing", "1"),
        ("--weight-decay", "-1"),
        ("--clip-norm", "inf"),
        ("--accumulate", "0"),
        ("--keep-checkpoints", "0"),
        ("--max-steps", "0"),
        ("--max-tokens", "0"),
    ] {
        let arg = format!("{flag}={val}");
        let extra: Vec<&str> = if flag == "--max-steps" { vec![&arg] } else { vec!["--max-steps", "1", &arg] };
        let o = train(&model, &data, &out, &extra);
        refused(&o, &[flag]);
        assert!(!out.exists(), "{flag} {val}: nothing written");
    }
    let o = bin().args(["sample", "--prompt", "x", "--length", "2", "--temperature", "0", "--model"]).arg(&model).output().unwrap();
    refused(&o, &["--temperature"]);
    let o = bin().args(["sample", "--prompt", "x", "--length", "2", "--steps", "0", "--model"]).arg(&model).output().unwrap();
    refused(&o, &["--steps"]);
}

fn first_loss(out: &Path) -> f64 {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).unwrap()["loss"].as_f64().unwrap()
}

/// Case 4: `--dropout` sets the rate that is used (config.json's no longer wins), and the
/// trained model's config records it.
#[test]
fn dropout_flag_takes_effect() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    init_micro(&model);
    let data = tmp.path().join("d.jsonl");
    std::fs::write(&data, format!("{GOOD}\n")).unwrap();
    let mut losses = Vec::new();
    for (i, p) in ["0.1", "0.1", "0.6"].iter().enumerate() {
        let out = tmp.path().join(format!("r{i}"));
        ok(&train(&model, &data, &out, &["--max-steps", "1", "--dropout", p]));
        losses.push(first_loss(&out));
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("final/config.json")).unwrap()).unwrap();
        assert_eq!(cfg["hidden_dropout_prob"].as_f64().unwrap() as f32, p.parse::<f32>().unwrap());
    }
    assert_eq!(losses[0], losses[1], "same settings, same loss");
    assert_ne!(losses[0], losses[2], "dropout 0.1 and 0.6 gave the same loss");
}

/// Case 4: a tokenizer that does not match the model's vocabulary, and a model with a
/// non-finite weight, are errors naming the file (and the tensor).
#[test]
fn vocabulary_mismatch_and_non_finite_weights_are_errors() {
    use dlm_engine::backend::cpu::CpuBackend;
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    init_micro(&model);
    let data = tmp.path().join("d.jsonl");
    std::fs::write(&data, format!("{GOOD}\n")).unwrap();

    // A config with more rows than the tokenizer (302 ids) has.
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    cfg["vocab_size"] = 310.into();
    let wide = tmp.path().join("wide");
    std::fs::create_dir(&wide).unwrap();
    std::fs::write(wide.join("c.json"), cfg.to_string()).unwrap();
    let o = bin()
        .args(["init", "--tokenizer"])
        .arg(fixtures().join("tokenizer.json"))
        .arg("--config")
        .arg(wide.join("c.json"))
        .arg("--out")
        .arg(wide.join("m"))
        .output()
        .unwrap();
    refused(&o, &["302 ids", "310 rows"]);
    // Swap the model's tokenizer.json for one with fewer ids.
    let small_tok = tmp.path().join("small.json");
    let st = bin().args(["tokenizer", "train", "--vocab-size", "30", "--input"]).arg(&data).arg("--out").arg(&small_tok).output().unwrap();
    ok(&st);
    let swapped = tmp.path().join("swapped");
    std::fs::create_dir(&swapped).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(model.join(f), swapped.join(f)).unwrap();
    }
    std::fs::copy(&small_tok, swapped.join("tokenizer.json")).unwrap();
    let o = bin().args(["sample", "--prompt", "x", "--length", "2", "--model"]).arg(&swapped).output().unwrap();
    refused(&o, &["swapped/tokenizer.json", "302 rows"]);
    refused(&train(&swapped, &data, &tmp.path().join("r"), &["--max-steps", "1"]), &["swapped/tokenizer.json"]);

    // One NaN in the weights.
    let mut m = dlm_engine::model::XlmR::load(CpuBackend::new(), &model).unwrap();
    let i = m.param_names().iter().position(|n| n.ends_with("lm_head.dense.weight")).unwrap();
    let mut v = m.download_param(i, &m.values()[i]).unwrap();
    v[3] = f32::NAN;
    m.set_value(i, &v).unwrap();
    let broken = tmp.path().join("broken");
    m.save(&broken).unwrap();
    std::fs::copy(model.join("tokenizer.json"), broken.join("tokenizer.json")).unwrap();
    let o = bin().args(["sample", "--prompt", "x", "--length", "2", "--model"]).arg(&broken).output().unwrap();
    refused(&o, &["broken/model.safetensors", "lm_head.dense.weight", "non-finite"]);
}
