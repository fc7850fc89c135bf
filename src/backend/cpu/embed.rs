//! Word + position + token-type embeddings, forward and the scatter-add backward.

use rayon::prelude::*;

#[allow(clippy::too_many_arguments)]
pub fn embed_fwd(ids: &[i32], pos_ids: &[i32], word: &[f32], pos: &[f32], typ: &[f32], out: &mut [f32], tokens: usize, hidden: usize) {
    out[..tokens * hidden].par_chunks_mut(hidden).enumerate().for_each(|(i, row)| {
        let w = &word[ids[i] as usize * hidden..][..hidden];
        let p = &pos[pos_ids[i] as usize * hidden..][..hidden];
        for c in 0..hidden {
            // Same association order as HF: (word + token_type) + position.
            row[c] = (w[c] + typ[c]) + p[c];
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub fn embed_bwd(
    ids: &[i32],
    pos_ids: &[i32],
    dout: &[f32],
    dword: &mut [f32],
    dpos: &mut [f32],
    dtyp: &mut [f32],
    tokens: usize,
    hidden: usize,
    padding_idx: i32,
) {
    for i in 0..tokens {
        let g = &dout[i * hidden..][..hidden];
        for c in 0..hidden {
            dtyp[c] += g[c];
        }
        if ids[i] != padding_idx {
            let w = &mut dword[ids[i] as usize * hidden..][..hidden];
            w.iter_mut().zip(g).for_each(|(a, b)| *a += b);
        }
        if pos_ids[i] != padding_idx {
            let p = &mut dpos[pos_ids[i] as usize * hidden..][..hidden];
            p.iter_mut().zip(g).for_each(|(a, b)| *a += b);
        }
    }
}
