"""Safe reads from HDF5 weight files: no links leaving the file, no external data.

A model file is untrusted input. HDF5 can point outside itself (external
links, external raw storage, virtual datasets) or alias one entry to another
(soft links), so the whole file is checked once before anything is read, and
every read goes through `child`/`read_array`, which check again on the way.
"""

from __future__ import annotations

import h5py
import numpy as np

from ..errors import KerascheckError, UnsafeModelError


def open_file(source, path: str) -> h5py.File:
    """Open an HDF5 file read-only and refuse it if anything in it points elsewhere."""
    try:
        handle = h5py.File(source, "r")
    except (OSError, ValueError) as exc:
        raise KerascheckError(
            f"{path}: expected a readable HDF5 file, found an unreadable one ({exc})"
        )
    try:
        check_file(handle, path)
    except BaseException:
        handle.close()
        raise
    return handle


def check_file(handle: h5py.File, path: str) -> None:
    """Refuse soft and external links, and external or virtual datasets, anywhere."""
    found = []

    def visit(name: str, link):
        # Never raise inside h5py's visitor (it holds a lock); stop with a truthy value.
        if not isinstance(link, h5py.HardLink):
            found.append(f"HDF5 entry '/{name}' is a {type(link).__name__}")
            return True
        node = handle.get(name)
        if isinstance(node, h5py.Dataset) and (node.external or node.is_virtual):
            found.append(f"HDF5 dataset '/{name}' stores its data outside the model file")
            return True
        return None

    try:
        handle.visititems_links(visit)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise KerascheckError(f"{path}: expected a readable HDF5 file, found a damaged one ({exc})")
    if found:
        raise UnsafeModelError(
            f"{path}: {found[0]}; expected all data stored inside the model file "
            "(kerascheck does not follow links or read other files)"
        )


def child(group: h5py.Group, path: str):
    """Return `group[path]` or None if absent, refusing soft and external links on the way."""
    node = group
    for part in [p for p in path.split("/") if p]:
        if not isinstance(node, h5py.Group):
            return None
        link = node.get(part, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            raise UnsafeModelError(
                f"HDF5 entry '{node.name.rstrip('/')}/{part}' is a {type(link).__name__}; "
                "expected data stored inside the model file (kerascheck does not follow links)"
            )
        node = node[part]
    return node


def read_array(dataset, what: str = "") -> np.ndarray:
    """Read a numeric dataset, refusing external and virtual storage."""
    if not isinstance(dataset, h5py.Dataset):
        found = "nothing" if dataset is None else f"a {type(dataset).__name__} '{dataset.name}'"
        raise KerascheckError(
            f"expected a weight dataset{' ' + what if what else ''}, found {found}"
        )
    _check_dataset(dataset)
    if dataset.dtype.kind not in "biuf":
        raise KerascheckError(
            f"expected numeric weights in HDF5 dataset '{dataset.name}', "
            f"found dtype {dataset.dtype}"
        )
    try:
        return np.asarray(dataset[()])
    except (OSError, RuntimeError, ValueError) as exc:
        raise KerascheckError(f"HDF5 dataset '{dataset.name}' cannot be read ({exc})")


def _check_dataset(dataset: h5py.Dataset, path: str = "") -> None:
    if dataset.external or dataset.is_virtual:
        where = f"{path}: " if path else ""
        raise UnsafeModelError(
            f"{where}HDF5 dataset '{dataset.name}' stores its data outside the model file; "
            "expected data stored inside it"
        )


def text_attr(node, key: str):
    """A string attribute (h5py returns bytes or str depending on how it was written)."""
    value = node.attrs.get(key)
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise KerascheckError(f"HDF5 attribute '{key}' of '{node.name}' is not UTF-8 text")
    if value is not None and not isinstance(value, str):
        raise KerascheckError(
            f"expected text in HDF5 attribute '{key}' of '{node.name}', "
            f"found {type(value).__name__}"
        )
    return value


def list_attr(node, key: str) -> list[str]:
    """A list-of-strings attribute such as `layer_names` or `weight_names`."""
    value = node.attrs.get(key)
    if value is None:
        return []
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.ravel(value)]
