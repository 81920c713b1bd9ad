"""TensorFlow ops on Keras tensors: tf_keras' TFOpLambda / SlicingOpLambda layers and
Keras 3's operation nodes, against the Keras that saved them.

Each case builds a two-input functional model whose output is plain TensorFlow
(or `keras.ops`) arithmetic on the inputs, saves it, and compares kerascheck's
prediction (values, shapes and dtypes) with the model's own. Unlisted TensorFlow
functions must be refused by name, and loading must not import TensorFlow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import assert_matches, keras_module, keras_predict, make_input, save

import kerascheck
from kerascheck.engine.layers.tf_ops import TF_FUNCTIONS
from kerascheck.errors import UnsafeModelError

SHAPE = (3, 4)


def _tf():
    import tensorflow as tf

    return tf


def check_ops(tmp_path, flavor, build, exts, batch=2):
    """Save `build(ops, x, y)` (ops: `tf` for tf_keras, `keras.ops` for Keras 3) and
    compare kerascheck with the model in every file format of `exts`."""
    k = keras_module(flavor)
    ops = _tf() if flavor == "tf_keras" else k.ops
    x, y = k.Input(SHAPE, name="x"), k.Input(SHAPE, name="y")
    model = k.Model([x, y], build(ops, x, y))
    data = [make_input((batch, *SHAPE), seed=1), make_input((batch, *SHAPE), seed=2)]
    expected = keras_predict(model, data)
    for ext in exts:
        path = save(model, str(tmp_path), flavor, ext)
        ours = kerascheck.load(path).predict(data)
        assert_matches(ours, expected, what=f"{flavor} {ext}")
        for a, b in zip(*(v if isinstance(v, list) else [v] for v in (ours, expected))):
            assert a.dtype == b.dtype, f"{flavor} {ext}: dtype {a.dtype} != Keras {b.dtype}"


# --- tf_keras: TFOpLambda / SlicingOpLambda ------------------------------------------

KERAS2_CASES = {
    "add-operator": lambda tf, x, y: x + y,
    "math.add": lambda tf, x, y: tf.math.add(x, y),
    "subtract-constant": lambda tf, x, y: x - 1.5,
    "constant-first": lambda tf, x, y: [2.0 - x, 3.0 * x, 1.0 / (x * x + 1.0)],
    "subtract": lambda tf, x, y: tf.math.subtract(x, y),
    "multiply": lambda tf, x, y: tf.math.multiply(x, y),
    "multiply-constant": lambda tf, x, y: x * 2.0,
    "multiply-array-constant": lambda tf, x, y: x * np.arange(4, dtype="float32"),
    "broadcast": lambda tf, x, y: x * tf.reduce_mean(y, axis=1, keepdims=True),
    "truediv": lambda tf, x, y: x / y,
    "divide-constant": lambda tf, x, y: tf.math.divide(x, 3.0),
    "floordiv": lambda tf, x, y: x // 2.0,
    "maximum": lambda tf, x, y: tf.math.maximum(x, y),
    "minimum-constant": lambda tf, x, y: tf.math.minimum(x, 0.5),
    "pow": lambda tf, x, y: x**2,
    "negative": lambda tf, x, y: -x,
    "abs": lambda tf, x, y: abs(x),
    "sign-square": lambda tf, x, y: [tf.math.sign(x), tf.math.square(x)],
    "sqrt-rsqrt": lambda tf, x, y: [tf.math.sqrt(abs(x)), tf.math.rsqrt(abs(x) + 0.5)],
    "exp-log": lambda tf, x, y: [tf.exp(x / 4.0), tf.math.log(abs(x) + 0.5)],
    "tanh-sigmoid": lambda tf, x, y: [tf.tanh(x), tf.sigmoid(x), tf.math.log_sigmoid(x)],
    "softplus-erf": lambda tf, x, y: [tf.math.softplus(x), tf.math.erf(x / 3.0)],
    "reduce_mean-keepdims": lambda tf, x, y: tf.reduce_mean(x, axis=1, keepdims=True),
    "reduce_mean-all": lambda tf, x, y: tf.reduce_mean(x),
    "reduce_sum-axes": lambda tf, x, y: tf.reduce_sum(x, axis=[1, 2]),
    "reduce_max-min": lambda tf, x, y: [tf.reduce_max(x, -1), tf.reduce_min(x, 1)],
    "reduce_prod": lambda tf, x, y: tf.reduce_prod(x / 4.0, axis=-1),
    "reduce_variance-std": lambda tf, x, y: [
        tf.math.reduce_variance(x, axis=-1),
        tf.math.reduce_std(x, axis=1, keepdims=True),
    ],
    "relu-relu6-elu": lambda tf, x, y: [tf.nn.relu(x), tf.nn.relu6(x), tf.nn.elu(x)],
    "leaky_relu": lambda tf, x, y: tf.nn.leaky_relu(x, alpha=0.1),
    "softmax": lambda tf, x, y: [tf.nn.softmax(x), tf.nn.softmax(x, axis=1)],
    "log_softmax": lambda tf, x, y: tf.nn.log_softmax(x, axis=1),
    "gelu": lambda tf, x, y: [tf.nn.gelu(x), tf.nn.gelu(x, approximate=True)],
    "silu": lambda tf, x, y: [tf.nn.silu(x), tf.nn.silu(x, beta=0.5)],
    "reshape": lambda tf, x, y: [tf.reshape(x, (-1, 12)), tf.reshape(x, [-1, 2, 6])],
    "concat": lambda tf, x, y: [tf.concat([x, y], axis=-1), tf.concat([x, y], 1)],
    "stack": lambda tf, x, y: [tf.stack([x, y], axis=1), tf.stack([x, y])],
    "split-count": lambda tf, x, y: tf.split(x, 2, axis=-1),
    "split-sizes": lambda tf, x, y: tf.split(x, [1, -1, 2], axis=2),
    "expand_dims": lambda tf, x, y: tf.expand_dims(x, -1),
    "squeeze-axis": lambda tf, x, y: tf.squeeze(tf.expand_dims(x, 2), axis=2),
    "transpose-perm": lambda tf, x, y: tf.transpose(x, perm=[0, 2, 1]),
    "transpose-reverse": lambda tf, x, y: tf.transpose(x),
    "cast": lambda tf, x, y: [tf.cast(x, "float16"), tf.cast(x, "int32"), tf.cast(x, tf.bool)],
    "clip_by_value": lambda tf, x, y: tf.clip_by_value(x, -0.5, 2.0),
    "matmul-operator": lambda tf, x, y: x @ tf.transpose(y, [0, 2, 1]),
    "matmul-transpose_b": lambda tf, x, y: tf.linalg.matmul(x, y, transpose_b=True),
    "getitem-slices": lambda tf, x, y: [x[:, 1:3], x[:, ::-1, 0], x[:, -1], x[:, 1:, ::2]],
    "comparisons-where": lambda tf, x, y: [
        tf.math.greater(x, y),
        tf.math.less_equal(x, 0.5),
        tf.math.logical_not(tf.math.equal(x, y)),
        tf.where(x > y, x, y),
        tf.where(tf.math.greater(x, 0.0), x, 0.3 * x),
    ],
    "selu-softsign-rounding": lambda tf, x, y: [
        tf.nn.selu(x),
        tf.nn.softsign(x),
        tf.math.round(x * 1.25),
        tf.math.floor(x) + tf.math.ceil(y),
        tf.math.reduce_logsumexp(x, axis=-1, keepdims=True),
    ],
    "cumsum-top_k-unstack": lambda tf, x, y: [
        tf.math.cumsum(x, axis=1),
        tf.math.cumsum(x, axis=-1, exclusive=True, reverse=True),
        tf.cumsum(tf.cast(x > 0.0, "int32"), axis=2, reverse=True),
        *tf.math.top_k(x, k=2),
        tf.math.top_k(tf.round(y), k=3)[1],  # ties: the lower index first
        *tf.unstack(x, axis=2),
    ],
    "image.resize": lambda tf, x, y: [
        tf.image.resize(tf.reshape(x, (-1, 3, 4, 1)) * 3.0, (5, 7)),
        tf.image.resize(tf.reshape(y, (-1, 2, 3, 2)), (4, 4), method="nearest"),
        tf.image.resize(tf.reshape(x, (-1, 3, 4, 1)), (6, 2), method="bicubic"),
    ],
    "ops-chain": lambda tf, x, y: tf.nn.relu(tf.reshape(x[:, 1:] + y[:, :-1], (-1, 8)) * 0.5),
}


@pytest.mark.parametrize("case", sorted(KERAS2_CASES))
def test_tf_keras_tf_op(tmp_path, case):
    check_ops(tmp_path, "tf_keras", KERAS2_CASES[case], (".h5", ".keras"))


def test_tf_keras_getitem_ellipsis_and_newaxis(tmp_path):
    """tf_keras saves `...` as `{"class_name": "__ellipsis__"}` and `None` as null; its
    own `.keras` writer cannot serialize an Ellipsis, so this one is `.h5` only."""
    check_ops(tmp_path, "tf_keras", lambda tf, x, y: x[..., None, 1], (".h5",))


def test_tf_keras_squeeze_without_axis_drops_a_batch_of_one(tmp_path):
    """`tf.squeeze(x)` removes every size-1 axis, the batch axis included."""
    build = lambda tf, x, y: tf.squeeze(tf.expand_dims(x, 1))  # noqa: E731
    check_ops(tmp_path, "tf_keras", build, (".h5",), batch=1)
    check_ops(tmp_path, "tf_keras", build, (".h5",), batch=2)


def _tf_keras_model(build):
    import tf_keras as k

    x, y = k.Input(SHAPE, name="x"), k.Input(SHAPE, name="y")
    return k.Model([x, y], build(_tf(), x, y))


def _tf_keras_file(tmp_path, build, ext=".h5"):
    return save(_tf_keras_model(build), str(tmp_path), "tf_keras", ext)


@pytest.mark.parametrize("ext", [".h5", ".keras"])
def test_unlisted_tf_function_is_refused_by_name(tmp_path, ext):
    path = _tf_keras_file(tmp_path, lambda tf, x, y: tf.math.lgamma(x), ext)
    with pytest.raises(UnsafeModelError) as info:
        kerascheck.load(path)
    message = str(info.value)
    # tf_keras numbers op layers per process: 'tf.math.lgamma', 'tf.math.lgamma_1', ...
    assert "layer 'tf.math.lgamma" in message and "TFOpLambda calling tf.math.lgamma," in message
    assert "allow-list" in message
    # One line that names the function and where the list is, not 90 names on it.
    assert "kerascheck layers --family 'tf functions'" in message and len(message) < 400
    from click.testing import CliRunner

    from kerascheck.cli import main

    listed = CliRunner().invoke(main, ["layers", "--family", "tf functions"]).stdout
    assert "tf.math.cumsum" in listed and "tf.math.lgamma" not in listed


def test_every_allowed_symbol_is_a_tensorflow_name():
    """The allow-list names what tf_keras writes: canonical TensorFlow API names."""
    tf = _tf()
    for symbol in TF_FUNCTIONS:
        target = tf
        for part in symbol.split("."):
            target = getattr(target, part)
        assert callable(target), symbol


# --- Keras 3: operation nodes ---------------------------------------------------------

KERAS3_CASES = {
    "add": lambda ops, x, y: [ops.add(x, y), x + y],
    "subtract-multiply": lambda ops, x, y: [x - 1.5, ops.subtract(x, y), x * 2.0, x * y],
    "constant-first": lambda ops, x, y: [2.0 - x, ops.subtract(1.0, x), 3.0 * x],
    "divide": lambda ops, x, y: [x / y, ops.divide(x, 3.0)],
    "maximum-minimum": lambda ops, x, y: [ops.maximum(x, 0.1), ops.minimum(x, y)],
    "power-negative-abs": lambda ops, x, y: [x**2, -x, abs(x), ops.square(x)],
    "sqrt-exp-log": lambda ops, x, y: [
        ops.sqrt(ops.abs(x)),
        ops.exp(x / 4.0),
        ops.log(ops.abs(x) + 0.5),
    ],
    "activations": lambda ops, x, y: [
        ops.tanh(x),
        ops.sigmoid(x),
        ops.relu(x),
        ops.silu(x),
        ops.softmax(x, axis=1),
        ops.softmax(x),
    ],
    "matmul": lambda ops, x, y: [
        x @ ops.transpose(y, (0, 2, 1)),
        ops.matmul(x, ops.swapaxes(y, 1, 2)),
    ],
    "getitem": lambda ops, x, y: [x[:, 1:3], x[:, ::-1, 0], x[..., None, 1], x[:, -1]],
    "reshape": lambda ops, x, y: [ops.reshape(x, (-1, 12)), ops.reshape(x, (-1, 2, 6))],
    "concatenate-stack": lambda ops, x, y: [
        ops.concatenate([x, y], axis=-1),
        ops.concatenate([x, y], axis=1),
        ops.stack([x, y], axis=1),
    ],
    "split-sections": lambda ops, x, y: ops.split(x, 2, axis=-1),
    "split-indices": lambda ops, x, y: ops.split(x, [1, 3], axis=-1),
    "expand-squeeze": lambda ops, x, y: [
        ops.expand_dims(x, -1),
        ops.squeeze(ops.expand_dims(x, 1), axis=1),
    ],
    "transpose": lambda ops, x, y: [ops.transpose(x, (0, 2, 1)), ops.transpose(x)],
    "cast-clip": lambda ops, x, y: [
        ops.cast(x, "float16"),
        ops.cast(x, "int32"),
        ops.clip(x, -0.5, 2.0),
    ],
    "reductions": lambda ops, x, y: [
        ops.mean(x, axis=1, keepdims=True),
        ops.sum(x),
        ops.max(x, axis=-1),
        ops.min(x, axis=(1, 2)),
    ],
    "integer-and-boolean-outputs": lambda ops, x, y: [
        ops.argmax(x, axis=1),
        ops.argmin(x),
        ops.greater(x, y),
        ops.logical_and(x > 0.0, y < 1.0),
        ops.cumsum(ops.cast(x, "int32"), axis=1),
        ops.cumsum(x, dtype="int32"),
        ops.sum(ops.cast(x, "int8"), axis=1),
        ops.prod(ops.cast(x, "int32"), axis=-1),
        ops.round(x * 1.25),
        ops.where(x > y, x, 2.0),
    ],
    "top_k-unstack": lambda ops, x, y: [
        *ops.top_k(x, 2),
        ops.top_k(ops.round(y), 3)[1],
        *ops.unstack(x, axis=1),
    ],
    "einsum-norm-pad": lambda ops, x, y: [
        ops.einsum("bij,bkj->bik", x, y),
        ops.einsum("bij,bij", x, y),
        ops.norm(x, axis=(1, 2)),
        ops.norm(x, ord=np.inf, axis=-1),
        ops.pad(x, [[0, 0], [1, 0], [0, 2]], mode="symmetric"),
        ops.prod(x, axis=1, dtype="float64"),
    ],
}


@pytest.mark.parametrize("case", sorted(KERAS3_CASES))
def test_keras3_operation_nodes(tmp_path, case):
    """Keras 3 cannot reload its own `.h5` files with operation nodes, so `.keras` only."""
    check_ops(tmp_path, "keras", KERAS3_CASES[case], (".keras",))


def test_keras3_ops_and_layers_of_the_same_name(tmp_path):
    """`keras.ops.add` is saved as class `Add` like the `Add` layer; module tells them apart."""
    import keras

    def build(ops, x, y):
        layers = keras.layers
        return [
            layers.Add()([x, y]),
            ops.add(x, y),
            layers.Reshape((12,))(x),
            ops.reshape(x, (-1, 12)),
            layers.Concatenate(axis=1)([x, y]),
            ops.concatenate([x, y], axis=1),
            layers.Softmax(axis=1)(x),
            ops.softmax(x, axis=1),
        ]

    check_ops(tmp_path, "keras", build, (".keras",))


# --- loading such a file does not import TensorFlow ---------------------------------

SCRIPT = textwrap.dedent(
    """
    import json, sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())

    import numpy as np
    import kerascheck

    x = [np.load(p) for p in sys.argv[2:]]
    out = kerascheck.load(sys.argv[1]).predict(x)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras"))
    print(json.dumps({"out": [o.tolist() for o in out], "loaded": loaded}))
    """
)


def test_loading_tf_op_layers_does_not_import_tensorflow(tmp_path):
    build = KERAS2_CASES["ops-chain"]
    model = _tf_keras_model(lambda tf, x, y: [build(tf, x, y), tf.concat([x, y], 1)])
    path = save(model, str(tmp_path), "tf_keras", ".h5")
    data = [make_input((2, *SHAPE), seed=1), make_input((2, *SHAPE), seed=2)]
    names = []
    for i, array in enumerate(data):
        names.append(str(tmp_path / f"x{i}.npy"))
        np.save(names[-1], array)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, path, *names], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    expected = keras_predict(model, data)
    assert_matches([np.asarray(o, dtype="float32") for o in report["out"]], expected)


def test_tf_keras_einsum_file_is_refused_with_its_cause(tmp_path):
    """tf_keras saves tf.einsum's equation but not its operands: the error says so."""
    path = _tf_keras_file(tmp_path, lambda tf, x, y: tf.einsum("bij,bkj->bik", x, y))
    with pytest.raises(kerascheck.KerascheckError) as info:
        kerascheck.load(path)
    message = str(info.value)
    assert "layer 'tf.einsum" in message and "found none" in message
    assert "tf.einsum's first argument and keyword arguments" in message
