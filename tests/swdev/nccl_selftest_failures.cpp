// The NCCL stand-in's failure cases: nothing hangs, and every error names its cause.
#include <dlfcn.h>
#include <signal.h>
#include "nccl_selftest.h"

namespace selftest {
namespace {

// The three ways a collective that failed while its stream ran shows itself.
void expect_failed(Device& dev, ncclComm_t comm, ncclResult_t code, const std::string& needle) {
    CUresult r = cuStreamSynchronize(dev.stream);
    EXPECT(r == CUDA_ERROR_LAUNCH_FAILED, "the synchronisation returned CUresult %d, not CUDA_ERROR_LAUNCH_FAILED", (int)r);
    ncclResult_t async = ncclSuccess;
    NC(ncclCommGetAsyncError(comm, &async));
    EXPECT(async == code, "async error %d, expected %d", (int)async, (int)code);
    const char* msg = ncclGetLastError(comm);
    EXPECT(contains(msg, needle), "last error \"%s\" does not say \"%s\"", msg, needle.c_str());
}

CUdeviceptr floats(Device& dev, size_t n) { return dev.upload(std::vector<unsigned char>(n * 4, 0), n * 4); }

// Rank 1 exits between the rendezvous and its first collective.
int dead_rank(int rank, int n) {
    setenv("DLM_SWNCCL_TIMEOUT", "30", 1);  // the exit is seen at once; the timeout is a backstop
    Device dev(rank);
    ncclComm_t comm = join(n, rank);
    if (rank == 1) _exit(3);
    CUdeviceptr p = floats(dev, 16);
    NC(ncclAllReduce((void*)p, (void*)p, 16, ncclFloat32, ncclSum, comm, dev.nccl_stream()));
    expect_failed(dev, comm, ncclRemoteError, "rank 1 (pid " + std::to_string(sh->pid[1]) + ") exited during ncclAllReduce");
    // The communicator is broken: the next call fails at once.
    ncclResult_t again = ncclAllReduce((void*)p, (void*)p, 16, ncclFloat32, ncclSum, comm, dev.nccl_stream());
    EXPECT(again == ncclRemoteError, "a collective on the broken communicator returned %d", (int)again);
    barrier(n - 1);  // no survivor closes before every survivor has seen rank 1's exit
    NC(ncclCommDestroy(comm));
    CU(cuMemFree(p));
    return 0;
}

// Rank 1 dies while rank 0 is inside a 32 MB all-reduce (rank 1 never runs its own, so rank 0
// fills the socket and waits to send more when the end closes).
int death_mid_transfer(int rank, int n) {
    setenv("DLM_SWNCCL_TIMEOUT", "30", 1);
    Device dev(rank);
    ncclComm_t comm = join(n, rank);
    const size_t count = size_t(8) << 20;
    CUdeviceptr p = floats(dev, count);
    NC(ncclAllReduce((void*)p, (void*)p, count, ncclFloat32, ncclSum, comm, dev.nccl_stream()));
    if (rank == 1) {
        while (!sh->release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        _exit(3);
    }
    sh->release = 1;
    expect_failed(dev, comm, ncclRemoteError, "rank 1 (pid " + std::to_string(sh->pid[1]) + ") exited during ncclAllReduce");
    NC(ncclCommDestroy(comm));
    CU(cuMemFree(p));
    return 0;
}

// Rank 2 of 3 never starts.
int missing_rank(int rank, int n) {
    setenv("DLM_SWNCCL_TIMEOUT", "2", 1);
    Device dev(rank);
    barrier(2);  // both present ranks start waiting together, so only rank 2 can be missing
    ncclComm_t comm;
    ncclResult_t r = ncclCommInitRank(&comm, n, sh->id, rank);
    EXPECT(r == ncclSystemError, "ncclCommInitRank with a rank missing returned %d", (int)r);
    const char* msg = ncclGetLastError(nullptr);
    EXPECT(contains(msg, "for rank 2, which never came"), "last error \"%s\"", msg);
    return 0;
}

// Rank 1 joins but never calls the collective; rank 0 gives up after DLM_SWNCCL_TIMEOUT, or is
// released by an abort from a second thread.
int idle_peer(int rank, int n, bool abort) {
    setenv("DLM_SWNCCL_TIMEOUT", abort ? "60" : "1", 1);
    Device dev(rank);
    ncclComm_t comm = join(n, rank);
    if (rank == 1) {
        while (!sh->release) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        NC(ncclCommDestroy(comm));
        return 0;
    }
    CUdeviceptr p = floats(dev, 16);
    NC(ncclAllReduce((void*)p, (void*)p, 16, ncclFloat32, ncclSum, comm, dev.nccl_stream()));
    if (abort) {
        std::thread t([comm] {
            std::this_thread::sleep_for(std::chrono::milliseconds(300));
            NC(ncclCommAbort(comm));
        });
        CUresult r = cuStreamSynchronize(dev.stream);
        t.join();
        EXPECT(r == CUDA_ERROR_LAUNCH_FAILED, "the aborted wait returned CUresult %d", (int)r);
        const char* msg = ncclGetLastError(nullptr);
        EXPECT(contains(msg, "ncclAllReduce: rank 0's communicator was aborted (ncclCommAbort)"), "last error \"%s\"", msg);
    } else {
        expect_failed(dev, comm, ncclSystemError, "ncclAllReduce: rank 0 waited 1 s (DLM_SWNCCL_TIMEOUT) for rank 1");
        NC(ncclCommDestroy(comm));
    }
    sh->release = 1;
    CU(cuMemFree(p));
    return 0;
}

// Rank 0 all-reduces while rank 1 all-gathers.
int mismatch(int rank, int n) {
    setenv("DLM_SWNCCL_TIMEOUT", "30", 1);
    Device dev(rank);
    ncclComm_t comm = join(n, rank);
    CUdeviceptr p = floats(dev, 16);
    if (rank == 0) NC(ncclAllReduce((void*)p, (void*)p, 8, ncclFloat32, ncclSum, comm, dev.nccl_stream()));
    else NC(ncclAllGather((void*)(p + 32), (void*)p, 8, ncclFloat32, comm, dev.nccl_stream()));
    const std::string ar = "ncclAllReduce (count 8, float32, sum)", ag = "ncclAllGather (count 8, float32)";
    expect_failed(dev, comm, ncclInvalidUsage, rank == 0 ? ar + " on rank 0 met " + ag + " from rank 1" : ag + " on rank 1 met " + ar + " from rank 0");
    barrier(n);
    NC(ncclCommDestroy(comm));
    CU(cuMemFree(p));
    return 0;
}

// Runs `body` in a child with its stderr captured; returns (exit status or -signal, stderr).
template <class F>
std::pair<int, std::string> in_child(F body) {
    int fds[2];
    if (pipe(fds) != 0) die("pipe failed");
    pid_t pid = fork();
    if (pid == 0) {
        g_rank = 0;
        dup2(fds[1], 2);
        close(fds[0]);
        body();
        _exit(0);
    }
    close(fds[1]);
    std::string err;
    char buf[4096];
    for (ssize_t k; (k = read(fds[0], buf, sizeof buf)) > 0;) err.append(buf, size_t(k));
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    return {WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st), err};
}

void expect_stopped(const char* what, std::pair<int, std::string> got, std::initializer_list<std::string> needles) {
    for (const std::string& needle : needles)
        EXPECT(got.first == -SIGABRT && got.second.find(needle) != std::string::npos, "%s: status %d, stderr:\n%s\n(expected SIGABRT and \"%s\")", what,
               got.first, got.second.c_str(), needle.c_str());
}

}  // namespace

long failures() {
    long before = parent_checks;
    auto all_ok = [](const char* what, const std::vector<int>& st, int dead) {
        for (size_t r = 0; r < st.size(); ++r)
            EXPECT(st[r] == (int(r) == dead ? 3 : 0), "%s: rank %zu exited with status %d", what, r, st[r]);
    };
    all_ok("a rank exits", run_ranks(3, 3, dead_rank), 1);
    long n = total_checks();
    all_ok("a rank exits during a transfer", run_ranks(2, 2, death_mid_transfer), 1);
    n += total_checks();
    all_ok("a rank never comes", run_ranks(3, 2, missing_rank), -1);
    n += total_checks();
    all_ok("a peer never calls", run_ranks(2, 2, [](int r, int n) { return idle_peer(r, n, false); }), -1);
    n += total_checks();
    all_ok("an abort", run_ranks(2, 2, [](int r, int n) { return idle_peer(r, n, true); }), -1);
    n += total_checks();
    all_ok("mismatched calls", run_ranks(2, 2, mismatch), -1);
    n += total_checks();
    printf("nccl_selftest: failures (exits, missing rank, timeout, abort, mismatch): %ld checks\n", n + parent_checks - before);

    // Usage errors refused at the call.
    ncclUniqueId bad{};
    ncclComm_t comm;
    EXPECT(ncclCommInitRank(&comm, 2, bad, 0) == ncclInvalidArgument, "a foreign unique id was accepted");
    EXPECT(ncclCommInitRank(&comm, 2, sh->id, 2) == ncclInvalidArgument, "rank 2 of 2 was accepted");
    EXPECT(ncclAllReduce(nullptr, nullptr, 0, ncclFloat32, ncclSum, comm, nullptr) == ncclInvalidArgument, "an unknown communicator was accepted");

    // A deliberate mistake: a buffer one element short stops the process, naming the call and buffer.
    expect_stopped("a buffer past its allocation", in_child([] {
                       sh->id = {};
                       NC(ncclGetUniqueId(&sh->id));
                       Device dev(0);
                       ncclComm_t c = join(1, 0);
                       CUdeviceptr p = floats(dev, 16);
                       ncclAllReduce((void*)p, (void*)p, 17, ncclFloat32, ncclSum, c, dev.nccl_stream());
                   }),
                   {"dlm software device: ncclAllReduce: sendbuff [0x", "+68 bytes) is not inside one live device allocation"});
    // An entry point the stand-in does not model stops the process with its name.
    expect_stopped("an unmodelled entry point", in_child([] { ((int (*)())dlsym(RTLD_DEFAULT, "ncclCommSplit"))(); }),
                   {"ncclCommSplit is not implemented by the software NCCL"});
    return n + parent_checks - before;
}

}  // namespace selftest
