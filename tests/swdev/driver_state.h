// The software device driver's state (driver.cpp), shared with the parts of the driver kept in
// files of their own (streams.cpp: streams, events and graphs). Not for the cuBLASLt and NCCL
// stand-ins: they see the driver through swdev.h only.
#pragma once
#include <cuda.h>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>
#include "kernel_table.h"
#include "swdev.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace swdev::drv {

// The limits of an H100/H200 (compute capability 9.0).
constexpr int kMaxThreads = 1024, kMaxBlockZ = 64, kMaxGridYZ = 65535;
constexpr unsigned kMaxGridX = 0x7fffffffu;
constexpr int kSmemDefault = 48 << 10, kSmemOptin = 232448;
constexpr const char* kName = "dlm software device (CPU emulation: timings mean nothing)";

struct Op {
    std::string what;
    std::function<void()> run;
};

struct Graph {
    std::vector<Op> ops;
};

struct Stream {
    unsigned flags = 0;
    // Creation order (the legacy stream is 0): cuCtxSynchronize runs streams in this order, and
    // an event names its stream by it (a destroyed stream's address may come back).
    uint64_t id = 0;
    std::deque<Op> queue;
    // Operations queued and run so far: an event is a position in this count.
    uint64_t enqueued = 0, done = 0;
    // An operation of this stream is running (a cross-stream wait may run other streams inside).
    bool running = false;
    // Set when one of its operations failed (swdev::fail_running_op), reported by the next sync.
    CUresult error = CUDA_SUCCESS;
    // Capture state: the graph being recorded, and why it was invalidated (empty while valid).
    std::unique_ptr<Graph> capture;
    std::string invalid;
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
    std::thread::id capture_thread;
};

// A recorded event: the work queued on stream `stream` up to operation number `seq`
// (stream 0 with seq 0: never recorded, complete).
struct Event {
    uint64_t stream = 0, seq = 0;
};

struct Module {
    std::string image;
};

struct Function {
    const KernelInfo* info;
    int max_dynamic_smem = kSmemDefault;
};

struct Context {
    int device = 0;
    int retained = 0;
};

constexpr int kMaxDevices = 16;

struct State {
    std::recursive_mutex mu;
    std::map<uint64_t, size_t> allocs;  // base -> bytes
    std::set<uint64_t> pinned;          // host allocations made by cuMemHostAlloc
    size_t used = 0, limit = 0, peak = 0;
    Stream legacy;
    std::set<Stream*> streams;
    uint64_t next_stream_id = 1;
    std::set<Event*> events;
    std::set<Graph*> graphs;
    std::set<Graph*> execs;
    std::set<Module*> modules;
    std::set<Function*> functions;
    Context primary[kMaxDevices];
    int devices = 1;
    bool initialised = false;
};

State& st();
// Why a call failed, on stderr, and `code`.
CUresult refuse(CUresult code, const char* fmt, ...);
bool need_context(const char* call, CUresult* r);
// The stream of a handle (null and the legacy handles: the legacy stream), or null if unknown.
Stream* stream_of(CUstream h);
Stream* stream_by_id(uint64_t id);
void drain(Stream& s);
void run_until(Stream& s, uint64_t seq, const char* why);
CUresult take_error(Stream& s);
CUresult forbid_during_capture(const char* call);
CUresult push(Stream* s, std::string what, std::function<void()> run);
// Set by swdev::fail_running_op while an operation runs; run_next() moves it to the stream.
extern thread_local bool t_op_failed;

}  // namespace swdev::drv

#define LOCK std::lock_guard lock_(swdev::drv::st().mu)
