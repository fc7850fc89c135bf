//! Data-parallel training end to end (docs/distributed.md): `train --gpus 0,1` on two software
//! devices (`DLM_SWDEV_DEVICES=2`, the NCCL stand-in of tests/swdev) against one process on the
//! whole batch, a resume at world size 1 of a run trained at world size 2, the same run started
//! torchrun-style, ZeRO-1 against plain data parallel (and its checkpoints resumed alone), gradient
//! buckets of any size (bit for bit the same), the length stage on two ranks, and a killed rank
//! stopping the whole run. Runs on a GPU machine
//! with two GPUs and NCCL, or on the software device in CI; skipped elsewhere, like the other
//! CUDA tests.
//!
//! Tolerances. Two ranks compute what one computes, in another order: each rank sums its share's
//! gradients, NCCL sums the ranks' sums, and each share is padded to its own longest row, so the
//! GEMMs and the attention run at other shapes. The f32 results differ in their last bits; AdamW
//! turns a gradient into an update of about the learning rate in size, so the parameters stay
//! within a few ulps of each other, until a master weight near a bf16 rounding boundary rounds the
//! other way in the bf16 copy the forward reads (one bf16 ulp, 2^-8 relative), which moves the
//! next gradients by about 1e-3 of their size in places. Losses are compared within `TOL_LOSS`
//! relative per step, parameters and Adam moments within `TOL_PARAM` of each tensor's largest
//! magnitude; on the software device the runs differ by about 1e-7 (losses) and 6e-7 (tensors).
//! A rank drawing the wrong examples' noise, a missing or doubled gradient sum, or a wrong loss
//! normalisation moves the losses by percents.

mod common;
use common::{fixtures, gpu, staged_binary as binary, write_reversal_pairs};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOL_LOSS: f64 = 1e-4;
const TOL_PARAM: f64 = 2e-3;

/// Whether this machine can run a two-rank test: two CUDA devices (the software device is asked
/// for two) and NCCL. The software device must always manage; a real machine without a second GPU
/// or NCCL skips, saying why.
fn two_gpus(test: &str) -> bool {
    // Once, before this process opens a device (the software device counts its devices then).
    static TWO: std::sync::Once = std::sync::Once::new();
    TWO.call_once(|| std::env::set_var("DLM_SWDEV_DEVICES", "2"));
    let Some(g) = gpu(test) else { return false };
    let software = dlm_engine::backend::Backend::name(&g).contains(dlm_engine::backend::cuda::SOFTWARE_DEVICE_MARK);
    drop(g);
    let devices = cudarc::driver::CudaContext::device_count().unwrap_or(0);
    let missing = if devices < 2 {
        Some(format!("{devices} CUDA device(s), the test needs 2"))
    } else {
        dlm_engine::dist::nccl::api().err().map(|e| e.to_string())
    };
    match missing {
        Some(why) if software => panic!("{test}: the software device must run it, but: {why}"),
        Some(why) => {
            eprintln!("skipped {test}: {why}");
            false
        }
        None => true,
    }
}

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(binary());
    c.args(args).env("DLM_SWDEV_DEVICES", "2");
    c
}

fn run(args: &[&str]) -> String {
    let out = command(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?} failed:\n{err}");
    err
}

/// A micro model and 48 reversal pairs, in `tmp`.
fn setup(tmp: &Path) -> (PathBuf, PathBuf) {
    let model = tmp.join("m");
    let (tok, m) = (fixtures().join("tokenizer.json"), model.display().to_string());
    run(&["init", "--preset", "micro", "--tokenizer", tok.to_str().unwrap(), "--out", &m]);
    let data = tmp.join("train.jsonl");
    write_reversal_pairs(&data, 48, 3);
    (model, data)
}

/// The training flags every run here shares (dropout off: with dropout each rank draws its own
/// masks, so world sizes agree only in distribution; docs/distributed.md).
fn train_args(model: &Path, data: &Path, out: &Path, steps: u64) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--device", "cuda", "--seed", "7", "--no-progress", "--log-every", "1", "--save-every", "0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (flag, v) in [
        ("--model", model.display().to_string()),
        ("--train", data.display().to_string()),
        ("--out", out.display().to_string()),
        ("--max-steps", steps.to_string()),
        ("--batch-size", "8".into()),
        ("--dropout", "0".into()),
        ("--lr", "1e-3".into()),
        ("--schedule", "warmup-constant".into()),
        ("--warmup-steps", "2".into()),
    ] {
        a.push(flag.into());
        a.push(v);
    }
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn losses(run_dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v.get("loss").and_then(|l| l.as_f64()))
        .collect()
}

/// Every tensor of a checkpoint's weights and optimizer moments, as f32.
fn tensors(dir: &Path) -> HashMap<String, Vec<f32>> {
    use safetensors::tensor::Dtype;
    let mut out = HashMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".safetensors") {
            continue;
        }
        let bytes = std::fs::read(e.path()).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (t, view) in st.tensors() {
            let vals: Vec<f32> = match view.dtype() {
                Dtype::F32 => view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                Dtype::BF16 => view.data().chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                d => panic!("{name}: tensor {t} has dtype {d:?}"),
            };
            out.insert(format!("{name}:{t}"), vals);
        }
    }
    assert!(!out.is_empty(), "{}: no tensors", dir.display());
    out
}

fn compare_losses(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{what}: one loss per step in both runs");
    for (s, (x, y)) in a.iter().zip(b).enumerate() {
        // Equal losses agree (a step whose few rows have no masked slot has loss 0 in both).
        let e = if x == y { 0.0 } else { (x - y).abs() / y.abs() };
        eprintln!("{what}: step {}: {x:.6} vs {y:.6} (relative {e:.2e})", s + 1);
        assert!(e <= TOL_LOSS, "{what}: step {}: loss {x} vs {y}: relative {e:.3e} > {TOL_LOSS:.0e}", s + 1);
    }
}

fn compare_tensors(what: &str, a: &Path, b: &Path) {
    let (ta, tb) = (tensors(a), tensors(b));
    let mut names: Vec<&String> = tb.keys().collect();
    names.sort();
    assert_eq!(ta.len(), tb.len(), "{what}: the same tensors in {} and {}", a.display(), b.display());
    let mut worst = (0.0f64, String::new());
    for n in names {
        let (x, y) = (&ta[n], &tb[n]);
        assert_eq!(x.len(), y.len(), "{what}: {n}");
        let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
        let e = x.iter().zip(y).fold(0.0f64, |m, (p, q)| m.max((p - q).abs() as f64)) / scale;
        if e > worst.0 {
            worst = (e, n.clone());
        }
        assert!(e <= TOL_PARAM, "{what}: {n}: differs by {e:.3e} of its largest magnitude (> {TOL_PARAM:.0e})");
    }
    eprintln!("{what}: largest tensor difference {:.2e} ({})", worst.0, worst.1);
}

#[test]
fn two_ranks_train_as_one_process_on_the_whole_batch_and_resume_at_one() {
    if !two_gpus("two_ranks_train_as_one_process_on_the_whole_batch_and_resume_at_one") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let dir = |n: &str| tmp.path().join(n);

    // One process, the whole batch, 10 steps.
    run(&strs(&train_args(&model, &data, &dir("one"), 10)));
    // Two ranks, half the batch each.
    let err = run(&[strs(&train_args(&model, &data, &dir("two"), 10)), vec!["--gpus", "0,1"]].concat());
    assert!(err.contains("launching 2 ranks"), "{err}");
    assert_eq!(err.matches("done: 10 steps").count(), 1, "only rank 0 reports:\n{err}");
    compare_losses("2 ranks vs 1", &losses(&dir("two")), &losses(&dir("one")));
    compare_tensors("2 ranks vs 1", &dir("two/final"), &dir("one/final"));

    // 5 steps on two ranks, then 5 more on one: as 10 straight on one.
    run(&[strs(&train_args(&model, &data, &dir("resumed"), 5)), vec!["--gpus", "0,1"]].concat());
    let resumed = dir("resumed").display().to_string();
    run(&[strs(&train_args(&model, &data, &dir("resumed"), 10)), vec!["--resume", &resumed]].concat());
    compare_losses("5 steps on 2 ranks + 5 on 1 vs 10 on 1", &losses(&dir("resumed")), &losses(&dir("one")));
    compare_tensors("5 steps on 2 ranks + 5 on 1 vs 10 on 1", &dir("resumed/final"), &dir("one/final"));

    // The same two-rank run started as torchrun would: the same numbers, bit for bit.
    let args = train_args(&model, &data, &dir("torchrun"), 10);
    for (rank, (ok, err)) in start_ranks(&[args.clone(), args]).into_iter().enumerate() {
        assert!(ok, "rank {rank} failed:\n{err}");
    }
    assert_eq!(losses(&dir("torchrun")), losses(&dir("two")), "torchrun-style vs --gpus 0,1: the same losses");
    assert_eq!(tensors(&dir("torchrun/final")), tensors(&dir("two/final")), "torchrun-style vs --gpus 0,1: the same weights");
}

/// `args` with `flag`'s value replaced.
fn with(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    let at = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} is not among {args:?}"));
    args[at + 1] = value.to_string();
    args
}

#[test]
fn zero1_trains_as_plain_data_parallel_and_its_checkpoints_resume_on_one_rank() {
    if !two_gpus("zero1_trains_as_plain_data_parallel_and_its_checkpoints_resume_on_one_rank") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let dir = |n: &str| tmp.path().join(n);
    let two = ["--gpus", "0,1"];

    // Plain data parallel and ZeRO-1 (with a checkpoint at step 5: the moments are gathered).
    run(&[strs(&train_args(&model, &data, &dir("plain"), 10)), two.to_vec()].concat());
    let zero = with(train_args(&model, &data, &dir("zero"), 10), "--save-every", "5");
    run(&[strs(&zero), two.to_vec(), vec!["--zero", "1"]].concat());
    compare_losses("ZeRO-1 vs plain", &losses(&dir("zero")), &losses(&dir("plain")));
    compare_tensors("ZeRO-1 vs plain", &dir("zero/final"), &dir("plain/final"));
    assert!(dir("zero/checkpoint-5/optimizer.safetensors").is_file(), "the step-5 checkpoint");
    // The collectives in many small chunks (a staging buffer instead of the whole flat vectors)
    // give the same bits.
    let chunked = with(train_args(&model, &data, &dir("chunked"), 10), "--save-every", "5");
    let args = [strs(&chunked), two.to_vec(), vec!["--zero", "1"]].concat();
    let out = command(&args).env("DLM_ZERO_CHUNK", "1000").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(losses(&dir("chunked")), losses(&dir("zero")), "ZeRO-1 in chunks of 1000 vs whole");
    assert_eq!(tensors(&dir("chunked/final")), tensors(&dir("zero/final")), "ZeRO-1 in chunks of 1000 vs whole");
    // The ranks keep bf16 parameters between checkpoints: a checkpoint holds the f32 masters.
    for ck in ["zero/checkpoint-5", "zero/final"] {
        let t = tensors(&dir(ck));
        let vals: Vec<f32> = t.iter().filter(|(n, _)| !n.starts_with("optimizer")).flat_map(|(_, v)| v.iter().copied()).collect();
        let wide = vals.iter().filter(|&&v| half::bf16::from_f32(v).to_f32() != v).count();
        assert!(wide * 2 > vals.len(), "{ck}: only {wide} of {} weights are not bf16 values: the f32 masters were lost", vals.len());
    }

    // 5 steps of ZeRO-1 on two ranks, 5 more alone: as 10 alone.
    run(&strs(&train_args(&model, &data, &dir("one"), 10)));
    run(&[strs(&train_args(&model, &data, &dir("zr"), 5)), two.to_vec(), vec!["--zero", "1"]].concat());
    let zr = dir("zr").display().to_string();
    run(&[strs(&train_args(&model, &data, &dir("zr"), 10)), vec!["--resume", &zr]].concat());
    compare_losses("5 ZeRO-1 steps on 2 ranks + 5 on 1 vs 10 on 1", &losses(&dir("zr")), &losses(&dir("one")));
    compare_tensors("5 ZeRO-1 steps on 2 ranks + 5 on 1 vs 10 on 1", &dir("zr/final"), &dir("one/final"));
}

/// The gradient buckets summed during the backward pass: however the gradients are cut into
/// buckets, every element is the same rank-order sum, so the results are the same bits.
#[test]
fn gradient_buckets_of_any_size_train_to_the_same_bits() {
    if !two_gpus("gradient_buckets_of_any_size_train_to_the_same_bits") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let dir = |n: &str| tmp.path().join(n);
    let two = ["--gpus", "0,1"];
    // 0.0001 MiB (104 bytes): about one bucket per parameter, launched layer by layer going down;
    // 1000 MiB: one bucket, launched after the pass.
    for accumulate in ["1", "2"] {
        let steps = if accumulate == "1" { 10 } else { 5 };
        let run_as = |name: &str, extra: &[&str]| {
            let args = train_args(&model, &data, &dir(name), steps);
            run(&[strs(&args), vec!["--accumulate", accumulate], extra.to_vec()].concat());
        };
        let (tiny, one_bucket, alone) = (format!("tiny{accumulate}"), format!("big{accumulate}"), format!("one{accumulate}"));
        run_as(&tiny, &[two.as_slice(), &["--bucket-mb", "0.0001"]].concat());
        run_as(&one_bucket, &[two.as_slice(), &["--bucket-mb", "1000"]].concat());
        run_as(&alone, &[]);
        let what = format!("--accumulate {accumulate}");
        assert_eq!(losses(&dir(&tiny)), losses(&dir(&one_bucket)), "{what}: many buckets vs one: the same losses");
        assert_eq!(tensors(&dir(&format!("{tiny}/final"))), tensors(&dir(&format!("{one_bucket}/final"))), "{what}: the same weights");
        compare_losses(&format!("{what}, buckets on 2 ranks vs 1"), &losses(&dir(&tiny)), &losses(&dir(&alone)));
        compare_tensors(&format!("{what}, buckets on 2 ranks vs 1"), &dir(&format!("{tiny}/final")), &dir(&format!("{alone}/final")));
    }
    // One row per batch: rank 1 has no rows and no backward pass, and must still start the
    // buckets rank 0's pass starts (else the ranks' collectives would not match).
    for (name, extra) in [("row1", vec!["--bucket-mb", "0.0001"]), ("row2", vec!["--gpus", "0,1", "--bucket-mb", "0.0001"])] {
        let args = with(train_args(&model, &data, &dir(name), 6), "--batch-size", "1");
        run(&[strs(&args), extra].concat());
    }
    let trained = losses(&dir("row1"));
    assert!(trained.iter().filter(|l| **l > 0.0).count() >= 3, "most single-row steps have a loss: {trained:?}");
    compare_losses("one row on 2 ranks vs 1", &losses(&dir("row2")), &trained);
    compare_tensors("one row on 2 ranks vs 1", &dir("row2/final"), &dir("row1/final"));
}

#[test]
fn the_length_stage_trains_alike_on_two_ranks() {
    if !two_gpus("the_length_stage_trains_alike_on_two_ranks") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let dir = |n: &str| tmp.path().join(n);
    for (name, extra) in [("one", vec![]), ("two", vec!["--gpus", "0,1"])] {
        run(&[strs(&train_args(&model, &data, &dir(name), 5)), vec!["--stage", "length"], extra].concat());
    }
    compare_losses("length stage, 2 ranks vs 1", &losses(&dir("two")), &losses(&dir("one")));
    compare_tensors("length stage, 2 ranks vs 1", &dir("two/final"), &dir("one/final"));
}

/// Starts ranks torchrun-style, rank r with `args[r]`, and waits for them: (success, stderr).
fn start_ranks(args: &[Vec<String>]) -> Vec<(bool, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let world = args.len().to_string();
    let ranks: Vec<_> = args
        .iter()
        .enumerate()
        .map(|(rank, a)| {
            let r = rank.to_string();
            let mut c = command(&strs(a));
            c.envs([
                ("RANK", r.as_str()),
                ("LOCAL_RANK", &r),
                ("WORLD_SIZE", &world),
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", &port),
            ]);
            c.stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    ranks
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
        })
        .collect()
}

#[test]
fn ranks_started_with_other_settings_are_refused() {
    if !two_gpus("ranks_started_with_other_settings_are_refused") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let args = train_args(&model, &data, &tmp.path().join("run"), 2);
    let ended = start_ranks(&[args.clone(), with(args, "--seed", "8")]);
    assert!(!ended[0].0 && !ended[1].0, "both ranks fail: {ended:?}");
    assert!(ended[0].1.contains("rank 1 was started with other training settings than rank 0"), "rank 0:\n{}", ended[0].1);
    assert!(ended[1].1.contains("error: rank 1: rank 0 refused this rank"), "rank 1:\n{}", ended[1].1);
    assert!(!tmp.path().join("run").exists(), "nothing is written");
}

#[test]
fn a_killed_rank_stops_every_rank_with_an_error_naming_it() {
    if !two_gpus("a_killed_rank_stops_every_rank_with_an_error_naming_it") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let args = train_args(&model, &data, &tmp.path().join("run"), 100_000);
    let mut launcher = command(&[strs(&args), vec!["--gpus", "0,1"]].concat()).stderr(Stdio::piped()).spawn().unwrap();
    let lines = BufReader::new(launcher.stderr.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut log = Vec::new();
    let mut victim: Option<u32> = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    // Rank 1's pid from the launcher; kill it once rank 0 has logged two steps.
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Some(pid) = l.strip_prefix("rank 1: GPU 1, pid ") {
            victim = Some(pid.trim().parse().unwrap());
        }
        let two_steps = l.trim_start().starts_with("step") && l.split_whitespace().nth(1) == Some("2");
        log.push(l);
        if two_steps {
            break;
        }
    }
    let pid = victim.unwrap_or_else(|| panic!("the launcher did not say rank 1's pid:\n{}", log.join("\n")));
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let killed = Instant::now();
    // Every rank must end by itself, well before the launcher's grace period ends.
    let status = loop {
        if let Some(s) = launcher.try_wait().unwrap() {
            break s;
        }
        if killed.elapsed() > Duration::from_secs(120) {
            let _ = launcher.kill();
            panic!("the run did not stop within 120 s of rank 1's death:\n{}", log.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(200));
    log.extend(rx.try_iter());
    let text = log.join("\n");
    eprintln!("{text}");
    assert!(!status.success(), "the launcher must fail:\n{text}");
    assert!(text.contains("rank 1 (GPU 1) was killed by signal 9"), "the launcher names the killed rank:\n{text}");
    assert!(text.contains("error: rank 1 (GPU 1) was killed by signal 9; the run stopped"), "its final error:\n{text}");
    assert!(!text.contains("did not stop within"), "rank 0 stopped by itself:\n{text}");
    assert!(text.lines().any(|l| l.contains("rank 0") && l.contains("rank 1")), "rank 0 says rank 1 died:\n{text}");
}
