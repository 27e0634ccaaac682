"""The parts of :class:`arrseg.Segmenter`, one job per module.

:mod:`~arrseg.estimator.settings`
    The hyper-parameters, checked once per ``fit`` into a frozen
    :class:`~arrseg.estimator.settings.FitSettings`.
:mod:`~arrseg.estimator.inputs`
    The accepted forms of images and labels, and the per-channel
    normalisation.
:mod:`~arrseg.estimator.crops`
    Mini-batches of random crops, gathered on the images' device.
:mod:`~arrseg.estimator.training`
    The training loops (first-order and VarPro), the convergence monitor
    with early stopping, the validation scores and the progress bar.
:mod:`~arrseg.estimator.persistence`
    Saving and loading a fitted estimator through :mod:`arrseg.model_file`.

The estimator itself, :mod:`arrseg.segmenter`, orchestrates them.
"""
