"""The one backward shared by every data-movement layer.

Flatten, Reshape, Permute, padding, cropping, nearest upsampling, repeat,
concatenation and slicing only copy input elements to output positions (or
write zeros). Running the layer's own forward on an array of element numbers
(1-based; 0 is a zero fill) tells, for every output element, which input
element it copies; the backward then adds each upstream gradient to its
source with one `bincount`, so repeated copies add up and padding drops out.
The map is computed once per input shape and reused.
"""

from __future__ import annotations

import numpy as np


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
    source = cache[shapes]
    output = forward(inputs)
    sizes = [a.size for a in arrays]

    def backward(d_output):
        flat = np.bincount(
            source, weights=np.asarray(d_output, np.float64).ravel(), minlength=sum(sizes) + 1
        )[1:]
        pieces = np.split(flat, np.cumsum(sizes)[:-1])
        grads = [p.reshape(a.shape).astype(a.dtype, copy=False) for p, a in zip(pieces, arrays)]
        return (grads if isinstance(inputs, (list, tuple)) else grads[0]), {}

    return output, backward


def _source_map(forward, arrays, as_list):
    offsets = np.cumsum([0] + [a.size for a in arrays])
    numbers = [
        (np.arange(a.size, dtype=np.float64) + 1 + start).reshape(a.shape)
        for a, start in zip(arrays, offsets)
    ]
    mapped = forward(numbers if as_list else numbers[0])
    return np.rint(np.asarray(mapped, np.float64)).astype(np.int64).ravel()


class CopiesElements:
    """Mixin for a layer whose output only copies input elements: its backward is
    `gather_vjp` over its own `call`. Put it before `Layer` in the bases."""

    def vjp(self, inputs, *args, training=False, noise=None, **kwargs):
        return gather_vjp(self, lambda values: self.call(values, *args, **kwargs), inputs)
