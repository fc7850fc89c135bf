//! Per-group scores and their macro average, as the paper reports BBH (one group per subtask)
//! and TyDiQA (one per language): each group is scored on its own lines with the chosen metric
//! (corpus BLEU per group for BLEU), and the macro average is the unweighted mean of the group
//! scores. The report over all lines together (the micro score) stays the headline.

use super::{MetricReport, Scorer};
use anyhow::Result;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt;

/// One group's score.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupScore {
    pub name: String,
    pub lines: usize,
    pub report: MetricReport,
}

/// All lines together, each group apart, and the mean of the groups.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupedReport {
    pub overall: MetricReport,
    /// Groups in name order.
    pub groups: Vec<GroupScore>,
    /// The unweighted mean of the groups' headline numbers (0..100).
    pub macro_average: f64,
}

/// Scores `hyps` against `refs` overall and per group (`groups[i]` is line i's group).
pub fn grouped_report<S: AsRef<str>>(hyps: &[S], refs: &[S], groups: &[String], scorer: &Scorer) -> Result<GroupedReport> {
    anyhow::ensure!(groups.len() == hyps.len(), "{} group labels for {} lines", groups.len(), hyps.len());
    let overall = scorer.score(hyps, refs)?;
    let mut members: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i);
    }
    let mut out = Vec::with_capacity(members.len());
    for (name, idx) in members {
        let h: Vec<&str> = idx.iter().map(|&i| hyps[i].as_ref()).collect();
        let r: Vec<&str> = idx.iter().map(|&i| refs[i].as_ref()).collect();
        out.push(GroupScore { name: name.to_owned(), lines: idx.len(), report: scorer.score(&h, &r)? });
    }
    let macro_average = out.iter().map(|g| g.report.value()).sum::<f64>() / out.len() as f64;
    Ok(GroupedReport { overall, groups: out, macro_average })
}

impl GroupedReport {
    /// The overall report's JSON plus `"groups": {name: {...report, "lines"}}` and `"macro"`.
    pub fn to_json(&self, key: &str) -> serde_json::Value {
        let mut obj = self.overall.to_json();
        let groups: serde_json::Map<String, serde_json::Value> = self
            .groups
            .iter()
            .map(|g| {
                let mut v = g.report.to_json();
                v["lines"] = json!(g.lines);
                (g.name.clone(), v)
            })
            .collect();
        obj["group_key"] = json!(key);
        obj["groups"] = serde_json::Value::Object(groups);
        obj["macro"] = json!(self.macro_average);
        obj
    }
}

impl fmt::Display for GroupedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.overall)?;
        for g in &self.groups {
            writeln!(f, "  {} ({} lines): {}", g.name, g.lines, g.report)?;
        }
        write!(f, "macro average over {} groups: {:.2}", self.groups.len(), self.macro_average)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{report, Metric, Tokenize};

    fn scorer(metric: Metric) -> Scorer<'static> {
        Scorer { metric, tokenize: Tokenize::Tok13a, lowercase: false, word_table: None }
    }

    #[test]
    fn macro_is_the_mean_of_group_scores_and_micro_the_overall() {
        // Group a: 1 of 1 right; group b: 1 of 3 right. Micro 2/4 = 50, macro (100 + 33.3) / 2.
        let hyps = ["x", "y", "n", "n"];
        let refs = ["x", "y", "z", "w"];
        let groups: Vec<String> = ["a", "b", "b", "b"].iter().map(|s| s.to_string()).collect();
        let g = grouped_report(&hyps, &refs, &groups, &scorer(Metric::Exact)).unwrap();
        assert_eq!(g.overall.value(), 50.0);
        assert_eq!(
            g.groups.iter().map(|g| (g.name.as_str(), g.lines, g.report.value())).collect::<Vec<_>>(),
            [("a", 1, 100.0), ("b", 3, 100.0 / 3.0)]
        );
        assert!((g.macro_average - (100.0 + 100.0 / 3.0) / 2.0).abs() < 1e-12);
        let j = g.to_json("task");
        assert_eq!(j["exact"], json!(50.0));
        assert_eq!(j["groups"]["b"]["matches"], json!(1));
        assert_eq!(j["groups"]["b"]["lines"], json!(3));
        assert_eq!(j["group_key"], json!("task"));
        assert!(g.to_string().contains("macro average over 2 groups: 66.67"), "{g}");
    }

    #[test]
    fn bleu_is_corpus_bleu_within_each_group() {
        let hyps = ["the cat sat on the mat", "a b c d e", "the dog ran off"];
        let refs = ["the cat sat on the mat", "a b x d e", "a dog ran away"];
        let groups: Vec<String> = ["one", "two", "two"].iter().map(|s| s.to_string()).collect();
        let g = grouped_report(&hyps, &refs, &groups, &scorer(Metric::Bleu)).unwrap();
        let two = report(&hyps[1..], &refs[1..], Metric::Bleu, Tokenize::Tok13a, false).unwrap();
        assert_eq!(g.groups[1].report, two);
        assert!((g.groups[0].report.value() - 100.0).abs() < 1e-9);
        assert!((g.macro_average - (100.0 + two.value()) / 2.0).abs() < 1e-12);
    }
}
