"""The residual network (``params.depth > 0``) against independent references.

- Loss, the six gradients and P against a network written here from
  PyTorch's own layers, differentiated by autograd in float64: dilated
  ``F.conv2d(..., dilation=d, padding=d (s // 2))``, circular padding by
  ``F.pad(mode="circular")`` for "periodic", and the symmetric layer's K^T as
  the convolution with the kernel flipped in space and its channels swapped.
- A Taylor test of the whole deep network in all six fields.
- The dilated convolution's adjoints (direct and FFT modules) and the
  trunk's backward pass against finite differences of its forward pass.
- depth 0 is the one-layer network, bitwise.
- Every namespace gives NumPy's results.
- The symmetric layer's stability: h ||K_j||^2 <= 2 keeps perturbations from
  growing.

Skipped without torch where torch is the reference.
"""

import importlib.util

import numpy as np
import pytest

import arrseg
from arrseg.numerics import convolution, fft_convolution
from arrseg.numerics.residual import Trunk, trunk_backward, trunk_forward
from arrseg.testing import assert_close
from conftest import to_xp

ACTIVATIONS = ["tanh", "relu", "sigmoid", "identity"]
BOUNDARIES = ["zeros", "periodic"]
LAYERS = ["residual", "symmetric"]
CONV_MODULES = {"direct": convolution, "fft": fft_convolution}


# -- the PyTorch reference ---------------------------------------------------

def _torch():
    return pytest.importorskip("torch", reason="torch is the autograd reference")


def torch_conv(Y, K, boundary, d=1, bias=None):
    """PyTorch's dilated 'same' cross-correlation, zero or circular padding."""
    torch = _torch()
    F = torch.nn.functional
    p = d * (K.shape[-1] // 2)
    if boundary == "periodic":
        return F.conv2d(F.pad(Y, (p, p, p, p), mode="circular"), K, bias, dilation=d)
    return F.conv2d(Y, K, bias, padding=p, dilation=d)


def torch_conv_transpose(Z, K, boundary, d=1):
    """K^T Z: the convolution with K flipped in space, its channels swapped."""
    return torch_conv(Z, K.flip(-1, -2).transpose(0, 1), boundary, d)


def torch_network(x, labels, fields, *, activation, boundary, dilation, step, layer,
                  class_weight=None, ignore_index=-100):
    """Loss, the six gradients and P by PyTorch autograd (float64 unless the
    fields are float32)."""
    torch = _torch()
    F = torch.nn.functional
    sigma = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid,
             "identity": lambda z: z}[activation]
    K, b, W, c, KL, bL = (None if a is None else torch.tensor(a, requires_grad=True)
                          for a in fields)
    Y = sigma(torch_conv(torch.tensor(x), K, boundary, 1, b))
    for j, d in enumerate(dilation):
        A = sigma(torch_conv(Y, KL[j], boundary, d, bL[j]))
        if layer == "symmetric":
            Y = Y - step * torch_conv_transpose(A, KL[j], boundary, d)
        else:
            Y = Y + step * A
    S = F.conv2d(Y, W.T[:, :, None, None], c)
    weight = None if class_weight is None else torch.tensor(class_weight)
    loss = F.cross_entropy(S, torch.tensor(labels), weight=weight,
                           ignore_index=ignore_index)
    loss.backward()
    grads = [None if a is None else a.grad.numpy() for a in (K, b, W, c, KL, bL)]
    return loss.item(), grads, torch.softmax(S, dim=1).detach().numpy()


# -- random problems ----------------------------------------------------------

def random_case(seed):
    """A random deep problem: depth 1-4, kernel sizes 1/3/5, dilations 1-3,
    h in (0.2, 1], class weights or not, the default or a custom ignore
    label, with or without the classifier bias."""
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(1, 5))
    s, s_r = (int(rng.choice([1, 3, 5])) for _ in range(2))
    N, C, k, n_c = (int(rng.integers(1, 3)), int(rng.integers(1, 4)),
                    int(rng.integers(1, 5)), int(rng.integers(2, 5)))
    # at least the largest halo 3 * 2 (PyTorch's circular pad needs p <= size)
    H, W = (int(rng.integers(7, 11)) for _ in range(2))
    x = rng.standard_normal((N, C, H, W))
    ignore_index = -100 if rng.random() < 0.5 else int(rng.choice([-1, 255]))
    labels = rng.integers(0, n_c, (N, H, W))
    labels[rng.random(labels.shape) < 0.25] = ignore_index
    labels[0, 0, 0] = 0  # at least one labelled pixel
    fields = [rng.standard_normal((k, C, s, s)) / s, rng.standard_normal(k),
              rng.standard_normal((k, n_c)),
              rng.standard_normal(n_c) if rng.random() < 0.7 else None,
              rng.standard_normal((depth, k, k, s_r, s_r)) / (s_r * np.sqrt(k)),
              0.5 * rng.standard_normal((depth, k))]
    weight = rng.uniform(0.2, 3.0, n_c) if rng.random() < 0.7 else None
    if rng.random() < 0.3:  # one dilation for every layer
        dilation = int(rng.integers(1, 4))
        dilations = (dilation,) * depth
    else:
        dilations = tuple(int(d) for d in rng.integers(1, 4, depth))
        dilation = list(dilations) if rng.random() < 0.5 else dilations
    step = float(rng.uniform(0.2, 1.0))
    if rng.random() < 0.2:
        step = 1.0
    return dict(x=x, labels=labels, fields=fields, class_weight=weight,
                ignore_index=ignore_index, dilation=dilation, dilations=dilations,
                step=step)


def describe(case, **options):
    f = case["fields"]
    return (f"x {case['x'].shape}, K {f[0].shape}, K_layers {f[4].shape}, "
            f"c {'None' if f[3] is None else 'set'}, dilation {case['dilation']!r}, "
            f"step {case['step']:.3f}, ignore_index {case['ignore_index']}, "
            f"class_weight {'set' if case['class_weight'] is not None else 'None'}, "
            f"{options}")


# -- 1. against PyTorch autograd ---------------------------------------------

@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("seed", range(2))
def test_matches_torch_autograd_float64(seed, activation, boundary, layer, method):
    case = random_case(1000 * seed + 100 * ACTIVATIONS.index(activation)
                       + 10 * BOUNDARIES.index(boundary) + LAYERS.index(layer))
    options = dict(activation=activation, boundary=boundary, layer=layer)
    want_loss, want_grads, want_P = torch_network(
        case["x"], case["labels"], case["fields"], dilation=case["dilations"],
        step=case["step"], class_weight=case["class_weight"],
        ignore_index=case["ignore_index"], **options)
    params = arrseg.ResidualParams(*case["fields"])
    kwargs = dict(options, method=method, dilation=case["dilation"], step=case["step"])
    msg = describe(case, **kwargs)
    loss, grads = arrseg.loss_and_grad(case["x"], case["labels"], params,
                                       class_weight=case["class_weight"],
                                       ignore_index=case["ignore_index"], **kwargs)
    assert isinstance(grads, arrseg.ResidualParams), msg
    # assert_close's float64 default: rtol 1e-12, atol 1e-12 max |reference|
    assert_close(loss, np.asarray(want_loss), dtype="float64", err_msg=msg)
    for name, g, w in zip(arrseg.ResidualParams._fields, grads, want_grads):
        if w is None:
            assert g is None, f"d{name}: {msg}"
        else:
            assert_close(g, w, dtype="float64", err_msg=f"d{name}: {msg}")
    P = arrseg.predict_proba(case["x"], params, **kwargs)
    assert_close(P, want_P, dtype="float64", err_msg=msg)


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_float32_matches_torch_to_float32_accuracy(boundary, layer, method):
    case = random_case(77 + 10 * BOUNDARIES.index(boundary) + LAYERS.index(layer))
    x32 = case["x"].astype(np.float32)
    f32 = [None if a is None else a.astype(np.float32) for a in case["fields"]]
    # the float64 reference of the float32-rounded inputs: only arrseg's
    # float32 arithmetic differs
    want_loss, want_grads, want_P = torch_network(
        x32.astype(np.float64), case["labels"],
        [None if a is None else a.astype(np.float64) for a in f32],
        activation="tanh", boundary=boundary, dilation=case["dilations"],
        step=case["step"], layer=layer, class_weight=case["class_weight"],
        ignore_index=case["ignore_index"])
    kwargs = dict(boundary=boundary, layer=layer, method=method,
                  dilation=case["dilation"], step=case["step"])
    msg = describe(case, **kwargs)
    params = arrseg.ResidualParams(*f32)
    loss, grads = arrseg.loss_and_grad(x32, case["labels"], params,
                                       class_weight=case["class_weight"],
                                       ignore_index=case["ignore_index"], **kwargs)
    # errors below ~40 float32 epsilons of the largest entry (seen: 3.6e-7)
    assert_close(loss, np.asarray(want_loss), dtype="float32", rtol=5e-6, err_msg=msg)
    for name, g, w in zip(arrseg.ResidualParams._fields, grads, want_grads):
        if w is not None:
            assert_close(g, w, dtype="float32", rtol=0,
                         atol=5e-6 * np.max(np.abs(w)), err_msg=f"d{name}: {msg}")
    P = arrseg.predict_proba(x32, params, **kwargs)
    assert_close(P, want_P, dtype="float32", rtol=0, atol=1e-5, err_msg=msg)


def test_torch_reference_transpose_is_the_adjoint():
    # the reference's K^T (flipped kernel, swapped channels) against autograd's
    # transpose of its K, so that the symmetric layer's reference is right
    torch = _torch()
    rng = np.random.default_rng(3)
    for boundary in BOUNDARIES:
        for s, d in [(1, 2), (3, 1), (3, 3), (5, 2)]:
            K = torch.tensor(rng.standard_normal((3, 2, s, s)))
            Y = torch.tensor(rng.standard_normal((2, 2, 9, 8)), requires_grad=True)
            Z = torch.tensor(rng.standard_normal((2, 3, 9, 8)))
            (torch_conv(Y, K, boundary, d) * Z).sum().backward()
            np.testing.assert_allclose(
                torch_conv_transpose(Z, K, boundary, d).numpy(), Y.grad.numpy(),
                rtol=1e-12, atol=1e-12, err_msg=f"{boundary} s={s} d={d}")


# -- 2. the Taylor test -------------------------------------------------------

@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("boundary,activation", [("zeros", "tanh"),
                                                 ("periodic", "sigmoid")])
def test_taylor_second_order_in_all_six_fields(boundary, activation, layer, method):
    case = random_case(500 + LAYERS.index(layer) + 2 * BOUNDARIES.index(boundary))
    rng = np.random.default_rng(7)
    fields = [a for a in case["fields"]]
    if fields[3] is None:
        fields[3] = rng.standard_normal(fields[2].shape[1])
    theta = arrseg.ResidualParams(*fields)
    v = arrseg.ResidualParams(*(rng.standard_normal(a.shape) for a in fields))
    kwargs = dict(activation=activation, boundary=boundary, layer=layer,
                  method=method, dilation=case["dilation"], step=case["step"],
                  class_weight=case["class_weight"], ignore_index=case["ignore_index"])

    def E(p):
        loss, grads = arrseg.loss_and_grad(case["x"], case["labels"], p, **kwargs)
        return float(loss), grads

    E0, g = E(theta)
    slope = sum(float(np.sum(gi * vi)) for gi, vi in zip(g, v))
    assert abs(slope) > 1e-6, "a direction of zero slope tests nothing"
    eps = [2.0 ** -i for i in range(6, 14)]
    first, second = [], []
    for e in eps:
        Ee, _ = E(arrseg.ResidualParams(*(a + e * b for a, b in zip(theta, v))))
        first.append(abs(Ee - E0))
        second.append(abs(Ee - E0 - e * slope))
    r1 = np.array(first[:-1]) / np.array(first[1:])
    r2 = np.array(second[:-1]) / np.array(second[1:])
    msg = f"{describe(case, **kwargs)}\nO(eps) ratios {r1}\nO(eps^2) ratios {r2}"
    # the zeroth-order remainder halves, the first-order one quarters
    # (the first only as eps -> 0: the eps^2 term is not small at the start)
    assert np.all(np.abs(r1[-3:] - 2) < 0.1), msg
    assert np.all(np.abs(r2 - 4) < 0.5), msg


# -- 3. adjoints --------------------------------------------------------------

@pytest.mark.parametrize("module", list(CONV_MODULES))
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_dilated_convolution_matches_torch_and_its_adjoints(module, boundary):
    torch = _torch()
    import array_api_compat.numpy as xp

    conv = CONV_MODULES[module]
    rng = np.random.default_rng(11)
    for s in (1, 3, 5):
        for d in (1, 2, 3):
            N, C, k, H, W = 2, 3, 2, 9, 8
            Y = rng.standard_normal((N, C, H, W))
            Z = rng.standard_normal((N, k, H, W))
            theta = rng.standard_normal((k, C, s, s))
            where = f"{module} {boundary} s={s} d={d}"
            KY = conv.conv2d(Y, theta, boundary, xp, d)
            want = torch_conv(torch.tensor(Y), torch.tensor(theta), boundary, d)
            np.testing.assert_allclose(KY, want.numpy(), rtol=1e-12, atol=1e-12,
                                       err_msg=where)
            KtZ = conv.conv2d_adjoint(Z, theta, boundary, xp, d)
            assert KtZ.shape == Y.shape, where
            lhs, rhs = np.sum(KY * Z), np.sum(Y * KtZ)
            assert abs(lhs - rhs) <= 1e-12 * (np.abs(KY * Z).sum() + 1), where
            # and in theta: <K(theta) Y, Z> = <theta, J_theta(Y)^T Z>
            dtheta = conv.conv2d_theta_vjp(Y, Z, s, boundary, xp, d)
            assert dtheta.shape == theta.shape, where
            rhs = np.sum(theta * dtheta)
            assert abs(lhs - rhs) <= 1e-12 * (np.abs(KY * Z).sum() + 1), where


@pytest.mark.parametrize("module", list(CONV_MODULES))
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("boundary,activation", [("zeros", "tanh"),
                                                 ("periodic", "sigmoid"),
                                                 ("periodic", "identity")])
def test_trunk_backward_is_the_derivative_of_trunk_forward(module, layer, boundary,
                                                           activation):
    # phi(Y1, K_layers, b_layers) = <trunk_forward(...), G>: its directional
    # derivatives by central differences against <G1, V>, <dK_layers, dK>,
    # <db_layers, db> from trunk_backward
    import array_api_compat.numpy as xp

    conv = CONV_MODULES[module]
    rng = np.random.default_rng(21 + LAYERS.index(layer))
    depth, k, s_r, N, H, W = 3, 3, 3, 2, 8, 9
    trunk = Trunk(dilation=(1, 3, 2), step=0.7, layer=layer)
    Y1 = rng.standard_normal((N, k, H, W))
    KL = rng.standard_normal((depth, k, k, s_r, s_r)) / (s_r * np.sqrt(k))
    bL = 0.3 * rng.standard_normal((depth, k))
    G = rng.standard_normal((N, k, H, W))

    def phi(Y, K, b):
        return float(np.sum(trunk_forward(Y, K, b, activation, boundary, trunk, xp,
                                          conv) * G))

    YL, tape = trunk_forward(Y1, KL, bL, activation, boundary, trunk, xp, conv,
                             keep=True)
    assert_close(YL, trunk_forward(Y1, KL, bL, activation, boundary, trunk, xp, conv))
    G1, dKL, dbL = trunk_backward(G, tape, KL, boundary, trunk, xp, conv)
    assert G1.shape == Y1.shape and dKL.shape == KL.shape and dbL.shape == bL.shape
    V, dK, db = (rng.standard_normal(a.shape) for a in (Y1, KL, bL))
    e = 1e-5
    for name, got, args_plus, args_minus in [
            ("G1", np.sum(G1 * V), (Y1 + e * V, KL, bL), (Y1 - e * V, KL, bL)),
            ("dK_layers", np.sum(dKL * dK), (Y1, KL + e * dK, bL),
             (Y1, KL - e * dK, bL)),
            ("db_layers", np.sum(dbL * db), (Y1, KL, bL + e * db),
             (Y1, KL, bL - e * db))]:
        fd = (phi(*args_plus) - phi(*args_minus)) / (2 * e)
        assert abs(got - fd) <= 1e-7 * (abs(fd) + 1), (
            f"{name} ({module}, {layer}, {boundary}, {activation}): analytic "
            f"{got!r}, central difference {fd!r}")


# -- 4. depth 0 is the one-layer network --------------------------------------

def test_init_params_depth_zero_is_the_one_layer_params():
    p0 = arrseg.init_params(3, 6, 4, kernel_size=5, seed=9, dtype="float64", depth=0)
    p = arrseg.init_params(3, 6, 4, kernel_size=5, seed=9, dtype="float64")
    assert type(p0) is arrseg.Params and type(p) is arrseg.Params
    assert p0.depth == 0 and p0.K_layers is None and p0.b_layers is None
    for a, b in zip(p0, p):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    p3 = arrseg.init_params(3, 6, 4, kernel_size=5, seed=9, dtype="float64", depth=3,
                            layer_kernel_size=5)
    assert type(p3) is arrseg.ResidualParams and p3.depth == 3
    assert p3.K_layers.shape == (3, 6, 6, 5, 5) and p3.b_layers.shape == (3, 6)
    for name in "KbWc":
        a, b = getattr(p3, name), getattr(p0, name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    q3 = arrseg.init_params(3, 6, 4, kernel_size=5, seed=9, dtype="float32", depth=3,
                            bias=False)
    q0 = arrseg.init_params(3, 6, 4, kernel_size=5, seed=9, dtype="float32",
                            bias=False)
    assert q3.c is None and q0.c is None
    for name in "KbW":
        assert getattr(q3, name).tobytes() == getattr(q0, name).tobytes(), name


@pytest.mark.parametrize("method", ["auto", "direct", "fft"])
def test_depth_zero_ignores_the_layer_options_bitwise(rng, method):
    x = rng.standard_normal((2, 3, 9, 7))
    y = rng.integers(0, 4, (2, 9, 7))
    p = arrseg.Params(rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5),
                      rng.standard_normal((5, 4)), rng.standard_normal(4))
    plain = dict(activation="sigmoid", boundary="periodic", method=method)
    P = arrseg.predict_proba(x, p, **plain)
    loss, grads = arrseg.loss_and_grad(x, y, p, **plain)
    assert type(grads) is arrseg.Params
    for extra in [dict(dilation=3, step=0.25, layer="symmetric"),
                  dict(dilation=(), step=2.0, layer="residual"),
                  dict(dilation=[], layer="symmetric")]:
        P2 = arrseg.predict_proba(x, p, **plain, **extra)
        assert P2.tobytes() == P.tobytes(), extra
        loss2, grads2 = arrseg.loss_and_grad(x, y, p, **plain, **extra)
        assert type(grads2) is arrseg.Params, extra
        assert loss2.tobytes() == loss.tobytes(), extra
        for name, a, b in zip("KbWc", grads2, grads):
            assert a.tobytes() == b.tobytes(), (name, extra)


# -- 5. every namespace --------------------------------------------------------

@pytest.mark.skip_xp_backends("numpy", reason="NumPy's result is the comparison")
@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("layer", LAYERS)
def test_every_namespace_gives_numpys_results(xp, layer, method):
    case = random_case(4242 + LAYERS.index(layer))
    kwargs = dict(activation="tanh", boundary="periodic", layer=layer, method=method,
                  dilation=case["dilation"], step=case["step"],
                  ignore_index=case["ignore_index"])
    fields = case["fields"]
    params_np = arrseg.ResidualParams(*fields)
    params_xp = arrseg.ResidualParams(*(None if a is None else to_xp(xp, a)
                                        for a in fields))
    w = case["class_weight"]
    x_xp, y_xp = to_xp(xp, case["x"]), to_xp(xp, case["labels"])
    w_xp = None if w is None else to_xp(xp, w)
    predict_kwargs = {k: v for k, v in kwargs.items() if k != "ignore_index"}

    P_np = arrseg.predict_proba(case["x"], params_np, **predict_kwargs)
    P = arrseg.predict_proba(x_xp, params_xp, **predict_kwargs)
    assert_close(P, P_np, xp=xp, dtype="float64", rtol=1e-12)
    loss_np, grads_np = arrseg.loss_and_grad(case["x"], case["labels"], params_np,
                                             class_weight=w, **kwargs)
    loss, grads = arrseg.loss_and_grad(x_xp, y_xp, params_xp, class_weight=w_xp,
                                       **kwargs)
    assert isinstance(grads, arrseg.ResidualParams)
    assert_close(loss, loss_np, xp=xp, dtype="float64", rtol=1e-12)
    for name, g, g_np in zip(arrseg.ResidualParams._fields, grads, grads_np):
        if g_np is None:
            assert g is None, name
        else:
            assert_close(g, g_np, xp=xp, dtype="float64", rtol=1e-11,
                         err_msg=f"d{name}")
    # and against the independent reference
    if importlib.util.find_spec("torch") is not None:
        want_loss, want_grads, want_P = torch_network(
            case["x"], case["labels"], fields, activation="tanh", boundary="periodic",
            dilation=case["dilations"], step=case["step"], layer=layer,
            class_weight=w, ignore_index=case["ignore_index"])
        assert_close(P, want_P, rtol=1e-11)
        assert_close(loss, np.asarray(want_loss), rtol=1e-11)
        for name, g, want in zip(arrseg.ResidualParams._fields, grads, want_grads):
            if want is not None:
                assert_close(g, want, rtol=1e-10, err_msg=f"d{name}")


# -- 6. the symmetric layer's stability ----------------------------------------

def operator_norm(K, d, shape, conv, xp, iterations=300, seed=0):
    """||K||_2 of the periodic dilated convolution on (1, k, H, W) images, by
    power iteration on K^T K (a lower bound that converges to it)."""
    rng = np.random.default_rng(seed)
    V = rng.standard_normal(shape)
    V /= np.linalg.norm(V)
    lam = 0.0
    for _ in range(iterations):
        U = conv.conv2d_adjoint(conv.conv2d(V, K, "periodic", xp, d), K, "periodic",
                                xp, d)
        lam = float(np.linalg.norm(U))
        V = U / lam
    return np.sqrt(lam), V


@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_symmetric_layers_do_not_amplify_perturbations(activation):
    import array_api_compat.numpy as xp

    conv = convolution
    rng = np.random.default_rng(31)
    depth, k, s_r, N, H, W = 20, 3, 3, 1, 8, 8
    h = 0.8
    dilation = tuple(int(d) for d in rng.integers(1, 4, depth))
    KL = rng.standard_normal((depth, k, k, s_r, s_r))
    for j in range(depth):
        # h ||K_j||^2 = 1.9 <= 2 (1.9 leaves room for the estimate's error)
        norm, _ = operator_norm(KL[j], dilation[j], (N, k, H, W), conv, xp, seed=j)
        KL[j] *= np.sqrt(1.9 / h) / norm
    bL = 0.5 * rng.standard_normal((depth, k))
    trunk = Trunk(dilation=dilation, step=h, layer="symmetric")
    Y1 = rng.standard_normal((N, k, H, W))
    YL = trunk_forward(Y1, KL, bL, activation, "periodic", trunk, xp, conv)
    for scale in (1e-6, 1e-2, 1.0):
        dY1 = scale * rng.standard_normal(Y1.shape)
        dYL = trunk_forward(Y1 + dY1, KL, bL, activation, "periodic", trunk, xp,
                            conv) - YL
        assert np.linalg.norm(dYL) <= np.linalg.norm(dY1) * (1 + 1e-8), (
            f"{activation}, |dY1| = {np.linalg.norm(dY1)}, "
            f"|dY_L| = {np.linalg.norm(dYL)}")


def test_symmetric_bound_is_needed():
    # the test above can fail: with h ||K||^2 = 3 > 2 the identity layer's
    # Jacobian I - h K^T K has the eigenvalue -2 along K's top singular vector
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(5)
    k, s_r, shape, h, d, depth = 3, 3, (1, 3, 8, 8), 0.5, 2, 20
    K = rng.standard_normal((k, k, s_r, s_r))
    norm, V = operator_norm(K, d, shape, convolution, xp)
    K *= np.sqrt(3.0 / h) / norm
    trunk = Trunk(dilation=(d,) * depth, step=h, layer="symmetric")
    KL, bL = np.stack([K] * depth), np.zeros((depth, k))
    dY1 = 1e-6 * V
    dYL = trunk_forward(dY1, KL, bL, "identity", "periodic", trunk, xp, convolution)
    assert np.linalg.norm(dYL) > 1e3 * np.linalg.norm(dY1)
