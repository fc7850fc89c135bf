//! Data pipeline end to end: tokenizer (against Python's ids), `tokenizer train` CLI, JSONL
//! errors through the binary, layout, token-budget batching and resumable sampling.

mod common;
use common::bin;

use dlm_engine::data::{
    build_examples, layout_pair, pad_batch, read_jsonl, BatchSampler, Budget, Example, ExampleBatches, JsonlOptions, Mixture, Overlong,
    SamplerState, Source,
};
use dlm_engine::tokenizer::{train_unigram, Tok};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_unigram").join(name)
}

/// `golden.json` was written by `tests/golden/check_tokenizer.py` with Python `tokenizers`
/// (ids cross-checked there against transformers' `PreTrainedTokenizerFast`).
#[test]
fn tokenizer_matches_python_golden() {
    let tok = Tok::load(fixture("tokenizer.json")).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("golden.json")).unwrap()).unwrap();
    assert_eq!(tok.vocab_size() as u64, golden["vocab_size"].as_u64().unwrap());
    let sp = &golden["special"];
    let s = tok.special();
    for (name, id) in [("<s>", s.bos), ("<pad>", s.pad), ("</s>", s.eos), ("<unk>", s.unk), ("<mask>", s.mask)] {
        assert_eq!(sp[name].as_i64().unwrap(), id as i64, "{name}");
    }
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<i32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "{text:?}");
        // An encoding shows an unknown piece as its text and `<mask>` with the space it ate.
        let surface_only = [tok.unk(), tok.mask()];
        for (i, t) in ids.iter().zip(case["tokens"].as_array().unwrap()).filter(|(i, _)| !surface_only.contains(i)) {
            assert_eq!(tok.id_to_token(*i).as_deref(), t.as_str());
        }
        assert_eq!(tok.decode(&ids, false).unwrap(), case["decode"].as_str().unwrap(), "{text:?}");
        assert_eq!(tok.decode(&ids, true).unwrap(), case["decode_skip_special"].as_str().unwrap(), "{text:?}");
        assert_eq!(tok.decode_hf(&ids).unwrap(), case["decode_hf_cleanup"].as_str().unwrap(), "{text:?}");
    }
}

/// What the tokenizer's NFKC step does to the corpus's special characters, written out by hand.
fn nfkc_by_hand(text: &str) -> String {
    text.replace('ﬁ', "fi").replace('①', "1").replace('②', "2").replace("ｔｈｅ ｍｏｏｎ", "the moon")
}

#[test]
fn cli_trains_a_tokenizer_with_xlmr_ids_that_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tok.json");
    let run = bin()
        .args(["tokenizer", "train", "--vocab-size", "300", "--input"])
        .arg(fixture("corpus.jsonl"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("400 record(s)") && stdout.contains("<mask>="), "{stdout}");

    let tok = Tok::load(&out).unwrap();
    let s = tok.special();
    assert_eq!((s.bos, s.pad, s.eos, s.unk, s.mask), (0, 1, 2, 3, tok.vocab_size() as i32 - 1));
    let recs = read_jsonl(fixture("corpus.jsonl"), &JsonlOptions::training()).unwrap().records;
    for r in &recs {
        for text in [&r.src, r.tgt.as_ref().unwrap()] {
            let ids = tok.encode(text).unwrap();
            assert!(!ids.contains(&s.unk), "{text:?} has <unk>: {ids:?}");
            assert_eq!(tok.decode(&ids, true).unwrap(), nfkc_by_hand(text));
        }
    }
}

#[test]
fn cli_reports_bad_lines_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(&data, "{\"src\":\"a b\",\"tgt\":\"c\"}\n{\"src\":\"d\",\"tgt\":7}\n{\"src\":\"e f\",\"tgt\":\"g\"}\n").unwrap();
    let out = dir.path().join("tok.json");
    let args = |skip: bool| {
        let mut c = bin();
        c.args(["tokenizer", "train", "--vocab-size", "20", "--input"]).arg(&data).arg("--out").arg(&out);
        if skip {
            c.arg("--skip-bad-lines");
        }
        c.output().unwrap()
    };
    let run = args(false);
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.starts_with("error: ") && err.contains(&format!("{}:2:", data.display())) && err.contains("\"tgt\""), "{err}");
    assert!(!out.exists());

    let run = args(true);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("skipped 1 bad line") && err.contains(":2: key \"tgt\" must be a string"), "{err}");
    assert!(String::from_utf8_lossy(&run.stdout).contains("2 record(s)"));
}

#[test]
fn cli_names_a_missing_input() {
    let run =
        bin().args(["tokenizer", "train", "--vocab-size", "20", "--input", "/no/such.jsonl", "--out", "/tmp/x.json"]).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("/no/such.jsonl"));
}

fn corpus_examples(max_len: usize, overlong: Overlong) -> (Tok, Vec<Example>, usize, usize) {
    let tok = Tok::load(fixture("tokenizer.json")).unwrap();
    let recs = read_jsonl(fixture("corpus.jsonl"), &JsonlOptions::training()).unwrap().records;
    let sum = build_examples(&tok, &recs, max_len, overlong).unwrap();
    (tok, sum.examples, sum.truncated, sum.dropped)
}

#[test]
fn examples_follow_the_concatenation_rule() {
    let tok = Tok::load(fixture("tokenizer.json")).unwrap();
    let recs = read_jsonl(fixture("corpus.jsonl"), &JsonlOptions::training()).unwrap().records;
    let sum = build_examples(&tok, &recs, 512, Overlong::Truncate).unwrap();
    assert_eq!((sum.examples.len(), sum.truncated, sum.dropped), (recs.len(), 0, 0));
    for (r, e) in recs.iter().zip(&sum.examples) {
        let src = tok.encode(&r.src).unwrap();
        let tgt = tok.encode(r.tgt.as_ref().unwrap()).unwrap();
        // Independent restatement: [<s>] src tokens, tgt tokens [</s>]; fixed = <s> + source.
        let mut want = vec![tok.bos()];
        want.extend(&src[1..src.len() - 1]);
        want.extend(&tgt[1..tgt.len() - 1]);
        want.push(tok.eos());
        assert_eq!(e.ids, want);
        assert_eq!(e.src_len, src.len() - 1);
    }
    // A budget that forces cuts: counts agree with the pair lengths.
    let (_, ex, truncated, dropped) = corpus_examples(20, Overlong::Truncate);
    let over =
        recs.iter().filter(|r| tok.encode(&r.src).unwrap().len() + tok.encode(r.tgt.as_ref().unwrap()).unwrap().len() - 2 > 20).count();
    assert!(over > 0);
    assert_eq!((ex.len(), truncated, dropped), (recs.len(), over, 0));
    assert!(ex.iter().all(|e| e.len() <= 20 && e.maskable() >= 1));
    let (_, ex, truncated, dropped) = corpus_examples(20, Overlong::Drop);
    assert_eq!((ex.len(), truncated, dropped), (recs.len() - over, 0, over));
    // Drop keeps the untouched layout of the others.
    assert!(ex.iter().all(|e| e.ids[0] == tok.bos() && *e.ids.last().unwrap() == tok.eos()));
}

#[test]
fn batches_respect_the_budget_and_cover_each_example_once_per_epoch() {
    let (_, ex, _, _) = corpus_examples(512, Overlong::Truncate);
    let lengths: Vec<usize> = ex.iter().map(Example::len).collect();
    let longest = *lengths.iter().max().unwrap();
    for max_tokens in [longest - 3, longest, 97, 400, 5000] {
        let mut s = BatchSampler::new(&lengths, max_tokens, 7).unwrap();
        let n = s.num_batches();
        let oversize = lengths.iter().filter(|&&l| l > max_tokens).count();
        assert_eq!(s.plan().oversize, oversize);
        for epoch in 0..3u64 {
            let mut seen = vec![0usize; ex.len()];
            for _ in 0..n {
                let b = s.next_batch().to_vec();
                let padded = b.iter().map(|&i| lengths[i]).max().unwrap() * b.len();
                assert!(padded <= max_tokens || b.len() == 1, "budget {max_tokens}: {padded}");
                for i in b {
                    seen[i] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "epoch {epoch}, budget {max_tokens}");
            assert_eq!(s.state(), SamplerState { epoch, index: n });
        }
    }
}

#[test]
fn resuming_from_a_saved_state_replays_the_same_batches() {
    let (tok, ex, _, _) = corpus_examples(512, Overlong::Truncate);
    let mut a = ExampleBatches::new(ex.clone(), 300, 42).unwrap();
    let n = a.sampler().num_batches();
    // Stop mid-way through the second epoch, save, continue, then replay from the save.
    for _ in 0..n + n / 2 {
        a.next_batch();
    }
    let saved = serde_json::to_string(&a.state()).unwrap();
    let cont: Vec<Vec<Example>> = (0..n + 5).map(|_| a.next_batch()).collect();

    let mut b = ExampleBatches::new(ex, 300, 42).unwrap();
    b.restore(serde_json::from_str(&saved).unwrap()).unwrap();
    let replay: Vec<Vec<Example>> = (0..n + 5).map(|_| b.next_batch()).collect();
    assert_eq!(cont, replay);

    // A different seed gives another order; padding puts pad ids only on the right.
    let mut c = ExampleBatches::new(b.examples().to_vec(), 300, 43).unwrap();
    assert_ne!(c.sampler().epoch_order(0), b.sampler().epoch_order(0));
    let rows = c.next_batch();
    let (batch, src_lens) = pad_batch(&rows, tok.pad());
    for (r, e) in rows.iter().enumerate() {
        let row = &batch.ids[r * batch.seq..(r + 1) * batch.seq];
        assert_eq!(&row[..e.len()], &e.ids[..]);
        assert!(row[e.len()..].iter().all(|&t| t == tok.pad()));
        assert_eq!(src_lens[r], e.src_len);
    }
    // A state past the end of an epoch is rejected.
    assert!(c.restore(SamplerState { epoch: 0, index: n + 1 }).is_err());
}

#[test]
fn trained_in_memory_tokenizer_layout_and_mask_canvas() {
    let recs = read_jsonl(fixture("corpus.jsonl"), &JsonlOptions::training()).unwrap().records;
    let texts = recs.iter().flat_map(|r| [r.src.clone(), r.tgt.clone().unwrap()]).collect::<Vec<_>>();
    let tok = train_unigram(texts.into_iter(), 300).unwrap();
    let src = tok.encode("the cat").unwrap();
    let canvas = dlm_engine::data::prompt_canvas(&src, 4, tok.mask());
    let mut counts: HashMap<i32, usize> = HashMap::new();
    for &t in &canvas.ids {
        *counts.entry(t).or_default() += 1;
    }
    assert_eq!(counts[&tok.mask()], 4);
    assert_eq!(canvas.ids.len(), src.len() + 4);
    assert_eq!(&canvas.ids[..canvas.src_len], &src[..src.len() - 1]);
    assert_eq!(*canvas.ids.last().unwrap(), tok.eos());
    // The canvas is what layout_pair makes of a target of 4 masks.
    let masked_tgt = [vec![tok.bos()], vec![tok.mask(); 4], vec![tok.eos()]].concat();
    assert_eq!(layout_pair(&src, &masked_tgt, 512, Overlong::Truncate), Some(canvas));
}

/// Source `s`'s example `i` is `[s, i, s, i, ...]` of length `len`.
fn tagged_source(s: i32, n: usize, len: usize, weight: f64) -> Source {
    let examples = (0..n as i32).map(|i| Example { ids: [s, i].iter().copied().cycle().take(len).collect(), src_len: 1 }).collect();
    Source { name: format!("file{s}.jsonl"), examples, weight }
}

/// Each sequence picks its file by ratio: over 30,000 picks every file's share is within 5
/// standard deviations of its normalised ratio, the draws are a function of the seed, and
/// `used()` counts them per file.
#[test]
fn mixture_picks_files_in_proportion_to_their_ratios() {
    let (n, ratios) = (30_000usize, [7.0, 2.0, 1.0]);
    let mk = |seed| {
        let sources = ratios.iter().enumerate().map(|(s, &w)| tagged_source(s as i32, 5 + 40 * s, 3, w)).collect();
        Mixture::new(sources, Budget::Sequences(100), seed).unwrap()
    };
    let mut m = mk(11);
    let picks: Vec<i32> = (0..n / 100).flat_map(|_| m.next_batch()).map(|e| e.ids[0]).collect();
    assert_eq!(picks.len(), n);
    let total: f64 = ratios.iter().sum();
    for (s, w) in ratios.iter().enumerate() {
        let p = w / total;
        let count = picks.iter().filter(|&&f| f == s as i32).count() as f64;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!((count - n as f64 * p).abs() < 5.0 * sd, "file {s}: {count} picks, expected {} ± {sd:.0}", n as f64 * p);
        assert_eq!(m.used()[s], count as u64);
    }
    // Not a round robin: the picks are not periodic in the ratio pattern.
    assert!(picks.windows(10).any(|w| w.iter().filter(|&&f| f == 0).count() != 7));
    let mut again = mk(11);
    let replay: Vec<i32> = (0..n / 100).flat_map(|_| again.next_batch()).map(|e| e.ids[0]).collect();
    assert_eq!(picks, replay, "same seed, same picks");
    let mut other = mk(12);
    let other: Vec<i32> = (0..n / 100).flat_map(|_| other.next_batch()).map(|e| e.ids[0]).collect();
    assert_ne!(picks, other);
}

/// `--batch-size N`: every micro-batch has N rows, from the concatenated plan (each example once
/// per epoch, only an epoch's last batch may be shorter) and from a mixture (always N).
#[test]
fn batch_size_gives_n_sequences_per_batch() {
    let (_, ex, _, _) = corpus_examples(512, Overlong::Truncate);
    let mut b = ExampleBatches::with_budget(ex.clone(), Budget::Sequences(4), 3).unwrap();
    let nb = b.sampler().num_batches();
    assert_eq!(nb, ex.len().div_ceil(4));
    let short = b.sampler().plan().batches.iter().filter(|r| r.len() != 4).count();
    assert_eq!(short, usize::from(ex.len() % 4 != 0));
    let rows: usize = (0..nb).map(|_| b.next_batch().len()).sum();
    assert_eq!(rows, ex.len());
    let mut m = Mixture::new(vec![tagged_source(0, 3, 5, 1.0), tagged_source(1, 2, 40, 1.0)], Budget::Sequences(4), 5).unwrap();
    for _ in 0..20 {
        assert_eq!(m.next_batch().len(), 4);
    }
}
