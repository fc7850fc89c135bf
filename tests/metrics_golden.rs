//! Metrics against sacreBLEU 2.x and rouge-score, via tests/golden/fixtures/metrics.json
//! (made by tests/golden/make_metric_golden.py; see that script for what each field means).
//!
//! Integer statistics must match exactly. Scores are compared to 1e-9 relative: both sides do the
//! same float operations in the same order on the same counts (and glibc's log/exp serve Rust and
//! CPython alike), so in practice they agree to the last bit; the tolerance only absorbs a libm
//! that rounds differently.

use dlm_engine::metrics::bleu::{corpus_bleu, BleuStats};
use dlm_engine::metrics::rouge::{corpus_rouge_l, rouge_l_pair, rouge_tokens};
use dlm_engine::metrics::{exact_match, report, Metric, MetricReport, Tokenize};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/fixtures/metrics.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read metrics fixture")).expect("parse fixture")
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-9 * want.abs().max(1e-300);
    assert!((got - want).abs() <= tol || got == want, "{what}: got {got:.17}, want {want:.17}");
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

fn tokenizer(name: &str) -> Tokenize {
    match name {
        "13a" => Tokenize::Tok13a,
        "intl" => Tokenize::Intl,
        other => panic!("unknown tokenizer {other} in fixture"),
    }
}

struct Corpus {
    name: String,
    hyps: Vec<String>,
    refs: Vec<String>,
    data: Value,
}

fn corpora() -> Vec<Corpus> {
    fixture()["corpora"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Corpus {
            name: c["name"].as_str().unwrap().to_owned(),
            hyps: strings(&c["hyps"]),
            refs: strings(&c["refs"]),
            data: c.clone(),
        })
        .collect()
}

impl Corpus {
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.hyps.iter().zip(&self.refs).map(|(h, r)| (h.as_str(), r.as_str()))
    }
}

#[test]
fn tokenizers_match_sacrebleu_and_rouge_score() {
    let fx = fixture();
    let cases = fx["tokenize"].as_array().unwrap();
    assert!(cases.len() > 60);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(Tokenize::Tok13a.apply(text), case["13a"].as_str().unwrap(), "13a of {text:?}");
        assert_eq!(Tokenize::Intl.apply(text), case["intl"].as_str().unwrap(), "intl of {text:?}");
        assert_eq!(rouge_tokens(text), strings(&case["rouge"]), "rouge tokens of {text:?}");
        // Python str.lower() and Rust to_lowercase() must agree for --lowercase to be faithful.
        assert_eq!(text.to_lowercase(), case["lower"].as_str().unwrap(), "lowercase of {text:?}");
    }
}

#[test]
fn bleu_segment_statistics_match_sacrebleu() {
    for c in corpora() {
        for b in c.data["bleu"].as_array().unwrap() {
            let (tok, lc) = (tokenizer(b["tokenize"].as_str().unwrap()), b["lowercase"].as_bool().unwrap());
            for (i, ((h, r), want)) in c.pairs().zip(b["segments"].as_array().unwrap()).enumerate() {
                let s = BleuStats::from_segment(h, r, tok, lc);
                let got: Vec<u64> = [s.sys_len, s.ref_len].into_iter().chain(s.correct).chain(s.total).collect();
                assert_eq!(got, u64s(want), "{} segment {i} ({tok:?}, lowercase={lc}): {h:?} vs {r:?}", c.name);
            }
        }
    }
}

#[test]
fn corpus_bleu_matches_sacrebleu() {
    for c in corpora() {
        for b in c.data["bleu"].as_array().unwrap() {
            let (tok, lc) = (tokenizer(b["tokenize"].as_str().unwrap()), b["lowercase"].as_bool().unwrap());
            let what = format!("{} {tok:?} lowercase={lc}", c.name);
            let s = corpus_bleu(c.pairs(), tok, lc);
            assert_eq!(s.stats.correct.to_vec(), u64s(&b["counts"]), "{what} counts");
            assert_eq!(s.stats.total.to_vec(), u64s(&b["totals"]), "{what} totals");
            assert_eq!((s.sys_len, s.ref_len), (b["sys_len"].as_u64().unwrap(), b["ref_len"].as_u64().unwrap()), "{what}");
            close(s.score, b["score"].as_f64().unwrap(), &format!("{what} score"));
            close(s.bp, b["bp"].as_f64().unwrap(), &format!("{what} bp"));
            for (n, p) in b["precisions"].as_array().unwrap().iter().enumerate() {
                close(s.precisions[n], p.as_f64().unwrap(), &format!("{what} precision {}", n + 1));
            }
        }
    }
}

#[test]
fn merged_shards_give_the_corpus_score() {
    let c = corpora().into_iter().find(|c| c.name == "mixed").unwrap();
    let b = &c.data["bleu"][1]; // 13a, lowercased
    assert_eq!(b["tokenize"], "13a");
    assert_eq!(b["lowercase"], true);
    let pairs: Vec<(&str, &str)> = c.pairs().collect();
    let (first, second) = pairs.split_at(pairs.len() / 3);
    let mut merged = corpus_bleu(first.iter().copied(), Tokenize::Tok13a, true).stats;
    merged += corpus_bleu(second.iter().copied(), Tokenize::Tok13a, true).stats;
    close(merged.score().score, b["score"].as_f64().unwrap(), "merged shards");
}

#[test]
fn rouge_l_matches_rouge_score() {
    for c in corpora() {
        let want = &c.data["rouge_l"];
        for (i, ((h, r), f)) in c.pairs().zip(want["per_pair_f"].as_array().unwrap()).enumerate() {
            close(rouge_l_pair(h, r).f, f.as_f64().unwrap(), &format!("{} pair {i} ROUGE-L F", c.name));
        }
        let s = corpus_rouge_l(c.pairs());
        close(s.f, want["mean_f"].as_f64().unwrap(), &format!("{} mean F", c.name));
        close(s.precision, want["mean_p"].as_f64().unwrap(), &format!("{} mean P", c.name));
        close(s.recall, want["mean_r"].as_f64().unwrap(), &format!("{} mean R", c.name));
    }
}

#[test]
fn exact_match_matches_python() {
    for c in corpora() {
        for e in c.data["exact"].as_array().unwrap() {
            let lc = e["lowercase"].as_bool().unwrap();
            let s = exact_match(c.pairs(), lc);
            assert_eq!(s.matches as u64, e["matches"].as_u64().unwrap(), "{} lowercase={lc}", c.name);
            close(s.percent(), e["percent"].as_f64().unwrap(), &format!("{} exact percent", c.name));
        }
    }
}

#[test]
fn report_carries_the_headline_numbers() {
    let c = corpora().into_iter().find(|c| c.name == "mixed").unwrap();
    let intl_lc = &c.data["bleu"][3];
    assert_eq!((intl_lc["tokenize"].as_str(), intl_lc["lowercase"].as_bool()), (Some("intl"), Some(true)));
    let r = report(&c.hyps, &c.refs, Metric::Bleu, Tokenize::Intl, true).unwrap();
    close(r.to_json()["bleu"].as_f64().unwrap(), intl_lc["score"].as_f64().unwrap(), "report bleu");
    assert_eq!(r.to_json()["tokenize"], "intl");
    assert!(r.to_string().starts_with(&format!("BLEU = {:.2} (intl, lowercased) ", intl_lc["score"].as_f64().unwrap())));

    let r = report(&c.hyps, &c.refs, Metric::RougeL, Tokenize::Tok13a, false).unwrap();
    close(r.to_json()["rouge_l"].as_f64().unwrap(), 100.0 * c.data["rouge_l"]["mean_f"].as_f64().unwrap(), "report rouge_l");

    let r = report(&c.hyps, &c.refs, Metric::Exact, Tokenize::Tok13a, true).unwrap();
    assert!(matches!(r, MetricReport::Exact { .. }));
    close(r.to_json()["exact"].as_f64().unwrap(), c.data["exact"][1]["percent"].as_f64().unwrap(), "report exact");
}

#[test]
fn report_rejects_mismatched_or_empty_input() {
    let hyps = vec!["a".to_owned(), "b".to_owned()];
    let err = report(&hyps, &hyps[..1], Metric::Bleu, Tokenize::Tok13a, false).unwrap_err();
    assert!(err.to_string().contains("2 hypotheses but 1 references"), "{err}");
    let empty: Vec<String> = Vec::new();
    assert!(report(&empty, &empty, Metric::Exact, Tokenize::Tok13a, false).is_err());
}

/// `rouge-l-py` against py-rouge 1.1 (tests/golden/make_rouge_py_golden.py): the Porter stems of
/// every word the corpora hold, then P, R and F of every pair and the corpus means, without
/// py-rouge's word table and with a small table given to both sides.
#[test]
fn rouge_l_py_matches_py_rouge() {
    use dlm_engine::metrics::porter::stem;
    use dlm_engine::metrics::rouge_py::{rouge_l_py_pair, rouge_l_py_with, WordTable};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/fixtures/rouge_py.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let stems = fx["stems"].as_array().unwrap();
    assert!(stems.len() > 300);
    for pair in stems {
        let (w, s) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        assert_eq!(stem(w), s, "stem of {w:?}");
    }
    let small: WordTable =
        fx["small_table"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect();
    let mut differs_with_package_table = 0;
    for c in fx["corpora"].as_array().unwrap() {
        let (hyps, refs) = (strings(&c["hyps"]), strings(&c["refs"]));
        for (key, table) in [("no_table", WordTable::new()), ("small_table", small.clone())] {
            let want = &c[key];
            for (i, (h, r)) in hyps.iter().zip(&refs).enumerate() {
                let (p, rc, f) = rouge_l_py_pair(h, r, &table);
                let w = &want["per_pair"][i];
                let what = format!("{} {key} pair {i} ({h:?} vs {r:?})", c["name"]);
                close(p, w[0].as_f64().unwrap(), &format!("{what} P"));
                close(rc, w[1].as_f64().unwrap(), &format!("{what} R"));
                close(f, w[2].as_f64().unwrap(), &format!("{what} F"));
            }
            let mean = rouge_l_py_with(hyps.iter().zip(&refs).map(|(h, r)| (h.as_str(), r.as_str())), &table);
            close(mean.f, want["mean"][2].as_f64().unwrap(), &format!("{} {key} mean F", c["name"]));
            close(mean.recall, want["mean"][1].as_f64().unwrap(), &format!("{} {key} mean R", c["name"]));
        }
        let (no, pkg) = (&c["no_table"]["per_pair"], &c["with_package_table"]["per_pair"]);
        differs_with_package_table += (0..hyps.len()).filter(|&i| no[i] != pkg[i]).count();
        // The report's headline is the mean F without a table.
        let report = report(&hyps, &refs, Metric::RougeLPy, Tokenize::Tok13a, false).unwrap();
        close(report.value(), 100.0 * c["no_table"]["mean"][2].as_f64().unwrap(), "report");
    }
    // The fixture shows what the missing table changes (irregular forms in the hand-made corpus).
    assert!(differs_with_package_table > 0);
}
