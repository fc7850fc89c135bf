// The NCCL stand-in's transport (nccl_net.h): the rendezvous of the ranks and the exchange of a
// collective's data over Unix sockets, with every wait bounded and every peer's death noticed.
#include "nccl_net.h"
#include "nccl_reduce.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace swnccl {

void fail(ncclResult_t code, const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    throw Failure{code, buf};
}

double timeout_seconds() {
    const char* v = getenv("DLM_SWNCCL_TIMEOUT");
    if (!v || !*v) return 120;
    char* end = nullptr;
    double t = strtod(v, &end);
    if (*end || !(t > 0)) fail(ncclInvalidArgument, "DLM_SWNCCL_TIMEOUT=%s: expected a positive number of seconds", v);
    return t;
}

Token new_token() {
    Token t{};
    memcpy(t.magic, Token::kMagic, sizeof t.magic);
    unsigned char r[16];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) fail(ncclSystemError, "ncclGetUniqueId: getrandom failed: %s", strerror(errno));
    for (size_t i = 0; i < sizeof r; ++i) snprintf(t.hex + 2 * i, 3, "%02x", r[i]);
    return t;
}

const char* call_name(int call) {
    static const char* names[] = {"ncclAllReduce", "ncclReduceScatter", "ncclAllGather", "ncclBroadcast", "ncclReduce", "ncclSend/ncclRecv"};
    return call >= 0 && call <= kSendRecv ? names[call] : "an unknown call";
}

namespace {

constexpr uint32_t kHeaderMagic = 0x6c636e73;  // "sncl"
constexpr uint64_t kHelloMagic = 0x6f6c6c65686c636eull;
constexpr size_t kChunk = size_t(1) << 20;  // bytes per send/recv call

struct Hello {
    uint64_t magic;
    char hex[33];
    int32_t rank, nranks, pid;
};

sockaddr_un address(const Token& t, int rank, socklen_t* len) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    // sun_path[0] == 0: the abstract namespace, gone when the socket closes.
    int n = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "dlm-swnccl/%s/%d", t.hex, rank);
    *len = socklen_t(offsetof(sockaddr_un, sun_path) + 1 + n);
    return a;
}

// Milliseconds to wait in one poll: until the deadline, at most `cap`.
int poll_ms(Clock::time_point deadline, int cap) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return (int)std::clamp<long long>(left + 1, 0, cap);
}

Clock::time_point deadline_after(double seconds) {
    return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// Whether process `pid` has exited: gone, or a zombie its parent has not reaped yet.
bool process_exited(pid_t pid) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return true;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE* f = fopen(path, "r");
    if (!f) return true;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char* p = strrchr(buf, ')');
    return p && p[1] && (p[2] == 'Z' || p[2] == 'X');
}

std::string rank_list(const std::vector<int>& ranks) {
    std::string s;
    for (size_t i = 0; i < ranks.size(); ++i) s += (i ? (i + 1 == ranks.size() ? " and " : ", ") : "") + std::to_string(ranks[i]);
    return s;
}

std::string describe(const Header& h) {
    char buf[160];
    int n = snprintf(buf, sizeof buf, "%s (count %llu", call_name(h.call), (unsigned long long)h.count);
    if (h.call != kSendRecv) n += snprintf(buf + n, sizeof buf - n, ", %s", type_name(h.datatype));
    if (h.op >= 0) n += snprintf(buf + n, sizeof buf - n, ", %s", op_name(h.op));
    if (h.root >= 0) n += snprintf(buf + n, sizeof buf - n, ", root %d", h.root);
    snprintf(buf + n, sizeof buf - n, ")");
    return buf;
}

// A cursor over spans of memory, skipping empty ones.
struct Cursor {
    std::vector<Span> spans;
    size_t i = 0, off = 0;
    explicit Cursor(std::vector<Span> s = {}) : spans(std::move(s)) { advance(0); }
    bool done() const { return i == spans.size(); }
    char* ptr() const { return (char*)spans[i].ptr + off; }
    size_t left() const { return spans[i].bytes - off; }
    void advance(size_t n) {
        off += n;
        while (i < spans.size() && off == spans[i].bytes) ++i, off = 0;
    }
};

size_t total(const std::vector<Span>& spans) {
    size_t n = 0;
    for (const Span& s : spans) n += s.bytes;
    return n;
}

}  // namespace

// ---- the rendezvous --------------------------------------------------------------------------

// The socket to `peer` closed: says why. A process that dies closes its sockets before it becomes
// a zombie, so it gets a moment to get there. A peer that is still alive left the communicator
// (destroyed or aborted it, or failed and shut its sockets, maybe because a third rank exited):
// then a rank whose process has exited is named instead, as the cause.
[[noreturn]] static void peer_gone(const Mesh& m, int peer, const char* what) {
    bool exited = false;
    for (int i = 0; i < 100 && !(exited = process_exited(m.pids[peer])); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    for (int p = 0; p < m.nranks && !exited; ++p)
        if (p != m.rank && m.pids[p] != getpid() && process_exited(m.pids[p])) peer = p, exited = true;
    if (exited) fail(ncclRemoteError, "rank %d (pid %d) exited during %s", peer, (int)m.pids[peer], what);
    fail(ncclRemoteError, "rank %d (pid %d) left the communicator (destroyed, aborted or failed) during %s", peer, (int)m.pids[peer], what);
}

// Sends or receives exactly `n` bytes of the handshake with `peer` (-1 while unknown) before
// `deadline`.
static void handshake_io(int fd, void* buf, size_t n, bool out, Clock::time_point deadline, int rank, int peer) {
    const std::string who = peer >= 0 ? "rank " + std::to_string(peer) : std::string("a peer");
    char* p = (char*)buf;
    while (n > 0) {
        pollfd pfd{fd, short(out ? POLLOUT : POLLIN), 0};
        int ms = poll_ms(deadline, 1000);
        if (ms == 0) fail(ncclSystemError, "ncclCommInitRank: rank %d: %s stopped answering during the rendezvous (DLM_SWNCCL_TIMEOUT)", rank, who.c_str());
        if (poll(&pfd, 1, ms) < 0 && errno != EINTR) fail(ncclSystemError, "ncclCommInitRank: poll: %s", strerror(errno));
        ssize_t k = out ? send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT) : recv(fd, p, n, MSG_DONTWAIT);
        if (k == 0 && !out) fail(ncclRemoteError, "ncclCommInitRank: rank %d: %s closed its connection during the rendezvous", rank, who.c_str());
        if (k < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            fail(ncclRemoteError, "ncclCommInitRank: rank %d: the connection to %s failed during the rendezvous: %s", rank, who.c_str(), strerror(errno));
        }
        p += k;
        n -= (size_t)k;
    }
}

Mesh::Mesh(const Token& token, int n, int r) : rank(r), nranks(n), fds(n, -1), pids(n, 0) {
    pids[r] = getpid();
    int listener = -1;
    auto cleanup = [&] {
        if (listener >= 0) close(listener);
        for (int& fd : fds)
            if (fd >= 0) close(fd), fd = -1;
        for (int& fd : wake)
            if (fd >= 0) close(fd), fd = -1;
    };
    try {
        if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) fail(ncclSystemError, "ncclCommInitRank: pipe: %s", strerror(errno));
        const double seconds = timeout_seconds();
        const auto deadline = deadline_after(seconds);
        if (rank + 1 < nranks) {
            listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
            socklen_t len;
            sockaddr_un a = address(token, rank, &len);
            if (listener < 0 || bind(listener, (sockaddr*)&a, len) != 0 || listen(listener, nranks) != 0) {
                if (errno == EADDRINUSE) fail(ncclInvalidUsage, "ncclCommInitRank: rank %d of this unique id is already taken by another process", rank);
                fail(ncclSystemError, "ncclCommInitRank: rank %d cannot listen: %s", rank, strerror(errno));
            }
        }
        Hello hello_out{kHelloMagic, {}, rank, nranks, (int32_t)getpid()};
        memcpy(hello_out.hex, token.hex, sizeof hello_out.hex);
        // Swaps hellos on a new connection and checks the peer's; returns its rank.
        auto handshake = [&](int fd, int expect) {
            Hello h{};
            handshake_io(fd, &hello_out, sizeof hello_out, true, deadline, rank, expect);
            handshake_io(fd, &h, sizeof h, false, deadline, rank, expect);
            if (h.magic != kHelloMagic || memcmp(h.hex, token.hex, sizeof h.hex) != 0)
                fail(ncclInternalError, "ncclCommInitRank: rank %d: a connection that is not from this communicator's ranks", rank);
            if (h.nranks != nranks)
                fail(ncclInvalidUsage, "ncclCommInitRank: rank %d (pid %d) was told the communicator has %d ranks, rank %d was told %d", h.rank, h.pid, h.nranks,
                     rank, nranks);
            if (expect >= 0 ? h.rank != expect : (h.rank <= rank || h.rank >= nranks || fds[h.rank] >= 0))
                fail(ncclInvalidUsage, "ncclCommInitRank: rank %d: a second process (pid %d) claims rank %d", rank, h.pid, h.rank);
            pids[h.rank] = h.pid;
            fds[h.rank] = fd;
        };
        int missing = nranks - 1;
        while (missing > 0) {
            // Every lower rank listens: connect to those that have arrived.
            for (int p = 0; p < rank; ++p) {
                if (fds[p] >= 0) continue;
                int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                socklen_t len;
                sockaddr_un a = address(token, p, &len);
                if (fd >= 0 && connect(fd, (sockaddr*)&a, len) == 0) {
                    try {
                        handshake(fd, p);
                    } catch (...) {
                        close(fd);
                        throw;
                    }
                    --missing;
                    continue;
                }
                int e = errno;
                if (fd >= 0) close(fd);
                if (e != ECONNREFUSED && e != ENOENT && e != EAGAIN) fail(ncclSystemError, "ncclCommInitRank: rank %d cannot connect to rank %d: %s", rank, p, strerror(e));
            }
            // Every higher rank connects here.
            for (int fd; listener >= 0 && (fd = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0;) {
                try {
                    handshake(fd, -1);
                } catch (...) {
                    close(fd);
                    throw;
                }
                --missing;
            }
            if (missing == 0) break;
            if (Clock::now() >= deadline) {
                std::vector<int> absent;
                for (int p = 0; p < nranks; ++p)
                    if (p != rank && fds[p] < 0) absent.push_back(p);
                fail(ncclSystemError, "ncclCommInitRank: rank %d of %d waited %g s (DLM_SWNCCL_TIMEOUT) for rank%s %s, which never came", rank, nranks, seconds,
                     absent.size() > 1 ? "s" : "", rank_list(absent).c_str());
            }
            pollfd pfd{listener, POLLIN, 0};
            poll(&pfd, listener >= 0 ? 1 : 0, poll_ms(deadline, 10));
        }
    } catch (...) {
        cleanup();
        throw;
    }
    if (listener >= 0) close(listener);  // the name disappears with it
}

Mesh::~Mesh() {
    for (int fd : fds)
        if (fd >= 0) close(fd);
    for (int fd : wake)
        if (fd >= 0) close(fd);
}

void Mesh::abort() {
    aborted = true;
    char c = 1;
    (void)!write(wake[1], &c, 1);  // a full pipe is already awake
}

// ---- the exchange --------------------------------------------------------------------------------

void Mesh::exchange(std::vector<Leg>& legs, const char* what) {
    try {
        move(legs, what);
    } catch (...) {
        shut();
        throw;
    }
}

void Mesh::shut() {
    for (int fd : fds)
        if (fd >= 0) shutdown(fd, SHUT_RDWR);
}

void Mesh::move(std::vector<Leg>& legs, const char* what) {
    struct State {
        Cursor out, in;
        Header got{};
        bool header_done = false;
    };
    std::vector<State> state(legs.size());
    for (size_t k = 0; k < legs.size(); ++k) {
        Leg& leg = legs[k];
        leg.header.magic = kHeaderMagic;
        leg.header.bytes = total(leg.out);
        if (leg.sends) {
            std::vector<Span> out{{&leg.header, sizeof leg.header}};
            out.insert(out.end(), leg.out.begin(), leg.out.end());
            state[k].out = Cursor(std::move(out));
        }
        if (leg.receives) state[k].in = Cursor({{&state[k].got, sizeof(Header)}});
        else state[k].header_done = true;
    }
    // The peer's header arrived: it must describe the same call, and as many bytes as `in` holds.
    auto check = [&](size_t k) {
        const Leg& leg = legs[k];
        const Header &got = state[k].got, &mine = leg.header;
        if (got.magic != kHeaderMagic) fail(ncclInternalError, "%s: rank %d sent rank %d a malformed message", what, leg.peer, rank);
        bool same = got.call == mine.call &&
                    (mine.call == kSendRecv ? got.count == leg.in.size()
                                            : got.datatype == mine.datatype && got.op == mine.op && got.root == mine.root && got.count == mine.count);
        if (!same)
            fail(ncclInvalidUsage, "%s on rank %d met %s from rank %d: every rank must make the same calls in the same order", describe(mine).c_str(), rank,
                 describe(got).c_str(), leg.peer);
        if (got.bytes != total(leg.in))
            fail(ncclInvalidUsage, "%s: rank %d sends rank %d %llu bytes, which expects %zu", what, leg.peer, rank, (unsigned long long)got.bytes, total(leg.in));
        state[k].header_done = true;
        state[k].in = Cursor(leg.in);
    };
    // The timeout bounds a wait without progress: a long transfer that keeps moving is no hang.
    const double seconds = timeout_seconds();
    auto deadline = deadline_after(seconds);
    std::vector<pollfd> pfds;
    std::vector<size_t> which;
    for (;;) {
        pfds.clear();
        which.clear();
        std::vector<int> waiting;
        for (size_t k = 0; k < legs.size(); ++k) {
            short ev = short((state[k].out.done() ? 0 : POLLOUT) | (state[k].in.done() ? 0 : POLLIN));
            if (!ev) continue;
            pfds.push_back({fds[legs[k].peer], ev, 0});
            which.push_back(k);
            waiting.push_back(legs[k].peer);
        }
        if (pfds.empty()) return;
        if (aborted) fail(ncclSystemError, "%s: rank %d's communicator was aborted (ncclCommAbort) while it waited", what, rank);
        int ms = poll_ms(deadline, 1000);
        if (ms == 0) {
            std::sort(waiting.begin(), waiting.end());
            waiting.erase(std::unique(waiting.begin(), waiting.end()), waiting.end());
            fail(ncclSystemError, "%s: rank %d waited %g s (DLM_SWNCCL_TIMEOUT) for rank%s %s", what, rank, seconds, waiting.size() > 1 ? "s" : "",
                 rank_list(waiting).c_str());
        }
        pfds.push_back({wake[0], POLLIN, 0});
        if (poll(pfds.data(), pfds.size(), ms) < 0) {
            if (errno == EINTR) continue;
            fail(ncclSystemError, "%s: poll: %s", what, strerror(errno));
        }
        for (size_t j = 0; j + 1 < pfds.size(); ++j) {
            const short re = pfds[j].revents;
            if (!re) continue;
            const size_t k = which[j];
            const int peer = legs[k].peer, fd = pfds[j].fd;
            State& s = state[k];
            // Sending first: a rank that finds the peer's header wrong has sent its own, so that
            // the peer finds the mismatch too.
            if ((re & POLLOUT) && !s.out.done()) {
                ssize_t n = send(fd, s.out.ptr(), std::min(s.out.left(), kChunk), MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n < 0 && errno != EAGAIN && errno != EINTR) peer_gone(*this, peer, what);
                if (n > 0) s.out.advance((size_t)n), deadline = deadline_after(seconds);
            }
            if (re & POLLIN) {
                ssize_t n = recv(fd, s.in.ptr(), std::min(s.in.left(), kChunk), MSG_DONTWAIT);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) peer_gone(*this, peer, what);
                if (n > 0) {
                    s.in.advance((size_t)n);
                    deadline = deadline_after(seconds);
                    if (s.in.done() && !s.header_done) check(k);
                }
            } else if (re & (POLLHUP | POLLERR)) {
                peer_gone(*this, peer, what);
            }
        }
    }
}

}  // namespace swnccl
