// cuda_cpu.h -- run CUDA kernels written for arrseg on the CPU, unchanged.
//
// Include this header before a .cu file and compile with g++ (C++17,
// -pthread): the CUDA keywords become C++ (or nothing), and
// emulate_launch(grid, block, kernel, args...) runs a launch with one OS
// thread per CUDA thread. The blocks of the grid run in turn, in the order
// blockIdx.x fastest, then y, then z; the threads of a block run concurrently
// and __syncthreads() is a real barrier among them. Because blocks run one at
// a time, `__shared__` can be `static`: a function's static arrays are shared by
// all threads of the block that is running, as CUDA's shared memory is.
//
// What it checks: every thread of a block must reach the same sequence of
// barriers (a __syncthreads() that some threads skip is reported, not left to
// hang), at most 1024 threads per block, and each barrier waits at most
// ARRSEG_EMU_BARRIER_TIMEOUT_S seconds. A failure prints to stderr and aborts.
//
// What it does to make bugs show (arrseg_emu::settings, set before a launch):
// - poison_shared: before each block, every `__shared__` variable is filled
//   with 0xFF bytes (NaN in float and double, -1 in integers), as a GPU leaves
//   shared memory holding whatever the previous block wrote: a read before a
//   write turns results NaN. The `__shared__` variables live in one ELF
//   section, arrseg_emu_shared, so one memset covers them all. Not in
//   AddressSanitizer builds: ASan does not guard variables in a named
//   section, so there `__shared__` stays a plain `static` and ASan catches
//   accesses beyond its arrays instead.
// - random_schedule: the threads of a block are fibers (ucontext) of the
//   launching thread instead of OS threads, and run one at a time, from one
//   barrier to the next, in an order drawn afresh at every barrier from
//   `seed` (and the blocks of the grid in a seeded random order), so that two
//   seeds run a block's threads in different orders between barriers: a
//   kernel whose results depend on that order (threads that read what others
//   write without a barrier between, an order-dependent sum) gives results
//   that differ from seed to seed. The order is a function of the seed alone:
//   a launch repeated with one seed runs the same way. Off (one OS thread
//   per CUDA thread, concurrently) by default in sanitizer builds:
//   ThreadSanitizer's race detection needs concurrent threads.
//
// What it does not model: warps (no warp intrinsics are provided; arrseg's
// kernels use none), the memory model beyond barriers, concurrent blocks, and
// GPU rounding (FMA contraction, -ftz): results agree with a GPU to rounding.
#ifndef ARRSEG_CUDA_CPU_H
#define ARRSEG_CUDA_CPU_H

#ifdef __CUDACC__
#error "cuda_cpu.h is for host compilers; nvcc and NVRTC compile the .cu files as they are"
#endif

// C headers only (POSIX threads): they parse in a fraction of the time of
// <thread> and <mutex>, and every test configuration is its own build.
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>

// ---------------------------------------------------------------------------
// keywords
// ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#if defined(__SANITIZE_ADDRESS__)
#define ARRSEG_EMU_SHARED_SECTION 0
#define __shared__ static
#else
#define ARRSEG_EMU_SHARED_SECTION 1
#define __shared__ static __attribute__((section("arrseg_emu_shared")))
#endif
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// __restrict__ is a g++ keyword already

#ifndef ARRSEG_EMU_BARRIER_TIMEOUT_S
#define ARRSEG_EMU_BARRIER_TIMEOUT_S 60
#endif

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned int x, y, z;
};

// the built-in variables, per OS thread
inline thread_local uint3 threadIdx;  // (C++17 inline variables: one per program)
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace arrseg_emu {

[[noreturn]] inline void fail(const char *what)
{
    fprintf(stderr, "arrseg CUDA emulator: %s\n", what);
    fflush(stderr);
    abort();
}

inline void check(int rc, const char *what)
{
    if (rc != 0)
        fail(what);
}

// What the next launch does (see the header comment); the harness sets them.
struct Settings {
    bool poison_shared = true;
    bool random_schedule = false;
    unsigned long long seed = 0;
};
inline Settings settings;

#if ARRSEG_EMU_SHARED_SECTION
// the bounds of section arrseg_emu_shared, defined by the linker (weak: a
// program without any __shared__ variable has no such section)
extern "C" char __start_arrseg_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_arrseg_emu_shared[] __attribute__((weak, visibility("hidden")));
#endif

// bytes of all the __shared__ variables (0 in AddressSanitizer builds)
inline unsigned long shared_bytes()
{
#if ARRSEG_EMU_SHARED_SECTION
    if (!__start_arrseg_emu_shared)
        return 0;
    return (unsigned long)(__stop_arrseg_emu_shared - __start_arrseg_emu_shared);
#else
    return 0;
#endif
}

// 0xFF in every byte of every __shared__ variable (no thread may be running)
inline void poison_shared()
{
#if ARRSEG_EMU_SHARED_SECTION
    if (settings.poison_shared && shared_bytes() != 0)
        memset(__start_arrseg_emu_shared, 0xFF, shared_bytes());
#endif
}

// splitmix64: the random numbers of the schedule
inline unsigned long long mix(unsigned long long z)
{
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// order[0..n) = a permutation of 0..n-1 drawn from `key` (Fisher-Yates)
inline void shuffle(unsigned int *order, unsigned int n, unsigned long long key)
{
    for (unsigned int i = 0; i < n; ++i)
        order[i] = i;
    unsigned long long state = mix(key);
    for (unsigned int i = n; i > 1; --i) {
        state = mix(state);
        const unsigned int j = (unsigned int)(state % i);
        const unsigned int tmp = order[i - 1];
        order[i - 1] = order[j];
        order[j] = tmp;
    }
}

inline timespec deadline_from_now()
{
    timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += ARRSEG_EMU_BARRIER_TIMEOUT_S;
    return deadline;
}

enum BarrierKind { SYNCTHREADS = 1, BLOCK_END = 2 };

inline void divergent()
{
    fail("divergent __syncthreads(): some threads of a block reached a "
         "__syncthreads() that others skipped");
}

// The concurrent schedule: a reusable barrier for the OS threads of one
// block. Each arrival says what it is (a __syncthreads() or the end of the
// block): threads that reach different barriers in one phase are a
// divergent __syncthreads(). At the end of a block, the last thread to
// arrive poisons the shared memory for the next block.
class BlockBarrier {
public:
    explicit BlockBarrier(unsigned int n) : n_(n)
    {
        check(pthread_mutex_init(&mutex_, nullptr), "pthread_mutex_init");
        check(pthread_cond_init(&cv_, nullptr), "pthread_cond_init");
    }
    ~BlockBarrier()
    {
        pthread_cond_destroy(&cv_);
        pthread_mutex_destroy(&mutex_);
    }
    BlockBarrier(const BlockBarrier &) = delete;
    BlockBarrier &operator=(const BlockBarrier &) = delete;

    void arrive_and_wait(BarrierKind kind)
    {
        check(pthread_mutex_lock(&mutex_), "pthread_mutex_lock");
        if (arrived_ == 0)
            kind_ = kind;
        else if (kind_ != kind)
            divergent();
        const unsigned long long phase = phase_;
        if (++arrived_ == n_) {
            arrived_ = 0;
            ++phase_;
            if (kind == BLOCK_END)
                poison_shared();
            check(pthread_cond_broadcast(&cv_), "pthread_cond_broadcast");
        } else {
            const timespec deadline = deadline_from_now();
            while (phase_ == phase) {
                const int rc = pthread_cond_timedwait(&cv_, &mutex_, &deadline);
                if (rc == ETIMEDOUT && phase_ == phase)
                    fail("__syncthreads() timed out: a thread of the block never arrived");
            }
        }
        check(pthread_mutex_unlock(&mutex_), "pthread_mutex_unlock");
    }

private:
    pthread_mutex_t mutex_;
    pthread_cond_t cv_;
    const unsigned int n_;
    unsigned int arrived_ = 0;
    unsigned long long phase_ = 0;
    BarrierKind kind_ = SYNCTHREADS;
};

// The random schedule: the threads of a block are fibers (ucontext) of the
// launching OS thread, each with its own stack. A barrier switches back to
// the scheduler, which resumes the block's threads one at a time, in an
// order drawn for each phase; a switch costs no system thread wake-up, so a
// grid of many small blocks runs fast.
struct Fibers {
    ucontext_t scheduler;
    ucontext_t *context = nullptr;
    BarrierKind *arrived = nullptr;  // per thread: the barrier it stopped at
    unsigned int running = 0;

    void yield(BarrierKind kind)
    {
        arrived[running] = kind;
        check(swapcontext(&context[running], &scheduler), "swapcontext");
    }
};

inline thread_local BlockBarrier *current_barrier = nullptr;
inline thread_local Fibers *current_fibers = nullptr;
inline thread_local const void *current_run = nullptr;  // the fibers' kernel call
// stack of each fiber (virtual memory, committed as it is used), below it
// one guard page
constexpr size_t FIBER_STACK = 512 * 1024;

// serialises the emulated atomics (correct, not fast)
inline pthread_mutex_t atomic_mutex = PTHREAD_MUTEX_INITIALIZER;

struct AtomicLock {
    AtomicLock() { check(pthread_mutex_lock(&atomic_mutex), "pthread_mutex_lock"); }
    ~AtomicLock() { pthread_mutex_unlock(&atomic_mutex); }
};

}  // namespace arrseg_emu

inline void __syncthreads()
{
    if (arrseg_emu::current_fibers)
        arrseg_emu::current_fibers->yield(arrseg_emu::SYNCTHREADS);
    else if (arrseg_emu::current_barrier)
        arrseg_emu::current_barrier->arrive_and_wait(arrseg_emu::SYNCTHREADS);
    else
        arrseg_emu::fail("__syncthreads() called outside emulate_launch");
}

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <typename T>
inline T __ldg(const T *p) { return *p; }

// atomics: old value returned, as CUDA's
template <typename T>
inline T atomicAdd(T *address, T value)
{
    arrseg_emu::AtomicLock lock;
    const T old = *address;
    *address = old + value;
    return old;
}
template <typename T>
inline T atomicMax(T *address, T value)
{
    arrseg_emu::AtomicLock lock;
    const T old = *address;
    *address = old < value ? value : old;
    return old;
}
template <typename T>
inline T atomicOr(T *address, T value)
{
    arrseg_emu::AtomicLock lock;
    const T old = *address;
    *address = old | value;
    return old;
}
template <typename T>
inline T atomicCAS(T *address, T compare, T value)
{
    arrseg_emu::AtomicLock lock;
    const T old = *address;
    if (old == compare)
        *address = value;
    return old;
}

// ---------------------------------------------------------------------------
// the launcher
// ---------------------------------------------------------------------------
namespace arrseg_emu {

inline void set_thread_index(dim3 block, unsigned int t)
{
    threadIdx.x = t % block.x;
    threadIdx.y = (t / block.x) % block.y;
    threadIdx.z = t / (block.x * block.y);
}

inline void set_block_index(dim3 grid, unsigned long long b)
{
    blockIdx.x = (unsigned int)(b % grid.x);
    blockIdx.y = (unsigned int)(b / grid.x % grid.y);
    blockIdx.z = (unsigned int)(b / ((unsigned long long)grid.x * grid.y));
}

// One OS thread of an emulated block (concurrent schedule): runs the kernel
// for every block of the grid in turn.
template <typename Run>
struct Worker {
    const Run *run;
    dim3 grid, block;
    unsigned int t;  // linear thread index in the block
    BlockBarrier *barrier;

    static void *main(void *self_)
    {
        const Worker &self = *static_cast<Worker *>(self_);
        gridDim = self.grid;
        blockDim = self.block;
        set_thread_index(self.block, self.t);
        current_barrier = self.barrier;
        const unsigned long long n_blocks =
            (unsigned long long)self.grid.x * self.grid.y * self.grid.z;
        for (unsigned long long b = 0; b < n_blocks; ++b) {
            set_block_index(self.grid, b);
            (*self.run)();
            self.barrier->arrive_and_wait(BLOCK_END);
        }
        current_barrier = nullptr;
        return nullptr;
    }
};

template <typename Run>
void run_concurrently(dim3 grid, dim3 block, unsigned int n_threads, const Run &run)
{
    typedef Worker<Run> W;
    BlockBarrier barrier(n_threads);
    W workers[1024];
    pthread_t threads[1024];
    for (unsigned int t = 0; t < n_threads; ++t) {
        workers[t] = W{&run, grid, block, t, &barrier};
        check(pthread_create(&threads[t], nullptr, &W::main, &workers[t]), "pthread_create");
    }
    for (unsigned int t = 0; t < n_threads; ++t)
        check(pthread_join(threads[t], nullptr), "pthread_join");
}

// the body of every fiber: the kernel, block after block, forever (the
// scheduler stops resuming the fibers after the last block)
template <typename Run>
void fiber_main()
{
    const Run &run = *static_cast<const Run *>(current_run);
    for (;;) {
        run();
        current_fibers->yield(BLOCK_END);
    }
}

// grids of at most this many blocks run in a random order under the random
// schedule (larger ones in order: the order table would be too large)
constexpr unsigned long long MAX_SHUFFLED_BLOCKS = 1ULL << 22;

// the blocks of the grid in a random order (malloc'ed), or null: in order
inline unsigned int *block_order(unsigned long long n_blocks, unsigned long long seed)
{
    if (n_blocks > MAX_SHUFFLED_BLOCKS)
        return nullptr;
    unsigned int *blocks = static_cast<unsigned int *>(malloc(n_blocks * sizeof(unsigned int)));
    if (!blocks)
        fail("out of memory");
    shuffle(blocks, (unsigned int)n_blocks, ~seed);
    return blocks;
}

// g++ treats swapcontext as setjmp (returns_twice) and warns that locals may
// be clobbered; they are not: swapcontext saves and restores all registers
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wclobbered"
template <typename Run>
void run_in_random_order(dim3 grid, dim3 block, unsigned int n, const Run &run,
                         unsigned long long seed)
{
    const unsigned long long n_blocks = (unsigned long long)grid.x * grid.y * grid.z;
    unsigned int *const blocks = block_order(n_blocks, seed);
    const size_t page = 4096, span = FIBER_STACK + page;
    char *stacks = static_cast<char *>(mmap(nullptr, span * n, PROT_READ | PROT_WRITE,
                                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                                            -1, 0));
    if (stacks == MAP_FAILED)
        fail("mmap of the fiber stacks failed");
    Fibers fibers;
    ucontext_t context[1024];
    BarrierKind arrived[1024];
    unsigned int order[1024];
    fibers.context = context;
    fibers.arrived = arrived;
    for (unsigned int t = 0; t < n; ++t) {
        check(mprotect(stacks + span * t, page, PROT_NONE), "mprotect");  // guard page
        check(getcontext(&context[t]), "getcontext");
        context[t].uc_stack.ss_sp = stacks + span * t + page;
        context[t].uc_stack.ss_size = FIBER_STACK;
        context[t].uc_link = nullptr;
        makecontext(&context[t], &fiber_main<Run>, 0);
    }
    Fibers *const outer_fibers = current_fibers;
    const void *const outer_run = current_run;
    current_fibers = &fibers;
    current_run = &run;
    gridDim = grid;
    blockDim = block;
    unsigned long long phase = 0;
    for (unsigned long long i = 0; i < n_blocks; ++i) {
        set_block_index(grid, blocks ? blocks[i] : i);
        BarrierKind kind;
        do {  // one phase: every thread runs to its next barrier, in a random order
            shuffle(order, n, seed ^ mix(++phase));
            for (unsigned int j = 0; j < n; ++j) {
                const unsigned int t = order[j];
                fibers.running = t;
                set_thread_index(block, t);
                check(swapcontext(&fibers.scheduler, &context[t]), "swapcontext");
                if (j == 0)
                    kind = arrived[t];
                else if (arrived[t] != kind)
                    divergent();
            }
        } while (kind != BLOCK_END);
        poison_shared();
    }
    current_fibers = outer_fibers;
    current_run = outer_run;
    munmap(stacks, span * n);
    free(blocks);
}
#pragma GCC diagnostic pop

}  // namespace arrseg_emu

// Runs kernel<<<grid, block>>>(args...) to completion: block.x * block.y *
// block.z OS threads are started once and run every block of the grid in
// turn, waiting for each other at the end of each block. Follows
// arrseg_emu::settings (poisoning, schedule).
template <typename... Params, typename... Args>
void emulate_launch(dim3 grid, dim3 block, void (*kernel)(Params...), Args... args)
{
    static_assert(sizeof...(Params) == sizeof...(Args), "wrong number of kernel arguments");
    const unsigned long long n_threads =
        (unsigned long long)block.x * block.y * block.z;
    if (n_threads == 0 || n_threads > 1024)
        arrseg_emu::fail("a block must have 1 to 1024 threads");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
        arrseg_emu::fail("grid dimensions out of range");
    auto run = [&]() { kernel(args...); };
    arrseg_emu::poison_shared();  // for the first block
    if (arrseg_emu::settings.random_schedule)
        arrseg_emu::run_in_random_order(grid, block, (unsigned int)n_threads, run,
                                        arrseg_emu::settings.seed);
    else
        arrseg_emu::run_concurrently(grid, block, (unsigned int)n_threads, run);
}

#endif  // ARRSEG_CUDA_CPU_H
