//! `train --gpus 0,1,...` on one machine: one child process of this same program per listed GPU,
//! with the torchrun variables set (`RANK` = `LOCAL_RANK` = the GPU's place in the list,
//! `WORLD_SIZE`, `MASTER_ADDR` = 127.0.0.1 and a free `MASTER_PORT`). The children find their GPU
//! in the same `--gpus` list. When one of them fails, the others stop by themselves (the control
//! channel, `super::control`); any still running after a grace period are killed, and the
//! launcher exits with an error naming the rank that failed first.

use super::control::EXIT_PEER_DIED;
use anyhow::{bail, Context, Result};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long the other ranks get to stop by themselves after one failed.
pub const GRACE: Duration = Duration::from_secs(30);

/// Parses `--gpus`: distinct GPU ordinals separated by commas.
pub fn parse_gpus(text: &str) -> Result<Vec<usize>> {
    let mut gpus = Vec::new();
    for part in text.split(',') {
        let g: usize =
            part.trim().parse().map_err(|_| anyhow::anyhow!("--gpus {text}: `{part}` is not a GPU number (e.g. --gpus 0,1,2,3)"))?;
        if gpus.contains(&g) {
            bail!("--gpus {text}: GPU {g} is listed twice");
        }
        gpus.push(g);
    }
    Ok(gpus)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => format!("ended ({status})"),
    }
}

/// Runs this process's command line once per GPU and waits for all of them.
pub fn run(gpus: &[usize]) -> Result<()> {
    let exe = std::env::current_exe().context("finding this program to start the ranks")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).context("finding a free port for the ranks")?.port();
    let world = gpus.len();
    eprintln!("launching {world} ranks on GPUs {gpus:?} (rendezvous at 127.0.0.1:{port}); rank 0 logs");
    let mut children: Vec<Option<Child>> = Vec::new();
    for (rank, gpu) in gpus.iter().enumerate() {
        let child = Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match child {
            Ok(c) => {
                eprintln!("rank {rank}: GPU {gpu}, pid {}", c.id());
                children.push(Some(c));
            }
            Err(e) => {
                stop_all(&mut children);
                return Err(e).context(format!("starting rank {rank}"));
            }
        }
    }
    wait_all(children, gpus)
}

fn stop_all(children: &mut [Option<Child>]) {
    for c in children.iter_mut().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Waits for every rank; the first failure (a rank stopped by another's death comes last)
/// starts the grace period, after which the rest are killed.
fn wait_all(mut children: Vec<Option<Child>>, gpus: &[usize]) -> Result<()> {
    let mut failed: Option<(usize, String)> = None;
    let mut since: Option<Instant> = None;
    while children.iter().any(Option::is_some) {
        let mut ended = Vec::new();
        for (rank, slot) in children.iter_mut().enumerate() {
            if let Some(c) = slot {
                if let Some(status) = c.try_wait()? {
                    ended.push((rank, status));
                    *slot = None;
                }
            }
        }
        // A rank that stopped because another died is never the cause when the cause is in view, and
        // a killed rank comes before one that reported an error about it.
        ended.sort_by_key(|(_, s)| (s.code() == Some(EXIT_PEER_DIED), s.code().is_some()));
        for (rank, status) in ended {
            if !status.success() && failed.is_none() {
                eprintln!("error: rank {rank} (GPU {}) {}; stopping the other ranks", gpus[rank], describe(status));
                failed = Some((rank, describe(status)));
                since = Some(Instant::now());
            }
        }
        if since.is_some_and(|t| t.elapsed() > GRACE) {
            for (rank, _) in children.iter().enumerate().filter(|(_, c)| c.is_some()) {
                eprintln!("rank {rank} did not stop within {GRACE:?}: killing it");
            }
            stop_all(&mut children);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failed {
        Some((rank, how)) => bail!("rank {rank} (GPU {}) {how}; the run stopped", gpus[rank]),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_lists() {
        assert_eq!(parse_gpus("0,1,2,3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_gpus("3, 1").unwrap(), vec![3, 1]);
        assert!(parse_gpus("0,0").unwrap_err().to_string().contains("listed twice"));
        assert!(parse_gpus("0,x").unwrap_err().to_string().contains("`x` is not a GPU number"));
        assert!(parse_gpus("").is_err());
    }
}
