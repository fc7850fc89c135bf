//! Issue 16: `kill -9` at random points of a training run (during steps, checkpoint writes and
//! pruning: with `--save-every 1 --keep-checkpoints 2` a checkpoint is written and one pruned
//! every step), then `--resume RUN`, 30 times over: the run always completes, each step is in
//! metrics.jsonl once with the loss of a run that was never interrupted, and no temporary is left.

mod common;
use common::bin;
use common::fixtures;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: &str = "24";

fn train_cmd(model: &Path, data: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.args(["train", "--no-progress", "--threads", "1", "--max-tokens", "64", "--log-every", "1", "--save-every", "1"])
        .args(["--keep-checkpoints", "2", "--max-steps", STEPS, "--model"])
        .arg(model)
        .arg("--train")
        .arg(data)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("bad metrics line {l:?}: {e}")))
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// Whether the run has a checkpoint `--resume RUN` can take (as the CLI decides it).
fn has_complete_checkpoint(run: &Path) -> bool {
    dlm_engine::train::checkpoint::resolve_resume(run).is_ok()
}

#[test]
fn kill_9_at_random_points_then_resume_gives_the_uninterrupted_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    let st = bin()
        .args(["init", "--preset", "micro", "--tokenizer"])
        .arg(fixtures().join("tokenizer.json"))
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let data = tmp.path().join("d.jsonl");
    let rows: Vec<String> = (0..16).map(|i| format!(r#"{{"src": "the cat {i}", "tgt": "die Katze {i}"}}"#)).collect();
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();

    let straight = tmp.path().join("straight");
    let t0 = Instant::now();
    let o = train_cmd(&model, &data, &straight).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let full = t0.elapsed();
    let want = losses(&straight);
    assert_eq!(want.len(), STEPS.parse::<usize>().unwrap());

    let run = tmp.path().join("run");
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let (mut kills, mut resumes) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(45);
    for round in 0..80 {
        let mut c = train_cmd(&model, &data, &run);
        if has_complete_checkpoint(&run) {
            c.arg("--resume").arg(&run);
            resumes += 1;
        } else if run.exists() {
            c.arg("--overwrite");
        }
        let mut child = c.spawn().unwrap();
        // A random point within one uninterrupted run's time (start-up included).
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let wait = full.mul_f64((rng >> 11) as f64 / (1u64 << 53) as f64);
        std::thread::sleep(wait);
        match child.try_wait().unwrap() {
            Some(status) => {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                assert!(status.success(), "round {round}: {err}");
                if run.join("final/trainer_state.json").is_file() && losses(&run).len() == want.len() {
                    // Finished before the kill; start the next round from scratch.
                    std::fs::remove_dir_all(&run).unwrap();
                }
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
        }
        if kills >= 30 || Instant::now() > deadline {
            break;
        }
    }
    assert!(kills >= 10, "only {kills} kills landed");
    // Resume to the end.
    let mut c = train_cmd(&model, &data, &run);
    if has_complete_checkpoint(&run) {
        c.arg("--resume").arg(&run);
        resumes += 1;
    } else if run.exists() {
        c.arg("--overwrite");
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("{kills} kills, {resumes} resumes");
    assert_eq!(losses(&run), want, "after {kills} kills and {resumes} resumes");
    let names: Vec<String> = std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-") && !n.contains(".old-") && !n.contains(".deleting-")), "temporaries left: {names:?}");
    assert!(names.iter().filter(|n| n.starts_with("checkpoint-")).count() <= 2, "{names:?}");
}
