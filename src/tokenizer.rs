//! The tokenizer: a thin wrapper over the `tokenizers` crate, plus a trainer that makes small
//! XLM-R-shaped Unigram tokenizers for from-scratch models and tests.
//!
//! Ids are `i32` everywhere in dlm-engine (the model's batches are `i32`), so the wrapper converts
//! at the boundary.
//!
//! Decoding: `Tok::decode` is byte-for-byte Python `tokenizers.Tokenizer.decode` (the same Rust
//! code runs underneath). The paper's evaluation went through HF transformers 4.28, whose `decode`
//! then also applied `clean_up_tokenization_spaces` (its default then was `True`; transformers 5
//! defaults to `False`). dlm-engine's plain text output uses `decode`; `decode_hf` adds the 4.28
//! clean-up for whoever wants to score text the way the released code did.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::unigram::{Unigram, UnigramTrainerBuilder};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::{Replace, Sequence, NFKC};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, Tokenizer};

/// The special token strings, in XLM-R's id order for the first four.
pub const BOS: &str = "<s>";
pub const PAD: &str = "<pad>";
pub const EOS: &str = "</s>";
pub const UNK: &str = "<unk>";
pub const MASK: &str = "<mask>";

/// The ids of the special tokens, looked up by their strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: i32,
    pub pad: i32,
    pub eos: i32,
    pub unk: i32,
    pub mask: i32,
}

/// A loaded tokenizer with its special ids resolved.
pub struct Tok {
    inner: Tokenizer,
    special: SpecialIds,
    /// Where it came from, for error messages ("trained in memory" when not from a file).
    origin: String,
}

impl std::fmt::Debug for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tok").field("origin", &self.origin).field("vocab_size", &self.vocab_size()).field("special", &self.special).finish()
    }
}

impl Tok {
    /// Loads a `tokenizer.json` (Hugging Face `tokenizers` format).
    pub fn load(path: impl AsRef<Path>) -> Result<Tok> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read tokenizer file {}", path.display()))?;
        let inner = Tokenizer::from_bytes(text.as_bytes()).map_err(|e| anyhow!("{}: not a valid tokenizer.json: {e}", path.display()))?;
        Tok::from_tokenizer(inner, path.display().to_string())
    }

    /// Wraps an already built tokenizer; `origin` names it in error messages.
    pub fn from_tokenizer(inner: Tokenizer, origin: String) -> Result<Tok> {
        let find = |s: &str| -> Result<i32> {
            let id = inner.token_to_id(s).ok_or_else(|| anyhow!("{origin}: the tokenizer has no special token {s}"))?;
            i32::try_from(id).map_err(|_| anyhow!("{origin}: id {id} of {s} does not fit in i32"))
        };
        let special = SpecialIds { bos: find(BOS)?, pad: find(PAD)?, eos: find(EOS)?, unk: find(UNK)?, mask: find(MASK)? };
        Ok(Tok { inner, special, origin })
    }

    /// Writes `tokenizer.json` (pretty-printed, like `save_pretrained`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.inner.save(path, true).map_err(|e| anyhow!("cannot write tokenizer to {}: {e}", path.display()))
    }

    pub fn special(&self) -> SpecialIds {
        self.special
    }
    pub fn bos(&self) -> i32 {
        self.special.bos
    }
    pub fn pad(&self) -> i32 {
        self.special.pad
    }
    pub fn eos(&self) -> i32 {
        self.special.eos
    }
    pub fn unk(&self) -> i32 {
        self.special.unk
    }
    pub fn mask(&self) -> i32 {
        self.special.mask
    }

    /// Number of distinct ids, added tokens included (250002 for XLM-R).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Encodes one text with the post-processor's special tokens, i.e. `[<s>, …, </s>]`
    /// (HF `tokenizer.encode(text)`).
    pub fn encode(&self, text: &str) -> Result<Vec<i32>> {
        let enc = self.inner.encode(text, true).map_err(|e| anyhow!("{}: cannot encode text: {e}", self.origin))?;
        Ok(enc.get_ids().iter().map(|&i| i as i32).collect())
    }

    /// Python `tokenizers` `decode(ids, skip_special_tokens)`. Ids outside the vocabulary are
    /// dropped (as Python does); negative ids are an error.
    pub fn decode(&self, ids: &[i32], skip_special: bool) -> Result<String> {
        let ids = ids
            .iter()
            .map(|&i| u32::try_from(i).map_err(|_| anyhow!("cannot decode negative token id {i}")))
            .collect::<Result<Vec<u32>>>()?;
        self.inner.decode(&ids, skip_special).map_err(|e| anyhow!("{}: cannot decode: {e}", self.origin))
    }

    /// HF transformers 4.28 `tokenizer.decode(ids, skip_special_tokens=True)` with its default
    /// `clean_up_tokenization_spaces=True`: what the paper's evaluation path produced.
    pub fn decode_hf(&self, ids: &[i32]) -> Result<String> {
        Ok(clean_up_tokenization_spaces(&self.decode(ids, true)?))
    }

    pub fn id_to_token(&self, id: i32) -> Option<String> {
        u32::try_from(id).ok().and_then(|i| self.inner.id_to_token(i))
    }

    pub fn token_to_id(&self, token: &str) -> Option<i32> {
        self.inner.token_to_id(token).and_then(|i| i32::try_from(i).ok())
    }
}

/// HF's `clean_up_tokenization`: removes the space before some punctuation and English
/// contractions. Applied in this order, each as a plain string replacement.
pub fn clean_up_tokenization_spaces(text: &str) -> String {
    const RULES: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    RULES.iter().fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}

/// The smallest vocabulary `train_unigram` accepts: the five special tokens plus "▁".
pub const MIN_TRAIN_VOCAB: usize = 6;

/// Fills the vocabulary up to `target` pieces with the most frequent whole words.
///
/// Why: the Unigram trainer seeds its candidates with substrings that occur at least twice among
/// the DISTINCT words of the corpus, so on a small corpus (few distinct words) no whole word is
/// ever a candidate and the result is close to character level, far below the requested size.
/// Each added word gets the log of its relative frequency as its score, which makes the Viterbi
/// segmentation prefer it to a chain of character pieces. On a large corpus the trainer already
/// reaches the requested size and nothing is added.
fn add_whole_words(tok: &mut Tokenizer, counts: std::collections::HashMap<String, u64>, target: usize) -> Result<()> {
    use tokenizers::{Model, ModelWrapper, Normalizer, PreTokenizer};
    let ModelWrapper::Unigram(model) = tok.get_model() else { return Ok(()) };
    let mut vocab: Vec<(String, f64)> = model.iter().cloned().collect();
    if vocab.len() >= target {
        return Ok(());
    }
    let unk = model.token_to_id(UNK).map(|i| i as usize);
    let mut pieces: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for (word, c) in counts {
        let mut ns = tokenizers::NormalizedString::from(word.as_str());
        if let Some(n) = tok.get_normalizer() {
            n.normalize(&mut ns).map_err(|e| anyhow!("normalizer failed on {word:?}: {e}"))?;
        }
        let mut pre = tokenizers::PreTokenizedString::from(ns.get());
        if let Some(p) = tok.get_pre_tokenizer() {
            p.pre_tokenize(&mut pre).map_err(|e| anyhow!("pre-tokenizer failed on {word:?}: {e}"))?;
        }
        for (piece, _, _) in pre.get_splits(tokenizers::OffsetReferential::Original, tokenizers::OffsetType::Char) {
            *pieces.entry(piece.to_string()).or_insert(0) += c;
        }
    }
    let known: std::collections::HashSet<String> = vocab.iter().map(|v| v.0.clone()).collect();
    let total: u64 = pieces.values().sum();
    let mut cands: Vec<(String, u64)> = pieces.into_iter().filter(|(p, _)| !known.contains(p) && p.chars().count() > 1).collect();
    cands.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (p, c) in cands.into_iter().take(target - vocab.len()) {
        vocab.push((p, (c as f64 / total as f64).ln()));
    }
    let m = Unigram::from(vocab, unk, false).map_err(|e| anyhow!("cannot rebuild the Unigram model: {e}"))?;
    tok.with_model(m);
    Ok(())
}

/// Trains an XLM-R-shaped Unigram tokenizer on `texts`.
///
/// Shape (chosen so XLM-R code paths run unchanged on it):
/// - ids `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, and `<mask>` the last id;
/// - normalizer: NFKC, then tabs/newlines/CR/FF/VT to a space (sentencepiece's nmt_nfkc does the
///   same for XLM-R), then runs of spaces collapsed to one (XLM-R's `Replace(" {2,}")`);
/// - Metaspace pre-tokenizer and decoder (`▁`, prepend always, split on spaces);
/// - post-processor `<s> $A </s>`, pair `<s> $A </s> </s> $B </s>` (all type id 0);
/// - `<mask>` is a special added token that eats the space before it (XLM-R's `lstrip`).
///
/// `vocab_size` counts every id, `<mask>` included. The Unigram trainer keeps every character
/// seen in the corpus, so a tiny `vocab_size` on a corpus with many distinct characters gives a
/// larger vocabulary, and a tiny corpus may give a smaller one: read `Tok::vocab_size` afterwards.
/// The `tokenizers` trainer seeds its candidate pieces from *distinct* words (a word's frequency
/// does not count there), so on a corpus with few distinct words even frequent words may end up
/// split into short pieces; real corpora do not show this.
/// The largest vocabulary `train_unigram` builds (XLM-R has 250,002 ids).
pub const MAX_TRAIN_VOCAB: usize = 1_000_000;

/// `--vocab-size` of `tokenizer train` in its range.
pub fn check_train_vocab(vocab_size: usize) -> Result<()> {
    if !(MIN_TRAIN_VOCAB..=MAX_TRAIN_VOCAB).contains(&vocab_size) {
        bail!("--vocab-size {vocab_size}: must be between {MIN_TRAIN_VOCAB} (5 special tokens and \"▁\") and {MAX_TRAIN_VOCAB}");
    }
    Ok(())
}

pub fn train_unigram<I>(texts: I, vocab_size: usize) -> Result<Tok>
where
    I: Iterator<Item = String> + Send,
{
    check_train_vocab(vocab_size)?;
    let mut texts = texts.peekable();
    if texts.peek().is_none() {
        bail!("no text to train the tokenizer on");
    }
    let mut tok = Tokenizer::new(Unigram::default());
    tok.with_normalizer(Some(xlmr_like_normalizer()?)).map_err(|e| anyhow!("cannot set the normalizer: {e}"))?;
    tok.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tok.with_decoder(Some(DecoderWrapper::Metaspace(MetaspaceDecoder::new('▁', PrependScheme::Always, true))));

    // `<mask>` stays out of the trainer so that the model's pieces end just before it and the
    // added-token id assigned below is the last one, as in XLM-R.
    let specials = [BOS, PAD, EOS, UNK].map(|s| AddedToken::from(s, true)).to_vec();
    let mut trainer: TrainerWrapper = UnigramTrainerBuilder::default()
        .vocab_size((vocab_size - 1) as u32)
        .show_progress(false)
        .special_tokens(specials)
        .unk_token(Some(UNK.to_string()))
        .build()
        .map_err(|e| anyhow!("cannot configure the Unigram trainer: {e}"))?
        .into();
    // Count whole words on the way through (the trainer may read from several threads).
    let words = std::sync::Mutex::new(std::collections::HashMap::<String, u64>::new());
    let counted = texts.inspect(|t| {
        let mut w = words.lock().unwrap_or_else(|e| e.into_inner());
        for word in t.split_whitespace() {
            *w.entry(word.to_string()).or_insert(0) += 1;
        }
    });
    tok.train(&mut trainer, counted).map_err(|e| anyhow!("tokenizer training failed: {e}"))?;
    add_whole_words(&mut tok, words.into_inner().unwrap_or_else(|e| e.into_inner()), vocab_size - 1)?;

    tok.add_special_tokens([AddedToken::from(MASK, true).lstrip(true)]).map_err(|e| anyhow!("cannot add {MASK}: {e}"))?;
    let post = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A {EOS}"))
        .and_then(|b| b.try_pair(format!("{BOS} $A {EOS} {EOS} $B {EOS}")))
        .map_err(|e| anyhow!("bad post-processor template: {e}"))?
        .special_tokens(vec![(BOS, 0u32), (EOS, 2u32)])
        .build()
        .map_err(|e| anyhow!("cannot build the post-processor: {e}"))?;
    tok.with_post_processor(Some(post));

    let tok = Tok::from_tokenizer(tok, "trained tokenizer".to_string())?;
    check_xlmr_layout(&tok)?;
    Ok(tok)
}

fn xlmr_like_normalizer() -> Result<NormalizerWrapper> {
    let replace = |pattern: &str, with: &str| -> Result<NormalizerWrapper> {
        Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(pattern.into()), with)
            .map(NormalizerWrapper::Replace)
            .map_err(|e| anyhow!("bad normalizer pattern {pattern:?}: {e}"))
    };
    Ok(NormalizerWrapper::Sequence(Sequence::new(vec![
        NormalizerWrapper::NFKC(NFKC),
        replace("[\\t\\n\\r\\f\\v]", " ")?,
        replace(" {2,}", " ")?,
    ])))
}

/// The trainer decides ids itself; this makes sure it produced the layout promised above.
fn check_xlmr_layout(tok: &Tok) -> Result<()> {
    let s = tok.special();
    let want = SpecialIds { bos: 0, pad: 1, eos: 2, unk: 3, mask: tok.vocab_size() as i32 - 1 };
    if s != want {
        bail!("trained tokenizer has special ids {s:?}, expected {want:?} (a bug in train_unigram)");
    }
    Ok(())
}

/// The tokenizer file named by a path: `DIR/tokenizer.json` for a model directory, else the path.
pub fn tokenizer_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        let base = [
            "the cat sat on the mat",
            "a dog ran in the park",
            "Translate the German sentence to English.",
            "Wie geht es dir heute?",
            "numbers 123 and 4567 appear here",
            "the quick brown fox jumps over the lazy dog",
        ];
        (0..40).flat_map(|i| base.iter().map(move |s| format!("{s} {i}"))).collect()
    }

    #[test]
    fn trained_tokenizer_has_xlmr_special_ids() {
        let tok = train_unigram(corpus().into_iter(), 120).unwrap();
        let s = tok.special();
        assert_eq!((s.bos, s.pad, s.eos, s.unk), (0, 1, 2, 3));
        assert_eq!(s.mask as usize, tok.vocab_size() - 1);
        assert_eq!(tok.id_to_token(s.mask).as_deref(), Some(MASK));
        assert_eq!(tok.id_to_token(0).as_deref(), Some(BOS));
    }

    #[test]
    fn encode_wraps_with_bos_eos_and_decode_round_trips() {
        let tok = train_unigram(corpus().into_iter(), 120).unwrap();
        for text in ["the cat sat on the mat 7", "Wie geht es dir heute?", "dog"] {
            let ids = tok.encode(text).unwrap();
            assert_eq!(ids[0], tok.bos());
            assert_eq!(*ids.last().unwrap(), tok.eos());
            assert!(ids[1..ids.len() - 1].iter().all(|&i| i != tok.unk()), "{text}: {ids:?}");
            assert_eq!(tok.decode(&ids, true).unwrap(), text);
        }
    }

    #[test]
    fn mask_in_text_becomes_the_mask_id() {
        let tok = train_unigram(corpus().into_iter(), 120).unwrap();
        let ids = tok.encode("the cat <mask> on the mat").unwrap();
        assert_eq!(ids.iter().filter(|&&i| i == tok.mask()).count(), 1);
    }

    #[test]
    fn normalizer_collapses_whitespace() {
        let tok = train_unigram(corpus().into_iter(), 120).unwrap();
        assert_eq!(tok.encode("the  cat\tsat").unwrap(), tok.encode("the cat sat").unwrap());
    }

    #[test]
    fn rejects_empty_corpus_and_tiny_vocab() {
        assert!(train_unigram(std::iter::empty(), 100).is_err());
        assert!(train_unigram(corpus().into_iter(), 3).is_err());
    }

    #[test]
    fn clean_up_matches_hf_rules() {
        // Hand-applied HF rules: " ." -> ".", " ," -> ",", " n't" -> "n't", " 's" -> "'s".
        assert_eq!(clean_up_tokenization_spaces("I do n't know , it 's here ."), "I don't know, it's here.");
        assert_eq!(clean_up_tokenization_spaces("a ' b"), "a'b");
    }

    #[test]
    fn load_names_the_missing_file() {
        let err = Tok::load("/nonexistent/dir/tokenizer.json").unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/dir/tokenizer.json"));
    }

    #[test]
    fn load_names_an_invalid_file_and_a_missing_special() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let err = format!("{:#}", Tok::load(&bad).unwrap_err());
        assert!(err.contains("bad.json") && err.contains("not a valid"), "{err}");

        // A valid tokenizer without <mask>: train one, then drop <mask> from the JSON.
        let tok = train_unigram(corpus().into_iter(), 60).unwrap();
        let full = dir.path().join("full.json");
        tok.save(&full).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&full).unwrap()).unwrap();
        let added = json["added_tokens"].as_array_mut().unwrap();
        added.retain(|t| t["content"] != MASK);
        let no_mask = dir.path().join("no_mask.json");
        std::fs::write(&no_mask, serde_json::to_string(&json).unwrap()).unwrap();
        let err = format!("{:#}", Tok::load(&no_mask).unwrap_err());
        assert!(err.contains("no_mask.json") && err.contains("<mask>"), "{err}");
    }
}
