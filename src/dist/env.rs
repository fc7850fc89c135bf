//! The rank environment of a data-parallel run, as torchrun sets it: `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`. Without `WORLD_SIZE` the process trains alone.

use anyhow::{bail, Result};

/// Where this process stands in the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankEnv {
    /// 0-based place among all processes; rank 0 writes checkpoints and logs.
    pub rank: usize,
    /// Number of processes (one per GPU).
    pub world: usize,
    /// Place among the processes of this machine: the GPU ordinal unless `--gpus` maps it.
    pub local_rank: usize,
    /// Where rank 0 listens for the others (rendezvous and control channel).
    pub master_addr: String,
    pub master_port: u16,
}

/// The variables `RankEnv` reads, in the order they are reported.
pub const VARIABLES: [&str; 5] = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"];

impl RankEnv {
    /// The environment of this process; `None` when `WORLD_SIZE` is not set (a single process).
    pub fn from_env() -> Result<Option<RankEnv>> {
        Self::parse(|k| std::env::var(k).ok())
    }

    /// As `from_env`, over any lookup (the tests give a map).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Option<RankEnv>> {
        let Some(world) = get("WORLD_SIZE") else {
            if let Some(k) = ["RANK", "LOCAL_RANK"].into_iter().find(|k| get(k).is_some()) {
                bail!("{k} is set but WORLD_SIZE is not: set both (as torchrun does) or neither");
            }
            return Ok(None);
        };
        let number = |key: &str, text: &str| -> Result<usize> {
            text.trim().parse::<usize>().map_err(|_| anyhow::anyhow!("{key}={text:?} is not a non-negative integer"))
        };
        let world = number("WORLD_SIZE", &world)?;
        if world == 0 {
            bail!("WORLD_SIZE=0: a run needs at least one process");
        }
        let rank = match get("RANK") {
            Some(r) => number("RANK", &r)?,
            None if world == 1 => 0,
            None => bail!("WORLD_SIZE={world} but RANK is not set"),
        };
        if rank >= world {
            bail!("RANK={rank} is not below WORLD_SIZE={world}");
        }
        let local_rank = get("LOCAL_RANK").map(|r| number("LOCAL_RANK", &r)).transpose()?.unwrap_or(rank);
        let (master_addr, master_port) = match (get("MASTER_ADDR"), get("MASTER_PORT")) {
            (Some(a), Some(p)) => {
                let port = p.trim().parse::<u16>().map_err(|_| anyhow::anyhow!("MASTER_PORT={p:?} is not a port number (1-65535)"))?;
                if port == 0 || a.trim().is_empty() {
                    bail!("MASTER_ADDR={a:?} MASTER_PORT={p:?}: give rank 0's host and a port above 0");
                }
                (a.trim().to_string(), port)
            }
            _ if world == 1 => (String::new(), 0),
            (a, p) => bail!(
                "WORLD_SIZE={world} needs MASTER_ADDR and MASTER_PORT (rank 0's address) but {} not set",
                match (a, p) {
                    (None, None) => "neither is",
                    (None, _) => "MASTER_ADDR is",
                    _ => "MASTER_PORT is",
                }
            ),
        };
        Ok(Some(RankEnv { rank, world, local_rank, master_addr, master_port }))
    }

    /// "rank R of W", for messages.
    pub fn describe(&self) -> String {
        format!("rank {} of {}", self.rank, self.world)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<RankEnv>> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RankEnv::parse(|k| map.get(k).cloned())
    }

    fn torchrun(rank: &str) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", "4".into()),
            ("LOCAL_RANK", "1".into()),
            ("MASTER_ADDR", "node0".into()),
            ("MASTER_PORT", "29500".into()),
        ]
    }

    #[test]
    fn no_world_size_is_a_single_process() {
        assert_eq!(parse(&[]).unwrap(), None);
        let e = parse(&[("RANK", "1")]).unwrap_err().to_string();
        assert!(e.contains("RANK is set but WORLD_SIZE is not"), "{e}");
    }

    #[test]
    fn torchrun_variables_are_read() {
        let v = torchrun("3");
        let vars: Vec<(&str, &str)> = v.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let env = parse(&vars).unwrap().unwrap();
        assert_eq!(env, RankEnv { rank: 3, world: 4, local_rank: 1, master_addr: "node0".into(), master_port: 29500 });
        assert_eq!(env.describe(), "rank 3 of 4");
    }

    #[test]
    fn world_size_one_needs_no_address() {
        let env = parse(&[("WORLD_SIZE", "1")]).unwrap().unwrap();
        assert_eq!((env.rank, env.world, env.local_rank), (0, 1, 0));
    }

    #[test]
    fn bad_values_are_named() {
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[("WORLD_SIZE", "two")], "WORLD_SIZE=\"two\" is not a non-negative integer"),
            (&[("WORLD_SIZE", "0")], "WORLD_SIZE=0"),
            (&[("WORLD_SIZE", "2")], "RANK is not set"),
            (&[("WORLD_SIZE", "2"), ("RANK", "2")], "RANK=2 is not below WORLD_SIZE=2"),
            (&[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "h")], "MASTER_PORT is not set"),
            (&[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "99999")], "MASTER_PORT=\"99999\""),
        ];
        for (vars, want) in cases {
            let e = parse(vars).unwrap_err().to_string();
            assert!(e.contains(want), "{vars:?}: {e}");
        }
    }
}
