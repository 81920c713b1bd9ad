"""Backward through Keras 3 operation nodes (`x + 3.0`, `2.0 - x`, `ops.exp`, slicing,
reshape) between layers, against Keras' tape through `grad`."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_input

import kerascheck
from kerascheck.grad import grad_model


def arithmetic(k):
    inputs = k.Input((4,))
    h = k.layers.Dense(4)(inputs)
    a, b = h + 3.0, 2.0 - h
    c = k.ops.exp(a * b * 0.1) / (k.ops.square(h) + 1.0)
    d = k.ops.maximum(c, -h) - k.ops.tanh(k.ops.negative(h))
    return k.Model(inputs, k.layers.Dense(2)(k.ops.sqrt(k.ops.abs(d) + 0.5)))


def movement(k):
    inputs = k.Input((6, 4))
    h = k.layers.Dense(4)(inputs)
    sliced = h[:, 1:5, :]
    moved = k.ops.transpose(k.ops.reshape(sliced, (-1, 2, 8)), (0, 2, 1))
    joined = k.ops.concatenate([moved, k.ops.expand_dims(moved[:, :, 0], -1)], axis=-1)
    return k.Model(inputs, k.layers.Dense(2)(k.layers.Flatten()(joined)))


@pytest.mark.parametrize("build, shape", [(arithmetic, (4,)), (movement, (6, 4))])
def test_operation_nodes_backward_match_keras(tmp_path, build, shape):
    import keras

    model = build(keras)
    path = str(tmp_path / f"{build.__name__}.keras")
    model.save(path)
    x = make_input((3, *shape), seed=1)
    y = np.zeros((3, 2), "float32")
    result = grad_model(path, kerascheck.load(path), [x], [y], loss_option="mse")
    assert result.first_divergence is None, result.first_divergence
    classes = {row.class_name for row in result.rows}
    assert len(classes) >= 4
    first_dense = [row for row in result.rows if row.class_name == "Dense"][-1]
    kernel = next(t for t in first_dense.tensors if t.tensor == "kernel")
    assert kernel.own.rel_error < 1e-5 and kernel.carried.rel_error < 1e-4


@pytest.mark.parametrize("build, shape", [(arithmetic, (4,)), (movement, (6, 4))])
def test_tf_keras_op_lambdas_backward_match_keras(tmp_path, build, shape):
    """The same models in tf_keras, saved as .h5: TFOpLambda and SlicingOpLambda layers."""
    import tensorflow as tf
    import tf_keras

    class Ops:  # tf_keras models spell the operations with tf functions
        layers = tf_keras.layers
        Input = tf_keras.Input
        Model = tf_keras.Model

        class ops:
            exp, square, negative, tanh, sqrt, abs = (
                tf.math.exp,
                tf.math.square,
                tf.math.negative,
                tf.math.tanh,
                tf.math.sqrt,
                tf.math.abs,
            )
            maximum, transpose, expand_dims = tf.math.maximum, tf.transpose, tf.expand_dims
            reshape = tf.reshape

            @staticmethod
            def concatenate(values, axis):
                return tf.concat(values, axis)

    model = build(Ops)
    path = str(tmp_path / f"{build.__name__}.h5")
    model.save(path)
    x = make_input((3, *shape), seed=2)
    y = np.zeros((3, 2), "float32")
    spec = kerascheck.load(path).spec
    assert any(spec.layers[c.layer].class_name.endswith("OpLambda") for c in spec.calls)
    result = grad_model(path, kerascheck.load(path), [x], [y], loss_option="mse")
    assert result.first_divergence is None, result.first_divergence


def test_every_operation_has_a_backward():
    """Each allow-listed TensorFlow function and each Keras 3 operation node has a
    backward: a derivative, the gather of moved elements, or TensorFlow's no-gradient."""
    from kerascheck.engine.layers.op_gradients import TF_SYMBOLS, has_backward
    from kerascheck.engine.layers.tf_ops import KERAS3_OPS, NEVER_RUN, TF_FUNCTIONS

    runnable = [s for s in TF_FUNCTIONS if s not in NEVER_RUN]
    missing = [s for s in runnable if not has_backward(TF_SYMBOLS.get(s, ""))]
    missing += [cls.__name__ for cls in KERAS3_OPS if not has_backward(cls.__name__)]
    assert missing == []


def splitting(k, split, where):
    inputs = k.Input((6,))
    h = k.layers.Dense(6)(inputs)
    first, second, third = split(h)
    mixed = where(first > 0.0, first, third * 0.5)
    return k.Model(inputs, [k.layers.Dense(2)(mixed), second * 2.0])


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_split_and_where_backward_match_keras(tmp_path, flavor):
    """Split's outputs (one unused by the loss) and where's branches, against Keras' tape."""
    if flavor == "keras":
        import keras

        model = splitting(keras, lambda h: keras.ops.split(h, 3, axis=-1), keras.ops.where)
        path = str(tmp_path / "split.keras")
    else:
        import tensorflow as tf
        import tf_keras

        model = splitting(tf_keras, lambda h: tf.split(h, [2, -1, 2], axis=1), tf.where)
        path = str(tmp_path / "split.h5")
    model.save(path)
    x = make_input((3, 6), seed=4)
    y = [np.zeros((3, 2), "float32"), np.zeros((3, 2), "float32")]
    result = grad_model(path, kerascheck.load(path), [x], y, loss_option="mse")
    assert result.first_divergence is None, result.first_divergence
    dense = [row for row in result.rows if row.class_name == "Dense"]
    kernel = next(t for t in dense[0].tensors if t.tensor == "kernel")
    assert kernel.carried.rel_error < 1e-4


def test_operation_without_a_backward_is_refused_by_name(tmp_path):
    """`norm(ord=inf)` runs forward but has no backward: `grad` names the layer."""
    import keras

    from kerascheck.errors import KerascheckError

    inputs = keras.Input((4,))
    h = keras.layers.Dense(4)(inputs)
    model = keras.Model(inputs, keras.ops.norm(h, ord=np.inf, axis=-1))
    path = str(tmp_path / "norm.keras")
    model.save(path)
    ours = kerascheck.load(path)
    x = make_input((3, 4), seed=1)
    np.testing.assert_allclose(ours.predict(x), np.asarray(model(x)), rtol=1e-5)
    with pytest.raises(KerascheckError, match=r"layer 'norm(_\d+)?' \(Norm\).*norm with ord=inf"):
        grad_model(path, ours, [x], [np.zeros((3,), "float32")], loss_option="mse")


def _ranking(k, ops):
    """Dense -> cumsum / top_k / unstack / image resize -> Dense, in either flavour."""
    inputs = k.Input((12,))
    h = k.layers.Dense(12)(inputs)
    values, _ = ops.top_k(h, 4)
    rows = ops.unstack(k.layers.Reshape((3, 4))(h), axis=1)
    summed = ops.cumsum(h, 1) if ops.cumsum_args is None else ops.cumsum(h, **ops.cumsum_args)
    image = ops.resize(k.layers.Reshape((3, 4, 1))(h))
    flat = k.layers.Flatten()(image)
    joined = k.layers.Concatenate()([values, rows[0] * 2.0, rows[2], summed, flat])
    return k.Model(inputs, k.layers.Dense(3)(joined))


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_ranking_and_resizing_ops_backward_match_keras(tmp_path, flavor):
    """top_k's values go back to the entries they came from, unstack's unused rows get
    zeros, cumsum (exclusive, reversed) and bilinear resize through their transposes."""
    if flavor == "keras":
        import keras

        class ops:
            top_k, unstack, cumsum_args = keras.ops.top_k, keras.ops.unstack, None
            cumsum = staticmethod(lambda h, axis: keras.ops.cumsum(h, axis=axis))
            resize = keras.layers.Resizing(5, 7)

        model = _ranking(keras, ops)
        path = str(tmp_path / "ranking.keras")
    else:
        import tensorflow as tf
        import tf_keras

        class ops:
            top_k, unstack, cumsum = tf.math.top_k, tf.unstack, tf.math.cumsum
            cumsum_args = {"axis": 1, "exclusive": True, "reverse": True}
            resize = staticmethod(lambda x: tf.image.resize(x, (5, 7)))

        model = _ranking(tf_keras, ops)
        path = str(tmp_path / "ranking.h5")
    model.save(path)
    x = make_input((3, 12), seed=5)
    y = np.zeros((3, 3), "float32")
    result = grad_model(path, kerascheck.load(path), [x], [y], loss_option="mse")
    assert result.first_divergence is None, result.first_divergence
    first = [row for row in result.rows if row.class_name == "Dense"][0]
    kernel = next(t for t in first.tensors if t.tensor == "kernel")
    assert kernel.carried.rel_error < 1e-4
