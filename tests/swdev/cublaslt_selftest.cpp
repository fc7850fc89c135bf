// Self-test of the cuBLASLt stand-in (cublaslt.cpp), linked with it directly: this file supplies a
// trivial software device (swdev::enqueue runs the op at once or queues it, swdev::is_device_range
// consults a registry of test allocations) and checks cublasLtMatmul bit for bit against a naive
// reference written here: the same formula, ((alpha·Σ_l a·b) + beta·c) + bias in double with l
// ascending, then one rounding (bf16 with a rounding routine of its own, or f32).
// Build and run: tests/swdev/build_cublaslt_selftest.sh
#include "swdev.h"

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

// ---- The stand-in's C API, declared with opaque handles -------------------------------------------
extern "C" {
struct HeuristicResult {
    uint64_t algo[8];
    size_t workspaceSize;
    int state;
    float wavesCount;
    int reserved[4];
};
const char* cublasLtGetStatusName(int);
const char* cublasLtGetStatusString(int);
int cublasLtCreate(void**);
int cublasLtDestroy(void*);
int cublasLtMatmulDescCreate(void**, int32_t compute, int32_t scale);
int cublasLtMatmulDescDestroy(void*);
int cublasLtMatmulDescSetAttribute(void*, uint32_t, const void*, size_t);
int cublasLtMatrixLayoutCreate(void**, int32_t type, uint64_t rows, uint64_t cols, int64_t ld);
int cublasLtMatrixLayoutDestroy(void*);
int cublasLtMatrixLayoutSetAttribute(void*, uint32_t, const void*, size_t);
int cublasLtMatmulPreferenceCreate(void**);
int cublasLtMatmulPreferenceDestroy(void*);
int cublasLtMatmulPreferenceSetAttribute(void*, uint32_t, const void*, size_t);
int cublasLtMatmulAlgoGetHeuristic(void*, void*, void*, void*, void*, void*, void*, int, HeuristicResult*, int*);
int cublasLtMatmul(void*, void*, const void*, const void*, void*, const void*, void*, const void*, const void*, void*,
                   void*, void*, const void*, void*, size_t, void*);
}

enum : int32_t { R32F = 0, R16BF = 14, R16F = 2, COMPUTE_32F = 68, COMPUTE_16F = 64 };
enum : uint32_t { D_TRANSA = 3, D_TRANSB = 4, D_TRANSC = 5, D_EPILOGUE = 7, D_BIAS_POINTER = 8, D_BIAS_BATCH_STRIDE = 10,
                  D_BIAS_DATA_TYPE = 26 };
enum : uint32_t { L_ORDER = 1, L_BATCH_COUNT = 5, L_BATCH_STRIDE = 6 };
enum : uint32_t { P_MAX_WORKSPACE = 1, P_ALIGN_A = 5 };
enum : int { SUCCESS = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, EXECUTION_FAILED = 13, NOT_SUPPORTED = 15 };

// ---- The test's software device -----------------------------------------------------------------
static std::map<uint64_t, size_t> g_allocs;
static bool g_defer = false;
static std::vector<std::function<void()>> g_pending;
static void* const kBadStream = reinterpret_cast<void*>(0xbad);

namespace swdev {
void fatal(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "dlm software device: ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, "\n");
    va_end(ap);
    std::abort();
}
int enqueue(void* stream, const char*, std::function<void()> op) {
    if (stream == kBadStream) return 400;  // CUDA_ERROR_INVALID_HANDLE
    if (g_defer)
        g_pending.push_back(std::move(op));
    else
        op();
    return 0;
}
bool is_device_range(uint64_t ptr, size_t bytes) {
    auto it = g_allocs.upper_bound(ptr);
    if (it == g_allocs.begin()) return false;
    --it;
    return ptr >= it->first && ptr + bytes <= it->first + it->second;
}
}  // namespace swdev

static void sync_pending() {
    for (auto& op : g_pending) op();
    g_pending.clear();
}

// A registered, 256-byte-aligned "device" buffer.
struct Buf {
    void* p = nullptr;
    size_t n = 0;
    explicit Buf(size_t bytes) : n(bytes) {
        p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
        g_allocs[uint64_t(p)] = bytes;
    }
    ~Buf() {
        g_allocs.erase(uint64_t(p));
        std::free(p);
    }
    Buf(const Buf&) = delete;
    Buf& operator=(const Buf&) = delete;
    char* c() const { return static_cast<char*>(p); }
};

// ---- Independent bf16 helpers ---------------------------------------------------------------------
static float bf16_to_f(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
static uint16_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return uint16_t(u >> 16);
}
// Round-to-nearest-even of a double to bf16: truncate toward zero to a bf16 `lo`, take the next bf16
// away from zero `hi` (0x7f80, infinity, stands for 2^128 when comparing), pick the nearer, ties to
// the even pattern.
static uint16_t ref_bf16(double x) {
    if (std::isnan(x)) return 0x7fc0;
    if (std::isinf(x)) return x > 0 ? 0x7f80 : 0xff80;
    float f = float(x);
    if (std::fabs(double(f)) > std::fabs(x)) f = std::nextafter(f, 0.0f);  // float, rounded toward zero
    uint16_t lo = bits_of(f);                                                // bf16, toward zero
    if ((lo & 0x7fff) == 0x7f80) lo -= 1;  // |x| beyond float's range: start from the largest finite
    uint16_t hi = lo + 1;
    double vlo = bf16_to_f(lo);
    double vhi = (hi & 0x7fff) == 0x7f80 ? std::copysign(0x1p128, x) : double(bf16_to_f(hi));
    double dlo = std::fabs(x - vlo), dhi = std::fabs(vhi - x);
    if (dlo < dhi || (dlo == dhi && (lo & 1) == 0)) return lo;
    return hi;
}
static const uint16_t kNaN16 = 0x7fc0;
static const float kNaN32 = std::nanf("");

// ---- Checks ---------------------------------------------------------------------------------------
static int g_failures = 0, g_checks = 0;
#define CHECK(cond, ...)                                                 \
    do {                                                                 \
        g_checks++;                                                      \
        if (!(cond)) {                                                   \
            g_failures++;                                                \
            std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            std::fprintf(stderr, __VA_ARGS__);                           \
            std::fprintf(stderr, "\n");                                  \
        }                                                                \
    } while (0)
#define CHECK_ST(expr, want) \
    do { int st_ = (expr); CHECK(st_ == (want), "%s returned %s, want %s", #expr, cublasLtGetStatusName(st_), cublasLtGetStatusName(want)); } while (0)

static std::mt19937 g_rng(12345);
static uint16_t rand_bf16() {
    std::uniform_real_distribution<float> d(-2.0f, 2.0f);
    return bits_of(d(g_rng));  // truncation is fine: any bf16 value will do
}

// ---- One product through the API ------------------------------------------------------------------
struct Case {
    uint64_t m, n, k;
    bool ta = false, tb = false;
    bool out_f32 = false;
    bool bias = false, bias_f32 = false, bias_type_default = false;
    float alpha = 1.0f, beta = 0.0f;
    int64_t pad_a = 0, pad_b = 0, pad_c = 0;  // extra leading dimension
    bool row_a = false, row_b = false, row_c = false;
    int32_t batch = 1;
    int64_t extra_stride = 0;  // extra elements between batch matrices
    bool broadcast_a = false;  // A's batch stride 0
    int64_t bias_stride = 0;
    bool inplace = false;      // C = D (one buffer), as the backend does
    size_t a_offset = 0;       // bytes past a 256-aligned base for A
    bool defer = false;        // queue the op, perturb everything the call read, then run it
};

struct Stored {  // a stored matrix of `rows`×`cols` in the given order, `batch` times
    uint64_t rows, cols;
    int64_t ld, stride;
    bool row;
    int32_t batch;
    int64_t idx(int64_t b, uint64_t r, uint64_t c) const { return b * stride + int64_t(row ? r * ld + c : c * ld + r); }
    int64_t elems() const { return (batch - 1) * stride + int64_t(row ? (rows - 1) * ld + cols : (cols - 1) * ld + rows); }
};

static void* make_layout(int32_t type, const Stored& s) {
    void* l = nullptr;
    CHECK_ST(cublasLtMatrixLayoutCreate(&l, type, s.rows, s.cols, s.ld), SUCCESS);
    int32_t order = s.row ? 1 : 0;
    if (s.row) CHECK_ST(cublasLtMatrixLayoutSetAttribute(l, L_ORDER, &order, 4), SUCCESS);
    if (s.batch > 1) {
        CHECK_ST(cublasLtMatrixLayoutSetAttribute(l, L_BATCH_COUNT, &s.batch, 4), SUCCESS);
        CHECK_ST(cublasLtMatrixLayoutSetAttribute(l, L_BATCH_STRIDE, &s.stride, 8), SUCCESS);
    }
    return l;
}

static uint32_t align_of(const void* p) {
    uint64_t v = uint64_t(p);
    uint32_t a = 1;
    while (a < 256 && v % (a * 2) == 0) a *= 2;
    return a;
}

static void run_case(const Case& cs) {
    const uint64_t m = cs.m, n = cs.n, k = cs.k;
    const int32_t dt = cs.out_f32 ? R32F : R16BF, bt = cs.bias_type_default ? dt : (cs.bias_f32 ? R32F : R16BF);
    const size_t dsz = cs.out_f32 ? 4 : 2, bsz = bt == R32F ? 4 : 2;
    auto stored = [&](uint64_t r, uint64_t c, bool row, int64_t pad, bool bcast) {
        Stored s{r, c, int64_t(row ? c : r) + pad, 0, row, cs.batch};
        s.stride = bcast ? 0 : int64_t(row ? r : c) * s.ld + cs.extra_stride;
        return s;
    };
    const Stored sa = stored(cs.ta ? k : m, cs.ta ? m : k, cs.row_a, cs.pad_a, cs.broadcast_a);
    const Stored sb = stored(cs.tb ? n : k, cs.tb ? k : n, cs.row_b, cs.pad_b, false);
    const Stored sc = stored(m, n, cs.row_c, cs.pad_c, false);

    // Whole buffers are NaN first, so reading any element outside the shape poisons D.
    Buf A(sa.elems() * 2 + cs.a_offset), B(sb.elems() * 2), C(sc.elems() * dsz), D(sc.elems() * dsz);
    const int64_t nbias = (cs.batch - 1) * cs.bias_stride + int64_t(m);
    Buf Bias(nbias * bsz);
    uint16_t* a = reinterpret_cast<uint16_t*>(A.c() + cs.a_offset);
    uint16_t* b = static_cast<uint16_t*>(B.p);
    for (int64_t i = 0; i < sa.elems(); i++) a[i] = kNaN16;
    for (int64_t i = 0; i < sb.elems(); i++) b[i] = kNaN16;
    auto set_out = [&](void* base, int64_t i, double v) {
        if (cs.out_f32) static_cast<float*>(base)[i] = float(v);
        else static_cast<uint16_t*>(base)[i] = v != v ? kNaN16 : bits_of(float(v));
    };
    auto get_out = [&](const void* base, int64_t i) -> double {
        return cs.out_f32 ? static_cast<const float*>(base)[i] : bf16_to_f(static_cast<const uint16_t*>(base)[i]);
    };
    for (int64_t i = 0; i < sc.elems(); i++) set_out(C.p, i, kNaN32), set_out(D.p, i, 1232.0);
    for (int32_t q = 0; q < cs.batch; q++) {
        for (uint64_t r = 0; r < sa.rows; r++)
            for (uint64_t c = 0; c < sa.cols; c++) a[sa.idx(q, r, c)] = rand_bf16();
        for (uint64_t r = 0; r < sb.rows; r++)
            for (uint64_t c = 0; c < sb.cols; c++) b[sb.idx(q, r, c)] = rand_bf16();
        if (cs.beta != 0)  // with beta = 0, C stays NaN: it must not be read
            for (uint64_t r = 0; r < m; r++)
                for (uint64_t c = 0; c < n; c++) set_out(C.p, sc.idx(q, r, c), bf16_to_f(rand_bf16()));
    }
    for (int64_t i = 0; i < nbias; i++) {
        uint16_t h = rand_bf16();
        if (bt == R32F) static_cast<float*>(Bias.p)[i] = bf16_to_f(h) * 1.375f;
        else static_cast<uint16_t*>(Bias.p)[i] = h;
    }
    void* cptr = cs.inplace ? D.p : C.p;
    if (cs.inplace) std::memcpy(D.p, C.p, sc.elems() * dsz);

    // Reference, before the call (in-place C = D is overwritten by it).
    std::vector<double> want(sc.elems(), NAN);
    std::vector<char> written(sc.elems(), 0);
    for (int32_t q = 0; q < cs.batch; q++)
        for (uint64_t i = 0; i < m; i++)
            for (uint64_t j = 0; j < n; j++) {
                double acc = 0;
                for (uint64_t l = 0; l < k; l++) {
                    double x = bf16_to_f(a[cs.ta ? sa.idx(q, l, i) : sa.idx(q, i, l)]);
                    double y = bf16_to_f(b[cs.tb ? sb.idx(q, j, l) : sb.idx(q, l, j)]);
                    acc += x * y;
                }
                double v = double(cs.alpha) * acc;
                if (cs.beta != 0) v += double(cs.beta) * get_out(cptr, sc.idx(q, i, j));
                if (cs.bias)
                    v += bt == R32F ? double(static_cast<float*>(Bias.p)[q * cs.bias_stride + i])
                                    : double(bf16_to_f(static_cast<uint16_t*>(Bias.p)[q * cs.bias_stride + i]));
                want[sc.idx(q, i, j)] = cs.out_f32 ? double(float(v)) : double(bf16_to_f(ref_bf16(v)));
                written[sc.idx(q, i, j)] = 1;
            }

    void *h, *desc, *pref, *la, *lb, *lc, *ld;
    CHECK_ST(cublasLtCreate(&h), SUCCESS);
    CHECK_ST(cublasLtMatmulDescCreate(&desc, COMPUTE_32F, R32F), SUCCESS);
    int32_t ta = cs.ta, tb = cs.tb;
    CHECK_ST(cublasLtMatmulDescSetAttribute(desc, D_TRANSA, &ta, 4), SUCCESS);
    CHECK_ST(cublasLtMatmulDescSetAttribute(desc, D_TRANSB, &tb, 4), SUCCESS);
    if (cs.bias) {
        uint32_t epi = 4;
        CHECK_ST(cublasLtMatmulDescSetAttribute(desc, D_EPILOGUE, &epi, 4), SUCCESS);
        if (!cs.bias_type_default) CHECK_ST(cublasLtMatmulDescSetAttribute(desc, D_BIAS_DATA_TYPE, &bt, 4), SUCCESS);
        if (cs.bias_stride) CHECK_ST(cublasLtMatmulDescSetAttribute(desc, D_BIAS_BATCH_STRIDE, &cs.bias_stride, 8), SUCCESS);
    }
    la = make_layout(R16BF, sa);
    lb = make_layout(R16BF, sb);
    lc = make_layout(dt, sc);
    ld = make_layout(dt, sc);
    CHECK_ST(cublasLtMatmulPreferenceCreate(&pref), SUCCESS);
    uint64_t ws = 1 << 16;
    CHECK_ST(cublasLtMatmulPreferenceSetAttribute(pref, P_MAX_WORKSPACE, &ws, 8), SUCCESS);
    const void* ptrs[4] = {a, B.p, cptr, D.p};
    for (uint32_t i = 0; i < 4; i++) {
        uint32_t al = align_of(ptrs[i]);
        CHECK_ST(cublasLtMatmulPreferenceSetAttribute(pref, P_ALIGN_A + i, &al, 4), SUCCESS);
    }
    HeuristicResult hr[2];
    std::memset(hr, 0xee, sizeof hr);
    int count = -1;
    CHECK_ST(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, lc, ld, pref, 2, hr, &count), SUCCESS);
    CHECK(count == 1 && hr[0].state == 0 && hr[0].workspaceSize == 0 && hr[0].wavesCount == 1.0f, "heuristic result");
    CHECK_ST(cublasLtMatmulPreferenceDestroy(pref), SUCCESS);

    Buf work(ws);
    float alpha = cs.alpha, beta = cs.beta;
    const void* bias_ptr = Bias.p;
    if (cs.bias) CHECK_ST(cublasLtMatmulDescSetAttribute(desc, D_BIAS_POINTER, &bias_ptr, 8), SUCCESS);
    g_defer = cs.defer;
    CHECK_ST(cublasLtMatmul(h, desc, &alpha, a, la, B.p, lb, &beta, cptr, lc, D.p, ld, &hr[0].algo, work.p, ws, nullptr),
             SUCCESS);
    g_defer = false;
    if (cs.defer) {
        // The queued op must own what it needs: host scalars, the bias pointer, the shape.
        alpha = 99.0f, beta = 99.0f;
        const void* other = B.p;
        if (cs.bias) cublasLtMatmulDescSetAttribute(desc, D_BIAS_POINTER, &other, 8);
        cublasLtMatmulDescDestroy(desc), cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(ld);
        CHECK(!g_pending.empty(), "deferred op was queued");
        sync_pending();
    } else {
        cublasLtMatmulDescDestroy(desc), cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(ld);
    }
    cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
    CHECK_ST(cublasLtDestroy(h), SUCCESS);

    int bad = 0;
    for (int64_t i = 0; i < sc.elems(); i++) {
        double got = get_out(D.p, i);
        double exp = written[i] ? want[i] : (cs.inplace ? get_out(C.p, i) : 1232.0);  // untouched padding
        bool same = got == exp || (std::isnan(got) && std::isnan(exp));  // NaN: untouched NaN padding
        if (!same && bad++ < 3)
            std::fprintf(stderr, "  element %lld: got %.9g want %.9g\n", (long long)i, got, exp);
    }
    CHECK(bad == 0, "m %llu n %llu k %llu ta %d tb %d f32 %d bias %d beta %g pad %lld/%lld/%lld rows %d%d%d batch %d: %d wrong",
          (unsigned long long)m, (unsigned long long)n, (unsigned long long)k, cs.ta, cs.tb, cs.out_f32, cs.bias, cs.beta,
          (long long)cs.pad_a, (long long)cs.pad_b, (long long)cs.pad_c, cs.row_a, cs.row_b, cs.row_c, cs.batch, bad);
}

// ---- A fixed valid problem, for the error and fault tests -----------------------------------------
struct Setup {
    static constexpr uint64_t m = 8, n = 4, k = 16;
    void *h, *desc, *la, *lb, *lc, *pref;
    HeuristicResult hr;
    Buf A{m * k * 2}, B{k * n * 2}, D{m * n * 4}, work{4096};
    float alpha = 1, beta = 0;
    Setup() {
        cublasLtCreate(&h);
        cublasLtMatmulDescCreate(&desc, COMPUTE_32F, R32F);
        cublasLtMatrixLayoutCreate(&la, R16BF, m, k, m);
        cublasLtMatrixLayoutCreate(&lb, R16BF, k, n, k);
        cublasLtMatrixLayoutCreate(&lc, R32F, m, n, m);
        cublasLtMatmulPreferenceCreate(&pref);
        int count = 0;
        CHECK_ST(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, lc, lc, pref, 1, &hr, &count), SUCCESS);
        std::memset(A.p, 0, A.n), std::memset(B.p, 0, B.n);
    }
    int matmul(const void* a, const void* b, void* d, const void* algo = nullptr, void* stream = nullptr) {
        return cublasLtMatmul(h, desc, &alpha, a, la, b, lb, &beta, d, lc, d, lc, algo ? algo : hr.algo, work.p, work.n,
                              stream);
    }
    int heuristic() {
        int count = 0;
        return cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, lc, lc, pref, 1, &hr, &count);
    }
    ~Setup() {
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
        cublasLtMatmulDescDestroy(desc);
        cublasLtDestroy(h);
    }
};

static void test_errors() {
    {  // Wrong A type, compute type, bias type, unsupported epilogue and attributes.
        Setup s;
        int32_t f32 = R32F, f16 = R16F;
        cublasLtMatrixLayoutDestroy(s.la);
        cublasLtMatrixLayoutCreate(&s.la, R32F, s.m, s.k, s.m);
        CHECK_ST(s.heuristic(), NOT_SUPPORTED);
        CHECK_ST(s.matmul(s.A.p, s.B.p, s.D.p), NOT_SUPPORTED);
        cublasLtMatrixLayoutSetAttribute(s.la, 0, &f16, 4);  // TYPE
        CHECK_ST(s.heuristic(), NOT_SUPPORTED);
        void* d16;
        cublasLtMatmulDescCreate(&d16, COMPUTE_16F, R32F);
        int count;
        CHECK_ST(cublasLtMatmulAlgoGetHeuristic(s.h, d16, s.lb, s.lb, s.lc, s.lc, s.pref, 1, &s.hr, &count), NOT_SUPPORTED);
        cublasLtMatmulDescDestroy(d16);
        uint32_t relu = 2, epi = 4;
        CHECK_ST(cublasLtMatmulDescSetAttribute(s.desc, D_EPILOGUE, &relu, 4), NOT_SUPPORTED);
        CHECK_ST(cublasLtMatmulDescSetAttribute(s.desc, D_TRANSC, &f32, 4), INVALID_VALUE);
        CHECK_ST(cublasLtMatmulDescSetAttribute(s.desc, D_TRANSA, &f32, 8), INVALID_VALUE);  // wrong size
        int32_t opc = 2;
        CHECK_ST(cublasLtMatmulDescSetAttribute(s.desc, D_TRANSA, &opc, 4), NOT_SUPPORTED);
        CHECK_ST(cublasLtMatmulDescSetAttribute(s.desc, D_EPILOGUE, &epi, 4), SUCCESS);
        CHECK_ST(cublasLtMatmulDescSetAttribute(s.desc, D_BIAS_DATA_TYPE, &f16, 4), SUCCESS);
        CHECK_ST(cublasLtMatmulDescSetAttribute(s.la, D_TRANSA, &f32, 4), INVALID_VALUE);  // a layout, not a desc
        cublasLtMatrixLayoutDestroy(s.la);
        cublasLtMatrixLayoutCreate(&s.la, R16BF, s.m, s.k, s.m);
        CHECK_ST(s.heuristic(), NOT_SUPPORTED);  // f16 bias
        CHECK_ST(cublasLtMatmulDescSetAttribute(s.desc, D_BIAS_DATA_TYPE, &f32, 4), SUCCESS);
        CHECK_ST(s.heuristic(), SUCCESS);
        CHECK_ST(s.matmul(s.A.p, s.B.p, s.D.p), INVALID_VALUE);  // BIAS epilogue without a bias pointer
        int32_t col32 = 2;
        CHECK_ST(cublasLtMatrixLayoutSetAttribute(s.la, L_ORDER, &col32, 4), NOT_SUPPORTED);
        CHECK_ST(cublasLtMatrixLayoutSetAttribute(s.la, 7, &col32, 4), INVALID_VALUE);  // PLANE_OFFSET
        CHECK_ST(cublasLtMatmulPreferenceSetAttribute(s.pref, 9, &col32, 4), INVALID_VALUE);  // MAX_WAVES_COUNT
        CHECK_ST(cublasLtMatmulPreferenceSetAttribute(s.pref, P_ALIGN_A, &col32, 8), INVALID_VALUE);
    }
    {  // ld too small, dims mismatch, C layout != D layout, zero dims, mismatched batch.
        Setup s;
        void *small, *wrong, *other, *empty;
        cublasLtMatrixLayoutCreate(&small, R16BF, s.m, s.k, s.m - 1);
        cublasLtMatrixLayoutCreate(&wrong, R16BF, s.m, s.k + 1, s.m);
        cublasLtMatrixLayoutCreate(&other, R32F, s.m, s.n, s.m + 1);
        cublasLtMatrixLayoutCreate(&empty, R16BF, s.m, 0, s.m);
        int count;
        CHECK_ST(cublasLtMatmulAlgoGetHeuristic(s.h, s.desc, small, s.lb, s.lc, s.lc, s.pref, 1, &s.hr, &count), INVALID_VALUE);
        CHECK_ST(cublasLtMatmul(s.h, s.desc, &s.alpha, s.A.p, small, s.B.p, s.lb, &s.beta, s.D.p, s.lc, s.D.p, s.lc,
                                s.hr.algo, nullptr, 0, nullptr), INVALID_VALUE);
        CHECK_ST(cublasLtMatmulAlgoGetHeuristic(s.h, s.desc, wrong, s.lb, s.lc, s.lc, s.pref, 1, &s.hr, &count), INVALID_VALUE);
        CHECK_ST(cublasLtMatmulAlgoGetHeuristic(s.h, s.desc, s.la, s.lb, other, s.lc, s.pref, 1, &s.hr, &count), NOT_SUPPORTED);
        CHECK_ST(cublasLtMatmulAlgoGetHeuristic(s.h, s.desc, empty, s.lb, s.lc, s.lc, s.pref, 1, &s.hr, &count), INVALID_VALUE);
        int32_t tr = 1;  // transposing A makes op(A) k×m: mismatch
        cublasLtMatmulDescSetAttribute(s.desc, D_TRANSA, &tr, 4);
        CHECK_ST(s.heuristic(), INVALID_VALUE);
        tr = 0;
        cublasLtMatmulDescSetAttribute(s.desc, D_TRANSA, &tr, 4);
        int32_t two = 2;
        int64_t st = s.m * s.k;
        cublasLtMatrixLayoutSetAttribute(s.la, L_BATCH_COUNT, &two, 4);
        cublasLtMatrixLayoutSetAttribute(s.la, L_BATCH_STRIDE, &st, 8);
        CHECK_ST(s.heuristic(), INVALID_VALUE);
        st = s.k * s.n;
        cublasLtMatrixLayoutSetAttribute(s.lb, L_BATCH_COUNT, &two, 4);
        cublasLtMatrixLayoutSetAttribute(s.lb, L_BATCH_STRIDE, &st, 8);
        st = s.m * s.n - 1;  // D's two matrices would overlap
        cublasLtMatrixLayoutSetAttribute(s.lc, L_BATCH_COUNT, &two, 4);
        cublasLtMatrixLayoutSetAttribute(s.lc, L_BATCH_STRIDE, &st, 8);
        CHECK_ST(s.heuristic(), NOT_SUPPORTED);
        st = s.m * s.n;
        cublasLtMatrixLayoutSetAttribute(s.lc, L_BATCH_STRIDE, &st, 8);
        CHECK_ST(s.heuristic(), SUCCESS);
        for (void* l : {small, wrong, other, empty}) cublasLtMatrixLayoutDestroy(l);
    }
    {  // Destroyed, foreign and wrong-kind handles; algo of another problem; a failing stream.
        Setup s;
        void* l;
        cublasLtMatrixLayoutCreate(&l, R16BF, s.m, s.k, s.m);
        CHECK_ST(cublasLtMatrixLayoutDestroy(l), SUCCESS);
        CHECK_ST(cublasLtMatrixLayoutDestroy(l), INVALID_VALUE);
        int count;
        CHECK_ST(cublasLtMatmulAlgoGetHeuristic(s.h, s.desc, l, s.lb, s.lc, s.lc, s.pref, 1, &s.hr, &count), INVALID_VALUE);
        uint64_t foreign[16] = {};
        CHECK_ST(cublasLtMatmulAlgoGetHeuristic(s.h, s.desc, foreign, s.lb, s.lc, s.lc, s.pref, 1, &s.hr, &count), INVALID_VALUE);
        CHECK_ST(cublasLtMatmulAlgoGetHeuristic(s.h, s.desc, s.desc, s.lb, s.lc, s.lc, s.pref, 1, &s.hr, &count), INVALID_VALUE);
        CHECK_ST(cublasLtMatmulAlgoGetHeuristic(foreign, s.desc, s.la, s.lb, s.lc, s.lc, s.pref, 1, &s.hr, &count), NOT_INITIALIZED);
        CHECK_ST(cublasLtMatmulAlgoGetHeuristic(s.h, s.desc, s.la, s.lb, s.lc, s.lc, s.pref, 0, &s.hr, &count), INVALID_VALUE);
        CHECK_ST(cublasLtMatmulDescDestroy(s.la), INVALID_VALUE);
        CHECK_ST(cublasLtMatmulPreferenceDestroy(foreign), INVALID_VALUE);
        CHECK_ST(cublasLtDestroy(nullptr), INVALID_VALUE);
        CHECK_ST(s.matmul(s.A.p, s.B.p, s.D.p), SUCCESS);
        CHECK_ST(s.matmul(s.A.p, s.B.p, s.D.p, nullptr, kBadStream), EXECUTION_FAILED);
        HeuristicResult old = s.hr;
        int32_t tb = 1;
        void* lbt;
        cublasLtMatrixLayoutCreate(&lbt, R16BF, s.n, s.k, s.n);
        cublasLtMatmulDescSetAttribute(s.desc, D_TRANSB, &tb, 4);
        CHECK_ST(cublasLtMatmul(s.h, s.desc, &s.alpha, s.A.p, s.la, s.B.p, lbt, &s.beta, s.D.p, s.lc, s.D.p, s.lc,
                                old.algo, nullptr, 0, nullptr), INVALID_VALUE);
        cublasLtMatrixLayoutDestroy(lbt);
        CHECK(std::strcmp(cublasLtGetStatusName(15), "CUBLAS_STATUS_NOT_SUPPORTED") == 0, "status name");
        CHECK(std::strcmp(cublasLtGetStatusString(7), "CUBLAS_STATUS_INVALID_VALUE") == 0, "status string");
    }
}

// Runs `body` in a child; it must abort with `expect` in its stderr.
template <class F> static void expect_fatal(const char* expect, F body) {
    int fds[2];
    if (pipe(fds) != 0) std::abort();
    std::fflush(nullptr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        body();
        std::_Exit(0);  // no fault: the parent reports it
    }
    close(fds[1]);
    std::string err;
    char buf[512];
    for (ssize_t r; (r = read(fds[0], buf, sizeof buf)) > 0;) err.append(buf, r);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT && err.find(expect) != std::string::npos,
          "expected an abort with \"%s\"; status %d, stderr: %s", expect, status, err.c_str());
}

static void test_faults() {
    expect_fatal("B at 0x", [] {  // B one element short
        Setup s;
        Buf small(s.k * s.n * 2 - 2);
        s.matmul(s.A.p, small.p, s.D.p);
    });
    expect_fatal("A at 0x", [] {  // a leading dimension larger than A's buffer (e.g. swapped)
        Setup s;
        cublasLtMatrixLayoutDestroy(s.la);
        cublasLtMatrixLayoutCreate(&s.la, R16BF, s.m, s.k, s.k * 2);
        s.heuristic();
        s.matmul(s.A.p, s.B.p, s.D.p);
    });
    expect_fatal("D at 0x", [] {
        Setup s;
        Buf small(s.m * s.n * 4 - 4);
        s.matmul(s.A.p, s.B.p, small.p);
    });
    expect_fatal("C at 0x", [] {  // beta != 0: C is read and must be covered
        Setup s;
        Buf d2(s.m * s.n * 4), c_small(16);
        s.beta = 1;
        cublasLtMatmul(s.h, s.desc, &s.alpha, s.A.p, s.la, s.B.p, s.lb, &s.beta, c_small.p, s.lc, d2.p, s.lc, s.hr.algo,
                       nullptr, 0, nullptr);
    });
    expect_fatal("bias at 0x", [] {
        Setup s;
        Buf bias(s.m * 2 - 2);
        uint32_t epi = 4;
        int32_t bt = R16BF;
        cublasLtMatmulDescSetAttribute(s.desc, D_EPILOGUE, &epi, 4);
        cublasLtMatmulDescSetAttribute(s.desc, D_BIAS_DATA_TYPE, &bt, 4);
        s.heuristic();
        cublasLtMatmulDescSetAttribute(s.desc, D_BIAS_POINTER, &bias.p, 8);
        s.matmul(s.A.p, s.B.p, s.D.p);
    });
    expect_fatal("workspace at 0x", [] {
        Setup s;
        char host[64];
        cublasLtMatmul(s.h, s.desc, &s.alpha, s.A.p, s.la, s.B.p, s.lb, &s.beta, s.D.p, s.lc, s.D.p, s.lc, s.hr.algo, host,
                       sizeof host, nullptr);
    });
    expect_fatal("A pointer", [] {  // less aligned than the preference's default 256 bytes
        Setup s;
        Buf a(s.m * s.k * 2 + 64);
        s.matmul(a.c() + 64, s.B.p, s.D.p);
    });
    expect_fatal("not produced by cublasLtMatmulAlgoGetHeuristic", [] {
        Setup s;
        uint64_t algo[8] = {};
        s.matmul(s.A.p, s.B.p, s.D.p, algo);
    });
    expect_fatal("D overlaps", [] {
        Setup s;
        Buf big(s.m * s.n * 4 * 2);
        s.matmul(s.A.p, s.B.p, big.p);  // fine
        s.matmul(big.p, s.B.p, big.p);  // D over A
    });
    expect_fatal("", [] {  // sanity of the harness itself: a child that aborts
        std::abort();
    });
}

// D = a·b for one row a and one column b (1×1 bf16 output): checks the stand-in's own rounding.
static uint16_t dot_bf16(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b) {
    const uint64_t k = a.size();
    Buf A(k * 2), B(k * 2), D(2);
    std::memcpy(A.p, a.data(), k * 2), std::memcpy(B.p, b.data(), k * 2);
    void *h, *desc, *la, *lb, *ld, *pref;
    cublasLtCreate(&h);
    cublasLtMatmulDescCreate(&desc, COMPUTE_32F, R32F);
    cublasLtMatrixLayoutCreate(&la, R16BF, 1, k, 1);
    cublasLtMatrixLayoutCreate(&lb, R16BF, k, 1, k);
    cublasLtMatrixLayoutCreate(&ld, R16BF, 1, 1, 1);
    cublasLtMatmulPreferenceCreate(&pref);
    HeuristicResult hr;
    int count;
    CHECK_ST(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, ld, ld, pref, 1, &hr, &count), SUCCESS);
    float alpha = 1, beta = 0;
    CHECK_ST(cublasLtMatmul(h, desc, &alpha, A.p, la, B.p, lb, &beta, nullptr, ld, D.p, ld, hr.algo, nullptr, 0, nullptr),
             SUCCESS);
    cublasLtMatmulPreferenceDestroy(pref), cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(ld), cublasLtMatmulDescDestroy(desc), cublasLtDestroy(h);
    return *static_cast<uint16_t*>(D.p);
}

int main() {
    // Every transpose × output type × bias × beta, on odd and even shapes, with and without padding.
    const uint64_t shapes[][3] = {{1, 1, 1}, {7, 33, 1}, {33, 7, 64}, {64, 64, 33}, {1, 64, 7}, {64, 1, 33}, {7, 7, 7}};
    int idx = 0;
    for (auto& sh : shapes)
        for (int bits = 0; bits < 32; bits++, idx++) {
            Case c{sh[0], sh[1], sh[2]};
            c.ta = bits & 1, c.tb = bits & 2, c.out_f32 = bits & 4, c.bias = bits & 8;
            c.beta = bits & 16 ? 1.0f : 0.0f;
            if (idx % 3) c.pad_a = 3, c.pad_b = 5, c.pad_c = 2;
            c.inplace = idx % 2;
            c.bias_f32 = c.bias && idx % 5 == 0;
            c.alpha = idx % 4 == 3 ? -0.75f : 1.0f;
            run_case(c);
        }
    {  // Row order, including mixed orders between A and B.
        for (int bits = 0; bits < 16; bits++) {
            Case c{33, 7, 64};
            c.ta = bits & 1, c.tb = bits & 2;
            c.row_a = bits & 4, c.row_b = bits & 8, c.row_c = (bits & 5) != 0;
            c.pad_a = 1, c.pad_c = 4;
            c.beta = 1, c.bias = true, c.out_f32 = bits & 1;
            run_case(c);
        }
    }
    {  // Strided batches: padded strides, a broadcast A, and a per-batch bias.
        Case c{7, 33, 64};
        c.batch = 3, c.extra_stride = 11, c.beta = 1, c.bias = true, c.bias_stride = 7, c.tb = true, c.pad_b = 2;
        run_case(c);
        c.broadcast_a = true, c.bias_stride = 0, c.out_f32 = true, c.row_c = true, c.inplace = true;
        run_case(c);
    }
    {  // Bias type by default (D's), f32 bias with bf16 out, offset A pointer with a 2-byte preference,
       // bf16 rounding of large and tiny values, and a queued op that runs after its arguments changed.
        Case c{64, 64, 33};
        c.bias = true, c.bias_type_default = true, c.out_f32 = true;
        run_case(c);
        c.bias_type_default = false, c.bias_f32 = true, c.out_f32 = false, c.a_offset = 2;
        run_case(c);
        c.alpha = 0x1p120f;
        run_case(c);
        c.alpha = 0x1p-130f;
        run_case(c);
        Case d{33, 7, 64};
        d.defer = true, d.bias = true, d.beta = 1, d.inplace = true;
        run_case(d);
    }
    // The bf16 rounding of the reference itself, on hand-made values.
    CHECK(ref_bf16(1.0 + 0x1p-8) == 0x3f80, "tie to even, down");
    CHECK(ref_bf16(1.0 + 3 * 0x1p-8) == 0x3f82, "tie to even, up");
    CHECK(ref_bf16(1.0 + 0x1p-8 + 0x1p-40) == 0x3f81, "above the tie (double rounding through float would tie)");
    CHECK(ref_bf16(0x1p128) == 0x7f80 && ref_bf16(-0x1.ffp127) == 0xff80, "overflow");
    CHECK(ref_bf16(0x1p-134) == 0x0000 && ref_bf16(0x1.8p-134) == 0x0001, "subnormal");
    // The same through the stand-in: exact products summed in double, rounded once (1 = 0x3f80,
    // 2^-8 = 0x3b80, 2^-20 = 0x3580, 2^127 = 0x7f00).
    CHECK(dot_bf16({0x3f80, 0x3b80}, {0x3f80, 0x3f80}) == 0x3f80, "stand-in tie to even");
    CHECK(dot_bf16({0x3f80, 0x3b80, 0x3580}, {0x3f80, 0x3f80, 0x3580}) == 0x3f81, "stand-in rounds once");
    CHECK(dot_bf16({0x7f00, 0x7f00}, {0x3f80, 0x3f80}) == 0x7f80, "stand-in overflow to infinity");
    test_errors();
    test_faults();
    std::printf("cublaslt self-test: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
