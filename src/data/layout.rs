//! The sequence layout of docs/method.md §2.1: one stream `[<s>] source target [</s>]`.
//!
//! `src_len` counts the leading *fixed* positions (never noised): `<s>` and the source tokens.
//! Everything after them, i.e. the target tokens and the final `</s>`, is maskable.
//!
//! Over-long pairs (`len(src)+len(tgt)−2 > max_len`, with both sides encoded with `<s> … </s>`):
//! - `Overlong::Truncate`, the Flan/HF rule of the reference: the target is first cut to its last
//!   `max_len` tokens, then `x0 = (src[:-1] + tgt[1:])[-max_len:]`. The cut happens on the left,
//!   so a source longer than the room left loses its *beginning*, `<s>` included. The tail of the
//!   stream is always the target, so at least `</s>` stays maskable and at least one source token
//!   stays fixed (after the target cut, `tgt[1:]` holds at most `max_len−1` tokens). Nothing is
//!   ever dropped. Note the reference's quirk, kept here: after the target cut, `tgt[1:]` drops a
//!   real target token rather than `<s>`.
//!   `src_len` is counted from where each token came from. The reference's collator instead
//!   derives it as `len − #(target tokens ≠ <s>)`, which is one less (0) in the target-cut case;
//!   dlm-engine keeps the surviving source token fixed.
//! - `Overlong::Drop`, the task-training rule (fairseq filters examples longer than the maximum):
//!   the pair is dropped and counted.

use super::jsonl::Record;
use crate::tokenizer::Tok;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// One training or sampling row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<i32>,
    /// Number of leading fixed positions (`<s>` + source, after truncation).
    pub src_len: usize,
}

impl Example {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Number of maskable positions (target tokens plus the final `</s>`).
    pub fn maskable(&self) -> usize {
        self.ids.len() - self.src_len
    }
}

/// What to do with a pair longer than `max_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlong {
    Truncate,
    Drop,
}

/// Lays out one pair of encoded texts (`src`, `tgt` each `[<s>, …, </s>]`).
/// Returns `None` only for `Overlong::Drop` on an over-long pair. Panics if `max_len < 2`
/// (callers validate user input first; `build_examples` does).
pub fn layout_pair(src: &[i32], tgt: &[i32], max_len: usize, overlong: Overlong) -> Option<Example> {
    assert!(max_len >= 2, "max_len must be at least 2, got {max_len}");
    let full = (src.len() + tgt.len()).saturating_sub(2);
    let mut tgt = tgt;
    if full > max_len {
        match overlong {
            Overlong::Drop => return None,
            Overlong::Truncate => tgt = &tgt[tgt.len().saturating_sub(max_len)..],
        }
    }
    let fixed = &src[..src.len().saturating_sub(1)];
    let tail = tgt.get(1..).unwrap_or(&[]);
    let cut = (fixed.len() + tail.len()).saturating_sub(max_len);
    let mut ids = Vec::with_capacity(fixed.len() + tail.len() - cut);
    ids.extend_from_slice(&fixed[cut.min(fixed.len())..]);
    ids.extend_from_slice(&tail[cut.saturating_sub(fixed.len())..]);
    Some(Example { ids, src_len: fixed.len().saturating_sub(cut) })
}

/// The sampling canvas `[<s>] prompt <mask>×L [</s>]` from an encoded prompt `[<s>, …, </s>]`
/// (its own `<s>`/`</s>` are reused). The caller keeps `src.len() + target_len` within the model's
/// maximum (docs/method.md §5: the official length predictor caps a predicted length at `512 − 1 − src_len`).
pub fn prompt_canvas(src: &[i32], target_len: usize, mask_id: i32) -> Example {
    assert!(src.len() >= 2, "prompt_canvas wants an encoded prompt [<s>, …, </s>], got {src:?}");
    let (head, eos) = src.split_at(src.len() - 1);
    let mut ids = Vec::with_capacity(src.len() + target_len);
    ids.extend_from_slice(head);
    ids.extend(std::iter::repeat_n(mask_id, target_len));
    ids.extend_from_slice(eos);
    Example { ids, src_len: head.len() }
}

/// Examples built from records, with what happened to the over-long ones.
#[derive(Clone, Debug, Default)]
pub struct LayoutSummary {
    pub examples: Vec<Example>,
    /// Over-long pairs cut by `Overlong::Truncate`.
    pub truncated: usize,
    /// Over-long pairs removed by `Overlong::Drop`.
    pub dropped: usize,
}

/// Encodes and lays out training records (each must have a target), in parallel, in order.
pub fn build_examples(tok: &Tok, records: &[Record], max_len: usize, overlong: Overlong) -> Result<LayoutSummary> {
    if max_len < 2 {
        bail!("max length must be at least 2 (<s> and </s>), got {max_len}");
    }
    let laid: Vec<(Option<Example>, bool)> = records
        .par_iter()
        .map(|r| -> Result<(Option<Example>, bool)> {
            let Some(tgt_text) = r.tgt.as_deref() else {
                bail!("record at line {} has no target text", r.line);
            };
            let src = tok.encode(&r.src)?;
            let tgt = tok.encode(tgt_text)?;
            for enc in [&src, &tgt] {
                // The layout drops the source's `</s>` and the target's `<s>`: without them
                // (a tokenizer.json with no post-processor) it would drop real tokens.
                if enc.len() < 2 || enc[0] != tok.bos() || enc[enc.len() - 1] != tok.eos() {
                    bail!("record at line {}: the tokenizer does not wrap texts in <s> … </s>", r.line);
                }
            }
            let over = src.len() + tgt.len() - 2 > max_len;
            Ok((layout_pair(&src, &tgt, max_len, overlong), over))
        })
        .collect::<Result<_>>()?;
    let mut out = LayoutSummary::default();
    for (ex, over) in laid {
        match ex {
            Some(e) => {
                out.truncated += over as usize;
                out.examples.push(e);
            }
            None => out.dropped += 1,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Ids: 0 = <s>, 2 = </s>, source tokens 10.., target tokens 20.., mask 9.
    fn ex(ids: &[i32], src_len: usize) -> Option<Example> {
        Some(Example { ids: ids.to_vec(), src_len })
    }

    #[test]
    fn fits_without_truncation() {
        let got = layout_pair(&[0, 10, 11, 2], &[0, 20, 21, 22, 2], 8, Overlong::Truncate);
        assert_eq!(got, ex(&[0, 10, 11, 20, 21, 22, 2], 3));
        assert_eq!(got.unwrap().maskable(), 4);
        // Exactly max_len total: no change either way.
        let got = layout_pair(&[0, 10, 11, 2], &[0, 20, 21, 22, 2], 7, Overlong::Drop);
        assert_eq!(got, ex(&[0, 10, 11, 20, 21, 22, 2], 3));
    }

    #[test]
    fn empty_target_keeps_only_eos_maskable() {
        assert_eq!(layout_pair(&[0, 10, 2], &[0, 2], 8, Overlong::Truncate), ex(&[0, 10, 2], 2));
    }

    #[test]
    fn long_source_is_cut_from_the_left() {
        // src [0,10..15,2] (8), tgt [0,20,21,2] (4): full = 10 > 6. tgt[-6:] = tgt (4).
        // src[:-1]+tgt[1:] = [0,10,11,12,13,14,15,20,21,2]; last 6 = [13,14,15,20,21,2].
        let src = [0, 10, 11, 12, 13, 14, 15, 2];
        let got = layout_pair(&src, &[0, 20, 21, 2], 6, Overlong::Truncate);
        assert_eq!(got, ex(&[13, 14, 15, 20, 21, 2], 3));
        assert_eq!(layout_pair(&src, &[0, 20, 21, 2], 6, Overlong::Drop), None);
    }

    #[test]
    fn long_target_is_cut_to_its_last_max_len_tokens() {
        // src [0,10,2], tgt [0,20..27,2] (10), max 5: full = 11 > 5 -> tgt[-5:] = [24,25,26,27,2],
        // tgt[1:] = [25,26,27,2]; [0,10,25,26,27,2][-5:] = [10,25,26,27,2], one source token fixed.
        let tgt = [0, 20, 21, 22, 23, 24, 25, 26, 27, 2];
        assert_eq!(layout_pair(&[0, 10, 2], &tgt, 5, Overlong::Truncate), ex(&[10, 25, 26, 27, 2], 1));
    }

    #[test]
    fn both_long() {
        // src 6 tokens, tgt 7 tokens, max 4: tgt[-4:] = [22,23,24,2], tail [23,24,2];
        // [0,10,11,12,13] + tail has 8 tokens, keep the last 4: [13,23,24,2], src_len 1.
        let got = layout_pair(&[0, 10, 11, 12, 13, 2], &[0, 20, 21, 22, 23, 24, 2], 4, Overlong::Truncate);
        assert_eq!(got, ex(&[13, 23, 24, 2], 1));
    }

    #[test]
    fn truncated_example_never_exceeds_max_len_and_keeps_a_maskable_slot() {
        for s in 2..12i32 {
            for t in 2..12i32 {
                for max_len in 2..14 {
                    let src: Vec<i32> = (0..s).collect();
                    let tgt: Vec<i32> = (100..100 + t).collect();
                    let e = layout_pair(&src, &tgt, max_len, Overlong::Truncate).unwrap();
                    assert!(e.len() <= max_len);
                    assert!(e.maskable() >= 1 && e.src_len >= 1, "{s} {t} {max_len}: {e:?}");
                    // The fixed prefix is exactly the tokens that came from the source.
                    assert!(e.ids[..e.src_len].iter().all(|&i| i < 100));
                    assert!(e.ids[e.src_len..].iter().all(|&i| i >= 100));
                }
            }
        }
    }

    #[test]
    fn canvas_layout() {
        let c = prompt_canvas(&[0, 10, 11, 2], 3, 9);
        assert_eq!(c, Example { ids: vec![0, 10, 11, 9, 9, 9, 2], src_len: 3 });
        assert_eq!(prompt_canvas(&[0, 2], 0, 9), Example { ids: vec![0, 2], src_len: 1 });
    }
}
