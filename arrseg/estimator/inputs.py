"""Images and labels in the forms the Segmenter accepts, and their normalisation.

Forms: one image (H, W) or (C, H, W), a batch (N, C, H, W), or a list of
(H, W) / (C, H, W) images, of different sizes if need be. They become
*groups*: (N, C, H, W) arrays of one size each (a list of one-size images
is stacked into one group). Labels come in the matching form and become
int64 (N, H, W) maps, one per group.

Normalisation: per channel, ``(x - mean) / std`` over all pixels of the
training images, computed on the images' device in float64 (two passes)
and read back once per ``fit``.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj

from .._backend import device, image_float_dtype, refuse_masked, to_numpy

__all__ = ["as_array", "image_groups", "label_groups", "normalisation", "normalise",
           "reshape_out"]


def as_array(a, name):
    """An array API array as is; anything else through numpy.asarray.
    Masked arrays are refused (:func:`arrseg._backend.refuse_masked`)."""
    refuse_masked(name, a)
    if is_array_api_obj(a):
        return a
    try:
        return np.asarray(a)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}") from None


def image_groups(images, name="images"):
    """The accepted image forms -> (list of (N, C, H, W) arrays, form).

    form is "HW", "CHW", "NCHW" or "list". A list of images of one shape is
    stacked into one group; otherwise each image is its own group. Every
    group's dtype is checked (float32, float64, integer or bool).
    """
    groups, form = _groups(images, name)
    xp = array_namespace(groups[0])
    for g in groups:
        image_float_dtype(xp, g.dtype, name)
    return groups, form


def _groups(images, name):
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError(f"{name} must not be an empty list")
        arrays = [as_array(a, f"{name}[{i}]") for i, a in enumerate(images)]
        for i, a in enumerate(arrays):
            if a.ndim not in (2, 3):
                raise ValueError(
                    f"{name}[{i}] must be one image, (H, W) or (C, H, W), got shape "
                    f"{tuple(a.shape)}")
        xp = array_namespace(arrays[0])
        arrays = [a[None, ...] if a.ndim == 2 else a for a in arrays]  # (C, H, W)
        channels = {int(a.shape[0]) for a in arrays}
        if len(channels) > 1:
            raise ValueError(f"{name} must all have the same number of channels, got "
                             f"{sorted(channels)} (shapes "
                             f"{[tuple(a.shape) for a in arrays]})")
        if len({tuple(a.shape) for a in arrays}) == 1:
            return [xp.stack(arrays, axis=0)], "list"
        return [a[None, ...] for a in arrays], "list"
    a = as_array(images, name)
    if a.ndim == 2:
        return [a[None, None, ...]], "HW"
    if a.ndim == 3:
        return [a[None, ...]], "CHW"
    if a.ndim == 4:
        return [a], "NCHW"
    raise ValueError(f"{name} must be one image (H, W) or (C, H, W), a batch "
                     f"(N, C, H, W) or a list of images; got shape {tuple(a.shape)}")


def label_groups(labels, groups, form, name="labels"):
    """Labels in the form matching the images -> list of host int64 (N, H, W),
    one per image group (read to the host once, at fit)."""
    if form == "list":
        if not isinstance(labels, (list, tuple)):
            raise TypeError(f"{name} must be a list of (H, W) label maps, one per "
                            f"image, when the images are a list; got "
                            f"{type(labels).__name__}")
        n_images = sum(int(g.shape[0]) for g in groups)
        if len(labels) != n_images:
            raise ValueError(f"{name} has {len(labels)} label maps but there are "
                             f"{n_images} images")
        maps = [_host_labels(lab, f"{name}[{i}]") for i, lab in enumerate(labels)]
        sizes = [tuple(int(n) for n in g.shape[2:]) for g in groups
                 for _ in range(int(g.shape[0]))]
        for i, (m, size) in enumerate(zip(maps, sizes)):
            if m.shape != size:
                raise ValueError(f"{name}[{i}] must have shape (H, W) = {size} to "
                                 f"match images[{i}], got shape {m.shape}")
        return [np.stack(maps)] if len(groups) == 1 else [m[None] for m in maps]
    lab = _host_labels(labels, name)
    x = groups[0]
    if form == "NCHW":
        image_shape, want = tuple(x.shape), (int(x.shape[0]),) + tuple(x.shape[2:])
    else:
        image_shape = tuple(x.shape[1:] if form == "CHW" else x.shape[2:])
        want = tuple(x.shape[2:])
    if lab.shape != want:
        hint = ""
        if form == "CHW" and lab.ndim == 3:
            hint = (" (a 3-d image is read as one (C, H, W) image; for a batch of "
                    "single-channel images pass images[:, None], shape (N, 1, H, W))")
        layout = "(N, H, W)" if form == "NCHW" else "(H, W)"
        raise ValueError(f"{name} must have shape {layout} = {want} to match images "
                         f"of shape {image_shape}, got shape {lab.shape}{hint}")
    return [lab if form == "NCHW" else lab[None]]


def _host_labels(labels, name):
    refuse_masked(name, labels)
    a = to_numpy(labels) if is_array_api_obj(labels) else np.asarray(labels)
    if a.dtype == bool:
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array of class indices, got "
                        f"dtype {a.dtype}")
    if a.dtype == np.uint64 and a.size and int(a.max()) > np.iinfo(np.int64).max:
        # astype(int64) would wrap them to negative values (to ignore_index)
        raise ValueError(f"{name} holds the value {int(a.max())}, beyond int64: class "
                         "indices must be small non-negative integers")
    return a.astype(np.int64)


def normalisation(groups, xp):
    """Per-channel mean and standard deviation over all pixels.

    Computed on the device in float64, two passes, on the images divided by
    a power of two near each channel's largest magnitude: exact, so the
    result is the unscaled one's, and images near float64's largest value
    do not overflow the sums of squares. One read-back of the 3 C numbers.
    Non-finite images are refused here, once per fit.

    Returns
    -------
    mean, std : float64 ndarray (C,)
        std is 1 where a channel is constant.
    """
    n = sum(int(g.shape[0]) * int(g.shape[2]) * int(g.shape[3]) for g in groups)
    f64 = [xp.astype(g, xp.float64) for g in groups]
    # per-channel scale: 2**floor(log2 max |x|), 1 for an all-zero or
    # non-finite channel (refused below)
    top = None
    for g in f64:
        m = xp.max(xp.abs(g), axis=(0, 2, 3))
        top = m if top is None else xp.maximum(top, m)
    usable = (top > 0) & xp.isfinite(top)
    power = xp.floor(xp.log2(xp.where(usable, top, xp.ones_like(top))))
    scale = xp.pow(xp.full_like(top, 2.0), power)
    unit = [g / scale[:, None, None] for g in f64]          # |entries| < 2
    mean = sum(xp.sum(g, axis=(0, 2, 3)) for g in unit) / n
    var = sum(xp.sum((g - mean[:, None, None]) ** 2, axis=(0, 2, 3))
              for g in unit) / n
    both = to_numpy(xp.stack([mean, var, scale]))           # the one read-back
    if not (np.all(np.isfinite(both[0])) and np.all(np.isfinite(both[1]))):
        raise ValueError("images must be finite, got NaN or inf values")
    mean, std = both[0] * both[2], np.sqrt(both[1]) * both[2]
    return mean, np.where(std > 0, std, 1.0)


def normalise(x, mean, std, dtype, xp):
    """(x - mean) / std per channel, in ``dtype``, on x's device.

    The 2 C numbers travel to the device (once per call): no image data
    crosses.
    """
    dev = device(x)
    m = xp.asarray(mean, dtype=dtype, device=dev)[:, None, None]
    s = xp.asarray(std, dtype=dtype, device=dev)[:, None, None]
    return (xp.astype(x, dtype) - m) / s


def reshape_out(out, form):
    """Per-group results back in the images' form: the array for a batch,
    the image for one image, a list of images for a list."""
    if form == "NCHW":
        return out[0]
    if form in ("HW", "CHW"):
        return out[0][0, ...]
    return [a[i, ...] for a in out for i in range(int(a.shape[0]))]
