//! Decoding strategies (docs/method.md §4.1, §4.3): their string form, the unmasking schedule and the
//! number of target slots that stay masked after a step.

pub use crate::rdm::remask::Remask;
use std::fmt;
use std::str::FromStr;

/// The forms `Strategy::from_str` accepts, quoted in its error message.
pub const VALID_FORMS: &str = "reparam-{uncond,cond}-{deterministic,stochastic<c>}-{cosine,linear} \
(e.g. reparam-uncond-deterministic-cosine, reparam-cond-stochastic1.0-linear), threshold, cmlm, ar";

/// How fast the masked share falls: `rate(s)` is the share of target slots still masked after step s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    Cosine,
    Linear,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Strategy {
    /// RDM's reparameterized decoding. `noise_scale` is `c` of `stochastic<c>` (Gumbel noise of
    /// scale `c·rate` added to the ranked scores); `None` is `deterministic`.
    Reparam { remask: Remask, noise_scale: Option<f64>, schedule: Schedule },
    /// Every step commits each masked slot whose confidence reaches `SamplerConfig::threshold`
    /// (at least the most confident one) and never re-masks; decoding stops when no slot is
    /// masked, so K is not used (Fast-dLLM's parallel decoding).
    Threshold,
    /// Each masked slot is unmasked with probability 1/(K − (s−1)); nothing is re-masked.
    Cmlm,
    /// The first remaining `<mask>` is filled, one slot per step, left to right.
    Ar,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy::Reparam { remask: Remask::Uncond, noise_scale: None, schedule: Schedule::Cosine }
    }
}

impl Schedule {
    /// The share of target slots that stays masked after step `step` (1-based) of `steps`,
    /// computed in f64 in the reference's order of operations (`1 − s/K`, `cos(s/K · π · ½)`).
    pub fn rate(self, step: usize, steps: usize) -> f64 {
        let t = step as f64 / steps as f64;
        match self {
            Schedule::Linear => 1.0 - t,
            Schedule::Cosine => (t * std::f64::consts::PI * 0.5).cos(),
        }
    }
}

/// `k = trunc(f32(N) · rate)`: how many of the `n` target slots stay masked. The reference
/// multiplies a float32 count by the rate, so the product is rounded to f32 before truncation.
pub fn stay_masked(n: usize, rate: f64) -> usize {
    // `as usize` truncates toward zero and saturates a negative product at 0.
    ((n as f32) * (rate as f32)) as usize
}

/// What ranks the slots (the top-k strategies) and what the threshold is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Confidence {
    /// The pick's log-prob (the paper's); the threshold compares its probability.
    #[default]
    Prob,
    /// p(top1) − p(top2) of the slot's distribution.
    Margin,
    /// −H of the slot's distribution; the threshold compares exp(−H), which is 1 for a certain
    /// slot and 1/V for a uniform one.
    Entropy,
    /// A uniform random number per slot and step: a random unmasking order.
    Random,
}

impl Confidence {
    pub const NAMES: &str = "prob, margin, entropy, random";

    /// The threshold τ (on the 0..1 scale of the flag) in the scale of the ranked values: ln τ
    /// for the log-prob and the negative entropy, τ itself for the margin and random numbers.
    pub fn threshold_cut(self, threshold: f32) -> f32 {
        match self {
            Confidence::Prob | Confidence::Entropy => threshold.ln(),
            Confidence::Margin | Confidence::Random => threshold,
        }
    }
}

impl FromStr for Confidence {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "prob" => Confidence::Prob,
            "margin" => Confidence::Margin,
            "entropy" => Confidence::Entropy,
            "random" => Confidence::Random,
            _ => anyhow::bail!("unknown confidence {s:?}; valid: {}", Confidence::NAMES),
        })
    }
}

fn parse_error(s: &str, why: &str) -> anyhow::Error {
    anyhow::anyhow!("invalid decoding strategy {s:?}: {why}; valid forms: {VALID_FORMS}")
}

impl FromStr for Strategy {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "threshold" => return Ok(Strategy::Threshold),
            "cmlm" => return Ok(Strategy::Cmlm),
            "ar" => return Ok(Strategy::Ar),
            _ => {}
        }
        let parts: Vec<&str> = s.split('-').collect();
        if parts.len() != 4 || parts[0] != "reparam" {
            return Err(parse_error(s, "expected `cmlm`, `ar` or four `-`-separated parts starting with `reparam`"));
        }
        let remask = match parts[1] {
            "uncond" => Remask::Uncond,
            "cond" => Remask::Cond,
            other => return Err(parse_error(s, &format!("unknown re-masking rule {other:?}"))),
        };
        let noise_scale = match parts[2] {
            "deterministic" => None,
            mode => {
                let c = mode.strip_prefix("stochastic").ok_or_else(|| parse_error(s, &format!("unknown top-k mode {mode:?}")))?;
                let c: f64 = c
                    .parse()
                    .map_err(|_| parse_error(s, &format!("`stochastic` needs a noise scale such as stochastic1.0, got {mode:?}")))?;
                if !c.is_finite() || c < 0.0 {
                    return Err(parse_error(s, &format!("the noise scale must be finite and >= 0, got {c}")));
                }
                Some(c)
            }
        };
        let schedule = match parts[3] {
            "cosine" => Schedule::Cosine,
            "linear" => Schedule::Linear,
            other => return Err(parse_error(s, &format!("unknown schedule {other:?}"))),
        };
        Ok(Strategy::Reparam { remask, noise_scale, schedule })
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Threshold => write!(f, "threshold"),
            Strategy::Cmlm => write!(f, "cmlm"),
            Strategy::Ar => write!(f, "ar"),
            Strategy::Reparam { remask, noise_scale, schedule } => {
                let remask = match remask {
                    Remask::Uncond => "uncond",
                    Remask::Cond => "cond",
                };
                let schedule = match schedule {
                    Schedule::Cosine => "cosine",
                    Schedule::Linear => "linear",
                };
                match noise_scale {
                    None => write!(f, "reparam-{remask}-deterministic-{schedule}"),
                    Some(c) => write!(f, "reparam-{remask}-stochastic{c:?}-{schedule}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_valid_form_and_prints_it_back() {
        for s in [
            "reparam-uncond-deterministic-cosine",
            "reparam-cond-deterministic-linear",
            "reparam-uncond-stochastic1.0-linear",
            "reparam-cond-stochastic0.5-cosine",
            "cmlm",
            "ar",
            "threshold",
        ] {
            let st: Strategy = s.parse().unwrap();
            assert_eq!(st.to_string(), s);
        }
        assert_eq!(
            "reparam-uncond-stochastic2-cosine".parse::<Strategy>().unwrap(),
            Strategy::Reparam { remask: Remask::Uncond, noise_scale: Some(2.0), schedule: Schedule::Cosine }
        );
    }

    #[test]
    fn rejects_invalid_forms_and_lists_the_valid_ones() {
        for s in [
            "",
            "reparam",
            "reparam-uncond-deterministic",
            "reparam-uncond-deterministic-cosine-x",
            "reparam-maybe-deterministic-cosine",
            "reparam-uncond-stochastic-cosine",
            "reparam-uncond-stochasticx-cosine",
            "reparam-uncond-stochastic-1-cosine",
            "reparam-uncond-stochasticinf-cosine",
            "reparam-uncond-greedy-cosine",
            "reparam-uncond-deterministic-sqrt",
            "Reparam-uncond-deterministic-cosine",
            "CMLM",
            "mask-predict",
        ] {
            let e = s.parse::<Strategy>().unwrap_err().to_string();
            assert!(e.contains("valid forms") && e.contains("cmlm") && e.contains("reparam-"), "{s:?}: {e}");
        }
    }

    #[test]
    fn stay_masked_matches_hand_computed_counts() {
        // N = 7, K = 4, cosine: 7·cos(π/8) = 6.47, 7·cos(π/4) = 4.95, 7·cos(3π/8) = 2.68, ~0.
        let k: Vec<usize> = (1..=4).map(|s| stay_masked(7, Schedule::Cosine.rate(s, 4))).collect();
        assert_eq!(k, [6, 4, 2, 0]);
        // Linear: 5.25, 3.5, 1.75, 0.
        let k: Vec<usize> = (1..=4).map(|s| stay_masked(7, Schedule::Linear.rate(s, 4))).collect();
        assert_eq!(k, [5, 3, 1, 0]);
        // f32 product: 10 · f32(0.7) rounds to exactly 7.0 in f32, so k = 7 (not 6).
        assert_eq!(stay_masked(10, Schedule::Linear.rate(3, 10)), 7);
        assert_eq!(stay_masked(0, 0.9), 0);
    }
}
