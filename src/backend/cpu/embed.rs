//! Word + position + token-type embeddings, forward and the scatter-add backward.

use crate::backend::{EmbedGrads, EmbedShape, EmbedTables};
use rayon::prelude::*;

pub fn embed_fwd(ids: &[i32], pos_ids: &[i32], tables: EmbedTables<'_, [f32]>, out: &mut [f32], shape: EmbedShape) {
    let EmbedTables { word, pos, typ } = tables;
    let EmbedShape { tokens, hidden } = shape;
    out[..tokens * hidden].par_chunks_mut(hidden).enumerate().for_each(|(i, row)| {
        let w = &word[ids[i] as usize * hidden..][..hidden];
        let p = &pos[pos_ids[i] as usize * hidden..][..hidden];
        for c in 0..hidden {
            // Same association order as HF: (word + token_type) + position.
            row[c] = (w[c] + typ[c]) + p[c];
        }
    });
}

pub fn embed_bwd(ids: &[i32], pos_ids: &[i32], dout: &[f32], grads: EmbedGrads<'_, [f32]>, shape: EmbedShape, padding_idx: i32) {
    let EmbedGrads { word: dword, pos: dpos, typ: dtyp } = grads;
    let EmbedShape { tokens, hidden } = shape;
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
