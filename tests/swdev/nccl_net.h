// The NCCL stand-in's transport: N ranks are N processes on this machine, connected
// pairwise by Unix stream sockets in the abstract namespace (nothing on the file system). The
// unique id carries a random token; rank r listens on "dlm-swnccl/<token>/<r>", connects to every
// lower rank and accepts every higher one, and each pair swaps a hello with its rank and pid.
//
// A collective is one `exchange`: every leg (a peer, what to send it, where to put what it sends)
// advances at once through poll(), so no pair of ranks can block each other on full socket buffers.
// Every message starts with a header describing the call; a peer whose header differs (another
// collective, count, datatype, op or root) is a usage error naming both calls. A peer that closed
// its end (its process died, or it destroyed its communicator) ends the wait at once with an error
// naming its rank and pid; DLM_SWNCCL_TIMEOUT (seconds, default 120) bounds every wait without
// progress; an abort (Mesh::abort, from any thread) releases it. A rank whose exchange failed
// shuts all its sockets, so its peers' waits end too instead of running into their timeouts.
#pragma once
#include <sys/types.h>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>
#include "nccl_api.h"

namespace swnccl {

// Why a call or a collective failed: an ncclResult_t and the sentence ncclGetLastError returns.
struct Failure {
    ncclResult_t code;
    std::string message;
};

[[noreturn]] void fail(ncclResult_t code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

using Clock = std::chrono::steady_clock;

// DLM_SWNCCL_TIMEOUT in seconds (default 120), read at every use so a test can set it.
double timeout_seconds();

// The 128-byte ncclUniqueId's contents.
struct Token {
    static constexpr char kMagic[16] = "dlm-swnccl-id-1";
    char magic[16];
    char hex[33];  // 32 random hex digits and a NUL
};
static_assert(sizeof(Token) <= sizeof(ncclUniqueId));

Token new_token();

// What a message is: the call that sent it, compared with the receiver's own call.
struct Header {
    uint32_t magic;
    int32_t call;  // Call below
    int32_t datatype, op, root;
    uint64_t count;  // elements (per rank for the collectives), or a group's send count for p2p
    uint64_t bytes;  // payload bytes to the receiver
};

enum Call : int32_t { kAllReduce, kReduceScatter, kAllGather, kBroadcast, kReduce, kSendRecv };
const char* call_name(int call);

// A span of memory to send or fill.
struct Span {
    const void* ptr;
    size_t bytes;
};

// One peer's part of an exchange. When `sends`, `header` and then `out` go to the peer; when
// `receives`, the peer's header must describe the same call as `header` (for a collective: call,
// datatype, op, root and count; for send/receive: as many sends as `in` has spans) with as many
// payload bytes as `in` holds, which then fill `in` in order. A collective both sends and
// receives a header on every leg, even with no payload.
struct Leg {
    int peer;
    Header header;
    std::vector<Span> out;
    std::vector<Span> in;
    bool sends = true, receives = true;
};

struct Mesh {
    int rank = 0, nranks = 1;
    std::vector<int> fds;    // fds[p]: the socket to rank p (-1 for this rank)
    std::vector<pid_t> pids;  // pids[p]: rank p's process
    int wake[2] = {-1, -1};   // abort() writes here, waking every poll
    std::atomic<bool> aborted{false};

    // Forms the mesh of `nranks` ranks with `token` (blocking until every rank has arrived, or the
    // timeout: then fails naming the ranks that never came).
    Mesh(const Token& token, int nranks, int rank);
    ~Mesh();
    Mesh(const Mesh&) = delete;
    Mesh& operator=(const Mesh&) = delete;

    // Moves every leg's data; on any failure throws Failure (the mesh is unusable afterwards).
    // `what` names the call for messages ("ncclAllReduce").
    void exchange(std::vector<Leg>& legs, const char* what);

    // Makes every present and future exchange fail at once ("ncclCommAbort"), from any thread.
    void abort();

    // This rank is out of step with its peers for good (an exchange failed): ends every peer's
    // wait on it now, with end of file, rather than at the peer's timeout.
    void shut();

   private:
    void move(std::vector<Leg>& legs, const char* what);
};

}  // namespace swnccl
