//! Where a `train` process runs in a data-parallel run: its rank, its GPU and the rendezvous with
//! the other ranks (`train --gpus`, or torchrun's variables; docs/distributed.md).

use super::device::Device;
use crate::dist::control::{self, Control};
use crate::dist::nccl::{self, UniqueId};
use crate::dist::{launch, RankEnv};
use anyhow::{bail, Result};

/// This process's place in the run.
pub struct Placement {
    pub rank: usize,
    pub world: usize,
    pub device: Device,
    env: Option<RankEnv>,
}

impl Placement {
    /// Rank 0 (or a process alone) writes the run directory and logs.
    pub fn lead(&self) -> bool {
        self.rank == 0
    }
}

/// True when this process should start the ranks instead of training: `--gpus` lists several
/// GPUs and no rank environment is set yet.
pub fn needs_launch(gpus: &Option<String>) -> Result<Option<Vec<usize>>> {
    let Some(text) = gpus else { return Ok(None) };
    let list = launch::parse_gpus(text)?;
    Ok((list.len() > 1 && std::env::var_os("WORLD_SIZE").is_none()).then_some(list))
}

/// The rank, world size and device of this process from the rank environment, `--gpus` and
/// `--device`.
pub fn placement(gpus: &Option<String>, device: &Device) -> Result<Placement> {
    let env = RankEnv::from_env()?;
    let list = gpus.as_deref().map(launch::parse_gpus).transpose()?;
    let (rank, world, local) = env.as_ref().map_or((0, 1, 0), |e| (e.rank, e.world, e.local_rank));
    let device = match (&list, world) {
        (Some(l), _) => {
            if env.is_some() && l.len() <= local {
                bail!("--gpus {} lists {} GPUs but this process has LOCAL_RANK={local}", gpus.as_deref().unwrap_or(""), l.len());
            }
            Device::Cuda(l[local.min(l.len() - 1)])
        }
        (None, 1) => device.clone(),
        (None, _) => match device {
            Device::Cpu => bail!(
                "WORLD_SIZE={world}: training on several processes runs on CUDA with NCCL; give --device cuda (each rank uses GPU LOCAL_RANK)"
            ),
            Device::Cuda(_) => Device::Cuda(local),
        },
    };
    Ok(Placement { rank, world, device, env })
}

/// Meets the other ranks (nothing to do alone): every rank checks that NCCL loads, then rank 0
/// hands out the NCCL id to ranks started with the same `settings`.
pub fn join(p: &Placement, settings: &str) -> Result<Option<(Control, UniqueId)>> {
    let Some(env) = p.env.as_ref().filter(|e| e.world > 1) else { return Ok(None) };
    nccl::api()?;
    let (control, id) = control::rendezvous(env, &control::settings_hash(settings), nccl::unique_id)?;
    Ok(Some((control, id)))
}

/// Ends this rank's part in the control channel with `result`; errors are marked with the rank.
pub fn leave<T>(p: &Placement, control: Option<&Control>, result: Result<T>) -> Result<T> {
    match (control, result) {
        (Some(c), Ok(v)) => {
            c.finish();
            Ok(v)
        }
        (Some(c), Err(e)) => {
            let msg = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
            c.report_failure(&msg);
            Err(if msg.starts_with("rank ") { e } else { e.context(format!("rank {}", p.rank)) })
        }
        (None, r) if p.world > 1 => r.map_err(|e| e.context(format!("rank {}", p.rank))),
        (None, r) => r,
    }
}
