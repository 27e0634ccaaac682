"""Fit a Segmenter on synthetic shapes, then on a real image from a few labels.

Part 1 trains :class:`arrseg.Segmenter` on noisy synthetic disks and striped
squares (``arrseg.data.make_shapes``) with the default network and optimizer
(the residual network of depth 3, VarPro) and scores it on images it has
not seen.

Part 2 uses a real image found on every CPython install that ships IDLE: its
256 x 256 icon (``idlelib/Icons/idle_256.png``, a page of code with the
Python logo), read with a few lines of zlib. The reference segmentation
(background, page, blue snake, yellow snake) is derived from the colours;
the model sees only 2% of its pixels, scattered at random (the "few clicks"
use of ``ignore_index``), as uint8 RGB, and predicts every pixel.

Run from the repository root::

    python examples/segment_shapes.py

Nothing is downloaded. Part 2 is skipped when IDLE's icon is not installed.
"""

import os
import struct
import sys
import time
import zlib

import numpy as np

import arrseg
from arrseg.metrics import iou
from arrseg.segmenter import Segmenter


def ascii_maps(maps, symbols, step):
    """Every step-th pixel of label maps as characters, side by side."""
    rows = zip(*(m[::step] for m in maps))
    return "\n".join("    " + "   ".join("".join(symbols[v] for v in row[::step])
                                         for row in parts) for parts in rows)


def part_1_shapes():
    print("Part 1: synthetic shapes (background '.', disks 'o', stripes '#')")
    x, y = arrseg.data.make_shapes(n_images=6, size=96, seed=0)
    train_x, train_y, test_x, test_y = x[:4], y[:4], x[4:], y[4:]
    model = Segmenter(width=16, kernel_size=5)
    start = time.perf_counter()
    model.fit(train_x, train_y)
    print(f"  {model!r}: {model.n_iter_} iterations in "
          f"{time.perf_counter() - start:.1f} s, training loss "
          f"{model.loss_curve_[0]:.3f} -> {model.loss_curve_[-1]:.4f}")
    print(f"  mean IoU: training images {model.score(train_x, train_y):.3f}, "
          f"new images {model.score(test_x, test_y):.3f}")
    print(f"  IoU per class on the new images: "
          f"{np.round(iou(test_y, model.predict(test_x), 3), 3).tolist()}")
    print("  a new image, every 4th pixel: the truth | the prediction")
    print(ascii_maps([test_y[0], model.predict(test_x[0])], ".o#", 4))


# --- a minimal PNG reader (8-bit RGB or RGBA, not interlaced) -------------------

def read_png(path):
    """The image as a uint8 array (H, W, channels)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    channels = {2: 3, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path}: only 8-bit RGB(A) non-interlaced PNGs are read")
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    rows = raw.reshape(height, 1 + width * channels)
    out = np.zeros((height, width * channels), dtype=np.int32)
    prev = np.zeros(width * channels, dtype=np.int32)
    for r in range(height):
        kind, line = rows[r, 0], rows[r, 1:].astype(np.int32)
        if kind == 0:                                    # None
            cur = line
        elif kind == 2:                                  # Up
            cur = (line + prev) & 255
        else:                                            # Sub, Average, Paeth
            cur = line.copy()
            for i in range(len(cur)):
                a = cur[i - channels] if i >= channels else 0
                b = prev[i]
                if kind == 1:
                    cur[i] = (cur[i] + a) & 255
                elif kind == 3:
                    cur[i] = (cur[i] + (a + b) // 2) & 255
                else:
                    c = prev[i - channels] if i >= channels else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                    cur[i] = (cur[i] + pred) & 255
        out[r] = cur
        prev = cur
    return out.reshape(height, width, channels).astype(np.uint8)


def part_2_real_image():
    try:
        import idlelib
    except ImportError:
        print("Part 2 skipped: IDLE (idlelib) is not installed")
        return
    path = os.path.join(os.path.dirname(idlelib.__file__), "Icons", "idle_256.png")
    if not os.path.exists(path):
        print(f"Part 2 skipped: {path} does not exist")
        return
    rgba = read_png(path).astype(np.int32)
    r, g, b, alpha = (rgba[..., i] for i in range(4))
    # the reference segmentation, from the colours
    truth = np.full(r.shape, 1)                                    # the page
    truth[alpha < 128] = 0                                         # background
    truth[(alpha >= 128) & (b > r + 40)] = 2                       # blue snake
    truth[(alpha >= 128) & (r > b + 60) & (g > b + 20)] = 3        # yellow snake
    # what the model sees: RGB on a grey background, as uint8 (C, H, W)
    rgb = (rgba[..., :3] * alpha[..., None] + 128 * (255 - alpha[..., None])) // 255
    image = np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.uint8)
    rng = np.random.default_rng(0)
    clicks = np.where(rng.random(truth.shape) < 0.02, truth, -100)
    print(f"\nPart 2: {path}\n  {image.shape} uint8 image, "
          f"{int(np.sum(clicks >= 0))} labelled pixels of {truth.size} (2%)")
    model = Segmenter(width=8, kernel_size=5)
    start = time.perf_counter()
    model.fit(image, clicks)
    print(f"  {model!r}: {model.n_iter_} iterations in "
          f"{time.perf_counter() - start:.1f} s")
    print(f"  mean IoU on all {truth.size} pixels: {model.score(image, truth):.3f}; "
          f"per class (background, page, blue, yellow): "
          f"{np.round(iou(truth, model.predict(image), 4), 3).tolist()}")
    print("  every 8th pixel (' ' background, '.' page, 'b' blue, 'y' yellow): "
          "the colours' segmentation | the prediction")
    print(ascii_maps([truth, model.predict(image)], " .by", 8))


if __name__ == "__main__":
    part_1_shapes()
    part_2_real_image()
    sys.exit(0)
