"""A fitted Segmenter to and from a model file (:mod:`arrseg.model_file`).

The file holds the parameters as arrays and, as JSON metadata, the
hyper-parameters, the normalisation, the class weights and the training
record, under ``"estimator": "arrseg.Segmenter"``.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import is_array_api_obj

from .._backend import to_numpy

__all__ = ["ESTIMATOR_TAG", "load_segmenter", "save_segmenter"]

#: The metadata's "estimator" entry of a Segmenter's file.
ESTIMATOR_TAG = "arrseg.Segmenter"


def save_segmenter(est, path):
    """Write the fitted estimator ``est`` to ``path``."""
    from .. import model_file

    hyper = {}
    for name, value in est.get_params().items():
        if is_array_api_obj(value) or isinstance(value, np.ndarray):
            value = to_numpy(value).tolist()
        elif isinstance(value, (tuple, list)):
            value = list(value)
        hyper[name] = value
    metadata = {
        "estimator": ESTIMATOR_TAG,
        "hyper_parameters": hyper,
        "in_channels": int(est.in_channels_),
        "n_classes": int(est.n_classes_),
        "mean": [float(v) for v in est.mean_],
        "std": [float(v) for v in est.std_],
        "class_weight": (None if est.class_weight_ is None
                         else [float(v) for v in est.class_weight_]),
        "n_iter": int(est.n_iter_),
        "loss_curve": [float(v) for v in est.loss_curve_],
        "validation_scores": [float(v) for v in est.validation_scores_],
        "validation_loss_curve": [float(v) for v in est.validation_loss_curve_],
        "validation_score": est.validation_score_,
    }
    model_file.save(path, est.params_, metadata)


def load_segmenter(cls, path, *, xp=None, device=None):
    """A fitted ``cls`` (a Segmenter class) from a file of :func:`save_segmenter`.

    Raises
    ------
    arrseg.model_file.ModelFileError
        If the file is not a model file, or was not written by
        ``Segmenter.save``.
    """
    from .. import model_file

    params, meta = model_file.load(path, xp=xp, device=device)
    if meta.get("estimator") != ESTIMATOR_TAG:
        raise model_file.ModelFileError(
            f"cannot load {str(path)!r} as a Segmenter: its metadata 'estimator' "
            f"is {meta.get('estimator')!r}, expected 'arrseg.Segmenter' (it was "
            "not written by Segmenter.save; use arrseg.model_file.load)")
    valid = cls._get_param_names()
    est = cls(**{k: v for k, v in meta["hyper_parameters"].items() if k in valid})
    est.params_ = params
    est.in_channels_ = int(meta["in_channels"])
    est.n_classes_ = int(meta["n_classes"])
    est.classes_ = np.arange(est.n_classes_)
    est.mean_ = np.asarray(meta["mean"], dtype=np.float64)
    est.std_ = np.asarray(meta["std"], dtype=np.float64)
    est.class_weight_ = (None if meta["class_weight"] is None
                         else np.asarray(meta["class_weight"], dtype=np.float64))
    est.n_iter_ = int(meta["n_iter"])
    est.loss_curve_ = list(meta["loss_curve"])
    est.validation_scores_ = list(meta["validation_scores"])
    est.validation_loss_curve_ = list(meta["validation_loss_curve"])
    est.validation_score_ = meta["validation_score"]
    return est
