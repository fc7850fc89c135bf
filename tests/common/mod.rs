//! Helpers shared by the integration tests: fixture paths, safetensors reading, comparisons,
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

/// The golden fixtures: in the source tree the test was built from, or (for a test binary copied
/// to another machine, as scripts/stage-gpu.sh does) `$DLM_FIXTURES` or `tests/golden/fixtures`
/// below the working directory.
pub fn fixtures() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fixtures");
    if built.is_dir() {
        return built;
    }
    match std::env::var_os("DLM_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from("tests/golden/fixtures"),
    }
}

/// A tensor from a fixture file as f64 values (ints and floats alike) with its shape.
pub struct T {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

pub fn read(path: &std::path::Path) -> HashMap<String, T> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let raw = v.data();
            let data: Vec<f64> = match v.dtype() {
                safetensors::Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                safetensors::Dtype::F64 => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
                safetensors::Dtype::I64 => raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                safetensors::Dtype::I32 => raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                safetensors::Dtype::BOOL => raw.iter().map(|&b| b as f64).collect(),
                d => panic!("{name}: unexpected dtype {d:?}"),
            };
            (name, T { shape: v.shape().to_vec(), data })
        })
        .collect()
}

/// Largest |a-b| / (atol_scale + max|b|) over the tensor: an error relative to the tensor's
/// scale, so tiny entries of a large tensor do not dominate.
pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let max_diff = a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((*x as f64 - y).abs()));
    if scale == 0.0 {
        max_diff
    } else {
        max_diff / scale
    }
}

/// One example of a copy task (target = source): `[<s>] src src [</s>]`, `n` source tokens
/// drawn from `lo..=hi`, with `n` itself drawn from `min_n..=max_n`.
pub fn copy_example(rng: &mut dlm_engine::rng::Rng, min_n: u64, max_n: u64, lo: u64, hi: u64) -> dlm_engine::data::layout::Example {
    let n = rng.int_in(min_n, max_n) as usize;
    let src: Vec<i32> = (0..n).map(|_| rng.int_in(lo, hi) as i32).collect();
    let mut ids = vec![0];
    ids.extend(&src);
    ids.extend(&src);
    ids.push(2);
    dlm_engine::data::layout::Example { ids, src_len: 1 + n }
}

/// Training settings of the small test runs: the paper's AdamW, log warmup over 4 steps,
/// accumulation 2, T = 50, linear reweighting, seed 7, no checkpoints before the end, a log line
/// (and a recorded loss) every step.
pub fn small_train_config(out: &std::path::Path, steps: u64, lr: f32, dropout: f32) -> dlm_engine::train::TrainConfig {
    dlm_engine::train::TrainConfig {
        stage: Default::default(),
        lr,
        schedule: dlm_engine::train::schedule::Schedule::WarmupConstant,
        warmup_steps: 4,
        max_steps: Some(steps),
        max_time: None,
        accumulate: 2,
        clip_norm: 1.0,
        adamw: dlm_engine::train::AdamWSettings { beta1: 0.9, beta2: 0.98, eps: 1e-8, weight_decay: 0.01 },
        dropout,
        timesteps: 50,
        reweighting: dlm_engine::rdm::noise::Reweighting::Linear,
        label_smoothing: 0.0,
        seed: 7,
        save_every: 0,
        keep_checkpoints: 2,
        eval_every: 0,
        log_every: 1,
        out_dir: out.to_path_buf(),
        progress: false,
        zero: 0,
        bucket_mb: 25.0,
    }
}

pub fn ids(t: &T) -> Vec<i32> {
    t.data.iter().map(|&v| v as i32).collect()
}

use dlm_engine::backend::cuda::CudaBackend;
use dlm_engine::backend::{Backend, RowStats};
use dlm_engine::diffusion::sampler::{Denoiser, PickGroup};
use dlm_engine::model::{Batch, PickOpts, XlmR};
use dlm_engine::rng::Rng;

/// The CUDA backend, or `None` after printing a skip line. Set `DLM_REQUIRE_GPU=1` (the GPU
/// machine's check script does) to turn a missing GPU into a failure instead of a skip.
/// Every launch is synchronised, so a fault names its kernel.
pub fn gpu(test: &str) -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(mut b) => {
            b.set_sync_each_launch(true);
            Some(b)
        }
        Err(e) => {
            if std::env::var_os("DLM_REQUIRE_GPU").is_some_and(|v| v != "0") {
                panic!("{test}: DLM_REQUIRE_GPU is set but the CUDA backend did not start: {e:#}");
            }
            eprintln!("skipped {test}: no CUDA driver/GPU ({e:#})");
            None
        }
    }
}

/// A generator on a fresh seed per run (printed, so a failure can be replayed with DLM_TEST_SEED).
pub fn fresh_rng(test: &str) -> Rng {
    let seed = std::env::var("DLM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1));
    eprintln!("{test}: DLM_TEST_SEED={seed}");
    Rng::new(seed, 0)
}

pub fn normal_vec(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

/// The values a bf16 upload stores: the CPU reference runs on exactly these.
pub fn bf16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect()
}

/// ‖got − want‖ / ‖want‖ in f64 (the measure of docs/gpu.md §7); NaN when `got` has a NaN.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        if g.is_nan() {
            return f64::NAN;
        }
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Fails unless `rel_l2(got, want) <= tol` (NaN never passes).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let e = rel_l2(got, want);
    assert!(e <= tol, "{what}: relative L2 error {e:.3e} > {tol:.1e}{}", first_diff(got, want));
}

/// Fails unless every element is equal (NaN never passes).
pub fn assert_exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length mismatch");
    let bad = got.iter().zip(want).position(|(g, w)| g != w && !(g.is_infinite() && g == w));
    assert!(bad.is_none(), "{what}: not bit-equal{}", first_diff(got, want));
}

fn first_diff(got: &[f32], want: &[f32]) -> String {
    match got.iter().zip(want).position(|(g, w)| g != w) {
        Some(i) => format!(" (first difference at {i}: got {}, want {})", got[i], want[i]),
        None => String::new(),
    }
}

/// A NaN-filled host vector: outputs start poisoned, so an element the kernel misses shows.
pub fn poison(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

/// The model as a denoiser without its device path: `generate` then runs every step through
/// `pick_groups` and re-masks on the host (the reference for the device-resident decode).
pub struct HostOnly<'a, B: Backend>(pub &'a mut XlmR<B>);

impl<B: Backend> Denoiser for HostOnly<'_, B> {
    fn pick(&mut self, batch: &Batch, rows: &[i32], opts: &PickOpts) -> anyhow::Result<RowStats> {
        self.0.pick(batch, rows, opts)
    }
    fn pick_groups(&mut self, batch: &Batch, groups: &[PickGroup]) -> anyhow::Result<Vec<RowStats>> {
        let g: Vec<(&[i32], &PickOpts)> = groups.iter().map(|g| (g.rows.as_slice(), &g.opts)).collect();
        self.0.pick_many(batch, &g)
    }
}

/// The `dlm-engine` binary cargo built for the tests.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_dlm-engine"))
}

/// The binary cargo built beside this test, or, staged for the GPU machine (scripts/stage-gpu.sh:
/// `.gpu-stage/tests/<test>` and `.gpu-stage/dlm-engine`), the one staged with it.
pub fn staged_binary() -> std::path::PathBuf {
    let built = std::path::PathBuf::from(env!("CARGO_BIN_EXE_dlm-engine"));
    if built.is_file() {
        return built;
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(std::path::Path::parent).map(|stage| stage.join("dlm-engine")).filter(|p| p.is_file()).unwrap_or(built)
}

/// Writes `n` word-reversal pairs to `path`: example i reverses 2 + i % `spread` words of a fixed
/// twelve-word list (the CUDA CLI tests' training data).
pub fn write_reversal_pairs(path: &std::path::Path, n: usize, spread: usize) {
    let words = ["the", "cat", "dog", "sat", "on", "a", "mat", "big", "small", "house", "runs", "home"];
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let src: Vec<&str> = (0..2 + i % spread).map(|j| words[(i * 7 + j * 5) % words.len()]).collect();
            let tgt: Vec<&str> = src.iter().rev().copied().collect();
            serde_json::json!({"src": src.join(" "), "tgt": tgt.join(" ")}).to_string()
        })
        .collect();
    std::fs::write(path, rows.join("\n") + "\n").unwrap();
}

/// The "step loss" of every loss line of a run's `metrics.jsonl`, as text (for exact comparisons
/// of a resumed run with a straight one).
pub fn logged_losses(run: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .map(|v| format!("{} {}", v["step"], v["loss"]))
        .collect()
}

/// `init --preset micro` with the fixture tokenizer into `dir`.
pub fn init_micro(dir: &std::path::Path) {
    let st = bin()
        .args(["init", "--preset", "micro", "--tokenizer"])
        .arg(fixtures().join("tokenizer.json"))
        .arg("--out")
        .arg(dir)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
}

/// The sampler's step variants beyond the plain pick, on one model, in a fixed order (one test
/// body for the CPU and the CUDA backend): a canvas-like batch from the golden fixture whose
/// first `PROMPT` positions of each row play the prompt and the rest the target.
pub struct StepVariants {
    /// The plain step with the margin confidence, and the same through the cache recomputed whole.
    pub full: RowStats,
    pub refresh: RowStats,
    /// The cache reused with the same batch, and with the prompt's ids changed (unread until a refresh).
    pub partial: RowStats,
    pub partial_new_prompt: RowStats,
    /// Targets changed: the cached step (stale prompt states), and the exact one.
    pub partial_changed: RowStats,
    pub full_changed: RowStats,
    /// Classifier-free guidance of scale 1.5 over the batch and its prompt-masked copy.
    pub guided: RowStats,
}

pub const PROMPT: usize = 2;

pub fn step_variants<B: Backend>(m: &mut XlmR<B>, batch: &Batch, mask: i32) -> StepVariants {
    let pad = m.config().pad_id;
    let lens: Vec<usize> = batch.ids.chunks(batch.seq).map(|r| r.iter().filter(|&&t| t != pad).count()).collect();
    let rows: Vec<i32> = lens.iter().enumerate().flat_map(|(b, &l)| (PROMPT..l).map(move |t| (b * batch.seq + t) as i32)).collect();
    let opts = PickOpts { confidence: Some(dlm_engine::backend::ConfidenceKind::Margin), ..PickOpts::plain(vec![mask], 1.0, None) };
    let g = [(rows.as_slice(), &opts)];
    let (whole, from) = (vec![0; batch.batch], vec![PROMPT; batch.batch]);
    let full = m.pick_many(batch, &g).unwrap();
    let refresh = m.pick_many_cached(batch, &g, &whole).unwrap();
    let partial = m.pick_many_cached(batch, &g, &from).unwrap();
    let mut other = batch.clone();
    for b in 0..batch.batch {
        other.ids[b * batch.seq + 1] = 4 + (other.ids[b * batch.seq + 1] + 7) % 200;
    }
    let partial_new_prompt = m.pick_many_cached(&other, &g, &from).unwrap();
    let mut changed = batch.clone();
    for &r in &rows {
        changed.ids[r as usize] = 4 + (changed.ids[r as usize] * 3 + 1) % 250;
    }
    let partial_changed = m.pick_many_cached(&changed, &g, &from).unwrap();
    let full_changed = m.pick_many(&changed, &g).unwrap();
    let mut doubled = batch.clone();
    doubled.batch *= 2;
    for b in 0..batch.batch {
        let mut row = batch.ids[b * batch.seq..(b + 1) * batch.seq].to_vec();
        row[1..PROMPT].fill(mask);
        doubled.ids.extend(row);
    }
    let guided_opts = PickOpts { cfg_scale: Some(1.5), ..opts.clone() };
    let guided = m.pick_many(&doubled, &[(rows.as_slice(), &guided_opts)]).unwrap().remove(0);
    let one = |mut v: Vec<RowStats>| v.remove(0);
    StepVariants {
        full: one(full),
        refresh: one(refresh),
        partial: one(partial),
        partial_new_prompt: one(partial_new_prompt),
        partial_changed: one(partial_changed),
        full_changed: one(full_changed),
        guided,
    }
}

/// The sampler settings that run device-resident: the reparameterized strategies (with ranking
/// noise when `noisy`: the device's logf may differ from the host's ln by an ulp) and the
/// threshold strategy, with and without blocks, ranking the log-prob or the model's margin or
/// entropy, argmax and sampling.
pub fn device_configs(noisy: bool) -> Vec<dlm_engine::diffusion::SamplerConfig> {
    use dlm_engine::diffusion::{Confidence, SamplerConfig};
    let mut strategies = vec!["reparam-uncond-deterministic-cosine", "reparam-cond-deterministic-linear"];
    if noisy {
        strategies.extend(["reparam-uncond-stochastic1.0-linear", "reparam-cond-stochastic0.5-cosine"]);
    }
    let base = |strategy: &str, sample: bool| SamplerConfig {
        steps: 6,
        strategy: strategy.parse().unwrap(),
        temperature: 0.9,
        sample,
        seed: 77,
        ..SamplerConfig::default()
    };
    let mut out = Vec::new();
    for sample in [false, true] {
        out.extend(strategies.iter().map(|s| base(s, sample)));
        out.push(SamplerConfig { block_length: Some(2), confidence: Confidence::Margin, ..base(strategies[0], sample) });
        for (confidence, threshold) in [(Confidence::Prob, 0.3), (Confidence::Margin, 0.2), (Confidence::Entropy, 0.05)] {
            for block_length in [None, Some(3)] {
                out.push(SamplerConfig { confidence, threshold, block_length, ..base("threshold", sample) });
            }
        }
    }
    out
}

/// A copy of the postln fixture model whose model.safetensors also holds the length predictor's
/// tensors `extra` (official name, shape, values), as the official code saves them.
pub fn length_model_dir(dir: &std::path::Path, extra: &[(String, Vec<usize>, Vec<f32>)]) {
    use dlm_engine::model::weights::{read_safetensors, write_safetensors};
    let src = fixtures().join("postln");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let base = read_safetensors(&src.join("model.safetensors")).unwrap();
    let mut tensors: Vec<(&str, &[usize], &[f32])> =
        base.iter().map(|(n, t)| (n.as_str(), t.shape.as_slice(), t.data.as_slice())).collect();
    tensors.extend(extra.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())));
    write_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
}

/// The length fixture's `param.*` tensors (postln/length.safetensors) as (official name, shape,
/// f32 values), sorted by name.
pub fn length_fixture_params(g: &HashMap<String, T>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut v: Vec<_> = g
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix("param.")?.to_string(), t.shape.clone(), t.data.iter().map(|&x| x as f32).collect())))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The length fixture's prompts: each row of `input_ids` up to its first pad.
pub fn length_prompts(g: &HashMap<String, T>) -> Vec<Vec<i32>> {
    let t = &g["input_ids"];
    ids(t).chunks(t.shape[1]).map(|r| r.iter().copied().take_while(|&x| x != 1).collect()).collect()
}
