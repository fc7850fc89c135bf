// The software device's internal interface between its driver stand-in (libcuda.so.1) and its
// cuBLASLt stand-in, which links against it.
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
}
