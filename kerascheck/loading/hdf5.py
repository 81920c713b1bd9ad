"""Safe reads from HDF5 weight files: no links leaving the file, no external data.

A model file is untrusted input. HDF5 can point outside itself (external
links, external raw storage, virtual datasets) or alias one entry to another
(soft links), so the whole file is checked once before anything is read, and
every read goes through `child`/`read_array`, which check again on the way.
"""

from __future__ import annotations

import math
import os

import h5py
import numpy as np

from ..errors import KerascheckError, UnsafeModelError
from ..limits import MAX_ATTR_BYTES, MAX_HDF5_DEPTH, MAX_HDF5_NODES, check_bytes, clip


def open_file(source, path: str, probe_first: bool = True) -> h5py.File:
    """Open an HDF5 file read-only and refuse it if anything in it points elsewhere.

    `probe_first`: walk its structure in a child process first (`hdf5_probe`), so a
    damaged file that hangs or crashes the HDF5 library ends in a clean error."""
    if probe_first:
        from .hdf5_probe import probe

        probe(source, path, _size(source))
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


def _size(source) -> int:
    if hasattr(source, "getbuffer"):
        return source.getbuffer().nbytes
    return os.path.getsize(source)


def walk_metadata(handle: h5py.File, path: str) -> None:
    """Touch what a real read uses besides the data, through the low-level API (fast):
    every link, every dataset's storage size and chunk index, every attribute's
    header and value (size-checked). Run by the probe's child."""
    names = []

    def seen(name, info):
        if len(names) >= MAX_HDF5_NODES:
            return 1  # stop; check_file names the limit
        if info.type != h5py.h5l.TYPE_HARD or name.count(b"/") >= MAX_HDF5_DEPTH:
            return 1  # check_file names the link or the depth
        names.append(name)

    fid = handle.id
    fid.links.visit(seen, info=True)
    _touch_attributes(fid, path)
    for name in names:
        node = h5py.h5o.open(fid, name)
        _touch_attributes(node, path)
        if isinstance(node, h5py.h5d.DatasetID):
            node.get_storage_size()
            if node.get_create_plist().get_layout() == h5py.h5d.CHUNKED:
                node.get_num_chunks()


def _touch_attributes(node, path: str) -> None:
    for index in range(h5py.h5a.get_num_attrs(node)):
        attr = h5py.h5a.open(node, index=index)
        declared = math.prod(attr.shape or ()) * attr.dtype.itemsize
        if declared > MAX_ATTR_BYTES:
            raise KerascheckError(
                f"{path}: expected HDF5 attributes of at most {MAX_ATTR_BYTES} bytes, "
                f"found one of {declared}"
            )
        attr.read(np.empty(attr.shape or (), dtype=attr.dtype))


def check_file(handle: h5py.File, path: str) -> None:
    """Refuse soft and external links, and external or virtual datasets, anywhere.

    The walk is linear (each group is opened once, relative to its parent) and
    bounded in depth and node count, so a damaged or hostile file cannot make it slow.
    """
    count = 0
    stack = [(handle, 0)]
    while stack:
        group, depth = stack.pop()
        if depth > MAX_HDF5_DEPTH:
            raise KerascheckError(
                f"{path}: expected HDF5 groups nested at most {MAX_HDF5_DEPTH} deep, "
                f"found deeper ('{clip(group.name)}')"
            )
        for key in group.keys():
            count += 1
            if count > MAX_HDF5_NODES:
                raise KerascheckError(
                    f"{path}: expected at most {MAX_HDF5_NODES} HDF5 groups and datasets, "
                    "found more"
                )
            link = group.get(key, getlink=True)
            where = f"'{clip(group.name.rstrip('/') + '/' + key)}'"
            if not isinstance(link, h5py.HardLink):
                raise UnsafeModelError(
                    f"{path}: HDF5 entry {where} is a {type(link).__name__}; expected all data "
                    "stored inside the model file (kerascheck does not follow links)"
                )
            node = group.get(key)
            if isinstance(node, h5py.Group):
                stack.append((node, depth + 1))
            elif isinstance(node, h5py.Dataset) and (node.external or node.is_virtual):
                raise UnsafeModelError(
                    f"{path}: HDF5 dataset {where} stores its data outside the model file; "
                    "expected all data stored inside it"
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
    _check_size(dataset, what)
    if dataset.dtype.kind not in "biuf":
        raise KerascheckError(
            f"expected numeric weights in HDF5 dataset '{dataset.name}', "
            f"found dtype {dataset.dtype}"
        )
    try:
        return np.asarray(dataset[()])
    except (OSError, RuntimeError, ValueError) as exc:
        raise KerascheckError(f"HDF5 dataset '{dataset.name}' cannot be read ({exc})")


def _check_size(dataset: h5py.Dataset, what: str) -> None:
    """Refuse a dataset whose declared size is over the memory limit or bigger than
    what the file can hold, before anything is allocated for it."""
    shape = dataset.shape or ()
    nbytes = math.prod(shape) * dataset.dtype.itemsize
    name = f"HDF5 dataset '{clip(dataset.name)}'"
    check_bytes(nbytes, name, shape)
    if nbytes == 0:
        return
    stored = dataset.id.get_storage_size()
    compressed = bool(dataset.compression) or dataset.chunks is not None
    file_size = dataset.file.id.get_filesize()
    if stored < nbytes and not compressed or stored > file_size or stored * 1000 < nbytes:
        raise KerascheckError(
            f"{name} declares shape {tuple(shape)} ({nbytes} bytes) but the file stores "
            f"{stored} bytes for it; expected the weights written in the file"
        )


def _check_dataset(dataset: h5py.Dataset, path: str = "") -> None:
    if dataset.external or dataset.is_virtual:
        where = f"{path}: " if path else ""
        raise UnsafeModelError(
            f"{where}HDF5 dataset '{dataset.name}' stores its data outside the model file; "
            "expected data stored inside it"
        )


def get_attr(node, key: str):
    """An attribute's value, or None, after checking its declared size."""
    try:
        if key not in node.attrs:
            return None
        attr = h5py.h5a.open(node.id, key.encode())
        shape = attr.shape or ()
        declared = math.prod(shape) * attr.dtype.itemsize
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise KerascheckError(
            f"HDF5 attribute '{key}' of '{clip(node.name)}' cannot be read ({clip(exc)})"
        ) from None
    if declared > MAX_ATTR_BYTES:
        raise KerascheckError(
            f"expected HDF5 attribute '{key}' of '{clip(node.name)}' of at most "
            f"{MAX_ATTR_BYTES} bytes, found {declared}"
        )
    try:
        return node.attrs[key]
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise KerascheckError(
            f"HDF5 attribute '{key}' of '{clip(node.name)}' cannot be read ({clip(exc)})"
        ) from None


def text_attr(node, key: str):
    """A string attribute (h5py returns bytes or str depending on how it was written)."""
    value = get_attr(node, key)
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
    value = get_attr(node, key)
    if value is None:
        return []
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.ravel(value)]
    except UnicodeDecodeError:
        raise KerascheckError(
            f"HDF5 attribute '{key}' of '{clip(node.name)}' is not UTF-8 text"
        ) from None
