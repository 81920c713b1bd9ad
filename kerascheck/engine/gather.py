"""The one backward shared by every data-movement layer.

Flatten, Reshape, Permute, padding, cropping, nearest upsampling, repeat,
concatenation and slicing only copy input elements to output positions (or
write zeros). Running the layer's own forward on an array of element numbers
(1-based; 0 is a zero fill) tells, for every output element, which input
element it copies; the backward then adds each upstream gradient to its
source with one `bincount`, so repeated copies add up and padding drops out.
The map is computed once per input shape and reused. Where every input element
is copied exactly once to a strided lattice of the output (reshape, transpose,
zero padding, a concatenation's pieces), the backward is instead one strided
copy of the upstream gradient, with no float64 round trip.
"""

from __future__ import annotations

import numpy as np

from . import threads


def gather_vjp(layer, forward, inputs, cache: dict | None = None):
    """(output, backward) for `forward`, which must only copy or zero-fill elements.

    `inputs` is an array or a list of arrays (numbered consecutively);
    `backward(d_output)` returns gradients of the same structure and no weights.
    """
    arrays = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    shapes = tuple(a.shape for a in arrays)
    cache = cache if cache is not None else layer.__dict__.setdefault("_gather_maps", {})
    if shapes not in cache:
        cache[shapes] = _source_map(forward, arrays, isinstance(inputs, (list, tuple)))
    source, lattices = cache[shapes]
    output = forward(inputs)
    sizes = [a.size for a in arrays]

    def backward(d_output):
        if lattices is not None:  # every input element copied once, to a strided lattice
            flat = np.asarray(d_output).ravel()
            grads = [
                _read_lattice(flat, lattice, a.shape, a.dtype)
                for lattice, a in zip(lattices, arrays)
            ]
        else:
            flat = np.bincount(
                source, weights=np.asarray(d_output, np.float64).ravel(), minlength=sum(sizes) + 1
            )[1:]
            pieces = np.split(flat, np.cumsum(sizes)[:-1])
            grads = [p.reshape(a.shape).astype(a.dtype, copy=False) for p, a in zip(pieces, arrays)]
        return (grads if isinstance(inputs, (list, tuple)) else grads[0]), {}

    return output, backward


def _read_lattice(flat, lattice, shape, dtype):
    """The input gradient as a strided view of the flat upstream gradient, copied."""
    offset, strides = lattice
    itemsize = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=shape, strides=tuple(st * itemsize for st in strides), writeable=False
    )
    return threads.copy(np.empty(shape, dtype), view)


def _source_map(forward, arrays, as_list):
    offsets = np.cumsum([0] + [a.size for a in arrays])
    numbers = [
        (np.arange(a.size, dtype=np.float64) + 1 + start).reshape(a.shape)
        for a, start in zip(arrays, offsets)
    ]
    mapped = forward(numbers if as_list else numbers[0])
    source = np.rint(np.asarray(mapped, np.float64)).astype(np.int64).ravel()
    return source, _lattices(source, arrays, offsets)


def _lattices(source, arrays, offsets):
    """Per input, `(offset, strides)` such that input element `i` (as a multi-index)
    is copied exactly once, to output position `offset + i . strides`; None unless every
    input has such a lattice (a reshape, a transpose, padding, a concatenation's piece).
    Then the backward is one strided copy instead of a `bincount` into float64."""
    total = int(offsets[-1])
    counts = np.bincount(source, minlength=total + 1)
    if counts.size > total + 1 or np.any(counts[1:] != 1):
        return None  # some element dropped (cropping) or copied repeatedly (repeats)
    where = np.empty(total + 1, np.int64)
    where[source] = np.arange(source.size)
    lattices = []
    for a, start in zip(arrays, offsets):
        if a.size == 0:
            return None
        positions = where[1 + start : 1 + start + a.size].reshape(a.shape)
        origin = int(positions.flat[0])
        strides = []
        for axis, n in enumerate(a.shape):
            step = positions[(0,) * axis + (1,) + (0,) * (a.ndim - axis - 1)] if n > 1 else 0
            strides.append(int(step) - origin if n > 1 else 0)
        expected = origin + sum(
            np.arange(n).reshape((-1,) + (1,) * (a.ndim - axis - 1)) * st
            for axis, (n, st) in enumerate(zip(a.shape, strides))
        )
        if np.any(np.asarray(expected) != positions) or min(strides, default=0) < 0:
            return None
        lattices.append((origin, tuple(strides)))
    return lattices


class CopiesElements:
    """Mixin for a layer whose output only copies input elements: its backward is
    `gather_vjp` over its own `call`. Put it before `Layer` in the bases."""

    def vjp(self, inputs, *args, training=False, noise=None, **kwargs):
        return gather_vjp(self, lambda values: self.call(values, *args, **kwargs), inputs)
