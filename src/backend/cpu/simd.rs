//! Element-wise math the compiler can vectorise: branch-free `exp` and `erfc` in f32, and
//! `multiversion!`, which compiles a slice loop once for AVX-512, once for AVX2+FMA and once
//! portable, and picks the widest the CPU has at run time.
//!
//! The functions use only `+ − × ÷`, comparisons and bit casts, which Rust never contracts into
//! fused multiply-adds, so every version gives the same bits on every machine.

/// e^x to about 1 ulp for |x| < 87, 0 below −87.3, +inf above 88.7, NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so that n·ln2 is exact in the reduction.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let xc = x.clamp(-87.5, 88.8);
    // n = round(x·log2 e) by the 1.5·2^23 trick: the sum's low mantissa bits are n. (A float to
    // int `as` cast would not vectorise: Rust's saturating cast goes lane by lane.)
    const SHIFT: f32 = 12_582_912.0;
    let shifted = xc * LOG2E + SHIFT;
    let n = shifted - SHIFT;
    let ni = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // e^r on |r| <= ln2/2: Taylor to degree 7 (truncation below 2e-9 relative).
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n by the exponent bits, in two halves so that n down to −126−25 stays representable.
    let half = ni >> 1;
    let n = ni;
    let two_pow = |e: i32| f32::from_bits(((e + 127).clamp(0, 255) as u32) << 23);
    let y = p * two_pow(half) * two_pow(n - half);
    if x.is_nan() {
        x
    } else if x < -87.5 {
        0.0
    } else if x > 88.8 {
        f32::INFINITY
    } else {
        y
    }
}

/// erfc(x), relative error below 4e-7 + x²·1.2e-7 (the Chebyshev fit of Numerical Recipes' `erfcc`,
/// good to 1.2e-7, evaluated in f32).
#[inline(always)]
pub fn erfc(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07 + t * (-1.135_204 + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * exp(-z * z + poly);
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Defines `fn $name($args)` that runs `$body` (a loop over slices) compiled for AVX-512,
/// for AVX2+FMA, or portable, whichever the CPU supports (checked once per call; the check is a
/// cached load).
macro_rules! multiversion {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
                    // SAFETY: the CPU has the features v4 is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features v3 is compiled for.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

multiversion! {
    /// The maximum of `xs` and Σ exp(x − max) (f32 exponentials, summed in f64), in 16 lanes.
    fn max_and_sum_exp_into(xs: &[f32], out: &mut (f32, f64)) {
        let mut m = [f32::NEG_INFINITY; 16];
        let chunks = xs.chunks_exact(16);
        let tail = chunks.remainder();
        for c in chunks {
            for l in 0..16 {
                m[l] = if c[l] > m[l] { c[l] } else { m[l] };
            }
        }
        let mx = tail.iter().chain(m.iter()).fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
        let mut acc = [0.0f64; 16];
        let chunks = xs.chunks_exact(16);
        for c in chunks {
            for l in 0..16 {
                acc[l] += exp(c[l] - mx) as f64;
            }
        }
        let s = tail.iter().map(|&x| exp(x - mx) as f64).sum::<f64>() + acc.iter().sum::<f64>();
        *out = (mx, s);
    }
}

pub fn max_and_sum_exp(xs: &[f32]) -> (f32, f64) {
    let mut out = (f32::NEG_INFINITY, 0.0);
    max_and_sum_exp_into(xs, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulps_of_the_library_and_handles_the_edges() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn erfc_is_within_its_fit_of_the_library() {
        let mut x = -6.0f32;
        while x < 9.0 {
            let (got, want) = (erfc(x) as f64, libm::erfc(x as f64));
            // The fit is good to 1.2e-7 and f32 rounding adds about as much (2 − r for x < 0);
            // rounding the exponent (about −x²) in f32 adds up to x²·2^-23 through the exponential.
            let tol = 4e-7 + (x as f64).powi(2) * 1.2e-7;
            assert!((got - want).abs() <= tol * want.abs() + 1e-37, "erfc({x}) = {got} vs {want}");
            x += 0.0071;
        }
    }

    multiversion! {
        /// Doubles through the dispatcher.
        pub fn double_all(xs: &mut [f32]) {
            for x in xs.iter_mut() {
                *x *= 2.0;
            }
        }
    }

    #[test]
    fn the_dispatcher_runs_the_body() {
        let mut v = vec![1.5f32; 37];
        double_all(&mut v);
        assert!(v.iter().all(|&x| x == 3.0));
    }
}
