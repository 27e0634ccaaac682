// check_values.cu -- every value check of one public call in one kernel:
//
//   d_flags[CHECK_X]            |= some x[i] is NaN or +-inf
//   d_flags[CHECK_K .. CHECK_C] |= the same for theta = K, b, W, c
//   d_flags[CHECK_LABELS]       |= some label is outside [0, n_classes) and
//                                  is not ignore_index (when has_ignore)
//   d_flags[CHECK_CLASS_WEIGHT] |= some class weight is NaN, +-inf or < 0
//
// with x (N, C, H, W), K (k, C, s, s), b (k,), W (k, n_c), c (n_c,) in real_t,
// labels (N, H, W) int64 and class_weight (n_c,) in real_t, each passed as a
// pointer and its length (NULL and 0 for an absent array). The flags are int32,
// zeroed by the caller; a flag only ever goes from 0 to 1, so the caller reads
// back one small array for the whole call.
//
// Kernel versions:
//   arrseg_check_values  one grid-stride loop per array over all the threads of
//                        the grid (block = CHECK_THREADS threads, 64-bit
//                        indices); each thread ORs its elements' failures into
//                        local flags and does one atomicOr per failed check.
//
// CPU reference: arrseg._validation (the NumPy checks it replaces) and the
// reference of tests/test_cuda_checks.py, which runs this file on the CPU
// emulator (emulation/cuda_cpu.h). Launcher: arrseg.cuda.checks.value_flags.
#include "common.cuh"

#ifndef ARRSEG_CHECK_THREADS
#define ARRSEG_CHECK_THREADS 256  // threads per block (arrseg.cuda.checks.THREADS)
#endif

namespace arrseg {

// the order of arrseg.cuda.checks.CHECK_NAMES
enum CheckIndex {
    CHECK_X = 0,
    CHECK_K = 1,
    CHECK_B = 2,
    CHECK_W = 3,
    CHECK_C = 4,
    CHECK_LABELS = 5,
    CHECK_CLASS_WEIGHT = 6,
    N_CHECKS = 7
};

constexpr int CHECK_THREADS = ARRSEG_CHECK_THREADS;
static_assert(CHECK_THREADS >= 1 && CHECK_THREADS <= 1024,
              "a block has 1 to 1024 threads");

// 1 if one of d[first], d[first + stride], ... (indices < n) is NaN or +-inf
__device__ __forceinline__ int any_nonfinite(const real_t *__restrict__ d, long long n,
                                             long long first, long long stride)
{
    int bad = 0;
    ARRSEG_UNROLL_BY(4)
    for (long long i = first; i < n; i += stride)
        bad |= !isfinite(d[i]);
    return bad;
}

// 1 if one of the thread's labels is outside [0, n_classes) and is not
// ignore_index (an ignore_index beyond int64 arrives as has_ignore = 0)
__device__ __forceinline__ int any_bad_label(const long long *__restrict__ d, long long n,
                                             long long first, long long stride,
                                             int n_classes, long long ignore_index,
                                             int has_ignore)
{
    int bad = 0;
    ARRSEG_UNROLL_BY(4)
    for (long long i = first; i < n; i += stride) {
        const long long v = d[i];
        bad |= (v < 0 || v >= n_classes) && !(has_ignore && v == ignore_index);
    }
    return bad;
}

// A real_t and its bits. "Negative" is read from the bits, not by comparing
// with 0: with -ftz=true (as CuPy compiles) a comparison flushes a negative
// subnormal to -0, which would pass; NumPy's `w >= 0` does not.
#if ARRSEG_DOUBLE
typedef unsigned long long real_bits_t;
#else
typedef unsigned int real_bits_t;
#endif
union RealBits {
    real_t value;
    real_bits_t bits;
};
constexpr real_bits_t SIGN_BIT = real_bits_t(1) << (8 * sizeof(real_t) - 1);

// 1 if one of the thread's class weights is NaN, +-inf or below 0 (-0 is not):
// the sign bit set and another bit set
__device__ __forceinline__ int any_bad_weight(const real_t *__restrict__ d, long long n,
                                              long long first, long long stride)
{
    int bad = 0;
    for (long long i = first; i < n; i += stride) {
        RealBits w;
        w.value = d[i];
        bad |= !isfinite(w.value) || w.bits > SIGN_BIT;
    }
    return bad;
}

}  // namespace arrseg

using namespace arrseg;

// ---------------------------------------------------------------------------
// GPU kernel
// ---------------------------------------------------------------------------
// grid: min(ceil(longest length / CHECK_THREADS), checks.MAX_BLOCKS) blocks, at
// least 1; block: (CHECK_THREADS, 1, 1). Thread t of the grid reads elements
// t, t + T, t + 2T, ... (T = threads in the grid) of every array in turn, so
// consecutive threads read consecutive elements. No shared memory.
extern "C" __global__ void __launch_bounds__(ARRSEG_CHECK_THREADS)
arrseg_check_values(const real_t *__restrict__ d_x, long long n_x,         // (N, C, H, W)
                    const real_t *__restrict__ d_K, long long n_K,         // (k, C, s, s)
                    const real_t *__restrict__ d_b, long long n_b,         // (k,)
                    const real_t *__restrict__ d_W, long long n_W,         // (k, n_c)
                    const real_t *__restrict__ d_c, long long n_c,         // (n_c,) or NULL, 0
                    const long long *__restrict__ d_labels, long long n_labels,  // (N, H, W) or NULL, 0
                    const real_t *__restrict__ d_class_weight, long long n_class_weight,  // (n_c,) or NULL, 0
                    int n_classes, long long ignore_index, int has_ignore,
                    int *__restrict__ d_flags)                             // (N_CHECKS,), zeroed
{
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;

    int bad[N_CHECKS];
    bad[CHECK_X] = any_nonfinite(d_x, n_x, first, stride);
    bad[CHECK_K] = any_nonfinite(d_K, n_K, first, stride);
    bad[CHECK_B] = any_nonfinite(d_b, n_b, first, stride);
    bad[CHECK_W] = any_nonfinite(d_W, n_W, first, stride);
    bad[CHECK_C] = any_nonfinite(d_c, n_c, first, stride);
    bad[CHECK_LABELS] = any_bad_label(d_labels, n_labels, first, stride, n_classes,
                                      ignore_index, has_ignore);
    bad[CHECK_CLASS_WEIGHT] = any_bad_weight(d_class_weight, n_class_weight, first, stride);

    // an atomic only where this thread saw a failure: a clean call does none
    ARRSEG_UNROLL
    for (int f = 0; f < N_CHECKS; ++f)
        if (bad[f])
            atomicOr(&d_flags[f], 1);
}
