// The software device's CUDA driver (libcuda.so.1): the entry points the backend reaches through
// cudarc, on host memory and the host build of kernels/*.cu, behaving like a strict GPU:
// - launch limits of an H100 (threads, block and grid dimensions, __launch_bounds__, 48 KB of
//   dynamic shared memory unless the function opted in, the opt-in maximum);
// - device memory is one exact-size host allocation per buffer, poisoned with NaN bits, checked by
//   AddressSanitizer when the library is built with it; every copy, memset and pointer argument
//   must lie inside a live allocation;
// - streams are queues that run only at a synchronisation, so a read-back without one is stale;
// - graph capture records and replays; a synchronisation or a pageable copy during a capture
//   invalidates it, as the driver does;
// - events order streams: a stream that waits on an event first runs the recorded stream up to
//   the event when it runs itself, and never more, so a reader that forgot to wait on another
//   stream sees that stream's work undone (events during a capture are refused: not modelled);
// - a device memory size (DLM_SWDEV_MEMORY, bytes with an optional K/M/G suffix) for the
//   out-of-memory paths, and the peak in use reported at exit with DLM_SWDEV_PEAK=1;
// - DLM_SWDEV_DEVICES devices (default 1), each with its own primary context, so that one process
//   per ordinal can stand for one process per GPU (the devices of one process share its memory
//   budget; the ranks of the NCCL stand-in, nccl.cpp, are separate processes);
// - an operation that fails while its stream runs (a collective whose peer died) makes the next
//   cuStreamSynchronize/cuCtxSynchronize that runs or waits for it return CUDA_ERROR_LAUNCH_FAILED,
//   once (not sticky, unlike a real device fault).
// Entry points not written here are generated stubs that stop the process naming themselves.
#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstring>
#include "driver_state.h"

namespace swdev {

void fatal(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("dlm software device: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
    abort();
}

namespace drv {

// Why a call failed, on stderr: the caller only sees a CUresult, and the point of this device is
// to say what a GPU would not.
CUresult refuse(CUresult code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("dlm software device: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

State& st() {
    static State* s = new State;  // never destroyed: drops after main may still call in
    return *s;
}

thread_local Context* t_current = nullptr;
// Set by swdev::fail_running_op while an operation runs; drain() moves it to the stream.
thread_local bool t_op_failed = false;

int device_count() {
    const char* v = getenv("DLM_SWDEV_DEVICES");
    if (!v || !*v) return 1;
    char* end = nullptr;
    long n = strtol(v, &end, 10);
    if (*end || n < 1 || n > kMaxDevices) fatal("DLM_SWDEV_DEVICES=%s: expected a device count from 1 to %d", v, kMaxDevices);
    return (int)n;
}

bool valid_device(CUdevice d) { return d >= 0 && d < st().devices; }

size_t memory_limit() {
    const char* v = getenv("DLM_SWDEV_MEMORY");
    if (!v || !*v) return size_t(8) << 30;
    char* end = nullptr;
    double x = strtod(v, &end);
    switch (*end) {
        case 'k': case 'K': x *= 1024; break;
        case 'm': case 'M': x *= 1024 * 1024; break;
        case 'g': case 'G': x *= 1024.0 * 1024 * 1024; break;
        case 0: break;
        default: fatal("DLM_SWDEV_MEMORY=%s: expected bytes with an optional K/M/G suffix", v);
    }
    return (size_t)x;
}

Stream* stream_of(CUstream h) {
    if (h == nullptr || h == CU_STREAM_LEGACY || h == CU_STREAM_PER_THREAD) return &st().legacy;
    auto* s = reinterpret_cast<Stream*>(h);
    return st().streams.count(s) ? s : nullptr;
}

// DLM_SWDEV_TRACE=1 prints every allocation and every op as it runs, for finding what a step does.
bool tracing() {
    static const bool on = getenv("DLM_SWDEV_TRACE") && strcmp(getenv("DLM_SWDEV_TRACE"), "0") != 0;
    return on;
}

// Runs the next queued operation of `s`.
void run_next(Stream& s) {
    Op op = std::move(s.queue.front());
    s.queue.pop_front();
    const auto t0 = tracing() ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    s.running = true;
    t_op_failed = false;
    op.run();
    if (t_op_failed && s.error == CUDA_SUCCESS) s.error = CUDA_ERROR_LAUNCH_FAILED;
    s.running = false;
    ++s.done;
    if (tracing())
        fprintf(stderr, "swdev: ran %s in %.3f ms\n", op.what.c_str(), std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
}

// Runs a stream's queued work in order.
void drain(Stream& s) {
    while (!s.queue.empty()) run_next(s);
}

// The live stream with this id, or null (destroyed: its work ran when it was destroyed).
Stream* stream_by_id(uint64_t id) {
    if (id == 0) return &st().legacy;
    for (Stream* s : st().streams)
        if (s->id == id) return s;
    return nullptr;
}

// Runs `s` until its first `seq` operations have run: what waiting on an event recorded there
// needs. A stream in the middle of an operation cannot run further: the waits form a cycle.
void run_until(Stream& s, uint64_t seq, const char* why) {
    while (s.done < seq) {
        if (s.running) fatal("%s: streams wait on each other's events in a cycle (a deadlock on a GPU)", why);
        run_next(s);
    }
}

// The error an operation of `s` left for the synchronisation that waited for it, reported once.
CUresult take_error(Stream& s) {
    CUresult r = s.error;
    s.error = CUDA_SUCCESS;
    return r;
}

// In creation order, so that a stream created later (a communication stream) runs after the
// compute stream unless an event says otherwise: a missing wait then shows as stale data.
void drain_all() {
    drain(st().legacy);
    std::vector<Stream*> order(st().streams.begin(), st().streams.end());
    std::sort(order.begin(), order.end(), [](Stream* a, Stream* b) { return a->id < b->id; });
    for (Stream* s : order) drain(*s);
}

// A capture that the calling thread could break with a synchronising call, if any.
Stream* capture_affected_by_this_thread() {
    for (Stream* s : st().streams) {
        if (!s->capture) continue;
        if (s->mode == CU_STREAM_CAPTURE_MODE_RELAXED) continue;
        if (s->mode == CU_STREAM_CAPTURE_MODE_GLOBAL || s->capture_thread == std::this_thread::get_id()) return s;
    }
    return nullptr;
}

// A call the driver forbids while a capture is under way: invalidates it and fails.
CUresult forbid_during_capture(const char* call) {
    if (Stream* s = capture_affected_by_this_thread()) {
        if (s->invalid.empty()) s->invalid = call;
        return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "%s during a stream capture: the capture is invalidated", call);
    }
    return CUDA_SUCCESS;
}

CUresult push(Stream* s, std::string what, std::function<void()> run) {
    if (!s) return refuse(CUDA_ERROR_INVALID_HANDLE, "%s on an unknown stream", what.c_str());
    if (s->capture) {
        if (s->invalid.empty()) s->capture->ops.push_back({std::move(what), std::move(run)});
        else return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    } else {
        s->queue.push_back({std::move(what), std::move(run)});
        ++s->enqueued;
    }
    return CUDA_SUCCESS;
}

// The allocation holding [p, p + n), or end().
std::map<uint64_t, size_t>::iterator find_alloc(uint64_t p, size_t n) {
    auto& a = st().allocs;
    auto it = a.upper_bound(p);
    if (it == a.begin()) return a.end();
    --it;
    if (p < it->first || p + n > it->first + it->second || p + n < p) return a.end();
    return it;
}

CUresult check_range(uint64_t p, size_t n, const char* call, const char* what) {
    if (find_alloc(p, n) == st().allocs.end())
        return refuse(CUDA_ERROR_INVALID_VALUE, "%s: %s [0x%llx, +%zu bytes) is not inside one live device allocation", call, what,
                      (unsigned long long)p, n);
    return CUDA_SUCCESS;
}

bool need_context(const char* call, CUresult* r) {
    if (t_current == nullptr) {
        *r = refuse(CUDA_ERROR_INVALID_CONTEXT, "%s: no context is current on this thread", call);
        return false;
    }
    return true;
}

CUresult allocate(CUdeviceptr* dptr, size_t bytes, const char* call) {
    if (!dptr) return CUDA_ERROR_INVALID_VALUE;
    if (tracing()) fprintf(stderr, "swdev: %s %zu bytes\n", call, bytes);
    State& s = st();
    if (bytes > s.limit - s.used)
        return refuse(CUDA_ERROR_OUT_OF_MEMORY, "%s: %zu bytes requested, %zu of %zu in use", call, bytes, s.used, s.limit);
    void* p = nullptr;
    // Exactly `bytes`, 256-aligned as the driver's: ASan then reports the first byte past the end.
    if (posix_memalign(&p, 256, bytes ? bytes : 1) != 0) return refuse(CUDA_ERROR_OUT_OF_MEMORY, "%s: host allocation failed", call);
    memset(p, 0xff, bytes);  // NaN bits in f32 and bf16, -1 in integers: fresh memory is not zero
    s.allocs[(uint64_t)p] = bytes;
    s.used += bytes;
    if (s.used > s.peak) s.peak = s.used;
    *dptr = (CUdeviceptr)p;
    return CUDA_SUCCESS;
}

// DLM_SWDEV_PEAK=1: the most device memory in use at once, said at exit (the memory plan's test
// compares it with the plan).
__attribute__((destructor)) static void report_peak() {
    const char* v = getenv("DLM_SWDEV_PEAK");
    if (v && strcmp(v, "0") != 0) fprintf(stderr, "swdev: peak device memory %zu bytes\n", st().peak);
}

void release(uint64_t p) {
    State& s = st();
    auto it = s.allocs.find(p);
    if (it == s.allocs.end()) fatal("freeing 0x%llx, which is not a live device allocation (double free?)", (unsigned long long)p);
    s.used -= it->second;
    s.allocs.erase(it);
    free((void*)p);
}

CUresult free_checked(CUdeviceptr p, const char* call) {
    if (st().allocs.find(p) == st().allocs.end())
        return refuse(CUDA_ERROR_INVALID_VALUE, "%s: 0x%llx is not the start of a live device allocation", call, (unsigned long long)p);
    return CUDA_SUCCESS;
}

const KernelInfo* kernel_named(const char* name) {
    for (size_t i = 0; i < swdev_kernel_table_len; ++i)
        if (strcmp(swdev_kernel_table[i].name, name) == 0) return &swdev_kernel_table[i];
    return nullptr;
}

}  // namespace drv

using namespace drv;

int enqueue(void* stream, const char* what, std::function<void()> op) {
    std::lock_guard lock(st().mu);
    return push(stream_of((CUstream)stream), what, std::move(op));
}

bool is_device_range(uint64_t ptr, size_t bytes) {
    std::lock_guard lock(st().mu);
    return find_alloc(ptr, bytes) != st().allocs.end();
}

int current_device() { return t_current ? t_current->device : -1; }

void fail_running_op() { t_op_failed = true; }

}  // namespace swdev

using namespace swdev;
using namespace swdev::drv;

// ---- initialisation, device, context -----------------------------------------------------------

EXPORT CUresult cuInit(unsigned flags) {
    LOCK;
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    if (!st().initialised) {
        st().limit = memory_limit();
        st().devices = device_count();
        for (int d = 0; d < kMaxDevices; ++d) st().primary[d].device = d;
        st().initialised = true;
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDriverGetVersion(int* v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = CUDA_VERSION;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetCount(int* n) {
    if (!st().initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!n) return CUDA_ERROR_INVALID_VALUE;
    *n = st().devices;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (!st().initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!valid_device(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (!valid_device(d)) return CUDA_ERROR_INVALID_DEVICE;
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "%s", kName);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    if (!valid_device(d)) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = st().limit;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice d) {
    if (!valid_device(d)) return CUDA_ERROR_INVALID_DEVICE;
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    switch (a) {
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = 9; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = 0; break;
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = kMaxThreads; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *v = kMaxThreads; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *v = kMaxBlockZ; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *v = (int)kMaxGridX; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *v = kMaxGridYZ; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = kSmemDefault; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *v = kSmemOptin; break;
        case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
        case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = 132; break;
        case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *v = 1; break;
        case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *v = 1; break;
        default: return refuse(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetAttribute: attribute %d is not modelled", (int)a);
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice d) {
    LOCK;
    if (!valid_device(d)) return CUDA_ERROR_INVALID_DEVICE;
    ++st().primary[d].retained;
    *ctx = reinterpret_cast<CUcontext>(&st().primary[d]);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    LOCK;
    if (!valid_device(d)) return CUDA_ERROR_INVALID_DEVICE;
    if (st().primary[d].retained <= 0) return refuse(CUDA_ERROR_INVALID_CONTEXT, "cuDevicePrimaryCtxRelease: not retained");
    --st().primary[d].retained;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    auto* c = reinterpret_cast<Context*>(ctx);
    if (c && (c < st().primary || c >= st().primary + st().devices)) return refuse(CUDA_ERROR_INVALID_CONTEXT, "cuCtxSetCurrent: unknown context");
    t_current = reinterpret_cast<Context*>(ctx);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetCurrent(CUcontext* ctx) {
    *ctx = reinterpret_cast<CUcontext>(t_current);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetDevice(CUdevice* d) {
    CUresult r;
    if (!need_context("cuCtxGetDevice", &r)) return r;
    *d = t_current->device;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSynchronize() {
    LOCK;
    CUresult r;
    if (!need_context("cuCtxSynchronize", &r)) return r;
    if ((r = forbid_during_capture("cuCtxSynchronize"))) return r;
    drain_all();
    // The first failure of any stream; every stream's is reported (and cleared) by this one wait.
    r = take_error(st().legacy);
    for (Stream* s : st().streams) {
        CUresult e = take_error(*s);
        if (r == CUDA_SUCCESS) r = e;
    }
    return r;
}

EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    LOCK;
    CUresult r;
    if (!need_context("cuMemGetInfo", &r)) return r;
    *free_bytes = st().limit - st().used;
    *total = st().limit;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
#define NAME(x) case x: *s = #x; return CUDA_SUCCESS;
        NAME(CUDA_SUCCESS) NAME(CUDA_ERROR_INVALID_VALUE) NAME(CUDA_ERROR_OUT_OF_MEMORY) NAME(CUDA_ERROR_NOT_INITIALIZED)
        NAME(CUDA_ERROR_INVALID_DEVICE) NAME(CUDA_ERROR_INVALID_IMAGE) NAME(CUDA_ERROR_INVALID_CONTEXT) NAME(CUDA_ERROR_INVALID_HANDLE)
        NAME(CUDA_ERROR_NOT_FOUND) NAME(CUDA_ERROR_NOT_READY) NAME(CUDA_ERROR_ILLEGAL_STATE) NAME(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
        NAME(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED) NAME(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD) NAME(CUDA_ERROR_NOT_SUPPORTED)
        NAME(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES) NAME(CUDA_ERROR_LAUNCH_FAILED)
#undef NAME
        default: *s = nullptr; return CUDA_ERROR_INVALID_VALUE;
    }
}

EXPORT CUresult cuGetErrorString(CUresult e, const char** s) {
    // The name doubles as the description; the reason was printed when the error was made.
    return cuGetErrorName(e, s);
}

// ---- memory --------------------------------------------------------------------------------------

EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice d) {
    if (!valid_device(d)) return CUDA_ERROR_INVALID_DEVICE;
    static int the_pool;
    *pool = reinterpret_cast<CUmemoryPool>(&the_pool);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool, CUmemPool_attribute a, void* v) {
    if (a != CU_MEMPOOL_ATTR_RELEASE_THRESHOLD || !v) return refuse(CUDA_ERROR_INVALID_VALUE, "cuMemPoolSetAttribute: attribute %d is not modelled", (int)a);
    return CUDA_SUCCESS;  // the pool keeps nothing: every free goes back at once, for ASan to watch
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCK;
    CUresult r;
    if (!need_context("cuMemAlloc", &r)) return r;
    if ((r = forbid_during_capture("cuMemAlloc"))) return r;
    return allocate(p, bytes, "cuMemAlloc");
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream h) {
    LOCK;
    CUresult r;
    if (!need_context("cuMemAllocAsync", &r)) return r;
    Stream* s = stream_of(h);
    if (!s) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuMemAllocAsync on an unknown stream");
    // The driver would record an allocation node; the backend never allocates inside a recorded
    // step (its buffers would then belong to the graph), so this device treats it as a bug.
    if (s->capture) {
        if (s->invalid.empty()) s->invalid = "cuMemAllocAsync";
        return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuMemAllocAsync of %zu bytes during a stream capture", bytes);
    }
    return allocate(p, bytes, "cuMemAllocAsync");
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr p) {
    LOCK;
    CUresult r;
    if ((r = forbid_during_capture("cuMemFree"))) return r;
    if ((r = free_checked(p, "cuMemFree"))) return r;
    drain_all();  // cuMemFree waits for the device
    release(p);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream h) {
    LOCK;
    CUresult r;
    if ((r = free_checked(p, "cuMemFreeAsync"))) return r;
    Stream* s = stream_of(h);
    if (s && s->capture) {
        if (s->invalid.empty()) s->invalid = "cuMemFreeAsync";
        return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuMemFreeAsync during a stream capture");
    }
    return push(s, "cuMemFreeAsync", [p] { release(p); });
}

EXPORT CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    LOCK;
    if (posix_memalign(p, 4096, bytes ? bytes : 1) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    st().pinned.insert((uint64_t)*p);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemFreeHost(void* p) {
    LOCK;
    if (!st().pinned.erase((uint64_t)p)) return refuse(CUDA_ERROR_INVALID_VALUE, "cuMemFreeHost: %p was not made by cuMemHostAlloc", p);
    drain_all();
    free(p);
    return CUDA_SUCCESS;
}

namespace {
bool is_pinned(const void* p) {
    auto& pinned = st().pinned;
    auto it = pinned.upper_bound((uint64_t)p);
    return it != pinned.begin() && *--it == (uint64_t)p;  // only whole pinned buffers are tracked
}

// A copy between the host and the device: the driver cannot record one from pageable memory.
CUresult host_copy_allowed(Stream* s, const void* host, const char* call) {
    if (s && s->capture && !is_pinned(host)) {
        if (s->invalid.empty()) s->invalid = call;
        return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "%s with pageable host memory during a stream capture", call);
    }
    return CUDA_SUCCESS;
}
}  // namespace

EXPORT CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream h) {
    LOCK;
    CUresult r;
    if ((r = check_range(p, n, "cuMemsetD8Async", "destination"))) return r;
    return push(stream_of(h), "cuMemsetD8Async", [p, v, n] { memset((void*)p, v, n); });
}

EXPORT CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) {
    LOCK;
    CUresult r;
    if ((r = forbid_during_capture("cuMemsetD8"))) return r;
    if ((r = check_range(p, n, "cuMemsetD8", "destination"))) return r;
    drain(st().legacy);
    memset((void*)p, v, n);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream h) {
    LOCK;
    CUresult r;
    Stream* s = stream_of(h);
    if ((r = check_range(dst, n, "cuMemcpyHtoDAsync", "destination"))) return r;
    if ((r = host_copy_allowed(s, src, "cuMemcpyHtoDAsync"))) return r;
    if (is_pinned(src)) return push(s, "cuMemcpyHtoDAsync", [dst, src, n] { memcpy((void*)dst, src, n); });
    // Pageable memory is staged at the call, so the caller may reuse its buffer at once.
    auto staged = std::make_shared<std::vector<unsigned char>>((const unsigned char*)src, (const unsigned char*)src + n);
    return push(s, "cuMemcpyHtoDAsync", [dst, staged] { memcpy((void*)dst, staged->data(), staged->size()); });
}

EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream h) {
    LOCK;
    CUresult r;
    Stream* s = stream_of(h);
    if ((r = check_range(src, n, "cuMemcpyDtoHAsync", "source"))) return r;
    if ((r = host_copy_allowed(s, dst, "cuMemcpyDtoHAsync"))) return r;
    // Written only when the stream runs: a host read before a synchronisation sees stale data.
    return push(s, "cuMemcpyDtoHAsync", [dst, src, n] { memcpy(dst, (const void*)src, n); });
}

EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream h) {
    LOCK;
    CUresult r;
    if ((r = check_range(dst, n, "cuMemcpyDtoDAsync", "destination"))) return r;
    if ((r = check_range(src, n, "cuMemcpyDtoDAsync", "source"))) return r;
    return push(stream_of(h), "cuMemcpyDtoDAsync", [dst, src, n] { memcpy((void*)dst, (const void*)src, n); });
}

EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    LOCK;
    CUresult r;
    if ((r = forbid_during_capture("cuMemcpyHtoD"))) return r;
    if ((r = check_range(dst, n, "cuMemcpyHtoD", "destination"))) return r;
    drain(st().legacy);
    memcpy((void*)dst, src, n);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    LOCK;
    CUresult r;
    if ((r = forbid_during_capture("cuMemcpyDtoH"))) return r;
    if ((r = check_range(src, n, "cuMemcpyDtoH", "source"))) return r;
    drain(st().legacy);  // the legacy stream only: work on non-blocking streams is not waited for
    memcpy(dst, (const void*)src, n);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    LOCK;
    CUresult r;
    if ((r = forbid_during_capture("cuMemcpyDtoD"))) return r;
    if ((r = check_range(dst, n, "cuMemcpyDtoD", "destination"))) return r;
    if ((r = check_range(src, n, "cuMemcpyDtoD", "source"))) return r;
    drain(st().legacy);
    memcpy((void*)dst, (const void*)src, n);
    return CUDA_SUCCESS;
}

// ---- modules and launches ----------------------------------------------------------------------

EXPORT CUresult cuModuleLoadData(CUmodule* m, const void* image) {
    LOCK;
    CUresult r;
    if (!need_context("cuModuleLoadData", &r)) return r;
    if (!image) return CUDA_ERROR_INVALID_VALUE;
    const auto* bytes = static_cast<const unsigned char*>(image);
    uint32_t magic;
    memcpy(&magic, bytes, 4);
    size_t len;
    if (magic == 0xBA55ED50u) {  // a fatbin: its header gives its size
        uint16_t header;
        uint64_t body;
        memcpy(&header, bytes + 6, 2);
        memcpy(&body, bytes + 8, 8);
        len = header + body;
    } else if (strstr(static_cast<const char*>(image), ".entry") != nullptr) {  // PTX text
        len = strlen(static_cast<const char*>(image));
    } else {
        return refuse(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: neither a fatbin nor PTX");
    }
    auto* mod = new Module{std::string(reinterpret_cast<const char*>(bytes), len)};
    st().modules.insert(mod);
    *m = reinterpret_cast<CUmodule>(mod);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleUnload(CUmodule h) {
    LOCK;
    auto* m = reinterpret_cast<Module*>(h);
    if (!st().modules.erase(m)) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuModuleUnload: unknown module");
    delete m;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleGetFunction(CUfunction* f, CUmodule h, const char* name) {
    LOCK;
    auto* m = reinterpret_cast<Module*>(h);
    if (!st().modules.count(m)) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuModuleGetFunction: unknown module");
    // The kernel must be in this module's image (its symbol name is there in plain text), and the
    // host build must have it: both as on a GPU, where a name from another module is not found.
    if (m->image.find(name) == std::string::npos) return refuse(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction: %s is not in this module", name);
    const KernelInfo* k = kernel_named(name);
    if (!k) return refuse(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction: %s has no host build (not an extern \"C\" __global__ in kernels/*.cu?)", name);
    auto* fn = new Function{k};
    st().functions.insert(fn);
    *f = reinterpret_cast<CUfunction>(fn);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuFuncSetAttribute(CUfunction h, CUfunction_attribute a, int v) {
    LOCK;
    auto* f = reinterpret_cast<Function*>(h);
    if (!st().functions.count(f)) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuFuncSetAttribute: unknown function");
    if (a != CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)
        return refuse(CUDA_ERROR_INVALID_VALUE, "cuFuncSetAttribute(%s): attribute %d is not modelled", f->info->name, (int)a);
    if (v < 0 || v > kSmemOptin)
        return refuse(CUDA_ERROR_INVALID_VALUE, "cuFuncSetAttribute(%s): %d bytes of dynamic shared memory is over the opt-in maximum %d", f->info->name, v, kSmemOptin);
    f->max_dynamic_smem = v;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuFuncGetAttribute(int* v, CUfunction_attribute a, CUfunction h) {
    LOCK;
    auto* f = reinterpret_cast<Function*>(h);
    if (!st().functions.count(f)) return CUDA_ERROR_INVALID_HANDLE;
    switch (a) {
        case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = f->info->launch_bound ? (int)f->info->launch_bound : kMaxThreads; return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *v = f->max_dynamic_smem; return CUDA_SUCCESS;
        default: return refuse(CUDA_ERROR_INVALID_VALUE, "cuFuncGetAttribute(%s): attribute %d is not modelled", f->info->name, (int)a);
    }
}

EXPORT CUresult cuLaunchKernel(CUfunction h, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem,
                               CUstream hs, void** params, void** extra) {
    LOCK;
    auto* f = reinterpret_cast<Function*>(h);
    if (!st().functions.count(f)) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuLaunchKernel: unknown function");
    const KernelInfo& k = *f->info;
    if (extra) return refuse(CUDA_ERROR_NOT_SUPPORTED, "cuLaunchKernel(%s): `extra` parameter packing is not modelled", k.name);
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (!gx || !gy || !gz || gx > kMaxGridX || gy > (unsigned)kMaxGridYZ || gz > (unsigned)kMaxGridYZ)
        return refuse(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel(%s): grid (%u,%u,%u) is outside the device's limits", k.name, gx, gy, gz);
    if (!bx || !by || !bz || bx > (unsigned)kMaxThreads || by > (unsigned)kMaxThreads || bz > (unsigned)kMaxBlockZ || threads > (unsigned)kMaxThreads)
        return refuse(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel(%s): block (%u,%u,%u) is outside the device's limits", k.name, bx, by, bz);
    if (k.launch_bound && threads > k.launch_bound)
        return refuse(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel(%s): %llu threads per block, over its __launch_bounds__(%u)", k.name, threads, k.launch_bound);
    if ((int)smem > f->max_dynamic_smem)
        return refuse(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel(%s): %u bytes of dynamic shared memory, over the %d this function allows%s", k.name, smem,
                      f->max_dynamic_smem, f->max_dynamic_smem == kSmemDefault ? " without the opt-in attribute" : "");
    if (k.n_params > 0 && !params) return refuse(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel(%s): no parameters for %d", k.name, k.n_params);
    // The driver copies the parameter values at the call; the launch may run much later.
    auto storage = std::make_shared<std::vector<std::vector<unsigned char>>>();
    for (int i = 0; i < k.n_params; ++i) {
        const auto* p = static_cast<const unsigned char*>(params[i]);
        storage->emplace_back(p, p + k.param_sizes[i]);
    }
    char what[160];
    snprintf(what, sizeof what, "kernel %s grid (%u,%u,%u) block (%u,%u,%u) smem %u", k.name, gx, gy, gz, bx, by, bz, smem);
    return push(stream_of(hs), what, [&k, storage, gx, gy, gz, bx, by, bz, smem] {
        std::vector<void*> args;
        for (auto& v : *storage) args.push_back(v.data());
        Launch l{k.name, k.body, args.data(), {gx, gy, gz}, {bx, by, bz}, smem};
        run_grid(l);
    });
}

// The generated stubs' end (gen_stubs.py): an entry point the software device does not model.
extern "C" [[noreturn]] void swdev_unimplemented(const char* name) {
    fatal("%s is not implemented by the software device: the backend reached an entry point it has never used before", name);
}
