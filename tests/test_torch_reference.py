"""Loss, gradients and probabilities against PyTorch autograd in float64.

The reference network is built from PyTorch's own layers: conv2d (with
circular padding for "periodic"), the activation, a 1x1 conv2d as the
classifier and cross_entropy with weight and ignore_index. Skipped without
torch (``.ci/run`` installs it).
"""

import numpy as np
import pytest

import arrseg
from arrseg.testing import assert_close

torch = pytest.importorskip("torch")
F = torch.nn.functional

TORCH_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu,
                     "sigmoid": torch.sigmoid, "identity": lambda z: z}


def torch_loss(x, labels, params, activation, boundary, class_weight, ignore_index):
    """Loss, gradients (K, b, W, c) and P from PyTorch autograd."""
    K, b, W, c = (None if a is None else torch.tensor(a, requires_grad=True)
                  for a in params)
    x = torch.tensor(x)
    p = K.shape[-1] // 2
    if boundary == "periodic":
        Z = F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), K, b)
    else:
        Z = F.conv2d(x, K, b, padding=p)
    S = F.conv2d(TORCH_ACTIVATIONS[activation](Z), W.T[:, :, None, None], c)
    weight = None if class_weight is None else torch.tensor(class_weight)
    loss = F.cross_entropy(S, torch.tensor(labels), weight=weight,
                           ignore_index=ignore_index)
    loss.backward()
    grads = [None if a is None else a.grad.numpy() for a in (K, b, W, c)]
    return loss.item(), grads, torch.softmax(S, dim=1).detach().numpy()


def random_case(seed, s):
    rng = np.random.default_rng(seed)
    N = 1 if seed % 3 == 0 else int(rng.integers(2, 4))  # N = 1 for every s
    C = int(rng.integers(1, 5))
    # odd sizes at least the halo (PyTorch's circular pad needs p <= size)
    H, W = (int(2 * rng.integers(s // 2 + 1, 7) + 1) for _ in range(2))
    k, n_c = int(rng.integers(1, 9)), int(rng.integers(2, 6))
    x = rng.standard_normal((N, C, H, W)) * rng.choice([0.1, 1.0, 5.0])
    labels = rng.integers(0, n_c, (N, H, W))
    labels[rng.random(labels.shape) < 0.25] = -7  # the ignore label
    params = (rng.standard_normal((k, C, s, s)) / s, rng.standard_normal(k),
              rng.standard_normal((k, n_c)) * 2,
              rng.standard_normal(n_c) if rng.random() < 0.8 else None)
    weight = rng.uniform(0.1, 3.0, n_c) if rng.random() < 0.7 else None
    return x, labels, params, weight


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("s", [1, 3, 5, 7])
@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
@pytest.mark.parametrize("activation", list(TORCH_ACTIVATIONS))
def test_matches_torch_autograd_float64(seed, s, boundary, activation):
    x, labels, params, weight = random_case(1000 * s + seed, s)
    want_loss, want_grads, want_P = torch_loss(x, labels, params, activation,
                                               boundary, weight, -7)
    p = arrseg.Params(*params)
    loss, grads = arrseg.loss_and_grad(x, labels, p, activation=activation,
                                       boundary=boundary, class_weight=weight,
                                       ignore_index=-7)
    assert_close(loss, np.asarray(want_loss), dtype="float64")
    for name, g, w in zip("KbWc", grads, want_grads):
        if w is None:
            assert g is None
        else:
            assert_close(g, w, dtype="float64", err_msg=f"d{name}")
    P = arrseg.predict_proba(x, p, activation=activation, boundary=boundary)
    assert_close(P, want_P, dtype="float64")


@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
def test_float32_gradients_are_accurate_to_float32(boundary):
    # float32 results against the float64 autograd reference: errors below
    # 8 float32 epsilons relative to the largest entry of each gradient
    x, labels, params, weight = random_case(99, 5)
    _, want_grads, _ = torch_loss(x, labels, params, "tanh", boundary, weight, -7)
    p32 = arrseg.Params(*(None if a is None else a.astype(np.float32) for a in params))
    _, grads = arrseg.loss_and_grad(x.astype(np.float32), labels, p32,
                                    boundary=boundary, class_weight=weight,
                                    ignore_index=-7)
    for name, g, w in zip("KbWc", grads, want_grads):
        if w is not None:
            # inputs rounded to float32 move the exact answer by ~1e-7 relative
            assert_close(g, w, dtype="float32", rtol=0,
                         atol=1e-6 * np.max(np.abs(w)), err_msg=f"d{name}")


def test_all_ignored_is_zero_where_torch_gives_nan():
    x, labels, params, _ = random_case(5, 3)
    labels[:] = -100
    want_loss, _, _ = torch_loss(x, labels, params, "tanh", "zeros", None, -100)
    assert np.isnan(want_loss)  # PyTorch's definition: 0 / 0
    loss, _ = arrseg.loss_and_grad(x, labels, arrseg.Params(*params))
    assert float(loss) == 0.0
