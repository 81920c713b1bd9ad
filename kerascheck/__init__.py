"""kerascheck: verify what a saved Keras model computes, layer by layer.

`kerascheck.load(path)` reads a `.keras` or `.h5` file into an independent
NumPy engine; it never imports TensorFlow or Keras.
"""

from __future__ import annotations

import os

# OpenBLAS' idle threads otherwise spin for 2**28 cycles (about 0.1 s) after each
# product, on the cores the engine's split passes need next (engine/threads.py);
# 2**18 (about 0.1 ms) still bridges back-to-back products. Read when NumPy loads
# OpenBLAS, so it is set before anything here imports NumPy.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")

from .errors import KerascheckError, UnsafeModelError, UnsupportedLayerError

__version__ = "0.1.0"
__all__ = ["load", "KerascheckError", "UnsafeModelError", "UnsupportedLayerError"]


def load(path, dtype: str = "float32", values: bool = True):
    """Read a saved model and rebuild it in the NumPy engine.

    `values=False` reads only the weights' shapes: output shapes and parameter
    counts are there, running is refused."""
    from .engine.model import EngineModel
    from .loading import read_model

    return EngineModel(read_model(path, values=values), dtype=dtype)
