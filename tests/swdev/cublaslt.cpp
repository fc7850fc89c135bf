// cuBLASLt stand-in for the software CUDA device: the subset of libcublasLt that the CUDA backend
// (src/backend/cuda/blas.rs, through cudarc's dynamic loading) calls, computed on the host.
//
// cublasLtMatmul computes D = alpha·op(A)·op(B) + beta·C (+ bias) with plain loops, double
// accumulation and one final rounding to D's type. It shares nothing with the CPU backend. Every
// argument is validated at call time; whatever this file does not implement exactly (other types,
// epilogues, orders, attributes) is refused with an error status rather than approximated.
// Enum values and struct layouts follow cudarc 0.19.10's cublaslt/sys/mod.rs (feature cuda-13000);
// there is no cublasLt.h on the machines this is built on.
#include "swdev.h"

#include <cinttypes>
#include <cmath>
#include <cstring>
#include <mutex>
#include <unordered_set>
#include <vector>

#define SWDEV_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// cublasStatus_t
constexpr int kSuccess = 0, kNotInitialized = 1, kInvalidValue = 7, kExecutionFailed = 13, kNotSupported = 15;
// cudaDataType_t, cublasComputeType_t, cublasOperation_t, cublasLtEpilogue_t, cublasLtOrder_t
constexpr int32_t kR32F = 0, kR16BF = 14, kCompute32F = 68;
constexpr int32_t kOpN = 0, kOpT = 1;
constexpr uint32_t kEpilogueDefault = 1, kEpilogueBias = 4;
constexpr int32_t kOrderCol = 0, kOrderRow = 1;

constexpr uint64_t kHandleMagic = 0x646c6d4c74480001, kDescMagic = 0x646c6d4c74440002,
                   kLayoutMagic = 0x646c6d4c744c0003, kPrefMagic = 0x646c6d4c74500004,
                   kAlgoMagic = 0x646c6d4c74410005;

struct Handle {
    uint64_t magic = kHandleMagic;
};
struct Desc {
    uint64_t magic = kDescMagic;
    int32_t compute = 0, scale = 0;
    int32_t transa = kOpN, transb = kOpN;
    uint32_t epilogue = kEpilogueDefault;
    int32_t bias_type = -1;      // -1: D's type (cuBLASLt's default)
    uint64_t bias_ptr = 0;
    int64_t bias_batch_stride = 0;  // elements; 0 = one bias for every batch
};
struct Layout {
    uint64_t magic = kLayoutMagic;
    int32_t type = 0;
    uint64_t rows = 0, cols = 0;
    int64_t ld = 0;
    int32_t order = kOrderCol;
    int32_t batch = 1;
    int64_t stride = 0;  // elements between consecutive matrices of a batch
};
struct Pref {
    uint64_t magic = kPrefMagic;
    uint64_t max_workspace = 0;
    uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D: cuBLASLt's default is 256 bytes
};

// Mirrors cublasLtMatmulAlgo_t and cublasLtMatmulHeuristicResult_t.
struct Algo {
    uint64_t data[8];
};
struct HeuristicResult {
    Algo algo;
    size_t workspaceSize;
    int state;
    float wavesCount;
    int reserved[4];
};
static_assert(sizeof(Algo) == 64 && sizeof(HeuristicResult) == 96);
// Our use of Algo::data.
enum AlgoSlot { kSlotMagic, kSlotAlignA, kSlotAlignB, kSlotAlignC, kSlotAlignD, kSlotProblem };

// Every live object, so that a destroyed or foreign pointer is refused before it is dereferenced;
// the magic, the first field of every kind, then tells the kinds apart.
std::mutex g_mutex;
std::unordered_set<const void*> g_live;

template <class T> int create(T** out) {
    if (!out) return kInvalidValue;
    T* obj = new T{};
    std::lock_guard lock(g_mutex);
    g_live.insert(obj);
    *out = obj;
    return kSuccess;
}

template <class T> T* lookup(const void* p, uint64_t magic) {
    std::lock_guard lock(g_mutex);
    if (!p || !g_live.count(p) || *static_cast<const uint64_t*>(p) != magic) return nullptr;
    return static_cast<T*>(const_cast<void*>(p));
}

template <class T> int destroy(void* p, uint64_t magic) {
    std::lock_guard lock(g_mutex);
    if (!p || !g_live.count(p) || *static_cast<const uint64_t*>(p) != magic) return kInvalidValue;
    g_live.erase(p);
    static_cast<T*>(p)->magic = 0;
    delete static_cast<T*>(p);
    return kSuccess;
}

// Copies an attribute value of exactly sizeof(T) bytes, as cuBLASLt requires.
template <class T> bool read_attr(T& dst, const void* buf, size_t size) {
    if (!buf || size != sizeof(T)) return false;
    std::memcpy(&dst, buf, sizeof(T));
    return true;
}

size_t elem_size(int32_t type) { return type == kR16BF ? 2 : 4; }
const char* type_name(int32_t type) { return type == kR16BF ? "bf16" : type == kR32F ? "f32" : "?"; }

double load(const void* base, int32_t type, int64_t index) {
    if (type == kR16BF) {
        uint16_t h;
        std::memcpy(&h, static_cast<const char*>(base) + index * 2, 2);
        uint32_t bits = uint32_t(h) << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
    }
    float f;
    std::memcpy(&f, static_cast<const char*>(base) + index * 4, 4);
    return f;
}

// Rounds a double to bf16 once, to nearest even, without going through float (which would round
// twice). bf16 has float's exponent range and 8 significant bits; subnormals step by 2^-133.
uint16_t to_bf16(double x) {
    if (std::isnan(x)) return std::signbit(x) ? 0xffc0 : 0x7fc0;
    double r = x;
    if (x != 0 && std::isfinite(x)) {
        int e = std::max(std::ilogb(x), -126);
        double quantum = std::ldexp(1.0, e - 7);
        r = std::nearbyint(x / quantum) * quantum;  // exact scaling; nearbyint rounds half to even
    }
    if (std::fabs(r) >= 0x1p128) return std::signbit(r) ? 0xff80 : 0x7f80;  // overflow: infinity
    float f = static_cast<float>(r);  // exact: r has at most 8 significant bits
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    return uint16_t(bits >> 16);
}

void store(void* base, int32_t type, int64_t index, double v) {
    if (type == kR16BF) {
        uint16_t h = to_bf16(v);
        std::memcpy(static_cast<char*>(base) + index * 2, &h, 2);
    } else {
        float f = static_cast<float>(v);
        std::memcpy(static_cast<char*>(base) + index * 4, &f, 4);
    }
}

// One validated operand: a stored rows×cols matrix (before op()), repeated `batch` times.
struct Mat {
    int32_t type;
    uint64_t rows, cols;
    int64_t ld, stride;
    bool row_major;
    int64_t at(int64_t b, int64_t r, int64_t c) const {
        return b * stride + (row_major ? r * ld + c : c * ld + r);
    }
    // Bytes from the base pointer to one past the last element the batch touches.
    unsigned __int128 extent(int32_t batch) const {
        unsigned __int128 last = row_major ? (unsigned __int128)(rows - 1) * ld + cols
                                           : (unsigned __int128)(cols - 1) * ld + rows;
        return ((unsigned __int128)(batch - 1) * stride + last) * elem_size(type);
    }
};

// Everything cublasLtMatmul needs once the descriptors have been checked; a plain value, so the
// queued operation owns its copy.
struct Problem {
    uint64_t m, n, k;
    int32_t batch;
    bool ta, tb, bias;
    int32_t bias_type;
    int64_t bias_stride;
    Mat a, b, c;  // c describes both C and D (they must share one layout)
    uint64_t fingerprint() const {  // FNV-1a over the shape, to tie an algo to its problem
        uint64_t h = 1469598103934665603ull;
        const int64_t fields[] = {int64_t(m), int64_t(n), int64_t(k), batch, ta, tb, bias, bias_type, bias_stride,
                                  a.type, a.ld, a.stride, a.row_major, b.type, b.ld, b.stride, b.row_major,
                                  c.type, c.ld, c.stride, c.row_major};
        for (int64_t f : fields) h = (h ^ uint64_t(f)) * 1099511628211ull;
        return h;
    }
};

Mat to_mat(const Layout& l) { return Mat{l.type, l.rows, l.cols, l.ld, l.stride, l.order == kOrderRow}; }

bool ld_ok(const Layout& l) {
    return l.rows > 0 && l.cols > 0 && l.ld >= 1 && uint64_t(l.ld) >= (l.order == kOrderRow ? l.cols : l.rows) &&
           l.batch >= 1 && l.stride >= 0;
}

// Checks the descriptors of one product and fills `p`. Returns a cublasStatus_t.
int validate(const void* hd, const void* dd, const void* al, const void* bl, const void* cl, const void* dl,
             Problem& p) {
    if (!lookup<Handle>(hd, kHandleMagic)) return kNotInitialized;
    const Desc* desc = lookup<Desc>(dd, kDescMagic);
    const Layout *la = lookup<Layout>(al, kLayoutMagic), *lb = lookup<Layout>(bl, kLayoutMagic);
    const Layout *lc = lookup<Layout>(cl, kLayoutMagic), *ld = lookup<Layout>(dl, kLayoutMagic);
    if (!desc || !la || !lb || !lc || !ld) return kInvalidValue;
    if (desc->compute != kCompute32F || desc->scale != kR32F) return kNotSupported;
    if (la->type != kR16BF || lb->type != kR16BF || (ld->type != kR16BF && ld->type != kR32F)) return kNotSupported;
    if (!ld_ok(*la) || !ld_ok(*lb) || !ld_ok(*lc) || !ld_ok(*ld)) return kInvalidValue;
    // C and D must be the same matrix description (in-place C = D is what the backend does).
    if (lc->type != ld->type || lc->rows != ld->rows || lc->cols != ld->cols || lc->ld != ld->ld ||
        lc->order != ld->order || lc->batch != ld->batch || lc->stride != ld->stride)
        return kNotSupported;
    p.ta = desc->transa == kOpT;
    p.tb = desc->transb == kOpT;
    p.m = ld->rows;
    p.n = ld->cols;
    p.k = p.ta ? la->rows : la->cols;
    if ((p.ta ? la->cols : la->rows) != p.m || (p.tb ? lb->rows : lb->cols) != p.n ||
        (p.tb ? lb->cols : lb->rows) != p.k)
        return kInvalidValue;
    if (la->batch != ld->batch || lb->batch != ld->batch) return kInvalidValue;
    p.batch = ld->batch;
    p.a = to_mat(*la);
    p.b = to_mat(*lb);
    p.c = to_mat(*ld);
    // Batched D must not overlap itself (a GPU would race on it).
    if (p.batch > 1 && (unsigned __int128)ld->stride * elem_size(ld->type) < p.c.extent(1)) return kNotSupported;
    p.bias = desc->epilogue == kEpilogueBias;
    p.bias_type = desc->bias_type == -1 ? ld->type : desc->bias_type;
    p.bias_stride = desc->bias_batch_stride;
    if (p.bias && p.bias_type != kR16BF && p.bias_type != kR32F) return kNotSupported;
    return kSuccess;
}

void check_range(const char* name, uint64_t ptr, unsigned __int128 bytes, const Problem& p, const Mat* mat) {
    if (bytes <= SIZE_MAX && swdev::is_device_range(ptr, size_t(bytes))) return;
    char shape[160] = "";
    if (mat)
        std::snprintf(shape, sizeof shape, "%s %" PRIu64 "x%" PRIu64 " ld %" PRId64 " %s-major stride %" PRId64,
                      type_name(mat->type), mat->rows, mat->cols, mat->ld, mat->row_major ? "row" : "col", mat->stride);
    swdev::fatal("cublasLtMatmul: %s at 0x%" PRIx64 " (%s) needs %.0f bytes that do not lie in one live device "
                 "allocation (m %" PRIu64 " n %" PRIu64 " k %" PRIu64 " transa %d transb %d batch %d)",
                 name, ptr, mat ? shape : "vector", double(bytes), p.m, p.n, p.k, p.ta, p.tb, p.batch);
}

void check_align(const char* name, uint64_t ptr, uint64_t align, const char* why) {
    if (align > 1 && ptr % align != 0)
        swdev::fatal("cublasLtMatmul: %s pointer 0x%" PRIx64 " is not %" PRIu64 "-byte aligned (%s)", name, ptr, align,
                     why);
}

bool overlap(uint64_t p, unsigned __int128 pn, uint64_t q, unsigned __int128 qn) {
    return p < q + qn && q < p + pn;
}

// The product itself, run when the stream reaches it.
void compute(const Problem& p, float alpha, float beta, const void* A, const void* B, const void* C, void* D,
             const void* bias) {
    // op(A) and op(B) are read once per batch into rows of k doubles, so the inner loop is a plain
    // dot product over contiguous memory (the stand-in's whole cost in a training step).
    std::vector<double> a(p.m * p.k), b(p.n * p.k);
    for (int64_t bt = 0; bt < p.batch; bt++) {
        for (uint64_t i = 0; i < p.m; i++)
            for (uint64_t l = 0; l < p.k; l++) a[i * p.k + l] = load(A, p.a.type, p.ta ? p.a.at(bt, l, i) : p.a.at(bt, i, l));
        for (uint64_t j = 0; j < p.n; j++)
            for (uint64_t l = 0; l < p.k; l++) b[j * p.k + l] = load(B, p.b.type, p.tb ? p.b.at(bt, j, l) : p.b.at(bt, l, j));
        for (uint64_t j = 0; j < p.n; j++)
            for (uint64_t i = 0; i < p.m; i++) {
                const double* ar = &a[i * p.k];
                const double* br = &b[j * p.k];
                double acc = 0;
                for (uint64_t l = 0; l < p.k; l++) acc += ar[l] * br[l];
                double v = double(alpha) * acc;
                int64_t ci = p.c.at(bt, i, j);
                if (beta != 0) v += double(beta) * load(C, p.c.type, ci);  // beta = 0: C is not read
                if (p.bias) v += load(bias, p.bias_type, bt * p.bias_stride + int64_t(i));
                store(D, p.c.type, ci, v);
            }
    }
}

}  // namespace

SWDEV_EXPORT const char* cublasLtGetStatusName(int status) {
    switch (status) {
    case 0: return "CUBLAS_STATUS_SUCCESS";
    case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
    case 7: return "CUBLAS_STATUS_INVALID_VALUE";
    case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
    case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case 16: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_UNKNOWN";
    }
}
SWDEV_EXPORT const char* cublasLtGetStatusString(int status) { return cublasLtGetStatusName(status); }

SWDEV_EXPORT int cublasLtCreate(Handle** handle) { return create(handle); }
SWDEV_EXPORT int cublasLtDestroy(Handle* handle) { return destroy<Handle>(handle, kHandleMagic); }

SWDEV_EXPORT int cublasLtMatmulDescCreate(Desc** desc, int32_t compute, int32_t scale) {
    if (!desc) return kInvalidValue;
    if (int st = create(desc); st != kSuccess) return st;
    (*desc)->compute = compute;  // checked when the descriptor is used
    (*desc)->scale = scale;
    return kSuccess;
}
SWDEV_EXPORT int cublasLtMatmulDescDestroy(Desc* desc) { return destroy<Desc>(desc, kDescMagic); }

SWDEV_EXPORT int cublasLtMatmulDescSetAttribute(Desc* d, uint32_t attr, const void* buf, size_t size) {
    if (!lookup<Desc>(d, kDescMagic)) return kInvalidValue;
    int32_t i32 = 0;
    switch (attr) {
    case 2:  // POINTER_MODE: host scalars only
        if (!read_attr(i32, buf, size)) return kInvalidValue;
        return i32 == 0 ? kSuccess : kNotSupported;
    case 3:  // TRANSA
    case 4:  // TRANSB
        if (!read_attr(i32, buf, size)) return kInvalidValue;
        if (i32 != kOpN && i32 != kOpT) return kNotSupported;
        (attr == 3 ? d->transa : d->transb) = i32;
        return kSuccess;
    case 7: {  // EPILOGUE
        uint32_t e;
        if (!read_attr(e, buf, size)) return kInvalidValue;
        if (e != kEpilogueDefault && e != kEpilogueBias) return kNotSupported;
        d->epilogue = e;
        return kSuccess;
    }
    case 8:  // BIAS_POINTER
        return read_attr(d->bias_ptr, buf, size) ? kSuccess : kInvalidValue;
    case 10:  // BIAS_BATCH_STRIDE
        if (!read_attr(d->bias_batch_stride, buf, size) || d->bias_batch_stride < 0) return kInvalidValue;
        return kSuccess;
    case 26:  // BIAS_DATA_TYPE
        return read_attr(d->bias_type, buf, size) ? kSuccess : kInvalidValue;
    default:
        return kInvalidValue;
    }
}

SWDEV_EXPORT int cublasLtMatrixLayoutCreate(Layout** layout, int32_t type, uint64_t rows, uint64_t cols, int64_t ld) {
    if (!layout) return kInvalidValue;
    if (int st = create(layout); st != kSuccess) return st;
    Layout& l = **layout;
    l.type = type;  // type, dims and ld are checked when the layout is used
    l.rows = rows;
    l.cols = cols;
    l.ld = ld;
    return kSuccess;
}
SWDEV_EXPORT int cublasLtMatrixLayoutDestroy(Layout* layout) { return destroy<Layout>(layout, kLayoutMagic); }

SWDEV_EXPORT int cublasLtMatrixLayoutSetAttribute(Layout* l, uint32_t attr, const void* buf, size_t size) {
    if (!lookup<Layout>(l, kLayoutMagic)) return kInvalidValue;
    switch (attr) {
    case 0: return read_attr(l->type, buf, size) ? kSuccess : kInvalidValue;   // TYPE
    case 1: {  // ORDER: column- and row-major only (no tiled orders)
        int32_t order;
        if (!read_attr(order, buf, size)) return kInvalidValue;
        if (order != kOrderCol && order != kOrderRow) return kNotSupported;
        l->order = order;
        return kSuccess;
    }
    case 2: return read_attr(l->rows, buf, size) ? kSuccess : kInvalidValue;   // ROWS
    case 3: return read_attr(l->cols, buf, size) ? kSuccess : kInvalidValue;   // COLS
    case 4: return read_attr(l->ld, buf, size) ? kSuccess : kInvalidValue;     // LD
    case 5: return read_attr(l->batch, buf, size) ? kSuccess : kInvalidValue;  // BATCH_COUNT
    case 6: return read_attr(l->stride, buf, size) ? kSuccess : kInvalidValue; // STRIDED_BATCH_OFFSET
    default: return kInvalidValue;
    }
}

SWDEV_EXPORT int cublasLtMatmulPreferenceCreate(Pref** pref) { return create(pref); }
SWDEV_EXPORT int cublasLtMatmulPreferenceDestroy(Pref* pref) { return destroy<Pref>(pref, kPrefMagic); }

SWDEV_EXPORT int cublasLtMatmulPreferenceSetAttribute(Pref* p, uint32_t attr, const void* buf, size_t size) {
    if (!lookup<Pref>(p, kPrefMagic)) return kInvalidValue;
    if (attr == 1) return read_attr(p->max_workspace, buf, size) ? kSuccess : kInvalidValue;  // MAX_WORKSPACE_BYTES
    if (attr >= 5 && attr <= 8) return read_attr(p->align[attr - 5], buf, size) ? kSuccess : kInvalidValue;  // MIN_ALIGNMENT_{A,B,C,D}
    return kInvalidValue;
}

SWDEV_EXPORT int cublasLtMatmulAlgoGetHeuristic(Handle* handle, Desc* desc, Layout* a, Layout* b, Layout* c, Layout* d,
                                                Pref* pref, int requested, HeuristicResult* results, int* count) {
    if (!results || !count || requested < 1) return kInvalidValue;
    const Pref* pr = lookup<Pref>(pref, kPrefMagic);
    if (!pr) return kInvalidValue;
    Problem p;
    if (int st = validate(handle, desc, a, b, c, d, p); st != kSuccess) return st;
    HeuristicResult r{};
    r.algo.data[kSlotMagic] = kAlgoMagic;
    for (int i = 0; i < 4; i++) r.algo.data[kSlotAlignA + i] = pr->align[i];
    r.algo.data[kSlotProblem] = p.fingerprint();
    r.workspaceSize = 0;
    r.state = kSuccess;
    r.wavesCount = 1.0f;
    results[0] = r;
    *count = 1;
    return kSuccess;
}

SWDEV_EXPORT int cublasLtMatmul(Handle* handle, Desc* desc, const void* alpha, const void* A, Layout* al, const void* B,
                                Layout* bl, const void* beta, const void* C, Layout* cl, void* D, Layout* dl,
                                const Algo* algo, void* workspace, size_t workspace_size, void* stream) {
    Problem p;
    if (int st = validate(handle, desc, al, bl, cl, dl, p); st != kSuccess) return st;
    // A null algo asks real cuBLASLt for an implicit heuristic query; the backend never does that.
    if (!algo) return kNotSupported;
    if (algo->data[kSlotMagic] != kAlgoMagic)
        swdev::fatal("cublasLtMatmul: the algo was not produced by cublasLtMatmulAlgoGetHeuristic");
    if (algo->data[kSlotProblem] != p.fingerprint()) return kInvalidValue;  // algo of another problem
    if (!alpha || !beta || !A || !B || !D) return kInvalidValue;
    float a_s, b_s;  // pointer mode host: the scalars are read now
    std::memcpy(&a_s, alpha, 4);
    std::memcpy(&b_s, beta, 4);
    if (b_s != 0 && !C) return kInvalidValue;
    if (workspace_size > 0 && !workspace) return kInvalidValue;
    const void* bias = reinterpret_cast<const void*>(desc->bias_ptr);
    if (p.bias && !bias) return kInvalidValue;

    const uint64_t pa = uint64_t(A), pb = uint64_t(B), pc = uint64_t(C), pd = uint64_t(D), pbias = uint64_t(bias);
    const char* promise = "promised by the matmul preference";
    check_align("A", pa, algo->data[kSlotAlignA], promise);
    check_align("B", pb, algo->data[kSlotAlignB], promise);
    check_align("D", pd, algo->data[kSlotAlignD], promise);
    check_align("A", pa, 2, "element size");
    check_align("B", pb, 2, "element size");
    check_align("D", pd, elem_size(p.c.type), "element size");
    const unsigned __int128 ea = p.a.extent(p.batch), eb = p.b.extent(p.batch), ec = p.c.extent(p.batch);
    check_range("A", pa, ea, p, &p.a);
    check_range("B", pb, eb, p, &p.b);
    check_range("D", pd, ec, p, &p.c);
    if (b_s != 0) {
        check_align("C", pc, algo->data[kSlotAlignC], promise);
        check_align("C", pc, elem_size(p.c.type), "element size");
        check_range("C", pc, ec, p, &p.c);
        if (pc != pd && overlap(pc, ec, pd, ec)) swdev::fatal("cublasLtMatmul: C and D overlap without being equal");
    }
    unsigned __int128 ebias = 0;
    if (p.bias) {
        ebias = ((unsigned __int128)(p.batch - 1) * p.bias_stride + p.m) * elem_size(p.bias_type);
        check_align("bias", pbias, elem_size(p.bias_type), "element size");
        check_range("bias", pbias, ebias, p, nullptr);
    }
    if (workspace_size > 0) check_range("workspace", uint64_t(workspace), workspace_size, p, nullptr);
    // D is written while A, B and the bias are read: overlapping them is a race on a GPU.
    if (overlap(pd, ec, pa, ea) || overlap(pd, ec, pb, eb) || (p.bias && overlap(pd, ec, pbias, ebias)))
        swdev::fatal("cublasLtMatmul: D overlaps A, B or the bias");

    int rc = swdev::enqueue(stream, "cublasLtMatmul",
                            [p, a_s, b_s, A, B, C, D, bias] { compute(p, a_s, b_s, A, B, C, D, bias); });
    return rc == 0 ? kSuccess : kExecutionFailed;
}
