//! Sharded checkpoints (transformers' `model-0000i-of-0000n.safetensors` + index): a model
//! saved as shards, by `init`/`train` or by transformers itself, loads to the same weights and
//! the same `fill-mask` output as the single file; a broken shard set is a one-line error naming
//! the file and tensor; training on a sharded model checkpoints in shards and resumes exactly.

mod common;
use common::{bin, fixtures, logged_losses as losses};
use dlm_engine::backend::cpu::CpuBackend;
use dlm_engine::model::shards::{INDEX_FILE, SINGLE_FILE};
use dlm_engine::model::{Batch, XlmR};
use std::path::{Path, PathBuf};

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn init(dir: &Path, shard: &str) {
    let out = bin()
        .args(["init", "--preset", "micro", "--max-shard-size", shard, "--tokenizer"])
        .arg(fixtures().join("tokenizer.json"))
        .arg("--out")
        .arg(dir)
        .output()
        .unwrap();
    ok(&out);
}

fn shards(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("model-"))
        .collect();
    v.sort();
    v
}

fn fill_mask(model: &Path) -> String {
    let out = bin()
        .args(["fill-mask", "--json", "--top-k", "5", "--model"])
        .arg(model)
        .args(["a <mask> b", "<mask> the cat <mask>"])
        .output()
        .unwrap();
    ok(&out)
}

/// Every parameter of a model loaded on the CPU, by name, as bits.
fn weights(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let m = XlmR::load(CpuBackend::new(), dir).unwrap();
    m.param_names().iter().zip(m.values()).map(|(n, v)| (n.clone(), v.iter().map(|x| x.to_bits()).collect())).collect()
}

fn logits(dir: &Path) -> Vec<u32> {
    let mut m = XlmR::load(CpuBackend::new(), dir).unwrap();
    let batch = Batch::from_rows(&[vec![0, 5, 9, 301, 17, 2], vec![0, 301, 44, 2]], 1);
    let rows: Vec<i32> = (0..(batch.batch * batch.seq) as i32).collect();
    m.logits(&batch, &rows).unwrap().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_sharded_model_loads_like_the_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, many) = (tmp.path().join("one"), tmp.path().join("many"));
    init(&one, "5GB");
    init(&many, "20KB");
    assert!(one.join(SINGLE_FILE).is_file() && !one.join(INDEX_FILE).exists());
    assert!(many.join(INDEX_FILE).is_file() && !many.join(SINGLE_FILE).exists());
    assert!(shards(&many).len() >= 3, "{:?}", shards(&many));
    assert_eq!(weights(&one), weights(&many));
    assert_eq!(fill_mask(&one), fill_mask(&many));
    // Saved again from memory, in shards and back in one file, the values stay.
    let m = XlmR::load(CpuBackend::new(), &many).unwrap();
    let again = tmp.path().join("again");
    m.save_with(&again, dlm_engine::model::SaveOpts { max_shard_size: 10_000 }).unwrap();
    assert!(shards(&again).len() > shards(&many).len());
    assert_eq!(weights(&again), weights(&one));
    m.save(&again).unwrap();
    assert!(shards(&again).is_empty() && !again.join(INDEX_FILE).exists(), "the sharded layout's files are removed");
    assert_eq!(weights(&again), weights(&one));
}

#[test]
fn shards_written_by_transformers_load_like_the_single_file() {
    let (one, many) = (fixtures().join("postln"), fixtures().join("postln_sharded"));
    assert!(shards(&many).len() >= 3);
    assert_eq!(weights(&one), weights(&many));
    assert_eq!(logits(&one), logits(&many));
    assert_eq!(fill_mask(&one), fill_mask(&many));
}

/// `fill-mask` on `model` must fail with exit 2 and one `error:` line holding every needle.
fn refused(model: &Path, needles: &[&str]) {
    let out = bin().args(["fill-mask", "--model"]).arg(model).arg("a <mask>").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for n in needles {
        assert!(stderr.starts_with("error: ") && stderr.contains(n), "`{n}` not in: {stderr}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn edit_index(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join(INDEX_FILE);
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn broken_shard_sets_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    init(&good, "20KB");
    let files = shards(&good);
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let case = |c: &str| {
        let d = tmp.path().join(c);
        copy_dir(&good, &d);
        d
    };

    let d = case("missing-shard");
    std::fs::remove_file(d.join(name(&files[1]))).unwrap();
    refused(&d, &[INDEX_FILE, &name(&files[1]), "missing"]);

    let d = case("not-in-shard");
    edit_index(&d, |v| v["weight_map"]["lm_head.extra"] = serde_json::json!(name(&files[0])));
    refused(&d, &[INDEX_FILE, "`lm_head.extra`", "not in its shard", &name(&files[0])]);

    let d = case("not-in-index");
    edit_index(&d, |v| {
        v["weight_map"].as_object_mut().unwrap().remove("lm_head.bias");
    });
    refused(&d, &["`lm_head.bias`", "not in", INDEX_FILE]);

    let d = case("misplaced");
    // A tensor of the last shard (which holds several) that the index puts in the first one.
    let last = name(files.last().unwrap());
    let moved = {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join(INDEX_FILE)).unwrap()).unwrap();
        v["weight_map"].as_object().unwrap().iter().find(|(_, f)| f.as_str() == Some(&last)).unwrap().0.clone()
    };
    edit_index(&d, |v| v["weight_map"][&moved] = serde_json::json!(name(&files[0])));
    refused(&d, &[&last, &format!("holds tensor `{moved}`"), &name(&files[0])]);

    let d = case("twice");
    // The last shard also carries a tensor of the first one.
    let first = dlm_engine::model::weights::read_safetensors(&d.join(name(&files[0]))).unwrap();
    let last_path = d.join(name(files.last().unwrap()));
    let mut last = dlm_engine::model::weights::read_safetensors(&last_path).unwrap();
    let (dup, t) = first.into_iter().next().unwrap();
    last.insert(dup.clone(), t);
    let refs: Vec<(&str, &[usize], &[f32])> = last.iter().map(|(n, t)| (n.as_str(), t.shape.as_slice(), t.data.as_slice())).collect();
    dlm_engine::model::weights::write_safetensors(&last_path, &refs, None).unwrap();
    refused(&d, &[&format!("`{dup}`"), &name(&files[0]), &name(files.last().unwrap())]);

    let d = case("both-layouts");
    std::fs::copy(&files[0], d.join(SINGLE_FILE)).unwrap();
    refused(&d, &[SINGLE_FILE, INDEX_FILE, "both"]);

    let d = case("outside");
    edit_index(&d, |v| v["weight_map"]["lm_head.bias"] = serde_json::json!("../model.safetensors"));
    refused(&d, &[INDEX_FILE, "lm_head.bias", "not a file name in the model directory"]);

    let d = case("bad-shape");
    std::fs::write(
        d.join("config.json"),
        std::fs::read_to_string(good.join("config.json")).unwrap().replace("\"intermediate_size\": 64", "\"intermediate_size\": 65"),
    )
    .unwrap();
    refused(&d, &["model-000", ".safetensors", "intermediate.dense", "expected"]);
}

fn write_data(p: &Path) {
    let words = ["the", "cat", "dog", "house", "water", "bread", "tree", "book"];
    let mut text = String::new();
    for i in 0..40 {
        let s: Vec<&str> = (0..1 + i % 4).map(|j| words[(i * 3 + j * 5) % words.len()]).collect();
        text.push_str(&serde_json::json!({ "src": s.join(" "), "tgt": s.join(" ") }).to_string());
        text.push('\n');
    }
    std::fs::write(p, text).unwrap();
}

#[test]
fn training_a_sharded_model_checkpoints_in_shards_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("m"), tmp.path().join("train.jsonl"));
    init(&model, "20KB");
    write_data(&data);
    let train = |out: &Path, steps: &str, resume: bool| {
        let mut c = bin();
        c.args(["train", "--no-progress", "--log-every", "1", "--max-tokens", "256", "--save-every", "2", "--max-shard-size", "30KB"])
            .args(["--max-steps", steps, "--model"])
            .arg(&model)
            .arg("--train")
            .arg(&data)
            .arg("--out")
            .arg(out);
        if resume {
            c.arg("--resume").arg(out);
        }
        ok(&c.output().unwrap());
    };
    let (run1, run2) = (tmp.path().join("run1"), tmp.path().join("run2"));
    train(&run1, "4", false);
    for cp in [run1.join("checkpoint-2"), run1.join("final")] {
        assert!(cp.join(INDEX_FILE).is_file() && !cp.join(SINGLE_FILE).exists(), "{}", cp.display());
        assert!(shards(&cp).len() >= 2);
    }
    train(&run2, "2", false);
    train(&run2, "4", true);
    assert_eq!(losses(&run1), losses(&run2));
    assert_eq!(losses(&run1).len(), 4);
    assert_eq!(weights(&run1.join("final")), weights(&run2.join("final")));
}

#[test]
fn sample_out_refuses_a_shard_or_the_index_of_its_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    init(&model, "20KB");
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, "{\"src\": \"the cat\", \"tgt\": \"the cat\"}\n").unwrap();
    for target in [shards(&model)[1].clone(), model.join(INDEX_FILE)] {
        let before = std::fs::read(&target).unwrap();
        let out = bin()
            .args(["sample", "--steps", "2", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(&target)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("is an input") && stderr.contains(&*target.file_name().unwrap().to_string_lossy()), "{stderr}");
        assert_eq!(std::fs::read(&target).unwrap(), before);
    }
}
