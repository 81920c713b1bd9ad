"""kerascheck: verify what a saved Keras model computes, layer by layer.

`kerascheck.load(path)` reads a `.keras` or `.h5` file into an independent
NumPy engine; it never imports TensorFlow or Keras.
"""

from __future__ import annotations

from .errors import KerascheckError, UnsafeModelError, UnsupportedLayerError

__version__ = "0.1.0"
__all__ = ["load", "KerascheckError", "UnsafeModelError", "UnsupportedLayerError"]


def load(path, dtype: str = "float32"):
    """Read a saved model and rebuild it in the NumPy engine."""
    from .engine.model import EngineModel
    from .loading import read_model

    return EngineModel(read_model(path), dtype=dtype)
