"""Safe reads from HDF5 weight files: no links leaving the file, no external data.

A model file is untrusted input. HDF5 can point outside itself (external
links, external raw storage, virtual datasets) or alias one entry to another
(soft links), so the whole file is walked once before anything is read (`scan`,
in the probe's child process, `hdf5_probe`), and every check is made on the walk.
The walk returns the file's structure as plain data: each group's entries and
attributes, each dataset's shape, dtype and storage. Readers navigate that
(`Group`, `Dataset`, `child`), and `read_array` opens the file itself only to
read a dataset's values: a shapes-only read (`shapes_only`) never opens it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from ..errors import KerascheckError, UnsafeModelError
from ..limits import MAX_ATTR_BYTES, MAX_HDF5_DEPTH, MAX_HDF5_NODES, check_bytes, clip

_VALUES = contextvars.ContextVar("kerascheck_read_values", default=True)


@contextlib.contextmanager
def shapes_only():
    """Within it, `read_array` checks every dataset exactly as for a real read but reads
    none of its data: it returns zeros of the dataset's shape and dtype, which NumPy
    allocates lazily (no page is touched until written). For commands that need the
    weights' shapes only (`summary`)."""
    token = _VALUES.set(False)
    try:
        yield
    finally:
        _VALUES.reset(token)


def reading_values() -> bool:
    """False inside `shapes_only`."""
    return _VALUES.get()


# ------------------------------------------------------------------ the structure


@dataclass(frozen=True)
class NotText:
    """An attribute holding something other than text (numbers, an empty value):
    what readers of text attributes need to know about it."""

    type_name: str
    size: int


@dataclass(eq=False)
class Group:
    name: str
    children: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)

    def keys(self):
        return self.children.keys()

    def __contains__(self, key) -> bool:
        return key in self.children


@dataclass(eq=False)
class Dataset:
    name: str
    shape: tuple
    dtype: str  # NumPy's dtype.str (`<f4`)
    kind: str  # NumPy's dtype.kind (`f`)
    itemsize: int
    dtype_text: str  # as NumPy prints it (`float32`), for messages
    stored: int  # bytes the file stores for it
    chunked: bool  # compressed or chunked: it may store fewer bytes than it declares
    file: File


@dataclass(eq=False)
class File(Group):
    """The root group, the file's size, and the open file while values are read."""

    size: int = 0
    handle: h5py.File | None = None


@contextlib.contextmanager
def open_file(source, path: str):
    """The structure of an HDF5 file (the root `File`), refused if anything in it points
    elsewhere, with the file open for `read_array` when values are read.

    The walk runs in a child process first (`hdf5_probe`), so a damaged file that hangs
    or crashes the HDF5 library ends in a clean error, and hands the structure back."""
    from .hdf5_probe import probe

    before = os.stat(source) if isinstance(source, (str, os.PathLike)) else None
    root = _build(probe(source, path, _size(source)))
    if not reading_values():
        yield root
        return
    try:
        root.handle = h5py.File(source, "r")
    except (OSError, ValueError) as exc:
        raise KerascheckError(
            f"{path}: expected a readable HDF5 file, found an unreadable one ({exc})"
        )
    with root.handle:
        if before is not None and _identity(before) != _identity(
            os.fstat(root.handle.id.get_vfd_handle())
        ):
            raise KerascheckError(
                f"{path}: the file changed while it was read; expected a file left alone"
            )
        yield root


def _identity(stat: os.stat_result) -> tuple:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _size(source) -> int:
    if hasattr(source, "getbuffer"):
        return source.getbuffer().nbytes
    if hasattr(source, "seek"):  # a file object (a member window of a .keras archive)
        return source.seek(0, os.SEEK_END)
    return os.path.getsize(source)


def describe(source, path: str) -> dict:
    """`scan` of the file at `source`, damage reported as a KerascheckError."""
    try:
        with h5py.File(source, "r") as handle:
            return scan(handle, path)
    except KerascheckError:
        raise
    except Exception as exc:  # h5py's own errors on a damaged file
        raise KerascheckError(
            f"{path}: expected a readable HDF5 file, found a damaged one "
            f"({type(exc).__name__}: {clip(exc)})"
        ) from None


LINK_NAMES = {h5py.h5l.TYPE_SOFT: "SoftLink", h5py.h5l.TYPE_EXTERNAL: "ExternalLink"}


def scan(handle: h5py.File, path: str) -> dict:
    """The file's structure as plain data (JSON), after refusing soft, external and
    user-defined links and external or virtual datasets anywhere, and attributes over
    the size limit.

    Through h5py's low-level API, it touches what a real read uses besides the data:
    every link, every dataset's storage size and chunk index, every attribute. The walk
    is linear (each group is opened once, relative to its parent) and bounded in depth
    and node count, so a damaged or hostile file cannot make it slow.
    """
    fid = handle.id
    root = {"children": {}, "attrs": _attributes(fid, path)}
    count = 0
    stack = [(fid, "", root, 0)]
    while stack:
        gid, name, entry, depth = stack.pop()
        if depth > MAX_HDF5_DEPTH:
            raise KerascheckError(
                f"{path}: expected HDF5 groups nested at most {MAX_HDF5_DEPTH} deep, "
                f"found deeper ('{clip(name)}')"
            )
        for raw, link_type in _links(gid):
            count += 1
            if count > MAX_HDF5_NODES:
                raise KerascheckError(
                    f"{path}: expected at most {MAX_HDF5_NODES} HDF5 groups and datasets, "
                    "found more"
                )
            key = raw.decode("utf-8", "surrogateescape")
            where = f"'{clip(name + '/' + key)}'"
            if link_type != h5py.h5l.TYPE_HARD:
                kind = LINK_NAMES.get(link_type, "user-defined link")
                raise UnsafeModelError(
                    f"{path}: HDF5 entry {where} is a {kind}; expected all data "
                    "stored inside the model file (kerascheck does not follow links)"
                )
            node = h5py.h5o.open(gid, raw)
            attrs = _attributes(node, path)
            if isinstance(node, h5py.h5g.GroupID):
                entry["children"][key] = {"children": {}, "attrs": attrs}
                stack.append((node, f"{name}/{key}", entry["children"][key], depth + 1))
            elif isinstance(node, h5py.h5d.DatasetID):
                entry["children"][key] = _dataset(node, where, path)
    return {"size": fid.get_filesize(), "root": root}


def _links(gid) -> list[tuple[bytes, int]]:
    """(name, link type) of a group's links, in name order (as h5py's `keys`)."""
    links = []
    gid.links.iterate(lambda key, info: links.append((key, info.type)), info=True)
    return links


def _dataset(node: h5py.h5d.DatasetID, where: str, path: str) -> dict:
    plist = node.get_create_plist()
    layout = plist.get_layout()
    if plist.get_external_count() or layout == h5py.h5d.VIRTUAL:
        raise UnsafeModelError(
            f"{path}: HDF5 dataset {where} stores its data outside the model file; "
            "expected all data stored inside it"
        )
    stored = node.get_storage_size()
    if layout == h5py.h5d.CHUNKED:
        node.get_num_chunks()  # walks the chunk index
    dtype = node.dtype
    return {
        "shape": list(node.shape or ()),
        "dtype": dtype.str,
        "kind": dtype.kind,
        "itemsize": dtype.itemsize,
        "dtype_text": str(dtype),
        "stored": stored,
        "chunked": layout == h5py.h5d.CHUNKED,
    }


_WRAPPERS = (
    (h5py.h5g.GroupID, h5py.Group),
    (h5py.h5d.DatasetID, h5py.Dataset),
    (h5py.h5t.TypeID, h5py.Datatype),
)


def _attributes(node, path: str) -> dict:
    """{name: value} of a node's attributes, each size-checked before it is read, text
    kept as text (bytes as `{"bytes": latin-1}`) and anything else described by type."""
    values = {}
    count = h5py.h5a.get_num_attrs(node)
    if not count:
        return values
    wrapper = next(w for kind, w in _WRAPPERS if isinstance(node, kind))
    wrapped = wrapper(node)  # h5py's own reading of attribute values (strings decoded)
    for index in range(count):
        attr = h5py.h5a.open(node, index=index)
        declared = math.prod(attr.shape or ()) * attr.dtype.itemsize
        if declared > MAX_ATTR_BYTES:
            raise KerascheckError(
                f"{path}: expected HDF5 attributes of at most {MAX_ATTR_BYTES} bytes, "
                f"found one of {declared}"
            )
        name = attr.name.decode("utf-8", "surrogateescape")
        values[name] = _plain(wrapped.attrs[attr.name])
    return values


def _plain(value):
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return {"bytes": value.decode("latin-1")}
    if isinstance(value, np.ndarray) and all(isinstance(v, (str, bytes)) for v in value.flat):
        if value.size:
            return {"shape": list(value.shape), "items": [_plain(v) for v in value.flat]}
    return {"type": type(value).__name__, "size": int(getattr(value, "size", 1))}


def _build(description: dict) -> File:
    """The `File` tree of what `scan` returned."""
    root = File("/", size=description["size"])

    def fill(group: Group, entry: dict):
        group.attrs = {key: _value(value) for key, value in entry["attrs"].items()}
        for key, item in entry["children"].items():
            name = f"{group.name.rstrip('/')}/{key}"
            if "children" in item:
                group.children[key] = fill(Group(name), item)
            else:
                shape = tuple(int(d) for d in item.pop("shape"))
                group.children[key] = Dataset(name, shape, **item, file=root)
        return group

    return fill(root, description["root"])


def _value(plain):
    if isinstance(plain, str):
        return plain
    if "bytes" in plain:
        return plain["bytes"].encode("latin-1")
    if "items" in plain:
        items = [_value(v) for v in plain["items"]]
        return np.array(items, dtype=object).reshape(plain["shape"])
    return NotText(str(plain["type"]), int(plain["size"]))


# ------------------------------------------------------------------ reading


def child(group: Group, path: str):
    """`group[path]`, or None if absent (links were refused by the walk)."""
    node = group
    for part in [p for p in path.split("/") if p]:
        if not isinstance(node, Group):
            return None
        node = node.children.get(part)
    return node


def read_array(dataset, what: str = "") -> np.ndarray:
    """A numeric dataset's values (zeros of its shape in `shapes_only`), after checking
    its declared size against the memory limit and what the file stores."""
    if not isinstance(dataset, Dataset):
        found = "nothing" if dataset is None else f"a {type(dataset).__name__} '{dataset.name}'"
        raise KerascheckError(
            f"expected a weight dataset{' ' + what if what else ''}, found {found}"
        )
    _check_size(dataset)
    if dataset.kind not in "biuf":
        raise KerascheckError(
            f"expected numeric weights in HDF5 dataset '{dataset.name}', "
            f"found dtype {dataset.dtype_text}"
        )
    if not _VALUES.get():
        return np.zeros(dataset.shape, np.dtype(dataset.dtype))
    try:
        name = dataset.name.encode("utf-8", "surrogateescape")
        return np.asarray(h5py.Dataset(h5py.h5d.open(dataset.file.handle.id, name))[()])
    except (OSError, RuntimeError, ValueError) as exc:
        raise KerascheckError(f"HDF5 dataset '{dataset.name}' cannot be read ({exc})")


def _check_size(dataset: Dataset) -> None:
    """Refuse a dataset whose declared size is over the memory limit or bigger than
    what the file can hold, before anything is allocated for it."""
    nbytes = math.prod(dataset.shape) * dataset.itemsize
    name = f"HDF5 dataset '{clip(dataset.name)}'"
    check_bytes(nbytes, name, dataset.shape)
    if nbytes == 0:
        return
    stored = dataset.stored
    if (
        stored < nbytes and not dataset.chunked
        or stored > dataset.file.size
        or stored * 1000 < nbytes
    ):  # fmt: skip
        raise KerascheckError(
            f"{name} declares shape {dataset.shape} ({nbytes} bytes) but the file stores "
            f"{stored} bytes for it; expected the weights written in the file"
        )


def text_attr(node: Group, key: str):
    """A string attribute, or None."""
    value = node.attrs.get(key)
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise KerascheckError(f"HDF5 attribute '{key}' of '{node.name}' is not UTF-8 text")
    if value is not None and not isinstance(value, str):
        found = value.type_name if isinstance(value, NotText) else type(value).__name__
        raise KerascheckError(
            f"expected text in HDF5 attribute '{key}' of '{node.name}', found {found}"
        )
    return value


def list_attr(node: Group, key: str) -> list[str]:
    """A list-of-strings attribute such as `layer_names` or `weight_names` (Keras 2 writes
    an empty one as an empty float array)."""
    value = node.attrs.get(key)
    if value is None or isinstance(value, NotText) and value.size == 0:
        return []
    if isinstance(value, NotText):
        raise KerascheckError(
            f"expected text in HDF5 attribute '{key}' of '{clip(node.name)}', "
            f"found {value.type_name}"
        )
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.ravel(value)]
    except UnicodeDecodeError:
        raise KerascheckError(
            f"HDF5 attribute '{key}' of '{clip(node.name)}' is not UTF-8 text"
        ) from None
