//! cuBLASLt GEMMs with bf16 operands, fp32 accumulation and scale, and a bf16 or f32 output.
//!
//! cudarc's safe `Matmul` wants C in the operands' type and rebuilds its descriptors and reruns
//! the algorithm heuristic on every call; the parameter gradients need f32 C, and the host cost
//! matters at batch-1 sampling, so this keeps one plan (descriptors + chosen algorithm) per shape.
//!
//! cuBLASLt is column-major. A row-major `[r, c]` matrix is the column-major `[c, r]` one, so every
//! row-major product is written as its transpose (docs/gpu.md §2); the callers in
//! `linear.rs` spell out each mapping.

use anyhow::{bail, Context, Result};
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::{Arc, Mutex};

/// One column-major product `D = alpha·op(A)·op(B) + beta·C` with C = D. Dimensions are of
/// op(A) (m×k), op(B) (k×n) and D (m×n); `ld*` are the stored leading dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmShape {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub trans_a: bool,
    pub trans_b: bool,
    pub lda: i64,
    pub ldb: i64,
    pub ldc: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutType {
    Bf16,
    F32,
}

/// Plans kept before the cache starts over.
const MAX_PLANS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    shape: GemmShape,
    out: OutType,
    bias: bool,
    accumulate: bool,
    /// Pointer alignments (bytes, capped at 256): the heuristic may pick kernels that need them.
    align: [u32; 4],
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: the descriptors are plain host objects owned by the plan; they are only used under the
// `plans` mutex.
unsafe impl Send for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for layout in [self.a, self.b, self.c] {
                if !layout.is_null() {
                    let _ = lt::destroy_matrix_layout(layout);
                }
            }
        }
    }
}

pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<PlanKey, Plan>>,
}

// SAFETY: the handle is only used from calls that hold `plans`' mutex.
unsafe impl Send for Gemm {}
unsafe impl Sync for Gemm {}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.lock().map(|mut p| p.clear()).ok();
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

fn alignment(ptr: CUdeviceptr) -> u32 {
    if ptr == 0 {
        return 256;
    }
    (1u64 << ptr.trailing_zeros().min(8)) as u32
}

fn cublas(what: &'static str) -> impl FnOnce(lt::CublasError) -> anyhow::Error {
    move |e| anyhow::anyhow!("cuBLASLt {what}: {e:?}")
}

impl Gemm {
    pub fn new(stream: &Arc<CudaStream>, compute_major: i32) -> Result<Self> {
        if !unsafe { sys::is_culib_present() } {
            bail!("libcublasLt was not found (it ships with the CUDA toolkit, e.g. /usr/local/cuda/lib64/libcublasLt.so.13)");
        }
        // cuBLASLt works in the thread's current context; cudarc binds it only in its own calls.
        stream.context().bind_to_thread()?;
        let handle = lt::create_handle().map_err(cublas("create handle"))?;
        // NVIDIA's recommendation: 32 MiB on Hopper, 4 MiB before.
        let ws = if compute_major >= 9 { 32 << 20 } else { 4 << 20 };
        let workspace = stream.alloc_zeros::<u8>(ws).context("allocating the cuBLASLt workspace")?;
        Ok(Gemm { handle, stream: stream.clone(), workspace, plans: Mutex::new(HashMap::new()) })
    }

    /// Runs `D = op(A)·op(B) (+ beta·D) (+ bias)` on the stream. `a`, `b`, `bias` are bf16, `d` is
    /// bf16 or f32 per `out`. `accumulate` sets beta = 1.
    ///
    /// # Safety
    /// The pointers must be live device allocations of this context large enough for the shape.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul(
        &self,
        shape: GemmShape,
        a: CUdeviceptr,
        b: CUdeviceptr,
        d: CUdeviceptr,
        out: OutType,
        bias: Option<CUdeviceptr>,
        accumulate: bool,
    ) -> Result<()> {
        self.stream.context().bind_to_thread()?;
        let key = PlanKey {
            shape,
            out,
            bias: bias.is_some(),
            accumulate,
            align: [alignment(a), alignment(b), alignment(d), bias.map_or(256, alignment)],
        };
        let mut plans = self.plans.lock().map_err(|_| anyhow::anyhow!("cuBLASLt plan cache poisoned"))?;
        // Training's head GEMMs take a new row count (the masked slots) almost every step, so the
        // cache would grow without end; the plans are host objects, cheap to rebuild.
        if plans.len() >= MAX_PLANS && !plans.contains_key(&key) {
            plans.clear();
        }
        let plan = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.make_plan(&key)?),
        };
        if let Some(bias) = bias {
            lt::set_matmul_desc_attribute(
                plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias as *const CUdeviceptr as *const c_void,
                size_of::<CUdeviceptr>(),
            )
            .map_err(cublas("set bias pointer"))?;
        }
        let alpha = 1.0f32;
        let beta = if accumulate { 1.0f32 } else { 0.0f32 };
        let (ws, _ws_guard) = cudarc::driver::DevicePtr::device_ptr(&self.workspace, &self.stream);
        lt::matmul(
            self.handle,
            plan.desc,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            a as *const c_void,
            plan.a,
            b as *const c_void,
            plan.b,
            d as *const c_void,
            plan.c,
            d as *mut c_void,
            plan.c,
            &plan.algo,
            ws as *mut c_void,
            self.workspace.len(),
            self.stream.cu_stream() as sys::cudaStream_t,
        )
        .map_err(|e| anyhow::anyhow!("cuBLASLt matmul {shape:?} out {out:?}: {e:?}"))
    }

    unsafe fn make_plan(&self, key: &PlanKey) -> Result<Plan> {
        let s = key.shape;
        let bf16 = sys::cudaDataType_t::CUDA_R_16BF;
        let d_type = match key.out {
            OutType::Bf16 => sys::cudaDataType_t::CUDA_R_16BF,
            OutType::F32 => sys::cudaDataType_t::CUDA_R_32F,
        };
        let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType_t::CUDA_R_32F)
            .map_err(cublas("create matmul desc"))?;
        // Own the descriptor now so every early return below frees what exists.
        let mut plan = Plan { desc, a: std::ptr::null_mut(), b: std::ptr::null_mut(), c: std::ptr::null_mut(), algo: std::mem::zeroed() };
        let set = |attr, value: *const c_void, size| lt::set_matmul_desc_attribute(desc, attr, value, size);
        use sys::cublasLtMatmulDescAttributes_t as A;
        let (ta, tb) = (s.trans_a as i32, s.trans_b as i32);
        set(A::CUBLASLT_MATMUL_DESC_TRANSA, &ta as *const i32 as *const c_void, size_of::<i32>()).map_err(cublas("transa"))?;
        set(A::CUBLASLT_MATMUL_DESC_TRANSB, &tb as *const i32 as *const c_void, size_of::<i32>()).map_err(cublas("transb"))?;
        if key.bias {
            let epi = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
            set(A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi as *const _ as *const c_void, size_of::<sys::cublasLtEpilogue_t>())
                .map_err(cublas("epilogue"))?;
            set(A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bf16 as *const _ as *const c_void, size_of::<sys::cudaDataType_t>())
                .map_err(cublas("bias type"))?;
        }
        let (a_rows, a_cols) = if s.trans_a { (s.k, s.m) } else { (s.m, s.k) };
        let (b_rows, b_cols) = if s.trans_b { (s.n, s.k) } else { (s.k, s.n) };
        plan.a = lt::create_matrix_layout(bf16, a_rows, a_cols, s.lda).map_err(cublas("layout A"))?;
        plan.b = lt::create_matrix_layout(bf16, b_rows, b_cols, s.ldb).map_err(cublas("layout B"))?;
        plan.c = lt::create_matrix_layout(d_type, s.m, s.n, s.ldc).map_err(cublas("layout C"))?;

        let pref = lt::create_matmul_pref().map_err(cublas("create preference"))?;
        let result = (|| {
            use sys::cublasLtMatmulPreferenceAttributes_t as P;
            let ws = self.workspace.len();
            lt::set_matmul_pref_attribute(
                pref,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const usize as *const c_void,
                size_of::<usize>(),
            )?;
            for (attr, al) in [
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align[0]),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align[1]),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align[2]),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align[2]),
            ] {
                lt::set_matmul_pref_attribute(pref, attr, &al as *const u32 as *const c_void, size_of::<u32>())?;
            }
            lt::get_matmul_algo_heuristic(self.handle, plan.desc, plan.a, plan.b, plan.c, plan.c, pref)
        })();
        let _ = lt::destroy_matmul_pref(pref);
        let heuristic =
            result.map_err(|e| anyhow::anyhow!("cuBLASLt found no algorithm for {s:?} out {:?} bias {}: {e:?}", key.out, key.bias))?;
        plan.algo = heuristic.algo;
        Ok(plan)
    }
}
