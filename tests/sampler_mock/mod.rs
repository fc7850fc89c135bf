//! A test double for the sampler's `Denoiser`: fixed logits per (example, step, target slot),
//! picked with the CPU backend's `vocab_pick`, which is what `XlmR::pick` runs after its forward.
//! It also checks that the sampler only asks for target slots of well-formed canvases.

use dlm_engine::backend::cpu::sampler::vocab_pick;
use dlm_engine::backend::pack_gumbel;
use dlm_engine::backend::RowStats;
use dlm_engine::backend::VocabShape;
use dlm_engine::diffusion::{Denoiser, SpecialIds};
use dlm_engine::model::{Batch, PickOpts};

/// `logits(example, step, slot)`: the row of `vocab` logits the model "predicts" there.
pub type LogitsFn = Box<dyn Fn(usize, usize, usize) -> Vec<f32>>;

pub struct TableDenoiser {
    prompts: Vec<Vec<i32>>,
    lengths: Vec<usize>,
    special: SpecialIds,
    vocab: usize,
    logits: LogitsFn,
    step: usize,
    /// Number of `pick` calls and of `begin_step` calls so far.
    pub picks: usize,
    pub steps_begun: usize,
}

impl TableDenoiser {
    /// Examples are recognised by their second prompt token, which must be unique.
    pub fn new(prompts: &[Vec<i32>], lengths: &[usize], special: SpecialIds, vocab: usize, logits: LogitsFn) -> Self {
        for (i, p) in prompts.iter().enumerate() {
            assert!(p.len() >= 2, "mock: prompt {i} needs a second token to be recognised");
            assert!(prompts.iter().filter(|q| q[1] == p[1]).count() == 1, "mock: prompt {i}'s second token is not unique");
        }
        TableDenoiser { prompts: prompts.to_vec(), lengths: lengths.to_vec(), special, vocab, logits, step: 0, picks: 0, steps_begun: 0 }
    }

    fn example_of(&self, row: &[i32]) -> usize {
        let e = self.prompts.iter().position(|p| p[1] == row[1]).expect("mock: unknown canvas");
        let (p, l) = (self.prompts[e].len(), self.lengths[e]);
        assert_eq!(&row[..p], &self.prompts[e][..], "mock: canvas does not start with its prompt");
        assert_eq!(row[p + l], self.special.eos, "mock: canvas does not end with </s> after its target slots");
        assert!(row[p + l + 1..].iter().all(|&t| t == self.special.pad), "mock: canvas is not right-padded");
        e
    }
}

impl Denoiser for TableDenoiser {
    fn begin_step(&mut self, step: usize) {
        self.step = step;
        self.steps_begun += 1;
    }

    fn pick(&mut self, batch: &Batch, rows: &[i32], opts: &PickOpts) -> anyhow::Result<RowStats> {
        assert_eq!(opts.forbid, vec![self.special.mask], "mock: the sampler must forbid exactly <mask>");
        self.picks += 1;
        let mut buf = Vec::with_capacity(rows.len() * self.vocab);
        for &r in rows {
            let (b, t) = (r as usize / batch.seq, r as usize % batch.seq);
            let e = self.example_of(&batch.ids[b * batch.seq..(b + 1) * batch.seq]);
            let p = self.prompts[e].len();
            assert!(t >= p && t < p + self.lengths[e], "mock: row {r} is not a target slot");
            let row = (self.logits)(e, self.step, t - p);
            assert_eq!(row.len(), self.vocab);
            buf.extend(row);
        }
        let noise = opts.sample_seed.map(|s| pack_gumbel(&(0..rows.len() as u32).map(|i| (s, i)).collect::<Vec<_>>()));
        Ok(vocab_pick(
            &buf,
            VocabShape { rows: rows.len(), vocab: self.vocab, valid: self.vocab },
            &opts.forbid,
            opts.temperature,
            noise.as_ref().map(|(a, b)| (a.as_slice(), b.as_slice())),
        ))
    }
}
