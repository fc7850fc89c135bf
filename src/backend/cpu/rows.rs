//! Row moves for the LM head's rows: the CPU twins of kernels/rows.cu's gather and scatter (its
//! column sums are part of cpu/linear.rs's bias gradient).

/// `out[r] = x[rows[r]]` for the first `n_rows` rows of `cols`.
pub fn gather_rows(x: &[f32], rows: &[i32], out: &mut [f32], n_rows: usize, cols: usize) {
    for (r, &src) in rows[..n_rows].iter().enumerate() {
        out[r * cols..][..cols].copy_from_slice(&x[src as usize * cols..][..cols]);
    }
}

/// `dx[rows[r]] += dout[r]` (rows are distinct).
pub fn scatter_add_rows(dout: &[f32], rows: &[i32], dx: &mut [f32], n_rows: usize, cols: usize) {
    for (r, &dst) in rows[..n_rows].iter().enumerate() {
        let d = &mut dx[dst as usize * cols..][..cols];
        for (a, b) in d.iter_mut().zip(&dout[r * cols..][..cols]) {
            *a += b;
        }
    }
}

/// `out[rows[r]] = x[r]` (rows are distinct).
pub fn scatter_rows(x: &[f32], rows: &[i32], out: &mut [f32], n_rows: usize, cols: usize) {
    for (r, &dst) in rows[..n_rows].iter().enumerate() {
        out[dst as usize * cols..][..cols].copy_from_slice(&x[r * cols..][..cols]);
    }
}
