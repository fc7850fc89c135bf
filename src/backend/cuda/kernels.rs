//! Loading the kernel modules that build.rs embedded: the nvcc fatbin when there is one and it fits
//! the GPU, otherwise the embedded source compiled at run time with NVRTC.

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// One `kernels/<name>.cu` as embedded by build.rs.
pub struct KernelModule {
    pub name: &'static str,
    /// sm_90a and sm_80 SASS + compute_90 PTX, when nvcc was found at build time.
    pub fatbin: Option<&'static [u8]>,
    /// The source with its `#include "…"` lines inlined (for NVRTC).
    pub source: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Every kernel the backend launches, by module. Loaded up front so that a missing symbol shows at
/// start-up, not in the middle of a training step.
pub const KERNEL_NAMES: &[(&str, &[&str])] = &[
    ("adamw", &["adamw_bf16g", "adamw_f32g", "sum_squares_bf16", "sum_squares_f32"]),
    ("attention", &["attn_fwd"]),
    ("attention_bwd", &["attn_bwd_dq", "attn_bwd_dkdv"]),
    (
        "elementwise",
        &[
            "convert_bf16_to_f32",
            "convert_f32_to_bf16",
            "add_bf16_bf16",
            "add_bf16_f32",
            "add_f32_bf16",
            "add_f32_f32",
            "dropout_bf16",
            "dropout_f32",
            "gelu_fwd_bf16",
            "gelu_bwd_bf16",
            "relu_fwd_bf16",
            "relu_bwd_bf16",
            "tanh_fwd_bf16",
            "tanh_bwd_bf16",
            "philox_fill_u32",
        ],
    ),
    ("embed", &["embed_fwd_bf16", "embed_bwd_bf16"]),
    ("layernorm", &["add_layernorm_fwd_bf16", "layernorm_bwd_bf16"]),
    ("noise", &["q_sample_mask", "q_sample_compact"]),
    ("pool", &["mean_pool_fwd_bf16", "mean_pool_bwd_bf16"]),
    (
        "rows",
        &["gather_rows_bf16", "scatter_add_rows_bf16", "scatter_add_rows_f32", "scatter_rows_bf16", "scatter_rows_f32", "col_sum_add_bf16"],
    ),
    ("sampler", &["vocab_pick_bf16", "vocab_confidence_bf16", "cfg_combine_bf16", "cfg_combine_f32", "reparam_step"]),
    ("vocab", &["cross_entropy_bf16"]),
];

/// How the modules were obtained, for `Backend::name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSource {
    Fatbin,
    Nvrtc,
    Mixed,
}

pub struct Kernels {
    funcs: HashMap<&'static str, CudaFunction>,
    pub source: KernelSource,
}

impl Kernels {
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
        let (major, minor) = ctx.compute_capability()?;
        let mut funcs = HashMap::new();
        let (mut n_fat, mut n_rtc) = (0, 0);
        for &(module_name, names) in KERNEL_NAMES {
            let module = MODULES
                .iter()
                .find(|m| m.name == module_name)
                .ok_or_else(|| anyhow!("kernel module {module_name}.cu is missing from this build"))?;
            let fat_err = match module.fatbin {
                Some(bytes) => match ctx.load_module(Ptx::from_binary(bytes.to_vec())) {
                    Ok(m) => {
                        n_fat += 1;
                        load_functions(&m, module_name, names, &mut funcs)?;
                        continue;
                    }
                    // E.g. no SASS or PTX in the fatbin for this GPU (not sm_90): try NVRTC.
                    Err(e) => Some(e),
                },
                None => None,
            };
            let m = ctx.load_module(nvrtc_compile(module, major, minor).with_context(|| match &fat_err {
                Some(e) => format!("the precompiled {module_name} kernels did not load ({e}), and"),
                None => format!("this build has no precompiled {module_name} kernels (nvcc was absent), and"),
            })?)?;
            n_rtc += 1;
            load_functions(&m, module_name, names, &mut funcs)?;
        }
        let source = match (n_fat, n_rtc) {
            (_, 0) => KernelSource::Fatbin,
            (0, _) => KernelSource::Nvrtc,
            _ => KernelSource::Mixed,
        };
        Ok(Kernels { funcs, source })
    }

    pub fn get(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs.get(name).ok_or_else(|| anyhow!("CUDA kernel {name} is not loaded (not listed in KERNEL_NAMES)"))
    }
}

fn load_functions(
    m: &Arc<cudarc::driver::CudaModule>,
    module_name: &str,
    names: &[&'static str],
    funcs: &mut HashMap<&'static str, CudaFunction>,
) -> Result<()> {
    for &name in names {
        let f = m.load_function(name).with_context(|| format!("kernel {name} not found in {module_name}.cu"))?;
        funcs.insert(name, f);
    }
    Ok(())
}

fn nvrtc_compile(module: &KernelModule, major: i32, minor: i32) -> Result<Ptx> {
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        bail!("libnvrtc was not found to compile them at run time (install the CUDA toolkit, or rebuild with nvcc: bash scripts/install-nvcc.sh)");
    }
    let include = cuda_include_dir().ok_or_else(|| {
        anyhow!("NVRTC needs the CUDA headers (cuda_bf16.h) and none were found in $CUDA_HOME/include, $CUDA_PATH/include or /usr/local/cuda/include")
    })?;
    let opts = CompileOptions {
        include_paths: vec![include.display().to_string()],
        options: vec![format!("--gpu-architecture=compute_{major}{minor}"), "-std=c++17".into()],
        name: Some(format!("{}.cu", module.name)),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(module.source, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            anyhow!("NVRTC failed on {}.cu:\n{}", module.name, log.to_string_lossy())
        }
        other => anyhow!("NVRTC failed on {}.cu: {other}", module.name),
    })
}

/// The first directory holding `cuda_bf16.h`.
fn cuda_include_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = std::env::var_os(var) {
            candidates.push(PathBuf::from(d).join("include"));
        }
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    if let Some(d) = BUILD_CUDA_INCLUDE {
        candidates.push(PathBuf::from(d));
    }
    candidates.into_iter().find(|d| d.join("cuda_bf16.h").is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a renamed kernel or module without a GPU: every listed name must be defined in the
    /// embedded source of its module, and every module must be listed.
    #[test]
    fn kernel_table_matches_embedded_sources() {
        for &(module_name, names) in KERNEL_NAMES {
            let m = MODULES.iter().find(|m| m.name == module_name).unwrap_or_else(|| panic!("{module_name}.cu not embedded"));
            for name in names {
                // `__global__ void name(` or `__global__ void __launch_bounds__(…) name(`.
                let defined = m.source.match_indices(&format!(" {name}(")).any(|(at, _)| {
                    let before = &m.source[..at];
                    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
                    line.contains("__global__ void")
                });
                assert!(defined, "{module_name}.cu does not define {name}");
            }
            assert!(!m.source.contains("#include \""), "{module_name}: includes were not inlined");
            assert!(m.source.contains("philox4x32_10"), "{module_name}: common.cuh not inlined");
        }
        for m in MODULES {
            assert!(KERNEL_NAMES.iter().any(|(n, _)| *n == m.name), "{}.cu is not in KERNEL_NAMES", m.name);
            assert_eq!(m.fatbin.is_some(), NVCC_USED, "{}: fatbin presence disagrees with NVCC_USED", m.name);
        }
    }

    /// The text between the bracket at `open` and its partner, and the index after the partner.
    fn enclosed(s: &str, open: usize) -> (&str, usize) {
        let mut depth = 0;
        for (i, ch) in s[open..].char_indices() {
            match ch {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return (&s[open + 1..open + i], open + i + 1);
                    }
                }
                _ => {}
            }
        }
        panic!("unbalanced brackets after byte {open}");
    }

    /// Splits at the commas outside any brackets (a trailing comma adds no item).
    fn top_level_items(s: &str) -> Vec<&str> {
        let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
        for (i, ch) in s.char_indices() {
            match ch {
                '(' | '[' | '{' | '<' => depth += 1,
                ')' | ']' | '}' | '>' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(s[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            }
        }
        if !s[start..].trim().is_empty() {
            items.push(s[start..].trim());
        }
        items
    }

    /// Catches, without a GPU, a launch whose argument list does not match its kernel's
    /// parameters (a missing or extra argument shifts every later one: garbage on the device).
    /// Every `launch!` in the CUDA family files is found, its kernel resolved (a string literal, or a
    /// `const`/`let` string in the same file) and its arguments counted against the kernel's.
    #[test]
    fn every_launch_passes_as_many_arguments_as_its_kernel_takes() {
        let files = [
            ("adamw.rs", include_str!("adamw.rs")),
            ("attention.rs", include_str!("attention.rs")),
            ("elementwise.rs", include_str!("elementwise.rs")),
            ("embed.rs", include_str!("embed.rs")),
            ("layernorm.rs", include_str!("layernorm.rs")),
            ("linear.rs", include_str!("linear.rs")),
            ("noise.rs", include_str!("noise.rs")),
            ("pool.rs", include_str!("pool.rs")),
            ("rows.rs", include_str!("rows.rs")),
            ("sampler.rs", include_str!("sampler.rs")),
            ("vocab.rs", include_str!("vocab.rs")),
        ];
        let params = |name: &str| -> usize {
            for m in MODULES {
                for (at, _) in m.source.match_indices(&format!(" {name}(")) {
                    let line_start = m.source[..at].rfind('\n').map_or(0, |i| i + 1);
                    if m.source[line_start..at].contains("__global__ void") {
                        return top_level_items(enclosed(m.source, at + name.len() + 1).0).len();
                    }
                }
            }
            panic!("kernel {name} is not defined in any module");
        };
        let mut launched = std::collections::HashSet::new();
        for (file, src) in files {
            for (at, _) in src.match_indices("launch!(") {
                if src[..at].ends_with("macro_rules! ") {
                    continue;
                }
                let items = top_level_items(enclosed(src, at + "launch!".len()).0);
                assert_eq!(items.len(), 4, "{file}: launch at byte {at} is not (self, kernel, config, [args])");
                let name = match items[1].strip_prefix('"') {
                    Some(lit) => lit.trim_end_matches('"').to_string(),
                    None => {
                        let ident = items[1];
                        let defs = [format!("const {ident}: &str = \""), format!("let {ident} = \"")];
                        let def = defs
                            .iter()
                            .find_map(|d| src.find(d.as_str()).map(|i| i + d.len()))
                            .unwrap_or_else(|| panic!("{file}: cannot resolve kernel name `{ident}`"));
                        src[def..def + src[def..].find('"').unwrap()].to_string()
                    }
                };
                let args = items[3]
                    .strip_prefix('[')
                    .and_then(|a| a.strip_suffix(']'))
                    .unwrap_or_else(|| panic!("{file}: {name}: arguments are not a [list]"));
                let (have, want) = (top_level_items(args).len(), params(&name));
                assert_eq!(have, want, "{file}: launch of {name} passes {have} arguments, the kernel takes {want}");
                launched.insert(name);
            }
        }
        for &(_, names) in KERNEL_NAMES {
            for name in names {
                assert!(launched.contains(*name), "{name} is listed but never launched from the family files");
            }
        }
    }

    /// The NVRTC fallback compiles every embedded source (no GPU needed, only libnvrtc and the
    /// CUDA headers; skipped when either is missing).
    #[test]
    fn nvrtc_compiles_every_module_when_available() {
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } || cuda_include_dir().is_none() {
            eprintln!("skipped: libnvrtc or the CUDA headers not found");
            return;
        }
        for m in MODULES {
            let ptx = nvrtc_compile(m, 9, 0).unwrap_or_else(|e| panic!("{e:#}"));
            let text = ptx.to_src();
            for &(module_name, names) in KERNEL_NAMES.iter().filter(|(n, _)| *n == m.name) {
                for name in names {
                    assert!(text.contains(&format!(".entry {name}(")), "{module_name}: no entry {name} in the NVRTC PTX");
                }
            }
        }
    }
}
