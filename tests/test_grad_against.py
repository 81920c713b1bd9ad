"""`grad --against`: a learner's own gradients judged against Keras, their mistakes named.

seeds/002 checks a hand-written Conv/MaxPool/Flatten/Dense network against Keras
on two examples, built here exactly as it builds them (np.random.seed(0) draws in
its order, MSE, SGD(100)). Its backward code, transcribed below loop for loop in
its own (C, H, W) layout, has these real mistakes:

1. `ConvolutionalLayer.calcwdeltas` correlates the zero-padded delta with
   `self.weights[i, j].T`: the conv input gradient with the kernel transposed
   instead of rotated 180°;
2. `updateweight` correlates the input with the delta repeated over the input
   channels by a one-filter layer whose neuron sums over channels: the kernel
   gradient summed over input channels;
3. `self.bias -= self.lr * np.sum(self.delta)`: every filter's bias gradient is
   the sum over all filters;
4. `MaxPoolingLayer.calculate` takes `np.argmax(matrix[c])` of the (k, k) window
   (one row of it, the channel as index) and marks `position[c, (i*k + a)//k,
   (j*k + a)%k]`: the gradient goes to the wrong cells;
5. `FlattenLayer` flattens (C, H, W) and unflattens the gradient the same way:
   channel-major where Keras is channels-last (example 3 has 2 channels), which
   also orders the Dense kernel gradient's rows channel-major;
6. `calculateloss` is ½ Σ (p - y)² / B: half Keras' MSE;
7. `lossderiv` adds (p - y) over the batch into one gradient for every sample and
   never divides by the output width (invisible on the seed's batch of 1 and one
   output; shown on a batch of 4 with 3 outputs).

Each is injected alone into otherwise correct arrays (Keras' own tape gradients)
and must be the first divergence, at its call and tensor, named by its hint. The
rest of the usual mistakes are checked on a model with a strided `same` conv,
BatchNormalization, ties in a max pool and a 3-unit MSE output, and on a
saturated sigmoid output whose loss `fit` takes from the logits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FLAVORS, keras_module

import kerascheck
from kerascheck.cli import main
from kerascheck.errors import KerascheckError
from kerascheck.grad import GradTolerance, _keras_reference
from kerascheck.grad_against import against_rows
from kerascheck.grad_hints import HINTS
from kerascheck.oracle.gradients import KerasGradientRunner

EXT = {"keras": ".keras", "tf_keras": ".h5"}


# -- the models ------------------------------------------------------------------------


def seed_example2(k):
    np.random.seed(0)
    x = np.random.rand(1, 7, 7, 1)
    y = np.random.rand(1)
    conv1_w, conv1_b = np.random.rand(3, 3, 1, 2), np.random.rand(2)
    conv2_w, conv2_b = np.random.rand(3, 3, 2, 1), np.random.rand(1)
    fc_w, fc_b = np.random.rand(9, 1), np.random.rand(1)
    model = k.Sequential()
    model.add(k.layers.Conv2D(2, 3, input_shape=(7, 7, 1), activation="sigmoid"))
    model.add(k.layers.Conv2D(1, 3, activation="sigmoid"))
    model.add(k.layers.Flatten())
    model.add(k.layers.Dense(1, activation="sigmoid"))
    model.layers[0].set_weights([conv1_w, conv1_b])
    model.layers[1].set_weights([conv2_w, conv2_b])
    model.layers[3].set_weights([fc_w, fc_b])
    return model, x, y


def seed_example3(k):
    np.random.seed(0)
    x = np.random.rand(1, 8, 8, 1)
    y = np.random.rand(1)
    conv_w, conv_b = np.random.rand(3, 3, 1, 2), np.random.rand(2)
    fc_w, fc_b = np.random.rand(18, 1), np.random.rand(1)
    model = k.Sequential()
    model.add(k.layers.Conv2D(2, 3, input_shape=(8, 8, 1), activation="sigmoid"))
    model.add(k.layers.MaxPooling2D(2))
    model.add(k.layers.Flatten())
    model.add(k.layers.Dense(1, activation="sigmoid"))
    model.layers[0].set_weights([conv_w, conv_b])
    model.layers[3].set_weights([fc_w, fc_b])
    return model, x, y


def mixed_model(k):
    """Everything seed 002 lacks: a strided `same` conv after another conv (its input
    gradient is suppliable), tanh, BatchNormalization in training, ReLU zeros tying in
    a max pool, a batch of 4 and a 3-unit MSE output."""
    rng = np.random.default_rng(3)
    inputs = k.Input((8, 8, 2))
    h = k.layers.Conv2D(2, 3, padding="same", activation="tanh", name="c1")(inputs)
    h = k.layers.Conv2D(2, 3, strides=2, padding="same", activation="tanh", name="c2")(h)
    h = k.layers.BatchNormalization(name="bn")(h)
    h = k.layers.Activation("relu", name="relu")(h)
    h = k.layers.MaxPooling2D(2, name="pool")(h)
    h = k.layers.Flatten(name="flat")(h)
    model = k.Model(inputs, k.layers.Dense(3, name="out")(h))
    model.set_weights([rng.normal(0, 0.6, w.shape) for w in model.get_weights()])
    bn = model.get_layer("bn")
    bn.set_weights([*bn.get_weights()[:2], np.zeros(2), np.ones(2)])
    return model, rng.normal(size=(4, 8, 8, 2)), rng.normal(size=(4, 3))


def logits_model(k):
    """A sigmoid output saturated at 1.0 for a sample whose target is 0: fit takes the
    binary cross-entropy from the logits (gradient p - y), a clipped one gives 0."""
    inputs = k.Input((4,))
    h = k.layers.Dense(3, activation="tanh", name="h")(inputs)
    model = k.Model(inputs, k.layers.Dense(1, activation="sigmoid", name="p")(h))
    model.get_layer("h").set_weights([np.eye(4, 3) * 2.0, np.zeros(3)])
    model.get_layer("p").set_weights([np.array([[12.0], [9.0], [-1.0]]), np.array([2.0])])
    x = np.array([[3.0, 2.0, 0.5, 0.0], [-0.3, 0.2, 0.1, 1.0]])
    return model, x, np.array([[0.0], [1.0]])


def mlp(k):
    """Dense layers only: the CLI's whole path (engine backward included) on any checkout."""
    rng = np.random.default_rng(5)
    inputs = k.Input((5,))
    h = k.layers.Dense(4, activation="tanh", name="hidden")(inputs)
    model = k.Model(inputs, k.layers.Dense(2, name="out")(h))
    model.set_weights([rng.normal(0, 0.7, w.shape) for w in model.get_weights()])
    return model, rng.normal(size=(3, 5)), rng.normal(size=(3, 2))


@dataclass
class Case:
    path: str
    model: object  # the engine's model
    ref: object  # GradReference from Keras' tape
    x: np.ndarray
    y: np.ndarray

    @property
    def calls(self) -> list[str]:
        return [call.name for call in self.model.spec.calls]


def build(tmp, flavor, name, make, loss="mse", lr=100.0) -> Case:
    k = keras_module(flavor)
    model, x, y = make(k)
    model.compile(loss=loss, optimizer=k.optimizers.SGD(lr))
    path = os.path.join(tmp, f"{name}_{flavor}{EXT[flavor]}")
    model.save(path)
    x, y = x.astype("float32"), np.asarray(y, "float32").reshape(len(x), -1)
    engine = kerascheck.load(path)
    runner = KerasGradientRunner(path, engine.spec, flavor, engine.spec.training["loss"])
    tape = runner.gradients([x], [y], training=True)
    return Case(path, engine, _keras_reference(engine, tape, [x]), x, y)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("grad_against"))
    found = {}
    for flavor in FLAVORS:
        found[flavor, 2] = build(tmp, flavor, "seed2", seed_example2)
        found[flavor, 3] = build(tmp, flavor, "seed3", seed_example3)
    found["mixed"] = build(tmp, "keras", "mixed", mixed_model, lr=0.1)
    found["logits"] = build(tmp, "keras", "logits", logits_model, loss="binary_crossentropy")
    found["mlp"] = build(tmp, "keras", "mlp", mlp, lr=0.1)
    for case in found.values():
        stem = case.path.rsplit(".", 1)[0]
        np.save(stem + ".x.npy", case.x)
        np.save(stem + ".y.npy", case.y)
    return found


# -- arrays, layouts, verdicts -----------------------------------------------------------


def correct_arrays(case) -> dict:
    """Keras' own loss and gradients under the --against keys."""
    ref = case.ref
    arrays = {"loss": np.float64(ref.loss)}
    for name in case.calls:
        if ref.d_outputs.get(name) is not None:
            arrays[f"d/{name}"] = ref.d_outputs[name]
    for layer, grads in ref.weights.items():
        for weight, grad in grads.items():
            arrays[f"grad/{layer}/{weight}"] = grad
    return arrays


def channels_first(arrays) -> dict:
    return {
        key: np.moveaxis(v, -1, 1) if key.startswith("d/") and np.ndim(v) >= 3 else v
        for key, v in arrays.items()
    }


def torch_layout(arrays) -> dict:
    moved = channels_first(arrays)
    for key, v in moved.items():
        if key.startswith("grad/") and key.endswith("/kernel"):
            moved[key] = np.transpose(v, (3, 2, 0, 1)) if v.ndim == 4 else v.T
    return moved


def rows_of(case, arrays, layout="channels_last"):
    return against_rows(arrays, case.ref, case.model, layout, GradTolerance())


def first_divergence(case, arrays, layout="channels_last"):
    """(call, tensor, hint) of the first mismatching tensor in backward order."""
    for row in rows_of(case, arrays, layout):
        for tensor in row.tensors:
            if tensor.status == "mismatch":
                return row.name, tensor.tensor, tensor.hint
    return None


def chw(value) -> np.ndarray:
    """One sample of a channels-last array in the seed's (C, H, W) layout."""
    return np.moveaxis(np.asarray(value, np.float64)[0], -1, 0)


def seed_delta(case, call) -> np.ndarray:
    """The seed's `delta = wtimesdelta * output * (1 - output)`, (C, H, W)."""
    return chw(case.ref.d_outputs[call]) * seed_delta_factor(case, call)


def seed_weights(case, call) -> np.ndarray:
    """The layer's kernel in the seed's (filters, channels, k, k), properly transposed."""
    layer = case.model.spec.calls[case.calls.index(call)].layer
    return np.transpose(case.ref.layer_weights[layer]["kernel"], (3, 2, 0, 1)).astype(np.float64)


def layer_of(case, call) -> str:
    return case.model.spec.calls[case.calls.index(call)].layer


# -- seeds/002's backward, loop for loop -------------------------------------------------


def seed_conv_input_gradient(delta, weights):
    """`calcwdeltas`: pad each filter's delta by k-1, correlate with weights[j, i].T, sum j."""
    filters, channels, k, _ = weights.shape
    rows, cols = delta.shape[1:]
    out = np.zeros((channels, rows + k - 1, cols + k - 1))
    for i in range(channels):
        for j in range(filters):
            padded = np.zeros((rows + 2 * (k - 1), cols + 2 * (k - 1)))
            padded[k - 1 : k - 1 + rows, k - 1 : k - 1 + cols] = delta[j]
            w = weights[j, i].T
            for r in range(out.shape[1]):
                for s in range(out.shape[2]):
                    out[i, r, s] += np.sum(padded[r : r + k, s : s + k] * w)
    return out


def seed_kernel_gradient(x, delta):
    """`updateweight`: one neuron with weights delta repeated over channels, on the input."""
    channels, height, _ = x.shape
    rows, cols = delta.shape[1:]
    k = height - rows + 1
    grad = np.zeros((delta.shape[0], channels, k, k))
    for f in range(delta.shape[0]):
        repeated = np.stack([delta[f]] * channels)
        for u in range(k):
            for v in range(k):
                grad[f, :, u, v] = np.sum(x[:, u : u + rows, v : v + cols] * repeated)
    return grad


def seed_maxpool_gradient(x, d, k):
    """`MaxPoolingLayer`: positions from argmax(matrix[c]), gradient = expanded * position."""
    channels, height, width = x.shape
    position = np.zeros_like(x)
    expanded = np.zeros_like(x)
    for c in range(channels):
        for i in range(height // k):
            for j in range(width // k):
                matrix = x[c, i * k : (i + 1) * k, j * k : (j + 1) * k]
                a = np.argmax(matrix[c])
                position[c, (i * k + a) // k, (j * k + a) % k] = 1
                expanded[c, i * k : (i + 1) * k, j * k : (j + 1) * k] = d[c, i, j]
    return expanded * position


# -- definitions of the other mistakes (2D, channels-last, by the textbook formula) ------


def conv_input_gradient(dz, kernel, in_hw, strides, pads, crop=None, packed=False):
    """Output (i, j) read padded input (i*s + u, j*s + v) with tap (u, v): scatter back."""
    batch, rows, cols, _ = dz.shape
    kh, kw, channels, _ = kernel.shape
    (top, bottom), (left, right) = pads
    grid = np.zeros((batch, in_hw[0] + top + bottom, in_hw[1] + left + right, channels))
    sh, sw = (1, 1) if packed else strides
    for i in range(rows):
        for j in range(cols):
            for u in range(kh):
                for v in range(kw):
                    grid[:, i * sh + u, j * sw + v] += dz[:, i, j] @ kernel[u, v].T
    top, left = crop or (top, left)
    return grid[:, top : top + in_hw[0], left : left + in_hw[1]]


def conv_kernel_gradient(x, dz, ksize, strides, pads, packed=False):
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    sh, sw = (1, 1) if packed else strides
    grad = np.zeros((*ksize, x.shape[-1], dz.shape[-1]))
    for u in range(ksize[0]):
        for v in range(ksize[1]):
            for i in range(dz.shape[1]):
                for j in range(dz.shape[2]):
                    grad[u, v] += xp[:, i * sh + u, j * sw + v].T @ dz[:, i, j]
    return grad


def pool_gradient(x, dy, k, pick):
    """MaxPooling2D(k) backward with `pick(window) -> weights over its k*k cells`."""
    grad = np.zeros_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[-1]):
            for i in range(dy.shape[1]):
                for j in range(dy.shape[2]):
                    window = x[b, i * k : (i + 1) * k, j * k : (j + 1) * k, c].ravel()
                    share = pick(window).reshape(k, k)
                    grad[b, i * k : (i + 1) * k, j * k : (j + 1) * k, c] += dy[b, i, j, c] * share
    return grad


def _last_max(window):
    share = np.zeros_like(window)
    share[len(window) - 1 - np.argmax(window[::-1])] = 1
    return share


def _split_ties(window):
    ties = (window == window.max()).astype(float)
    return ties / ties.sum()


def _tanh_at_output(case, call):
    y = case.ref.outputs[call].astype(float)
    return case.ref.d_outputs[call] * (1 - np.tanh(y) ** 2)


# -- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("example", [2, 3])
def test_keras_own_gradients_pass_in_every_layout(cases, flavor, example):
    case = cases[flavor, example]
    arrays = correct_arrays(case)
    for layout, convert in [
        ("channels_last", dict),
        ("channels_first", channels_first),
        ("torch", torch_layout),
    ]:
        rows = rows_of(case, convert(arrays), layout)
        assert [r.name for r in rows] == ["loss", *reversed(case.calls)]
        assert all(t.status == "match" for r in rows for t in r.tensors), layout
        assert all(t.own is None and t.carried is not None for r in rows for t in r.tensors)
    dense = rows[1]
    assert [t.tensor for t in dense.tensors] == ["d_output", "kernel", "bias"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_seed_conv_input_gradient_with_the_kernel_transposed(cases, flavor):
    case = cases[flavor, 2]
    conv1, conv2 = case.calls[:2]
    arrays = channels_first(correct_arrays(case))
    mine = seed_conv_input_gradient(seed_delta(case, conv2), seed_weights(case, conv2))
    arrays[f"d/{conv1}"] = mine[None]
    assert first_divergence(case, arrays, "channels_first") == (
        conv1,
        "d_output",
        HINTS["conv kernel transposed"],
    )


@pytest.mark.parametrize("flavor", FLAVORS)
def test_seed_kernel_gradient_summed_over_input_channels(cases, flavor):
    case = cases[flavor, 2]
    conv1, conv2 = case.calls[:2]
    arrays = torch_layout(correct_arrays(case))
    x = chw(case.ref.inputs[conv2][0])
    arrays[f"grad/{layer_of(case, conv2)}/kernel"] = seed_kernel_gradient(
        x, seed_delta(case, conv2)
    )
    assert first_divergence(case, arrays, "torch") == (
        conv2,
        "kernel",
        HINTS["conv kernel grad summed over input channels"],
    )


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("example", [2, 3])
def test_seed_bias_gradient_summed_over_filters(cases, flavor, example):
    case = cases[flavor, example]
    conv1 = case.calls[0]
    arrays = correct_arrays(case)
    arrays[f"grad/{layer_of(case, conv1)}/bias"] = np.full(2, seed_delta(case, conv1).sum())
    assert first_divergence(case, arrays) == (conv1, "bias", HINTS["conv bias summed over filters"])


@pytest.mark.parametrize("flavor", FLAVORS)
def test_seed_max_pool_routes_to_the_wrong_cells(cases, flavor):
    case = cases[flavor, 3]
    conv1, pool = case.calls[:2]
    arrays = channels_first(correct_arrays(case))
    mine = seed_maxpool_gradient(chw(case.ref.outputs[conv1]), chw(case.ref.d_outputs[pool]), 2)
    arrays[f"d/{conv1}"] = mine[None]
    assert first_divergence(case, arrays, "channels_first") == (
        conv1,
        "d_output",
        HINTS["pool argmax of one row"],
    )


@pytest.mark.parametrize("flavor", FLAVORS)
def test_seed_channel_major_flatten(cases, flavor):
    case = cases[flavor, 3]
    _, pool, flatten, dense = case.calls
    arrays = channels_first(correct_arrays(case))
    arrays[f"d/{pool}"] = case.ref.d_outputs[flatten][0].reshape(2, 3, 3)[None]  # calcwdeltas
    assert first_divergence(case, arrays, "channels_first") == (
        pool,
        "d_output",
        HINTS["flatten channel-major"],
    )
    # its forward's flatten order shows in the Dense kernel gradient's rows
    arrays = correct_arrays(case)
    y = case.ref.outputs[dense].astype(float)
    delta = case.ref.d_outputs[dense][0] * y[0] * (1 - y[0])
    flat = chw(case.ref.outputs[pool]).flatten()
    arrays[f"grad/{layer_of(case, dense)}/kernel"] = flat[:, None] * delta
    assert first_divergence(case, arrays) == (dense, "kernel", HINTS["dense kernel channel-major"])


@pytest.mark.parametrize("flavor", FLAVORS)
def test_seed_loss_with_the_half_convention(cases, flavor):
    case = cases[flavor, 2]
    arrays = correct_arrays(case)
    yp = case.ref.outputs[case.calls[-1]].astype(float)
    arrays["loss"] = sum(0.5 * np.sum((yp[i] - case.y[i]) ** 2) for i in range(len(yp))) / len(yp)
    call, tensor, hint = first_divergence(case, arrays)
    assert (call, tensor) == ("loss", "loss")
    assert "½(p - y)² convention" in hint


def test_seed_loss_gradient_summed_over_the_batch(cases):
    case = cases["mixed"]
    arrays = correct_arrays(case)
    yp = case.ref.outputs["out"].astype(float)
    error_der = sum(yp[i] - case.y[i] for i in range(len(yp)))
    arrays["d/out"] = np.tile((1 / len(yp)) * error_der * 2, (len(yp), 1))
    assert first_divergence(case, arrays) == (
        "out",
        "d_output",
        HINTS["batch summed, not averaged over D"],
    )


@pytest.mark.parametrize("flavor", FLAVORS)
def test_an_inherited_error_is_pinned_where_it_starts(cases, flavor):
    """Downstream tensors computed correctly from the wrong d/conv2d point back at it."""
    case = cases[flavor, 2]
    conv1, conv2 = case.calls[:2]
    arrays = correct_arrays(case)
    wrong = seed_conv_input_gradient(seed_delta(case, conv2), seed_weights(case, conv2))
    arrays[f"d/{conv1}"] = np.moveaxis(wrong, 0, -1)[None]
    y = case.ref.outputs[conv1].astype(float)
    dz = arrays[f"d/{conv1}"] * y * (1 - y)
    x = case.x.astype(float)
    arrays[f"grad/{layer_of(case, conv1)}/kernel"] = conv_kernel_gradient(
        x, dz, (3, 3), (1, 1), ((0, 0), (0, 0))
    )
    rows = rows_of(case, arrays)
    assert first_divergence(case, arrays)[:2] == (conv1, "d_output")
    kernel = rows[-1].tensors[1]
    assert kernel.status == "mismatch"
    assert kernel.hint.startswith(f"follows from your d/{conv1}")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_a_kernel_reshaped_instead_of_transposed(cases, flavor):
    """seeds/002 converts kernels with `reshape(2, 1, 3, 3)`; done to a gradient, it is named."""
    case = cases[flavor, 2]
    conv2 = case.calls[1]
    arrays = torch_layout(correct_arrays(case))
    key = f"grad/{layer_of(case, conv2)}/kernel"
    arrays[key] = case.ref.weights[layer_of(case, conv2)]["kernel"].reshape(1, 2, 3, 3)
    assert first_divergence(case, arrays, "torch") == (conv2, "kernel", HINTS["kernel reshaped"])


def _mixed_geometry(case):
    x = case.ref.inputs["c2"][0].astype(float)
    kernel = case.ref.layer_weights["c2"]["kernel"].astype(float)
    y = case.ref.outputs["c2"].astype(float)
    dz = case.ref.d_outputs["c2"] * (1 - y**2)
    return x, kernel, dz, ((0, 1), (0, 1))  # `same`, 8 -> 4 with stride 2: the odd pixel after


def _c1_input_gradient(**mistake):
    def make(case):
        x, kernel, dz, pads = _mixed_geometry(case)
        kernel = mistake.pop("taps", lambda k: k)(kernel)
        return conv_input_gradient(dz, kernel, (8, 8), (2, 2), pads, **mistake)

    return make


def _c2_kernel_gradient(mistake=None, dz=None, odd=False, packed=False):
    def make(case):
        x, _, correct_dz, pads = _mixed_geometry(case)
        pads = ((1, 0), (1, 0)) if odd else pads
        upstream = correct_dz if dz is None else dz(case)
        grad = conv_kernel_gradient(x, upstream, (3, 3), (2, 2), pads, packed=packed)
        return grad if mistake is None else mistake(grad)

    return make


def _c2_bias(mistake):
    def make(case):
        return mistake(_mixed_geometry(case)[2].sum(axis=(0, 1, 2)))

    return make


def _bn_constant_statistics(case):
    x = case.ref.inputs["bn"][0].astype(float)
    gamma = case.ref.layer_weights["bn"]["gamma"].astype(float)
    return case.ref.d_outputs["bn"] * gamma / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-3)


def _pool(pick):
    return lambda case: pool_gradient(
        case.ref.outputs["relu"].astype(float), case.ref.d_outputs["pool"], 2, pick
    )


MIXED = [
    (
        "d/c1",
        _c1_input_gradient(taps=lambda k: np.transpose(k, (1, 0, 2, 3))[::-1, ::-1]),
        "conv kernel transposed",
    ),
    ("d/c1", _c1_input_gradient(taps=lambda k: k[::-1, ::-1]), "conv kernel not flipped"),
    ("d/c1", _c1_input_gradient(taps=lambda k: np.swapaxes(k, 2, 3)), "conv channels not swapped"),
    ("d/c1", _c1_input_gradient(crop=(1, 1)), "conv same odd pixel before"),
    ("d/c1", _c1_input_gradient(packed=True), "conv stride not dilated"),
    ("grad/c2/kernel", _c2_kernel_gradient(odd=True), "conv same odd pixel before"),
    ("grad/c2/kernel", _c2_kernel_gradient(packed=True), "conv stride not dilated"),
    (
        "grad/c2/kernel",
        _c2_kernel_gradient(lambda g: np.broadcast_to(g.sum(2, keepdims=True), g.shape)),
        "conv kernel grad summed over input channels",
    ),
    ("grad/c2/kernel", _c2_kernel_gradient(lambda g: g[::-1, ::-1]), "conv kernel grad rotated"),
    (
        "grad/c2/kernel",
        _c2_kernel_gradient(dz=lambda case: _tanh_at_output(case, "c2")),
        "activation at output",
    ),
    (
        "grad/c2/kernel",
        _c2_kernel_gradient(dz=lambda case: case.ref.d_outputs["c2"]),
        "activation derivative missing",
    ),
    ("grad/c2/bias", _c2_bias(lambda b: b / 16), "conv bias averaged over positions"),
    ("grad/c2/bias", _c2_bias(lambda b: b / 64), "conv bias averaged"),
    ("d/c2", _bn_constant_statistics, "bn statistics constant"),
    ("d/relu", _pool(_last_max), "pool last max"),
    ("d/relu", _pool(_split_ties), "pool split ties"),
    ("d/relu", _pool(lambda w: np.ones_like(w)), "pool every cell"),
]


@pytest.mark.parametrize("key, make, label", MIXED, ids=[f"{k}:{m}" for k, _, m in MIXED])
def test_the_usual_mistakes_are_pinned_and_named(cases, key, make, label):
    case = cases["mixed"]
    arrays = correct_arrays(case)
    arrays[key] = make(case)
    call = {"d/c1": "c1", "d/c2": "c2", "d/relu": "relu"}.get(key, "c2")
    tensor = "d_output" if key.startswith("d/") else key.rsplit("/", 1)[1]
    assert first_divergence(case, arrays) == (call, tensor, HINTS[label])


def test_the_mixed_model_has_ties_in_its_max_pool(cases):
    """The pooling mistakes above can only show where a window's maximum is tied."""
    relu = cases["mixed"].ref.outputs["relu"]
    windows = relu.reshape(4, 2, 2, 2, 2, 2).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    assert np.sum(np.sum(windows == windows.max(axis=1, keepdims=True), axis=1) > 1) >= 2


@pytest.mark.parametrize(
    "factor, phrase",
    [
        (4.0, "factor B = 4"),
        (0.5, "½(p - y)² convention"),
        (3.0, "factor D = 3"),
        (-1.0, "sign flipped"),
        (0.1, "learning rate 0.1"),
        (12.0, "factor B * D = 12"),
    ],
)
def test_constant_factors_are_named_on_any_tensor(cases, factor, phrase):
    case = cases["mixed"]
    for key in ("d/out", "grad/c1/kernel", "loss"):
        arrays = correct_arrays(case)
        arrays[key] = arrays[key] * factor
        hint = first_divergence(case, arrays)[2]
        assert phrase in hint, (key, hint)


def test_an_unexplained_error_has_no_hint_but_still_fails(cases):
    case = cases["mixed"]
    arrays = correct_arrays(case)
    arrays["grad/out/kernel"] = (
        arrays["grad/out/kernel"] + 0.05 * np.abs(arrays["grad/out/kernel"]).max()
    )
    assert first_divergence(case, arrays) == ("out", "kernel", None)


def test_clipped_cross_entropy_where_fit_uses_the_logits(cases):
    import tensorflow as tf

    k = keras_module("keras")
    case = cases["logits"]
    h = tf.constant(case.ref.inputs["p"][0])
    kernel = tf.Variable(case.ref.layer_weights["p"]["kernel"])
    bias = tf.Variable(case.ref.layer_weights["p"]["bias"])
    with tf.GradientTape() as tape:
        tape.watch(h)
        p = tf.sigmoid(tf.matmul(h, kernel) + bias)  # a plain sigmoid: Keras clips p
        loss = k.losses.BinaryCrossentropy()(case.y, p)
    d_h, d_kernel, d_bias = (np.asarray(g) for g in tape.gradient(loss, [h, kernel, bias]))
    assert np.asarray(p)[0, 0] == 1.0 and case.y[0, 0] == 0.0  # saturated, wrong
    arrays = correct_arrays(case)
    arrays["d/p"] = np.zeros((2, 1))  # dL/dp: not judged on the logits path
    rows = {row.name: {t.tensor: t for t in row.tensors} for row in rows_of(case, arrays)}
    assert rows["p"]["d_output"].status == "skipped"
    assert rows["p"]["d_output"].hint == HINTS["logits output"]
    assert all(t.status == "match" for r in rows.values() for t in r.values() if t.carried)
    for key, value, call, tensor in [
        ("grad/p/kernel", d_kernel, "p", "kernel"),
        ("grad/p/bias", d_bias, "p", "bias"),
        ("d/h", d_h, "h", "d_output"),
    ]:
        mine = {**arrays, key: value}
        assert first_divergence(case, mine) == (call, tensor, HINTS["clipped cross-entropy"])


# -- keys and shapes -------------------------------------------------------------------


def test_unknown_keys_fail_in_one_line_listing_every_valid_key(cases):
    case = cases["mixed"]
    arrays = {"loss": 1.0, "grad/c2/kernal": np.zeros((3, 3, 2, 2)), "bogus": np.zeros(1)}
    with pytest.raises(KerascheckError) as error:
        rows_of(case, arrays)
    message = str(error.value)
    assert "\n" not in message
    assert "'grad/c2/kernal' (did you mean 'grad/c2/kernel'?)" in message and "'bogus'" in message
    assert "d/{c1,c2,bn,relu,pool,flat,out}" in message
    assert "grad/{c1,c2,out}/{kernel,bias}" in message and "grad/bn/{gamma,beta}" in message
    with pytest.raises(KerascheckError, match="valid keys: loss, d/conv2d"):
        case2 = cases["keras", 2]
        rows_of(case2, {"grad/conv2d/moving_mean": np.zeros(2)})


def test_wrong_shapes_name_expected_and_found_and_the_layout_they_look_like(cases):
    case = cases["keras", 2]
    conv1, conv2, _, dense = case.calls
    arrays = correct_arrays(case)
    nchw = {**arrays, f"d/{conv1}": np.moveaxis(arrays[f"d/{conv1}"], -1, 1)}
    with pytest.raises(
        KerascheckError,
        match=r"has shape \(1, 2, 5, 5\), expected \(1, 5, 5, 2\);"
        r" it looks like channels-first .*--against-layout channels_first",
    ):
        rows_of(case, nchw)
    kernel_key = f"grad/{layer_of(case, conv2)}/kernel"
    torch_kernel = {**arrays, kernel_key: np.transpose(arrays[kernel_key], (3, 2, 0, 1))}
    with pytest.raises(KerascheckError, match="--against-layout torch"):
        rows_of(case, torch_kernel)
    dense_key = f"grad/{layer_of(case, dense)}/kernel"
    with pytest.raises(KerascheckError, match=r"expected \(1, 9\) in --against-layout torch"):
        rows_of(case, {dense_key: arrays[dense_key]}, "torch")
    with pytest.raises(KerascheckError, match="'loss' must be a scalar"):
        rows_of(case, {"loss": np.zeros(3)})


def test_one_sample_may_come_without_its_batch_axis(cases):
    case = cases["keras", 3]
    arrays = channels_first(correct_arrays(case))
    conv1 = case.calls[0]
    arrays[f"d/{conv1}"] = arrays[f"d/{conv1}"][0]
    rows = rows_of(case, arrays, "channels_first")
    assert all(t.status == "match" for r in rows for t in r.tensors)


# -- the command line ------------------------------------------------------------------


def run_cli(case, arrays, tmp_path, *extra):
    mine = tmp_path / "mine.npz"
    np.savez(mine, **arrays)
    report = tmp_path / "report.json"
    stem = case.path.rsplit(".", 1)[0]
    args = ["grad", case.path, stem + ".x.npy", stem + ".y.npy", "--against", str(mine)]
    result = CliRunner().invoke(main, [*args, "--json", str(report), *extra])
    data = json.loads(report.read_text()) if report.exists() else None
    return result, data


def test_cli_exit_codes_first_divergence_and_hint(cases, tmp_path):
    case = cases["mlp"]
    arrays = correct_arrays(case)
    result, data = run_cli(case, arrays, tmp_path)
    assert result.exit_code == 0, result.output
    assert data["status"] == "match"
    assert "||yours - keras||" in " ".join(result.stdout.split())
    result, _ = run_cli(case, torch_layout(arrays), tmp_path, "--against-layout", "torch")
    assert result.exit_code == 0, result.output

    x = case.ref.inputs["hidden"][0].astype(float)
    y = case.ref.outputs["hidden"].astype(float)
    wrong_dz = case.ref.d_outputs["hidden"] * (1 - np.tanh(y) ** 2)  # tanh'(y), not 1 - y²
    result, data = run_cli(case, {**arrays, "grad/hidden/kernel": x.T @ wrong_dz}, tmp_path)
    assert result.exit_code == 1, result.output
    assert data["first_divergence"] == {"call": "hidden", "class_name": "Dense", "tensor": "kernel"}
    hidden = next(c for c in data["calls"] if c["name"] == "hidden")
    kernel = next(t for t in hidden["tensors"] if t["tensor"] == "kernel")
    assert kernel["status"] == "mismatch" and kernel["hint"] == HINTS["activation at output"]
    assert "likely cause: activation derivative taken at the output" in " ".join(
        result.stdout.split()
    )


def test_cli_unknown_keys_exit_2_with_one_line_of_valid_keys(cases, tmp_path):
    case = cases["mlp"]
    result, _ = run_cli(case, {"grad/hiden/kernel": np.zeros((5, 4))}, tmp_path)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0] == (
        "error: --against: unknown key 'grad/hiden/kernel' (did you mean "
        "'grad/hidden/kernel'?); valid keys: loss, d/hidden, d/out, grad/hidden/kernel, "
        "grad/hidden/bias, grad/out/kernel, grad/out/bias"
    )


def test_cli_reference_numpy(cases, tmp_path):
    case = cases["mlp"]
    arrays = correct_arrays(case)
    result, data = run_cli(case, arrays, tmp_path, "--reference", "numpy")
    assert result.exit_code == 0, result.output
    assert data["oracle"]["name"] == "numpy"
    result, data = run_cli(
        case, {**arrays, "loss": arrays["loss"] / 2}, tmp_path, "--reference", "numpy"
    )
    assert result.exit_code == 1
    assert data["first_divergence"]["call"] == "loss"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_cli_seed_example3_in_torch_layout(cases, tmp_path, flavor):
    case = cases[flavor, 3]
    conv1, pool = case.calls[:2]
    arrays = torch_layout(correct_arrays(case))
    result, _ = run_cli(case, arrays, tmp_path, "--against-layout", "torch")
    assert result.exit_code == 0, result.output
    mine = seed_maxpool_gradient(chw(case.ref.outputs[conv1]), chw(case.ref.d_outputs[pool]), 2)
    arrays[f"d/{conv1}"] = mine[None]
    result, data = run_cli(case, arrays, tmp_path, "--against-layout", "torch")
    assert result.exit_code == 1, result.output
    assert data["first_divergence"]["call"] == conv1
    assert "argmax was taken over one row of the window" in " ".join(result.stdout.split())


NO_TENSORFLOW = textwrap.dedent(
    """
    import json, sys

    BLOCKED = ("tensorflow", "keras", "tf_keras")

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    from kerascheck.cli import main

    codes = []
    for args in {runs!r}:
        try:
            main(args, standalone_mode=False)
            codes.append(0)
        except SystemExit as exit:
            codes.append(exit.code)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({{"codes": codes, "loaded": loaded}}))
    """
)


def test_reference_numpy_runs_with_tensorflow_unimportable(cases, tmp_path):
    """The user's arrays against the engine alone, hints included, on a machine without
    TensorFlow: the MLP's and seed 002's example 3 with its max-pool mistake."""
    runs = []
    mlp_case, seed = cases["mlp"], cases["keras", 3]
    conv1, pool = seed.calls[:2]
    wrong = seed_maxpool_gradient(chw(seed.ref.outputs[conv1]), chw(seed.ref.d_outputs[pool]), 2)
    for name, case, arrays in [
        ("mlp", mlp_case, correct_arrays(mlp_case)),
        ("seed", seed, {**channels_first(correct_arrays(seed)), f"d/{conv1}": wrong[None]}),
    ]:
        np.savez(tmp_path / f"{name}.npz", **arrays)
        stem = case.path.rsplit(".", 1)[0]
        args = ["grad", case.path, stem + ".x.npy", stem + ".y.npy", "--reference", "numpy"]
        args += ["--against", str(tmp_path / f"{name}.npz"), "--json", str(tmp_path / name)]
        runs.append(args + (["--against-layout", "channels_first"] if name == "seed" else []))
    done = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW.format(runs=runs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 1], "loaded": []}, done.stderr
    data = json.loads((tmp_path / "seed").read_text())
    assert data["first_divergence"]["call"] == conv1
    conv = next(c for c in data["calls"] if c["name"] == conv1)
    assert conv["tensors"][0]["hint"] == HINTS["pool argmax of one row"]


# -- seeds/002's whole training step, given to train-step --against ------------------------


def seed_own_update(case) -> dict:
    """seeds/002's backward of example 2 end to end (its `lossderiv`, its conv mistakes)
    and its update `w -= lr * grad` with lr 100, as new/<layer>/<weight> keys."""
    ref, (conv1, conv2, _, dense) = case.ref, case.calls
    p = np.asarray(ref.outputs[dense], np.float64)[0]
    dz = (p - case.y[0]) * p * (1 - p)  # (p - y), never 2/B, times sigmoid'
    layers = {call: layer_of(case, call) for call in (conv1, conv2, dense)}
    kernel = ref.layer_weights[layers[dense]]["kernel"].astype(np.float64)
    flat = np.asarray(ref.inputs[dense][0], np.float64)[0]
    grads = {layers[dense]: {"kernel": np.outer(flat, dz), "bias": dz}}
    delta2 = (kernel @ dz).reshape(1, 3, 3) * seed_delta_factor(case, conv2)
    grads[layers[conv2]] = {
        "kernel": np.transpose(seed_kernel_gradient(chw(ref.outputs[conv1]), delta2), (2, 3, 1, 0)),
        "bias": delta2.sum(axis=(1, 2)),
    }
    d_conv1 = seed_conv_input_gradient(delta2, seed_weights(case, conv2))
    delta1 = d_conv1 * seed_delta_factor(case, conv1)
    grads[layers[conv1]] = {
        "kernel": np.transpose(seed_kernel_gradient(chw(case.x), delta1), (2, 3, 1, 0)),
        "bias": np.full(2, delta1.sum()),
    }
    return {
        f"new/{layer}/{name}": ref.layer_weights[layer][name] - 100.0 * grad
        for layer, by_name in grads.items()
        for name, grad in by_name.items()
    }


def seed_delta_factor(case, call) -> np.ndarray:
    """The sigmoid derivative y (1 - y) at a call's output, (C, H, W)."""
    y = chw(case.ref.outputs[call])
    return y * (1 - y)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_seed_own_update_is_flagged_at_the_first_convolution(cases, flavor, tmp_path):
    from kerascheck.train_step import train_step_model

    case = cases[flavor, 2]
    mine = seed_own_update(case)
    y = case.y.reshape(1, 1)
    result = train_step_model(case.path, kerascheck.load(case.path), [case.x], [y], against=mine)
    first = result.first_divergence
    assert first == {
        "layer": layer_of(case, case.calls[0]),
        "class_name": "Conv2D",
        "tensor": "Δkernel",
    }, first
    dense = next(r for r in result.rows if r.name == layer_of(case, case.calls[3]))
    implied = {t.tensor: t for t in dense.tensors}["implied grad kernel"]
    assert implied.status == "mismatch" and "half Keras' value" in implied.hint
    # The same update with only the first convolution's bias wrong (the seed's own
    # sum over filters): the wrong gradient behind it is named through the optimizer.
    correct = train_step_model(
        case.path, kerascheck.load(case.path), [case.x], [y], save=True
    ).saved
    bias_key = f"{layer_of(case, case.calls[0])}/bias"
    arrays = {k[len("keras/") :]: v for k, v in correct.items() if k.startswith("keras/")}
    summed = np.full(2, seed_delta(case, case.calls[0]).sum())
    arrays[f"new/{bias_key}"] = (
        case.ref.layer_weights[bias_key.split("/")[0]]["bias"] - 100 * summed
    )
    result = train_step_model(case.path, kerascheck.load(case.path), [case.x], [y], against=arrays)
    assert result.first_divergence["tensor"] == "Δbias"
    bias = {t.tensor: t for r in result.rows for t in r.tensors if r.name == bias_key.split("/")[0]}
    assert bias["Δbias"].hint.startswith("the right SGD step applied to a wrong gradient")
    assert HINTS["conv bias summed over filters"] in bias["Δbias"].hint
    assert bias["implied grad bias"].hint == HINTS["conv bias summed over filters"]


def test_train_step_reference_numpy_runs_with_tensorflow_unimportable(cases, tmp_path):
    case = cases["keras", 2]
    np.savez(tmp_path / "mine.npz", **seed_own_update(case))
    stem = case.path.rsplit(".", 1)[0]
    args = ["train-step", case.path, stem + ".x.npy", stem + ".y.npy", "--reference", "numpy"]
    args += ["--against", str(tmp_path / "mine.npz"), "--json", str(tmp_path / "out.json")]
    args += ["--junit", str(tmp_path / "out.xml"), "--markdown", str(tmp_path / "out.md")]
    done = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW.format(runs=[args])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"codes": [1], "loaded": []}
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["oracle"]["name"] == "numpy" and data["subject"] == "your weights"
    assert data["first_divergence"]["layer"] == layer_of(case, case.calls[0])
    from xml.etree import ElementTree

    suite = ElementTree.parse(tmp_path / "out.xml").getroot()[0]
    assert int(suite.get("failures")) >= 1
    assert "First divergence" in (tmp_path / "out.md").read_text()
