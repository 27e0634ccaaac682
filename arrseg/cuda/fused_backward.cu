// fused_backward.cu -- one training step's loss and gradient in one pass over
// the images, then a deterministic reduction:
//
//   E  = sum_pix w[y] (-log P_y) / sum_pix w[y]     over pixels with y != ignore
//   dS = (P - onehot(y)) w[y] / sum_pix w[y]          (NC per pixel)
//   dW = sum Y1 dS^T,  dc = sum dS,  dY1 = W dS,  dZ = dY1 sigma'(Z),
//   db = sum dZ,  dK[i, j, a, b] = sum_{n,h,w} dZ[n, i, h, w] xpad[n, j, h+a, w+b]
//
// with the shapes of fused_forward.cu and labels (N, H, W) int64. Nothing per
// pixel is stored in global memory: Z, Y1 and dS are recomputed per tile in
// registers and shared memory. All gradients are linear in dS, so the kernel
// sums them with the unnormalised dS' = (P - onehot) w[y] and the reduction
// divides by the denominator at the end.
//
// Kernel versions:
//   arrseg_fused_backward   one thread per pixel, block = TILE_H x TILE_W
//                           pixels, a fixed number G of blocks each looping
//                           over tiles t = blockIdx.x + m G in order; a block's
//                           sums go to its own row of the workspace (no atomics)
//   arrseg_reduce_partials  32 threads per output value, a block per group of
//                           1..8 outputs (at least one block per SM); each
//                           thread sums every 32nd row of the workspace in
//                           order, a fixed shared-memory tree adds the 32, and
//                           the sum is divided by the denominator
// Both stages fix their order of summation, so a step is bit-for-bit the same
// from run to run on one GPU (cuDNN's weight gradient, with atomics, is not).
//
// CPU reference: arrseg.numerics.forward_backward.loss_and_grad; tests in
// tests/test_cuda_emulated.py run this file on the CPU emulator against it.
// Launcher: arrseg.cuda.fused.fused_loss_and_grad.
#include "common.cuh"


using namespace arrseg;

// One row of the workspace, and the output of the reduction (length PARTIAL_LEN):
//   [0] numerator sum w nll   [1] denominator sum w   [OFF_DK...] dK (K, C, S, S)
//   [OFF_DB...] db (K)        [OFF_DW...] dW (K, NC)  [OFF_DC...] dc (NC)
// After the reduction [0] is the loss, [1] the denominator, the rest the
// gradients (all 0 when the denominator is 0). limits.partial_length agrees.
constexpr int OFF_NUM = 0;
constexpr int OFF_DEN = 1;
constexpr int OFF_DK = 2;
constexpr int OFF_DB = OFF_DK + K * CSS;
constexpr int OFF_DW = OFF_DB + K;
constexpr int OFF_DC = OFF_DW + K * NC;
constexpr int PARTIAL_LEN = OFF_DC + NC;

// The sums over a tile's pixels are small GEMMs whose tasks each handle a
// group of IB features, so that one 16-byte read of the IB values of a pixel
// feeds IB multiply-adds per patch value (4 float32, 2 float64: the float64
// dK task's IB x S accumulators then fit the registers at S = 7 too).
constexpr int IB = 16 / (int)sizeof(real_t);
constexpr int NG = (KC + IB - 1) / IB;   // feature groups of a chunk
// V_s holds one chunk of Y1 or dZ pixel-major, V_s[pixel][feature]; its rows
// are padded to a stride of 4 (mod 8) 32-bit words so that the rows of 8
// consecutive pixels fall in distinct 16-byte bank groups
constexpr int KCP0 = NG * IB;
constexpr int KCP = ((KCP0 * (int)sizeof(real_t) / 4) % 8 == 0)
                        ? KCP0 + 16 / (int)sizeof(real_t) : KCP0;
constexpr int PIX = THREADS + 1;         // dS_s rows padded: no bank conflicts across rows
constexpr int DK_TASKS = NG * C * S;     // task (group, j, a): IB x S outputs of dK
constexpr int DW_TASKS = NG * NC;        // task (group, c): IB outputs of dW
constexpr int DB_TASKS = NG;             // task (group): IB outputs of db
constexpr bool ONE_CHUNK = (N_CHUNKS == 1);

// Which thread does which task. A task's slot v goes to thread v mod THREADS,
// in the order: the dK tasks at [0, DK_TASKS) from warp 0 up, then on the
// next warp boundary the db tasks and the tile's loss, denominator and dc
// (2 + NC tasks); in the Y1 phase the dW tasks at [0, DW_TASKS), but with the
// warps counted from the last one down. So at the seed configuration
// (THREADS = 128, k = 32 in one chunk of float32: 72 dK, 8 db, 6 loss/dc and
// 32 dW tasks) warps 0-2 take the dK tasks and warp 3 the dW, db and loss/dc
// tasks, instead of warp 0 taking dW, dK and loss/dc (task u -> thread u).
// Only with a single chunk: with several, the kernel sits at the 128-register
// cap of __launch_bounds__(THREADS, 4) and the extra live slot index made
// ptxas spill (float64, s = 7, C = 4, k = 64, n_c = 16 on sm_90), so there
// the dW and dK tasks keep task u -> thread u.
constexpr int WARP = 32;
constexpr bool BALANCED = ONE_CHUNK;
constexpr int DK_END = BALANCED ? (DK_TASKS + WARP - 1) / WARP * WARP : DK_TASKS;
constexpr int DB_BEGIN = DK_END;
constexpr int LOSS_BEGIN = DB_BEGIN + DB_TASKS;
constexpr int LOSS_END = LOSS_BEGIN + 2 + NC;

// the smallest slot v >= begin that thread `first` of a phase handles
// (v = first mod THREADS)
__device__ __forceinline__ int first_slot(int first, int begin)
{
    return first >= begin ? first : first + (begin - first + THREADS - 1) / THREADS * THREADS;
}

// partial[o] = value (first tile of the block) or partial[o] += value
__device__ __forceinline__ void accumulate(real_t *slot, int o, real_t value, bool first)
{
    slot[o] = first ? value : slot[o] + value;
}

// ---------------------------------------------------------------------------
// GPU kernels
// ---------------------------------------------------------------------------
// grid: G = min(n_tiles, limits.MAX_PARTIAL_BLOCKS) blocks; block (TILE_W, TILE_H, 1).
// Shared memory (static): xs C x HALO_H x HALO_W; Ks CSS x KC, Ws KC x NC, bs KC
// (one chunk of parameters); dS_s NC x PIX (the logits, then dS', of the
// tile's pixels); V_s THREADS x KCP (one chunk of Y1, then of dZ, per pixel);
// loss_s 2 x THREADS.
//
// Per tile, steps over the chunks of KC features: first every chunk's
// logits (pass 1), then every chunk's gradients (pass 2), with Z recomputed
// in pass 2; with a single chunk, one step does both (Y1 kept in shared
// memory). The convolution appears once in the code, so it is compiled once.
// In a gradient step the block's threads split the chunk's outputs (tasks of
// dW, db and dK), each a sum over the tile's THREADS pixels in order, each
// output always owned by the same thread, which adds it to the block's row of
// d_partials.
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
arrseg_fused_backward(const real_t *__restrict__ d_x,          // (N, C, H, W)
                      const long long *__restrict__ d_labels,  // (N, H, W)
                      const real_t *__restrict__ d_K,          // (K, C, S, S)
                      const real_t *__restrict__ d_b,          // (K,)
                      const real_t *__restrict__ d_W,          // (K, NC)
                      const real_t *__restrict__ d_c,          // (NC,); NULL if !ARRSEG_HAS_C
                      const real_t *__restrict__ d_class_weight,  // (NC,) or NULL (w = 1)
                      long long ignore_index,
                      int H, int W, int tiles_x, int tiles_y, int n_tiles,
                      real_t *__restrict__ d_partials)         // (gridDim.x, PARTIAL_LEN)
{
    __shared__ real_t xs[C][HALO_H][HALO_W];
    __shared__ __align__(16) real_t Ks[CSS][KC];
    __shared__ real_t Ws[KC][NC];
    __shared__ real_t bs[KC];
    __shared__ real_t dS_s[NC][PIX];
    __shared__ __align__(16) real_t V_s[THREADS][KCP];
    __shared__ real_t loss_s[2][THREADS];
    static_assert(sizeof(real_t) * (C * HALO_H * HALO_W + CSS * KC + KC * NC + KC
                                    + NC * PIX + THREADS * KCP + 2 * THREADS)
                      <= ARRSEG_SHARED_BUDGET,
                  "fused_backward: shared memory over budget; lower ARRSEG_KC");

    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tid = ty * TILE_W + tx;
    // the first slot of this thread in the Y1 phase: warps in reverse order
    const int slot_y1 = (BALANCED && THREADS % WARP == 0)
                            ? (THREADS / WARP - 1 - tid / WARP) * WARP + tid % WARP : tid;
    real_t *slot = d_partials + (long long)blockIdx.x * PARTIAL_LEN;
    bool first = true;

    for (unsigned int t = blockIdx.x; t < (unsigned int)n_tiles; t += gridDim.x) {
        const Tile tile = tile_of((int)t, tiles_x, tiles_y);
        const int h = tile.h0 + ty, w = tile.w0 + tx;
        __syncthreads();  // the previous tile's readers of shared memory are done
        load_tile(xs, d_x, tile, H, W, tid);
        ARRSEG_UNROLL
        for (int c = 0; c < NC; ++c) {
#if ARRSEG_HAS_C
            dS_s[c][tid] = d_c[c];
#else
            dS_s[c][tid] = real_t(0);
#endif
        }
        ARRSEG_UNROLL
        for (int i = KC; i < KCP0; ++i)  // the padding of a partial feature group
            V_s[tid][i] = real_t(0);

        ARRSEG_NO_UNROLL
        for (int step = 0; step < (ONE_CHUNK ? 1 : 2 * N_CHUNKS); ++step) {
            const int k0 = (step % N_CHUNKS) * KC;
            const bool logits_step = step < N_CHUNKS;
            __syncthreads();  // xs written; the previous step's readers are done
            load_chunk(Ks, Ws, bs, d_K, d_b, d_W, k0, tid);
            __syncthreads();
            real_t z[KC];
            preactivations(z, xs, Ks, bs, ty, tx);

            if (logits_step) {
                // this chunk's part of the logits, added to dS_s; with a single
                // chunk, Y1 goes to V_s now and Z is dead from here on
                real_t s[NC];
                ARRSEG_UNROLL
                for (int c = 0; c < NC; ++c)
                    s[c] = dS_s[c][tid];
                ARRSEG_UNROLL
                for (int i = 0; i < KC; ++i) {
                    const real_t y = activation(z[i]);
                    if (ONE_CHUNK)
                        V_s[tid][i] = y;
                    ARRSEG_UNROLL
                    for (int c = 0; c < NC; ++c)
                        s[c] += Ws[i][c] * y;
                }
                if (step == N_CHUNKS - 1) {
                    // all logits in: softmax and cross-entropy of this pixel;
                    // dS' = (P - onehot) w replaces the logits in dS_s
                    long long label = ignore_index;
                    if (h < H && w < W)
                        label = d_labels[((long long)tile.n * H + h) * W + w];
                    const bool counts = label != ignore_index && label >= 0 && label < NC;
                    real_t m = s[0], s_label = real_t(0);
                    ARRSEG_UNROLL
                    for (int c = 0; c < NC; ++c) {
                        m = s[c] > m ? s[c] : m;
                        s_label = c == label ? s[c] : s_label;
                    }
                    real_t sum = real_t(0);
                    ARRSEG_UNROLL
                    for (int c = 0; c < NC; ++c) {
                        s[c] = r_exp(s[c] - m);
                        sum += s[c];
                    }
                    real_t weight = real_t(0), nll = real_t(0);
                    if (counts) {
                        weight = d_class_weight ? d_class_weight[label] : real_t(1);
                        nll = r_log(sum) - (s_label - m);
                    }
                    ARRSEG_UNROLL
                    for (int c = 0; c < NC; ++c)
                        s[c] = counts ? (s[c] / sum - (c == label ? real_t(1) : real_t(0)))
                                            * weight
                                      : real_t(0);
                    loss_s[0][tid] = weight * nll;
                    loss_s[1][tid] = weight;
                }
                ARRSEG_UNROLL
                for (int c = 0; c < NC; ++c)
                    dS_s[c][tid] = s[c];
            }

            if (ONE_CHUNK || !logits_step) {  // a gradient step
                if (!ONE_CHUNK) {
                    ARRSEG_UNROLL
                    for (int i = 0; i < KC; ++i)
                        V_s[tid][i] = activation(z[i]);
                }
                __syncthreads();  // V_s = Y1; dS_s = dS', loss_s complete

                // dW = Y1 dS'^T, on the warps from the last one down
                for (int v = first_slot(slot_y1, 0); v < DW_TASKS; v += THREADS) {
                    const int g = v / NC, c = v % NC;
                    real_t acc[IB] = {};
                    ARRSEG_UNROLL_BY(4)
                    for (int p = 0; p < THREADS; ++p) {
                        const real_t d = dS_s[c][p];
                        ARRSEG_UNROLL
                        for (int ii = 0; ii < IB; ++ii)
                            acc[ii] += V_s[p][g * IB + ii] * d;
                    }
                    ARRSEG_UNROLL
                    for (int ii = 0; ii < IB; ++ii) {
                        const int i = g * IB + ii;
                        if (i < KC && k0 + i < K)
                            accumulate(slot, OFF_DW + (k0 + i) * NC + c, acc[ii], first);
                    }
                }
                __syncthreads();  // the readers of Y1 are done

                // dZ = (W dS') sigma'(Z) replaces Y1, each thread its own pixel's
                ARRSEG_UNROLL
                for (int i = 0; i < KC; ++i) {
                    real_t dy1 = real_t(0);
                    ARRSEG_UNROLL
                    for (int c = 0; c < NC; ++c)
                        dy1 += Ws[i][c] * dS_s[c][tid];
                    V_s[tid][i] = dy1 * activation_derivative(V_s[tid][i]);
                }
                __syncthreads();  // V_s = dZ

                // dK: the GEMM dZ (KC x pixels) times the patches (pixels x CSS),
                // read from the tile in shared memory. Task (g, j, a) sums IB x S
                // outputs dK[g IB + ii, j, a, 0..S-1] over the tile's pixels, row
                // by row, sliding a window of S input values along the row.
                // Slots [0, DK_TASKS), from warp 0 up; then db = sum of dZ at
                // slots [DB_BEGIN, DB_BEGIN + DB_TASKS), on the next warp.
                for (int v = tid; v < DB_BEGIN + DB_TASKS; v += THREADS) {
                    if (v < DK_TASKS) {
                        const int g = v / (C * S), j = (v / S) % C, a = v % S;
                        real_t acc[IB][S] = {};
                        ARRSEG_NO_UNROLL
                        for (int py = 0; py < TILE_H; ++py) {
                            const real_t *x_row = xs[j][py + a];
                            real_t win[S];
                            ARRSEG_UNROLL
                            for (int b = 0; b + 1 < S; ++b)
                                win[b + 1] = x_row[b];
                            ARRSEG_UNROLL
                            for (int px = 0; px < TILE_W; ++px) {
                                ARRSEG_UNROLL
                                for (int b = 0; b + 1 < S; ++b)
                                    win[b] = win[b + 1];
                                win[S - 1] = x_row[px + S - 1];
                                const real_t *dz = V_s[py * TILE_W + px] + g * IB;
                                ARRSEG_UNROLL
                                for (int ii = 0; ii < IB; ++ii) {
                                    const real_t d = dz[ii];
                                    ARRSEG_UNROLL
                                    for (int b = 0; b < S; ++b)
                                        acc[ii][b] += d * win[b];
                                }
                            }
                        }
                        ARRSEG_UNROLL
                        for (int ii = 0; ii < IB; ++ii) {
                            const int i = g * IB + ii;
                            ARRSEG_UNROLL
                            for (int b = 0; b < S; ++b) {
                                if (i < KC && k0 + i < K)
                                    accumulate(slot, OFF_DK + (k0 + i) * CSS + (j * S + a) * S + b,
                                               acc[ii][b], first);
                            }
                        }
                    } else if (v >= DB_BEGIN) {
                        const int g = v - DB_BEGIN;
                        real_t acc[IB] = {};
                        ARRSEG_UNROLL_BY(4)
                        for (int p = 0; p < THREADS; ++p) {
                            ARRSEG_UNROLL
                            for (int ii = 0; ii < IB; ++ii)
                                acc[ii] += V_s[p][g * IB + ii];
                        }
                        ARRSEG_UNROLL
                        for (int ii = 0; ii < IB; ++ii) {
                            const int i = g * IB + ii;
                            if (i < KC && k0 + i < K)
                                accumulate(slot, OFF_DB + k0 + i, acc[ii], first);
                        }
                    }
                }
            }
        }

        // the tile's loss numerator, denominator and dc (dS_s and loss_s are
        // unchanged since the last barrier): slots [LOSS_BEGIN, LOSS_END),
        // next to the db tasks
        for (int v = first_slot(tid, LOSS_BEGIN); v < LOSS_END; v += THREADS) {
            const int u = v - LOSS_BEGIN;
            real_t acc = real_t(0);
            if (u < 2) {
                ARRSEG_UNROLL_BY(4)
                for (int p = 0; p < THREADS; ++p)
                    acc += loss_s[u][p];
            } else {
                ARRSEG_UNROLL_BY(4)
                for (int p = 0; p < THREADS; ++p)
                    acc += dS_s[u - 2][p];
            }
            accumulate(slot, u < 2 ? OFF_NUM + u : OFF_DC + u - 2, acc, first);
        }
        first = false;
    }

    if (first) {  // a block without a tile (the launcher never makes one) adds 0
        for (int o = tid; o < PARTIAL_LEN; o += THREADS)
            slot[o] = real_t(0);
    }
#if !ARRSEG_HAS_C
    (void)d_c;
#endif
}

// grid: any number of blocks (fused.reduction_grid: at least the device's SM
// count); block: RED_ROWS x OB threads, OB = blockDim.x / RED_ROWS in
// 1..RED_MAX_OB. Thread t of a block takes output lane x = t % OB (consecutive
// threads, consecutive outputs: a warp reads 32 / OB rows of OB contiguous
// values) and row lane y = t / OB. A block loops over groups of OB outputs,
// q = blockIdx.x, blockIdx.x + gridDim.x, ...; for output o = q OB + x, row
// lane y sums rows g = y, y + RED_ROWS, ... in order, in double; the RED_ROWS
// row lanes are then added by a fixed pairwise tree in shared memory
// (stride 16, 8, 4, 2, 1), and row lane 0 divides by the denominator, which
// every block sums in the same order (so the same bits in every block). The
// order depends on G and o only, not on the grid, the block or the device:
// the result is the same bit for bit from run to run. No atomic.
// d_out[o] = sum_g d_partials[g, o] / sum_g d_partials[g, 1]; d_out[1] is the
// denominator itself (all 0 when it is 0).
constexpr int RED_ROWS = 32;    // row lanes: independent sums per output
constexpr int RED_MAX_OB = 8;   // most outputs per block group (256 threads)

extern "C" __global__ void __launch_bounds__(RED_ROWS * RED_MAX_OB)
arrseg_reduce_partials(const real_t *__restrict__ d_partials,  // (G, PARTIAL_LEN)
                       int G,
                       real_t *__restrict__ d_out)              // (PARTIAL_LEN,)
{
    __shared__ double acc_s[RED_ROWS][RED_MAX_OB];
    __shared__ double den_s[RED_ROWS];
    const int OB = (int)blockDim.x / RED_ROWS;
    const int x = (int)threadIdx.x % OB, y = (int)threadIdx.x / OB;
    const bool in_tree = y < RED_ROWS;  // false only for a blockDim.x not a multiple of 32

    // the denominator: column OFF_DEN, summed by the threads of output lane 0
    if (x == 0 && in_tree) {
        double den = 0.0;
        ARRSEG_UNROLL_BY(4)
        for (long long g = y; g < G; g += RED_ROWS)
            den += (double)d_partials[g * PARTIAL_LEN + OFF_DEN];
        den_s[y] = den;
    }
    for (int stride = RED_ROWS / 2; stride > 0; stride /= 2) {
        __syncthreads();
        if (x == 0 && y < stride)
            den_s[y] += den_s[y + stride];
    }
    __syncthreads();
    const double denominator = den_s[0];

    for (long long q = blockIdx.x; q * OB < PARTIAL_LEN; q += gridDim.x) {
        const long long o = q * OB + x;
        double acc = 0.0;
        if (o < PARTIAL_LEN) {
            ARRSEG_UNROLL_BY(4)
            for (long long g = y; g < G; g += RED_ROWS)
                acc += (double)d_partials[g * PARTIAL_LEN + o];
        }
        if (in_tree)
            acc_s[y][x] = acc;
        for (int stride = RED_ROWS / 2; stride > 0; stride /= 2) {
            __syncthreads();
            if (y < stride)
                acc_s[y][x] += acc_s[y + stride][x];
        }
        __syncthreads();
        if (y == 0 && o < PARTIAL_LEN) {
            double value = denominator > 0.0 ? acc_s[0][x] / denominator : 0.0;
            if (o == OFF_DEN)
                value = denominator;
            d_out[o] = (real_t)value;
        }
        __syncthreads();  // acc_s read before the next group overwrites it
    }
}
