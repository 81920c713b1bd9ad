"""Engine backward vs TensorFlow's taped gradient, measured in the same run on the same batch.

For each model: the best-of-N wall time of the engine's training-mode forward
plus backward (`backprop.forward` + `backprop.backward` from an MSE-style
upstream gradient) and of Keras' `GradientTape` over `model(x, training=True)`
with the same upstream gradient, eager and in a compiled `tf.function`, and the
engine's ratio to the faster of the two. Like the tape's, the engine's gradients
are those of the trainable weights (`weight_gradients_only`, the path of
`train-step`); the column "+ dL/dx" is the engine's time when it also takes the
gradient of the model input, as `kerascheck grad` does. Then `kerascheck grad` on the
same batch: its verdict and the largest own relative error of a passing tensor
(tensors that are zero in exact arithmetic pass by the cancellation floor and are
not counted).

    .venv/bin/python bench/bench_grad.py [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault(
    "OPENBLAS_THREAD_TIMEOUT", "18"
)  # as `import kerascheck` sets it, before NumPy
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

import kerascheck
from kerascheck.engine import backprop
from kerascheck.grad import grad_model

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(HERE, "..", "sample_models")


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    while len(times) < repeat or (sum(times) < 0.5 and len(times) < 50):  # ms calls: more
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def models(workdir: str, quick: bool):
    import keras

    yield "seed000_regressor", os.path.join(SAMPLES, "seed000_regressor.keras"), (32, 27, 3, 6)
    yield "seed004_cnn", os.path.join(SAMPLES, "seed004_cnn.keras"), (32, 28, 28, 1)
    apps = [("MobileNetV2", keras.applications.MobileNetV2, (4, 96, 96, 3))]
    if not quick:
        apps += [("ResNet50", keras.applications.ResNet50, (4, 160, 160, 3))]
    for name, build, shape in apps:
        path = os.path.join(workdir, f"{name}.keras")
        build(weights=None, input_shape=shape[1:], classes=10).save(path)
        yield name, path, shape


def engine_step(model, x, dy, input_gradient: bool):
    def run():
        tape = backprop.forward(model.graph, [x], training=True)
        if input_gradient:
            return backprop.backward(model.graph, tape, [dy])
        with backprop.weight_gradients_only():
            return backprop.backward(model.graph, tape, [dy])

    return run


def keras_step(reference, x, dy, compiled: bool):
    """The taped gradient, eager or in a compiled `tf.function`."""
    import tensorflow as tf

    variables = reference.trainable_weights

    def run():
        with tf.GradientTape() as tape:
            y = reference(x, training=True)
            loss = tf.reduce_sum(y * dy)
        return tape.gradient(loss, variables)

    return tf.function(run) if compiled else run


def agreement(path, x, y) -> tuple[str, float]:
    """`kerascheck grad` on the same batch (MSE against `y`): the verdict, the largest own
    relative error (each layer's backward fed Keras' values) of the tensors that are not
    zero in exact arithmetic, and how many are (below 1e-4 of their call's largest)."""
    result = grad_model(path, kerascheck.load(path), [x], [y], loss_option="mse")
    worst, floored = 0.0, 0
    for row in result.rows:
        biggest = max(t.keras_norm for t in row.tensors)
        for t in row.tensors:
            if getattr(t, "status", None) == "mismatch":  # name it, for the record
                own = f"{t.own.rel_error:.2e}" if t.own else "-"
                print(f"  mismatch: {row.name} {t.tensor}: own {own}", flush=True)
            if t.own is None:
                continue
            if t.keras_norm < 1e-4 * biggest:  # zero in exact arithmetic: float32 noise
                floored += 1
            else:
                worst = max(worst, t.own.rel_error)
    return result.status, worst, floored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the large models")
    args = parser.parse_args()
    import keras

    print(
        f"{'model':<20} {'input':<20} {'engine s':>9} {'+ dL/dx':>9} {'eager s':>9} "
        f"{'tf.func':>9} {'engine/keras':>13} "
        f"{'grad':>9} {'own err':>9} {'zero':>7}"
    )
    with tempfile.TemporaryDirectory() as workdir:
        for name, path, shape in models(workdir, args.quick):
            rng = np.random.default_rng(0)
            x = rng.standard_normal(shape).astype("float32")
            model = kerascheck.load(path)
            reference = keras.models.load_model(path, compile=False)
            out = backprop.forward(model.graph, [x], training=True).outputs[0]
            dy = rng.standard_normal(out.shape).astype("float32")
            ours = best_time(engine_step(model, x, dy, input_gradient=False), args.repeat)
            with_dx = best_time(engine_step(model, x, dy, input_gradient=True), args.repeat)
            eager = best_time(keras_step(reference, x, dy, compiled=False), args.repeat)
            graph = best_time(keras_step(reference, x, dy, compiled=True), args.repeat)
            status, error, floored = agreement(path, x, dy)
            print(
                f"{name:<20} {str(shape):<20} {ours:>9.4f} {with_dx:>9.4f} {eager:>9.4f} "
                f"{graph:>9.4f} "
                f"{ours / min(eager, graph):>12.2f}x {status:>9} {error:>9.2e} {floored:>7}"
            )


if __name__ == "__main__":
    main()
