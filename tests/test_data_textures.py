"""arrseg.data.make_textures and arrseg.data.scribbles.

The references are independent of the code under test: finite differences
and region means computed here with NumPy, connected components and
erosions from scipy.ndimage.
"""

import numpy as np
import pytest

from arrseg.data import TEXTURE_CLASSES, make_textures, scribbles

ndimage = pytest.importorskip("scipy.ndimage", reason="scipy (scikit-learn's "
                              "dependency) is the reference of the stroke checks")


# --- make_textures ---------------------------------------------------------------

@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_shapes_dtypes_and_every_class_present(n_classes):
    x, y = make_textures(n_images=3, size=(40, 56), n_classes=n_classes, seed=1)
    assert x.shape == (3, 3, 40, 56) and x.dtype == np.float32
    assert y.shape == (3, 40, 56) and y.dtype == np.int64
    for n in range(3):
        assert sorted(np.unique(y[n]).tolist()) == list(range(n_classes))
    assert np.isfinite(x).all()


def test_float64_channels_and_namespace():
    x, y = make_textures(n_images=1, size=32, channels=1, dtype="float64")
    assert x.shape == (1, 1, 32, 32) and x.dtype == np.float64
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    xt, yt = make_textures(n_images=1, size=32, channels=1, dtype="float64", xp=torch)
    np.testing.assert_array_equal(xt.numpy(), x)
    np.testing.assert_array_equal(yt.numpy(), y)


def test_deterministic_by_seed():
    a = make_textures(n_images=2, size=32, seed=5)
    b = make_textures(n_images=2, size=32, seed=5)
    c = make_textures(n_images=2, size=32, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def _region_stats(x, y, c):
    """Mean colour (C,) and mean squared differences down / across, over the
    pixel pairs inside class c (NumPy, independent of the generator)."""
    m = y == c
    mean = x[:, m].mean(axis=1)
    dv = np.diff(x, axis=1)[:, m[1:] & m[:-1]]        # down the columns
    dh = np.diff(x, axis=2)[:, m[:, 1:] & m[:, :-1]]  # along the rows
    return mean, float(np.mean(dv ** 2)), float(np.mean(dh ** 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stripe_classes_differ_only_in_orientation(seed):
    x, y = make_textures(n_images=1, size=(96, 128), illumination=0.0, seed=seed,
                         dtype="float64")
    x, y = x[0], y[0]
    mean1, v1, h1 = _region_stats(x, y, TEXTURE_CLASSES.index("horizontal stripes"))
    mean2, v2, h2 = _region_stats(x, y, TEXTURE_CLASSES.index("vertical stripes"))
    mean0, *_ = _region_stats(x, y, 0)
    # the same colour: far closer to each other than to the background
    assert np.abs(mean1 - mean2).max() < 0.05
    assert np.linalg.norm(mean1 - mean0) > 5 * np.linalg.norm(mean1 - mean2)
    # the same value spread...
    s1, s2 = x[:, y == 1].std(axis=1), x[:, y == 2].std(axis=1)
    np.testing.assert_allclose(s1, s2, rtol=0.1)
    # ...but the energy of the differences is swapped
    assert v1 > 1.8 * h1 and h2 > 1.8 * v2
    np.testing.assert_allclose([v1, h1], [h2, v2], rtol=0.15)


def test_illumination_ramp_is_smooth_and_sized():
    # noise- and texture-free background: the image is colour + ramp
    kw = dict(n_images=1, size=64, n_classes=2, noise=0.0, contrast=0.0, seed=3,
              dtype="float64")
    flat, y = make_textures(illumination=0.0, **kw)
    lit, _ = make_textures(illumination=0.8, **kw)
    ramp = lit[0] - flat[0]                              # (C, H, W)
    np.testing.assert_allclose(ramp[0], ramp[1], atol=1e-12)  # every channel
    assert np.ptp(ramp[0]) == pytest.approx(0.8)
    # linear: second differences vanish
    assert np.abs(np.diff(ramp[0], 2, axis=0)).max() < 1e-9
    assert np.abs(np.diff(ramp[0], 2, axis=1)).max() < 1e-9


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_classes=5), "n_classes"),
    (dict(n_classes=1), "n_classes"),
    (dict(period=2), "period"),
    (dict(noise=-1.0), "noise"),
    (dict(size=4), "size"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_textures(**kwargs)


# --- scribbles -----------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.01, 0.02, 0.1])
def test_scribble_fraction_per_class(fraction):
    _, y = make_textures(n_images=2, size=(96, 128), seed=0)
    s = scribbles(y, fraction, seed=0)
    assert s.shape == y.shape and s.dtype == y.dtype
    for n in range(2):
        for c in range(4):
            area = int((y[n] == c).sum())
            assert int((s[n] == c).sum()) == max(1, round(fraction * area))


def test_scribbles_carry_true_labels_inside_regions():
    _, y = make_textures(n_images=2, size=(96, 128), seed=4)
    margin = 2
    s = scribbles(y, 0.02, seed=1, margin=margin)
    labelled = s != -100
    np.testing.assert_array_equal(s[labelled], y[labelled])
    # away from the borders: inside each region eroded by `margin` pixels
    square = np.ones((2 * margin + 1, 2 * margin + 1), bool)
    for n in range(2):
        for c in range(4):
            inner = ndimage.binary_erosion(y[n] == c, square, border_value=0)
            assert inner[s[n] == c].all()


def test_scribbles_are_strokes_not_pixels():
    _, y = make_textures(n_images=1, size=(128, 128), seed=2)
    s = scribbles(y, 0.02, seed=0, width=3)[0]
    for c in range(4):
        m = s == c
        n_components = ndimage.label(m)[1]
        # a few connected strokes, each many pixels long
        assert 1 <= n_components <= 8
        assert m.sum() / n_components > 15
        # nearly every pixel has a labelled 8-neighbour of its class
        neighbours = ndimage.convolve(m.astype(int), np.ones((3, 3), int),
                                      mode="constant") - 1
        assert np.mean(neighbours[m] >= 2) > 0.9


def test_scribbles_deterministic_and_keep_ignored_pixels():
    _, y = make_textures(n_images=1, size=64, seed=0)
    y = y[0].copy()
    y[:, :20] = -1                          # already unlabelled
    a = scribbles(y, 0.05, seed=3, ignore_index=-1)
    b = scribbles(y, 0.05, seed=3, ignore_index=-1)
    np.testing.assert_array_equal(a, b)
    assert (a[:, :20] == -1).all()
    assert not np.array_equal(a, scribbles(y, 0.05, seed=4, ignore_index=-1))


def test_scribbles_fill_thin_regions_and_large_fractions():
    y = np.zeros((20, 20), np.int64)
    y[:, 9] = 1                              # one pixel wide: no room for the brush
    s = scribbles(y, 0.9, seed=0)
    assert int((s == 1).sum()) == 18 and int((s == 0).sum()) == round(0.9 * 380)
    np.testing.assert_array_equal(s[s != -100], y[s != -100])
    s = scribbles(y, 1.0, seed=0)
    np.testing.assert_array_equal(s, y)


def test_scribbles_namespace():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    _, y = make_textures(n_images=1, size=32, seed=0)
    s = scribbles(torch.asarray(y), 0.05, seed=0)
    assert isinstance(s, torch.Tensor) and s.dtype == torch.int64
    np.testing.assert_array_equal(s.numpy(), scribbles(y, 0.05, seed=0))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(fraction=0.0), ValueError, "fraction"),
    (dict(fraction=1.5), ValueError, "fraction"),
    (dict(width=0), ValueError, "width"),
    (dict(ignore_index=True), TypeError, "ignore_index"),
])
def test_scribbles_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        scribbles(np.zeros((8, 8), np.int64), **kwargs)


def test_scribbles_refuses_float_labels():
    with pytest.raises(ValueError, match="labels"):
        scribbles(np.zeros((8, 8)), 0.1)
