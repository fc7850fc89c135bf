// The software device's internal interface between its driver stand-in (libcuda.so.1) and its
// cuBLASLt and NCCL stand-ins, which link against it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#define SWDEV_API __attribute__((visibility("default")))
namespace swdev {
// Prints "dlm software device: <message>" to stderr and aborts (like a GPU fault stopping the test).
[[noreturn]] SWDEV_API void fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Queues `op` on `stream` (a CUstream handle; nullptr = the legacy default stream) in stream order;
// it runs at the latest at the next synchronisation, or is recorded if the stream is capturing a graph.
// Returns 0 (CUDA_SUCCESS) or a nonzero CUresult code (e.g. the stream handle is unknown, capture invalidated).
SWDEV_API int enqueue(void* stream, const char* what, std::function<void()> op);
// Whether [ptr, ptr + bytes) lies inside one live device allocation.
SWDEV_API bool is_device_range(uint64_t ptr, size_t bytes);
// The device of the context current on the calling thread, or -1 without one.
SWDEV_API int current_device();
// Called from inside a queued operation while it runs: it failed (e.g. a collective whose peer
// died), so the synchronisation that ran it returns CUDA_ERROR_LAUNCH_FAILED.
SWDEV_API void fail_running_op();
}
