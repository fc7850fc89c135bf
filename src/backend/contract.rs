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
}

impl CanvasMeta {
    /// i32 fields per record in the packed array (`DLM_CANVAS_FIELDS`).
    pub const FIELDS: usize = std::mem::size_of::<Self>() / std::mem::size_of::<i32>();
}

impl StepParams {
    /// i32 fields per record in the packed array (`DLM_STEP_FIELDS`).
    pub const FIELDS: usize = std::mem::size_of::<Self>() / std::mem::size_of::<i32>();

    pub fn new(k: usize, stream: u64, scale: f32) -> Self {
        let [stream_hi, stream_lo] = super::pack_seed(stream);
        StepParams { k: k.min(i32::MAX as usize) as i32, stream_hi, stream_lo, scale_bits: scale.to_bits() as i32 }
    }
    pub fn stream(&self) -> u64 {
        super::unpack_seed(&[self.stream_hi, self.stream_lo], 0)
    }
    pub fn scale(&self) -> f32 {
        f32::from_bits(self.scale_bits as u32)
    }
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
        // Every definition of the header is checked above: a new one needs its Rust twin here.
        assert_eq!(h.len(), 13, "kernels/contract.cuh gained or lost a definition: mirror it in contract.rs");
    }

    #[test]
    fn step_params_round_trip() {
        let s = StepParams::new(usize::MAX, 0xdead_beef_1234_5678, -0.75);
        assert_eq!((s.k, s.stream(), s.scale()), (i32::MAX, 0xdead_beef_1234_5678, -0.75));
        let packed_steps = packed(&[s, StepParams::default()]).to_vec();
        assert_eq!(records::<StepParams>(&packed_steps), &[s, StepParams::default()]);
    }
}
