"""Importing arrseg imports no GPU or reference library."""

import subprocess
import sys


def test_import_loads_neither_cupy_nor_torch():
    code = ("import sys, arrseg; arrseg.init_params(3, 4, 2); "
            "bad = [m for m in ('cupy', 'torch', 'array_api_strict') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"


def test_public_names():
    import arrseg

    for name in ("Params", "init_params", "predict_proba", "loss_and_grad"):
        assert name in arrseg.__all__ and hasattr(arrseg, name)
    assert arrseg.Params._fields == ("K", "b", "W", "c")
