//! Learning-rate schedules. `warmup-constant` is what the paper's runs effectively used: DeepSpeed
//! WarmupLR's log warmup over W steps, then constant, no decay (docs/method.md §3.1).

use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// lr·ln(s+1)/ln(W) for s < W (s = 0-based update index), then lr.
    WarmupConstant,
    /// Linear warmup to lr over W steps, then linear decay to 0 at the last step.
    Linear,
    /// Linear warmup over W steps, then lr·sqrt(W/(s+1)).
    InverseSqrt,
}

impl std::str::FromStr for Schedule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "warmup-constant" => Schedule::WarmupConstant,
            "linear" => Schedule::Linear,
            "inverse-sqrt" => Schedule::InverseSqrt,
            _ => bail!("unknown schedule `{s}` (expected warmup-constant, linear or inverse-sqrt)"),
        })
    }
}

impl Schedule {
    /// Learning rate of update `s` (0-based) of `total` updates with `warmup` warmup updates.
    pub fn lr(self, max_lr: f32, s: u64, warmup: u64, total: u64) -> f32 {
        let (s, w) = (s as f64, warmup as f64);
        let lr = max_lr as f64;
        let v = match self {
            Schedule::WarmupConstant => {
                if warmup > 1 && s < w {
                    lr * (s + 1.0).ln() / w.ln()
                } else {
                    lr
                }
            }
            Schedule::Linear => {
                if warmup > 0 && s < w {
                    lr * (s + 1.0) / w
                } else {
                    let rest = (total as f64 - w).max(1.0);
                    lr * (1.0 - (s - w) / rest).max(0.0)
                }
            }
            Schedule::InverseSqrt => {
                if warmup > 0 && s < w {
                    lr * (s + 1.0) / w
                } else {
                    lr * (w.max(1.0) / (s + 1.0)).sqrt()
                }
            }
        };
        v as f32
    }
}

/// The paper's warmup length: 1% of the run, at least one step.
pub fn default_warmup(total_steps: u64) -> u64 {
    (total_steps as f64 * 0.01).ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_constant_is_log_then_flat() {
        let s = Schedule::WarmupConstant;
        assert_eq!(s.lr(1.0, 0, 40, 4000), 0.0);
        assert!((s.lr(1.0, 39, 40, 4000) - 1.0).abs() < 1e-6);
        assert!((s.lr(1.0, 9, 40, 4000) - (10f32.ln() / 40f32.ln())).abs() < 1e-6);
        assert_eq!(s.lr(1.0, 3999, 40, 4000), 1.0);
    }

    #[test]
    fn linear_and_inverse_sqrt() {
        assert!((Schedule::Linear.lr(2.0, 4, 10, 110) - 1.0).abs() < 1e-6);
        assert!((Schedule::Linear.lr(2.0, 60, 10, 110) - 1.0).abs() < 1e-6);
        assert!((Schedule::InverseSqrt.lr(1.0, 99, 25, 1000) - 0.5).abs() < 1e-6);
    }
}
