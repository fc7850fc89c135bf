//! `--device cpu|cuda[:N]` and running a job on the chosen backend.

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use anyhow::{bail, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => bail!("unknown device `{s}` (expected cpu, cuda or cuda:N)"),
            },
        }
    }
}

/// Work that can run on any backend: commands implement this once and `dispatch` picks the
/// backend at run time.
pub trait Job {
    type Out;
    fn run<B: Backend>(self, backend: B) -> Result<Self::Out>;
}

/// The CPU worker count for `--threads N`: 0 means one per core, and more workers than cores
/// are never started (that only makes the workers wait on each other); a cap is said once.
pub fn worker_threads(requested: usize) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    match requested {
        0 => cores,
        n if n > cores => {
            eprintln!("--threads {n}: capped to {cores}, the number of cores here");
            cores
        }
        n => n,
    }
}

/// Sizes the CPU worker pool for `--threads` once per process, before anything runs on it; every
/// command that computes calls this first (`train`, `sample`, `fill-mask`, `bench`).
pub fn set_threads(requested: usize) {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| CpuBackend::set_threads(worker_threads(requested)));
}

/// Runs `job` on `device`; `threads` sizes the CPU worker pool (0 = one per core).
pub fn dispatch<J: Job>(device: &Device, threads: usize, job: J) -> Result<J::Out> {
    set_threads(threads);
    match device {
        Device::Cpu => job.run(CpuBackend::new()),
        Device::Cuda(n) => crate::backend::cuda::open(*n).and_then(|b| job.run(b)),
    }
}
