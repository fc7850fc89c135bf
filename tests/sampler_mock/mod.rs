//! A test double for the sampler's `Denoiser`: fixed logits per (example, step, target slot),
//! picked with the CPU backend's `vocab_pick`, which is what `XlmR::pick` runs after its forward.
//! It also checks that the sampler only asks for target slots of well-formed canvases.

use dlm_engine::backend::cpu::sampler::{cfg_combine, vocab_confidence, vocab_pick};
use dlm_engine::backend::pack_gumbel;
use dlm_engine::backend::RowStats;
use dlm_engine::backend::VocabShape;
use dlm_engine::diffusion::{Denoiser, PickGroup, SpecialIds};
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
    /// The logits of the canvases with the prompt masked, for classifier-free guidance.
    pub uncond: Option<LogitsFn>,
    /// The target slots scored at each step, as (example, slot).
    pub scored: Vec<Vec<(usize, usize)>>,
    /// `active_from` of every cached step.
    pub cached: Vec<Vec<usize>>,
}

impl TableDenoiser {
    /// Examples are recognised by their second prompt token, which must be unique.
    pub fn new(prompts: &[Vec<i32>], lengths: &[usize], special: SpecialIds, vocab: usize, logits: LogitsFn) -> Self {
        for (i, p) in prompts.iter().enumerate() {
            assert!(p.len() >= 2, "mock: prompt {i} needs a second token to be recognised");
            assert!(prompts.iter().filter(|q| q[1] == p[1]).count() == 1, "mock: prompt {i}'s second token is not unique");
        }
        TableDenoiser {
            prompts: prompts.to_vec(),
            lengths: lengths.to_vec(),
            special,
            vocab,
            logits,
            step: 0,
            picks: 0,
            steps_begun: 0,
            uncond: None,
            scored: Vec::new(),
            cached: Vec::new(),
        }
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
        self.scored.push(Vec::new());
    }

    fn pick_groups_cached(&mut self, batch: &Batch, groups: &[PickGroup], active_from: &[usize]) -> anyhow::Result<Vec<RowStats>> {
        self.cached.push(active_from.to_vec());
        self.pick_groups(batch, groups)
    }

    fn pick(&mut self, batch: &Batch, rows: &[i32], opts: &PickOpts) -> anyhow::Result<RowStats> {
        assert_eq!(opts.forbid, vec![self.special.mask], "mock: the sampler must forbid exactly <mask>");
        self.picks += 1;
        let mut buf = Vec::with_capacity(rows.len() * self.vocab);
        let mut unc = Vec::new();
        // With guidance the batch holds every canvas twice, the second time with its prompt masked.
        let half = if opts.cfg_scale.is_some() { batch.batch / 2 } else { batch.batch };
        for &r in rows {
            let (b, t) = (r as usize / batch.seq, r as usize % batch.seq);
            assert!(b < half, "mock: row {r} is not in the conditional half of the batch");
            let row_ids = &batch.ids[b * batch.seq..(b + 1) * batch.seq];
            let e = self.example_of(row_ids);
            let p = self.prompts[e].len();
            assert!(t >= p && t < p + self.lengths[e], "mock: row {r} is not a target slot");
            self.scored.last_mut().expect("mock: a pick before begin_step").push((e, t - p));
            let row = (self.logits)(e, self.step, t - p);
            assert_eq!(row.len(), self.vocab);
            buf.extend(row);
            if opts.cfg_scale.is_some() {
                let u = &batch.ids[(b + half) * batch.seq..(b + half + 1) * batch.seq];
                assert_eq!(u[0], self.special.bos, "mock: the unconditional row keeps <s>");
                assert!(u[1..p].iter().all(|&x| x == self.special.mask), "mock: the unconditional row's prompt must be masked");
                assert_eq!(&u[p..], &row_ids[p..], "mock: the unconditional row's target slots must be the canvas's");
                unc.extend((self.uncond.as_ref().expect("mock: guidance without unconditional logits"))(e, self.step, t - p));
            }
        }
        let shape = VocabShape { rows: rows.len(), vocab: self.vocab, valid: self.vocab };
        if let Some(scale) = opts.cfg_scale {
            buf.extend(unc);
            cfg_combine(&mut buf, rows.len(), self.vocab, scale);
            buf.truncate(rows.len() * self.vocab);
        }
        let noise = opts.sample_seed.map(|s| pack_gumbel(&(0..rows.len() as u32).map(|i| (s, i)).collect::<Vec<_>>()));
        let mut st = vocab_pick(&buf, shape, &opts.forbid, opts.temperature, noise.as_ref().map(|(a, b)| (a.as_slice(), b.as_slice())));
        if let Some(kind) = opts.confidence {
            st.confidence = vocab_confidence(&buf, shape, &opts.forbid, kind);
        }
        Ok(st)
    }
}
