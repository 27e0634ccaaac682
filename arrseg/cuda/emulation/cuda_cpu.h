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
#include <time.h>

// ---------------------------------------------------------------------------
// keywords
// ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
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

// A reusable barrier for the threads of one block. Each arrival says what it
// is (a __syncthreads() or the end of the block): threads that reach
// different barriers in one phase are a divergent __syncthreads().
class BlockBarrier {
public:
    enum Kind { SYNCTHREADS = 1, BLOCK_END = 2 };

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

    void arrive_and_wait(Kind kind)
    {
        check(pthread_mutex_lock(&mutex_), "pthread_mutex_lock");
        if (arrived_ == 0)
            kind_ = kind;
        else if (kind_ != kind)
            fail("divergent __syncthreads(): some threads of a block reached a "
                 "__syncthreads() that others skipped");
        const unsigned long long phase = phase_;
        if (++arrived_ == n_) {
            arrived_ = 0;
            ++phase_;
            check(pthread_cond_broadcast(&cv_), "pthread_cond_broadcast");
        } else {
            timespec deadline;
            clock_gettime(CLOCK_REALTIME, &deadline);
            deadline.tv_sec += ARRSEG_EMU_BARRIER_TIMEOUT_S;
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
    Kind kind_ = SYNCTHREADS;
};

inline thread_local BlockBarrier *current_barrier = nullptr;

// serialises the emulated atomics (correct, not fast)
inline pthread_mutex_t atomic_mutex = PTHREAD_MUTEX_INITIALIZER;

struct AtomicLock {
    AtomicLock() { check(pthread_mutex_lock(&atomic_mutex), "pthread_mutex_lock"); }
    ~AtomicLock() { pthread_mutex_unlock(&atomic_mutex); }
};

}  // namespace arrseg_emu

inline void __syncthreads()
{
    if (!arrseg_emu::current_barrier)
        arrseg_emu::fail("__syncthreads() called outside emulate_launch");
    arrseg_emu::current_barrier->arrive_and_wait(arrseg_emu::BlockBarrier::SYNCTHREADS);
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

// One OS thread of an emulated block: runs the kernel for every block of the
// grid in turn.
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
        threadIdx.x = self.t % self.block.x;
        threadIdx.y = (self.t / self.block.x) % self.block.y;
        threadIdx.z = self.t / (self.block.x * self.block.y);
        current_barrier = self.barrier;
        for (unsigned int bz = 0; bz < self.grid.z; ++bz)
            for (unsigned int by = 0; by < self.grid.y; ++by)
                for (unsigned int bx = 0; bx < self.grid.x; ++bx) {
                    blockIdx.x = bx;
                    blockIdx.y = by;
                    blockIdx.z = bz;
                    (*self.run)();
                    self.barrier->arrive_and_wait(BlockBarrier::BLOCK_END);
                }
        current_barrier = nullptr;
        return nullptr;
    }
};

}  // namespace arrseg_emu

// Runs kernel<<<grid, block>>>(args...) to completion: block.x * block.y *
// block.z OS threads are started once and run every block of the grid in
// turn, waiting for each other at the end of each block.
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
    typedef arrseg_emu::Worker<decltype(run)> Worker;
    arrseg_emu::BlockBarrier barrier((unsigned int)n_threads);
    Worker workers[1024];
    pthread_t threads[1024];
    for (unsigned int t = 0; t < n_threads; ++t) {
        workers[t] = Worker{&run, grid, block, t, &barrier};
        arrseg_emu::check(pthread_create(&threads[t], nullptr, &Worker::main, &workers[t]),
                          "pthread_create");
    }
    for (unsigned int t = 0; t < n_threads; ++t)
        arrseg_emu::check(pthread_join(threads[t], nullptr), "pthread_join");
}

#endif  // ARRSEG_CUDA_CPU_H
