"""Accuracy beside fit time: Segmenter() defaults against scikit-image's
TrainableSegmenter defaults (multiscale_basic_features + a random forest of
100 trees), on the same images and labelled pixels.

The data, the two methods and the score are those of
``tools/accuracy_benchmark.py`` (loaded from the repository, so that the
script and the suite measure the same thing), at its ``--quick`` sizes so
that each fit stays well under 30 s:

- ``textures``: :func:`arrseg.data.make_textures`, train on one 96 x 192
  image, score the mean IoU on two more;
- ``coins``: the top half of ``skimage.data.coins()``, train on its left
  half, score the foreground IoU on its right half against a derived
  reference (watershed on the Sobel map, holes filled; not hand-made).

``labels`` is "dense" (every training pixel) or "2%" (the same scribbles,
:func:`arrseg.data.scribbles`, for both methods). ``track_iou`` fits and
scores once per round (unit "IoU"); ``time_fit`` times the fit alone (the
forest's counts its feature computation, as ``TrainableSegmenter.fit``).
Skipped (``n/a``) without scikit-image and scikit-learn.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .common import AsvSettings

_TOOL = Path(__file__).resolve().parents[2] / "tools" / "accuracy_benchmark.py"
_cache = {}


def _tool():
    """tools/accuracy_benchmark.py as a module (NotImplementedError: skip)."""
    if "tool" not in _cache:
        for name in ("skimage", "sklearn", "scipy"):
            if importlib.util.find_spec(name) is None:
                raise NotImplementedError(f"{name} is not installed")
        if not _TOOL.exists():
            raise NotImplementedError(f"{_TOOL} not found")
        spec = importlib.util.spec_from_file_location("accuracy_benchmark", _TOOL)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _cache["tool"] = module
    return _cache["tool"]


class Accuracy(AsvSettings):
    """IoU on held-out pixels and fit seconds, per method, data set and
    labelling."""

    params = (("arrseg", "skimage forest"), ("textures", "coins"), ("dense", "2%"))
    param_names = ("method", "dataset", "labels")
    #: the forest's dense fit takes seconds: fewer samples
    repeat = (2, 5, 20.0)

    def setup(self, method, dataset, labels):
        tool = _tool()
        key = ("data", dataset)
        if key not in _cache:
            _cache[key] = tool.load(dataset, quick=True)
        self.tool, self.ds = tool, _cache[key]
        self.labels = self.ds.y_sparse if labels == "2%" else self.ds.y_train
        self.method = "forest" if method == "skimage forest" else {}

    def _fit_predict(self):
        if self.method == "forest":
            return self.tool.forest_fit_predict(self.ds, self.labels)
        return self.tool.segmenter_fit_predict(self.ds, self.labels, self.method)

    def track_iou(self, method, dataset, labels):
        _, pred = self._fit_predict()
        return self.tool.score(self.ds, pred)

    track_iou.unit = "IoU"

    def time_fit(self, method, dataset, labels):
        if self.method == "forest":
            self.tool.forest_fit(self.ds, self.labels)
        else:
            self.tool.segmenter_fit(self.ds, self.labels, self.method)
