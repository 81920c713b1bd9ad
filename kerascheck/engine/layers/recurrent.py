"""Recurrent layers: SimpleRNN, LSTM, GRU, RNN over cells, Bidirectional and ConvLSTM.

A cell is a plain object (not a Layer) that declares its weights and computes
one time step; every recurrent layer is the same time loop (`run_sequence`)
around one cell, so masks, `go_backwards`, `return_state` and initial states
are handled once. The input's part of every step (`x @ kernel + bias`, or
ConvLSTM's input convolution) is one product over the whole sequence
(`project_vjp`); the loop runs over time steps only, one batched recurrent
matmul (or conv.py's `correlate`) per step.

Each cell's `step_vjp` returns the step's backward with its gate values;
`run_sequence_vjp` keeps them and runs backpropagation through time, so the
forward and the backward share one computation. The recurrent kernel's
gradient, a sum of one product per step, is formed once from all steps
(`Outer`, `GradientSum`), as is the input kernel's.

Masking follows the TensorFlow backend's `rnn` (keras/src/backend/tensorflow/
rnn.py, tf_keras/src/backend.py): at a masked step the states are carried
unchanged and the output repeats the previous step's output (zeros before
the first step), or is zero when `zero_output_for_mask` is set (Bidirectional
forces it to `return_sequences`).

Dropout in training (`vjp` with `noise`) replays the masks Keras drew, as the
oracle recorded them: each cell's input and recurrent mask, fixed for the
whole sequence, either one array every gate's input is multiplied by or one
per gate (`implementation=1`, ConvLSTM; `masked_linear`), and tf_keras' fused
LSTM/GRU's mask over the whole input sequence, applied before the loop.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...errors import KerascheckError
from ...loading.spec import LayerSpec, ModelSpec
from .. import activations
from ..base import Layer, as_tuple, data_format
from ..windows import output_length
from .conv import correlate_vjp

# Dropout masks are drawn by Keras, never by the engine: the oracle records them in
# its taped pass for the model's own layer calls (not inside a nested model).
NEEDS_MASKS = (
    "needs the dropout masks Keras drew in its taped training pass, found none: "
    "the masks come from Keras (kerascheck grad/train-step with the Keras reference, "
    "for a layer of the model itself); otherwise use --mode inference"
)

# -- cells ----------------------------------------------------------------------


class Outer(NamedTuple):
    """A step's weight gradient `a.T @ b` (`b` summed over rows when `a` is None), left
    unevaluated: the time loop sums a term over all steps in one product."""

    a: np.ndarray | None
    b: np.ndarray


class GradientSum:
    """Weight gradients summed over time steps, each name's `Outer` terms in one matmul."""

    def __init__(self):
        self.sums: dict = {}
        self.outers: dict = {}

    def add(self, grads: dict) -> None:
        for name, g in grads.items():
            if isinstance(g, Outer):
                self.outers.setdefault(name, []).append(g)
            else:
                self.sums[name] = g if name not in self.sums else self.sums[name] + g

    def total(self) -> dict:
        total = dict(self.sums)
        for name, terms in self.outers.items():
            b = np.concatenate([term.b for term in terms])
            if terms[0].a is None:
                g = b.sum(axis=0)
            else:
                g = np.concatenate([term.a for term in terms]).T @ b
            total[name] = g if name not in total else total[name] + g
        return total


class _Cell:
    """One step of a recurrence; weights are bound by name after the layer checks them.

    A step is split in two: `project_vjp` computes the input's part of the
    pre-activations (`x @ kernel + bias`, or the input convolution) for the whole
    sequence at once, and `step_vjp` adds the recurrent part step by step.
    """

    weight_names: tuple = ()

    def __init__(self, config: dict, keras_major: int):
        self.use_bias = bool(config.get("use_bias", True))
        self.activation = activations.resolve(config.get("activation", "tanh"), keras_major)
        self.w: dict[str, np.ndarray] = {}
        self.setup(config, keras_major)

    def setup(self, config, keras_major):
        self.units = int(config["units"])

    @property
    def state_sizes(self) -> tuple:
        return (self.units,)

    @property
    def output_size(self) -> int:
        return self.units

    def weight_shapes(self, step_shape) -> list[tuple[str, tuple]]:
        raise NotImplementedError

    def bind(self, weights: dict) -> None:
        self.w = weights

    def zero_states(self, x_t: np.ndarray) -> list[np.ndarray]:
        return [np.zeros((x_t.shape[0], size), dtype=x_t.dtype) for size in self.state_sizes]

    # Keras' dropout masks for this cell (input, recurrent), set by the layer for one
    # training-mode run: None, one array for every gate, or a list with one per gate.
    masks: tuple = (None, None)

    def leaves(self) -> list:
        """The cells that draw their own dropout masks, in Keras' order."""
        return [self]

    def input_op(self, v, kernel):
        """(v @ kernel, backward) on a batch of steps; ConvLSTM convolves."""
        return _matmul_vjp(v, kernel)

    def input_bias(self) -> tuple[str, np.ndarray] | None:
        """(gradient name, value) of the bias added to the input's part, if any."""
        return ("bias", self.w["bias"]) if self.use_bias else None

    def project_vjp(self, x):
        """The input's part of every step's pre-activations for a sequence (B, T, ...)
        under the input dropout mask, and its backward `dP -> (dL/dx, {weight: grad})`."""
        steps = x.reshape(-1, *x.shape[2:])

        def over_steps(mask):  # a (B, ...) mask, repeated for each time step
            if mask is None:
                return None
            return np.broadcast_to(np.expand_dims(mask, 1), x.shape).reshape(steps.shape)

        mask = self.masks[0]
        mask = [over_steps(m) for m in mask] if isinstance(mask, list | tuple) else over_steps(mask)
        p, back = masked_linear(self.input_op, steps, self.w["kernel"], mask)
        bias = self.input_bias()
        if bias is not None:
            p += bias[1]

        def backward(dp):
            d_steps = dp.reshape(-1, *dp.shape[2:])
            dx, d_kernel = back(d_steps)
            grads = {"kernel": d_kernel}
            if bias is not None:
                grads[bias[0]] = d_steps.sum(axis=tuple(range(d_steps.ndim - 1)))
            return dx.reshape(x.shape), grads

        return p.reshape(*x.shape[:2], *p.shape[1:]), backward

    def step_vjp(self, p_t, states):
        """(output, new states, backward) for one time step from the input's part
        `p_t`; `backward(d_output, d_new_states)` gives (dL/dp_t, [dL/d each previous
        state], {weight: gradient or `Outer`})."""
        raise NotImplementedError

    def raw_step_vjp(self, x_t, states):
        """`step_vjp` from the step's input itself (a stacked cell's input is the
        previous cell's output); the backward gives dL/dx_t and every weight's gradient."""
        p, project_backward = self.project_vjp(x_t[:, None])
        output, new_states, step_backward = self.step_vjp(p[:, 0], states)

        def backward(d_output, d_states):
            dp, d_prev, grads = step_backward(d_output, d_states)
            dx, project_grads = project_backward(dp[:, None])
            return dx[:, 0], d_prev, {**grads, **project_grads}

        return output, new_states, backward

    def finish_grads(self, grads: dict) -> dict:
        """The summed gradients under the weights' own names."""
        return grads


def _matmul_vjp(v, kernel):
    return np.matmul(v, kernel), lambda dy: (dy @ kernel.T, v.T @ dy)


def _outer_matmul_vjp(v, kernel):
    return np.matmul(v, kernel), lambda dy: (dy @ kernel.T, Outer(v, dy))


def recurrent_linear(v, kernel, mask):
    """`masked_linear` of `v @ kernel`, its kernel gradient an `Outer` where it can be."""
    op = _matmul_vjp if isinstance(mask, list | tuple) else _outer_matmul_vjp
    return masked_linear(op, v, kernel, mask)


def masked_linear(op_vjp, v, kernel, mask):
    """`op(v * mask, kernel)` under Keras' recurrent dropout, and its backward
    `dy -> (dL/dv, dL/dkernel)`.

    `mask` is None (no dropout), one array every gate's input is multiplied by,
    or a list of arrays, one per gate: gate g then sees `v * mask[g]` against its
    block of the kernel's last axis (Keras' `implementation=1` cells, ConvLSTM).
    `op_vjp(v, kernel)` gives (y, backward) for the unmasked operation.
    """
    if not isinstance(mask, list | tuple):
        masked = v if mask is None else v * mask
        y, back = op_vjp(masked, kernel)

        def backward(dy):
            dv, d_kernel = back(dy)
            return (dv if mask is None else dv * mask), d_kernel

        return y, backward
    blocks = np.split(kernel, len(mask), axis=-1)
    parts = [op_vjp(v * m, k) for m, k in zip(mask, blocks)]
    y = np.concatenate([part[0] for part in parts], axis=-1)

    def backward(dy):
        dv, d_blocks = 0, []
        for (_, back), m, d in zip(parts, mask, np.split(dy, len(mask), axis=-1)):
            d_masked, d_block = back(d)
            dv = dv + d_masked * m
            d_blocks.append(d_block)
        return dv, np.concatenate(d_blocks, axis=-1)

    return y, backward


def _gate_mask(mask, gate: int):
    """The mask gate `gate` of a per-gate list sees (the shared one otherwise)."""
    return mask[gate] if isinstance(mask, list | tuple) else mask


class SimpleRNNCell(_Cell):
    """`h = activation(x @ kernel + bias + h_prev @ recurrent_kernel)`."""

    def weight_shapes(self, step_shape):
        u = self.units
        shapes = [("kernel", (step_shape[-1], u)), ("recurrent_kernel", (u, u))]
        return shapes + ([("bias", (u,))] if self.use_bias else [])

    def step_vjp(self, p_t, states):
        z, recurrent_backward = recurrent_linear(
            states[0], self.w["recurrent_kernel"], self.masks[1]
        )
        z += p_t
        h = self.activation(z)

        def backward(d_output, d_states):
            dz = activations.backward(self.activation, z, h, d_output + d_states[0])
            dh_prev, d_recurrent = recurrent_backward(dz)
            return dz, [dh_prev], {"recurrent_kernel": d_recurrent}

        return h, [h], backward


class LSTMCell(_Cell):
    """Gates in Keras' order i, f, c, o; `recurrent_activation` comes from the config
    (Keras 2 files often say hard_sigmoid, whose formula depends on the Keras version)."""

    def setup(self, config, keras_major):
        super().setup(config, keras_major)
        self.recurrent_activation = activations.resolve(
            config.get("recurrent_activation", "sigmoid"), keras_major
        )

    @property
    def state_sizes(self):
        return (self.units, self.units)

    def weight_shapes(self, step_shape):
        u = self.units
        shapes = [("kernel", (step_shape[-1], 4 * u)), ("recurrent_kernel", (u, 4 * u))]
        return shapes + ([("bias", (4 * u,))] if self.use_bias else [])

    def recurrent_vjp(self, h_prev):
        return recurrent_linear(h_prev, self.w["recurrent_kernel"], self.masks[1])

    def step_vjp(self, p_t, states):
        h_prev, c_prev = states
        z, recurrent_backward = self.recurrent_vjp(h_prev)
        z += p_t
        h, new_states, gates_backward = lstm_gates_vjp(
            z, c_prev, self.activation, self.recurrent_activation
        )

        def backward(d_output, d_states):
            dz, dc_prev = gates_backward(d_output + d_states[0], d_states[1])
            dh_prev, d_recurrent = recurrent_backward(dz)
            return dz, [dh_prev, dc_prev], {"recurrent_kernel": d_recurrent}

        return h, new_states, backward


def lstm_gates_vjp(z, c_prev, activation, recurrent_activation):
    """The LSTM update from the summed pre-activations `z` (gates i, f, c, o on the
    last axis) and its backward: `backward(dh, dc)` gives (dL/dz, dL/dc_prev)."""
    u = z.shape[-1] // 4
    z_if, z_c, z_o = z[..., : 2 * u], z[..., 2 * u : 3 * u], z[..., 3 * u :]
    if_ = recurrent_activation(z_if)  # the adjacent i and f gates in one call
    i, f = if_[..., :u], if_[..., u:]
    g = activation(z_c)
    o = recurrent_activation(z_o)
    c = f * c_prev
    c += i * g
    a_c = activation(c)
    h = o * a_c

    def backward(dh, dc):
        back = activations.backward
        dc = dc + back(activation, c, a_c, dh * o)
        d_if = np.concatenate([dc * g, dc * c_prev], axis=-1)
        dz = [
            back(recurrent_activation, z_if, if_, d_if),
            back(activation, z_c, g, dc * i),
            back(recurrent_activation, z_o, o, dh * a_c),
        ]
        return np.concatenate(dz, axis=-1), dc * f

    return h, [h, c], backward


class GRUCell(_Cell):
    """Gates z, r, h. With `reset_after` (bias (2, 3u)) the reset gate multiplies the
    recurrent projection *including its own bias*; without it (Keras 2's old default,
    bias (3u,)) the reset gate multiplies the previous state before the projection."""

    def setup(self, config, keras_major):
        super().setup(config, keras_major)
        self.recurrent_activation = activations.resolve(
            config.get("recurrent_activation", "sigmoid"), keras_major
        )
        # Keras 2 files older than the option behave as reset_after=False.
        self.reset_after = bool(config.get("reset_after", keras_major >= 3))

    def weight_shapes(self, step_shape):
        u = self.units
        shapes = [("kernel", (step_shape[-1], 3 * u)), ("recurrent_kernel", (u, 3 * u))]
        if self.use_bias:
            shapes.append(("bias", (2, 3 * u) if self.reset_after else (3 * u,)))
        return shapes

    def input_bias(self):
        if self.use_bias and self.reset_after:
            return ("input_bias", self.w["bias"][0])
        return super().input_bias()

    def step_vjp(self, p_t, states):
        h_prev = states[0]
        u = self.units
        kernel = self.w["recurrent_kernel"]
        recurrent_mask = self.masks[1]
        if self.reset_after:
            inner, inner_backward = recurrent_linear(h_prev, kernel, recurrent_mask)
            if self.use_bias:
                inner += self.w["bias"][1]
        else:
            two = recurrent_mask
            if isinstance(two, list | tuple):
                two = two[:2]
            inner, inner_backward = recurrent_linear(h_prev, kernel[:, : 2 * u], two)
        z_pre = p_t[:, :u] + inner[:, :u]
        r_pre = p_t[:, u : 2 * u] + inner[:, u : 2 * u]
        z = self.recurrent_activation(z_pre)
        r = self.recurrent_activation(r_pre)
        if self.reset_after:
            recurrent_h = r * inner[:, 2 * u :]
        else:
            h_mask = _gate_mask(recurrent_mask, 2)
            h_h = h_prev if h_mask is None else h_prev * h_mask
            reset_h = r * h_h
            recurrent_h = np.matmul(reset_h, kernel[:, 2 * u :])
        hh_pre = p_t[:, 2 * u :] + recurrent_h
        hh = self.activation(hh_pre)
        one = np.asarray(1, dtype=z.dtype)
        h = z * h_prev + (one - z) * hh

        def backward(d_output, d_states):
            back = activations.backward
            dh = d_output + d_states[0]
            dh_prev = dh * z
            d_hh = back(self.activation, hh_pre, hh, dh * (one - z))
            if self.reset_after:
                dr = d_hh * inner[:, 2 * u :]
            else:
                d_reset_h = d_hh @ kernel[:, 2 * u :].T
                dr = d_reset_h * h_h
                d_h_h = d_reset_h * r
                dh_prev = dh_prev + (d_h_h if h_mask is None else d_h_h * h_mask)
            dz = back(self.recurrent_activation, z_pre, z, dh * (h_prev - hh))
            dr = back(self.recurrent_activation, r_pre, r, dr)
            dp = np.concatenate([dz, dr, d_hh], axis=-1)
            if self.reset_after:
                d_inner = np.concatenate([dz, dr, d_hh * r], axis=-1)
                d_from_inner, d_recurrent = inner_backward(d_inner)
                grads = {"recurrent_kernel": d_recurrent}
                if self.use_bias:
                    grads["recurrent_bias"] = Outer(None, d_inner)
            else:
                d_inner = np.concatenate([dz, dr], axis=-1)
                d_from_inner, d_two = inner_backward(d_inner)
                grads = {"recurrent_kernel/zr": d_two, "recurrent_kernel/h": Outer(reset_h, d_hh)}
            return dp, [dh_prev + d_from_inner], grads

        return h, [h], backward

    def finish_grads(self, grads):
        if not self.reset_after:
            parts = grads.pop("recurrent_kernel/zr"), grads.pop("recurrent_kernel/h")
            grads["recurrent_kernel"] = np.concatenate(parts, axis=-1)
        elif self.use_bias:
            grads["bias"] = np.stack([grads.pop("input_bias"), grads.pop("recurrent_bias")])
        return grads


class ConvLSTMCell(LSTMCell):
    """LSTM gates from convolutions, channels-last: the input convolution uses the
    layer's strides, dilation and padding; the recurrent one stride 1, no dilation,
    `same` padding (keras/src/layers/rnn/conv_lstm.py `recurrent_conv`)."""

    def __init__(self, config: dict, keras_major: int, rank: int):
        self.rank = rank
        super().__init__(config, keras_major)

    def setup(self, config, keras_major):
        r = self.rank
        self.units = int(config["filters"])
        self.kernel_size = as_tuple(config["kernel_size"], r)
        self.strides = as_tuple(config.get("strides", 1), r)
        self.dilation = as_tuple(config.get("dilation_rate", 1), r)
        self.padding = str(config.get("padding", "valid")).lower()
        self.recurrent_activation = activations.resolve(
            config.get("recurrent_activation", "sigmoid"), keras_major
        )

    def weight_shapes(self, step_shape):
        k, f = self.kernel_size, self.units
        shapes = [("kernel", (*k, step_shape[-1], 4 * f)), ("recurrent_kernel", (*k, f, 4 * f))]
        return shapes + ([("bias", (4 * f,))] if self.use_bias else [])

    def zero_states(self, x_t):
        spatial = [
            output_length(n, k, s, d, self.padding)
            for n, k, s, d in zip(x_t.shape[1:-1], self.kernel_size, self.strides, self.dilation)
        ]
        shape = (x_t.shape[0], *spatial, self.units)
        return [np.zeros(shape, dtype=x_t.dtype), np.zeros(shape, dtype=x_t.dtype)]

    def input_op(self, v, kernel):
        return correlate_vjp(v, kernel, self.strides, self.dilation, self.padding)

    def recurrent_vjp(self, h_prev):
        ones = (1,) * self.rank

        def recurrent_op(v, kernel):
            return correlate_vjp(v, kernel, ones, ones, "same")

        return masked_linear(recurrent_op, h_prev, self.w["recurrent_kernel"], self.masks[1])


class StackedRNNCells(_Cell):
    """Cells applied in order within each step; the states are the cells' states in order."""

    def __init__(self, cells: list[_Cell]):
        self.cells = cells
        self.w = {}

    @property
    def state_sizes(self):
        return tuple(s for cell in self.cells for s in cell.state_sizes)

    @property
    def output_size(self):
        return self.cells[-1].output_size

    def weight_shapes(self, step_shape):
        shapes = []
        for index, cell in enumerate(self.cells):
            shapes += [(f"{index}/{name}", shape) for name, shape in cell.weight_shapes(step_shape)]
            step_shape = (step_shape[0], cell.output_size)
        return shapes

    def leaves(self):
        return [leaf for cell in self.cells for leaf in cell.leaves()]

    def bind(self, weights):
        for index, cell in enumerate(self.cells):
            prefix = f"{index}/"
            cell.bind({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})

    def zero_states(self, x_t):
        states = []
        for cell in self.cells:
            cell_states = cell.zero_states(x_t)
            states += cell_states
            x_t = np.zeros((x_t.shape[0], cell.output_size), dtype=x_t.dtype)
        return states

    def project_vjp(self, x):
        """The first cell's projection (the others' inputs exist only step by step)."""
        p, first_backward = self.cells[0].project_vjp(x)

        def backward(dp):
            dx, grads = first_backward(dp)
            return dx, {f"0/{name}": g for name, g in grads.items()}

        return p, backward

    def step_vjp(self, p_t, states):
        new_states, backwards, counts, position = [], [], [], 0
        output = p_t
        for index, cell in enumerate(self.cells):
            count = len(cell.state_sizes)
            step = cell.step_vjp if index == 0 else cell.raw_step_vjp
            output, cell_states, back = step(output, states[position : position + count])
            new_states += cell_states
            backwards.append(back)
            counts.append(count)
            position += count

        def backward(d_output, d_states):
            d_prev, grads, end = [], {}, len(d_states)
            for index in range(len(self.cells) - 1, -1, -1):
                start = end - counts[index]
                d_output, d_cell, cell_grads = backwards[index](d_output, d_states[start:end])
                d_prev = d_cell + d_prev
                grads.update({f"{index}/{name}": g for name, g in cell_grads.items()})
                end = start
            return d_output, d_prev, grads

        return output, new_states, backward

    def finish_grads(self, grads):
        finished = {}
        for index, cell in enumerate(self.cells):
            prefix = f"{index}/"
            own = {k[len(prefix) :]: g for k, g in grads.items() if k.startswith(prefix)}
            finished.update({prefix + k: g for k, g in cell.finish_grads(own).items()})
        return finished


CELLS = {cls.__name__: cls for cls in (SimpleRNNCell, LSTMCell, GRUCell)}


def make_cell(value, keras_major: int, layer) -> _Cell:
    """A cell from its serialized form: `{"class_name", "config"}`, or a list (stacked)."""
    if isinstance(value, list):
        return StackedRNNCells([make_cell(v, keras_major, layer) for v in value])
    if not isinstance(value, dict):
        raise layer.error(f"expected a serialized RNN cell, found {value!r}")
    class_name, config = value.get("class_name"), value.get("config") or {}
    if class_name == "StackedRNNCells":
        return StackedRNNCells([make_cell(c, keras_major, layer) for c in config["cells"]])
    if class_name not in CELLS:
        raise layer.error(
            f"cell class '{class_name}' is not supported; supported cells: "
            f"{', '.join(sorted([*CELLS, 'StackedRNNCells']))}"
        )
    return CELLS[class_name](config, keras_major)


# -- the time loop ------------------------------------------------------------------


def run_sequence(cell, x, states, mask, go_backwards, zero_output, unroll):
    """Keras' backend `rnn` on a batch-major `x` (B, T, ...).

    Returns (last output, outputs in processing order (B, T, ...), final states);
    with `go_backwards` the outputs come out reversed in time, as in Keras.
    """
    return run_sequence_vjp(cell, x, states, mask, go_backwards, zero_output, unroll, False)[:3]


def run_sequence_vjp(cell, x, states, mask, go_backwards, zero_output, unroll, keep_steps=True):
    """`run_sequence` and its backpropagation through time.

    The fourth item, `backward(d_last, d_sequence, d_states)` (None for a zero
    gradient), gives (dL/dx, [dL/d each initial state], {weight: grad}). Without
    `keep_steps` (inference) no step's backward is kept, and `backward` must not be called.
    """
    steps = list(range(x.shape[1] - 1, -1, -1)) if go_backwards else list(range(x.shape[1]))
    projected, project_backward = cell.project_vjp(x)
    outputs, backwards, previous = [], [], None
    for t in steps:
        output, new_states, back = cell.step_vjp(projected[:, t], states)
        if keep_steps:  # each step's backward holds its gate values
            backwards.append(back)
        if mask is not None:
            keep = mask[:, t]
            previous = np.zeros_like(output) if previous is None else previous
            output = np.where(_against(keep, output), output, previous)
            new_states = [np.where(_against(keep, n), n, s) for n, s in zip(new_states, states)]
        outputs.append(output)
        previous, states = output, list(new_states)
    sequence = np.stack(outputs, axis=1)
    last = outputs[-1]
    zero = np.zeros((), dtype=sequence.dtype)
    processed = zeroing = None
    if zero_output and mask is not None:
        processed = mask[:, ::-1] if go_backwards else mask
        # The unrolled TF loop zeroes with the mask in *input* order even when the
        # outputs are reversed (backend rnn: `tf.where(_expand_mask(mask, outputs))`).
        zeroing = mask if unroll else processed
        sequence = np.where(_against(zeroing, sequence, time=True), sequence, zero)
        last = np.where(_against(processed[:, -1], last), last, zero)
    final_states = states

    def backward(d_last, d_sequence, d_states):
        d_sequence = np.zeros_like(sequence) if d_sequence is None else d_sequence
        d_last = np.zeros_like(last) if d_last is None else d_last
        d_states = [
            np.zeros_like(s) if d is None else d
            for s, d in zip(final_states, d_states or [None] * len(final_states))
        ]
        if processed is not None:
            d_sequence = np.where(_against(zeroing, d_sequence, time=True), d_sequence, zero)
            d_last = np.where(_against(processed[:, -1], d_last), d_last, zero)
        d_projected = np.empty_like(projected)
        grads = GradientSum()
        carried = d_last  # dL/d the latest step's output, beyond the sequence's own
        for k in range(len(steps) - 1, -1, -1):
            t = steps[k]
            d_output = d_sequence[:, k] + carried
            carried = zero
            if mask is not None:
                keep = mask[:, t]
                on = _against(keep, d_output)
                carried = np.where(on, zero, d_output)  # to the repeated previous output
                d_output = np.where(on, d_output, zero)
                passed = [np.where(_against(keep, d), zero, d) for d in d_states]
                d_states = [np.where(_against(keep, d), d, zero) for d in d_states]
            d_projected[:, t], d_states, step_grads = backwards[k](d_output, d_states)
            if mask is not None:
                d_states = [a + b for a, b in zip(d_states, passed)]
            grads.add(step_grads)
        dx, project_grads = project_backward(d_projected)
        grads.add(project_grads)
        return dx, d_states, cell.finish_grads(grads.total())

    return last, sequence, final_states, backward


def _against(mask, value, time=False):
    """A boolean (B,) or (B, T) mask shaped to broadcast against `value`."""
    lead = 2 if time else 1
    return mask.reshape(mask.shape[:lead] + (1,) * (value.ndim - lead))


def _flatten(value) -> list:
    if isinstance(value, (list, tuple)):
        return [item for v in value for item in _flatten(v)]
    return [] if value is None else [value]


# -- stateful layers ------------------------------------------------------------------


def stateful_layers(spec: ModelSpec) -> list[str]:
    """Layers (nested models' and wrapped ones included) declaring stateful=True."""
    found = []
    for layer in spec.layers.values():
        if layer.model is not None:
            found += stateful_layers(layer.model)
        elif _declares_stateful(layer.config):
            found.append(layer.name)
    return found


def _declares_stateful(value) -> bool:
    if isinstance(value, dict):
        return value.get("stateful") is True or any(map(_declares_stateful, value.values()))
    if isinstance(value, (list, tuple)):
        return any(map(_declares_stateful, value))
    return False


def stateful_batch(spec: ModelSpec) -> int | None:
    """The batch size a stateful model was saved for (None: not stateful, or not fixed)."""
    return _declared_batch(spec) if stateful_layers(spec) else None


def _declared_batch(spec: ModelSpec) -> int | None:
    for layer in spec.layers.values():
        shape = layer.config.get("batch_shape") if layer.class_name == "InputLayer" else None
        if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], int):
            return shape[0]
    return None


def check_stateful_run(spec: ModelSpec, total: int, step: int | None = None) -> list[str]:
    """The stateful layers, once sure the run's result does not depend on earlier batches.

    A stateful RNN's output from freshly reset (zero) states is well defined for one
    batch of the declared size; more samples would be several batches with the
    states carried from one to the next, and another size is not what was saved.
    """
    names = stateful_layers(spec)
    if not names:
        return names
    declared = _declared_batch(spec)
    what = f"stateful layer '{names[0]}' carries its states from one batch to the next"
    if declared is not None and total != declared:
        raise KerascheckError(
            f"{what} and was saved for batches of exactly {declared} samples, found {total}: "
            f"give {declared} samples (--batch {declared} for random inputs)"
        )
    if step is not None and step < total:
        raise KerascheckError(
            f"{what}: {total} samples in batches of {step} would depend on earlier batches; "
            f"run them as one batch (--batch-size {total})"
        )
    return names


# -- the layers ----------------------------------------------------------------------


class RNN(Layer):
    """A recurrent layer around one cell (`cell` in the config for RNN itself).

    Initial states arrive as the `initial_state` kwarg (Keras 3) or as extra entries
    of the input list (Keras 2). `return_state` returns [output, *states], states
    flattened in the cells' order as Keras' functional graph indexes them.
    """

    supports_masking = True

    def setup(self, config):
        # stateful=True: every run starts from zero states, as Keras' right after
        # reset_states(); runs that would carry states over are refused up front
        # (check_stateful_run), where the batches are known.
        self.return_sequences = bool(config.get("return_sequences", False))
        self.return_state = bool(config.get("return_state", False))
        self.go_backwards = bool(config.get("go_backwards", False))
        self.unroll = bool(config.get("unroll", False))
        self.time_major = bool(config.get("time_major", False))
        self.zero_output_for_mask = bool(config.get("zero_output_for_mask", False))
        self.cell = self.make_cell(config)

    def make_cell(self, config) -> _Cell:
        return make_cell(config.get("cell"), self.context.keras_major, self)

    # layout hooks: the loop works batch-major and (ConvLSTM) channels-last
    def to_internal(self, x):
        return np.swapaxes(x, 0, 1) if self.time_major else x

    def state_to_internal(self, s):
        return s

    def from_internal(self, last, sequence, states):
        if self.time_major:
            sequence = np.swapaxes(sequence, 0, 1)
        return last, sequence, states

    # ... and their inverses, for gradients
    def sequence_to_internal(self, d_sequence):
        return np.swapaxes(d_sequence, 0, 1) if self.time_major else d_sequence

    def from_internal_input(self, dx):
        return np.swapaxes(dx, 0, 1) if self.time_major else dx

    def state_from_internal(self, s):
        return s

    def step_shape(self, input_shape):
        shape = input_shape[0] if isinstance(input_shape, list) else input_shape
        shape = tuple(shape)
        return ((shape[1],) if self.time_major else (shape[0],)) + shape[2:]

    def weight_shapes(self, input_shape):
        return self.cell.weight_shapes(self.step_shape(input_shape))

    def build(self, input_shape):
        super().build(input_shape)
        self.cell.bind(self.w)

    def call(self, inputs, initial_state=None, mask=None, training=None, constants=None):
        inputs, initial_state, mask = self.arguments(inputs, initial_state, mask, constants)
        return self.run(inputs, initial_state, mask)

    def arguments(self, inputs, initial_state, mask, constants):
        """(sequences, initial states, mask) as the call's arguments give them."""
        if constants is not None:
            raise self.error("RNN constants are not supported (no built-in cell uses them)")
        if isinstance(inputs, list):  # Keras 2: [sequences, *initial states]
            inputs, extra = inputs[0], inputs[1:]
            initial_state = extra or initial_state
        mask = mask[0] if isinstance(mask, list) else mask
        if initial_state is not None and self.context.keras_major >= 3:
            # Keras 3 auto-fills `mask` only for a call with one tensor argument
            # (keras/src/layers/layer.py `__call__`, step 6): with tensor initial
            # states the RNN runs unmasked.
            mask = None
        return inputs, initial_state, mask

    def run(self, inputs, initial_state, mask, zero_output=None):
        return self.run_vjp(inputs, initial_state, mask, zero_output, keep_steps=False)[0]

    def run_vjp(self, inputs, initial_state, mask, zero_output=None, keep_steps=True, dropout=None):
        """The output and `backward(d_output)` -> (dL/d inputs, [dL/d each initial
        state], {weight: grad}); `d_output` is a list when `return_state` is set.
        `dropout`: Keras' masks for a training-mode run (`dropout_masks`)."""
        sequence_mask, cell_masks = dropout if dropout is not None else (None, None)
        if sequence_mask is not None:  # tf_keras' fused LSTM/GRU: the whole sequence at once
            inputs = inputs * sequence_mask
        x = self.to_internal(inputs)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            mask = mask.T if self.time_major else mask
        states = self.initial_states(x, initial_state)
        zero_output = self.zero_output_for_mask if zero_output is None else zero_output
        leaves = self.cell.leaves()
        try:
            for leaf, masks in zip(leaves, cell_masks or [(None, None)] * len(leaves)):
                leaf.masks = masks
            last, sequence, states, loop_backward = run_sequence_vjp(
                self.cell, x, states, mask, self.go_backwards, zero_output, self.unroll, keep_steps
            )
        finally:
            for leaf in leaves:
                leaf.masks = (None, None)
        last, sequence, states = self.from_internal(last, sequence, states)
        output = sequence if self.return_sequences else last
        output = [output, *states] if self.return_state else output

        def backward(d_output):
            d_states = None
            if self.return_state:
                d_output, d_states = d_output[0], list(d_output[1:])
            if d_states is not None:
                d_states = [self.state_to_internal(d) for d in d_states]
            if self.return_sequences:
                d_last, d_sequence = None, self.sequence_to_internal(d_output)
            else:  # the last output is laid out like a state
                d_last, d_sequence = self.state_to_internal(d_output), None
            dx, d_initial, grads = loop_backward(d_last, d_sequence, d_states)
            d_initial = [self.state_from_internal(d) for d in d_initial]
            dx = self.from_internal_input(dx)
            if sequence_mask is not None:
                dx = dx * sequence_mask
            return dx, d_initial, grads

        return output, backward

    @property
    def uses_noise(self) -> bool:
        """In training, dropout inside the recurrence draws masks only Keras knows."""
        return self.uses_dropout()

    def dropout_masks(self, training, noise):
        """(sequence mask, [(input mask, recurrent mask) per cell]) of a training-mode
        run, from the masks the oracle recorded in Keras' taped pass (`noise`:
        {"sequence": array or None, "cells": [{"input": ..., "recurrent": ...}]}).
        Cell masks come in Keras' per-step layout (channels first for a channels_first
        ConvLSTM) and are turned into the loop's."""
        if not training or not self.uses_dropout():
            return None
        if not isinstance(noise, dict) or not isinstance(noise.get("cells"), list):
            raise self.error(f"dropout/recurrent_dropout in training mode {NEEDS_MASKS}")
        leaves = self.cell.leaves()
        if len(noise["cells"]) != len(leaves):
            raise self.error(
                f"expected dropout masks for {len(leaves)} cell(s), "
                f"found {len(noise['cells'])} recorded from Keras"
            )

        def internal(mask):
            if mask is None:
                return None
            if isinstance(mask, (list, tuple)):
                return [self.state_to_internal(np.asarray(m)) for m in mask]
            return self.state_to_internal(np.asarray(mask))

        cells = [(internal(c.get("input")), internal(c.get("recurrent"))) for c in noise["cells"]]
        sequence = noise.get("sequence")
        return (None if sequence is None else np.asarray(sequence)), cells

    def vjp(self, inputs, *args, training=False, noise=None, **kwargs):
        dropout = self.dropout_masks(training, noise)
        names = ("initial_state", "mask", "training", "constants")
        bound = dict(zip(names, args), **kwargs)
        list_input = isinstance(inputs, list)
        x, initial_state, mask = self.arguments(
            inputs, bound.get("initial_state"), bound.get("mask"), bound.get("constants")
        )
        output, run_backward = self.run_vjp(x, initial_state, mask, dropout=dropout)

        def backward(d_output):
            dx, d_initial, grads = run_backward(d_output)
            if list_input:  # [sequences, *initial states]
                return [dx, *d_initial][: len(inputs)], grads
            if bound.get("initial_state") is None:
                return dx, grads
            # initial_state positional (args[0]) or by keyword
            return dx, grads, {"args": [d_initial], "kwargs": {"initial_state": d_initial}}

        return output, backward

    def uses_dropout(self) -> bool:
        configs = [self.config]
        cell = self.config.get("cell")
        for value in cell if isinstance(cell, list) else [cell]:
            if isinstance(value, dict):
                config = value.get("config") or {}
                configs += [config] + [c.get("config") or {} for c in config.get("cells", [])]
        return any(
            float(c.get(key) or 0) > 0 for c in configs for key in ("dropout", "recurrent_dropout")
        )

    def initial_states(self, x, given):
        if given is None:
            return self.cell.zero_states(x[:, 0])
        flat = [self.state_to_internal(np.asarray(s, dtype=x.dtype)) for s in _flatten(given)]
        if len(flat) != len(self.cell.state_sizes):
            raise self.error(
                f"expected {len(self.cell.state_sizes)} initial state tensor(s), found {len(flat)}"
            )
        return flat

    def compute_mask(self, inputs, mask):
        """The input mask for sequences (not reversed by go_backwards), None for states."""
        mask = mask[0] if isinstance(mask, list) else mask
        output_mask = mask if self.return_sequences else None
        if self.return_state:
            return [output_mask] + [None] * len(self.cell.state_sizes)
        return output_mask


class SimpleRNN(RNN):
    def make_cell(self, config):
        return SimpleRNNCell(config, self.context.keras_major)


class LSTM(RNN):
    def make_cell(self, config):
        return LSTMCell(config, self.context.keras_major)


class GRU(RNN):
    def make_cell(self, config):
        return GRUCell(config, self.context.keras_major)


class ConvLSTM2D(RNN):
    """Input (B, T, *spatial, C) or, channels_first, (B, T, C, *spatial)."""

    rank = 2

    def make_cell(self, config):
        self.data_format = data_format(config)
        return ConvLSTMCell(config, self.context.keras_major, self.rank)

    def _channels_last(self):
        return self.data_format == "channels_last"

    def to_internal(self, x):
        return x if self._channels_last() else np.moveaxis(x, 2, -1)

    def state_to_internal(self, s):
        return s if self._channels_last() else np.moveaxis(s, 1, -1)

    def from_internal(self, last, sequence, states):
        if self._channels_last():
            return last, sequence, states
        states = [np.moveaxis(s, -1, 1) for s in states]
        return np.moveaxis(last, -1, 1), np.moveaxis(sequence, -1, 2), states

    def sequence_to_internal(self, d_sequence):
        return d_sequence if self._channels_last() else np.moveaxis(d_sequence, 2, -1)

    def from_internal_input(self, dx):
        return dx if self._channels_last() else np.moveaxis(dx, -1, 2)

    def state_from_internal(self, s):
        return s if self._channels_last() else np.moveaxis(s, -1, 1)

    def step_shape(self, input_shape):
        shape = tuple(input_shape[0] if isinstance(input_shape, list) else input_shape)
        if self._channels_last():
            return (shape[0], *shape[2:])
        return (shape[0], *shape[3:], shape[2])


class ConvLSTM1D(ConvLSTM2D):
    rank = 1


class ConvLSTM3D(ConvLSTM2D):
    rank = 3


class Bidirectional(Layer):
    """A forward and a backward copy of an RNN layer, merged.

    Keras 3 saves both sub-configs; Keras 2 saves `layer` and, only for a custom
    one, `backward_layer` (otherwise the backward copy is `layer` with `go_backwards`
    flipped). Both force `zero_output_for_mask = return_sequences` on the copies and
    re-reverse the backward output in time when it returns sequences.
    """

    supports_masking = True

    def setup(self, config):
        layer = config["layer"]
        backward = config.get("backward_layer")
        if not backward:
            flipped = dict(layer.get("config") or {})
            flipped["go_backwards"] = not flipped.get("go_backwards", False)
            backward = {**layer, "config": flipped}
        self.forward_layer = self.sublayer(layer, "forward")
        self.backward_layer = self.sublayer(backward, "backward")
        self.merge_mode = config.get("merge_mode", "concat")
        if self.merge_mode not in ("concat", "sum", "mul", "ave", None):
            raise self.error(f"unknown merge_mode {self.merge_mode!r}")
        self.return_sequences = self.forward_layer.return_sequences
        self.return_state = self.forward_layer.return_state

    def sublayer(self, value, role) -> RNN:
        class_name = value.get("class_name") if isinstance(value, dict) else None
        cls = RECURRENT.get(class_name)
        if cls is None:
            raise self.error(
                f"the {role} layer has class '{class_name}'; kerascheck supports "
                f"Bidirectional over {', '.join(sorted(RECURRENT))}"
            )
        config = value.get("config") or {}
        spec = LayerSpec(f"{self.name}/{role}", class_name, config)
        return cls(spec, self.context)

    def weight_shapes(self, input_shape):
        forward = self.forward_layer.weight_shapes(input_shape)
        backward = self.backward_layer.weight_shapes(input_shape)
        return [(f"forward/{n}", s) for n, s in forward] + [
            (f"backward/{n}", s) for n, s in backward
        ]

    def build(self, input_shape):
        super().build(input_shape)
        count = len(self.forward_layer.weight_shapes(input_shape))
        self.forward_layer.raw_weights = self.raw_weights[:count]
        self.backward_layer.raw_weights = self.raw_weights[count:]
        for role, sub in (("forward", self.forward_layer), ("backward", self.backward_layer)):
            sub.build(input_shape)
            # share this layer's arrays, so a change to `self.w` reaches the copies
            sub.w = {name: self.w[f"{role}/{name}"] for name in sub.w}
            sub.cell.bind(sub.w)

    def call(self, inputs, initial_state=None, mask=None, training=None, constants=None):
        return self.run_vjp(inputs, initial_state, mask, constants, keep_steps=False)[0]

    def run_vjp(self, inputs, initial_state, mask, constants, keep_steps=True, dropout=None):
        """`dropout`: each direction's masks (`RNN.dropout_masks`), or None."""
        forward_dropout, backward_dropout = dropout or (None, None)
        if constants is not None:
            raise self.error("RNN constants are not supported (no built-in cell uses them)")
        if isinstance(inputs, list):  # Keras 2: [sequences, *forward states, *backward states]
            inputs, extra = inputs[0], inputs[1:]
            initial_state = extra or initial_state
        mask = mask[0] if isinstance(mask, list) else mask
        if initial_state is not None and self.context.keras_major >= 3:
            mask = None  # see RNN.call: Keras 3 passes no mask with tensor initial states
        forward_state = backward_state = None
        if initial_state is not None:
            flat = _flatten(initial_state)
            forward_state, backward_state = flat[: len(flat) // 2], flat[len(flat) // 2 :]
        zero = self.return_sequences
        y, forward_back = self.forward_layer.run_vjp(
            inputs, forward_state, mask, zero, keep_steps, forward_dropout
        )
        y_rev, backward_back = self.backward_layer.run_vjp(
            inputs, backward_state, mask, zero, keep_steps, backward_dropout
        )
        states = []
        count = len(self.forward_layer.cell.state_sizes)
        if self.return_state:
            states = [*y[1:], *y_rev[1:]]
            y, y_rev = y[0], y_rev[0]
        time_axis = 0 if self.forward_layer.time_major else 1
        if self.return_sequences:
            y_rev = np.flip(y_rev, axis=time_axis)
        output = self.merge(y, y_rev)
        if self.return_state:
            output = [*output, *states] if self.merge_mode is None else [output, *states]

        def backward(d_output):
            d_states = []
            if self.return_state:
                split = 2 if self.merge_mode is None else 1
                d_output, d_states = d_output[:split], list(d_output[split:])
                d_output = d_output if self.merge_mode is None else d_output[0]
            d_y, d_rev = self.merge_backward(y, y_rev, d_output)
            if self.return_sequences:
                d_rev = np.flip(d_rev, axis=time_axis)
            if self.return_state:
                d_y, d_rev = [d_y, *d_states[:count]], [d_rev, *d_states[count:]]
            dx, d_forward_state, forward_grads = forward_back(d_y)
            d_back_x, d_backward_state, backward_grads = backward_back(d_rev)
            grads = {f"forward/{n}": g for n, g in forward_grads.items()}
            grads.update({f"backward/{n}": g for n, g in backward_grads.items()})
            return dx + d_back_x, [*d_forward_state, *d_backward_state], grads

        return output, backward

    @property
    def uses_noise(self) -> bool:
        return self.forward_layer.uses_dropout() or self.backward_layer.uses_dropout()

    def vjp(self, inputs, *args, training=False, noise=None, **kwargs):
        dropout = None
        if training and self.uses_noise:
            if not isinstance(noise, dict) or not {"forward", "backward"} <= set(noise):
                raise self.error(f"dropout/recurrent_dropout in training mode {NEEDS_MASKS}")
            dropout = (
                self.forward_layer.dropout_masks(training, noise["forward"]),
                self.backward_layer.dropout_masks(training, noise["backward"]),
            )
        names = ("initial_state", "mask", "training", "constants")
        bound = dict(zip(names, args), **kwargs)
        output, run_backward = self.run_vjp(
            inputs,
            bound.get("initial_state"),
            bound.get("mask"),
            bound.get("constants"),
            dropout=dropout,
        )

        def backward(d_output):
            dx, d_initial, grads = run_backward(d_output)
            if isinstance(inputs, list):  # [sequences, *forward states, *backward states]
                return [dx, *d_initial][: len(inputs)], grads
            if bound.get("initial_state") is None:
                return dx, grads
            return dx, grads, {"args": [d_initial], "kwargs": {"initial_state": d_initial}}

        return output, backward

    def merge_backward(self, y, y_rev, d):
        """dL/d each direction's output from dL/d the merged output."""
        if self.merge_mode == "concat":
            return d[..., : y.shape[-1]], d[..., y.shape[-1] :]
        if self.merge_mode == "sum":
            return d, d
        if self.merge_mode == "mul":
            return d * y_rev, d * y
        if self.merge_mode == "ave":
            half = d / np.asarray(2, dtype=d.dtype)
            return half, half
        return d[0], d[1]

    def merge(self, y, y_rev):
        if self.merge_mode == "concat":
            return np.concatenate([y, y_rev], axis=-1)
        if self.merge_mode == "sum":
            return y + y_rev
        if self.merge_mode == "mul":
            return y * y_rev
        if self.merge_mode == "ave":
            return (y + y_rev) / np.asarray(2, dtype=y.dtype)
        return [y, y_rev]

    def compute_mask(self, inputs, mask):
        mask = mask[0] if isinstance(mask, list) else mask
        output_mask = mask if self.return_sequences else None
        masks = [output_mask, output_mask] if self.merge_mode is None else [output_mask]
        if self.return_state:
            masks += [None] * (2 * len(self.forward_layer.cell.state_sizes))
        return masks if len(masks) > 1 else masks[0]


RECURRENT = {
    cls.__name__: cls for cls in (RNN, SimpleRNN, LSTM, GRU, ConvLSTM1D, ConvLSTM2D, ConvLSTM3D)
}

LAYERS = (*RECURRENT.values(), Bidirectional)
