"""The mistakes people make in a hand-written backward pass, recomputed from the reference.

`grad --against` judges a user's gradients against Keras (or the engine). When one
does not match, the step that produced it is recomputed here from the
*reference's* own forward values and upstream gradient: once correctly and once
with each mistake learners make (seeds/002: a conv kernel transposed instead of
rotated 180°, a kernel gradient summed over input channels, a bias gradient
summed over filters, a max-pool argmax put in the wrong cell; and the usual
others: `same`'s odd padding pixel on the wrong side, no zero insertion for a
stride, the last maximum of a pooling window, batch statistics treated as
constants, an activation derivative taken at the output, a clipped
cross-entropy where `fit` used the logits). The caller names the mistake whose
result matches the user's array.

The right answer and its wrong variants are the same arithmetic, the engine's:
a conv mistake is `correlate_input_grad` / `correlate_kernel_grad` given a
transformed kernel, the other padding side or stride 1; a pooling mistake is
another share of dL/dy over each window's cells, added up by the layer's own
`add_to_cells`; a Dense or activation mistake is the layer's `vjp` fed
another dL/dz. Layers without mistakes here use their `vjp` for the correct
path only (an inherited error is still recognised). Everything runs on plain
float64 arrays: no TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .engine import activations
from .engine.layers.conv import (
    correlate,
    correlate_input_grad,
    correlate_kernel_grad,
    resolve_padding,
)
from .engine.layers.normalization import moments, positive, reshaped
from .engine.windows import effective_size, from_channels_last, pad_spatial, to_channels_last

CORRECT = ""  # the label of the correct backward among a call's variants

CONV_CLASSES = {"Conv1D", "Conv2D", "Conv3D"}
MAX_POOL_CLASSES = {"MaxPooling1D", "MaxPooling2D"}  # 3D: TensorFlow rewards every tie
CLIP_EPSILON = 1e-7  # Keras' backend epsilon, the clip of cross-entropy on probabilities

HINTS = {
    "conv kernel transposed": (
        "conv input gradient with the kernel transposed instead of rotated 180°: correlate the "
        "zero-padded dL/dz with k[::-1, ::-1] (each (in, out) slice flipped on both axes), "
        "not k.T"
    ),
    "conv kernel not flipped": (
        "conv input gradient with the kernel not flipped: the full correlation of dL/dz needs "
        "the kernel rotated 180° (k[::-1, ::-1]), input and output channels swapped"
    ),
    "conv channels not swapped": (
        "conv input gradient with input and output channels not swapped: correlate dL/dz with "
        "the rotated kernel as (kh, kw, out, in)"
    ),
    "conv same odd pixel before": (
        "`same` padding's odd pixel put before instead of after: Keras pads total // 2 before "
        "and the rest (the odd pixel) after, bottom/right; the backward must crop (and the "
        "kernel gradient pad) the same amounts"
    ),
    "conv stride not dilated": (
        "strided conv backward without zero insertion: with stride s, dL/dz must be spread s "
        "apart (s - 1 zeros between its values) before the full correlation, and the kernel "
        "gradient reads the input at o*s + tap"
    ),
    "conv kernel grad summed over input channels": (
        "conv kernel gradient summed over input channels: each (input channel, filter) pair "
        "has its own correlation of that input channel with the filter's dL/dz"
    ),
    "conv kernel grad rotated": (
        "conv kernel gradient rotated 180°: it is the correlation of the padded input with "
        "dL/dz (dW[u, v] = sum x[p + u, q + v] dz[p, q]), not a convolution"
    ),
    "conv bias summed over filters": (
        "conv bias gradient summed over all filters: each filter's bias gets the sum of its own "
        "dL/dz over the batch and positions"
    ),
    "conv bias averaged over positions": (
        "conv bias gradient averaged over positions: Keras sums dL/dz over every position "
        "(and the batch), per filter"
    ),
    "conv bias averaged": (
        "conv bias gradient averaged over the batch and positions: Keras sums dL/dz, per filter"
    ),
    "pool last max": (
        "max-pool gradient routed to the LAST maximum of a window; TensorFlow gives it to the "
        "first maximum in row-major order (np.argmax of the flattened window)"
    ),
    "pool split ties": (
        "max-pool gradient split among tied maxima; MaxPooling gives all of it to the first "
        "maximum in row-major order (only GlobalMaxPooling splits ties)"
    ),
    "pool every cell": (
        "max-pool gradient copied to every cell of the window: route it to the window's "
        "maximum only"
    ),
    "pool argmax not offset": (
        "max-pool gradient routed to the wrong cells: the window's argmax a was turned into "
        "input coordinates without the window's offset; the cell is (i*k + a // k, j*k + a % k)"
    ),
    "pool argmax of one row": (
        "max-pool gradient routed to the wrong cells: the argmax was taken over one row of the "
        "window (window[c], the channel used as a row index) and not offset by the window's "
        "position; take np.argmax of the whole (k, k) window, then (i*k + a // k, j*k + a % k)"
    ),
    "flatten channel-major": (
        "flatten gradient unflattened in channel-major order (C, H, W); Keras flattens "
        "channels-last maps with the channels innermost: d.reshape(N, H, W, C)"
    ),
    "dense kernel channel-major": (
        "Dense kernel gradient rows in channel-major order: your Flatten ordered its input "
        "(C, H, W) where Keras orders (H, W, C); permute the rows (or flatten channels-last)"
    ),
    "dense kernel not transposed": (
        "Dense input gradient with the kernel not transposed: dL/dx = dL/dz @ kernel.T"
    ),
    "activation at output": (
        "activation derivative taken at the output instead of the pre-activation: e.g. "
        "sigmoid'(y) = s(y)(1 - s(y)) where it is y(1 - y), or 1 - tanh(y)² instead of 1 - y²"
    ),
    "activation output form at z": (
        "activation derivative's output form evaluated at the pre-activation z: e.g. "
        "z(1 - z) instead of y(1 - y) for sigmoid, 1 - z² instead of 1 - y² for tanh"
    ),
    "activation derivative missing": (
        "activation derivative left out: dL/dz = dL/dy * f'(z) before the layer's own backward"
    ),
    "bn statistics constant": (
        "BatchNormalization input gradient with the batch mean and variance treated as "
        "constants; in training they depend on x: dx = (dxh - mean(dxh) - xh * mean(dxh * xh)) "
        "/ sqrt(var + eps), dxh = dy * gamma"
    ),
    "bn variance constant": (
        "BatchNormalization input gradient with the batch variance treated as a constant (only "
        "the mean's term kept): dx = (dxh - mean(dxh) - xh * mean(dxh * xh)) / sqrt(var + eps)"
    ),
    "bn moving statistics": (
        "BatchNormalization backward with the moving statistics; in training (what fit "
        "computes) the batch mean and variance normalize, and they are differentiated"
    ),
    "clipped cross-entropy": (
        "cross-entropy differentiated through clipped probabilities, while Keras' fit takes "
        "this loss from the logits (the output layer's sigmoid/softmax) and never clips: "
        "dL/dz = (p - y) / batch even where p saturates"
    ),
    "batch summed": (
        "loss gradient summed over the batch and given to every sample: each sample has its "
        "own dL/dp = 2 (p - y) / (B * D) for MSE"
    ),
    "batch summed, not averaged over D": (
        "loss gradient 2/B * sum over the batch of (p - y), given to every sample: each "
        "sample has its own dL/dp, and Keras' MSE also averages the last axis: "
        "2 (p - y) / (B * D)"
    ),
    "kernel reshaped": (
        "kernel gradient reshaped instead of transposed between layouts: Keras' (kh, kw, in, "
        "out) is PyTorch's (out, in, kh, kw).transpose(2, 3, 1, 0), never a reshape"
    ),
    "transposed": (
        "matches Keras' gradient transposed: Keras keeps a Dense kernel as (in, out), PyTorch "
        "as (out, in) (use --against-layout torch)"
    ),
    "channels first": (
        "matches after moving the channel axis: your array is channels-first (N, C, ...); pass "
        "--against-layout channels_first"
    ),
    "zeros": "all zeros: no gradient reached this tensor in your backward",
    "logits output": (
        "not judged: Keras took the loss from this output's logits (sigmoid/softmax output "
        "layer), so fit never computes dL/d(output); this layer's weight gradients are judged"
    ),
}


@dataclass
class Step:
    """What one call's backward sees, taken from the reference.

    `dz` is set instead of `dy` when the loss was taken from the call's logits:
    then there is no activation step to differentiate. `flattened` is the
    channels-last shape (without the batch) a Flatten made this call's input
    from, for the channel-major mistakes of a Dense after it.
    """

    layer: object
    x: object  # the call's input (an array, or a list for several)
    y: np.ndarray
    dy: np.ndarray | None
    dz: np.ndarray | None = None
    flattened: tuple | None = None


@dataclass
class Backward:
    """One backward's results; a variant holds only the tensors its mistake changes."""

    d_input: object = None
    weights: dict = field(default_factory=dict)


def backward_variants(step: Step, mistakes: bool = True) -> dict[str, Backward]:
    """{label: Backward}: the correct backward under CORRECT, and each applicable mistake.

    Activation mistakes change dL/dz and then run the correct layer backward;
    layer mistakes run on the correct dL/dz. One mistake at a time.
    """
    dzs = dz_variants(step, mistakes)
    if dzs is None:
        return {}
    core = CORES.get(step.layer.class_name, engine_core)
    if step.layer.class_name in CONV_CLASSES and getattr(step.layer, "groups", 1) != 1:
        core = engine_core
    dz = dzs.pop(CORRECT)
    found = core(step, dz, mistakes)
    if CORRECT not in found:
        return {}
    for label, alternative in dzs.items():
        result = core(step, alternative, False).get(CORRECT)
        if result is not None:
            found[label] = result
    return found


# -- the activation step ---------------------------------------------------------


def dz_variants(step: Step, mistakes: bool) -> dict[str, np.ndarray] | None:
    """{label: dL/d(pre-activation)}: the correct one and the wrong derivatives."""
    parts = activation_parts(step.layer, step.x)
    if step.dz is not None:
        found = {CORRECT: step.dz}
        if mistakes and parts is not None:
            clipped = clipped_logits_gradient(parts[0], step.y, step.dz)
            if clipped is not None:
                found["clipped cross-entropy"] = clipped
        return found
    if step.dy is None:
        return None
    if parts is None:  # no activation step, unless one we cannot differentiate
        fn = getattr(step.layer, "activation", activations.linear)
        return {CORRECT: step.dy} if fn is activations.linear else None
    if parts[0] is activations.linear:
        return {CORRECT: step.dy}
    fn, z = parts
    derivative = activations.DERIVATIVES.get(fn)
    if derivative is None:
        return None
    found = {CORRECT: derivative(z, step.y, step.dy)}
    if mistakes:
        found["activation at output"] = derivative(step.y, fn(step.y), step.dy)
        found["activation output form at z"] = derivative(z, z, step.dy)
        found["activation derivative missing"] = step.dy
    return found


def activation_parts(layer, x):
    """(activation, pre-activation z) of a call, or None when it has no activation step.

    Convolutions are recomputed with the engine's `correlate`; other layers report
    both through their `vjp` (`with_activation`).
    """
    if layer.class_name in CONV_CLASSES:
        kernel = np.asarray(layer.w["kernel"], np.float64)
        args = (layer.strides, layer.dilation, layer.padding, layer.groups)
        z = correlate(to_channels_last(x, layer.data_format), kernel, *args)
        if layer.use_bias:
            z = z + layer.w["bias"].astype(np.float64)
        return layer.activation, from_channels_last(z, layer.data_format)
    backward = _engine_backward(layer, x)
    if backward is None or not hasattr(backward, "logits"):
        return None
    return backward.activation, np.asarray(backward.logits, np.float64)


def clipped_logits_gradient(fn, p, dz):
    """dL/dz had the loss been taken from the clipped probabilities `p` instead of logits.

    Keras clips p to [eps, 1 - eps] (clip's gradient is 0 outside) and renormalizes
    softmax probabilities; through the activation's derivative that is dz itself
    where p is inside the clip. For softmax the targets are read back from Keras'
    dz = (p - y) / rows.
    """
    p = np.asarray(p, np.float64)
    inside = ((p >= CLIP_EPSILON) & (p <= 1 - CLIP_EPSILON)).astype(np.float64)
    if fn is activations.sigmoid:
        return dz * inside
    if fn is activations.softmax:
        scale = 1.0 / (p.size // p.shape[-1])
        y = p - dz / scale
        kept = y * inside
        return scale * (-kept + p * kept.sum(axis=-1, keepdims=True))
    return None


def logits_gradient(step: Step, weight_grads: dict) -> np.ndarray | None:
    """dL/dz of an output Dense whose loss Keras took from the logits (never reported).

    Its kernel and bias gradients are x^T dz and 1^T dz: with as many independent
    input rows as samples, that linear system fixes dz; anything less is no answer.
    """
    if step.layer.class_name != "Dense" or "kernel" not in weight_grads:
        return None
    rows = np.asarray(step.x, np.float64).reshape(-1, step.x.shape[-1])
    system = [rows.T]
    grads = [np.asarray(weight_grads["kernel"], np.float64)]
    if "bias" in weight_grads:
        system.append(np.ones((1, len(rows))))
        grads.append(np.asarray(weight_grads["bias"], np.float64)[None])
    a, g = np.vstack(system), np.vstack(grads)
    if np.linalg.matrix_rank(a) < a.shape[1]:
        return None
    dz = np.linalg.lstsq(a, g, rcond=None)[0]
    if np.linalg.norm(a @ dz - g) > 1e-3 * np.linalg.norm(g) + 1e-12:
        return None
    return dz.reshape(step.y.shape)


# -- convolution -----------------------------------------------------------------
#
# The engine's `correlate_input_grad` rotates the kernel it is given by 180°,
# swaps its channels, inserts s - 1 zeros into dL/dz and crops `before`; each
# mistake is that function given a pre-transformed kernel, the other `before`,
# or stride 1 (dL/dz packed instead of spread).


def conv_core(step: Step, dz, mistakes):
    """Conv1D/2D/3D (groups 1) input, kernel and bias gradients, and their mistakes."""
    layer, fmt = step.layer, step.layer.data_format
    x = to_channels_last(np.asarray(step.x, np.float64), fmt)
    dz = to_channels_last(dz, fmt)
    kernel = np.asarray(layer.w["kernel"], np.float64)
    rank, sizes = kernel.ndim - 2, x.shape[1:-1]
    pads = resolve_padding(sizes, kernel.shape, layer.strides, layer.dilation, layer.padding)

    def d_input(taps=kernel, before=tuple(b for b, _ in pads), strides=layer.strides):
        grad = correlate_input_grad(dz, taps, sizes, strides, layer.dilation, before)
        return from_channels_last(grad, fmt)

    def d_kernel(padding=pads):
        return correlate_kernel_grad(x, dz, kernel.shape, layer.strides, layer.dilation, padding)

    grads = {"kernel": d_kernel()}
    if layer.use_bias:
        grads["bias"] = dz.sum(axis=tuple(range(dz.ndim - 1)))
    found = {CORRECT: Backward(d_input(), grads)}
    if not mistakes:
        return found
    rotated = kernel[(slice(None, None, -1),) * rank]
    if rank == 2:  # given rot180(k.T), the engine correlates with k.T
        found["conv kernel transposed"] = Backward(d_input(np.swapaxes(kernel, 0, 1)[::-1, ::-1]))
    found["conv kernel not flipped"] = Backward(d_input(rotated))
    if kernel.shape[-2] == kernel.shape[-1] > 1:
        found["conv channels not swapped"] = Backward(d_input(np.swapaxes(kernel, -1, -2)))
    if any(b != a for b, a in pads):
        swapped = [(a, b) for b, a in pads]
        found["conv same odd pixel before"] = Backward(
            d_input(before=tuple(b for b, _ in swapped)), {"kernel": d_kernel(swapped)}
        )
    if any(s > 1 for s in layer.strides):
        packed = _kernel_grad_stride_ignored(x, dz, kernel.shape, pads, layer.dilation)
        found["conv stride not dilated"] = Backward(
            d_input(strides=(1,) * rank), {"kernel": packed}
        )
    found.update(_kernel_grad_mistakes(grads["kernel"], rank))
    if "bias" in grads:
        found.update(_bias_mistakes(grads["bias"], dz))
    return found


def _kernel_grad_stride_ignored(x, dz, kernel_shape, pads, dilation):
    """Tap t read at o + t*d instead of o*s + t*d: a stride-1 kernel gradient over just
    as much of the padded input as dL/dz covers at stride 1."""
    rank = len(kernel_shape) - 2
    extent = [
        o + effective_size(k, d) - 1 for o, k, d in zip(dz.shape[1:-1], kernel_shape, dilation)
    ]
    xp = pad_spatial(x, pads)[(slice(None), *(slice(0, e) for e in extent))]
    return correlate_kernel_grad(xp, dz, kernel_shape, (1,) * rank, dilation, "valid")


def _kernel_grad_mistakes(grad, rank):
    found = {
        "conv kernel grad rotated": Backward(
            weights={"kernel": grad[(slice(None, None, -1),) * rank]}
        )
    }
    if grad.shape[-2] > 1:
        summed = np.broadcast_to(grad.sum(axis=-2, keepdims=True), grad.shape)
        found["conv kernel grad summed over input channels"] = Backward(weights={"kernel": summed})
    return found


def _bias_mistakes(bias, dz):
    positions, batch = math.prod(dz.shape[1:-1]), dz.shape[0]
    found = {}
    if bias.size > 1:
        found["conv bias summed over filters"] = Backward(
            weights={"bias": np.full_like(bias, bias.sum())}
        )
    if positions > 1:
        found["conv bias averaged over positions"] = Backward(weights={"bias": bias / positions})
    if positions > 1 and batch > 1:
        found["conv bias averaged"] = Backward(weights={"bias": bias / (positions * batch)})
    return found


# -- max pooling -----------------------------------------------------------------


def maxpool_core(step: Step, dy, mistakes):
    """MaxPooling1D/2D: the gradient to each window's first maximum, and the mistakes.

    Each routing is a share of dL/dy over the window's cells, added into the
    input by the layer's own `add_to_cells`.
    """
    layer, fmt = step.layer, step.layer.data_format
    x = to_channels_last(np.asarray(step.x, np.float64), fmt)
    dy = to_channels_last(dy, fmt)
    view = layer.window_view(x, -np.inf)  # (B, *out, C, *pool_size)
    cells = view.reshape(*view.shape[: -layer.rank], -1)  # (B, *out, C, cells)

    def routed(share):
        grad = layer.add_to_cells(x.shape, (share * dy[..., None]).reshape(view.shape))
        return Backward(from_channels_last(grad, fmt))

    count = cells.shape[-1]
    found = {CORRECT: routed(_one_hot(np.argmax(cells, axis=-1), count))}
    if not mistakes:
        return found
    found["pool last max"] = routed(_one_hot(count - 1 - np.argmax(cells[..., ::-1], -1), count))
    ties = (cells == cells.max(axis=-1, keepdims=True)).astype(np.float64)
    found["pool split ties"] = routed(ties / ties.sum(axis=-1, keepdims=True))
    found["pool every cell"] = routed(np.ones_like(cells))
    for label, grad in _unoffset_routes(layer, cells, dy, x.shape).items():
        found[label] = Backward(from_channels_last(grad, fmt))
    return found


def _one_hot(index, count):
    return (index[..., None] == np.arange(count)).astype(np.float64)


def _unoffset_routes(layer, cells, dy, x_shape):
    """seeds/002's routing: the argmax a of a k x k window marks cell ((i*k + a) // k,
    (j*k + a) % k), i.e. (i + a // k, a % k), and dL/dx = (dL/dy upsampled) * marks.
    The seed took a over `window[c]` (one row, the channel as index); the second
    variant keeps a correct argmax. Only for the seed's case: 2D, valid, stride = k."""
    k = layer.pool_size[0]
    if layer.rank != 2 or layer.pool_size != (k, k) or layer.strides != (k, k):
        return {}
    if layer.padding != "valid":
        return {}
    batch, rows, cols, channels = dy.shape
    upsampled = np.zeros(x_shape)
    upsampled[:, : rows * k, : cols * k] = np.repeat(np.repeat(dy, k, axis=1), k, axis=2)
    argmaxes = {"pool argmax not offset": np.argmax(cells, axis=-1)}
    if channels <= k:
        c = np.arange(channels)
        window_rows = cells.reshape(*cells.shape[:-1], k, k)[:, :, :, c, c, :]
        argmaxes["pool argmax of one row"] = np.argmax(window_rows, axis=-1)
    b = np.arange(batch).reshape(-1, 1, 1, 1)
    i = np.arange(rows).reshape(1, -1, 1, 1)
    c = np.arange(channels).reshape(1, 1, 1, -1)
    found = {}
    for label, a in argmaxes.items():
        marks = np.zeros(x_shape)
        marks[b, (i * k + a) // k, a % k, c] = 1.0
        found[label] = upsampled * marks
    return found


# -- flatten, dense, batch normalization, anything else -----------------------------


def flatten_core(step: Step, dy, mistakes):
    found = engine_core(step, dy, False)
    x = step.x
    if mistakes and CORRECT in found and x.ndim >= 3 and step.layer.data_format != "channels_first":
        channel_major = dy.reshape(x.shape[0], x.shape[-1], *x.shape[1:-1])
        found["flatten channel-major"] = Backward(np.moveaxis(channel_major, 1, -1))
    return found


def dense_core(step: Step, dz, mistakes):
    found = engine_core(step, dz, False)
    if not mistakes or CORRECT not in found:
        return found
    kernel = np.asarray(step.layer.w["kernel"], np.float64)
    if kernel.shape[0] == kernel.shape[1]:
        found["dense kernel not transposed"] = Backward(np.matmul(dz, kernel))
    grad = found[CORRECT].weights.get("kernel")
    if step.flattened is not None and grad is not None and len(step.flattened) >= 2:
        order = np.moveaxis(np.arange(math.prod(step.flattened)).reshape(step.flattened), -1, 0)
        found["dense kernel channel-major"] = Backward(weights={"kernel": grad[order.ravel()]})
    return found


def batchnorm_core(step: Step, dy, mistakes):
    """BatchNormalization: through the batch statistics in training, else the moving ones.

    Which one Keras used is read from its output: the batch-statistics
    normalization reproduces it in training mode only.
    """
    layer, x = step.layer, np.asarray(step.x, np.float64)
    if layer.renorm or layer.virtual_batch_size is not None:
        return engine_core(step, dy, False)
    axes = positive(layer.axes, x.ndim)
    over = tuple(i for i in range(x.ndim) if i not in axes)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    w = {name: np.asarray(v, np.float64) for name, v in layer.w.items()}
    gamma = reshaped(w, "gamma", shape)
    gamma = np.ones(shape) if gamma is None else gamma
    beta = reshaped(w, "beta", shape)
    mean, var = moments(x, over)
    inv = 1.0 / np.sqrt(var + layer.epsilon)
    xh = (x - mean) * inv
    out = gamma * xh + (0.0 if beta is None else beta)
    training = np.linalg.norm(out - step.y) <= 1e-3 * np.linalg.norm(step.y) + 1e-9
    moving = 1.0 / np.sqrt(reshaped(w, "moving_variance", shape) + layer.epsilon)
    if not training:
        xh = (x - reshaped(w, "moving_mean", shape)) * moving
    grads = {}
    if "gamma" in layer.w:
        grads["gamma"] = np.sum(dy * xh, axis=over).reshape(layer.w["gamma"].shape)
    if "beta" in layer.w:
        grads["beta"] = np.sum(dy, axis=over).reshape(layer.w["beta"].shape)
    dxh = dy * gamma
    if not training:
        return {CORRECT: Backward(dxh * moving, grads)}
    centered = dxh - dxh.mean(axis=over, keepdims=True)
    found = {
        CORRECT: Backward(
            (centered - xh * np.mean(dxh * xh, axis=over, keepdims=True)) * inv, grads
        )
    }
    if mistakes:
        found["bn statistics constant"] = Backward(dxh * inv)
        found["bn variance constant"] = Backward(centered * inv)
        found["bn moving statistics"] = Backward(dxh * moving)
    return found


def engine_core(step: Step, dz, mistakes):
    """The engine's own backward (`Layer.vjp`) on the reference's input: correct path only."""
    backward = _engine_backward(step.layer, step.x)
    if backward is None:
        return {}
    d_input, grads = getattr(backward, "pre_activation", backward)(dz)
    return {CORRECT: Backward(d_input, dict(grads))}


def _engine_backward(layer, x):
    """The layer's backward at `x`, or None: any layer's code may refuse the reference's
    float64 values or need arguments a hint does not have, and a hint is best effort."""
    if getattr(layer, "uses_noise", False):
        return None  # a dropout mask the reference does not carry
    try:
        return layer.vjp(x, training=False)[1]
    except Exception:
        return None


CORES = {
    **{name: conv_core for name in CONV_CLASSES},
    **{name: maxpool_core for name in MAX_POOL_CLASSES},
    "Flatten": flatten_core,
    "Dense": dense_core,
    "BatchNormalization": batchnorm_core,
}


def loss_gradient_variants(d_output: np.ndarray) -> dict[str, np.ndarray]:
    """Mistakes in dL/d(model output) beyond a constant factor (those are `name_factor`'s):
    seeds/002's `lossderiv` adds (p - y) over the batch into one gradient for every
    sample, times 2/B, so without Keras' 1/D either."""
    if d_output.ndim < 2 or d_output.shape[0] < 2:
        return {}
    summed = np.broadcast_to(d_output.sum(axis=0, keepdims=True), d_output.shape)
    found = {"batch summed": summed}
    if d_output.shape[-1] > 1:
        found["batch summed, not averaged over D"] = summed * d_output.shape[-1]
    return found


# -- constant factors ------------------------------------------------------------


def scale_factors(batch: int, depth: int, learning_rate: float | None) -> dict[str, float]:
    """{phrase: factor} of the constant factors a gradient is commonly off by."""
    factors = {
        f"summed over the batch where Keras averages (factor B = {batch})": batch,
        f"divided by the batch size where Keras sums, or twice (factor 1/B = 1/{batch})": (
            1 / batch
        ),
        (
            "half Keras' value: the ½(p - y)² convention; Keras' MSE is mean((p - y)²) "
            "(gradient 2 (p - y) / (B * D))"
        ): 0.5,
        "twice Keras' value (factor 2)": 2.0,
        f"MSE summed over the last axis where Keras averages it (factor D = {depth})": depth,
        f"averaged over the last axis where Keras sums (factor 1/D = 1/{depth})": 1 / depth,
        f"summed over every element where Keras averages (factor B * D = {batch * depth})": (
            batch * depth
        ),
    }
    if learning_rate:
        factors[
            f"a training step (learning rate x gradient), not the gradient: divide by the "
            f"learning rate {learning_rate:g}"
        ] = learning_rate
    return {phrase: float(f) for phrase, f in factors.items() if not math.isclose(f, 1.0)}


def name_factor(alpha: float, factors: dict[str, float], rtol: float = 1e-2) -> str:
    """A phrase for `user = alpha * reference`: the named factors alpha equals, or alpha."""
    sign = "sign flipped ((y - p) instead of (p - y), or a descent step instead of a gradient)"
    size = abs(alpha)
    names = [phrase for phrase, f in factors.items() if abs(size - f) <= rtol * f]
    parts = ([sign] if alpha < 0 else []) + (names or [f"a constant factor {size:.4g}"])
    return "matches Keras' times a constant: " + "; ".join(parts)
