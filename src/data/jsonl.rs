//! JSONL records: one JSON object per line holding a source and (usually) a target text.
//!
//! Keys: task data uses `{"src", "tgt"}`, Flan-style data `{"inputs", "targets"}`. Unless the
//! caller names the keys, each file is detected on its own from the first line that parses as a
//! JSON object: `src` present means `src`/`tgt`, else `inputs` present means `inputs`/`targets`,
//! else that line is a bad line (no known key pair).
//!
//! Bad lines (not JSON, not an object, a missing key, a value that is not a string) are an error
//! `FILE:LINE: …` naming the key, or, with `skip_bad_lines`, are counted and skipped; the first
//! few reasons are kept so a CLI can show them. Lines holding only whitespace are ignored.
//! Reading streams line by line, so corpora larger than memory can feed the tokenizer trainer.
//! With `keep_extra` a record also keeps its other fields (for `sample` to copy into its output,
//! e.g. the task or language an evaluation groups by).

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};

/// How many skip reasons a `SkipReport` keeps.
pub const MAX_SKIP_REASONS: usize = 5;

/// The two keys of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    pub src: String,
    pub tgt: String,
}

impl Keys {
    pub fn new(src: impl Into<String>, tgt: impl Into<String>) -> Self {
        Keys { src: src.into(), tgt: tgt.into() }
    }
    pub fn task() -> Self {
        Keys::new("src", "tgt")
    }
    pub fn flan() -> Self {
        Keys::new("inputs", "targets")
    }
}

#[derive(Clone, Debug, Default)]
pub struct JsonlOptions {
    /// `None`: detect per file.
    pub keys: Option<Keys>,
    /// `false` for sampling inputs: a record without the target key is kept with `tgt = None`.
    /// A target that is present must still be a string.
    pub require_tgt: bool,
    pub skip_bad_lines: bool,
    /// Keep every field besides the source and target in `Record::extra`.
    pub keep_extra: bool,
}

impl JsonlOptions {
    /// Options for training data: both fields required, bad lines are errors.
    pub fn training() -> Self {
        JsonlOptions { keys: None, require_tgt: true, skip_bad_lines: false, keep_extra: false }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub src: String,
    pub tgt: Option<String>,
    /// 1-based line number in its file, for messages further down the pipeline.
    pub line: usize,
    /// The record's other fields, with `JsonlOptions::keep_extra` (else empty).
    pub extra: serde_json::Map<String, Value>,
}

/// Lines skipped under `skip_bad_lines`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SkipReport {
    pub skipped: usize,
    /// The first `MAX_SKIP_REASONS` reasons, each `FILE:LINE: reason`.
    pub first_reasons: Vec<String>,
}

impl SkipReport {
    fn add(&mut self, reason: String) {
        self.skipped += 1;
        if self.first_reasons.len() < MAX_SKIP_REASONS {
            self.first_reasons.push(reason);
        }
    }

    pub fn merge(&mut self, other: &SkipReport) {
        self.skipped += other.skipped;
        for r in &other.first_reasons {
            if self.first_reasons.len() < MAX_SKIP_REASONS {
                self.first_reasons.push(r.clone());
            }
        }
    }
}

/// A streaming reader over one file; yields records, stops after the first error.
pub struct JsonlReader {
    path: PathBuf,
    lines: Lines<BufReader<File>>,
    line_no: usize,
    keys: Option<Keys>,
    opts: JsonlOptions,
    skips: SkipReport,
    finished: bool,
}

impl JsonlReader {
    pub fn open(path: impl AsRef<Path>, opts: &JsonlOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(JsonlReader {
            lines: BufReader::new(file).lines(),
            path,
            line_no: 0,
            keys: opts.keys.clone(),
            opts: opts.clone(),
            skips: SkipReport::default(),
            finished: false,
        })
    }

    /// The keys in use: the given ones, or the detected ones once a record was read.
    pub fn keys(&self) -> Option<&Keys> {
        self.keys.as_ref()
    }

    pub fn skips(&self) -> &SkipReport {
        &self.skips
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Parses one non-empty line; `Err` carries the reason without the `FILE:LINE` prefix.
    fn parse(&mut self, line: &str) -> std::result::Result<Record, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
        let obj = value.as_object().ok_or_else(|| format!("expected a JSON object, found {}", kind(&value)))?;
        let keys = match &self.keys {
            Some(k) => k.clone(),
            None => detect_keys(obj)?,
        };
        let src = string_field(obj, &keys.src)?.ok_or_else(|| format!("missing key \"{}\"", keys.src))?;
        let tgt = string_field(obj, &keys.tgt)?;
        if tgt.is_none() && self.opts.require_tgt {
            return Err(format!("missing key \"{}\"", keys.tgt));
        }
        let extra = if self.opts.keep_extra {
            obj.iter().filter(|(k, _)| **k != keys.src && **k != keys.tgt).map(|(k, v)| (k.clone(), v.clone())).collect()
        } else {
            serde_json::Map::new()
        };
        // Detection is settled by the first good record, so one odd line cannot switch keys.
        self.keys.get_or_insert(keys);
        Ok(Record { src, tgt, line: self.line_no, extra })
    }
}

impl Iterator for JsonlReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        while !self.finished {
            let line = match self.lines.next() {
                None => {
                    self.finished = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.finished = true;
                    let at = format!("{}:{}", self.path.display(), self.line_no + 1);
                    return Some(Err(anyhow!("{at}: cannot read line: {e}")));
                }
                Some(Ok(l)) => l,
            };
            self.line_no += 1;
            let text = if self.line_no == 1 { line.trim_start_matches('\u{feff}') } else { &line };
            if text.trim().is_empty() {
                continue;
            }
            match self.parse(text) {
                Ok(rec) => return Some(Ok(rec)),
                Err(reason) => {
                    let msg = format!("{}:{}: {reason}", self.path.display(), self.line_no);
                    if self.opts.skip_bad_lines {
                        self.skips.add(msg);
                    } else {
                        self.finished = true;
                        return Some(Err(anyhow!(msg)));
                    }
                }
            }
        }
        None
    }
}

fn detect_keys(obj: &serde_json::Map<String, Value>) -> std::result::Result<Keys, String> {
    if obj.contains_key("src") {
        Ok(Keys::task())
    } else if obj.contains_key("inputs") {
        Ok(Keys::flan())
    } else {
        let found: Vec<&str> = obj.keys().map(String::as_str).collect();
        Err(format!(
            "cannot tell which keys hold source and target: expected \"src\"/\"tgt\" or \
             \"inputs\"/\"targets\", found {found:?} (name them with --src-key/--tgt-key)"
        ))
    }
}

/// `Ok(None)` when the key is absent; an error when present but not a string.
fn string_field(obj: &serde_json::Map<String, Value>, key: &str) -> std::result::Result<Option<String>, String> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!("key \"{key}\" must be a string, found {}", kind(v))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// All records of one file.
#[derive(Clone, Debug)]
pub struct JsonlFile {
    pub records: Vec<Record>,
    pub keys: Option<Keys>,
    pub skips: SkipReport,
}

pub fn read_jsonl(path: impl AsRef<Path>, opts: &JsonlOptions) -> Result<JsonlFile> {
    let mut reader = JsonlReader::open(path, opts)?;
    let records = reader.by_ref().collect::<Result<Vec<_>>>()?;
    Ok(JsonlFile { records, keys: reader.keys, skips: reader.skips })
}

/// All records of several files, in file order, with the skips summed.
pub fn read_jsonl_files<P: AsRef<Path>>(paths: &[P], opts: &JsonlOptions) -> Result<(Vec<Record>, SkipReport)> {
    let mut records = Vec::new();
    let mut skips = SkipReport::default();
    for p in paths {
        let f = read_jsonl(p, opts)?;
        records.extend(f.records);
        skips.merge(&f.skips);
    }
    Ok((records, skips))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".jsonl").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn err_of(text: &str, opts: &JsonlOptions) -> (String, String) {
        let f = file_with(text);
        let e = format!("{:#}", read_jsonl(f.path(), opts).unwrap_err());
        (e, f.path().display().to_string())
    }

    #[test]
    fn reads_task_and_flan_keys_and_ignores_blank_lines() {
        let f = file_with("{\"src\":\"a\",\"tgt\":\"b\"}\n\n  \n{\"src\":\"c\",\"tgt\":\"d\",\"x\":1}\n");
        let r = read_jsonl(f.path(), &JsonlOptions::training()).unwrap();
        assert_eq!(r.keys, Some(Keys::task()));
        assert_eq!(
            r.records,
            vec![
                Record { src: "a".into(), tgt: Some("b".into()), line: 1, extra: Default::default() },
                Record { src: "c".into(), tgt: Some("d".into()), line: 4, extra: Default::default() },
            ]
        );
        let keep = JsonlOptions { keep_extra: true, ..JsonlOptions::training() };
        let r = read_jsonl(f.path(), &keep).unwrap();
        assert!(r.records[0].extra.is_empty());
        assert_eq!(serde_json::Value::Object(r.records[1].extra.clone()), serde_json::json!({"x": 1}));
        let f = file_with("\u{feff}{\"inputs\":\"q\",\"targets\":\"r\"}\r\n");
        let r = read_jsonl(f.path(), &JsonlOptions::training()).unwrap();
        assert_eq!(r.keys, Some(Keys::flan()));
        assert_eq!(r.records[0].tgt.as_deref(), Some("r"));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let opts = JsonlOptions::training();
        let (e, p) = err_of("{\"src\":\"a\",\"tgt\":\"b\"}\n{\"src\":\"a\"}\n", &opts);
        assert!(e.contains(&format!("{p}:2:")) && e.contains("\"tgt\""), "{e}");
        let (e, p) = err_of("{\"src\":\"a\",\"tgt\":\"b\"}\n\n{\"src\":5,\"tgt\":\"b\"}\n", &opts);
        assert!(e.contains(&format!("{p}:3:")) && e.contains("\"src\"") && e.contains("number"), "{e}");
        let (e, p) = err_of("{\"src\":\"a\",\"tgt\":\"b\"}\n[1,2]\n", &opts);
        assert!(e.contains(&format!("{p}:2:")) && e.contains("object"), "{e}");
        let (e, p) = err_of("{\"src\":\"a\",\"tgt\":\"b\"}\n{oops\n", &opts);
        assert!(e.contains(&format!("{p}:2:")) && e.contains("JSON"), "{e}");
        let (e, p) = err_of("{\"question\":\"a\"}\n", &opts);
        assert!(e.contains(&format!("{p}:1:")) && e.contains("--src-key"), "{e}");
    }

    #[test]
    fn explicit_keys_are_used() {
        let opts = JsonlOptions { keys: Some(Keys::new("q", "a")), ..JsonlOptions::training() };
        let f = file_with("{\"q\":\"x\",\"a\":\"y\",\"src\":\"no\"}\n");
        let r = read_jsonl(f.path(), &opts).unwrap();
        assert_eq!(r.records[0].src, "x");
        let (e, _) = err_of("{\"q\":\"x\"}\n", &opts);
        assert!(e.contains("\"a\""), "{e}");
    }

    #[test]
    fn skip_bad_lines_counts_and_keeps_first_reasons() {
        let mut text = String::from("not json\n{\"src\":\"a\",\"tgt\":\"b\"}\n");
        for _ in 0..7 {
            text.push_str("{\"src\":\"a\"}\n");
        }
        text.push_str("{\"src\":\"c\",\"tgt\":\"d\"}\n");
        let f = file_with(&text);
        let opts = JsonlOptions { skip_bad_lines: true, ..JsonlOptions::training() };
        let r = read_jsonl(f.path(), &opts).unwrap();
        assert_eq!(r.records.len(), 2);
        assert_eq!(r.records[1].line, 10);
        assert_eq!(r.skips.skipped, 8);
        assert_eq!(r.skips.first_reasons.len(), MAX_SKIP_REASONS);
        assert!(r.skips.first_reasons[0].contains(":1: not valid JSON"));
        assert!(r.skips.first_reasons[1].contains(":3: missing key \"tgt\""));
    }

    #[test]
    fn target_optional_for_sampling() {
        let f = file_with("{\"src\":\"a\"}\n{\"src\":\"b\",\"tgt\":\"c\"}\n");
        let opts = JsonlOptions { require_tgt: false, ..JsonlOptions::default() };
        let r = read_jsonl(f.path(), &opts).unwrap();
        assert_eq!(r.records[0].tgt, None);
        assert_eq!(r.records[1].tgt.as_deref(), Some("c"));
        let (e, _) = err_of("{\"src\":\"a\",\"tgt\":null}\n", &opts);
        assert!(e.contains("\"tgt\" must be a string, found null"), "{e}");
    }

    #[test]
    fn missing_file_is_named() {
        let e = format!("{:#}", read_jsonl("/no/such/data.jsonl", &JsonlOptions::training()).unwrap_err());
        assert!(e.contains("/no/such/data.jsonl"), "{e}");
    }

    #[test]
    fn files_detect_keys_independently() {
        let a = file_with("{\"src\":\"a\",\"tgt\":\"b\"}\n");
        let b = file_with("{\"inputs\":\"c\",\"targets\":\"d\"}\n");
        let (recs, skips) = read_jsonl_files(&[a.path(), b.path()], &JsonlOptions::training()).unwrap();
        assert_eq!(recs.iter().map(|r| r.src.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(skips.skipped, 0);
    }
}
