//! The length predictor from the command line on a micro model: `train --stage length`
//! (a new predictor, a frozen backbone, checkpoints, exact resume, validation length accuracy)
//! and `sample --length predict --length-beam N` (candidates, the chosen length, batching).

mod common;
use common::{bin, init_micro, logged_losses as losses};
use dlm_engine::model::weights::read_safetensors;
use std::path::Path;

const WORDS: &[&str] = &["the", "cat", "dog", "house", "water", "bread", "tree", "book"];

/// A copy task whose target length follows the source's: `n` words → the same `n` words.
fn write_data(p: &Path, n: usize, seed: usize) {
    let mut text = String::new();
    for i in 0..n {
        let k = 1 + (i * 7 + seed) % 5;
        let words: Vec<&str> = (0..k).map(|j| WORDS[(i * 3 + j * 5 + seed) % WORDS.len()]).collect();
        let s = words.join(" ");
        text.push_str(&serde_json::json!({ "src": s, "tgt": s }).to_string());
        text.push('\n');
    }
    std::fs::write(p, text).unwrap();
}

fn run(args: &[&str], paths: &[(&str, &Path)]) -> std::process::Output {
    let mut c = bin();
    c.args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    c.output().unwrap()
}

fn ok(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

const LENGTH_ARGS: &[&str] = &["train", "--stage", "length", "--no-progress", "--log-every", "1", "--max-tokens", "256", "--lr", "3e-3"];

#[test]
fn length_stage_trains_only_the_predictor_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data, valid) = (tmp.path().join("m"), tmp.path().join("train.jsonl"), tmp.path().join("valid.jsonl"));
    init_micro(&model);
    write_data(&data, 60, 0);
    write_data(&valid, 20, 3);
    let (run1, run2) = (tmp.path().join("run1"), tmp.path().join("run2"));
    let mut args = LENGTH_ARGS.to_vec();
    args.extend(["--max-steps", "6", "--save-every", "3", "--eval-every", "3"]);
    let paths =
        |out: &Path| vec![("--model", model.clone()), ("--train", data.clone()), ("--valid", valid.clone()), ("--out", out.to_path_buf())];
    let err = ok(&run(&args, &paths(&run1).iter().map(|(f, p)| (*f, p.as_path())).collect::<Vec<_>>()));
    assert!(err.contains("no length predictor: starting a new one"), "{err}");

    // The backbone's tensors are bit for bit the input's; the predictor's are new, under the
    // official names; the optimizer holds moments of the predictor only.
    let before = read_safetensors(&model.join("model.safetensors")).unwrap();
    let after = read_safetensors(&run1.join("final/model.safetensors")).unwrap();
    for (n, t) in &before {
        assert!(after[n].data == t.data, "backbone tensor {n} changed");
    }
    let new: Vec<&String> = after.keys().filter(|n| !before.contains_key(*n)).collect();
    assert_eq!(new.len(), 16, "{new:?}");
    assert!(new.iter().all(|n| n.starts_with("length_trm.layers.0.") || n.starts_with("length_predictor.")));
    assert!(after.contains_key("length_trm.layers.0.self_attn.in_proj_weight") && after.contains_key("length_predictor.2.bias"));
    let moments = read_safetensors(&run1.join("checkpoint-3/optimizer.safetensors")).unwrap();
    assert_eq!(moments.len(), 40);
    assert!(moments.keys().all(|k| k.contains(".length_")), "{:?}", moments.keys());

    // Validation lines carry the length accuracy.
    let metrics = std::fs::read_to_string(run1.join("metrics.jsonl")).unwrap();
    let valid_lines: Vec<serde_json::Value> =
        metrics.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v.get("valid").is_some()).collect();
    assert_eq!(valid_lines.len(), 2);
    for k in ["length_exact", "length_within_1", "length_within_2", "examples"] {
        assert!(valid_lines[1]["valid"].get(k).is_some(), "no `{k}` in {}", valid_lines[1]);
    }
    let v = &valid_lines[1]["valid"];
    assert!(v["length_exact"].as_f64() <= v["length_within_1"].as_f64() && v["length_within_1"].as_f64() <= v["length_within_2"].as_f64());

    // A run that stops at step 3 and resumes logs the same losses as one that never stopped.
    let mut args2 = LENGTH_ARGS.to_vec();
    args2.extend(["--max-steps", "3", "--save-every", "3", "--eval-every", "3"]);
    ok(&run(&args2, &paths(&run2).iter().map(|(f, p)| (*f, p.as_path())).collect::<Vec<_>>()));
    let mut resume = LENGTH_ARGS.to_vec();
    resume.extend(["--max-steps", "6", "--save-every", "3", "--eval-every", "3"]);
    ok(&run(&resume, &[("--train", &data), ("--valid", &valid), ("--out", &run2), ("--resume", &run2)]));
    assert_eq!(losses(&run1), losses(&run2));
    assert_eq!(losses(&run1).len(), 6);

    // Resuming the length run as a main-stage run is a change of settings.
    let out = run(
        &["train", "--no-progress", "--max-steps", "8", "--max-tokens", "256", "--lr", "3e-3"],
        &[("--train", &data), ("--out", &run2), ("--resume", &run2)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--stage \"length\" → \"main\""), "{err}");

    // Diffusive adaptation of a model that has a predictor keeps the predictor as it is.
    let run3 = tmp.path().join("run3");
    ok(&run(
        &["train", "--no-progress", "--max-steps", "2", "--max-tokens", "256"],
        &[("--model", &run1.join("final")), ("--train", &data), ("--out", &run3)],
    ));
    let main = read_safetensors(&run3.join("final/model.safetensors")).unwrap();
    for n in new {
        assert!(main[n].data == after[n].data, "main-stage training changed {n}");
    }
    assert!(main["roberta.embeddings.word_embeddings.weight"].data != after["roberta.embeddings.word_embeddings.weight"].data);
}

#[test]
fn bad_stage_and_beam_flags_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    init_micro(&model);
    let data = tmp.path().join("d.jsonl");
    write_data(&data, 4, 0);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--stage", "lengths", "--max-steps", "1"], "error: --stage must be `main` or `length`, got `lengths`"),
        (vec!["sample", "--length-beam", "3"], "error: --length-beam needs --length predict"),
        (vec!["sample", "--length", "4", "--save-candidates"], "error: --save-candidates needs --length predict"),
        (vec!["sample", "--length-select", "joint"], "error: --length-select needs --length predict"),
        (vec!["sample", "--length", "predict", "--length-beam", "0"], "--length-beam"),
        (vec!["sample", "--length", "predict"], "error: the model has no length predictor, so `--length predict` cannot work"),
    ];
    for (args, want) in cases {
        let mut paths = vec![("--model", model.as_path())];
        paths.push(if args[0] == "train" { ("--train", data.as_path()) } else { ("--input", data.as_path()) });
        let out_dir = tmp.path().join("run");
        if args[0] == "train" {
            paths.push(("--out", &out_dir));
        }
        let out = run(&args, &paths);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected `{want}` in: {err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
    }
}

#[test]
fn length_beam_keeps_the_best_candidate_and_batching_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("m"), tmp.path().join("train.jsonl"));
    init_micro(&model);
    write_data(&data, 40, 0);
    let run_dir = tmp.path().join("run");
    let mut args = LENGTH_ARGS.to_vec();
    args.extend(["--max-steps", "3"]);
    ok(&run(&args, &[("--model", &model), ("--train", &data), ("--out", &run_dir)]));
    let trained = run_dir.join("final");
    let input = tmp.path().join("in.jsonl");
    write_data(&input, 7, 1);

    let sample = |input: &Path, out: &Path, extra: &[&str]| {
        let mut a = vec!["sample", "--length", "predict", "--length-beam", "3", "--save-candidates", "--steps", "4"];
        a.extend(extra);
        ok(&run(&a, &[("--model", &trained), ("--input", input), ("--out", out)]));
        std::fs::read_to_string(out).unwrap()
    };
    let batched = sample(&input, &tmp.path().join("b.jsonl"), &[]);
    let lines: Vec<serde_json::Value> = batched.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 7);
    for l in &lines {
        let cands = l["candidates"].as_array().unwrap();
        assert_eq!(cands.len(), 3, "{l}");
        let lens: Vec<u64> = cands.iter().map(|c| c["length"].as_u64().unwrap()).collect();
        assert!(lens[0] != lens[1] && lens[1] != lens[2] && lens[0] != lens[2], "{l}");
        // The chosen one is the best-scoring candidate (the first on ties), its text and length.
        let best = cands.iter().enumerate().fold(0, |b, (i, c)| if c["score"].as_f64() > cands[b]["score"].as_f64() { i } else { b });
        assert_eq!((&l["hyp"], &l["length"], &l["score"]), (&cands[best]["hyp"], &cands[best]["length"], &cands[best]["score"]));
        assert!(l["hyp"].as_str().unwrap().split_whitespace().count() <= l["length"].as_u64().unwrap() as usize);
    }
    // `--length-select joint` decodes the same candidates and keeps the highest
    // log p(length) + Σ committed log-probs = length_logprob + tokens · score.
    let joint = sample(&input, &tmp.path().join("j.jsonl"), &["--length-select", "joint"]);
    for (l, j) in lines.iter().zip(joint.lines()) {
        let j: serde_json::Value = serde_json::from_str(j).unwrap();
        assert_eq!(l["candidates"], j["candidates"]);
        let cands = j["candidates"].as_array().unwrap();
        let value = |c: &serde_json::Value| {
            let n = c["tokens"].as_f64().unwrap();
            if n == 0.0 {
                f64::NEG_INFINITY
            } else {
                c["length_logprob"].as_f64().unwrap() + n * c["score"].as_f64().unwrap()
            }
        };
        // The kept one has the highest value (up to the f32 rounding of the engine's own sum).
        let best = cands.iter().map(value).fold(f64::NEG_INFINITY, f64::max);
        let kept = cands.iter().find(|c| c["length"] == j["length"]).unwrap();
        assert!(value(kept) >= best - 1e-5 && kept["hyp"] == j["hyp"], "{j}");
        let lp: Vec<f64> = cands.iter().map(|c| c["length_logprob"].as_f64().unwrap()).collect();
        assert!(lp.windows(2).all(|w| w[0] >= w[1]) && lp[0] < 0.0, "candidates come best length first: {j}");
    }
    // One canvas per forward pass, and one input per run, give the same lines: the same texts and
    // lengths, and scores equal up to f32 rounding (the CPU GEMMs' summation order depends on
    // the number of rows).
    assert_same_lines(&sample(&input, &tmp.path().join("b1.jsonl"), &["--batch-size", "1"]), &batched);
    for (i, line) in std::fs::read_to_string(&input).unwrap().lines().enumerate() {
        let one = tmp.path().join(format!("one{i}.jsonl"));
        std::fs::write(&one, format!("{line}\n")).unwrap();
        let got = sample(&one, &tmp.path().join(format!("o{i}.jsonl")), &[]);
        assert_same_lines(&got, batched.lines().nth(i).unwrap());
    }
    // Without --save-candidates a line has the chosen length and no candidates.
    let plain = {
        let out = tmp.path().join("p.jsonl");
        ok(&run(
            &["sample", "--length", "predict", "--length-beam", "2", "--steps", "4"],
            &[("--model", &trained), ("--input", &input), ("--out", &out)],
        ));
        std::fs::read_to_string(out).unwrap()
    };
    let first: serde_json::Value = serde_json::from_str(plain.lines().next().unwrap()).unwrap();
    assert!(first.get("length").is_some() && first.get("candidates").is_none(), "{first}");
}

/// JSON lines equal in everything but the scores and length log-probs, which agree within 1e-5
/// (relative).
fn assert_same_lines(a: &str, b: &str) {
    fn split(v: &mut serde_json::Value, scores: &mut Vec<f64>) {
        match v {
            serde_json::Value::Object(m) => {
                for key in ["score", "length_logprob"] {
                    if let Some(s) = m.remove(key) {
                        scores.push(s.as_f64().unwrap());
                    }
                }
                m.values_mut().for_each(|x| split(x, scores));
            }
            serde_json::Value::Array(xs) => xs.iter_mut().for_each(|x| split(x, scores)),
            _ => {}
        }
    }
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        let (mut vx, mut vy): (serde_json::Value, serde_json::Value) = (serde_json::from_str(x).unwrap(), serde_json::from_str(y).unwrap());
        let (mut sx, mut sy) = (Vec::new(), Vec::new());
        split(&mut vx, &mut sx);
        split(&mut vy, &mut sy);
        assert_eq!(vx, vy);
        assert_eq!(sx.len(), sy.len());
        for (p, q) in sx.iter().zip(&sy) {
            assert!((p - q).abs() <= 1e-5 * q.abs().max(1.0), "scores {p} vs {q}\n{x}\n{y}");
        }
    }
}
