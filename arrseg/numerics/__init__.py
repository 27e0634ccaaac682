"""The numerics, written against the Python array API standard only.

These modules are the specification of the network: the convolution operator
(:mod:`.convolution`, the direct method, and :mod:`.fft_convolution`, the
same products through the FFT), activations (:mod:`.activations`), the per-pixel
classifier and loss (:mod:`.classifier`) and the forward/backward pass that
combines them (:mod:`.forward_backward`). Every function takes ``xp``
explicitly and assumes validated input; the public, checked entry points are
in :mod:`arrseg.network`.
"""
