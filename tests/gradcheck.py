"""Helpers for backward tests: one layer's gradients in Keras and in the engine.

`check_layer_grad` builds `make_layer(keras)` on an input shape in each Keras
flavor, saves and reloads it with kerascheck, and compares, for a random
upstream gradient `dy`, the gradients of `sum(y * dy)` with respect to the
input and to every trainable weight: per tensor, relatively
(`||engine - keras|| <= rtol * ||keras||`), since an absolute tolerance passes
a wrong gradient that happens to be small. It also checks the engine's
backward in float64 against central finite differences along random
directions (`check_finite_differences`).
"""

from __future__ import annotations

import numpy as np
from helpers import FLAVORS, build_model, make_input, save

import kerascheck
from kerascheck.engine import backprop

GRAD_RTOL = 1e-3  # float32 tape vs float32 engine: ~1e-6 typical, 1e-4 on saturated nets
FD_RTOL = 1e-5  # float64 engine vs central differences with h = 1e-6


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"shape {ours.shape} != Keras {theirs.shape}"
    scale = np.linalg.norm(theirs)
    diff = np.linalg.norm(ours - theirs)
    return float(diff / scale) if scale > 0 else float(diff)


def keras_grads(model, x, dy, training):
    """Keras' ([dL/d each input], {layer: {weight: dL/dw}}) for L = sum(y * dy)."""
    import tensorflow as tf

    xs = [tf.constant(a) for a in (x if isinstance(x, list) else [x])]
    with tf.GradientTape() as tape:
        for t in xs:
            tape.watch(t)
        y = model(xs if isinstance(x, list) else xs[0], training=training)
        ys = y if isinstance(y, (list, tuple)) else [y]
        dys = dy if isinstance(dy, list) else [dy]
        loss = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(ys, dys)])
    variables = [v for layer in model.layers for v in layer.trainable_weights]
    grads = tape.gradient(loss, xs + variables)
    d_inputs = [None if g is None else np.asarray(g) for g in grads[: len(xs)]]
    by_id = {id(v): g for v, g in zip(variables, grads[len(xs) :])}
    weights = {}
    for layer in model.layers:
        for variable in layer.trainable_weights:
            g = by_id[id(variable)]
            name = _weight_name(variable)
            weights.setdefault(layer.name, {})[name] = None if g is None else np.asarray(g)
    return d_inputs, weights


def _weight_name(variable):
    """The weight's own name as the engine uses it (`kernel`, `bias`, `gamma`, ...)."""
    name = getattr(variable, "path", None) or variable.name
    return name.split("/")[-1].split(":")[0]


def engine_grads(model, x, dy, training):
    """The engine's ({input index: grad}, {layer: {weight: grad}}) for L = sum(y * dy)."""
    xs = x if isinstance(x, list) else [x]
    tape = backprop.forward(model.graph, [np.asarray(a, model.context.dtype) for a in xs], training)
    dys = dy if isinstance(dy, list) else [dy]
    grads = backprop.backward(model.graph, tape, [np.asarray(d, model.context.dtype) for d in dys])
    return grads.model_inputs, grads.weights, tape.outputs


def check_layer_grad(
    tmp_path,
    make_layer,
    input_shape,
    flavors=FLAVORS,
    training=True,
    rtol=GRAD_RTOL,
    ext=".keras",
    x=None,
    finite_differences=True,
    seed=0,
):
    """Engine vs Keras gradients for one layer, per tensor; returns the worst error seen."""
    worst = 0.0
    for flavor in flavors:
        model = build_model(flavor, make_layer, input_shape)
        path = save(model, str(tmp_path), flavor, ext)
        ours = kerascheck.load(path)
        shapes = input_shape if isinstance(input_shape, list) else [input_shape]
        data = x if x is not None else [make_input((3, *s), seed=i) for i, s in enumerate(shapes)]
        data = data if isinstance(data, list) else [data]
        engine_y = backprop.forward(ours.graph, data, training).outputs
        rng = np.random.default_rng(seed + 1)
        dy = [rng.standard_normal(np.shape(y)).astype("float32") for y in engine_y]
        arg = data if isinstance(input_shape, list) else data[0]
        dy_arg = dy if len(dy) > 1 else dy[0]
        k_inputs, k_weights = keras_grads(model, arg, dy_arg, training)
        e_inputs, e_weights, _ = engine_grads(ours, arg, dy_arg, training)
        for i, (a, b) in enumerate(zip(e_inputs, k_inputs)):
            if b is None:
                continue
            assert a is not None, f"{flavor}: engine gives no gradient for input {i}"
            err = relative_error(a, b)
            worst = max(worst, err)
            assert err <= rtol, f"{flavor}: d_input[{i}] relative error {err:.2e} > {rtol}"
        for layer, grads in k_weights.items():
            for name, b in grads.items():
                if b is None:
                    continue
                a = e_weights.get(layer, {}).get(name)
                assert a is not None, f"{flavor}: engine gives no gradient for {layer}/{name}"
                err = relative_error(a, b)
                worst = max(worst, err)
                assert err <= rtol, f"{flavor}: {layer}/{name} relative error {err:.2e} > {rtol}"
        if finite_differences:
            check_finite_differences(path, data, training)
    return worst


def check_finite_differences(path, data, training=True, h=1e-6, rtol=FD_RTOL, seed=3):
    """The float64 engine's backward against central differences along random directions."""
    model = kerascheck.load(path, dtype="float64")
    xs = [np.asarray(a, np.float64) for a in data]
    tape = backprop.forward(model.graph, xs, training)
    rng = np.random.default_rng(seed)
    dy = [rng.standard_normal(np.shape(y)) for y in tape.outputs]
    grads = backprop.backward(model.graph, tape, dy)

    def objective():
        outs = backprop.forward(model.graph, xs, training).outputs
        return sum(float(np.sum(o * d)) for o, d in zip(outs, dy))

    directions = []
    for i, x in enumerate(xs):
        if grads.model_inputs[i] is not None and x.dtype.kind == "f":
            directions.append((x, grads.model_inputs[i], f"input {i}"))
    for layer_name, weights in grads.weights.items():
        layer = model.graph.layers[layer_name]
        for name, g in weights.items():
            directions.append((layer.w[name], g, f"{layer_name}/{name}"))
    for array, analytic, what in directions:
        v = rng.standard_normal(array.shape)
        original = array.copy()
        array += h * v
        plus = objective()
        array[...] = original - h * v
        minus = objective()
        array[...] = original
        numeric = (plus - minus) / (2 * h)
        exact = float(np.sum(analytic * v))
        scale = max(abs(numeric), abs(exact), 1e-12)
        assert abs(numeric - exact) <= rtol * scale + 1e-9, (
            f"{what}: analytic {exact:.8e} vs finite differences {numeric:.8e}"
        )
