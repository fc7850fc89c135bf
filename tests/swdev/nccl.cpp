// The software device's NCCL (libnccl.so.2): the entry points of NCCL 2.30 that a data-parallel
// trainer reaches through cudarc, for ranks that are processes on this machine.
// - ncclGetUniqueId makes a random token; the ranks that pass it to ncclCommInitRank meet over
//   abstract Unix sockets (nccl_net.h), blocking until all have come or DLM_SWNCCL_TIMEOUT.
// - Every collective is checked at the call (communicator, datatype, op, root; every buffer must
//   lie in one live device allocation of the driver stand-in, or the process stops naming it) and
//   queued on its CUDA stream; it runs when the stream does, moving the data between processes.
// - ncclSend/ncclRecv work between any ranks (and a rank and itself); inside ncclGroupStart/End
//   they are collected and queued as one exchange per communicator and stream at the group's end.
// - Results are exact and identical on every rank: each element is a left fold in rank order in
//   the datatype's precision (nccl_reduce.h), the same fold for all-reduce, reduce-scatter and
//   reduce, so a 1-rank all-reduce is the identity and reduce-scatter + all-gather equals
//   all-reduce bit for bit.
// - A collective that fails while its stream runs (a peer exited, a timeout, an abort, mismatched
//   calls) sets the communicator's async error (ncclCommGetAsyncError), says why on stderr and in
//   ncclGetLastError, and makes the synchronisation that ran it return CUDA_ERROR_LAUNCH_FAILED.
//   Later collectives on that communicator fail at once.
// Entry points not written here are generated stubs that stop the process naming themselves.
#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include "nccl_api.h"
#include "nccl_net.h"
#include "nccl_reduce.h"
#include "swdev.h"

using namespace swnccl;

namespace {

struct Comm {
    std::unique_ptr<Mesh> mesh;
    int device = 0;
    std::mutex mu;
    ncclResult_t async = ncclSuccess;
    char error[1024] = "";  // the failure behind `async`
};

struct Registry {
    std::mutex mu;
    std::map<ncclComm_t, std::shared_ptr<Comm>> live;
    char last_error[1024] = "";
};

Registry& reg() {
    static auto* r = new Registry;  // never destroyed: queued work may run during exit
    return *r;
}

// Records why a call failed (stderr and ncclGetLastError) and returns its code.
ncclResult_t refuse(ncclResult_t code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
ncclResult_t refuse(ncclResult_t code, const char* fmt, ...) {
    Registry& r = reg();
    std::lock_guard lock(r.mu);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r.last_error, sizeof r.last_error, fmt, ap);
    va_end(ap);
    fprintf(stderr, "dlm software NCCL: %s\n", r.last_error);
    return code;
}

ncclResult_t refuse(const Failure& f) { return refuse(f.code, "%s", f.message.c_str()); }

std::shared_ptr<Comm> lookup(ncclComm_t h) {
    std::lock_guard lock(reg().mu);
    auto it = reg().live.find(h);
    return it == reg().live.end() ? nullptr : it->second;
}

// A collective failed while its stream ran: the communicator is broken from now on, and its
// peers must not wait for it.
void break_comm(Comm& c, const Failure& f) {
    c.mesh->shut();
    {
        std::lock_guard lock(c.mu);
        if (c.async == ncclSuccess) {
            c.async = f.code;
            snprintf(c.error, sizeof c.error, "%s", f.message.c_str());
        }
    }
    refuse(f);
    swdev::fail_running_op();
}

// Stops the process when [ptr, ptr + bytes) is not device memory, as the driver's own checks.
void require_device(const char* call, const char* what, const void* ptr, size_t bytes) {
    if (bytes > 0 && !swdev::is_device_range((uint64_t)ptr, bytes))
        swdev::fatal("%s: %s [%p, +%zu bytes) is not inside one live device allocation", call, what, ptr, bytes);
}

struct Coll {
    Call call;
    const void* send;
    void* recv;
    size_t count;  // elements per rank (recvcount for reduce-scatter, sendcount for all-gather)
    ncclDataType_t dt;
    int op, root;  // -1 where the call has none
};

// Folds contributions[0..N) (each n elements) into `out` in rank order.
void reduce_into(const Coll& k, void* out, const std::vector<const void*>& contributions, size_t n) {
    const int N = (int)contributions.size();
    for (int p = 0; p < N; ++p) fold(k.dt, k.op, out, contributions[p], n, p == 0, N);
    if (k.op == ncclAvg) finish_avg(k.dt, out, n, N);
}

// Runs collective `k` on this rank: one exchange with every peer, then the local arithmetic.
void execute(Mesh& m, const Coll& k, const char* name) {
    const int N = m.nranks, me = m.rank;
    const size_t es = type_size(k.dt), bytes = k.count * es;
    const char* send = (const char*)k.send;
    char* recv = (char*)k.recv;
    // Contributions from each rank (this rank's copied too, so that in-place calls fold safely).
    std::vector<std::vector<char>> got(N);
    std::vector<const void*> parts(N);
    std::vector<Leg> legs;
    for (int p = 0; p < N; ++p)
        if (p != me) legs.push_back({p, Header{0, k.call, k.dt, k.op, k.root, k.count, 0}, {}, {}});
    switch (k.call) {
        case kAllReduce:
        case kReduceScatter: {
            // All-reduce: every rank sends its whole buffer to every other. Reduce-scatter: rank
            // p gets chunk p of everyone's buffer. Each rank folds the chunks it owns.
            const bool all = k.call == kAllReduce;
            for (Leg& l : legs) {
                got[l.peer].resize(bytes);
                l.out = {{send + (all ? 0 : l.peer * bytes), bytes}};
                l.in = {{got[l.peer].data(), bytes}};
            }
            got[me].assign(send + (all ? 0 : me * bytes), send + (all ? 0 : me * bytes) + bytes);
            m.exchange(legs, name);
            for (int p = 0; p < N; ++p) parts[p] = got[p].data();
            reduce_into(k, recv, parts, k.count);
            return;
        }
        case kAllGather:
            for (Leg& l : legs) {
                l.out = {{send, bytes}};
                l.in = {{recv + l.peer * bytes, bytes}};
            }
            m.exchange(legs, name);
            memmove(recv + me * bytes, send, bytes);  // in place: the same address, nothing moves
            return;
        case kBroadcast:
            for (Leg& l : legs) {
                if (me == k.root) l.out = {{send, bytes}};
                if (l.peer == k.root) l.in = {{recv, bytes}};
            }
            m.exchange(legs, name);
            if (me == k.root) memmove(recv, send, bytes);
            return;
        case kReduce:
            for (Leg& l : legs) {
                if (l.peer == k.root) l.out = {{send, bytes}};
                if (me == k.root) {
                    got[l.peer].resize(bytes);
                    l.in = {{got[l.peer].data(), bytes}};
                }
            }
            m.exchange(legs, name);
            if (me != k.root) return;
            got[me].assign(send, send + bytes);
            for (int p = 0; p < N; ++p) parts[p] = got[p].data();
            reduce_into(k, recv, parts, k.count);
            return;
        case kSendRecv:
            break;
    }
}

// Queues `work` (an exchange on `comm`'s mesh) on `stream`: when the stream runs it, a failure
// breaks the communicator, and a broken communicator fails it without touching the mesh.
template <class F>
ncclResult_t enqueue(const char* name, std::shared_ptr<Comm> comm, cudaStream_t stream, F work) {
    int rc = swdev::enqueue(stream, name, [comm, work, name] {
        {
            std::lock_guard lock(comm->mu);
            if (comm->async != ncclSuccess) return swdev::fail_running_op();
        }
        try {
            work(*comm->mesh);
        } catch (const Failure& f) {
            break_comm(*comm, f);
        }
    });
    if (rc) return refuse(ncclUnhandledCudaError, "%s: the CUDA stream refused it (CUresult %d)", name, rc);
    return ncclSuccess;
}

// The checks every call on a communicator starts with; null (after refusing) when one fails.
std::shared_ptr<Comm> usable(const char* name, ncclComm_t h, ncclDataType_t dt, ncclResult_t* r) {
    std::shared_ptr<Comm> comm = lookup(h);
    if (!comm) {
        *r = refuse(ncclInvalidArgument, "%s: %p is not a live communicator", name, (void*)h);
        return nullptr;
    }
    if (!type_size(dt)) {
        *r = refuse(ncclInvalidArgument, "%s: datatype %s (%d) is not modelled by the software NCCL", name, type_name(dt), (int)dt);
        return nullptr;
    }
    std::lock_guard lock(comm->mu);
    if (comm->async != ncclSuccess) {
        *r = refuse(comm->async, "%s: the communicator failed earlier: %s", name, comm->error);
        return nullptr;
    }
    return comm;
}

// Checks a collective at the call and queues it on `stream`.
ncclResult_t submit(const char* name, ncclComm_t h, cudaStream_t stream, Coll k) {
    ncclResult_t r = ncclSuccess;
    std::shared_ptr<Comm> comm = usable(name, h, k.dt, &r);
    if (!comm) return r;
    const size_t es = type_size(k.dt);
    if ((k.call == kAllReduce || k.call == kReduceScatter || k.call == kReduce) && (k.op < 0 || k.op >= ncclNumOps))
        return refuse(ncclInvalidArgument, "%s: reduction op %d is not one of sum, prod, max, min, avg", name, k.op);
    const int N = comm->mesh->nranks, me = comm->mesh->rank;
    if ((k.call == kBroadcast || k.call == kReduce) && (k.root < 0 || k.root >= N))
        return refuse(ncclInvalidArgument, "%s: root %d is not a rank of this %d-rank communicator", name, k.root, N);
    if (k.count > (SIZE_MAX / es) / (size_t)N) return refuse(ncclInvalidArgument, "%s: count %zu overflows", name, k.count);
    const size_t b = k.count * es;
    const bool root = me == k.root;
    require_device(name, "sendbuff", k.send, k.call == kReduceScatter ? b * N : k.call == kBroadcast && !root ? 0 : b);
    require_device(name, "recvbuff", k.recv, k.call == kAllGather ? b * N : k.call == kReduce && !root ? 0 : b);
    return enqueue(name, comm, stream, [k, name](Mesh& m) { execute(m, k, name); });
}

// ---- point to point: sends and receives, batched by group --------------------------------------

struct P2pOp {
    bool send;
    void* buf;
    size_t bytes;
    int peer;
};

// The sends and receives of one communicator on one stream, collected until the group ends.
struct P2pBatch {
    std::shared_ptr<Comm> comm;
    cudaStream_t stream;
    std::vector<P2pOp> ops;
};

thread_local int t_group_depth = 0;
thread_local std::vector<P2pBatch> t_batches;

// Runs a batch: every peer's sends in call order make one message, matched by the peer's
// receives from this rank in its call order; sends to this rank itself are copies.
void run_p2p(Mesh& m, const std::vector<P2pOp>& ops) {
    const char* name = "ncclSend/ncclRecv";
    std::vector<Leg> legs(m.nranks);
    std::vector<const P2pOp*> self_sends, self_recvs;
    for (int p = 0; p < m.nranks; ++p) legs[p] = {p, Header{0, kSendRecv, -1, -1, -1, 0, 0}, {}, {}};
    for (const P2pOp& op : ops) {
        if (op.peer == m.rank) {
            (op.send ? self_sends : self_recvs).push_back(&op);
            continue;
        }
        Leg& l = legs[op.peer];
        if (op.send) {
            l.out.push_back({op.buf, op.bytes});
            ++l.header.count;
        } else {
            l.in.push_back({op.buf, op.bytes});
        }
    }
    std::vector<Leg> used;
    for (Leg& l : legs) {
        l.sends = !l.out.empty();
        l.receives = !l.in.empty();
        if (l.sends || l.receives) used.push_back(std::move(l));
    }
    m.exchange(used, name);
    // After the exchange: a mistake in this rank's copies to itself concerns no peer.
    if (self_sends.size() != self_recvs.size())
        fail(ncclInvalidUsage, "%s: rank %d sends itself %zu buffers but receives %zu", name, m.rank, self_sends.size(), self_recvs.size());
    for (size_t i = 0; i < self_sends.size(); ++i) {
        if (self_sends[i]->bytes != self_recvs[i]->bytes)
            fail(ncclInvalidUsage, "%s: rank %d sends itself %zu bytes but receives %zu", name, m.rank, self_sends[i]->bytes, self_recvs[i]->bytes);
        memmove(self_recvs[i]->buf, self_sends[i]->buf, self_sends[i]->bytes);
    }
}

ncclResult_t flush_p2p() {
    std::vector<P2pBatch> batches = std::move(t_batches);
    t_batches.clear();
    for (P2pBatch& b : batches)
        if (ncclResult_t r = enqueue("ncclSend/ncclRecv", b.comm, b.stream, [ops = std::move(b.ops)](Mesh& m) { run_p2p(m, ops); })) return r;
    return ncclSuccess;
}

ncclResult_t p2p(const char* name, bool send, void* buf, size_t count, ncclDataType_t dt, int peer, ncclComm_t h, cudaStream_t stream) {
    ncclResult_t r = ncclSuccess;
    std::shared_ptr<Comm> comm = usable(name, h, dt, &r);
    if (!comm) return r;
    if (peer < 0 || peer >= comm->mesh->nranks) return refuse(ncclInvalidArgument, "%s: peer %d is not a rank of this %d-rank communicator", name, peer, comm->mesh->nranks);
    if (count > SIZE_MAX / type_size(dt)) return refuse(ncclInvalidArgument, "%s: count %zu overflows", name, count);
    const size_t bytes = count * type_size(dt);
    require_device(name, send ? "sendbuff" : "recvbuff", buf, bytes);
    auto it = std::find_if(t_batches.begin(), t_batches.end(), [&](const P2pBatch& b) { return b.comm == comm && b.stream == stream; });
    if (it == t_batches.end()) it = t_batches.insert(t_batches.end(), P2pBatch{comm, stream, {}});
    it->ops.push_back({send, buf, bytes, peer});
    return t_group_depth == 0 ? flush_p2p() : ncclSuccess;
}

}  // namespace

// ---- version, ids, communicators ----------------------------------------------------------------

ncclResult_t ncclGetVersion(int* version) {
    if (!version) return refuse(ncclInvalidArgument, "ncclGetVersion: version is null");
    *version = 23000;  // 2.30.0: the bindings cudarc 0.19.10 uses by default
    return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    if (!id) return refuse(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is null");
    try {
        Token t = new_token();
        memset(id, 0, sizeof *id);
        memcpy(id->internal, &t, sizeof t);
        return ncclSuccess;
    } catch (const Failure& f) {
        return refuse(f);
    }
}

ncclResult_t ncclCommInitRank(ncclComm_t* out, int nranks, ncclUniqueId id, int rank) {
    if (!out) return refuse(ncclInvalidArgument, "ncclCommInitRank: comm is null");
    if (nranks < 1 || rank < 0 || rank >= nranks) return refuse(ncclInvalidArgument, "ncclCommInitRank: rank %d of %d ranks", rank, nranks);
    Token t;
    memcpy(&t, id.internal, sizeof t);
    if (memcmp(t.magic, Token::kMagic, sizeof t.magic) != 0 || t.hex[32] != 0)
        return refuse(ncclInvalidArgument, "ncclCommInitRank: the unique id was not made by the software NCCL's ncclGetUniqueId");
    auto comm = std::make_shared<Comm>();
    // As NCCL, which takes the calling thread's current device (the runtime's default is 0).
    comm->device = swdev::current_device() >= 0 ? swdev::current_device() : 0;
    try {
        comm->mesh = std::make_unique<Mesh>(t, nranks, rank);
    } catch (const Failure& f) {
        return refuse(f);
    }
    auto h = reinterpret_cast<ncclComm_t>(comm.get());
    std::lock_guard lock(reg().mu);
    reg().live[h] = std::move(comm);
    *out = h;
    return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t*) {
    // The configuration only tunes a real NCCL (and `blocking = 0` may always complete at once).
    return ncclCommInitRank(comm, nranks, id, rank);
}

ncclResult_t ncclCommFinalize(ncclComm_t h) {
    // Queued collectives keep their communicator alive until they have run: nothing to flush.
    return lookup(h) ? ncclSuccess : refuse(ncclInvalidArgument, "ncclCommFinalize: %p is not a live communicator", (void*)h);
}

// Forgets the handle; the sockets close when the last queued collective that holds it has run.
static ncclResult_t release(ncclComm_t h, const char* call, bool abort) {
    std::shared_ptr<Comm> comm;
    {
        std::lock_guard lock(reg().mu);
        auto it = reg().live.find(h);
        if (it == reg().live.end()) return refuse(ncclInvalidArgument, "%s: %p is not a live communicator", call, (void*)h);
        comm = std::move(it->second);
        reg().live.erase(it);
    }
    if (abort) comm->mesh->abort();
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t h) { return release(h, "ncclCommDestroy", false); }

ncclResult_t ncclCommAbort(ncclComm_t h) { return release(h, "ncclCommAbort", true); }

ncclResult_t ncclCommCount(const ncclComm_t h, int* count) {
    auto c = lookup(h);
    if (!c || !count) return refuse(ncclInvalidArgument, "ncclCommCount: unknown communicator or null count");
    *count = c->mesh->nranks;
    return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t h, int* device) {
    auto c = lookup(h);
    if (!c || !device) return refuse(ncclInvalidArgument, "ncclCommCuDevice: unknown communicator or null device");
    *device = c->device;
    return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t h, int* rank) {
    auto c = lookup(h);
    if (!c || !rank) return refuse(ncclInvalidArgument, "ncclCommUserRank: unknown communicator or null rank");
    *rank = c->mesh->rank;
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t h, ncclResult_t* error) {
    auto c = lookup(h);
    if (!c || !error) return refuse(ncclInvalidArgument, "ncclCommGetAsyncError: unknown communicator or null asyncError");
    std::lock_guard lock(c->mu);
    *error = c->async;
    return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
    switch (r) {
        case ncclSuccess: return "no error";
        case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
        case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
        case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
        case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
        case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
        case ncclRemoteError: return "remote process exited or there was a network error";
        case ncclInProgress: return "NCCL operation in progress";
        case ncclTimeout: return "NCCL operation timed out";
        default: return "unknown result code";
    }
}

const char* ncclGetLastError(ncclComm_t h) {
    // A communicator's own failure if it has one, else the process's latest.
    if (auto c = lookup(h)) {
        std::lock_guard lock(c->mu);
        if (c->async != ncclSuccess) return c->error;
    }
    return reg().last_error;
}

// ---- collectives --------------------------------------------------------------------------------

ncclResult_t ncclAllReduce(const void* s, void* r, size_t n, ncclDataType_t dt, ncclRedOp_t op, ncclComm_t c, cudaStream_t st) {
    return submit("ncclAllReduce", c, st, {kAllReduce, s, r, n, dt, op, -1});
}

ncclResult_t ncclReduceScatter(const void* s, void* r, size_t n, ncclDataType_t dt, ncclRedOp_t op, ncclComm_t c, cudaStream_t st) {
    return submit("ncclReduceScatter", c, st, {kReduceScatter, s, r, n, dt, op, -1});
}

ncclResult_t ncclAllGather(const void* s, void* r, size_t n, ncclDataType_t dt, ncclComm_t c, cudaStream_t st) {
    return submit("ncclAllGather", c, st, {kAllGather, s, r, n, dt, -1, -1});
}

ncclResult_t ncclBroadcast(const void* s, void* r, size_t n, ncclDataType_t dt, int root, ncclComm_t c, cudaStream_t st) {
    return submit("ncclBroadcast", c, st, {kBroadcast, s, r, n, dt, -1, root});
}

ncclResult_t ncclBcast(void* buff, size_t n, ncclDataType_t dt, int root, ncclComm_t c, cudaStream_t st) {
    return submit("ncclBcast", c, st, {kBroadcast, buff, buff, n, dt, -1, root});
}

ncclResult_t ncclReduce(const void* s, void* r, size_t n, ncclDataType_t dt, ncclRedOp_t op, int root, ncclComm_t c, cudaStream_t st) {
    return submit("ncclReduce", c, st, {kReduce, s, r, n, dt, op, root});
}

ncclResult_t ncclSend(const void* s, size_t n, ncclDataType_t dt, int peer, ncclComm_t c, cudaStream_t st) {
    return p2p("ncclSend", true, const_cast<void*>(s), n, dt, peer, c, st);
}

ncclResult_t ncclRecv(void* r, size_t n, ncclDataType_t dt, int peer, ncclComm_t c, cudaStream_t st) { return p2p("ncclRecv", false, r, n, dt, peer, c, st); }

// Collectives inside a group are queued at their call, in call order (each is complete on its
// own); sends and receives wait for the outermost ncclGroupEnd, which queues each communicator's
// and stream's as one exchange, so that a rank can send to and receive from a peer at once.
ncclResult_t ncclGroupStart() {
    ++t_group_depth;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
    if (t_group_depth == 0) return refuse(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    return --t_group_depth == 0 ? flush_p2p() : ncclSuccess;
}

// The generated stubs' end for libnccl (gen_stubs.py): an entry point this stand-in does not model.
extern "C" [[noreturn]] void swnccl_unimplemented(const char* name) {
    swdev::fatal("%s is not implemented by the software NCCL: the trainer reached an entry point it has never used before", name);
}
