"""Kernel launches of the fused path, counted on the CPU emulator.

Inside ``arrseg.core.fused_kernels_on_numpy(kernels)`` the dispatcher runs
the "fused" path on NumPy arrays with the emulator's kernels: the same
launchers and the same value-check kernel as on CuPy. Counting their
launches shows what a GPU would be asked to do per call:

- a public call: one value-check launch, then one forward launch or the
  backward and reduction launches;
- ``Segmenter.predict_proba`` of an image of any size: one check and one
  forward launch (no tiles);
- one ``Segmenter.fit`` iteration: the backward and reduction launches of
  its steps and nothing else (no check inside the loop).
"""

import pytest

import arrseg
from arrseg import core
from arrseg.segmenter import Segmenter

emulation = pytest.importorskip("arrseg.cuda.emulation")
if emulation.find_compiler() is None:
    pytest.skip("no C++ compiler (g++ or $CXX) for the CUDA emulator",
                allow_module_level=True)

CHECK, FORWARD = "arrseg_check_values", "arrseg_fused_forward"
BACKWARD, REDUCE = "arrseg_fused_backward", "arrseg_reduce_partials"


class CountingKernels:
    """The emulator's kernels, recording the name of every launch."""

    def __init__(self, inner):
        self.inner = inner
        self.launches = []

    def function(self, config, filename, name):
        kernel = self.inner.function(config, filename, name)

        def launch(grid, block, args, shared_mem=0, stream=None):
            self.launches.append(name)
            return kernel(grid, block, args, shared_mem=shared_mem)

        return launch


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    return emulation.EmulatedKernels(cache_dir=tmp_path_factory.mktemp("emulator"))


@pytest.fixture
def kernels(emulated):
    counting = CountingKernels(emulated)
    with core.fused_kernels_on_numpy(counting):
        yield counting


def test_public_calls(kernels):
    x, y = arrseg.data.make_shapes(n_images=2, size=20, seed=0)
    params = arrseg.init_params(3, 8, 3, seed=0)
    arrseg.predict_proba(x, params)
    assert kernels.launches == [CHECK, FORWARD]
    kernels.launches.clear()
    arrseg.loss_and_grad(x, y, params, class_weight=[1.0, 2.0, 1.0])
    assert kernels.launches == [CHECK, BACKWARD, REDUCE]


def test_the_fused_path_gives_the_reference_values(kernels):
    # the dispatcher really ran the kernels: their results match the
    # array-API reference outside the emulation block
    x, y = arrseg.data.make_shapes(n_images=2, size=20, seed=1)
    params = arrseg.init_params(3, 8, 3, seed=0, dtype="float64")
    P = arrseg.predict_proba(x.astype("float64"), params)
    loss, grads = arrseg.loss_and_grad(x.astype("float64"), y, params)
    assert kernels.launches == [CHECK, FORWARD, CHECK, BACKWARD, REDUCE]
    with core.fused_kernels_on_numpy(None):
        P_ref = arrseg.predict_proba(x.astype("float64"), params, method="fft")
        loss_ref, grads_ref = arrseg.loss_and_grad(x.astype("float64"), y, params,
                                                   method="fft")
    assert abs(float(loss) - float(loss_ref)) < 1e-10
    assert float(abs(P - P_ref).max()) < 1e-10
    assert float(abs(grads.K - grads_ref.K).max()) < 1e-10


def test_a_bad_value_is_found_by_the_check_kernel(kernels):
    import numpy as np

    x, y = arrseg.data.make_shapes(n_images=1, size=12, seed=0)
    params = arrseg.init_params(3, 4, 3, seed=0)
    y = y.copy()
    y[0, 3, 4] = 7
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\)"
                                         r".*\[7\]"):
        arrseg.loss_and_grad(x, y, params)
    # the check is launched first and read back after the work, with the
    # result's finiteness probe: one synchronisation (the result is discarded)
    assert kernels.launches == [CHECK, BACKWARD, REDUCE]
    kernels.launches.clear()
    x = x.copy()
    x[0, 1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="x must be finite, got 1 non-finite"):
        arrseg.predict_proba(x, params)
    assert kernels.launches == [CHECK, FORWARD]


def test_segmenter_predicts_a_large_image_in_one_pass(kernels):
    x, y = arrseg.data.make_shapes(n_images=1, size=24, seed=0)
    model = Segmenter(width=4, max_iter=1, depth=0, optimizer="adam").fit(x, y)
    big, _ = arrseg.data.make_shapes(n_images=1, size=(160, 144), seed=2)
    kernels.launches.clear()
    P = model.predict_proba(big[0])
    assert P.shape == (3, 160, 144)
    assert kernels.launches == [CHECK, FORWARD]
    # with explicit tiles: one check for the call, one forward per tile
    kernels.launches.clear()
    model.set_params(tile_size=64).predict_proba(big[0])
    assert kernels.launches == [CHECK] + [FORWARD] * 9


@pytest.mark.parametrize("kwargs, steps", [
    ({}, 1),                                      # whole images, one step
    ({"crop_size": 16, "batch_size": 2}, 4),      # ceil(3 * 24^2 / (2 * 16^2))
])
def test_each_fit_iteration_launches_only_its_steps(kernels, kwargs, steps):
    x, y = arrseg.data.make_shapes(n_images=3, size=24, seed=0)

    def launches(max_iter):
        kernels.launches.clear()
        Segmenter(width=4, max_iter=max_iter, n_iter_no_change=10, tol=0.0, depth=0,
                  optimizer="adam", **kwargs).fit(x, y)
        return list(kernels.launches)

    one, three = launches(1), launches(3)
    assert CHECK not in one + three
    assert three[len(one):] == [BACKWARD, REDUCE] * steps * 2


@pytest.mark.parametrize("bias", [True, False])
def test_the_flat_gradient_is_the_kernels_buffer_in_the_params_order(kernels, bias):
    import numpy as np
    import array_api_compat.numpy as xp

    from arrseg.optim.flat import flatten

    x, y = arrseg.data.make_shapes(n_images=2, size=16, seed=0)
    params = arrseg.init_params(3, 4, 3, seed=0, dtype="float64", bias=bias)
    x = x.astype("float64")
    options = core.Options()
    loss, grads = core.loss_and_grad(x, y, params, options, None, -100, xp)
    loss_flat, g = core.loss_and_grad(x, y, params, options, None, -100, xp, flat=True)
    assert kernels.launches == [BACKWARD, REDUCE] * 2
    np.testing.assert_array_equal(g, flatten(grads, xp))
    assert float(loss) == float(loss_flat)
