//! `dlm-engine convert` and the PyTorch checkpoint reader on the fixtures of
//! tests/golden/make_pytorch_fixture.py: the golden post-LN model saved by torch.save converts to
//! the same tensors, bit for bit, as the safetensors the golden script wrote, and answers
//! `fill-mask` identically; f16/bf16 storages, strided views, offsets and shared storages read
//! as PyTorch made them contiguous, from a plain zip or a zip64 one; a foreign global, a truncated
//! or damaged archive and the legacy format are one-line errors naming the file.

mod common;
use common::fixtures;
use dlm_engine::model::pytorch::Checkpoint;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dlm(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dlm-engine"));
    c.args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    c.output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The one-line error of a failed command.
fn error(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    let last = err.trim().lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("error: "), "{err}");
    last
}

fn pytorch() -> PathBuf {
    fixtures().join("pytorch")
}

/// Name → (dtype, shape, bytes) of every tensor of a safetensors file.
fn tensors(path: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> =
        st.tensors().into_iter().map(|(n, t)| (n, format!("{:?}", t.dtype()), t.shape().to_vec(), t.data().to_vec())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn the_bin_converts_to_the_safetensors_model_bit_for_bit_and_fills_masks_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for f in ["pytorch_model.bin", "config.json"] {
        std::fs::copy(pytorch().join("model").join(f), input.join(f)).unwrap();
    }
    std::fs::copy(fixtures().join("tokenizer.json"), input.join("tokenizer.json")).unwrap();
    let out = tmp.path().join("out");
    let o = dlm(&["convert"], &[("--in", &input), ("--out", &out)]);
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(o);
    assert!(log.contains("`lm_head.decoder.weight` is the same storage as `roberta.embeddings.word_embeddings.weight`"), "{log}");
    let golden = fixtures().join("postln");
    let (got, want) = (tensors(&out.join("model.safetensors")), tensors(&golden.join("model.safetensors")));
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((&g.0, &g.1, &g.2), (&w.0, &w.1, &w.2));
        assert!(g.3 == w.3, "tensor `{}` differs", g.0);
    }
    for f in ["config.json", "tokenizer.json"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(input.join(f)).unwrap(), "{f} copied");
    }
    for text in ["hello <mask> world", "<mask> the <mask> of it"] {
        let fill = |m: &Path| ok(dlm(&["fill-mask", "--json", "--top-k", "10", text], &[("--model", m)]));
        assert_eq!(fill(&out), fill(&golden), "{text}");
    }
    // The file itself as --in; an existing output needs --force.
    let e = error(dlm(&["convert"], &[("--in", &input.join("pytorch_model.bin")), ("--out", &out)]));
    assert!(e.contains("not empty") && e.contains("--force"), "{e}");
    ok(dlm(&["convert", "--force"], &[("--in", &input.join("pytorch_model.bin")), ("--out", &out)]));
    assert_eq!(tensors(&out.join("model.safetensors")), got);
    // Past --max-shard-size the same tensors go into shards with an index (and no single file),
    // which load to the same answers.
    let sharded = tmp.path().join("sharded");
    ok(dlm(&["convert", "--max-shard-size", "40KB"], &[("--in", &input), ("--out", &sharded)]));
    assert!(sharded.join("model.safetensors.index.json").is_file() && !sharded.join("model.safetensors").exists());
    let shards: Vec<PathBuf> = std::fs::read_dir(&sharded)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("model-"))
        .collect();
    assert!(shards.len() >= 3, "{shards:?}");
    let mut all: Vec<_> = shards.iter().flat_map(|p| tensors(p)).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(all, got);
    let fill = |m: &Path| ok(dlm(&["fill-mask", "--json", "--top-k", "10", "hello <mask> world"], &[("--model", m)]));
    assert_eq!(fill(&sharded), fill(&out));
}

#[test]
fn half_bfloat16_strided_offset_and_shared_storages_read_as_pytorch_made_them_contiguous() {
    let mut ck = Checkpoint::open(&pytorch().join("mixed.bin")).unwrap();
    let want = tensors(&pytorch().join("mixed.safetensors"));
    assert_eq!(ck.tensors.len(), want.len());
    for (name, dtype, shape, bytes) in &want {
        let i = ck.tensors.iter().position(|(n, _)| n == name).unwrap_or_else(|| panic!("`{name}` missing"));
        let t = &ck.tensors[i].1;
        assert_eq!((format!("{:?}", t.storage.dtype), &t.shape), (dtype.clone(), shape), "{name}");
        assert!(&ck.tensor_bytes(i).unwrap() == bytes, "`{name}` differs");
    }
    let transposed = &ck.tensors.iter().find(|(n, _)| n == "transposed").unwrap().1;
    assert!(!dlm_engine::model::pytorch::is_contiguous(transposed), "the fixture has a non-contiguous view");
    let offset = &ck.tensors.iter().find(|(n, _)| n == "offset").unwrap().1;
    assert_eq!(offset.offset, 7);
    // convert keeps one of two aliased tensors (neither is a tied decoder: the first).
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    ok(dlm(&["convert"], &[("--in", &pytorch().join("mixed.bin")), ("--out", &out)]));
    let names: Vec<String> = tensors(&out.join("model.safetensors")).into_iter().map(|t| t.0).collect();
    assert!(names.contains(&"shared_a".to_string()) && !names.contains(&"shared_b".to_string()), "{names:?}");
    assert_eq!(names.len(), want.len() - 1);
}

/// A checkpoint over 4 GB locates its entries through zip64 records; the fixture has them all.
#[test]
fn zip64_archives_read_as_the_plain_ones() {
    let mut plain = Checkpoint::open(&pytorch().join("mixed.bin")).unwrap();
    let mut wide = Checkpoint::open(&pytorch().join("mixed_zip64.bin")).unwrap();
    assert_eq!(wide.tensors, plain.tensors);
    for i in 0..plain.tensors.len() {
        assert!(wide.tensor_bytes(i).unwrap() == plain.tensor_bytes(i).unwrap(), "{}", plain.tensors[i].0);
    }
}

#[test]
fn a_foreign_global_is_refused_without_running_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let file = pytorch().join("foreign_global.bin");
    let o = dlm(&["convert"], &[("--in", &file), ("--out", &out)]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("a pickle ran code"));
    let e = error(o);
    assert!(e.contains(&file.display().to_string()) && e.contains("refuses the global `__builtin__.print`"), "{e}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn damaged_archives_and_the_legacy_format_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = std::fs::read(pytorch().join("model/pytorch_model.bin")).unwrap();
    let golden = tensors(&fixtures().join("postln/model.safetensors"));
    // A byte inside the word embeddings' storage (found by its first 64 bytes).
    let word = &golden.iter().find(|t| t.0 == "roberta.embeddings.word_embeddings.weight").unwrap().3;
    let at = bin.windows(64).position(|w| w == &word[..64]).unwrap() + 100;
    let mut flipped = bin.clone();
    flipped[at] ^= 0x40;
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("truncated.bin", bin[..bin.len() / 2].to_vec(), "not a valid zip archive (truncated or corrupt?)"),
        ("flipped.bin", flipped, "fails its CRC-32 check"),
        ("legacy.bin", b"\x80\x02\x8a\x0alp\xfc\x9cF\xf9 j\xa8P\x19.".to_vec(), "legacy torch.save format"),
        ("text.bin", b"not a checkpoint".to_vec(), "not a PyTorch checkpoint"),
        ("empty.bin", Vec::new(), "not a PyTorch checkpoint"),
    ];
    for (name, bytes, want) in cases {
        let file = tmp.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let e = error(dlm(&["convert"], &[("--in", &file), ("--out", &tmp.path().join("out"))]));
        assert!(e.contains(&file.display().to_string()) && e.contains(want), "{name}: {e}");
    }
    let e = error(dlm(&["convert"], &[("--in", tmp.path()), ("--out", &tmp.path().join("out"))]));
    assert!(e.contains("pytorch_model.bin: missing"), "{e}");
}
