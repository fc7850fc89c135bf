// The software device's streams, events and graphs (see driver.cpp for the device as a whole):
// streams are queues that run at a synchronisation; an event is a position in its stream's queue,
// and a stream that waits on it first runs the recorded stream up to there; a capture records a
// stream's operations into a graph that launches replay.
#include <cstdio>
#include "driver_state.h"

using namespace swdev;
using namespace swdev::drv;

// ---- streams and events ------------------------------------------------------------------------

EXPORT CUresult cuStreamCreate(CUstream* h, unsigned flags) {
    LOCK;
    CUresult r;
    if (!need_context("cuStreamCreate", &r)) return r;
    auto* s = new Stream;
    s->flags = flags;
    s->id = st().next_stream_id++;
    st().streams.insert(s);
    *h = reinterpret_cast<CUstream>(s);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamDestroy_v2(CUstream h) {
    LOCK;
    auto* s = reinterpret_cast<Stream*>(h);
    if (!st().streams.count(s)) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuStreamDestroy: unknown stream");
    if (s->capture) return refuse(CUDA_ERROR_ILLEGAL_STATE, "cuStreamDestroy: the stream is capturing");
    drain(*s);  // the driver lets queued work finish
    st().streams.erase(s);
    delete s;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamSynchronize(CUstream h) {
    LOCK;
    Stream* s = stream_of(h);
    if (!s) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuStreamSynchronize: unknown stream");
    if (s->capture) {
        if (s->invalid.empty()) s->invalid = "cuStreamSynchronize";
        return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamSynchronize on a capturing stream: the capture is invalidated");
    }
    CUresult r;
    if ((r = forbid_during_capture("cuStreamSynchronize"))) return r;
    drain(*s);
    return take_error(*s);
}

EXPORT CUresult cuStreamQuery(CUstream h) {
    LOCK;
    Stream* s = stream_of(h);
    if (!s) return CUDA_ERROR_INVALID_HANDLE;
    return s->queue.empty() ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

EXPORT CUresult cuLaunchHostFunc(CUstream h, CUhostFn fn, void* data) {
    LOCK;
    return push(stream_of(h), "cuLaunchHostFunc", [fn, data] { fn(data); });
}

EXPORT CUresult cuEventCreate(CUevent* e, unsigned) {
    LOCK;
    CUresult r;
    if (!need_context("cuEventCreate", &r)) return r;
    if (!e) return CUDA_ERROR_INVALID_VALUE;
    auto* ev = new Event;
    st().events.insert(ev);
    *e = reinterpret_cast<CUevent>(ev);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventDestroy_v2(CUevent e) {
    LOCK;
    auto* ev = reinterpret_cast<Event*>(e);
    if (!st().events.erase(ev)) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuEventDestroy: unknown event");
    delete ev;  // waits already queued keep their own copy of the position
    return CUDA_SUCCESS;
}

static Event* event_of(CUevent e, const char* call) {
    auto* ev = reinterpret_cast<Event*>(e);
    if (st().events.count(ev)) return ev;
    refuse(CUDA_ERROR_INVALID_HANDLE, "%s: unknown event", call);
    return nullptr;
}

// Cross-stream dependencies inside a graph are not modelled: refused, and the capture fails,
// rather than recording a graph that silently lacks (or includes) another stream's work.
static CUresult refuse_in_capture(Stream* s, const char* call) {
    if (s->invalid.empty()) s->invalid = call;
    return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "%s on a capturing stream: events inside a capture are not modelled; the capture is invalidated", call);
}

// The event becomes the work queued on the stream so far (a marker at the queue's current end).
EXPORT CUresult cuEventRecord(CUevent e, CUstream h) {
    LOCK;
    Event* ev = event_of(e, "cuEventRecord");
    if (!ev) return CUDA_ERROR_INVALID_HANDLE;
    Stream* s = stream_of(h);
    if (!s) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuEventRecord on an unknown stream");
    if (s->capture) return refuse_in_capture(s, "cuEventRecord");
    *ev = Event{s->id, s->enqueued};
    return CUDA_SUCCESS;
}

// Queues, on `h`, a wait for the event's work as recorded now: when `h` reaches it, it first runs
// the recorded stream up to the event (and no further).
EXPORT CUresult cuStreamWaitEvent(CUstream h, CUevent e, unsigned) {
    LOCK;
    Event* ev = event_of(e, "cuStreamWaitEvent");
    if (!ev) return CUDA_ERROR_INVALID_HANDLE;
    Stream* s = stream_of(h);
    if (!s) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuStreamWaitEvent on an unknown stream");
    if (s->capture) return refuse_in_capture(s, "cuStreamWaitEvent");
    const Event at = *ev;
    if (at.seq == 0 || at.stream == s->id) return CUDA_SUCCESS;  // nothing recorded, or stream order already
    char what[96];
    snprintf(what, sizeof what, "wait for stream %llu up to its operation %llu", (unsigned long long)at.stream, (unsigned long long)at.seq);
    return push(s, what, [at] {
        Stream* src = stream_by_id(at.stream);
        if (!src) return;
        run_until(*src, at.seq, "cuStreamWaitEvent");
        // A failure on the awaited stream fails the waiting one too: its synchronisation reports it.
        t_op_failed = src->error != CUDA_SUCCESS;
    });
}

EXPORT CUresult cuEventQuery(CUevent e) {
    LOCK;
    Event* ev = event_of(e, "cuEventQuery");
    if (!ev) return CUDA_ERROR_INVALID_HANDLE;
    Stream* src = stream_by_id(ev->stream);
    return !src || src->done >= ev->seq ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

EXPORT CUresult cuEventSynchronize(CUevent e) {
    LOCK;
    Event* ev = event_of(e, "cuEventSynchronize");
    if (!ev) return CUDA_ERROR_INVALID_HANDLE;
    CUresult r;
    if ((r = forbid_during_capture("cuEventSynchronize"))) return r;
    Stream* src = stream_by_id(ev->stream);
    if (!src) return CUDA_SUCCESS;
    if (src->capture) return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuEventSynchronize on an event of a capturing stream");
    run_until(*src, ev->seq, "cuEventSynchronize");
    return take_error(*src);
}

// ---- graphs --------------------------------------------------------------------------------------

EXPORT CUresult cuStreamBeginCapture_v2(CUstream h, CUstreamCaptureMode mode) {
    LOCK;
    Stream* s = stream_of(h);
    if (!s) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuStreamBeginCapture: unknown stream");
    if (s == &st().legacy) return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamBeginCapture on the legacy stream");
    if (s->capture) return refuse(CUDA_ERROR_ILLEGAL_STATE, "cuStreamBeginCapture: already capturing");
    s->capture = std::make_unique<Graph>();
    s->invalid.clear();
    s->mode = mode;
    s->capture_thread = std::this_thread::get_id();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamEndCapture(CUstream h, CUgraph* g) {
    LOCK;
    Stream* s = stream_of(h);
    if (!s) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuStreamEndCapture: unknown stream");
    if (!s->capture) return refuse(CUDA_ERROR_ILLEGAL_STATE, "cuStreamEndCapture: the stream is not capturing");
    if (s->mode != CU_STREAM_CAPTURE_MODE_RELAXED && s->capture_thread != std::this_thread::get_id())
        return refuse(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD, "cuStreamEndCapture from another thread than the one that began it");
    std::unique_ptr<Graph> graph = std::move(s->capture);
    *g = nullptr;
    if (!s->invalid.empty()) {
        s->invalid.clear();
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    st().graphs.insert(graph.get());
    *g = reinterpret_cast<CUgraph>(graph.release());
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamIsCapturing(CUstream h, CUstreamCaptureStatus* status) {
    LOCK;
    Stream* s = stream_of(h);
    if (!s) return CUDA_ERROR_INVALID_HANDLE;
    *status = !s->capture ? CU_STREAM_CAPTURE_STATUS_NONE : s->invalid.empty() ? CU_STREAM_CAPTURE_STATUS_ACTIVE : CU_STREAM_CAPTURE_STATUS_INVALIDATED;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec* e, CUgraph h, unsigned long long) {
    LOCK;
    auto* g = reinterpret_cast<Graph*>(h);
    if (!st().graphs.count(g)) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuGraphInstantiate: unknown graph");
    auto* exec = new Graph(*g);
    st().execs.insert(exec);
    *e = reinterpret_cast<CUgraphExec>(exec);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphUpload(CUgraphExec e, CUstream h) {
    LOCK;
    if (!st().execs.count(reinterpret_cast<Graph*>(e))) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuGraphUpload: unknown graph");
    return stream_of(h) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

EXPORT CUresult cuGraphLaunch(CUgraphExec e, CUstream h) {
    LOCK;
    auto* exec = reinterpret_cast<Graph*>(e);
    if (!st().execs.count(exec)) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuGraphLaunch: unknown graph");
    Stream* s = stream_of(h);
    CUresult r = CUDA_SUCCESS;
    for (const Op& op : exec->ops)
        if ((r = push(s, "graph: " + op.what, op.run))) return r;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphDestroy(CUgraph h) {
    LOCK;
    auto* g = reinterpret_cast<Graph*>(h);
    if (!st().graphs.erase(g)) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuGraphDestroy: unknown graph");
    delete g;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphExecDestroy(CUgraphExec e) {
    LOCK;
    auto* g = reinterpret_cast<Graph*>(e);
    if (!st().execs.erase(g)) return refuse(CUDA_ERROR_INVALID_HANDLE, "cuGraphExecDestroy: unknown graph");
    delete g;
    return CUDA_SUCCESS;
}
