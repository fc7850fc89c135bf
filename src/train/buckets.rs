//! The buckets of gradients summed over the ranks while the backward pass goes on (as PyTorch
//! DDP's): gradients join the open bucket in the order the backward pass finishes them, and a
//! bucket is launched as soon as it holds at least the bucket size; whatever is left (the last
//! bucket, and any gradient the pass never reported) goes at the end, in index order. Every rank
//! forms the same buckets, because the pass reports the same parameters in the same order.

use anyhow::{bail, Result};

/// The bucket size `--bucket-mb` defaults to (PyTorch DDP's `bucket_cap_mb`).
pub const DEFAULT_BUCKET_MB: f64 = 25.0;

pub struct Buckets {
    cap: usize,
    /// Bytes of each gradient (f32), by index.
    bytes: Vec<usize>,
    /// Whether each gradient is in a bucket already (launched or open).
    taken: Vec<bool>,
    open: Vec<usize>,
    open_bytes: usize,
}

impl Buckets {
    /// Buckets of at least `cap` bytes over gradients of `bytes[i]` bytes each.
    pub fn new(cap: usize, bytes: Vec<usize>) -> Self {
        let taken = vec![false; bytes.len()];
        Buckets { cap, bytes, taken, open: Vec::new(), open_bytes: 0 }
    }

    /// `MiB` as bytes (at least one: a bucket of zero bytes would mean one per gradient anyway).
    pub fn cap_bytes(mib: f64) -> usize {
        ((mib * (1u64 << 20) as f64) as usize).max(1)
    }

    /// Adds the gradients `ready` (now final) and returns the buckets that became full, in order.
    pub fn ready(&mut self, ready: &[usize]) -> Result<Vec<Vec<usize>>> {
        let mut full = Vec::new();
        for &i in ready {
            match self.taken.get(i) {
                None => bail!("internal: gradient {i} reported ready, of {}", self.bytes.len()),
                Some(true) => bail!("internal: gradient {i} reported ready twice in one backward pass"),
                Some(false) => {}
            }
            self.taken[i] = true;
            self.open.push(i);
            self.open_bytes += self.bytes[i];
            if self.open_bytes >= self.cap {
                full.push(std::mem::take(&mut self.open));
                self.open_bytes = 0;
            }
        }
        Ok(full)
    }

    /// The last bucket: the open one, then every gradient never reported, in index order; `None`
    /// when nothing is left. The buckets start over (for the next step).
    pub fn rest(&mut self) -> Option<Vec<usize>> {
        let mut last = std::mem::take(&mut self.open);
        last.extend((0..self.taken.len()).filter(|&i| !self.taken[i]));
        self.taken.iter_mut().for_each(|t| *t = false);
        self.open_bytes = 0;
        (!last.is_empty()).then_some(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_is_launched_once_it_holds_the_cap_and_the_rest_goes_last() {
        // Gradients of 4, 4, 8, 2 and 6 bytes; buckets of at least 8 bytes.
        let mut b = Buckets::new(8, vec![4, 4, 8, 2, 6]);
        assert_eq!(b.ready(&[4]).unwrap(), Vec::<Vec<usize>>::new(), "6 bytes: still open");
        assert_eq!(b.ready(&[3, 2]).unwrap(), vec![vec![4, 3], vec![2]], "6 + 2 reaches 8; then 8 alone does");
        assert_eq!(b.ready(&[]).unwrap(), Vec::<Vec<usize>>::new());
        assert_eq!(b.rest(), Some(vec![0, 1]), "never reported: sent at the end, in index order");
        // The next step starts over: a step whose pass reports nothing sends everything at the end.
        assert_eq!(b.rest(), Some(vec![0, 1, 2, 3, 4]));
        assert_eq!(b.ready(&[4, 3]).unwrap(), vec![vec![4, 3]], "gradients are reported afresh each step");
    }

    #[test]
    fn exact_fits_close_at_once_and_a_huge_cap_makes_one_bucket() {
        let mut b = Buckets::new(8, vec![8, 4, 4]);
        assert_eq!(b.ready(&[0, 1, 2]).unwrap(), vec![vec![0], vec![1, 2]]);
        assert_eq!(b.rest(), None, "nothing left");
        let mut one = Buckets::new(Buckets::cap_bytes(25.0), vec![8, 4, 4]);
        assert!(one.ready(&[2, 1, 0]).unwrap().is_empty());
        assert_eq!(one.rest(), Some(vec![2, 1, 0]), "the open bucket keeps the order of the pass");
    }

    #[test]
    fn a_gradient_reported_twice_or_unknown_is_an_error() {
        let mut b = Buckets::new(100, vec![4, 4]);
        b.ready(&[1]).unwrap();
        assert!(b.ready(&[1]).unwrap_err().to_string().contains("twice"));
        assert!(b.ready(&[2]).unwrap_err().to_string().contains("gradient 2"));
        assert_eq!(Buckets::cap_bytes(0.0), 1);
        assert_eq!(Buckets::cap_bytes(1.0), 1 << 20);
    }
}
