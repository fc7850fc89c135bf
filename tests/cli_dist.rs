//! Data-parallel launches that are refused before anything runs, with errors naming the cause
//! (CPU only; the runs themselves are in cuda_dist.rs).

use std::process::Command;

fn train(args: &[&str], env: &[(&str, &str)]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut c = Command::new(env!("CARGO_BIN_EXE_dlm-engine"));
    c.args(["train", "--model", "no-model", "--train", "no-data.jsonl", "--out", out.to_str().unwrap(), "--max-steps", "1"]).args(args);
    for k in dlm_engine::dist::env::VARIABLES {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{args:?} {env:?} must fail with a reported error");
    assert!(!out.exists(), "{args:?} {env:?}: nothing is written");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Flags, environment, and the error expected.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_gpu_lists_and_rank_environments_are_named() {
    let cases: [Case; 5] = [
        (&["--gpus", "0,0"], &[], "error: --gpus 0,0: GPU 0 is listed twice"),
        (&["--gpus", "0,one"], &[], "`one` is not a GPU number"),
        (
            &["--device", "cpu"],
            &[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")],
            "give --device cuda",
        ),
        (
            &[],
            &[("WORLD_SIZE", "2"), ("RANK", "5"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")],
            "RANK=5 is not below WORLD_SIZE=2",
        ),
        (&[], &[("WORLD_SIZE", "2"), ("RANK", "1")], "needs MASTER_ADDR and MASTER_PORT"),
    ];
    for (args, env, want) in cases {
        let err = train(args, env);
        assert!(err.contains(want), "{args:?} {env:?}: expected `{want}` in:\n{err}");
        assert_eq!(err.lines().count(), 1, "one line:\n{err}");
    }
}

#[test]
fn zero_takes_0_or_1() {
    let err = train(&["--zero", "2"], &[]);
    assert!(err.contains("--zero"), "{err}");
}

#[test]
fn bucket_mb_takes_a_positive_number() {
    for bad in ["--bucket-mb=0", "--bucket-mb=-1", "--bucket-mb=inf", "--bucket-mb=lots"] {
        let err = train(&[bad], &[]);
        assert!(err.contains("--bucket-mb") && err.contains("expected a positive number of MiB"), "{bad}: {err}");
    }
}
