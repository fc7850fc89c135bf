// The NCCL stand-in's self-test harness (nccl_selftest.cpp, nccl_selftest_failures.cpp): ranks
// are forked processes that share a small anonymous mapping (the unique id, pids, check counts,
// flags), each with its own device of the driver stand-in.
#pragma once
#include <cuda.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>
#include "nccl_api.h"

namespace selftest {

struct Shared {
    ncclUniqueId id;
    int pid[16];
    long checks[16];
    int arrived;           // ranks at the barrier
    volatile int release;  // a flag one rank raises for another
};
inline Shared* sh;
inline int g_rank = -1;  // -1 in the parent
inline long parent_checks = 0;

inline long& checks() { return g_rank >= 0 ? sh->checks[g_rank] : parent_checks; }

[[noreturn]] inline void die(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] inline void die(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "nccl_selftest: %s%d: FAILED: ", g_rank >= 0 ? "rank " : "parent ", g_rank);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
    _exit(1);
}

#define CU(x) \
    do { \
        CUresult r_ = (x); \
        if (r_ != CUDA_SUCCESS) die("%s returned CUresult %d (line %d)", #x, (int)r_, __LINE__); \
    } while (0)
#define NC(x) \
    do { \
        ncclResult_t r_ = (x); \
        if (r_ != ncclSuccess) die("%s returned %d: %s (line %d)", #x, (int)r_, ncclGetLastError(nullptr), __LINE__); \
    } while (0)
#define EXPECT(cond, ...) \
    do { \
        if (!(cond)) die(__VA_ARGS__); \
        ++checks(); \
    } while (0)

// Forks ranks 0..started-1 of `n`, runs body(rank, n) in each (its return value is the exit
// status) and waits for all; returns their exit statuses (-signal for a killed child).
template <class F>
std::vector<int> run_ranks(int n, int started, F body) {
    memset(sh, 0, sizeof *sh);
    NC(ncclGetUniqueId(&sh->id));
    std::vector<pid_t> kids;
    for (int r = 0; r < started; ++r) {
        pid_t pid = fork();
        if (pid < 0) die("fork failed");
        if (pid == 0) {
            g_rank = r;
            sh->pid[r] = getpid();
            int code = body(r, n);
            fflush(stdout);
            fflush(stderr);
            _exit(code);
        }
        kids.push_back(pid);
    }
    std::vector<int> status;
    for (pid_t k : kids) {
        int st = 0;
        waitpid(k, &st, 0);
        status.push_back(WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st));
    }
    return status;
}

inline long total_checks() {
    long t = 0;
    for (long c : sh->checks) t += c;
    return t;
}

// Waits until `count` ranks have called it (once each per run).
inline void barrier(int count) {
    __atomic_add_fetch(&sh->arrived, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&sh->arrived, __ATOMIC_SEQ_CST) < count) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

// One rank's device: DLM_SWDEV_DEVICES devices, this rank on ordinal rank % count.
struct Device {
    CUstream stream;
    int ordinal;
    explicit Device(int rank) {
        CU(cuInit(0));
        int count = 0;
        CU(cuDeviceGetCount(&count));
        CUdevice d;
        ordinal = rank % count;
        CU(cuDeviceGet(&d, ordinal));
        CUcontext c;
        CU(cuDevicePrimaryCtxRetain(&c, d));
        CU(cuCtxSetCurrent(c));
        CU(cuStreamCreate(&stream, 0));
    }
    cudaStream_t nccl_stream() const { return (cudaStream_t)stream; }
    CUdeviceptr upload(const std::vector<unsigned char>& host, size_t bytes) {
        CUdeviceptr p;
        CU(cuMemAlloc(&p, bytes ? bytes : 1));
        if (!host.empty()) CU(cuMemcpyHtoD(p, host.data(), host.size()));
        return p;
    }
    std::vector<unsigned char> download(CUdeviceptr p, size_t bytes) {
        CU(cuStreamSynchronize(stream));
        std::vector<unsigned char> h(bytes);
        if (bytes) CU(cuMemcpyDtoH(h.data(), p, bytes));
        return h;
    }
};

inline ncclComm_t join(int n, int rank) {
    ncclComm_t c;
    NC(ncclCommInitRank(&c, n, sh->id, rank));
    return c;
}

inline bool contains(const char* haystack, const std::string& needle) { return haystack && strstr(haystack, needle.c_str()); }

// The failure cases (nccl_selftest_failures.cpp); returns the checks made.
long failures();

}  // namespace selftest
