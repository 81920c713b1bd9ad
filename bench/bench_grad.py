"""Engine backward vs TensorFlow's taped gradient, measured in the same run on the same batch.

For each model: the best-of-N wall time of the engine's training-mode forward
plus backward (`backprop.forward` + `backprop.backward` from an MSE-style
upstream gradient) and of Keras' `GradientTape` over `model(x, training=True)`
with the same upstream gradient, and their ratio; plus the largest relative
error between the two sets of weight gradients.

    .venv/bin/python bench/bench_grad.py [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

import kerascheck
from kerascheck.engine import backprop

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(HERE, "..", "sample_models")


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
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


def engine_step(model, x, dy):
    def run():
        tape = backprop.forward(model.graph, [x], training=True)
        return backprop.backward(model.graph, tape, [dy])

    return run


def keras_step(reference, x, dy):
    import tensorflow as tf

    variables = reference.trainable_weights

    def run():
        with tf.GradientTape() as tape:
            y = reference(x, training=True)
            loss = tf.reduce_sum(y * dy)
        return tape.gradient(loss, variables)

    return run


def worst_error(model, reference, ours, theirs) -> float:
    worst = 0.0
    by_id = {id(v): g for v, g in zip(reference.trainable_weights, theirs)}
    for layer in reference.layers:
        names = list(model.graph.layers[layer.name].w) if layer.name in model.graph.layers else []
        for index, variable in enumerate(layer.weights):
            if id(variable) not in by_id:
                continue
            a = ours.weights.get(layer.name, {}).get(names[index])
            b = np.asarray(by_id[id(variable)], np.float64)
            if a is None or not np.linalg.norm(b):
                continue
            worst = max(worst, float(np.linalg.norm(a - b) / np.linalg.norm(b)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the large models")
    args = parser.parse_args()
    import keras

    print(
        f"{'model':<20} {'input':<20} {'engine s':>9} {'keras s':>9} {'engine/keras':>13} "
        f"{'worst rel err':>14}"
    )
    with tempfile.TemporaryDirectory() as workdir:
        for name, path, shape in models(workdir, args.quick):
            rng = np.random.default_rng(0)
            x = rng.standard_normal(shape).astype("float32")
            model = kerascheck.load(path)
            reference = keras.models.load_model(path, compile=False)
            out = backprop.forward(model.graph, [x], training=True).outputs[0]
            dy = rng.standard_normal(out.shape).astype("float32")
            ours_fn, theirs_fn = engine_step(model, x, dy), keras_step(reference, x, dy)
            ours = best_time(ours_fn, args.repeat)
            theirs = best_time(theirs_fn, args.repeat)
            error = worst_error(model, reference, ours_fn(), theirs_fn())
            print(
                f"{name:<20} {str(shape):<20} {ours:>9.4f} {theirs:>9.4f} "
                f"{ours / theirs:>12.2f}x {error:>14.2e}"
            )


if __name__ == "__main__":
    main()
