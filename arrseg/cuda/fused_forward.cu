// fused_forward.cu -- the whole network's forward pass in one kernel:
//
//   P[n, :, h, w] = softmax(W^T sigma(K(theta) x + b) + c)   at every pixel
//
// with x (N, C, H, W), theta = d_K (K, C, S, S) applied as cross-correlation
// with padding S/2 (zeros or periodic), b (K,), W (K, NC), c (NC,) or absent,
// P (N, NC, H, W). Only P is written to global memory: the K pre-activations
// and features of a pixel live in registers, a chunk of KC at a time.
//
// Kernel versions:
//   arrseg_fused_forward  one thread per output pixel, block = TILE_H x TILE_W
//                         pixels; input tile + halo and one chunk of
//                         (theta, b, W) in shared memory.
//
// CPU reference: arrseg.numerics.forward_backward.forward (the array-API
// implementation is the specification); tests/test_cuda_emulated.py runs this
// file on the CPU emulator (emulation/cuda_cpu.h) against it.
// Launcher: arrseg.cuda.fused.fused_forward. Dispatch: arrseg.network,
// method="fused".
#include "common.cuh"

using namespace arrseg;

// ---------------------------------------------------------------------------
// GPU kernel
// ---------------------------------------------------------------------------
// grid: one block per tile, at most n_tiles blocks (a block whose index is
// below n_tiles loops over tiles blockIdx.x, blockIdx.x + gridDim.x, ...);
// block: (TILE_W, TILE_H, 1), one thread per pixel of the tile.
// Shared memory (static): xs  C x HALO_H x HALO_W   the tile with its halo
//                         Ks  CSS x KC              weights of one chunk
//                         Ws  KC x NC, bs KC        classifier rows, biases
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
arrseg_fused_forward(const real_t *__restrict__ d_x,  // (N, C, H, W)
                     const real_t *__restrict__ d_K,  // (K, C, S, S)
                     const real_t *__restrict__ d_b,  // (K,)
                     const real_t *__restrict__ d_W,  // (K, NC)
                     const real_t *__restrict__ d_c,  // (NC,); NULL if !ARRSEG_HAS_C
                     real_t *__restrict__ d_P,        // (N, NC, H, W), output
                     int H, int W, int tiles_x, int tiles_y, int n_tiles)
{
    __shared__ real_t xs[C][HALO_H][HALO_W];
    __shared__ __align__(16) real_t Ks[CSS][KC];
    __shared__ real_t Ws[KC][NC];
    __shared__ real_t bs[KC];
    static_assert(sizeof(real_t) * (C * HALO_H * HALO_W + CSS * KC + KC * NC + KC)
                      <= ARRSEG_SHARED_BUDGET,
                  "fused_forward: shared memory over budget; lower ARRSEG_KC");

    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tid = ty * TILE_W + tx;
#if !ARRSEG_HAS_C
    (void)d_c;
#endif

    // unsigned: t < n_tiles <= 2^31 - 1 and gridDim.x <= 2^31 - 1, so that
    // t + gridDim.x < 2^32 never wraps (an int would overflow)
    for (unsigned int t = blockIdx.x; t < (unsigned int)n_tiles; t += gridDim.x) {
        const Tile tile = tile_of((int)t, tiles_x, tiles_y);
        const int h = tile.h0 + ty, w = tile.w0 + tx;
        __syncthreads();  // the previous tile's readers of xs are done
        load_tile(xs, d_x, tile, H, W, tid);

        // logits S = W^T sigma(z) + c, accumulated over chunks of KC features
        real_t s[NC];
        ARRSEG_UNROLL
        for (int c = 0; c < NC; ++c) {
#if ARRSEG_HAS_C
            s[c] = d_c[c];
#else
            s[c] = real_t(0);
#endif
        }
        ARRSEG_NO_UNROLL
        for (int k0 = 0; k0 < K; k0 += KC) {
            __syncthreads();  // xs written; the previous chunk's readers done
            load_chunk(Ks, Ws, bs, d_K, d_b, d_W, k0, tid);
            __syncthreads();
            real_t z[KC];
            preactivations(z, xs, Ks, bs, ty, tx);
            ARRSEG_UNROLL
            for (int i = 0; i < KC; ++i) {
                const real_t y = activation(z[i]);
                ARRSEG_UNROLL
                for (int c = 0; c < NC; ++c)
                    s[c] += Ws[i][c] * y;
            }
        }

        // softmax over the classes, shifted by the maximum
        real_t m = s[0];
        ARRSEG_UNROLL
        for (int c = 1; c < NC; ++c)
            m = s[c] > m ? s[c] : m;
        real_t sum = real_t(0);
        ARRSEG_UNROLL
        for (int c = 0; c < NC; ++c) {
            s[c] = r_exp(s[c] - m);
            sum += s[c];
        }
        if (h < H && w < W) {
            ARRSEG_UNROLL
            for (int c = 0; c < NC; ++c)
                d_P[(((long long)tile.n * NC + c) * H + h) * W + w] = s[c] / sum;
        }
    }
}
