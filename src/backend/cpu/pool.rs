//! Mean pooling over the real rows of each sequence (the length predictor's pooling,
//! docs/method.md §5.1), in f32.

use crate::backend::PoolShape;
use rayon::prelude::*;

/// Checks the lengths of a pooling call: `seq_buf` holds `[batch, seq, cols]`, `mask` `[batch, seq]`,
/// `pooled` `[batch, cols]`.
pub fn check(seq_buf: usize, mask: usize, pooled: usize, s: PoolShape) -> anyhow::Result<()> {
    let ok = seq_buf == s.batch * s.seq * s.cols && mask == s.batch * s.seq && pooled == s.batch * s.cols;
    anyhow::ensure!(ok, "mean pooling {s:?}: buffers of {seq_buf}, {mask} and {pooled} values");
    Ok(())
}

/// The real rows of sequence `b` and 1 / their count (0 when there is none).
fn real_rows(key_mask: &[i32], b: usize, seq: usize) -> (impl Iterator<Item = usize> + '_, f32) {
    let m = &key_mask[b * seq..(b + 1) * seq];
    let n = m.iter().filter(|&&k| k != 0).count();
    let inv = if n == 0 { 0.0 } else { 1.0 / n as f32 };
    (m.iter().enumerate().filter(|(_, &k)| k != 0).map(|(s, _)| s), inv)
}

/// `out[b] = Σ_{real s} x[b, s] / count_b`: summed in order of s, then scaled.
pub fn mean_pool_fwd(x: &[f32], key_mask: &[i32], out: &mut [f32], s: PoolShape) {
    out.par_chunks_mut(s.cols).enumerate().for_each(|(b, o)| {
        o.fill(0.0);
        let (rows, inv) = real_rows(key_mask, b, s.seq);
        for r in rows {
            let xr = &x[(b * s.seq + r) * s.cols..][..s.cols];
            for (acc, &v) in o.iter_mut().zip(xr) {
                *acc += v;
            }
        }
        for v in o.iter_mut() {
            *v *= inv;
        }
    });
}

/// `dx[b, s] = dout[b] / count_b` at real rows, 0 elsewhere.
pub fn mean_pool_bwd(dout: &[f32], key_mask: &[i32], dx: &mut [f32], s: PoolShape) {
    dx.par_chunks_mut(s.seq * s.cols).enumerate().for_each(|(b, d)| {
        let m = &key_mask[b * s.seq..(b + 1) * s.seq];
        let (_, inv) = real_rows(key_mask, b, s.seq);
        let g = &dout[b * s.cols..(b + 1) * s.cols];
        for (r, row) in d.chunks_mut(s.cols).enumerate() {
            if m[r] != 0 {
                for (o, &v) in row.iter_mut().zip(g) {
                    *o = v * inv;
                }
            } else {
                row.fill(0.0);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_only_real_rows_and_spreads_the_gradient_back() {
        let s = PoolShape { batch: 2, seq: 3, cols: 2 };
        let x = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0, 5.0, 6.0, 100.0, 100.0, 100.0, 100.0];
        let mask = [1, 1, 0, 1, 0, 0];
        let mut out = vec![f32::NAN; 4];
        mean_pool_fwd(&x, &mask, &mut out, s);
        assert_eq!(out, [2.0, 3.0, 5.0, 6.0]);
        let mut dx = vec![f32::NAN; 12];
        mean_pool_bwd(&[2.0, 4.0, 1.0, 3.0], &mask, &mut dx, s);
        assert_eq!(dx, [1.0, 2.0, 1.0, 2.0, 0.0, 0.0, 1.0, 3.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
