"""Mini-batches of random crops (or whole images), gathered on the device.

Crops are placed around a labelled pixel drawn at random, so sparse labels
are not wasted on empty crops. On the sides where a crop is inside the
image (or everywhere with periodic boundaries), its border of p pixels is
marked ``ignore_index``: there the network sees the crop's padding, not the
image. p is the network's whole receptive halo
(:func:`arrseg.numerics.residual.receptive_halo`): s // 2 for the one-layer
network, plus d_j (s_r // 2) per residual layer (twice that per symmetric
layer), since every layer's padding reaches that much further in.

Where the work happens:

- The *plan* (which image, which corner, which sides get the ignore
  border) is drawn on the host from NumPy's generator, so the same seed
  gives the same crops on every backend. It is drawn for many epochs at a
  time (:data:`PLAN_CROPS` crops) and sent to the device as three small
  int64 arrays: each crop's flat offset in its group's images, in its
  group's labels, and its border code (4 bits: top, bottom, left, right).
- Each step then *gathers* on the device: the offsets of the crop's pixels
  (a (C, ch, cw) table per group, made once) are added to the crops'
  origins, and one ``take`` from the flattened images gives the (B, C, ch,
  cw) batch; the labels likewise, and the ignore border is one ``take``
  from the 16 possible border masks and one ``where``. No image or label
  data crosses to the host, and no value is read back.

Whole images (every image fits in one crop, one size): a step is a slice
of the image indices' plan, or the whole batch when it holds every image.

On NumPy arrays, where the host is the device, the same plan is cut out
by slicing, a cheaper copy than a gather there.
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import is_numpy_namespace

from .settings import DEFAULT_CROP_SIZE

__all__ = ["PLAN_CROPS", "CropSampler"]

#: Crops drawn (and sent to the device) at a time: about 1.5 MiB of plan.
PLAN_CROPS = 65536

# border codes: which sides of a crop get the ignore border
_TOP, _BOTTOM, _LEFT, _RIGHT = 1, 2, 4, 8


class CropSampler:
    """Batches of (images (B, C, ch, cw), labels (B, ch, cw)) for training.

    Parameters
    ----------
    xs : list of arrays (N_g, C, H_g, W_g)
        The normalised training images, on the device.
    ys : list of int64 arrays (N_g, H_g, W_g)
        Their labels, on the same device.
    host_labels : list of int64 ndarrays
        The same labels on the host (read once at fit), for the plan.
    settings : FitSettings
    rng : numpy.random.Generator
    xp : namespace
    dev : device

    Attributes
    ----------
    steps_per_epoch : int
        Steps that cover the training pixels once.
    batch_size : int
        Crops per step (at most as many as cover the pixels once).
    whole : bool
        True when the batches are whole images.
    """

    def __init__(self, xs, ys, host_labels, settings, rng, xp, dev):
        self.xs, self.ys = xs, ys
        self.xp, self.dev, self.rng = xp, dev, rng
        self.ignore = settings.ignore_index
        self.periodic = settings.boundary != "zeros"
        self.halo = settings.halo
        self.images = [(g, n) for g, x in enumerate(xs) for n in range(int(x.shape[0]))]
        #: NumPy arrays: the host is the device, crops are sliced
        self.on_host = is_numpy_namespace(xp)
        H = min(int(x.shape[2]) for x in xs)
        W = min(int(x.shape[3]) for x in xs)
        crop = DEFAULT_CROP_SIZE if settings.crop_size is None else settings.crop_size
        self.whole = len(xs) == 1 and H <= crop and W <= crop
        self.crop = (min(crop, H), min(crop, W))
        total_pixels = sum(int(x.shape[0]) * int(x.shape[2]) * int(x.shape[3])
                           for x in xs)
        batch = settings.batch_size
        if self.whole:
            self.batch_size = min(batch, len(self.images))
            self.steps_per_epoch = math.ceil(len(self.images) / self.batch_size)
        else:
            # no more crops per step than it takes to cover the pixels once
            crop_pixels = self.crop[0] * self.crop[1]
            self.batch_size = min(batch, math.ceil(total_pixels / crop_pixels))
            self.steps_per_epoch = math.ceil(total_pixels / (self.batch_size * crop_pixels))
            self.labelled = [np.flatnonzero(host_labels[g][n].reshape(-1) != self.ignore)
                             for g, n in self.images]
            self.shapes = [tuple(int(v) for v in x.shape) for x in xs]
            if not self.on_host:
                self._tables()
        self.order = []
        # steps left to plan: the plan never runs past the fit's last step
        self.unplanned = settings.max_iter * self.steps_per_epoch
        self.every_image = self.whole and self.batch_size == len(self.images)
        self._plan = None if self.every_image else self._draw_plan()

    # -- device tables, made once ---------------------------------------------

    def _tables(self):
        """Flat views and the pixel-offset tables of every group, the border
        masks and the ignore label, on the device."""
        xp, dev = self.xp, self.dev
        ch, cw = self.crop
        self.x_flat = [xp.reshape(x, (-1,)) for x in self.xs]
        self.y_flat = [xp.reshape(y, (-1,)) for y in self.ys]
        i = xp.arange(ch, dtype=xp.int64, device=dev)[:, None]
        j = xp.arange(cw, dtype=xp.int64, device=dev)[None, :]
        self.y_offsets, self.x_offsets = [], []
        for _, C, H, W in self.shapes:
            pixel = i * W + j                                        # (ch, cw)
            channel = xp.arange(C, dtype=xp.int64, device=dev) * (H * W)
            self.y_offsets.append(pixel)
            self.x_offsets.append(channel[:, None, None] + pixel[None, ...])
        # masks[code] is True on the ignore border of the sides in code
        p = self.halo
        code = xp.arange(16, dtype=xp.int64, device=dev)[:, None, None]

        def side(bit, where):
            return ((code // bit) % 2 == 1) & where[None, ...]

        rows = xp.broadcast_to(i, (ch, cw))
        cols = xp.broadcast_to(j, (ch, cw))
        self.masks = (side(_TOP, rows < p) | side(_BOTTOM, rows >= ch - p)
                      | side(_LEFT, cols < p) | side(_RIGHT, cols >= cw - p))
        self.ignore_value = xp.full((), self.ignore, dtype=xp.int64, device=dev)

    # -- the plan, drawn on the host -----------------------------------------

    def _next_images(self, count):
        out = []
        while len(out) < count:
            if not self.order:
                self.order = list(self.rng.permutation(len(self.images)))
            out.append(self.order.pop())
        return out

    def _draw_crop(self, i):
        """(group, image in the group, top row, left column, border code)."""
        g, n = self.images[i]
        _, C, H, W = self.shapes[g]
        ch, cw = self.crop
        labelled = self.labelled[i]
        if labelled.size:
            h0, w0 = divmod(int(labelled[self.rng.integers(labelled.size)]), W)
            r = int(self.rng.integers(max(0, h0 - ch + 1), min(h0, H - ch) + 1))
            c = int(self.rng.integers(max(0, w0 - cw + 1), min(w0, W - cw) + 1))
        else:
            r = int(self.rng.integers(0, H - ch + 1))
            c = int(self.rng.integers(0, W - cw + 1))
        code = 0
        if self.halo:
            code |= _TOP if (r > 0 or self.periodic) else 0
            code |= _BOTTOM if (r + ch < H or self.periodic) else 0
            code |= _LEFT if (c > 0 or self.periodic) else 0
            code |= _RIGHT if (c + cw < W or self.periodic) else 0
        return g, n, r, c, code

    def _draw_plan(self):
        """The next steps (PLAN_CROPS // batch_size at most), sent to the device.

        Per step, the crops are sorted by group (one gather per group);
        ``segments`` lists (group, start, stop) of each step's crops.
        """
        xp, dev = self.xp, self.dev
        B = self.batch_size
        n_steps = max(1, min(PLAN_CROPS // B, self.unplanned))
        self.unplanned -= n_steps
        if self.whole:
            idx = [sorted(self._next_images(B)) for _ in range(n_steps)]
            table = xp.asarray(np.asarray(idx, dtype=np.int64).reshape(-1), device=dev)
            return {"index": table, "steps": n_steps, "next": 0}
        rows, segments = [], []
        for _ in range(n_steps):
            crops = sorted((self._draw_crop(i) for i in self._next_images(B)),
                           key=lambda t: t[0])
            start = len(rows)
            bounds = []
            for k, crop in enumerate(crops):
                if k == 0 or crop[0] != crops[k - 1][0]:
                    bounds.append([crop[0], start + k, start + k + 1])
                else:
                    bounds[-1][2] = start + k + 1
            segments.append(bounds)
            rows.extend(crops)
        plan = {"segments": segments, "steps": n_steps, "next": 0}
        if self.on_host:
            plan["crops"] = rows
            return plan
        # flat offsets of each crop's origin in its group's images and labels
        origins = []
        for g, n, r, c, code in rows:
            _, C, H, W = self.shapes[g]
            origins.append(((n * C * H + r) * W + c, (n * H + r) * W + c, code))
        table = xp.asarray(np.asarray(origins, dtype=np.int64), device=dev)  # (S B, 3)
        plan.update(x0=table[:, 0], y0=table[:, 1], code=table[:, 2])
        return plan

    # -- the batches, gathered on the device -----------------------------------

    def batch(self):
        """The next mini-batch: images (B, C, ch, cw), int64 labels (B, ch, cw)."""
        if self.every_image:
            return self.xs[0], self.ys[0]
        plan = self._plan
        if plan is None or plan["next"] == plan["steps"]:
            plan = self._plan = self._draw_plan()
        t = plan["next"]
        plan["next"] = t + 1
        xp, B = self.xp, self.batch_size
        if self.whole:
            idx = plan["index"][t * B:(t + 1) * B]
            return xp.take(self.xs[0], idx, axis=0), xp.take(self.ys[0], idx, axis=0)
        if self.on_host:
            return self._sliced(plan["crops"][t * B:(t + 1) * B])
        xb, yb = [], []
        ch, cw = self.crop
        for g, start, stop in plan["segments"][t]:
            n = stop - start
            C = self.shapes[g][1]
            x_idx = plan["x0"][start:stop][:, None, None, None] + self.x_offsets[g]
            y_idx = plan["y0"][start:stop][:, None, None] + self.y_offsets[g]
            xb.append(xp.reshape(xp.take(self.x_flat[g], xp.reshape(x_idx, (-1,))),
                                 (n, C, ch, cw)))
            yb.append(xp.reshape(xp.take(self.y_flat[g], xp.reshape(y_idx, (-1,))),
                                 (n, ch, cw)))
        x = xb[0] if len(xb) == 1 else xp.concat(xb, axis=0)
        y = yb[0] if len(yb) == 1 else xp.concat(yb, axis=0)
        if self.halo:
            border = xp.take(self.masks, plan["code"][t * B:(t + 1) * B], axis=0)
            y = xp.where(border, self.ignore_value, y)
        return x, y

    def _sliced(self, crops):
        """NumPy's batch: the same crops as the gather, by slicing (where
        the host is the device, a slice is a cheaper copy than a gather)."""
        ch, cw = self.crop
        p = self.halo
        xb = np.stack([self.xs[g][n, :, r:r + ch, c:c + cw] for g, n, r, c, _ in crops])
        yb = np.stack([self.ys[g][n, r:r + ch, c:c + cw] for g, n, r, c, _ in crops])
        for y, (_, _, _, _, code) in zip(yb, crops):
            if code & _TOP:
                y[:p] = self.ignore
            if code & _BOTTOM:
                y[ch - p:] = self.ignore
            if code & _LEFT:
                y[:, :p] = self.ignore
            if code & _RIGHT:
                y[:, cw - p:] = self.ignore
        return xb, yb
