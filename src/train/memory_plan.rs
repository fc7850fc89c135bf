//! The memory plan: what sampling and training need on each GPU, counted from how the CUDA backend
//! stores things (docs/gpu.md §4, "The memory plan"), for a model shape, a batch, a number of GPUs and a ZeRO stage;
//! and the check `train` runs before it allocates anything.
//!
//! Every figure follows the code it describes:
//! - parameters (`model::weights::param_specs`; the decoder, tied to the word embeddings or not,
//!   and the head bias padded to the CUDA backend's 64-row vocabulary): sampling loads them as
//!   bf16 (`XlmR::load`), training as f32 master copies with a bf16 copy for the forward ops
//!   (`XlmR::load_for_training`, `Store::Master`), with f32 gradients and two f32 AdamW moments
//!   each once the first step has run (`optim.rs`, `buffer.rs`'s `acc_f32`);
//! - activations: exactly the buffers `alloc_encoder` keeps per layer and per token (the encoder
//!   keeps every layer's in training and in a sampling step's plan), the head's on its gathered
//!   rows with bf16 logits over the padded vocabulary, the noise's row lists, the cross-entropy's
//!   scratch, and the larger of the two backward phases' temporaries (the head's backward, then
//!   the encoder's scratch and the attention backward's per-row f32 sums);
//! - workspace: cuBLASLt's (32 MiB on Hopper), an allowance for the CUDA context and the loaded
//!   kernels (an estimate: the only figure not read from the code), and in training the one
//!   tensor whose storage is converted at a time (a gradient or moment going from its bf16 zeros
//!   to f32 on the first step).
//!
//! With N GPUs and ZeRO stage z: z = 0 replicates everything; z = 1 shards the f32 master copy and
//! the moments 1/N; z = 2 also shards the gradients, keeping one reduce-scatter bucket whole: the
//! largest parameter's full f32 gradient, since the backward ops write a parameter's gradient
//! whole (the tied embedding/decoder is that parameter). Activations are per GPU and per
//! micro-batch, so they do not change with N.

use crate::data::batch::Budget;
use crate::model::weights::param_specs;
use crate::model::{Arch, ModelConfig};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;

/// The CUDA backend pads the head's vocabulary to this (`Backend::vocab_align`).
pub const CUDA_VOCAB_ALIGN: usize = 64;
/// cuBLASLt's workspace on Hopper (`cuda/blas.rs`; 4 MiB before sm_90).
pub const CUBLAS_WORKSPACE: u64 = 32 << 20;
/// Allowance for the CUDA context, its default stream and the loaded kernel modules. Not counted
/// from the code (the driver decides it); a few hundred MB on current GPUs.
pub const CONTEXT_RESERVE: u64 = 512 << 20;
/// Rows a validation pass decodes at once (`cli::train::validate`).
pub const VALIDATION_BATCH: usize = 64;

/// Memory cards the plan prints by default: their size as the driver reports it.
pub const CARDS: [(&str, u64); 2] = [("H100 80 GB", 81_559 << 20), ("H200 141 GB", 143_771 << 20)];

/// A ZeRO stage: what of the optimizer's state is sharded over the GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Zero {
    /// Everything replicated.
    Stage0,
    /// The f32 master copy and the AdamW moments sharded.
    Stage1,
    /// Also the gradients sharded (one bucket whole).
    Stage2,
}

impl Zero {
    pub const ALL: [Zero; 3] = [Zero::Stage0, Zero::Stage1, Zero::Stage2];

    pub fn from_level(z: u8) -> Result<Self> {
        match z {
            0 => Ok(Zero::Stage0),
            1 => Ok(Zero::Stage1),
            2 => Ok(Zero::Stage2),
            _ => bail!("ZeRO stage {z} is not one of 0, 1, 2"),
        }
    }

    pub fn level(self) -> u8 {
        self as u8
    }
}

/// A sampling batch: canvases of `seq` tokens (prompt and target together).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SampleShape {
    pub batch: usize,
    pub seq: usize,
}

/// What the plan is for.
#[derive(Clone, Debug)]
pub struct PlanInputs {
    pub cfg: ModelConfig,
    /// The decoder is a tensor of its own (not tied to the word embeddings).
    pub untied: bool,
    pub gpus: usize,
    /// Padded tokens of one training micro-batch on one GPU, before the coupled doubling
    /// (`train_tokens`).
    pub train_tokens: usize,
    pub sample: SampleShape,
    /// Training with `--valid`: the validation decode's step plan stays beside the training
    /// workspace.
    pub validation: Option<SampleShape>,
}

/// Padded tokens of one training micro-batch (before doubling) with `train`'s batch flags: a token
/// budget admits batches up to the budget, or one sequence alone when it is longer (at most
/// `max_len`); N sequences pad to at most `max_len` each (`data::batch`).
pub fn train_tokens(budget: Budget, max_len: usize) -> usize {
    match budget {
        Budget::Tokens(n) => n.max(max_len),
        Budget::Sequences(n) => n * max_len,
    }
}

/// Whether the model in `dir` keeps a decoder of its own: its weights (one file or shards) hold an
/// `lm_head.decoder.weight` (read from the headers alone; a copy equal to the word embeddings,
/// which loading ties, is counted as untied: the plan's upper bound). No weights file: tied.
pub fn model_untied(dir: &Path) -> Result<bool> {
    use crate::model::shards::{existing_weight_paths, WeightFiles};
    if !existing_weight_paths(dir).iter().any(|p| p.is_file()) {
        return Ok(false);
    }
    // Maps the file(s) and reads their headers only, in either layout.
    Ok(WeightFiles::open(dir)?.catalog().contains_key("lm_head.decoder.weight"))
}

/// Bytes per GPU by what they hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Breakdown {
    pub weights_bf16: u64,
    pub master_f32: u64,
    pub moments: u64,
    pub gradients: u64,
    pub activations: u64,
    pub workspace: u64,
}

impl Breakdown {
    pub fn total(&self) -> u64 {
        self.weights_bf16 + self.master_f32 + self.moments + self.gradients + self.activations + self.workspace
    }

    /// The rows of the table, in order.
    pub fn rows(&self) -> [(&'static str, u64); 7] {
        [
            ("weights (bf16)", self.weights_bf16),
            ("master copy (f32)", self.master_f32),
            ("AdamW moments (f32)", self.moments),
            ("gradients (f32)", self.gradients),
            ("activations", self.activations),
            ("workspace", self.workspace),
            ("total", self.total()),
        ]
    }
}

/// The plan: the inputs' derived sizes and the per-GPU bytes of sampling and of training at each
/// ZeRO stage.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub gpus: usize,
    /// Parameters as stored on the GPU (vocabulary rows padded).
    pub params: u64,
    /// Elements of the largest parameter (the ZeRO-2 bucket, the storage conversion).
    pub largest_param: u64,
    /// Tokens the encoder runs on per training micro-batch (the doubled batch).
    pub train_encoder_tokens: u64,
    /// Rows the LM head runs on in the worst case (every token of the doubled batch masked).
    pub train_head_rows: u64,
    pub sample: SampleShape,
    pub validation: Option<SampleShape>,
    pub sampling: Breakdown,
    /// Indexed by ZeRO stage.
    pub training: [Breakdown; 3],
}

impl Plan {
    pub fn training(&self, zero: Zero) -> &Breakdown {
        &self.training[zero.level() as usize]
    }
}

/// Element counts of the parameters as the CUDA backend stores them: (all, largest).
fn stored_params(cfg: &ModelConfig, untied: bool) -> (u64, u64) {
    let head_vocab = cfg.vocab_size.next_multiple_of(CUDA_VOCAB_ALIGN) as u64;
    let decoder = if untied { "lm_head.decoder.weight" } else { "roberta.embeddings.word_embeddings.weight" };
    let (mut all, mut largest) = (0u64, 0u64);
    for (name, shape) in param_specs(cfg, untied) {
        let n: u64 = shape.iter().map(|&d| d as u64).product();
        let n = if name == decoder || name == "lm_head.bias" { n / cfg.vocab_size as u64 * head_vocab } else { n };
        all += n;
        largest = largest.max(n);
    }
    (all, largest)
}

const BF16: u64 = 2;
const F32: u64 = 4;
const I32: u64 = 4;

/// What `Params::alloc_encoder` keeps for `n` tokens, in the storage each buffer ends in: with
/// `keep` every layer's activations (a training pass), without it one layer's set and two hidden
/// states taken in turn (a sampling step's plan).
pub fn encoder_bytes(cfg: &ModelConfig, n: u64, keep: bool) -> u64 {
    let (h, f, l, heads) = (cfg.hidden as u64, cfg.intermediate as u64, cfg.layers as u64, cfg.heads as u64);
    let (sets, states) = if keep { (l, l + 1) } else { (1, 2) };
    let pre = cfg.arch == Arch::PreLn;
    // q, k, v, ctx, attn, s1, h1, f2 and (post-LN) s2 or (pre-LN) a_in: nine [n, h] in bf16; f1 and
    // the GELU output: two [n, f]; the attention's log-sum-exp per (row, head, position) and four
    // LayerNorm statistics per token in f32.
    let per_layer = 9 * n * h * BF16 + 2 * n * f * BF16 + n * heads * F32 + 4 * n * F32;
    // ids, positions and the key mask; the embedding sum; its LayerNorm statistics (f32 when
    // written, post-LN; left as their bf16 zeros, pre-LN); L + 1 hidden states; pre-LN's final
    // LayerNorm output and statistics.
    let inputs = 3 * n * I32;
    let emb = n * h * BF16 + 2 * n * if pre { BF16 } else { F32 };
    let hidden = states * n * h * BF16;
    let final_ln = if pre { n * h * BF16 + 2 * n * F32 } else { 0 };
    sets * per_layer + inputs + emb + hidden + final_ln
}

/// The head's workspace on `r` gathered rows (`alloc_head_on`): four [r, h] in bf16, the
/// LayerNorm statistics in f32, the row indices, and the logits over the padded vocabulary in bf16.
fn head_bytes(cfg: &ModelConfig, r: u64) -> u64 {
    let h = cfg.hidden as u64;
    let vocab = cfg.vocab_size.next_multiple_of(CUDA_VOCAB_ALIGN) as u64;
    4 * r * h * BF16 + 2 * r * F32 + r * I32 + r * vocab * BF16
}

/// A sampling step's plan (`StepPlan`) for `shape`: the encoder, the head on every slot (the worst
/// case: targets fill the canvases), and per row the pick's outputs, the Gumbel streams and the
/// device-resident canvases.
pub fn sampling_activations(cfg: &ModelConfig, shape: SampleShape) -> u64 {
    let n = (shape.batch * shape.seq) as u64;
    // seeds (2), streams, token, logprob, confidence; the canvases' tokens, scores, masked.
    let per_row = 2 * I32 + I32 + I32 + F32 + F32 + 3 * F32;
    encoder_bytes(cfg, n, false) + head_bytes(cfg, n) + n * per_row
}

/// A training micro-batch of `n` encoder tokens with the head on `r` rows, at the peak (the
/// backward pass): the encoder's saved activations, the noise's row lists, the head, the
/// cross-entropy's scratch, and the larger of the head backward's temporaries and the encoder
/// backward's.
pub fn training_activations(cfg: &ModelConfig, n: u64, r: u64) -> u64 {
    let (h, f, heads) = (cfg.hidden as u64, cfg.intermediate as u64, cfg.heads as u64);
    // The masked rows' positions and targets (i32) and their weights (f32), sized for every token.
    let noise = 2 * n * I32 + n * F32;
    let ce_scratch = 2 * r.next_power_of_two() * F32;
    // Head backward: dz, dg1, dd1, dx on the rows and d(encoder output).
    let head_bwd = 4 * r * h * BF16 + n * h * BF16;
    // Encoder backward: d(encoder output), six [n, h] and two [n, f] scratch buffers, and the
    // attention backward's f32 sum per (row, head, position).
    let enc_bwd = n * h * BF16 + 6 * n * h * BF16 + 2 * n * f * BF16 + n * heads * F32;
    encoder_bytes(cfg, n, true) + noise + head_bytes(cfg, r) + ce_scratch + head_bwd.max(enc_bwd)
}

/// ZeRO-1's staging on `gpus` GPUs for `params` stored parameters: the reduce-scatter's f32
/// chunk of every rank, or the all-gather's bf16 copy of this rank's shard beside its bf16 chunk
/// of every rank, whichever is larger (they are not alive together).
fn zero1_staging(params: u64, gpus: u64) -> u64 {
    if gpus < 2 {
        return 0;
    }
    let shard = params.div_ceil(gpus);
    let chunk = shard.min(crate::dist::collective::ZERO_CHUNK as u64);
    (gpus * chunk * F32).max(shard * BF16 + gpus * chunk * BF16)
}

/// The memory plan for `inputs`.
pub fn plan(inputs: &PlanInputs) -> Result<Plan> {
    let cfg = &inputs.cfg;
    if inputs.gpus == 0 {
        bail!("the number of GPUs must be at least 1");
    }
    for (what, v) in [("training tokens per micro-batch", inputs.train_tokens), ("sampling batch", inputs.sample.batch)] {
        if v == 0 {
            bail!("{what} must be at least 1");
        }
    }
    if inputs.sample.seq == 0 || inputs.sample.seq > cfg.max_seq_len() {
        bail!("sampling length {} is not in 1..={} (the model's longest sequence)", inputs.sample.seq, cfg.max_seq_len());
    }
    let (params, largest) = stored_params(cfg, inputs.untied);
    let shard = |bytes: u64| bytes.div_ceil(inputs.gpus as u64);
    let n = 2 * inputs.train_tokens as u64;
    let r = n;
    let fixed = CUBLAS_WORKSPACE + CONTEXT_RESERVE;
    let sampling = Breakdown {
        weights_bf16: params * BF16,
        activations: sampling_activations(cfg, inputs.sample),
        workspace: fixed,
        ..Breakdown::default()
    };
    let validation = inputs.validation.map(|s| sampling_activations(cfg, s)).unwrap_or(0);
    let train_at = |zero: Zero| {
        let full_grads = params * F32;
        Breakdown {
            weights_bf16: params * BF16,
            master_f32: if zero == Zero::Stage0 { params * F32 } else { shard(params * F32) },
            moments: if zero == Zero::Stage0 { 2 * params * F32 } else { shard(2 * params * F32) },
            // On one GPU there is nothing to reduce-scatter, so no bucket.
            gradients: if zero == Zero::Stage2 && inputs.gpus > 1 { shard(full_grads) + largest * F32 } else { full_grads },
            activations: training_activations(cfg, n, r) + validation,
            // One tensor at a time goes from bf16 zeros to f32 on the first step (both alive).
            // ZeRO-1 on several GPUs also stages its collectives (`dist::collective`).
            workspace: fixed + largest * BF16 + if zero == Zero::Stage1 { zero1_staging(params, inputs.gpus as u64) } else { 0 },
        }
    };
    Ok(Plan {
        gpus: inputs.gpus,
        params,
        largest_param: largest,
        train_encoder_tokens: n,
        train_head_rows: r,
        sample: inputs.sample,
        validation: inputs.validation,
        sampling,
        training: Zero::ALL.map(train_at),
    })
}

/// `bytes` for people: GiB from 1 GiB on, MiB below.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

/// The plan as a table: a row per kind of memory, a column for sampling and one per ZeRO stage
/// asked for, then whether each column fits each card.
pub fn render(plan: &Plan, stages: &[Zero], cards: &[(String, u64)]) -> String {
    let mut cols: Vec<(String, &Breakdown)> = vec![("sampling".into(), &plan.sampling)];
    for &z in stages {
        cols.push((format!("training ZeRO-{}", z.level()), plan.training(z)));
    }
    let label_w = 22;
    let col_w = cols.iter().map(|c| c.0.len()).max().unwrap_or(0).max(11) + 2;
    let mut out = format!("{:<label_w$}", format!("per GPU ({} GPU{})", plan.gpus, if plan.gpus == 1 { "" } else { "s" }));
    for (name, _) in &cols {
        out += &format!("{name:>col_w$}");
    }
    out.push('\n');
    for (i, (label, _)) in plan.sampling.rows().iter().enumerate() {
        out += &format!("{label:<label_w$}");
        for (_, b) in &cols {
            out += &format!("{:>col_w$}", human(b.rows()[i].1));
        }
        out.push('\n');
    }
    for (card, bytes) in cards {
        out += &format!("{:<label_w$}", format!("fits {card}"));
        for (_, b) in &cols {
            let verdict = if b.total() <= *bytes { "yes".to_string() } else { format!("no (-{})", human(b.total() - bytes)) };
            out += &format!("{verdict:>col_w$}");
        }
        out.push('\n');
    }
    out
}

/// Refuses a training run at ZeRO stage `zero` that does not fit in `device_bytes` per GPU, with
/// the shortfall and the plan's table in the error. The one check a launcher calls, for one GPU or
/// N.
pub fn check_fits(inputs: &PlanInputs, zero: Zero, device: &str, device_bytes: u64) -> Result<()> {
    let plan = plan(inputs)?;
    let need = plan.training(zero).total();
    if need > device_bytes {
        let table = render(&plan, &[zero], &[(device.to_string(), device_bytes)]);
        bail!(
            "training needs {} per GPU (ZeRO-{}, {} GPU{}, {} encoder tokens per micro-batch) but {device} has {}: {} short; \
             lower --max-tokens or --batch-size, or use more GPUs or a higher ZeRO stage (or --no-memory-check if the \
             estimate is wrong: it counts the worst case of every token masked)\n{table}",
            human(need),
            zero.level(),
            inputs.gpus,
            if inputs.gpus == 1 { "" } else { "s" },
            plan.train_encoder_tokens,
            human(device_bytes),
            human(need - device_bytes)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(preset: &str, tokens: usize) -> PlanInputs {
        PlanInputs {
            cfg: ModelConfig::preset(preset).unwrap(),
            untied: false,
            gpus: 1,
            train_tokens: tokens,
            sample: SampleShape { batch: 8, seq: 32 },
            validation: None,
        }
    }

    /// The stored parameters are the parameter list's with the tied decoder's vocabulary rows (and
    /// the head bias) padded to 64.
    #[test]
    fn stored_params_are_the_config_count_with_the_padding() {
        for name in ["micro", "base", "xl"] {
            let cfg = ModelConfig::preset(name).unwrap();
            let pad = (cfg.vocab_size.next_multiple_of(64) - cfg.vocab_size) as u64;
            let (all, largest) = stored_params(&cfg, false);
            let specs: u64 = param_specs(&cfg, false).iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum();
            assert_eq!(all, specs + pad * (cfg.hidden as u64 + 1), "{name}");
            assert_eq!(largest, (cfg.vocab_size as u64 + pad) * cfg.hidden as u64, "{name}");
        }
        let cfg = ModelConfig::preset("micro").unwrap();
        let (tied, _) = stored_params(&cfg, false);
        let (untied, _) = stored_params(&cfg, true);
        assert_eq!(untied - tied, 300 * 32, "an untied decoder adds its rows (the padding moves from the embeddings to it)");
    }

    #[test]
    fn zero_stages_shard_what_they_say() {
        let mut i = inputs("base", 4096);
        i.gpus = 4;
        let p = plan(&i).unwrap();
        let [z0, z1, z2] = p.training;
        assert_eq!(z0.master_f32, 4 * p.params);
        assert_eq!(z1.master_f32, p.params); // 4 bytes over 4 GPUs
        assert_eq!(z1.moments, 2 * p.params);
        assert_eq!(z1.gradients, z0.gradients);
        assert_eq!(z2.gradients, p.params + 4 * p.largest_param);
        assert!(z0.total() > z1.total() && z1.total() > z2.total());
        assert_eq!((z0.activations, z0.weights_bf16), (z2.activations, z2.weights_bf16));
        assert_eq!(p.sampling.weights_bf16, 2 * p.params);
        assert_eq!(p.sampling.total(), p.sampling.weights_bf16 + p.sampling.activations + CUBLAS_WORKSPACE + CONTEXT_RESERVE);
    }

    /// A hand count of the smallest case: micro (post-LN, h 32, f 64, 2 layers, 4 heads), 10
    /// encoder tokens, the head on 10 rows.
    #[test]
    fn training_activations_match_a_hand_count() {
        let cfg = ModelConfig::preset("micro").unwrap();
        let (n, h, f) = (10u64, 32u64, 64u64);
        let layer = 9 * n * h * 2 + 2 * n * f * 2 + n * 4 * 4 + 4 * n * 4;
        let encoder = 2 * layer + 3 * n * 4 + n * h * 2 + 2 * n * 4 + 3 * n * h * 2;
        assert_eq!(encoder_bytes(&cfg, n, true), encoder);
        // Sampling keeps one layer's set and two hidden states.
        assert_eq!(encoder_bytes(&cfg, n, false), layer + 3 * n * 4 + n * h * 2 + 2 * n * 4 + 2 * n * h * 2);
        let head = 4 * n * h * 2 + 2 * n * 4 + n * 4 + n * 320 * 2;
        let enc_bwd = 7 * n * h * 2 + 2 * n * f * 2 + n * 4 * 4;
        let want = encoder + 3 * n * 4 + head + 2 * 16 * 4 + enc_bwd;
        assert_eq!(training_activations(&cfg, n, n), want);
    }

    #[test]
    fn token_budget_covers_one_overlong_sequence() {
        assert_eq!(train_tokens(Budget::Tokens(4096), 512), 4096);
        assert_eq!(train_tokens(Budget::Tokens(100), 512), 512);
        assert_eq!(train_tokens(Budget::Sequences(8), 128), 1024);
    }

    #[test]
    fn check_fits_refuses_with_the_shortfall_and_the_table() {
        let i = inputs("xl", 8192);
        let need = plan(&i).unwrap().training(Zero::Stage0).total();
        let e = check_fits(&i, Zero::Stage0, "cuda:0 (test)", need - 1).unwrap_err().to_string();
        assert!(e.contains("cuda:0 (test)") && e.contains("short") && e.contains("training ZeRO-0") && e.contains("total"), "{e}");
        check_fits(&i, Zero::Stage0, "cuda:0 (test)", need).unwrap();
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut i = inputs("micro", 64);
        i.gpus = 0;
        assert!(plan(&i).is_err());
        let mut i = inputs("micro", 64);
        i.sample.seq = 1000;
        assert!(plan(&i).unwrap_err().to_string().contains("longest sequence"));
    }
}
