"""Write the format-version-1 fixtures of ``tests/test_model_file_v2.py``.

Run once with the release that wrote format version 1 (commit 13d9cfd),
never with the current package::

    git -C . archive 13d9cfd | tar -x -C /tmp/arrseg_v1
    PYTHONPATH=/tmp/arrseg_v1 .venv/bin/python tests/data/make_v1_fixtures.py

Files written beside this script (each a few KB):

``v1_images.npy``                  float32 (3, 3, 24, 24): make_shapes(seed=0)
``v1_labels.npy``                  int64 (3, 24, 24)
``v1_segmenter_adam.npz``          Segmenter (adam, crops) fitted on images[:2]
``v1_segmenter_adam_proba.npy``    its predict_proba(images)
``v1_segmenter_varpro.npz``        Segmenter (varpro) fitted on images[:2]
``v1_segmenter_varpro_proba.npy``  its predict_proba(images)
``v1_params.npz``                  model_file.save of init_params(3, 4, 3, 5)
``v1_params_proba.npy``            arrseg.predict_proba(images, those params)
``v1_settings.json``               the Segmenter settings used, to refit them
"""

import json
import os

import numpy as np

#: The Segmenters of the fixture: the same settings refitted by the current
#: package at depth 0 must give the same bits.
SETTINGS = {
    "adam": dict(width=4, kernel_size=3, optimizer="adam", max_iter=4, batch_size=2,
                 crop_size=16, smoothness=1e-3, seed=0),
    "varpro": dict(width=4, kernel_size=5, optimizer="varpro", max_iter=3,
                   class_weight="balanced", seed=0),
}


def main():
    import arrseg
    print("arrseg from", arrseg.__file__)
    from arrseg import model_file
    from arrseg.segmenter import Segmenter

    here = os.path.dirname(os.path.abspath(__file__))
    assert arrseg.model_file.FORMAT_VERSION == 1, "run with the version-1 release"
    x, y = arrseg.data.make_shapes(n_images=3, size=24, seed=0)
    np.save(os.path.join(here, "v1_images.npy"), x)
    np.save(os.path.join(here, "v1_labels.npy"), y)
    for name, settings in SETTINGS.items():
        model = Segmenter(**settings).fit(x[:2], y[:2])
        model.save(os.path.join(here, f"v1_segmenter_{name}.npz"))
        np.save(os.path.join(here, f"v1_segmenter_{name}_proba.npy"),
                model.predict_proba(x))
    params = arrseg.init_params(3, 4, 3, kernel_size=5, seed=1)
    params = params._replace(b=params.b + 0.1)
    model_file.save(os.path.join(here, "v1_params.npz"), params, {"note": "v1"})
    np.save(os.path.join(here, "v1_params_proba.npy"),
            arrseg.predict_proba(x, params, activation="relu"))
    with open(os.path.join(here, "v1_settings.json"), "w") as f:
        json.dump(SETTINGS, f, indent=1)


if __name__ == "__main__":
    main()
