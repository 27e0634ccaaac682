"""The NumPy fast path of networks with residual layers: blocked and threaded.

Interface of the core (:mod:`arrseg.core`) for ``params.depth > 0`` on NumPy
arrays: :func:`forward`, :func:`loss_and_grad`, :func:`features`, with the
results of the array-API reference (:mod:`arrseg.numerics.forward_backward`
with :mod:`arrseg.numerics.residual`) to round-off.

Every convolution (the opening layer, each residual layer K_j with its
dilation d_j, and the adjoints K_j^T, which are convolutions with the
flipped, transposed kernel) is one primitive, :class:`arrseg.cpu.residual.layers.Conv`: for R
output rows of one image, an im2col copy of the padded input rows::

    PT  (c*s*s + 1, R*W)   entry (ch, a, b, i, j) = Xpad[ch, i + d a, j + d b];
                           the last row is ones, for the bias
    Z   (k, R*W)           = [K | b] @ PT

with R about :data:`BLOCK_PIXELS` / W rows. The product runs in slices of
PT's columns small enough for OpenBLAS's small-matrix kernels, all in one
batched ``matmul`` (:func:`~arrseg.cpu.residual.layers.matmul_columns`,
1.7 times as fast as one call at k = 16). The residual layers' weight
gradient PT @ dZ^T runs in one call (the long dimension is the sum); the
symmetric layers' two weight-gradient terms run as batches of 256-pixel
products, summed (:func:`~arrseg.cpu.residual.layers.matmul_slices`), and
take their patches from the backward pass's own im2col copies (of dZ_j and
of G_{j+1}), so Y_j's are not copied again. Activations live in padded
buffers (pad d_j (s_r // 2) of the layer that reads them, zeros or wrapped
copies), so that PT is one strided copy.

Training (:func:`loss_and_grad`): the whole batch, one layer at a time.
Each pass hands the blocks (image, R rows) of every image to the threads
(:func:`arrseg.cpu.threads.parallel_map`, BLAS on one thread in each);
the forward passes keep the tape (every Y_j, sigma'(Z_j), and A_j for the
symmetric layer) for the backward passes, which run the adjoint
(:mod:`arrseg.numerics.residual`) block by block: dZ_j into a padded
buffer, then G_j = G_{j+1} + K_j^T dZ_j fused into the next layer's pass.
The classifier, softmax and cross-entropy run inside the last forward pass,
on the block still in cache. Per pass, blocks are grouped into at most
:data:`arrseg.cpu.blocked.MAX_CHUNKS` chunks; each chunk's float64 gradient
sum is added in chunk order, so the result has the same bits for any number
of threads. Memory: the tape, about (2 + 1 [symmetric]) (N, k, H, W) arrays
a layer, as PyTorch's autograd keeps; a finished call leaves its arrays
(up to :data:`~arrseg.cpu.residual.layers.SPARE_BYTES`) to the next call
(:class:`~arrseg.cpu.residual.layers.Tape`): fresh pages cost the kernel's
zeroing and faults, about 10% of a step.

Why not image by image (a tape per image, bounded in N): the work is the
same GEMMs on the same blocks, and the smaller tape did not pay. On the
2-core machine (N = 4, 3 x 256 x 256, k = 16, float32, shared with other
jobs, so +-15%; before the sliced products), the whole batch took 650 ms at depth 4 and 452 ms at
depth 6, four one-image calls (each image's tape alone) 883 and 501 ms;
one image per thread would also leave a core idle whenever N is odd or 1,
while blocks of rows balance any N. Row bands with a halo (bounded in H
for training too) recompute the halo at every layer: with doubling
dilations the halo of depth 6 is 64 rows, 50% more work on 256-row bands.

Prediction and features (:func:`forward`, :func:`features`): bounded memory.
A task is a band of rows of one image, run through all the layers before
the next band: the band's input reaches ``receptive_halo`` rows beyond it
(zeros outside the image, or wrapped rows), and each layer computes the rows
the following layers still need (the band plus their halo). Each thread
holds three band buffers of k x (R_band + 2 halo) x (W + 2 pad) numbers,
whatever N and H are; a whole image is one band when its buffers fit in
:data:`BAND_BYTES` (then without recomputed rows: the pads are the boundary).

Modules: :mod:`~arrseg.cpu.residual.layers` (the convolution primitive,
padded row buffers, the network's layers), :mod:`~arrseg.cpu.residual.training`
(:func:`loss_and_grad`), :mod:`~arrseg.cpu.residual.prediction`
(:func:`forward`, :func:`features`).
"""

from .layers import BLOCK_PIXELS
from .prediction import BAND_BYTES, features, forward
from .training import loss_and_grad

__all__ = ["BAND_BYTES", "BLOCK_PIXELS", "features", "forward", "loss_and_grad"]
