// Fibers for the CUDA threads of one block (exec.h). x86-64 only: the switch is six callee-saved
// registers and the stack pointer, which keeps a barrier to a few nanoseconds (swapcontext would
// make a system call per switch). The switches are not announced to AddressSanitizer (its fiber
// hooks cost a third of the run time): the fiber stacks are plain mapped memory to it, each
// frame still poisons and clears its own redzones, and only its stack-use-after-return mode
// (off by default) would need them.
#include "kernel_rt.h"
#include "swdev.h"
#include <sys/mman.h>
#include <unistd.h>
#include <string>


#if !defined(__x86_64__)
#error "the software device's fibers are written for x86-64"
#endif

// swdev_switch(save, to): saves the callee-saved registers on the current stack, stores the stack
// pointer in *save, and resumes the context whose stack pointer is `to`.
asm(R"(
.text
.globl swdev_switch
.type swdev_switch,@function
swdev_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size swdev_switch, .-swdev_switch
)");
extern "C" void swdev_switch(void** save, void* to);

namespace swdev {
namespace {

constexpr size_t kStack = 256 << 10;  // ASan's redzones make frames several times larger
constexpr int kBlockBarrier = 0;      // Fiber::waiting: 0 the block barrier, 1 + w warp w's
constexpr int kRunnable = -1, kDone = -2;

struct Fiber {
    void* sp = nullptr;
    char* stack = nullptr;  // lowest usable byte; a guard page lies below
    Dim3 idx;
    int flat = 0;
    int waiting = kRunnable;
    unsigned shfl_round = 0;
};

struct Block {
    const Launch* launch = nullptr;
    std::vector<Fiber> fibers;
    int current = -1;
    void* scheduler_sp = nullptr;
    int block_arrived = 0;
    std::vector<int> warp_arrived, warp_size;
    std::vector<int> ready;  // fibers to resume, in order (a barrier's release appends its waiters)
    size_t next_ready = 0;
    char* smem = nullptr;
};

Block g;  // one block runs at a time, on the thread that drains the stream

// Leaves the running fiber (blocked or finished) for the next ready one directly, or for the
// scheduler when none is ready: half the switches of going through the scheduler every time.
void switch_away() {
    const int me = g.current;
    if (g.next_ready < g.ready.size()) {
        g.current = g.ready[g.next_ready++];
        swdev_switch(&g.fibers[me].sp, g.fibers[g.current].sp);
    } else {
        swdev_switch(&g.fibers[me].sp, g.scheduler_sp);
    }
}

[[noreturn]] void fiber_entry() {
    g.launch->body(g.launch->args);
    g.fibers[g.current].waiting = kDone;
    switch_away();
    __builtin_trap();  // a finished fiber is never resumed
}

void start_fiber(Fiber& f) {
    // Stacks lie kStack + a page apart, so their tops would all fall in the same cache sets and
    // evict each other at every switch: each fiber starts at a different cache line of its page.
    const size_t stagger = (size_t)(f.flat * 9 % 64) * 64;
    // The frame swdev_switch pops: six registers, then the return address (fiber_entry), then a
    // dummy return address for fiber_entry so that its stack is aligned as after a call. The stack
    // is reused as it is: a finished kernel has cleared its frames' ASan redzones on return.
    auto* top = reinterpret_cast<void**>(f.stack + kStack - stagger);
    top[-1] = nullptr;
    top[-2] = reinterpret_cast<void*>(&fiber_entry);
    for (int i = 3; i <= 8; ++i) top[-i] = nullptr;
    f.sp = top - 8;
    f.waiting = kRunnable;
    f.shfl_round = 0;
}

void resume(int i) {
    g.current = i;
    swdev_switch(&g.scheduler_sp, g.fibers[i].sp);
    g.current = -1;
}

void ensure_fibers(size_t n) {
    static std::vector<char*> stacks;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    while (stacks.size() < n) {
        void* m = mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) fatal("cannot map a fiber stack");
        mprotect(m, page, PROT_NONE);  // an overflowing kernel stack faults instead of corrupting its neighbour
        stacks.push_back(static_cast<char*>(m) + page);
    }
    g.fibers.resize(n);
    for (size_t i = 0; i < n; ++i) g.fibers[i].stack = stacks[i];
}

// Fibers [first, last) take part in barrier `which`.
void arrive(int which, int& arrived, int first, int last) {
    if (++arrived == last - first) {
        arrived = 0;
        for (int i = first; i < last; ++i)
            if (g.fibers[i].waiting == which) {
                g.fibers[i].waiting = kRunnable;
                g.ready.push_back(i);
            }
        return;  // the last to arrive goes on without a switch
    }
    g.fibers[g.current].waiting = which;
    switch_away();
}

std::string describe_deadlock() {
    int done = 0, at_block = 0;
    std::vector<int> at_warp(g.warp_size.size());
    for (auto& f : g.fibers) {
        if (f.waiting == kDone) ++done;
        else if (f.waiting == kBlockBarrier) ++at_block;
        else if (f.waiting > 0) ++at_warp[f.waiting - 1];
    }
    std::string s = std::to_string(done) + " threads exited, " + std::to_string(at_block) + " wait at __syncthreads";
    for (size_t w = 0; w < at_warp.size(); ++w)
        if (at_warp[w]) s += ", " + std::to_string(at_warp[w]) + " of warp " + std::to_string(w) + " wait at a warp barrier (shuffle or __syncwarp)";
    return s;
}

void run_block() {
    const int n = (int)g.fibers.size();
    for (auto& f : g.fibers) start_fiber(f);
    g.block_arrived = 0;
    std::fill(g.warp_arrived.begin(), g.warp_arrived.end(), 0);
    g.ready.clear();
    g.next_ready = 0;
    for (int i = 0; i < n; ++i) g.ready.push_back(i);
    while (g.next_ready < g.ready.size()) resume(g.ready[g.next_ready++]);
    for (auto& f : g.fibers)
        if (f.waiting != kDone)
            fatal("kernel %s, block (%u,%u,%u): deadlock: %s", g.launch->name, blockIdx.x, blockIdx.y, blockIdx.z, describe_deadlock().c_str());
}

}  // namespace

void run_grid(const Launch& launch) {
    const unsigned threads = launch.block.x * launch.block.y * launch.block.z;
    g.launch = &launch;
    ensure_fibers(threads);
    for (unsigned t = 0; t < threads; ++t) {
        Fiber& f = g.fibers[t];
        f.flat = (int)t;
        f.idx = {t % launch.block.x, (t / launch.block.x) % launch.block.y, t / (launch.block.x * launch.block.y)};
    }
    const int warps = (int)(threads + 31) / 32;
    g.warp_arrived.assign(warps, 0);
    g.warp_size.resize(warps);
    for (int w = 0; w < warps; ++w) g.warp_size[w] = std::min(32, (int)threads - 32 * w);
    // Exactly the requested size, so ASan reports a kernel that reaches past it.
    void* smem = nullptr;
    if (posix_memalign(&smem, 128, launch.dynamic_smem ? launch.dynamic_smem : 1)) fatal("cannot allocate shared memory");
    g.smem = static_cast<char*>(smem);
    // Shared memory starts as garbage on a GPU: poison it (NaN bits), so a kernel that reads what it
    // did not write sees garbage here too (later blocks see what earlier ones left, as on a GPU).
    memset(smem, 0xff, launch.dynamic_smem);
    blockDim = launch.block;
    gridDim = launch.grid;
    for (unsigned z = 0; z < launch.grid.z; ++z)
        for (unsigned y = 0; y < launch.grid.y; ++y)
            for (unsigned x = 0; x < launch.grid.x; ++x) {
                blockIdx = {x, y, z};
                run_block();
                // Stores queued after a kernel's last barrier still land, as on the GPU.
                for (int w = 0; w < warps; ++w) flush_warp_stores(w);
            }
    free(smem);
    g.smem = nullptr;
    g.launch = nullptr;
}

const Dim3& current_thread_idx() { return g.fibers[g.current].idx; }
int current_flat_tid() { return g.fibers[g.current].flat; }
void block_barrier() { arrive(kBlockBarrier, g.block_arrived, 0, (int)g.fibers.size()); }
void warp_barrier(int w) { arrive(1 + w, g.warp_arrived[w], 32 * w, 32 * w + g.warp_size[w]); }
void* dynamic_smem() { return g.smem; }
unsigned& current_shfl_round() { return g.fibers[g.current].shfl_round; }

}  // namespace swdev
