//! The software device (tests/swdev) catches what a real GPU would get wrong or refuse: each test
//! here makes one deliberate mistake through the same driver entry points the backend uses
//! (cudarc, the embedded fatbins, the backend's cuBLASLt plans) and expects the failure.
//!
//! Mistakes that stop the process on the device (an out-of-bounds access found by
//! AddressSanitizer, a GEMM reaching past its operand) run in a child process of this test binary
//! (`DLM_SWDEV_FAULT` names the case), and the test checks that the child died with the report.
//! On a real GPU these tests are skipped: there the same mistakes give undefined behaviour.

mod common;
use cudarc::driver::sys::{CUfunction_attribute, CUgraphInstantiate_flags, CUstreamCaptureMode, CUstreamCaptureStatus};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use dlm_engine::backend::cuda::blas::{Gemm, GemmShape, OutType};
use dlm_engine::backend::cuda::kernels::MODULES;
use half::bf16;
use std::process::Command;
use std::sync::Arc;

const CHILD: &str = "DLM_SWDEV_FAULT";

/// The software device's context and a stream, or `None` (skip) without it.
fn software_device(test: &str) -> Option<(Arc<CudaContext>, Arc<CudaStream>)> {
    let backend = common::gpu(test)?;
    let name = dlm_engine::backend::Backend::name(&backend);
    if !name.contains("software device") {
        eprintln!("skipped {test}: {name} is a real GPU, where these mistakes are undefined behaviour");
        return None;
    }
    drop(backend);
    let ctx = CudaContext::new(0).unwrap();
    // As the backend: one stream, no per-slice events.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().unwrap();
    Some((ctx, stream))
}

/// A device-to-host copy and the synchronisation it needs: cudarc's `clone_dtoh` queues the copy
/// and returns (a real driver happens to finish pageable copies before returning; this device
/// does not, so that a missing synchronisation shows).
fn read<T: cudarc::driver::DeviceRepr>(stream: &Arc<CudaStream>, src: &CudaSlice<T>) -> Vec<T> {
    let v = stream.clone_dtoh(src).unwrap();
    stream.synchronize().unwrap();
    v
}

fn kernel(ctx: &Arc<CudaContext>, module: &str, name: &str) -> CudaFunction {
    let m = MODULES.iter().find(|m| m.name == module).unwrap();
    let fatbin = m.fatbin.expect("the software device runs the nvcc build's fatbins");
    ctx.load_module(Ptx::from_binary(fatbin.to_vec())).unwrap().load_function(name).unwrap()
}

/// Runs this same test in a child process with `CHILD=case` (plus `env`), and returns its exit
/// status and standard error.
fn in_child(test: &str, case: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", test, "--nocapture", "--test-threads", "1"]).env(CHILD, case);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn child_case() -> Option<String> {
    std::env::var(CHILD).ok()
}

/// Expects the child to have died with every one of `needles` in its report.
fn assert_died(what: &str, (ok, err): (bool, String), needles: &[&str]) {
    assert!(!ok, "{what}: the software device let it pass:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{what}: the report lacks `{n}`:\n{err}");
    }
    eprintln!("{what}: caught as expected");
}

#[test]
fn a_swapped_leading_dimension_is_caught() {
    const TEST: &str = "a_swapped_leading_dimension_is_caught";
    let Some((_ctx, stream)) = software_device(TEST) else { return };
    // D (m×n) = A (m×k) · B (k×n), column-major: A's leading dimension is m.
    let (m, n, k) = (8u64, 4u64, 16u64);
    let shape = |lda| GemmShape { m, n, k, trans_a: false, trans_b: false, lda, ldb: k as i64, ldc: m as i64 };
    let a: CudaSlice<bf16> = stream.clone_htod(&vec![bf16::ONE; (m * k) as usize]).unwrap();
    let b: CudaSlice<bf16> = stream.clone_htod(&vec![bf16::ONE; (k * n) as usize]).unwrap();
    let d: CudaSlice<f32> = stream.alloc_zeros((m * n) as usize).unwrap();
    let gemm = Gemm::new(&stream, 9).unwrap();
    let (pa, pb, pd) = (a.device_ptr(&stream).0, b.device_ptr(&stream).0, d.device_ptr(&stream).0);
    match child_case().as_deref() {
        Some("swapped") => {
            // lda = k instead of m: A would be read as k×k, past its m·k elements.
            let _ = unsafe { gemm.matmul(shape(k as i64), pa, pb, pd, OutType::F32, None, false) };
            stream.synchronize().unwrap();
            return;
        }
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
    unsafe { gemm.matmul(shape(m as i64), pa, pb, pd, OutType::F32, None, false) }.unwrap();
    assert_eq!(read(&stream, &d), vec![k as f32; (m * n) as usize], "the correct GEMM");
    assert_died("lda = k", in_child(TEST, "swapped", &[]), &["dlm software device", "cublasLtMatmul", "A"]);
}

#[test]
fn a_kernel_reading_one_element_past_its_buffer_is_caught() {
    const TEST: &str = "a_kernel_reading_one_element_past_its_buffer_is_caught";
    let Some((ctx, stream)) = software_device(TEST) else { return };
    let f = kernel(&ctx, "elementwise", "convert_bf16_to_f32");
    let n = 1000usize;
    let src: CudaSlice<bf16> = stream.clone_htod(&vec![bf16::from_f32(2.0); n]).unwrap();
    let mut dst: CudaSlice<f32> = stream.alloc_zeros(n + 1).unwrap();
    let mut launch = |count: u64| {
        let mut b = stream.launch_builder(&f);
        b.arg(&src).arg(&mut dst).arg(&count);
        unsafe { b.launch(LaunchConfig::for_num_elems(count as u32)) }.unwrap();
        stream.synchronize().unwrap();
    };
    if child_case().as_deref() == Some("past") {
        launch(n as u64 + 1);
        return;
    }
    launch(n as u64);
    assert_eq!(read(&stream, &dst)[..n], vec![2.0f32; n][..]);
    assert_died("n + 1 elements of an n-element source", in_child(TEST, "past", &[]), &["heap-buffer-overflow", "convert_bf16_to_f32"]);
}

#[test]
fn a_read_back_without_synchronisation_sees_stale_data() {
    let Some((ctx, stream)) = software_device("a_read_back_without_synchronisation_sees_stale_data") else { return };
    let f = kernel(&ctx, "elementwise", "convert_bf16_to_f32");
    let n = 256usize;
    let src: CudaSlice<bf16> = stream.clone_htod(&vec![bf16::from_f32(3.0); n]).unwrap();
    let mut dst: CudaSlice<f32> = stream.alloc_zeros(n).unwrap();
    let count = n as u64;
    let mut b = stream.launch_builder(&f);
    b.arg(&src).arg(&mut dst).arg(&count);
    unsafe { b.launch(LaunchConfig::for_num_elems(n as u32)) }.unwrap();
    // The asynchronous copy the backend issues, read before the stream has run.
    let mut host = vec![-1.0f32; n];
    let (ptr, _guard) = dst.device_ptr(&stream);
    unsafe { cudarc::driver::sys::cuMemcpyDtoHAsync_v2(host.as_mut_ptr().cast(), ptr, n * 4, stream.cu_stream()) }.result().unwrap();
    assert_eq!(host, vec![-1.0; n], "without a synchronisation the host buffer must still be stale");
    stream.synchronize().unwrap();
    assert_eq!(host, vec![3.0; n], "after the synchronisation the copy has landed");
}

#[test]
fn a_shared_memory_overrun_of_2_kb_is_caught() {
    const TEST: &str = "a_shared_memory_overrun_of_2_kb_is_caught";
    let Some((ctx, stream)) = software_device(TEST) else { return };
    // LayerNorm caches its row in dynamic shared memory: cols floats.
    let f = kernel(&ctx, "layernorm", "add_layernorm_fwd_bf16");
    let (rows, cols) = (2usize, 1024usize);
    let x: CudaSlice<bf16> = stream.clone_htod(&(0..rows * cols).map(|i| bf16::from_f32((i % 7) as f32)).collect::<Vec<_>>()).unwrap();
    let gamma: CudaSlice<bf16> = stream.clone_htod(&vec![bf16::ONE; cols]).unwrap();
    let beta: CudaSlice<bf16> = stream.alloc_zeros(cols).unwrap();
    let mut out: CudaSlice<bf16> = stream.alloc_zeros(rows * cols).unwrap();
    let mut mean: CudaSlice<f32> = stream.alloc_zeros(rows).unwrap();
    let mut rstd: CudaSlice<f32> = stream.alloc_zeros(rows).unwrap();
    let mut launch = |smem: u32| {
        let null = 0u64;
        let (r, c, eps) = (rows as i32, cols as i32, 1e-5f32);
        let mut b = stream.launch_builder(&f);
        b.arg(&x).arg(&null).arg(&null).arg(&gamma).arg(&beta).arg(&mut out).arg(&mut mean).arg(&mut rstd).arg(&r).arg(&c).arg(&eps);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: smem };
        unsafe { b.launch(cfg) }.unwrap();
        stream.synchronize().unwrap();
    };
    if child_case().as_deref() == Some("short") {
        launch((cols * 4 - 2048) as u32);
        return;
    }
    launch((cols * 4) as u32);
    assert!(read(&stream, &rstd).iter().all(|v| v.is_finite() && *v > 0.0));
    assert_died(
        "2 KB less shared memory than the kernel uses",
        in_child(TEST, "short", &[]),
        &["heap-buffer-overflow", "add_layernorm_fwd_bf16"],
    );
}

#[test]
fn launches_outside_an_h100s_limits_are_refused() {
    let Some((ctx, stream)) = software_device("launches_outside_an_h100s_limits_are_refused") else { return };
    let f = kernel(&ctx, "elementwise", "convert_bf16_to_f32");
    let src: CudaSlice<bf16> = stream.alloc_zeros(4096).unwrap();
    let mut dst: CudaSlice<f32> = stream.alloc_zeros(4096).unwrap();
    let n = 4096u64;
    let mut try_launch = |f: &CudaFunction, cfg: LaunchConfig| {
        let mut b = stream.launch_builder(f);
        b.arg(&src).arg(&mut dst).arg(&n);
        unsafe { b.launch(cfg) }
    };
    let cfg = |block: u32, smem: u32| LaunchConfig { grid_dim: (4, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: smem };
    assert!(try_launch(&f, cfg(1024, 0)).is_ok(), "1024 threads per block is allowed");
    assert!(try_launch(&f, cfg(1025, 0)).is_err(), "1025 threads per block must be refused");
    assert!(
        try_launch(&f, LaunchConfig { grid_dim: (1, 65536, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 }).is_err(),
        "grid y over 65535"
    );
    assert!(try_launch(&f, cfg(256, 48 << 10)).is_ok(), "48 KB of dynamic shared memory needs no opt-in");
    assert!(try_launch(&f, cfg(256, (48 << 10) + 16)).is_err(), "over 48 KB without the opt-in attribute must be refused");
    let attr = CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    f.set_attribute(attr, 100 << 10).unwrap();
    assert!(try_launch(&f, cfg(256, 100 << 10)).is_ok(), "within the opt-in");
    assert!(try_launch(&f, cfg(256, (100 << 10) + 4)).is_err(), "over the opt-in");
    assert!(f.set_attribute(attr, 232448 + 1).is_err(), "over the device's opt-in maximum");
    // __launch_bounds__(1024) is the most the sampler kernel accepts; so is a module's own kernel.
    let pick = kernel(&ctx, "sampler", "vocab_pick_bf16");
    assert_eq!(pick.max_threads_per_block().unwrap(), 1024);
    let adamw = MODULES.iter().find(|m| m.name == "adamw").unwrap().fatbin.unwrap();
    let m = ctx.load_module(Ptx::from_binary(adamw.to_vec())).unwrap();
    assert!(m.load_function("attn_fwd").is_err(), "a kernel of another module is not in this one");
    stream.synchronize().unwrap();
}

#[test]
fn fresh_device_memory_is_poisoned() {
    let Some((_ctx, stream)) = software_device("fresh_device_memory_is_poisoned") else { return };
    let raw: CudaSlice<f32> = unsafe { stream.alloc(64) }.unwrap();
    assert!(read(&stream, &raw).iter().all(|v| v.is_nan()), "fresh memory must read as NaN, not zero");
    let zeroed: CudaSlice<f32> = stream.alloc_zeros(64).unwrap();
    assert!(read(&stream, &zeroed).iter().all(|v| *v == 0.0));
}

#[test]
fn a_synchronisation_during_capture_invalidates_it() {
    let Some((ctx, stream)) = software_device("a_synchronisation_during_capture_invalidates_it") else { return };
    let f = kernel(&ctx, "elementwise", "convert_bf16_to_f32");
    let src: CudaSlice<bf16> = stream.clone_htod(&vec![bf16::from_f32(5.0); 64]).unwrap();
    let mut dst: CudaSlice<f32> = stream.alloc_zeros(64).unwrap();
    let n = 64u64;
    stream.synchronize().unwrap();
    let capture = |dst: &mut CudaSlice<f32>, sync_inside: bool| {
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
        let mut b = stream.launch_builder(&f);
        b.arg(&src).arg(dst).arg(&n);
        unsafe { b.launch(LaunchConfig::for_num_elems(64)) }.unwrap();
        let synced = if sync_inside { Some(stream.synchronize()) } else { None };
        let _ = ctx.check_err();
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        assert_eq!(stream.capture_status().unwrap(), CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE);
        (synced, ended)
    };
    let (_, graph) = capture(&mut dst, false);
    let graph = graph.unwrap().expect("a graph with one launch");
    assert!(read(&stream, &dst).iter().all(|v| *v == 0.0), "capturing runs nothing");
    graph.launch().unwrap();
    assert_eq!(read(&stream, &dst), vec![5.0; 64], "replaying runs the launch");
    let (synced, ended) = capture(&mut dst, true);
    assert!(synced.unwrap().is_err(), "a synchronisation inside a capture must fail");
    assert!(ended.is_err(), "and the capture must end invalidated");
}

/// Stream `side` converts `src` (written on `main`) into `dst`, as a communication stream works
/// on the compute stream's buffers; `main` then reads `dst`, after waiting for `side` or not.
fn read_across_streams(wait: bool) -> Option<Vec<f32>> {
    let (ctx, main) = software_device("two_streams_are_ordered_by_events_alone")?;
    let side = ctx.new_stream().unwrap();
    let f = kernel(&ctx, "elementwise", "convert_bf16_to_f32");
    let n = 64usize;
    let src: CudaSlice<bf16> = main.clone_htod(&vec![bf16::from_f32(7.0); n]).unwrap();
    let mut dst: CudaSlice<f32> = main.alloc_zeros(n).unwrap();
    side.join(&main).unwrap();
    let count = n as u64;
    let mut b = side.launch_builder(&f);
    b.arg(&src).arg(&mut dst).arg(&count);
    unsafe { b.launch(LaunchConfig::for_num_elems(n as u32)) }.unwrap();
    if wait {
        main.join(&side).unwrap();
    }
    let out = read(&main, &dst);
    ctx.synchronize().unwrap();
    Some(out)
}

#[test]
fn two_streams_are_ordered_by_events_alone() {
    let Some(waited) = read_across_streams(true) else { return };
    assert_eq!(waited, vec![7.0; 64], "a stream that waits on the other's event sees its work");
    let unwaited = read_across_streams(false).unwrap();
    assert_eq!(unwaited, vec![0.0; 64], "without the wait the other stream's work must not have run");
}

#[test]
fn an_event_inside_a_capture_is_refused() {
    let Some((ctx, stream)) = software_device("an_event_inside_a_capture_is_refused") else { return };
    let side = ctx.new_stream().unwrap();
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    assert!(stream.join(&side).is_err(), "a capture must not silently take in another stream's work");
    assert!(stream.end_capture(CUgraphInstantiate_flags(0)).is_err(), "and the capture must end invalidated");
    let _ = ctx.check_err();
}

#[test]
fn a_small_device_runs_out_of_memory_cleanly() {
    const TEST: &str = "a_small_device_runs_out_of_memory_cleanly";
    if child_case().as_deref() == Some("small") {
        let err = dlm_engine::backend::cuda::CudaBackend::new(0).err().expect("a 16 MiB device cannot hold the 32 MiB cuBLASLt workspace");
        eprintln!("CudaBackend::new on a 16 MiB device: {err:#}");
        assert!(format!("{err:#}").contains("OUT_OF_MEMORY"), "{err:#}");
        return;
    }
    if software_device(TEST).is_none() {
        return;
    }
    let (ok, err) = in_child(TEST, "small", &[("DLM_SWDEV_MEMORY", "16M")]);
    assert!(ok, "the out-of-memory path must be a clean error:\n{err}");
}

#[test]
fn an_entry_point_the_device_lacks_fails_with_its_name() {
    const TEST: &str = "an_entry_point_the_device_lacks_fails_with_its_name";
    if child_case().as_deref() == Some("missing") {
        let mut v = 0i32;
        let _ = unsafe { cudarc::driver::sys::cuCtxGetApiVersion(std::ptr::null_mut(), &mut v as *mut i32 as *mut u32) };
        return;
    }
    if software_device(TEST).is_none() {
        return;
    }
    assert_died(
        "an unmodelled driver call",
        in_child(TEST, "missing", &[]),
        &["cuCtxGetApiVersion is not implemented by the software device"],
    );
}
