"""Model inputs: reading them from files, checking them, and making seeded ones.

Every error names what the model expects (each input's name, shape and dtype)
next to what was given, because that is all a user needs to fix the call.
"""

from __future__ import annotations

import lzma
import math
import os
import zipfile
import zlib

import numpy as np

from .errors import KerascheckError
from .limits import check_bytes, clip
from .loading.spec import InputSpec, ModelSpec

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK"
DEFAULT_INDEX_BOUND = 2  # integer inputs that feed no Embedding: 0 and 1 are safe indices


def shape_text(shape) -> str:
    """An input shape as users read it: `(batch, 28, 28, 1)`, `?` for any size."""
    return "(" + ", ".join(["batch", *("?" if d is None else str(d) for d in shape)]) + ")"


def describe_inputs(spec: ModelSpec) -> str:
    return ", ".join(_describe_one(i) for i in spec.inputs)


def _describe_one(inp: InputSpec) -> str:
    return f"'{inp.name}' {shape_text(inp.shape)} {inp.dtype}"


LAYOUTS = ("channels_last", "channels_first")


def check_inputs(
    spec: ModelSpec, x, dtype=np.float32, layout: str | None = None
) -> list[np.ndarray]:
    """Return the inputs as a list of arrays in model-input order, or say what is wrong.

    Accepts one array (one-input models), a list/tuple in input order, or a dict
    keyed by input names. A single sample without its batch axis gets one.
    `layout` is the layout the given arrays are in (`channels_first` (N, C, ...) or
    `channels_last` (N, ..., C)); each input of rank 3+ is transposed to the layout
    the model reads it in (`input_layout`), and left as given when `layout` is None.
    """
    if layout not in (None, *LAYOUTS):
        raise KerascheckError(f"expected a layout among {LAYOUTS}, found {layout!r}")
    arrays = _as_list(spec, x)
    checked = [
        _check_one(spec, inp, array, dtype, layout) for inp, array in zip(spec.inputs, arrays)
    ]
    batches = [a.shape[0] for a in checked]
    if len(set(batches)) > 1:
        found = ", ".join(f"'{i.name}' {b}" for i, b in zip(spec.inputs, batches))
        raise KerascheckError(f"expected the same batch size for every input, found {found}")
    return checked


def input_layout(spec: ModelSpec, name: str) -> str:
    """The layout the model reads input `name` in: the `data_format` of the first layer
    downstream of it that has one (channels-last when none has)."""
    reached = {(name, 0)}
    for call in spec.calls:
        if not any((ref.layer, ref.call) in reached for ref in call.refs):
            continue
        reached.add((call.layer, call.index))
        found = spec.layers[call.layer].config.get("data_format")
        if found in LAYOUTS:
            return found
    return "channels_last"


def transposed(array: np.ndarray, given: str, wanted: str) -> np.ndarray:
    """A batched array of rank 3+ moved from layout `given` to layout `wanted`."""
    if array.ndim < 3 or given == wanted:
        return array
    return np.moveaxis(array, 1, -1) if given == "channels_first" else np.moveaxis(array, -1, 1)


def other_layout(layout: str) -> str:
    return LAYOUTS[1 - LAYOUTS.index(layout)]


def _as_list(spec: ModelSpec, x) -> list:
    expected = spec.inputs
    names = [i.name for i in expected]
    if isinstance(x, dict):
        missing = [n for n in names if n not in x]
        unknown = [str(k) for k in x if k not in names]
        if missing or unknown:
            raise KerascheckError(
                f"expected inputs named {names} ({describe_inputs(spec)}), found "
                f"{sorted(str(k) for k in x)} (missing {missing}, unknown {unknown})"
            )
        return [x[n] for n in names]
    if isinstance(x, (list, tuple)) and not (len(expected) == 1 and _is_one_array(x)):
        arrays = list(x)
    else:
        arrays = [x]
    if len(arrays) != len(expected):
        raise KerascheckError(
            f"expected {len(expected)} input(s) ({describe_inputs(spec)}), found {len(arrays)}"
        )
    return arrays


def _is_one_array(x) -> bool:
    """A list given to a one-input model is its data (nested numbers), unless it is a
    one-element list wrapping that input's array."""
    return len(x) != 1 or not isinstance(x[0], (np.ndarray, list, tuple))


def _check_one(spec: ModelSpec, inp: InputSpec, value, dtype, layout: str | None) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise KerascheckError(
            f"expected a numeric array for input {_describe_one(inp)}, found data NumPy "
            f"cannot make an array of ({exc})"
        )
    if inp.dtype == "string":
        array = _as_strings(inp, array)
    elif array.dtype.kind not in "biuf":
        raise KerascheckError(
            f"expected numeric values for input {_describe_one(inp)}, found dtype {array.dtype}"
        )
    given = tuple(array.shape)
    model = input_layout(spec, inp.name) if len(inp.shape) >= 2 else "channels_last"
    batched = array[None] if array.ndim == len(inp.shape) else array  # one sample
    array = transposed(batched, layout or model, model)
    if not _fits(inp, array):
        raise KerascheckError(_shape_error(inp, batched, given, layout, model))
    if inp.dtype == "string":
        return array
    if "int" in inp.dtype:
        if array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):
            raise KerascheckError(
                f"expected integers for input {_describe_one(inp)}, found fractional "
                "or non-finite values"
            )
        return array.astype(inp.dtype)
    if inp.dtype not in ("float16", "float32", "float64", "bfloat16", "bool"):
        raise KerascheckError(
            f"expected a numeric model input, found input '{inp.name}' of dtype {inp.dtype}, "
            "which kerascheck cannot feed"
        )
    return array.astype(dtype, copy=False)


def _fits(inp: InputSpec, array: np.ndarray) -> bool:
    return array.ndim == len(inp.shape) + 1 and all(
        d is None or d == s for d, s in zip(inp.shape, array.shape[1:])
    )


def _shape_error(inp: InputSpec, batched, given: tuple, layout: str | None, model: str) -> str:
    """The expected shape in the layout the user said their array is in, the shape as
    given, and the `--input-layout` that makes it fit when there is one."""
    said = layout or model
    if said == model:
        text = f"expected shape {shape_text(inp.shape)} for input '{inp.name}'"
    else:
        text = (
            f"expected shape {shape_text(_layout_shape(inp.shape, model, said))} for input "
            f"'{inp.name}' given as {said} (the model reads {shape_text(inp.shape)}, {model})"
        )
    other = other_layout(said)
    if batched.ndim >= 3 and _fits(inp, transposed(batched, other, model)):
        text += f", found {given}: that fits as {other} data; pass --input-layout {other}"
        return text
    return f"{text}, found {given}"


def _layout_shape(shape: tuple, given: str, wanted: str) -> tuple:
    """A shape without its batch axis, moved from layout `given` to layout `wanted`."""
    if len(shape) < 2 or given == wanted:
        return tuple(shape)
    if given == "channels_first":
        return (*shape[1:], shape[0])
    return (shape[-1], *shape[:-1])


def _as_strings(inp: InputSpec, array: np.ndarray) -> np.ndarray:
    """A string input (StringLookup models): text as NumPy unicode, bytes decoded as UTF-8."""
    if array.dtype.kind == "S" or (
        array.dtype.kind == "O" and all(isinstance(v, bytes) for v in array.flat)
    ):
        array = np.char.decode(array.astype(bytes), "utf-8")
    if array.dtype.kind == "O" and all(isinstance(v, str) for v in array.flat):
        array = array.astype(str)
    if array.dtype.kind != "U":
        raise KerascheckError(
            f"expected strings for input {_describe_one(inp)}, found dtype {array.dtype}"
        )
    return array


def random_inputs(
    spec: ModelSpec, batch: int = 2, seed: int = 0, size: int = 32
) -> list[np.ndarray]:
    """Seeded inputs with negatives and values past activation clamp points.

    Standard normal times 2 reaches beyond relu6/hard_sigmoid knees (|x| > 3)
    in a few percent of entries; variable dimensions get `size`. Integer inputs
    get indices valid for every Embedding they feed.
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for inp in spec.inputs:
        shape = (batch, *(size if d is None else d for d in inp.shape))
        if "int" in inp.dtype:
            bound = _index_bound(spec, inp.name)
            arrays.append(rng.integers(0, bound, size=shape).astype(inp.dtype))
        elif _embedding_bound(spec, inp.name) is not None:
            # Keras 2 Embedding models often declare float inputs holding indices
            bound = _embedding_bound(spec, inp.name)
            arrays.append(rng.integers(0, bound, size=shape).astype(inp.dtype))
        elif inp.dtype == "bool":  # masks, e.g. an attention_mask input
            arrays.append(rng.integers(0, 2, size=shape).astype(bool))
        elif inp.dtype in ("float16", "float32", "float64", "bfloat16"):
            dtype = "float32" if inp.dtype == "bfloat16" else inp.dtype
            arrays.append((2.0 * rng.standard_normal(shape)).astype(dtype))
        else:
            raise KerascheckError(
                f"expected numeric model inputs to make random ones, found input "
                f"'{inp.name}' of dtype {inp.dtype}; give the input in a .npy/.npz file"
            )
    return arrays


def _embedding_bound(spec: ModelSpec, input_name: str) -> int | None:
    """The smallest `input_dim` of the Embedding layers reading this input directly."""
    bounds = [
        spec.layers[call.layer].config.get("input_dim")
        for call in spec.calls
        if spec.layers[call.layer].class_name == "Embedding"
        and any(ref.layer == input_name for ref in call.inputs)
    ]
    bounds = [b for b in bounds if isinstance(b, int) and b > 0]
    return min(bounds) if bounds else None


def _index_bound(spec: ModelSpec, input_name: str) -> int:
    return _embedding_bound(spec, input_name) or DEFAULT_INDEX_BOUND


def read_inputs(path: str, spec: ModelSpec, layout: str | None = None) -> list[np.ndarray]:
    """Read `.npy` (one input) or `.npz` (keyed by input name, or arr_0, arr_1...)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "no such input file"
        raise KerascheckError(f"{path}: {what}; expected a .npy or .npz input file")
    with open(path, "rb") as handle:
        head = handle.read(6)
    if not (head.startswith(NPY_MAGIC) or head.startswith(ZIP_MAGIC)):
        raise KerascheckError(
            f"{path}: expected a .npy or .npz input file, found neither (first bytes {head!r})"
        )
    loaded = load_arrays(path, mmap_mode="r")  # .npy read lazily by batch
    if isinstance(loaded, np.ndarray):
        if len(spec.inputs) != 1:
            raise KerascheckError(
                f"{path}: expected {len(spec.inputs)} inputs ({describe_inputs(spec)}) in one .npz "
                "keyed by input name, found a single .npy array"
            )
        return check_inputs(spec, loaded, layout=layout)
    with loaded:
        return check_inputs(spec, _npz_arrays(path, loaded, spec), layout=layout)


def _npz_arrays(path: str, loaded, spec: ModelSpec) -> list[np.ndarray]:
    keys = list(loaded.keys())
    names = [i.name for i in spec.inputs]
    positional = [f"arr_{k}" for k in range(len(names))]
    if all(n in keys for n in names):
        chosen = names
    elif all(p in keys for p in positional):
        chosen = positional
    else:
        missing = [n for n in names if n not in keys]
        raise KerascheckError(
            f"{path}: expected arrays named {names} (or {', '.join(positional)}) for inputs "
            f"{describe_inputs(spec)}, found {keys} (missing {missing})"
        )
    arrays = []
    for key, inp in zip(chosen, spec.inputs):
        try:
            arrays.append(loaded[key])
        except READ_ERRORS as exc:
            raise KerascheckError(
                f"{path}: expected a numeric array '{clip(key)}' for input "
                f"{_describe_one(inp)}, found unreadable data ({clip(exc)})"
            ) from None
    return arrays


READ_ERRORS = (
    ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError,
    OverflowError, MemoryError, TypeError, KeyError, lzma.LZMAError, zlib.error,
)  # fmt: skip


def load_arrays(path: str, mmap_mode=None):
    """`np.load` (never pickles) after checking every array's declared header against
    the file and the memory limit, so a lying header never allocates anything."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    _check_member(path, archive, info)
        else:
            with open(path, "rb") as handle:
                _check_header(handle, path, os.path.getsize(path))
        return np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except KerascheckError:
        raise
    except READ_ERRORS as exc:
        raise KerascheckError(
            f"{path}: expected a numeric .npy or .npz file, found unreadable data "
            f"({type(exc).__name__}: {clip(exc)})"
        ) from None


def _check_member(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    where = f"{path}: array '{clip(info.filename.removesuffix('.npy'))}'"
    if info.flag_bits & 0x1:
        raise KerascheckError(
            f"{where}: expected an unencrypted .npz member, found an encrypted one"
        )
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise KerascheckError(
            f"{where}: expected a stored or deflated .npz member, found compression method "
            f"{info.compress_type}"
        )
    check_bytes(info.file_size, where)
    if info.file_size > 2**20 and info.file_size > 1000 * max(info.compress_size, 1):
        raise KerascheckError(
            f"{where}: declares {info.file_size} bytes but stores {info.compress_size}; "
            "expected no decompression bomb"
        )
    if info.filename.endswith(".npy"):
        with archive.open(info) as member:
            _check_header(member, where, info.file_size)


def _check_header(handle, where: str, size: int) -> None:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(handle)
        else:
            shape, _, dtype = fmt.read_array_header_2_0(handle)
    except Exception as exc:  # numpy parses the header as Python literals: any error means damaged
        raise KerascheckError(
            f"{where}: expected a valid .npy header, found a damaged one ({clip(exc)})"
        ) from None
    if dtype.hasobject:
        raise KerascheckError(
            f"{where}: expected a numeric .npy or .npz array, found unreadable data "
            "(Python objects, which are pickles)"
        )
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise KerascheckError(f"{where}: expected sizes of 0 or more, found shape {clip(shape)}")
    nbytes = math.prod(shape) * dtype.itemsize
    check_bytes(nbytes, f"{where}: array", shape)
    if nbytes > size:
        raise KerascheckError(
            f"{where}: declares shape {clip(shape)} ({nbytes} bytes) but holds {size} bytes; "
            "expected the whole array in the file"
        )
