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

/// Runs `job` on `device`; `threads` sizes the CPU worker pool (0 = one per core).
pub fn dispatch<J: Job>(device: &Device, threads: usize, job: J) -> Result<J::Out> {
    CpuBackend::set_threads(threads);
    match device {
        Device::Cpu => job.run(CpuBackend::new()),
        Device::Cuda(n) => crate::backend::cuda::open(*n).and_then(|b| job.run(b)),
    }
}
