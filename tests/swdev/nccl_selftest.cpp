// Self-test of the software device's NCCL (nccl.cpp) on its driver (driver.cpp), ranks as forked
// processes: every collective on every datatype and op, in place and out of place, for 1 to 4
// ranks, against expected results computed here independently (in double precision with an
// explicit rounding to the datatype after every step of the rank-order fold); bf16 rounding cases
// with known answers; and the failures: a rank that exits before a collective, a rank that never
// comes to the rendezvous, a rank that never comes to a collective, an abort from a second thread,
// mismatched calls, and a buffer past its allocation. Prints how many checks passed; any mismatch
// fails the run. Built and run by build_nccl_selftest.sh.
#include <cuda.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include "nccl_selftest.h"

namespace selftest {

// ---- expected values, computed independently of nccl_reduce.h -----------------------------------

bool is_float(int dt) { return dt == ncclFloat16 || dt == ncclFloat32 || dt == ncclFloat64 || dt == ncclBfloat16; }
bool is_signed(int dt) { return dt == ncclInt8 || dt == ncclInt32 || dt == ncclInt64; }
size_t esize(int dt) {
    static const size_t s[] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2};
    return s[dt];
}
int bits(int dt) { return int(esize(dt) * 8); }

// x rounded to nearest even with `digits` significant bits, normal exponents from `emin`, and
// overflow past `max` to infinity: the datatype's rounding, from its definition.
double round_sig(double x, int digits, int emin, double max) {
    if (x == 0 || !std::isfinite(x)) return x;
    int e;
    std::frexp(x, &e);  // x = m * 2^e, 0.5 <= |m| < 1
    double q = std::ldexp(1.0, std::max(e, emin + 1) - digits);
    double r = std::nearbyint(x / q) * q;
    return std::fabs(r) > max ? std::copysign(INFINITY, x) : r;
}

double round_to(int dt, double x) {
    switch (dt) {
        case ncclBfloat16: return round_sig(x, 8, -126, std::ldexp(255.0, 120));
        case ncclFloat16: return round_sig(x, 11, -14, 65504.0);
        case ncclFloat32: return round_sig(x, 24, -126, std::ldexp(double((1 << 24) - 1), 104));
        default: return x;
    }
}

uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// The value rank `rank` holds at element i (an exact value of the datatype).
double gen_float(int dt, int op, int rank, size_t i, int salt) {
    uint64_t h = mix((uint64_t(salt) << 40) ^ (uint64_t(dt) << 32) ^ (uint64_t(op) << 28) ^ (uint64_t(rank) << 24) ^ i);
    if (dt == ncclFloat64)  // exact sums and products: double rounding is not what is tested here
        return op == ncclProd ? double(h % 16 + 1) / 8 : double(int64_t(h % 20001) - 10000) / 1024;
    if (op == ncclProd) return round_to(dt, 0.5 + double(h % 1000) / 666.0);
    double v = double(int64_t(h % 2001) - 1000) / 64.0 * (1.0 + double((h >> 20) % 97) / 101.0);
    if (std::fabs(v) < 1.0 / 1024) v = 0;  // keeps every exact sum within double's 53 bits
    return round_to(dt, v);
}

// The integer rank `rank` holds at element i: truncated to the type, sign-extended if signed.
uint64_t truncate(int dt, uint64_t v) {
    int b = bits(dt);
    if (b == 64) return v;
    uint64_t m = (uint64_t(1) << b) - 1;
    v &= m;
    if (is_signed(dt) && (v >> (b - 1))) v |= ~m;
    return v;
}

uint64_t gen_int(int dt, int op, int rank, size_t i, int salt) {
    uint64_t h = mix((uint64_t(salt) << 40) ^ (uint64_t(dt) << 32) ^ (uint64_t(op) << 28) ^ (uint64_t(rank) << 24) ^ i);
    if (op == ncclProd) return truncate(dt, is_signed(dt) ? uint64_t(int64_t(h % 7) - 3) : h % 4);
    return truncate(dt, h);
}

void store(int dt, unsigned char* buf, size_t i, double f, uint64_t u) {
    unsigned char* p = buf + i * esize(dt);
    switch (dt) {
        case ncclFloat64: memcpy(p, &f, 8); return;
        case ncclFloat32: {
            float x = float(f);
            memcpy(p, &x, 4);
            return;
        }
        case ncclBfloat16: {
            float x = float(f);
            uint32_t b;
            memcpy(&b, &x, 4);
            uint16_t h = uint16_t(b >> 16);  // exact: f is a bf16 value
            memcpy(p, &h, 2);
            return;
        }
        case ncclFloat16: {
            _Float16 x = _Float16(f);
            memcpy(p, &x, 2);
            return;
        }
        default: memcpy(p, &u, esize(dt)); return;  // little-endian: the low bytes
    }
}

std::vector<unsigned char> input(int dt, int op, int rank, size_t count, int salt) {
    std::vector<unsigned char> b(count * esize(dt));
    for (size_t i = 0; i < count; ++i) store(dt, b.data(), i, is_float(dt) ? gen_float(dt, op, rank, i, salt) : 0, gen_int(dt, op, rank, i, salt));
    return b;
}

// The reduction of element i over ranks 0..n-1 in rank order, stored at `out`[j].
void expected_element(int dt, int op, int n, size_t i, int salt, unsigned char* out, size_t j) {
    if (is_float(dt)) {
        const double scale = round_to(dt, 1.0 / n);
        double acc = 0;
        for (int r = 0; r < n; ++r) {
            double v = gen_float(dt, op, r, i, salt);
            if (op == ncclAvg) v = round_to(dt, v * scale);
            if (r == 0) acc = v;
            else if (op == ncclProd) acc = round_to(dt, acc * v);
            else if (op == ncclMax) acc = acc > v ? acc : v;
            else if (op == ncclMin) acc = acc < v ? acc : v;
            else acc = round_to(dt, acc + v);
        }
        return store(dt, out, j, acc, 0);
    }
    uint64_t acc = 0;
    for (int r = 0; r < n; ++r) {
        uint64_t v = gen_int(dt, op, r, i, salt);
        bool greater = is_signed(dt) ? int64_t(v) > int64_t(acc) : v > acc;
        if (r == 0) acc = v;
        else if (op == ncclProd) acc = truncate(dt, acc * v);
        else if (op == ncclMax) acc = greater ? v : acc;
        else if (op == ncclMin) acc = greater ? acc : v;
        else acc = truncate(dt, acc + v);
    }
    if (op == ncclAvg) acc = truncate(dt, is_signed(dt) ? uint64_t(int64_t(acc) / n) : acc / uint64_t(n));
    store(dt, out, j, 0, acc);
}

// ---- the collectives, every datatype and op --------------------------------------------------------

const int kTypes[] = {ncclInt8, ncclUint8, ncclInt32, ncclUint32, ncclInt64, ncclUint64, ncclFloat16, ncclFloat32, ncclFloat64, ncclBfloat16};
const char* kTypeNames[] = {"int8", "uint8", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64", "bfloat16"};

void expect_bytes(const std::vector<unsigned char>& got, const std::vector<unsigned char>& want, int dt, const char* what, int op, bool in_place) {
    if (got == want) return (void)++checks();
    size_t es = esize(dt), i = 0;
    while (memcmp(&got[i * es], &want[i * es], es) == 0) ++i;
    uint64_t g = 0, w = 0;
    memcpy(&g, &got[i * es], es);
    memcpy(&w, &want[i * es], es);
    static const char* ops[] = {"sum", "prod", "max", "min", "avg"};
    die("%s %s %s (%s): element %zu is 0x%llx, expected 0x%llx", what, kTypeNames[dt], op >= 0 ? ops[op] : "",
        in_place ? "in place" : "out of place", i, (unsigned long long)g, (unsigned long long)w);
}

void reductions(Device& dev, ncclComm_t comm, int n, int me, int dt, int op, size_t count, bool in_place) {
    const size_t es = esize(dt), b = count * es;
    const int salt = int(count);
    // All-reduce.
    {
        auto in = input(dt, op, me, count, salt);
        std::vector<unsigned char> want(b);
        for (size_t i = 0; i < count; ++i) expected_element(dt, op, n, i, salt, want.data(), i);
        CUdeviceptr s = dev.upload(in, b), r = in_place ? s : dev.upload({}, b);
        NC(ncclAllReduce((void*)s, (void*)r, count, ncclDataType_t(dt), ncclRedOp_t(op), comm, (cudaStream_t)dev.stream));
        expect_bytes(dev.download(r, b), want, dt, "ncclAllReduce", op, in_place);
        CU(cuMemFree(s));
        if (!in_place) CU(cuMemFree(r));
    }
    // Reduce-scatter: element j of rank r's buffer of n*count is element j of the all-reduce input
    // at index r*count + (j % count) (generated with salt + 1 over the whole buffer).
    {
        auto in = input(dt, op, me, count * n, salt + 1);
        std::vector<unsigned char> want(b);
        for (size_t i = 0; i < count; ++i) expected_element(dt, op, n, me * count + i, salt + 1, want.data(), i);
        CUdeviceptr s = dev.upload(in, b * n), r = in_place ? s + me * b : dev.upload({}, b);
        NC(ncclReduceScatter((void*)s, (void*)r, count, ncclDataType_t(dt), ncclRedOp_t(op), comm, (cudaStream_t)dev.stream));
        expect_bytes(dev.download(r, b), want, dt, "ncclReduceScatter", op, in_place);
        CU(cuMemFree(s));
        if (!in_place) CU(cuMemFree(r));
    }
    // Reduce to the last rank (out of place; in place on the root).
    {
        const int root = n - 1;
        auto in = input(dt, op, me, count, salt + 2);
        CUdeviceptr s = dev.upload(in, b), r = in_place ? s : dev.upload({}, b);
        NC(ncclReduce((void*)s, (void*)r, count, ncclDataType_t(dt), ncclRedOp_t(op), root, comm, (cudaStream_t)dev.stream));
        auto got = dev.download(r, b);
        std::vector<unsigned char> want = in;  // the other ranks' buffers are untouched
        if (me == root)
            for (size_t i = 0; i < count; ++i) expected_element(dt, op, n, i, salt + 2, want.data(), i);
        if (me == root || in_place) expect_bytes(got, want, dt, "ncclReduce", op, in_place);
        CU(cuMemFree(s));
        if (!in_place) CU(cuMemFree(r));
    }
}

void gathers(Device& dev, ncclComm_t comm, int n, int me, int dt, size_t count, bool in_place) {
    const size_t es = esize(dt), b = count * es;
    const int salt = int(count) + 7;
    std::vector<unsigned char> all;
    for (int r = 0; r < n; ++r) {
        auto part = input(dt, ncclSum, r, count, salt);
        all.insert(all.end(), part.begin(), part.end());
    }
    auto mine = input(dt, ncclSum, me, count, salt);
    {  // all-gather: rank r's buffer at offset r * count
        CUdeviceptr r = dev.upload(std::vector<unsigned char>(b * n, 0xab), b * n);
        if (in_place && b) CU(cuMemcpyHtoD(r + me * b, mine.data(), b));
        CUdeviceptr s = in_place ? r + me * b : dev.upload(mine, b);
        NC(ncclAllGather((void*)s, (void*)r, count, ncclDataType_t(dt), comm, (cudaStream_t)dev.stream));
        expect_bytes(dev.download(r, b * n), all, dt, "ncclAllGather", -1, in_place);
        CU(cuMemFree(r));
        if (!in_place) CU(cuMemFree(s));
    }
    {  // broadcast from rank 1 % n
        const int root = 1 % n;
        auto theirs = input(dt, ncclSum, root, count, salt);
        CUdeviceptr s = dev.upload(mine, b), r = in_place ? s : dev.upload({}, b);
        NC(ncclBroadcast((void*)s, (void*)r, count, ncclDataType_t(dt), root, comm, (cudaStream_t)dev.stream));
        expect_bytes(dev.download(r, b), theirs, dt, "ncclBroadcast", -1, in_place);
        CU(cuMemFree(s));
        if (!in_place) CU(cuMemFree(r));
    }
}

// Sends and receives: a ring in one group (two buffers to the next rank, of two datatypes, so
// that two sends to one peer are matched in order; with one rank, a copy to itself), then a lone
// send from rank 0 to rank 1 outside any group.
void point_to_point(Device& dev, ncclComm_t comm, int n, int me) {
    const int next = (me + 1) % n, prev = (me + n - 1) % n;
    const size_t na = 37, nb = 5;
    auto a = input(ncclFloat32, ncclSum, me, na, 99), b = input(ncclBfloat16, ncclSum, me, nb, 98);
    CUdeviceptr sa = dev.upload(a, a.size()), sb = dev.upload(b, b.size()), ra = dev.upload({}, a.size()), rb = dev.upload({}, b.size());
    NC(ncclGroupStart());
    NC(ncclSend((void*)sa, na, ncclFloat32, next, comm, dev.nccl_stream()));
    NC(ncclRecv((void*)ra, na, ncclFloat32, prev, comm, dev.nccl_stream()));
    NC(ncclSend((void*)sb, nb, ncclBfloat16, next, comm, dev.nccl_stream()));
    NC(ncclRecv((void*)rb, nb, ncclBfloat16, prev, comm, dev.nccl_stream()));
    NC(ncclGroupEnd());
    expect_bytes(dev.download(ra, a.size()), input(ncclFloat32, ncclSum, prev, na, 99), ncclFloat32, "ncclSend/ncclRecv ring", -1, false);
    expect_bytes(dev.download(rb, b.size()), input(ncclBfloat16, ncclSum, prev, nb, 98), ncclBfloat16, "ncclSend/ncclRecv ring", -1, false);
    if (n >= 2 && me == 0) NC(ncclSend((void*)sa, na, ncclFloat32, 1, comm, dev.nccl_stream()));
    if (n >= 2 && me == 1) {
        NC(ncclRecv((void*)ra, na, ncclFloat32, 0, comm, dev.nccl_stream()));
        expect_bytes(dev.download(ra, a.size()), input(ncclFloat32, ncclSum, 0, na, 99), ncclFloat32, "a lone ncclRecv", -1, false);
    }
    for (CUdeviceptr p : {sa, sb, ra, rb}) CU(cuMemFree(p));
}

// A collective recorded in a CUDA graph runs again at every launch: an in-place sum of ones gives
// n after one launch and n² after two.
void captured(Device& dev, ncclComm_t comm, int n) {
    const float one = 1.0f;
    std::vector<unsigned char> host(4 * 8);
    for (int i = 0; i < 8; ++i) memcpy(&host[4 * i], &one, 4);
    CUdeviceptr p = dev.upload(host, host.size());
    CUgraph g;
    CUgraphExec e;
    CU(cuStreamBeginCapture(dev.stream, CU_STREAM_CAPTURE_MODE_GLOBAL));
    NC(ncclAllReduce((void*)p, (void*)p, 8, ncclFloat32, ncclSum, comm, dev.nccl_stream()));
    CU(cuStreamEndCapture(dev.stream, &g));
    CU(cuGraphInstantiateWithFlags(&e, g, 0));
    for (int launch = 1; launch <= 2; ++launch) {
        CU(cuGraphLaunch(e, dev.stream));
        auto got = dev.download(p, host.size());
        float v;
        memcpy(&v, &got[4 * 7], 4);
        EXPECT(v == float(launch == 1 ? n : n * n), "a captured all-reduce gave %g after launch %d", v, launch);
    }
    CU(cuGraphExecDestroy(e));
    CU(cuGraphDestroy(g));
    CU(cuMemFree(p));
}

int every_collective(int rank, int n) {
    Device dev(rank);
    ncclComm_t comm = join(n, rank);
    int v = 0, got_n = 0, got_rank = -1, got_dev = -1;
    NC(ncclGetVersion(&v));
    NC(ncclCommCount(comm, &got_n));
    NC(ncclCommUserRank(comm, &got_rank));
    NC(ncclCommCuDevice(comm, &got_dev));
    EXPECT(v == 23000 && got_n == n && got_rank == rank && got_dev == dev.ordinal, "version %d, count %d, rank %d, device %d (ordinal %d)", v, got_n,
           got_rank, got_dev, dev.ordinal);
    CUdevice past;
    EXPECT(cuDeviceGet(&past, n) == CUDA_ERROR_INVALID_DEVICE, "device %d of DLM_SWDEV_DEVICES=%d was not refused", n, n);
    for (size_t count : {size_t(37), size_t(1), size_t(0)})
        for (int dt : kTypes) {
            for (int op = 0; op < ncclNumOps; ++op)
                for (bool in_place : {false, true}) reductions(dev, comm, n, rank, dt, op, count, in_place);
            for (bool in_place : {false, true}) gathers(dev, comm, n, rank, dt, count, in_place);
        }
    point_to_point(dev, comm, n, rank);
    captured(dev, comm, n);
    ncclResult_t async;
    NC(ncclCommGetAsyncError(comm, &async));
    EXPECT(async == ncclSuccess, "async error %d after the collectives", (int)async);
    // Destroying a communicator lets its queued collectives finish (as ncclCommFinalize would).
    const float two = 2.0f;
    std::vector<unsigned char> host(4);
    memcpy(host.data(), &two, 4);
    CUdeviceptr p = dev.upload(host, 4);
    NC(ncclAllReduce((void*)p, (void*)p, 1, ncclFloat32, ncclSum, comm, dev.nccl_stream()));
    NC(ncclCommDestroy(comm));
    auto got = dev.download(p, 4);
    float sum;
    memcpy(&sum, got.data(), 4);
    EXPECT(sum == 2.0f * n, "an all-reduce queued before ncclCommDestroy gave %g", sum);
    CU(cuMemFree(p));
    return 0;
}

// ---- known bf16 answers: the fold rounds after every rank -----------------------------------------

int bf16_rounding(int rank, int n) {
    Device dev(rank);
    ncclComm_t comm = join(n, rank);
    // Column 0: 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even, 1 (0x3f80).
    // Column 1: (1 + 2^-7) + 2^-8 is a tie: to even, 1 + 2^-6 (0x3f82).
    // Column 2, three ranks: (1 + 2^-8) rounds to 1, and again: 1 (0x3f80), where a sum in f32
    // rounded once would give 1 + 2^-7 (0x3f81).
    const uint16_t in[3][3] = {{0x3f80, 0x3f81, 0x3f80}, {0x3b80, 0x3b80, 0x3b80}, {0x3b80, 0x3b80, 0x3b80}};
    const uint16_t want2[3] = {0x3f80, 0x3f82, 0x3f80}, want3[3] = {0x3f80, 0x3f82, 0x3f80};
    std::vector<unsigned char> host(6);
    memcpy(host.data(), in[rank], 6);
    CUdeviceptr p = dev.upload(host, 6);
    NC(ncclAllReduce((void*)p, (void*)p, 3, ncclBfloat16, ncclSum, comm, (cudaStream_t)dev.stream));
    auto got = dev.download(p, 6);
    EXPECT(memcmp(got.data(), n == 2 ? want2 : want3, 6) == 0, "bf16 sums 0x%02x%02x 0x%02x%02x 0x%02x%02x", got[1], got[0], got[3], got[2], got[5], got[4]);
    CU(cuMemFree(p));
    NC(ncclCommDestroy(comm));
    return 0;
}

}  // namespace selftest

using namespace selftest;

int main() {
    setvbuf(stdout, nullptr, _IONBF, 0);
    sh = (Shared*)mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) die("mmap failed");
    long checks = 0;
    for (int n = 1; n <= 4; ++n) {
        // One device per rank, as one process per GPU.
        setenv("DLM_SWDEV_DEVICES", std::to_string(n).c_str(), 1);
        auto st = run_ranks(n, n, every_collective);
        for (int r = 0; r < n; ++r)
            if (st[r] != 0) die("%d ranks: rank %d exited with status %d", n, r, st[r]);
        checks += total_checks();
        printf("nccl_selftest: %d rank%s: every collective, datatype and op: %ld checks\n", n, n > 1 ? "s" : "", total_checks());
    }
    for (int n = 2; n <= 3; ++n) {
        auto st = run_ranks(n, n, bf16_rounding);
        for (int r = 0; r < n; ++r)
            if (st[r] != 0) die("bf16 rounding, %d ranks: rank %d exited with status %d", n, r, st[r]);
        checks += total_checks();
    }
    checks += failures();
    printf("nccl_selftest: all %ld checks passed\n", checks);
    return 0;
}
