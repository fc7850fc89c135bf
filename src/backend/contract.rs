//! The Rust half of the contract with the kernels (`kernels/contract.cuh`): the packed i32 arrays
//! the host fills for `reparam_step` as `#[repr(C)]` structs, and the codes and constants both
//! sides use. The tests below read the header and compare every definition with this module, so
//! neither side can change alone.

use crate::rdm::noise::Reweighting;
use bytemuck::{Pod, Zeroable};

/// One canvas of `Backend::reparam_step`, as the kernel reads it (`DLM_CANVAS_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CanvasMeta {
    /// The canvas's first slot in the flat slot arrays.
    pub first: i32,
    /// Its slot count.
    pub len: i32,
    /// The flat position in the model's input ids of its slot 0.
    pub pos0: i32,
}

/// One canvas's inputs for one step of `Backend::reparam_step` (`DLM_STEP_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct StepParams {
    /// How many slots the lowest-confidence set may hold.
    pub k: i32,
    /// The ranking noise's Philox stream, high then low 32 bits.
    pub stream_hi: i32,
    pub stream_lo: i32,
    /// The ranking noise's scale, as f32 bits.
    pub scale_bits: i32,
    /// The window of slots the step works on, `[lo, hi)` of the canvas (a block; the whole
    /// canvas without blocks). Slots outside it are left as they are.
    pub lo: i32,
    pub hi: i32,
    /// `StepMode` code.
    pub mode: i32,
    /// The threshold mode's cut, in the scale of the ranked values, as f32 bits.
    pub cut_bits: i32,
}

/// What a step does in its window (`DLM_MODE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepMode {
    /// The reparameterized top-k re-masking (rdm::remask's `lowest_set` and `reparam_update`).
    TopK,
    /// Commit every masked slot ranked at least at the cut, at least the best one
    /// (rdm::remask::threshold_commits); nothing is re-masked.
    Threshold,
}

impl StepMode {
    pub fn code(self) -> i32 {
        match self {
            StepMode::TopK => 0,
            StepMode::Threshold => 1,
        }
    }
}

impl CanvasMeta {
    /// i32 fields per record in the packed array (`DLM_CANVAS_FIELDS`).
    pub const FIELDS: usize = std::mem::size_of::<Self>() / std::mem::size_of::<i32>();
}

impl StepParams {
    /// i32 fields per record in the packed array (`DLM_STEP_FIELDS`).
    pub const FIELDS: usize = std::mem::size_of::<Self>() / std::mem::size_of::<i32>();

    /// A top-k step over the slots `window` of the canvas: at most `k` stay masked, with
    /// ranking noise of `stream` and `scale`.
    pub fn top_k(k: usize, stream: u64, scale: f32, window: std::ops::Range<usize>) -> Self {
        let [stream_hi, stream_lo] = super::pack_seed(stream);
        StepParams {
            k: k.min(i32::MAX as usize) as i32,
            stream_hi,
            stream_lo,
            scale_bits: scale.to_bits() as i32,
            lo: window.start.min(i32::MAX as usize) as i32,
            hi: window.end.min(i32::MAX as usize) as i32,
            mode: StepMode::TopK.code(),
            cut_bits: 0,
        }
    }

    /// A threshold step over the slots `window` of the canvas.
    pub fn threshold(cut: f32, window: std::ops::Range<usize>) -> Self {
        StepParams { mode: StepMode::Threshold.code(), cut_bits: cut.to_bits() as i32, ..Self::top_k(0, 0, 0.0, window) }
    }

    pub fn window(&self) -> std::ops::Range<usize> {
        self.lo.max(0) as usize..self.hi.max(0) as usize
    }
    pub fn step_mode(&self) -> StepMode {
        if self.mode == StepMode::Threshold.code() {
            StepMode::Threshold
        } else {
            StepMode::TopK
        }
    }
    pub fn cut(&self) -> f32 {
        f32::from_bits(self.cut_bits as u32)
    }
    pub fn stream(&self) -> u64 {
        super::unpack_seed(&[self.stream_hi, self.stream_lo], 0)
    }
    pub fn scale(&self) -> f32 {
        f32::from_bits(self.scale_bits as u32)
    }
}

/// Checks the packed arrays of a `reparam_step` on `n` canvases against `slots` flat slots and
/// `ids` input positions: each canvas within both, each step's window within its canvas.
/// Returns the largest canvas (the kernel's shared memory holds one value per slot of it).
pub fn check_canvases(meta: &[i32], step: &[i32], n: usize, slots: usize, ids: usize) -> anyhow::Result<usize> {
    anyhow::ensure!(
        meta.len() >= n * CanvasMeta::FIELDS && step.len() >= n * StepParams::FIELDS,
        "reparam_step: the canvas arrays do not hold {n} canvases"
    );
    let mut widest = 0;
    let canvases = records::<CanvasMeta>(&meta[..n * CanvasMeta::FIELDS]);
    for (b, (c, st)) in canvases.iter().zip(records::<StepParams>(&step[..n * StepParams::FIELDS])).enumerate() {
        let fits =
            [c.first, c.len, c.pos0].iter().all(|&v| v >= 0) && (c.first + c.len) as usize <= slots && (c.pos0 + c.len) as usize <= ids;
        anyhow::ensure!(
            fits,
            "reparam_step: canvas {b} (slots {}+{}, ids from {}) does not fit {slots} slots and {ids} ids",
            c.first,
            c.len,
            c.pos0
        );
        anyhow::ensure!(
            0 <= st.lo && st.lo <= st.hi && st.hi <= c.len,
            "reparam_step: canvas {b}'s window {}..{} is not within its {} slots",
            st.lo,
            st.hi,
            c.len
        );
        widest = widest.max(c.len as usize);
    }
    Ok(widest)
}

/// The code `q_sample_mask` takes for a reweighting (`DLM_REWEIGHT_*`).
pub fn reweighting_code(r: Reweighting) -> i32 {
    match r {
        Reweighting::Linear => 0,
        Reweighting::Reciprocal => 1,
        Reweighting::Constant => 2,
    }
}

/// Views a packed i32 array (as `Backend::read_i32` returns it, or as a kernel sees it) as records.
pub fn records<T: Pod>(packed: &[i32]) -> &[T] {
    bytemuck::cast_slice(packed)
}

/// The packed i32 array of a list of records, for `Backend::write_i32`.
pub fn packed<T: Pod>(records: &[T]) -> &[i32] {
    bytemuck::cast_slice(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::mem::{offset_of, size_of};

    /// `#define NAME VALUE` lines of the header (trailing comments dropped).
    fn header() -> HashMap<String, String> {
        include_str!("../../kernels/contract.cuh")
            .lines()
            .filter_map(|l| l.strip_prefix("#define "))
            .map(|l| {
                let l = l.split("//").next().unwrap().trim();
                let (name, value) = l.split_once(char::is_whitespace).expect("a #define with a value");
                (name.to_string(), value.trim().to_string())
            })
            .collect()
    }

    fn int(h: &HashMap<String, String>, name: &str) -> usize {
        h.get(name).unwrap_or_else(|| panic!("{name} is not in kernels/contract.cuh")).parse().unwrap()
    }

    #[test]
    fn records_have_the_headers_layout() {
        let h = header();
        let field = |offset: usize| offset / size_of::<i32>();
        assert_eq!(size_of::<CanvasMeta>(), int(&h, "DLM_CANVAS_FIELDS") * size_of::<i32>());
        assert_eq!(CanvasMeta::FIELDS, int(&h, "DLM_CANVAS_FIELDS"));
        assert_eq!(StepParams::FIELDS, int(&h, "DLM_STEP_FIELDS"));
        assert_eq!(field(offset_of!(CanvasMeta, first)), int(&h, "DLM_CANVAS_FIRST"));
        assert_eq!(field(offset_of!(CanvasMeta, len)), int(&h, "DLM_CANVAS_LEN"));
        assert_eq!(field(offset_of!(CanvasMeta, pos0)), int(&h, "DLM_CANVAS_POS0"));
        assert_eq!(size_of::<StepParams>(), int(&h, "DLM_STEP_FIELDS") * size_of::<i32>());
        assert_eq!(field(offset_of!(StepParams, k)), int(&h, "DLM_STEP_K"));
        assert_eq!(field(offset_of!(StepParams, stream_hi)), int(&h, "DLM_STEP_STREAM_HI"));
        assert_eq!(field(offset_of!(StepParams, stream_lo)), int(&h, "DLM_STEP_STREAM_LO"));
        assert_eq!(field(offset_of!(StepParams, scale_bits)), int(&h, "DLM_STEP_SCALE"));
        assert_eq!(field(offset_of!(StepParams, lo)), int(&h, "DLM_STEP_LO"));
        assert_eq!(field(offset_of!(StepParams, hi)), int(&h, "DLM_STEP_HI"));
        assert_eq!(field(offset_of!(StepParams, mode)), int(&h, "DLM_STEP_MODE"));
        assert_eq!(field(offset_of!(StepParams, cut_bits)), int(&h, "DLM_STEP_CUT"));
    }

    #[test]
    fn constants_and_codes_match_the_header() {
        let h = header();
        let score: f32 = h["DLM_NON_TARGET_SCORE"].trim_end_matches('f').parse().unwrap();
        assert_eq!(score, crate::rdm::remask::NON_TARGET_SCORE);
        for (r, name) in [
            (Reweighting::Linear, "DLM_REWEIGHT_LINEAR"),
            (Reweighting::Reciprocal, "DLM_REWEIGHT_RECIPROCAL"),
            (Reweighting::Constant, "DLM_REWEIGHT_CONSTANT"),
        ] {
            assert_eq!(reweighting_code(r) as usize, int(&h, name), "{name}");
        }
        assert_eq!(StepMode::TopK.code() as usize, int(&h, "DLM_MODE_TOPK"));
        assert_eq!(StepMode::Threshold.code() as usize, int(&h, "DLM_MODE_THRESHOLD"));
        // Every definition of the header is checked above: a new one needs its Rust twin here.
        assert_eq!(h.len(), 19, "kernels/contract.cuh gained or lost a definition: mirror it in contract.rs");
    }

    #[test]
    fn step_params_round_trip() {
        let s = StepParams::top_k(usize::MAX, 0xdead_beef_1234_5678, -0.75, 3..9);
        assert_eq!((s.k, s.stream(), s.scale(), s.window(), s.step_mode()), (i32::MAX, 0xdead_beef_1234_5678, -0.75, 3..9, StepMode::TopK));
        let t = StepParams::threshold(-0.25, 0..4);
        assert_eq!((t.cut(), t.window(), t.step_mode()), (-0.25, 0..4, StepMode::Threshold));
        let packed_steps = packed(&[s, StepParams::default()]).to_vec();
        assert_eq!(records::<StepParams>(&packed_steps), &[s, StepParams::default()]);
    }
}
