//! Counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
//!
//! Why counter-based: a value is a pure function of (seed, stream, index), so
//! - the backward pass regenerates a dropout mask instead of storing it,
//! - the CUDA kernels draw exactly the numbers the CPU backend draws,
//! - the whole RNG state of a training run is three integers, saved in checkpoints for exact resume.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = (a as u64) * (b as u64);
    ((p >> 32) as u32, p as u32)
}

/// The Philox4x32 block function with 10 rounds.
#[inline]
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Lanes of Philox blocks computed side by side (so that the loop vectorises): blocks `first`,
/// `first + 1`, … `first + LANES − 1` of stream (`seed`, `stream`); `out[q][l]` is number `q` of
/// block `first + l`, i.e. number `4·(first + l) + q` of the stream.
pub const LANES: usize = 16;

#[inline(always)]
pub fn philox4x32_lanes(first: u64, stream: u64, seed: u64) -> [[u32; LANES]; 4] {
    let (mut c0, mut c1) = ([0u32; LANES], [0u32; LANES]);
    for l in 0..LANES {
        let b = first.wrapping_add(l as u64);
        c0[l] = b as u32;
        c1[l] = (b >> 32) as u32;
    }
    let (mut c2, mut c3) = ([stream as u32; LANES], [(stream >> 32) as u32; LANES]);
    let (mut k0, mut k1) = (seed as u32, (seed >> 32) as u32);
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        for l in 0..LANES {
            let (hi0, lo0) = mulhilo(M0, c0[l]);
            let (hi1, lo1) = mulhilo(M1, c2[l]);
            let (n0, n2) = (hi1 ^ c1[l] ^ k0, hi0 ^ c3[l] ^ k1);
            c0[l] = n0;
            c1[l] = lo1;
            c2[l] = n2;
            c3[l] = lo0;
        }
    }
    [c0, c1, c2, c3]
}

/// Uniform u32 number `idx` of the stream (`seed`, `stream`).
#[inline]
pub fn philox_u32(seed: u64, stream: u64, idx: u64) -> u32 {
    let block = idx >> 2;
    let out = philox4x32([block as u32, (block >> 32) as u32, stream as u32, (stream >> 32) as u32], [seed as u32, (seed >> 32) as u32]);
    out[(idx & 3) as usize]
}

/// Uniform in [0, 1) from the top 24 bits of `r` (exactly representable in f32; the kernels'
/// `uniform_from_u32` computes the same value).
#[inline(always)]
pub fn uniform_from_u32(r: u32) -> f32 {
    (r >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Uniform in [0, 1) with 24 random bits: number `idx` of the stream through `uniform_from_u32`.
#[inline]
pub fn philox_uniform(seed: u64, stream: u64, idx: u64) -> f32 {
    uniform_from_u32(philox_u32(seed, stream, idx))
}

/// Gumbel(0,1) noise from the same stream: `-ln(-ln(u))` with `u` kept inside (0, 1).
#[inline]
pub fn philox_gumbel(seed: u64, stream: u64, idx: u64) -> f32 {
    let u = ((philox_u32(seed, stream, idx) >> 8) as f32 + 0.5) * (1.0 / 16_777_216.0);
    -(-u.ln()).ln()
}

/// A sequential generator over one Philox stream. Its whole state is `(seed, stream, counter)`,
/// which checkpoints save so that a resumed run draws the same numbers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rng {
    pub seed: u64,
    pub stream: u64,
    pub counter: u64,
}

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Self {
        Rng { seed, stream, counter: 0 }
    }

    pub fn next_u32(&mut self) -> u32 {
        let v = philox_u32(self.seed, self.stream, self.counter);
        self.counter += 1;
        v
    }

    pub fn next_u64(&mut self) -> u64 {
        ((self.next_u32() as u64) << 32) | self.next_u32() as u64
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        let v = philox_uniform(self.seed, self.stream, self.counter);
        self.counter += 1;
        v
    }

    /// Uniform in [0, 1) with 53 bits, for decisions that must not be biased at f32 resolution.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `lo..=hi` (unbiased, by rejection).
    pub fn int_in(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        let span = hi - lo + 1;
        let zone = u64::MAX - (u64::MAX % span);
        loop {
            let v = self.next_u64();
            if v < zone {
                return lo + v % span;
            }
        }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.int_in(0, i as u64) as usize;
            xs.swap(i, j);
        }
    }

    /// Standard normal (Box–Muller), for weight initialisation.
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform_f64().max(1e-300);
        let u2 = self.uniform_f64();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answer() {
        // Known-answer vectors from the Random123 distribution (kat_vectors, philox4x32_10).
        assert_eq!(philox4x32([0, 0, 0, 0], [0, 0]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32([0xffffffff; 4], [0xffffffff, 0xffffffff]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniform_mean_and_range() {
        let mut r = Rng::new(7, 3);
        let n = 100_000;
        let mut s = 0.0f64;
        for _ in 0..n {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            s += u as f64;
        }
        assert!((s / n as f64 - 0.5).abs() < 0.01);
    }

    #[test]
    fn int_in_covers_range_and_state_resumes() {
        let mut r = Rng::new(1, 0);
        let mut seen = [false; 6];
        for _ in 0..200 {
            seen[(r.int_in(1, 6) - 1) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        let snapshot = r.clone();
        let a: Vec<u32> = (0..5).map(|_| r.next_u32()).collect();
        let mut r2 = snapshot;
        let b: Vec<u32> = (0..5).map(|_| r2.next_u32()).collect();
        assert_eq!(a, b);
    }

    #[test]
    #[allow(clippy::needless_range_loop)] // lane l is block first + l
    fn lanes_are_the_blocks_side_by_side() {
        for (first, stream, seed) in [(0u64, 0u64, 0u64), (u32::MAX as u64 - 3, 7, 99), (123_456_789, u64::MAX, 0xdead_beef)] {
            let lanes = philox4x32_lanes(first, stream, seed);
            for l in 0..LANES {
                let b = first + l as u64;
                let one =
                    philox4x32([b as u32, (b >> 32) as u32, stream as u32, (stream >> 32) as u32], [seed as u32, (seed >> 32) as u32]);
                for q in 0..4 {
                    assert_eq!(lanes[q][l], one[q], "block {b} number {q}");
                }
            }
        }
    }
}
