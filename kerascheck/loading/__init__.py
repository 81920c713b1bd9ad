"""Read saved Keras models into a ModelSpec using only zipfile, json and h5py."""

from __future__ import annotations

import os

from ..errors import KerascheckError
from ..limits import clip, deadline, read_seconds
from .hdf5 import shapes_only
from .keras_zip import read_keras_zip
from .legacy_h5 import read_legacy_h5
from .spec import CallSpec, InputSpec, LayerSpec, ModelSpec, TensorRef

__all__ = ["read_model", "ModelSpec", "LayerSpec", "CallSpec", "InputSpec", "TensorRef"]

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def read_model(path, values: bool = True) -> ModelSpec:
    """Read a `.keras` archive or a legacy `.h5` file, recognised by content.

    `values=False` reads the weights' shapes and dtypes only, with every safety
    check of a full read: each weight is a lazily allocated zero array and
    `spec.values` is False, so the engine reports shapes and parameter counts
    but refuses to run (`summary` needs no more, and starts without reading
    hundreds of megabytes)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise KerascheckError(f"{path}: no such file; expected a .keras or .h5 model file")
    if os.path.isdir(path):
        raise KerascheckError(
            f"{path}: is a directory; expected a .keras or .h5 model file "
            "(TensorFlow SavedModel directories are not supported)"
        )
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise KerascheckError(f"{path}: expected a readable model file ({exc.strerror})")
    if not head:
        raise KerascheckError(f"{path}: the file is empty; expected a .keras or .h5 model file")
    if head.startswith(ZIP_MAGIC) or head.startswith(b"PK\x05\x06"):
        reader = read_keras_zip
    elif head == HDF5_MAGIC:
        reader = read_legacy_h5
    else:
        raise KerascheckError(
            f"{path}: expected a .keras zip archive or an HDF5 .h5 file, found neither "
            f"(first bytes {head!r})"
        )
    try:
        with deadline(read_seconds(os.path.getsize(path)), path):
            if values:
                return reader(path)
            with shapes_only():
                spec = reader(path)
            spec.values = False
            return spec
    except KerascheckError:
        raise
    except (
        KeyError, IndexError, TypeError, AttributeError, ValueError, RecursionError,
        OverflowError, UnicodeError,
    ) as exc:  # fmt: skip
        # A config shaped in a way no Keras version writes: say so instead of a traceback.
        raise KerascheckError(
            f"{path}: expected a well-formed Keras model file, found a malformed one "
            f"({type(exc).__name__}: {clip(exc)})"
        ) from None
    except (OSError, RuntimeError, SystemError, EOFError, MemoryError) as exc:
        # h5py's and zipfile's errors on damaged files
        raise KerascheckError(
            f"{path}: expected a readable model file, found a damaged one "
            f"({type(exc).__name__}: {clip(exc)})"
        ) from None
