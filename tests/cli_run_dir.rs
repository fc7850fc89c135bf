//! The run directory of `train --out`: a resumed run reads nothing from checkpoints that pruning
//! deletes, pruning and interrupted writes leave nothing `--resume` could pick, metrics have no
//! duplicate steps after a resume, `--out` refuses what is not a run of this tool (or an existing
//! run without `--resume`/`--overwrite`), and a lock keeps a second process out.

mod common;
use common::{bin, init_micro};
use std::path::{Path, PathBuf};
use std::process::Output;

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    data: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let model = root.join("m");
    init_micro(&model);
    let data = root.join("train.jsonl");
    let rows: Vec<String> = (0..12).map(|i| format!(r#"{{"src": "the cat {i}", "tgt": "die Katze {i}"}}"#)).collect();
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    Setup { _tmp: tmp, root, model, data }
}

/// `train` with the model, data, `--out` and `extra`.
fn train(s: &Setup, out: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["train", "--no-progress", "--threads", "1", "--max-tokens", "64", "--log-every", "1", "--model"])
        .arg(&s.model)
        .arg("--train")
        .arg(&s.data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err
}

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

fn metric_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect()
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Issue 16, case 1 and case 8 (second half): resuming from a checkpoint that pruning deletes
/// later still writes `final/`, and metrics.jsonl has each step once, with the straight run's
/// losses.
#[test]
fn resume_survives_pruning_of_its_checkpoint_and_metrics_have_no_duplicates() {
    let s = setup();
    let run = s.root.join("run");
    ok(&train(&s, &run, &["--max-steps", "6", "--save-every", "2"]));
    assert_eq!(metric_steps(&run), (1..=6).collect::<Vec<_>>());
    assert!(run.join("checkpoint-4").is_dir());
    // Resume from checkpoint-2 (older than what is there): the run rewrites steps 3..8, and
    // pruning deletes checkpoint-2 on the way.
    let err = ok(&train(&s, &run, &["--max-steps", "8", "--save-every", "2", "--resume", run.join("checkpoint-2").to_str().unwrap()]));
    assert!(!run.join("checkpoint-2").exists(), "checkpoint-2 should have been pruned: {:?}", names(&run));
    assert!(run.join("final/tokenizer.json").is_file(), "{err}");
    assert!(run.join("checkpoint-6/tokenizer.json").is_file());
    assert_eq!(metric_steps(&run), (1..=8).collect::<Vec<_>>(), "each step once after the resume");

    // The same losses as a run that never stopped.
    let straight = s.root.join("straight");
    ok(&train(&s, &straight, &["--max-steps", "8", "--save-every", "2"]));
    assert_eq!(losses(&run), losses(&straight));
}

/// Issue 16, case 6: pruning leaves no partial checkpoint, temporaries of interrupted writes
/// and prunes are removed on the next start, and `--resume RUN` only picks a complete checkpoint.
#[test]
fn debris_is_cleaned_and_resume_picks_only_complete_checkpoints() {
    let s = setup();
    let run = s.root.join("run");
    ok(&train(&s, &run, &["--max-steps", "4", "--save-every", "1", "--keep-checkpoints", "2"]));
    assert_eq!(names(&run).iter().filter(|n| n.starts_with("checkpoint-")).count(), 2, "{:?}", names(&run));
    // What a kill -9 leaves: a half-written temporary, a half-deleted prune, and a newer
    // checkpoint directory missing its weights.
    let tmp = run.join(".checkpoint-9.tmp-4242");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::write(tmp.join("config.json"), "{}").unwrap();
    let half = run.join(".checkpoint-1.deleting-4242");
    std::fs::create_dir(&half).unwrap();
    std::fs::write(half.join("trainer_state.json"), "{}").unwrap();
    let partial = run.join("checkpoint-7");
    std::fs::create_dir(&partial).unwrap();
    for f in ["config.json", "trainer_state.json"] {
        std::fs::copy(run.join("checkpoint-3").join(f), partial.join(f)).unwrap();
    }
    // Asked for by name, the partial checkpoint is refused; the run's newest complete one
    // (final, step 4) is taken instead of it.
    refused(&train(&s, &run, &["--max-steps", "5", "--resume", partial.to_str().unwrap()]), &["checkpoint-7", "incomplete"]);
    let err = ok(&train(&s, &run, &["--max-steps", "5", "--save-every", "0", "--resume", run.to_str().unwrap()]));
    assert!(err.contains("final"), "resumed from final: {err}");
    assert!(!tmp.exists() && !half.exists(), "temporaries not cleaned: {:?}", names(&run));
    assert_eq!(metric_steps(&run), (1..=5).collect::<Vec<_>>());
}

/// Issue 16, case 3: `--out` refuses a non-empty directory that is not a run, and an existing
/// run unless `--resume` or `--overwrite`; a file there is refused naming it.
#[test]
fn out_refuses_foreign_directories_and_existing_runs() {
    let s = setup();
    let foreign = s.root.join("foreign");
    std::fs::create_dir_all(foreign.join("final")).unwrap();
    std::fs::write(foreign.join("final/notes.txt"), "mine").unwrap();
    refused(&train(&s, &foreign, &["--max-steps", "2"]), &["foreign", "not a dlm-engine run"]);
    refused(&train(&s, &foreign, &["--max-steps", "2", "--overwrite"]), &["foreign", "not a dlm-engine run"]);
    assert_eq!(std::fs::read_to_string(foreign.join("final/notes.txt")).unwrap(), "mine");
    assert_eq!(names(&foreign), ["final"], "nothing written into it");

    let file = s.root.join("afile");
    std::fs::write(&file, "x").unwrap();
    refused(&train(&s, &file, &["--max-steps", "2"]), &["afile", "not a directory"]);

    let run = s.root.join("run");
    ok(&train(&s, &run, &["--max-steps", "4", "--save-every", "2"]));
    let before = std::fs::read(run.join("final/model.safetensors")).unwrap();
    refused(&train(&s, &run, &["--max-steps", "2"]), &["already holds a training run", "--resume", "--overwrite"]);
    assert_eq!(std::fs::read(run.join("final/model.safetensors")).unwrap(), before, "final/ untouched");
    // --overwrite starts again: old checkpoints go, so the new ones are not pruned against them.
    ok(&train(&s, &run, &["--max-steps", "3", "--save-every", "1", "--keep-checkpoints", "2", "--overwrite"]));
    let cps: Vec<String> = names(&run).into_iter().filter(|n| n.starts_with("checkpoint-")).collect();
    assert_eq!(cps, ["checkpoint-1", "checkpoint-2"]);
    assert_eq!(metric_steps(&run), [1, 2, 3]);
    // An empty directory is fine, and so is one holding only what a run killed before it
    // marked the directory left: its lock file and a temporary of its run file.
    let empty = s.root.join("empty");
    std::fs::create_dir(&empty).unwrap();
    ok(&train(&s, &empty, &["--max-steps", "1"]));
    let killed = s.root.join("killed");
    std::fs::create_dir(&killed).unwrap();
    std::fs::write(killed.join(".lock"), "999999\n").unwrap();
    std::fs::write(killed.join(".run.json.tmp-999999"), "{").unwrap();
    ok(&train(&s, &killed, &["--max-steps", "1"]));
    assert!(!killed.join(".run.json.tmp-999999").exists());
}

/// Issue 16, case 3: a second process on the same run directory is stopped naming the first
/// one's pid; a lock left by a dead process is taken over.
#[test]
fn lock_names_the_holder_and_a_stale_lock_is_taken_over() {
    let s = setup();
    let run = s.root.join("run");
    let mut first = bin()
        .args(["train", "--no-progress", "--threads", "1", "--max-tokens", "64", "--max-steps", "100000", "--save-every", "0", "--model"])
        .arg(&s.model)
        .arg("--train")
        .arg(&s.data)
        .arg("--out")
        .arg(&run)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id().to_string();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(run.join(".lock")).unwrap_or_default().trim() != pid {
        assert!(t0.elapsed().as_secs() < 60, "the first training never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = train(&s, &run, &["--max-steps", "2", "--resume", run.to_str().unwrap()]);
    let third = train(&s, &run, &["--max-steps", "2", "--overwrite"]);
    first.kill().unwrap();
    first.wait().unwrap();
    refused(&second, &["in use by process", &pid]);
    refused(&third, &["in use by process", &pid]);

    // The killed process's lock file is still there, naming it; it is taken over.
    assert_eq!(std::fs::read_to_string(run.join(".lock")).unwrap().trim(), pid);
    ok(&train(&s, &run, &["--max-steps", "2", "--overwrite"]));
    assert!(run.join("final/model.safetensors").is_file());
}

/// Issue 16, case 4 (resume): a resume that would change the training (here the learning rate,
/// the seed, or another model directory) is refused, naming each change, unless
/// `--allow-changes`; the same settings, or only a later stop, resume as before.
#[test]
fn resume_refuses_changed_settings_unless_allowed() {
    let s = setup();
    let run = s.root.join("run");
    ok(&train(&s, &run, &["--max-steps", "2", "--save-every", "2", "--lr", "1e-3"]));
    let resume = |steps: &'static str| vec!["--max-steps", steps, "--save-every", "2", "--resume", run.to_str().unwrap()];
    refused(&train(&s, &run, &[resume("4"), vec!["--lr", "2e-3", "--seed", "9"]].concat()), &["--lr", "--seed", "--allow-changes"]);
    let other = s.root.join("m2");
    init_micro(&other);
    let out = bin()
        .args(["train", "--no-progress", "--threads", "1", "--max-tokens", "64", "--lr", "1e-3", "--model"])
        .arg(&other)
        .arg("--train")
        .arg(&s.data)
        .arg("--out")
        .arg(&run)
        .args(resume("4"))
        .output()
        .unwrap();
    refused(&out, &["--model", "--allow-changes"]);
    assert_eq!(metric_steps(&run), vec![1, 2], "a refused resume trains nothing");
    // The recorded settings and a later stop: no change.
    ok(&train(&s, &run, &[resume("4"), vec!["--lr", "1e-3"]].concat()));
    assert_eq!(metric_steps(&run), vec![1, 2, 3, 4]);
    // Allowed: it says what changed, and the next resume compares with the new settings.
    let err = ok(&train(&s, &run, &[resume("6"), vec!["--lr", "2e-3", "--allow-changes"]].concat()));
    assert!(err.contains("warning: resuming with changed settings: --lr"), "{err}");
    ok(&train(&s, &run, &[resume("8"), vec!["--lr", "2e-3"]].concat()));
    assert_eq!(metric_steps(&run), (1..=8).collect::<Vec<_>>());
}

/// Resuming from an earlier checkpoint abandons the later ones: they are removed, so pruning
/// keeps the new checkpoints and `--resume RUN` continues the new history (with the straight
/// run's losses).
#[test]
fn resume_from_an_earlier_checkpoint_removes_the_later_ones() {
    let s = setup();
    let run = s.root.join("run");
    let keep = ["--save-every", "1", "--keep-checkpoints", "5"];
    ok(&train(&s, &run, &[&["--max-steps", "5"][..], &keep].concat()));
    assert!(run.join("checkpoint-4").is_dir(), "{:?}", names(&run));
    let cp2 = run.join("checkpoint-2");
    let from2 = ["--max-steps", "3", "--resume", cp2.to_str().unwrap()];
    let err = ok(&train(&s, &run, &[&from2[..], &keep].concat()));
    assert!(err.contains("removed checkpoint-3, checkpoint-4"), "{err}");
    // Step 3 is now the last: it went to final/, and nothing past step 2 is left besides it.
    assert!(!run.join("checkpoint-3").exists() && !run.join("checkpoint-4").exists(), "{:?}", names(&run));
    let on = ["--max-steps", "6", "--resume", run.to_str().unwrap()];
    ok(&train(&s, &run, &[&on[..], &keep].concat()));
    let straight = s.root.join("straight");
    ok(&train(&s, &straight, &[&["--max-steps", "6"][..], &keep].concat()));
    assert_eq!(losses(&run), losses(&straight));
}
