// common.cuh -- what the fused kernels share: compile-time configuration,
// the dtype, the activations, the tiling and the boundary handling.
//
// Every constant is a macro with an #ifndef default, so that each .cu file
// compiles alone (`nvcc -cubin -arch=sm_90 -I arrseg/cuda fused_forward.cu`);
// arrseg/cuda/limits.py passes the real values as -D options
// (KernelConfig.defines). The macros carry an ARRSEG_ prefix so that they never
// collide with names in CUDA's or the C++ library's headers; inside the kernels
// the short names (S, C, K, NC, ...) are constexpr ints in namespace arrseg.
//
// The same files also compile on the CPU with g++, after
// arrseg/cuda/emulation/cuda_cpu.h (one OS thread per CUDA thread): nothing
// below uses a CUDA feature that header does not provide.
#ifndef ARRSEG_COMMON_CUH
#define ARRSEG_COMMON_CUH

// ---------------------------------------------------------------------------
// configuration (defaults: a mid-size float32 problem)
// ---------------------------------------------------------------------------
#ifndef ARRSEG_S
#define ARRSEG_S 3           // kernel size s, odd
#endif
#ifndef ARRSEG_C
#define ARRSEG_C 3           // image channels C
#endif
#ifndef ARRSEG_K
#define ARRSEG_K 32          // feature channels k
#endif
#ifndef ARRSEG_NC
#define ARRSEG_NC 4          // classes n_c
#endif
#ifndef ARRSEG_KC
#define ARRSEG_KC 16         // feature channels per chunk (registers, shared memory)
#endif
#ifndef ARRSEG_ACTIVATION
#define ARRSEG_ACTIVATION 1  // ARRSEG_ACT_* below
#endif
#ifndef ARRSEG_BOUNDARY
#define ARRSEG_BOUNDARY 0    // ARRSEG_BOUNDARY_* below
#endif
#ifndef ARRSEG_HAS_C
#define ARRSEG_HAS_C 1       // 1: the classifier has a bias c
#endif
#ifndef ARRSEG_DOUBLE
#define ARRSEG_DOUBLE 0      // 0: float32, 1: float64
#endif
#ifndef ARRSEG_TILE_H
#define ARRSEG_TILE_H 8      // output pixels per block: TILE_H rows ...
#endif
#ifndef ARRSEG_TILE_W
#define ARRSEG_TILE_W 16     // ... of TILE_W pixels; one thread per pixel
#endif
#ifndef ARRSEG_MIN_BLOCKS
#define ARRSEG_MIN_BLOCKS 4  // blocks per SM the register allocation must allow
#endif
#ifndef ARRSEG_SHARED_BUDGET
#define ARRSEG_SHARED_BUDGET 49152  // static shared memory per block, bytes
#endif

#define ARRSEG_ACT_IDENTITY 0
#define ARRSEG_ACT_TANH 1
#define ARRSEG_ACT_RELU 2
#define ARRSEG_ACT_SIGMOID 3

#define ARRSEG_BOUNDARY_ZEROS 0
#define ARRSEG_BOUNDARY_PERIODIC 1

#if defined(__CUDACC__)
#define ARRSEG_UNROLL _Pragma("unroll")
#define ARRSEG_NO_UNROLL _Pragma("unroll 1")
#define ARRSEG_PRAGMA(x) _Pragma(#x)
#define ARRSEG_UNROLL_BY(n) ARRSEG_PRAGMA(unroll n)
#else
#define ARRSEG_UNROLL_BY(n)
#define ARRSEG_UNROLL
#define ARRSEG_NO_UNROLL
#endif

namespace arrseg {

#if ARRSEG_DOUBLE
typedef double real_t;
#else
typedef float real_t;
#endif

constexpr int S = ARRSEG_S;
constexpr int P = ARRSEG_S / 2;          // halo width
constexpr int C = ARRSEG_C;
constexpr int K = ARRSEG_K;
constexpr int NC = ARRSEG_NC;
constexpr int KC = ARRSEG_KC;
constexpr int CSS = C * S * S;           // length of one pixel's patch
constexpr int N_CHUNKS = (K + KC - 1) / KC;
constexpr int TILE_H = ARRSEG_TILE_H;
constexpr int TILE_W = ARRSEG_TILE_W;
constexpr int THREADS = TILE_H * TILE_W;  // = pixels per tile
constexpr int MIN_BLOCKS = ARRSEG_MIN_BLOCKS;  // -> at most 65536 / (THREADS MIN_BLOCKS) registers
constexpr int HALO_H = TILE_H + S - 1;    // the tile with its halo
constexpr int HALO_W = TILE_W + S - 1;

static_assert(S % 2 == 1 && S >= 1, "ARRSEG_S must be odd");
static_assert(C >= 1 && K >= 1 && NC >= 1 && KC >= 1 && KC <= K, "bad sizes");
static_assert(THREADS <= 1024, "a block has at most 1024 threads");

// ---------------------------------------------------------------------------
// maths in real_t
// ---------------------------------------------------------------------------
#if ARRSEG_DOUBLE
__device__ __forceinline__ real_t r_exp(real_t v) { return exp(v); }
__device__ __forceinline__ real_t r_log(real_t v) { return log(v); }
__device__ __forceinline__ real_t r_tanh(real_t v) { return tanh(v); }
__device__ __forceinline__ real_t r_abs(real_t v) { return fabs(v); }
#else
__device__ __forceinline__ real_t r_exp(real_t v) { return expf(v); }
__device__ __forceinline__ real_t r_log(real_t v) { return logf(v); }
__device__ __forceinline__ real_t r_tanh(real_t v) { return tanhf(v); }
__device__ __forceinline__ real_t r_abs(real_t v) { return fabsf(v); }
#endif

// sigma(z), as arrseg.numerics.activations
__device__ __forceinline__ real_t activation(real_t z)
{
#if ARRSEG_ACTIVATION == ARRSEG_ACT_IDENTITY
    return z;
#elif ARRSEG_ACTIVATION == ARRSEG_ACT_TANH
    return r_tanh(z);
#elif ARRSEG_ACTIVATION == ARRSEG_ACT_RELU
    return z > real_t(0) ? z : real_t(0);
#elif ARRSEG_ACTIVATION == ARRSEG_ACT_SIGMOID
    // exp(-|z|) never overflows; the two branches are the same function
    const real_t e = r_exp(-r_abs(z));
    return z >= real_t(0) ? real_t(1) / (real_t(1) + e) : e / (real_t(1) + e);
#else
#error "unknown ARRSEG_ACTIVATION"
#endif
}

// sigma'(z) from y = sigma(z), for every activation (as the reference:
// tanh' = 1 - y^2, sigmoid' = y (1 - y), relu' = [z > 0] = [y > 0]), so that
// the backward pass needs the features Y1 only, not Z
__device__ __forceinline__ real_t activation_derivative(real_t y)
{
#if ARRSEG_ACTIVATION == ARRSEG_ACT_IDENTITY
    (void)y;
    return real_t(1);
#elif ARRSEG_ACTIVATION == ARRSEG_ACT_TANH
    return real_t(1) - y * y;
#elif ARRSEG_ACTIVATION == ARRSEG_ACT_RELU
    return y > real_t(0) ? real_t(1) : real_t(0);
#else  // sigmoid
    return y * (real_t(1) - y);
#endif
}

// ---------------------------------------------------------------------------
// tiles: the images are cut into TILE_H x TILE_W tiles, numbered
// t = (n * tiles_y + tile_row) * tiles_x + tile_col; the last row and column
// of tiles may stick out of the image (pixels there are "inactive").
// ---------------------------------------------------------------------------
struct Tile {
    int n, h0, w0;  // image, first row, first column
};

// t < n_tiles <= 2^31 - 1 (the kernels' grid-stride counters are unsigned, so
// that t + gridDim.x cannot overflow; inside the loop t fits an int).
__device__ __forceinline__ Tile tile_of(int t, int tiles_x, int tiles_y)
{
    Tile tile;
    const int col = t % tiles_x;
    const int rest = t / tiles_x;
    tile.h0 = (rest % tiles_y) * TILE_H;
    tile.w0 = col * TILE_W;
    tile.n = rest / tiles_y;
    return tile;
}

// Input row or column `i` (may be outside [0, n)) -> index to read, or -1 for
// a zero of the zero padding. Periodic padding wraps as often as needed.
__device__ __forceinline__ int boundary_index(int i, int n)
{
#if ARRSEG_BOUNDARY == ARRSEG_BOUNDARY_ZEROS
    return (i >= 0 && i < n) ? i : -1;
#elif ARRSEG_BOUNDARY == ARRSEG_BOUNDARY_PERIODIC
    const int r = i % n;
    return r < 0 ? r + n : r;
#else
#error "unknown ARRSEG_BOUNDARY"
#endif
}

// Cooperative load of the tile and its halo into shared memory:
// d_x (N, C, H, W) -> xs[C][HALO_H][HALO_W], xs[j][r][q] = xpad[n, j, h0 + r, w0 + q]
// (xpad: x padded by P = S/2 under the boundary condition). Every entry is
// written, also those only inactive pixels read, so that no thread reads
// uninitialised shared memory. The caller synchronises before and after.
__device__ __forceinline__ void load_tile(real_t (*xs)[HALO_H][HALO_W],
                                          const real_t *__restrict__ d_x,
                                          const Tile &tile, int H, int W, int tid)
{
    for (int e = tid; e < C * HALO_H * HALO_W; e += THREADS) {
        const int j = e / (HALO_H * HALO_W);
        const int r = (e / HALO_W) % HALO_H;
        const int q = e % HALO_W;
        const int h = boundary_index(tile.h0 - P + r, H);
        const int w = boundary_index(tile.w0 - P + q, W);
        real_t v = real_t(0);
        if (h >= 0 && w >= 0)
            v = d_x[((long long)(tile.n * C + j) * H + h) * W + w];
        xs[j][r][q] = v;
    }
}

// Cooperative load of feature chunk [k0, k0 + KC) of the parameters, zero
// beyond K (so the padded channels contribute nothing):
// Ks[r][i] = K[k0 + i].flat[r] (patch-major, so that the KC weights one patch
// entry multiplies are contiguous), Ws[i][c] = W[k0 + i, c], bs[i] = b[k0 + i].
__device__ __forceinline__ void load_chunk(real_t (*Ks)[KC], real_t (*Ws)[NC], real_t *bs,
                                           const real_t *__restrict__ d_K,
                                           const real_t *__restrict__ d_b,
                                           const real_t *__restrict__ d_W, int k0, int tid)
{
    for (int e = tid; e < KC * CSS; e += THREADS) {
        const int i = e % KC;
        const int r = e / KC;
        Ks[r][i] = (k0 + i < K) ? d_K[(k0 + i) * CSS + r] : real_t(0);
    }
    for (int e = tid; e < KC * NC; e += THREADS) {
        const int i = e / NC;
        Ws[i][e % NC] = (k0 + i < K) ? d_W[(k0 + i) * NC + e % NC] : real_t(0);
    }
    for (int i = tid; i < KC; i += THREADS)
        bs[i] = (k0 + i < K) ? d_b[k0 + i] : real_t(0);
}

// z[i] = b[k0 + i] + sum_{j,a,b} K[k0 + i, j, a, b] * xpad[n, j, h + a, w + b]
// for the pixel (ty, tx) of the tile: KC pre-activations in registers. Each
// patch value is read once from shared memory and used KC times; the KC
// weights it multiplies are one contiguous (vectorisable) row of Ks, the same
// address for every thread (a broadcast). The loops over the taps stay rolled:
// unrolled, ptxas keeps many taps' weights in flight and spills registers.
__device__ __forceinline__ void preactivations(real_t (&z)[KC],
                                               const real_t (*xs)[HALO_H][HALO_W],
                                               const real_t (*Ks)[KC], const real_t *bs,
                                               int ty, int tx)
{
    ARRSEG_UNROLL
    for (int i = 0; i < KC; ++i)
        z[i] = bs[i];
    ARRSEG_NO_UNROLL
    for (int j = 0; j < C; ++j) {
        ARRSEG_NO_UNROLL
        for (int a = 0; a < S; ++a) {
            ARRSEG_NO_UNROLL
            for (int b = 0; b < S; ++b) {
                const real_t v = xs[j][ty + a][tx + b];
                const real_t *k_row = Ks[(j * S + a) * S + b];
                ARRSEG_UNROLL
                for (int i = 0; i < KC; ++i)
                    z[i] += k_row[i] * v;
            }
        }
    }
}

}  // namespace arrseg

#endif  // ARRSEG_COMMON_CUH
