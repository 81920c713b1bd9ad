"""Recurrent layers: SimpleRNN, LSTM, GRU, RNN over cells, Bidirectional and ConvLSTM.

A cell is a plain object (not a Layer) that declares its weights and computes
one time step; every recurrent layer is the same time loop (`run_sequence`)
around one cell, so masks, `go_backwards`, `return_state` and initial states
are handled once. The loop runs over time steps only; each step is one
batched matmul (or, for ConvLSTM, conv.py's `correlate`).

Masking follows the TensorFlow backend's `rnn` (keras/src/backend/tensorflow/
rnn.py, tf_keras/src/backend.py): at a masked step the states are carried
unchanged and the output repeats the previous step's output (zeros before
the first step), or is zero when `zero_output_for_mask` is set (Bidirectional
forces it to `return_sequences`).
"""

from __future__ import annotations

import numpy as np

from ...loading.spec import LayerSpec
from .. import activations
from ..base import Layer, as_tuple, data_format
from ..windows import output_length
from .conv import correlate

# -- cells ----------------------------------------------------------------------


class _Cell:
    """One step of a recurrence; weights are bound by name after the layer checks them."""

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

    def step(self, x_t, states):
        """(output, new states) for one time step."""
        raise NotImplementedError

    def _project(self, x_t):
        """`x @ kernel (+ bias)`: the input's contribution to every gate at once."""
        y = np.matmul(x_t, self.w["kernel"])
        return y + self.w["bias"] if self.use_bias else y


class SimpleRNNCell(_Cell):
    """`h = activation(x @ kernel + bias + h_prev @ recurrent_kernel)`."""

    def weight_shapes(self, step_shape):
        u = self.units
        shapes = [("kernel", (step_shape[-1], u)), ("recurrent_kernel", (u, u))]
        return shapes + ([("bias", (u,))] if self.use_bias else [])

    def step(self, x_t, states):
        h = self.activation(self._project(x_t) + np.matmul(states[0], self.w["recurrent_kernel"]))
        return h, [h]


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

    def step(self, x_t, states):
        h_prev, c_prev = states
        z = self._project(x_t) + np.matmul(h_prev, self.w["recurrent_kernel"])
        return lstm_gates(z, c_prev, self.activation, self.recurrent_activation)


def lstm_gates(z, c_prev, activation, recurrent_activation):
    """The LSTM update from the summed pre-activations `z` (gates i, f, c, o on the last axis)."""
    z_i, z_f, z_c, z_o = np.split(z, 4, axis=-1)
    i = recurrent_activation(z_i)
    f = recurrent_activation(z_f)
    c = f * c_prev + i * activation(z_c)
    h = recurrent_activation(z_o) * activation(c)
    return h, [h, c]


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

    def step(self, x_t, states):
        h_prev = states[0]
        u = self.units
        kernel = self.w["recurrent_kernel"]
        x = np.matmul(x_t, self.w["kernel"])
        if self.use_bias:
            x = x + (self.w["bias"][0] if self.reset_after else self.w["bias"])
        if self.reset_after:
            inner = np.matmul(h_prev, kernel)
            if self.use_bias:
                inner = inner + self.w["bias"][1]
        else:
            inner = np.matmul(h_prev, kernel[:, : 2 * u])
        z = self.recurrent_activation(x[:, :u] + inner[:, :u])
        r = self.recurrent_activation(x[:, u : 2 * u] + inner[:, u : 2 * u])
        if self.reset_after:
            recurrent_h = r * inner[:, 2 * u :]
        else:
            recurrent_h = np.matmul(r * h_prev, kernel[:, 2 * u :])
        hh = self.activation(x[:, 2 * u :] + recurrent_h)
        h = z * h_prev + (np.asarray(1, dtype=z.dtype) - z) * hh
        return h, [h]


class ConvLSTMCell(_Cell):
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

    @property
    def state_sizes(self):
        return (self.units, self.units)

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

    def step(self, x_t, states):
        h_prev, c_prev = states
        ones = (1,) * self.rank
        z = correlate(x_t, self.w["kernel"], self.strides, self.dilation, self.padding)
        if self.use_bias:
            z = z + self.w["bias"]
        z = z + correlate(h_prev, self.w["recurrent_kernel"], ones, ones, "same")
        return lstm_gates(z, c_prev, self.activation, self.recurrent_activation)


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

    def step(self, x_t, states):
        new_states, position = [], 0
        for cell in self.cells:
            count = len(cell.state_sizes)
            x_t, cell_states = cell.step(x_t, states[position : position + count])
            new_states += cell_states
            position += count
        return x_t, new_states


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
    steps = range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])
    outputs, previous = [], None
    for t in steps:
        output, new_states = cell.step(x[:, t], states)
        if mask is not None:
            keep = mask[:, t]
            previous = np.zeros_like(output) if previous is None else previous
            output = np.where(_against(keep, output), output, previous)
            new_states = [np.where(_against(keep, n), n, s) for n, s in zip(new_states, states)]
        outputs.append(output)
        previous, states = output, list(new_states)
    sequence = np.stack(outputs, axis=1)
    last = outputs[-1]
    if zero_output and mask is not None:
        processed = mask[:, ::-1] if go_backwards else mask
        # The unrolled TF loop zeroes with the mask in *input* order even when the
        # outputs are reversed (backend rnn: `tf.where(_expand_mask(mask, outputs))`).
        zeroing = mask if unroll else processed
        zero = np.zeros((), dtype=sequence.dtype)
        sequence = np.where(_against(zeroing, sequence, time=True), sequence, zero)
        last = np.where(_against(processed[:, -1], last), last, zero)
    return last, sequence, states


def _against(mask, value, time=False):
    """A boolean (B,) or (B, T) mask shaped to broadcast against `value`."""
    lead = 2 if time else 1
    return mask.reshape(mask.shape[:lead] + (1,) * (value.ndim - lead))


def _flatten(value) -> list:
    if isinstance(value, (list, tuple)):
        return [item for v in value for item in _flatten(v)]
    return [] if value is None else [value]


# -- the layers ----------------------------------------------------------------------


class RNN(Layer):
    """A recurrent layer around one cell (`cell` in the config for RNN itself).

    Initial states arrive as the `initial_state` kwarg (Keras 3) or as extra entries
    of the input list (Keras 2). `return_state` returns [output, *states], states
    flattened in the cells' order as Keras' functional graph indexes them.
    """

    supports_masking = True

    def setup(self, config):
        if config.get("stateful"):
            raise self.error(
                "stateful=True carries states between batches, which kerascheck's engine "
                "does not model; re-save the model with stateful=False to verify it"
            )
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
        return self.run(inputs, initial_state, mask)

    def run(self, inputs, initial_state, mask, zero_output=None):
        x = self.to_internal(inputs)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            mask = mask.T if self.time_major else mask
        states = self.initial_states(x, initial_state)
        zero_output = self.zero_output_for_mask if zero_output is None else zero_output
        last, sequence, states = run_sequence(
            self.cell, x, states, mask, self.go_backwards, zero_output, self.unroll
        )
        last, sequence, states = self.from_internal(last, sequence, states)
        output = sequence if self.return_sequences else last
        return [output, *states] if self.return_state else output

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
        self.forward_layer.build(input_shape)
        self.backward_layer.build(input_shape)

    def call(self, inputs, initial_state=None, mask=None, training=None, constants=None):
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
        y = self.forward_layer.run(inputs, forward_state, mask, zero_output=zero)
        y_rev = self.backward_layer.run(inputs, backward_state, mask, zero_output=zero)
        states = []
        if self.return_state:
            states = [*y[1:], *y_rev[1:]]
            y, y_rev = y[0], y_rev[0]
        if self.return_sequences:
            y_rev = np.flip(y_rev, axis=0 if self.forward_layer.time_major else 1)
        output = self.merge(y, y_rev)
        if self.return_state:
            return [*output, *states] if self.merge_mode is None else [output, *states]
        return output

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
