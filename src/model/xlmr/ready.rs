//! Which parameters' gradients a backward pass has finished, told as it goes, so that a caller can
//! start summing them over the ranks of a data-parallel run while the pass goes on down the
//! encoder. The model knows nothing of how the sums are done (it may not import `dist`).

use super::*;

/// Called with the backend, the trainable gradients (`grads()`) and the indices into them of the
/// gradients that no later op of this backward pass adds to. Every trainable gradient of the
/// backbone is reported exactly once per pass, in the order of `XlmR::grad_ready_groups`.
pub type GradsReady<'a, B> = &'a mut dyn FnMut(&B, &mut [<B as Backend>::Buf], &[usize]) -> Result<()>;

/// The groups of a backbone backward pass, in the order it finishes them: the head (with an
/// untied decoder), then each encoder layer going down (the top one with the final LayerNorm, if
/// any), then the embeddings (with the word embeddings, which a tied decoder also adds to).
pub(super) struct ReadyGroups {
    pub(super) head: Vec<usize>,
    /// By layer index (layer `li` finishes after layers above it).
    pub(super) layers: Vec<Vec<usize>>,
    pub(super) embeddings: Vec<usize>,
}

impl<B: Backend> Params<B> {
    pub(super) fn ready_groups(&self) -> ReadyGroups {
        let at = self.trainable.start;
        let lin = |l: Linear| [l.w - at, l.b - at];
        let norm = |n: Norm| [n.g - at, n.b - at];
        let mut head: Vec<usize> = lin(self.ix.head_dense).into_iter().chain(norm(self.ix.head_ln)).collect();
        head.push(self.ix.head_bias - at);
        if let Some(d) = self.ix.decoder.filter(|&d| d != self.ix.word) {
            head.push(d - at);
        }
        let top = self.layers.len().saturating_sub(1);
        let layers = (self.layers.iter().enumerate())
            .map(|(li, l)| {
                let mut g: Vec<usize> = [l.q, l.k, l.v, l.o, l.ffn_in, l.ffn_out].into_iter().flat_map(lin).collect();
                g.extend(norm(l.attn_ln).into_iter().chain(norm(l.ffn_ln)));
                if li == top {
                    g.extend(self.ix.final_ln.into_iter().flat_map(norm));
                }
                g
            })
            .collect();
        let mut embeddings = vec![self.ix.word - at, self.ix.pos - at, self.ix.typ - at];
        embeddings.extend(self.ix.emb_ln.into_iter().flat_map(norm));
        ReadyGroups { head, layers, embeddings }
    }
}

impl<B: Backend> XlmR<B> {
    /// The groups a backbone backward pass reports to its `GradsReady`, in order: what a rank
    /// with no rows of its own (no backward pass) replays so that every rank starts the same sums.
    pub fn grad_ready_groups(&self) -> Vec<Vec<usize>> {
        let g = self.p.ready_groups();
        std::iter::once(g.head).chain(g.layers.into_iter().rev()).chain(std::iter::once(g.embeddings)).collect()
    }
}

/// Where a backward pass stands, for `Reporter::report`.
#[derive(Clone, Copy)]
pub(super) enum Done {
    Head,
    Layer(usize),
    Embeddings,
}

/// A backward pass's `GradsReady`, if it has one, with the groups it reports.
pub(super) struct Reporter<'a, B: Backend> {
    ready: Option<(GradsReady<'a, B>, ReadyGroups)>,
}

impl<'a, B: Backend> Reporter<'a, B> {
    pub(super) fn new(ready: Option<GradsReady<'a, B>>, p: &Params<B>) -> Self {
        Reporter { ready: ready.map(|f| (f, p.ready_groups())) }
    }

    pub(super) fn report(&mut self, be: &B, grads: &mut [B::Buf], done: Done) -> Result<()> {
        let Some((f, g)) = self.ready.as_mut() else { return Ok(()) };
        let group = match done {
            Done::Head => &g.head,
            Done::Layer(li) => &g.layers[li],
            Done::Embeddings => &g.embeddings,
        };
        f(be, grads, group)
    }
}
