"""Safe reads from HDF5 weight files: no links leaving the file, no external data."""

from __future__ import annotations

import h5py
import numpy as np

from ..errors import UnsafeModelError


def child(group: h5py.Group, path: str):
    """Return `group[path]`, refusing soft and external links on the way."""
    node = group
    for part in [p for p in path.split("/") if p]:
        link = node.get(part, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            raise UnsafeModelError(
                f"HDF5 entry '{node.name}/{part}' is a {type(link).__name__}; "
                "kerascheck reads only data stored inside the model file"
            )
        node = node[part]
    return node


def read_array(dataset) -> np.ndarray:
    """Read a dataset, refusing external and virtual storage."""
    if not isinstance(dataset, h5py.Dataset):
        raise UnsafeModelError(f"HDF5 entry '{dataset.name}' is not a dataset")
    if dataset.external or dataset.is_virtual:
        raise UnsafeModelError(
            f"HDF5 dataset '{dataset.name}' stores its data outside the model file; refused"
        )
    return np.asarray(dataset[()])


def text_attr(node, key: str):
    value = node.attrs.get(key)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def list_attr(node, key: str) -> list[str]:
    value = node.attrs.get(key)
    if value is None:
        return []
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.ravel(value)]
