"""Engine training step vs Keras' `train_on_batch`, measured in the same run at batch 32.

For each model, compiled with Adam and MSE: the best-of-N wall time of one engine
step (training-mode forward, backward, NumPy Adam update) and of Keras'
`train_on_batch` on the same batch (after a warm-up call that traces it), timed
alternately so that both see the same machine load, and their ratio.

    .venv/bin/python bench/bench_train_step.py [--repeat 3] [--quick] [--breakdown]

`--breakdown` adds, per model, the engine step's CPU seconds by layer class
(training-mode forward and backward, convolutions split by kernel size and
stride) and the optimizer's, from one more step after the timed ones. CPU time
(`time.process_time`), not wall time: on a shared machine it is the stabler
measure of where the work goes (run with OPENBLAS_NUM_THREADS=1 for the
single-thread cost of each part).
"""

from __future__ import annotations

import argparse
import collections
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
from kerascheck.grad import resolve_loss
from kerascheck.train_step import _assign, _current, _engine_gradients, trainable_keys

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(HERE, "..", "sample_models")


def models(workdir: str, quick: bool):
    import keras

    for stem, shape in (("seed000_regressor", (27, 3, 6)), ("seed004_cnn", (28, 28, 1))):
        model = keras.models.load_model(os.path.join(SAMPLES, f"{stem}.keras"), compile=False)
        yield stem, model, shape, "float32"
    text = keras.Sequential(
        [
            keras.Input((40,), dtype="int32"),
            keras.layers.Embedding(1000, 32),
            keras.layers.Bidirectional(keras.layers.LSTM(32)),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    yield "text_classifier", text, (40,), "int32"
    apps = [("MobileNetV2", keras.applications.MobileNetV2, (96, 96, 3))]
    if not quick:
        apps.append(("ResNet50", keras.applications.ResNet50, (96, 96, 3)))
    for name, build, shape in apps:
        yield name, build(weights=None, input_shape=shape, classes=10), shape, "float32"


def best_of_both(ours, theirs, repeat, budget=2.0):
    """Best-of-N seconds of two calls, timed alternately so that both see the same load;
    N is at least `repeat`, more (up to 30) while the pair takes under `budget` seconds."""
    ours(), theirs()  # warm-up: Keras traces its train function here
    times = ([], [])
    rounds = repeat
    while len(times[0]) < rounds:
        for fn, spent in zip((ours, theirs), times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
        if len(times[0]) == 1:
            rounds = min(30, max(repeat, int(budget / (times[0][0] + times[1][0]))))
    return min(times[0]), min(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip ResNet50")
    parser.add_argument(
        "--breakdown", action="store_true", help="CPU time per layer class and phase"
    )
    args = parser.parse_args()

    print(f"{'model':<18} {'batch':>5} {'engine s':>9} {'keras s':>9} {'engine/keras':>13}")
    with tempfile.TemporaryDirectory() as workdir:
        for name, model, shape, dtype in models(workdir, args.quick):
            ours, theirs, step = measure(name, model, shape, dtype, workdir, args.repeat)
            print(f"{name:<18} {32:>5} {ours:>9.4f} {theirs:>9.4f} {ours / theirs:>12.2f}x")
            if args.breakdown:
                breakdown(step)


def measure(name, model, shape, dtype, workdir, repeat):
    """(engine step seconds, Keras train_on_batch seconds) for one model at batch 32."""
    import keras

    from kerascheck.train_step import resolve_optimizer

    rng = np.random.default_rng(0)
    if dtype == "int32":
        x = rng.integers(1, 1000, size=(32, *shape)).astype("int32")
    else:
        x = rng.standard_normal((32, *shape)).astype("float32")
    y = rng.standard_normal((32, *model.output_shape[1:])).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    path = os.path.join(workdir, f"{name}.keras")
    model.save(path)
    engine = kerascheck.load(path)
    loss = resolve_loss(engine, None)[0]
    _, optimizer, _, _ = resolve_optimizer(engine, None, {}, True)
    keys = trainable_keys(engine)
    state = {"value": optimizer.init_state(_current(engine, keys))}
    noise = {c.name: None for c in engine.spec.calls}  # training mode, the engine's own masks

    def engine_step():
        grads = _engine_gradients(engine, loss, [x], [y], None, noise).grads
        new, state["value"] = optimizer.step(_current(engine, keys), grads, state["value"])
        _assign(engine, new)

    engine_step.optimizer_step = lambda grads: _assign(
        engine, optimizer.step(_current(engine, keys), grads, state["value"])[0]
    )
    engine_step.gradients = lambda: _engine_gradients(engine, loss, [x], [y], None, noise)
    ours, theirs = best_of_both(engine_step, lambda: model.train_on_batch(x, y), repeat)
    return ours, theirs, engine_step


def breakdown(step):
    """One more engine step, its CPU seconds per (layer class, phase) and the optimizer's."""
    from kerascheck.engine import graph

    forward, backward, calls = (collections.defaultdict(float) for _ in range(3))
    original = graph.Graph.vjp_call

    def timed_call(self, call, values, masks, training, noise):
        layer = self.layers[call.layer]
        key = layer.class_name
        if hasattr(layer, "kernel_size"):
            key += f" {'x'.join(map(str, layer.kernel_size))}/s{layer.strides[0]}"
        start = time.process_time()
        output, mask, back = original(self, call, values, masks, training, noise)
        forward[key] += time.process_time() - start
        calls[key] += 1
        if back is None:
            return output, mask, back

        def wrap(fn):
            def timed(*args):
                start = time.process_time()
                result = fn(*args)
                backward[key] += time.process_time() - start
                return result

            return timed

        timed = wrap(back)
        timed.__dict__.update(back.__dict__)  # batch statistics, pre_activation, ...
        for name in ("pre_activation", "weights_only"):
            if hasattr(back, name):
                setattr(timed, name, wrap(getattr(back, name)))
        return output, mask, timed

    graph.Graph.vjp_call = timed_call
    try:
        start = time.process_time()
        grads = step.gradients().grads
        total = time.process_time() - start
    finally:
        graph.Graph.vjp_call = original
    start = time.process_time()
    step.optimizer_step(grads)
    optimizer = time.process_time() - start
    print(
        f"  cpu s: step {total + optimizer:.4f} = forward {sum(forward.values()):.4f}"
        f" + backward {sum(backward.values()):.4f} + optimizer {optimizer:.4f} + rest"
    )
    for key in sorted(forward, key=lambda k: -(forward[k] + backward[k])):
        print(
            f"    {key:<28} x{int(calls[key]):<3} forward {forward[key]:8.4f}"
            f"  backward {backward[key]:8.4f}"
        )


if __name__ == "__main__":
    main()
