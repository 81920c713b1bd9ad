"""Forward speed over the whole zoo: the engine against Keras' fastest CPU inference.

For every keras.applications architecture (random weights, `--size` pixels, 10
classes) and the shipped seed CNNs, at each batch size, in one process and on the
same input: the best-of-`--repeat` wall time of `kerascheck.load(...).predict(x)`,
of `model.predict(x)` and of a compiled `tf.function` call, and the ratio of the
engine to the faster of the two Keras figures. `--gflops` adds, for the five
largest convolutions of VGG16 and ResNet50 at batch 16, the engine's GFLOP/s next
to NumPy's own float32 matmul GFLOP/s for the same (positions x taps, filters)
product, measured in the same run.

    .venv/bin/python bench/bench_forward.py                       # everything (about an hour)
    .venv/bin/python bench/bench_forward.py --only VGG16 ResNet50 --batches 16
    .venv/bin/python bench/bench_forward.py --gflops --only none
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault(
    "OPENBLAS_THREAD_TIMEOUT", "18"
)  # as `import kerascheck` sets it, before NumPy
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the oracle runs it (channels-first)

import numpy as np

import kerascheck

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from zoo import ZOO  # noqa: E402

SAMPLES = os.path.join(HERE, "..", "sample_models")
SEEDS = ("seed000_regressor", "seed001_channels_first", "seed004_cnn")


def best(repeat: int, fn, *args, **kwargs) -> float:
    fn(
        *args, **kwargs
    )  # warm-up: tracing, BLAS start-up and first allocations are not the steady state
    times = []
    while len(times) < repeat or (sum(times) < 0.5 and len(times) < 50):  # ms calls: more
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def models(names, size: int, workdir: str):
    import keras

    for name in names:
        if name in SEEDS:
            yield name, os.path.join(SAMPLES, f"{name}.keras")
            continue
        path = os.path.join(workdir, f"{name}.keras")
        keras.utils.set_random_seed(0)
        side = max(size, ZOO[name][0])
        build = getattr(keras.applications, name)
        build(weights=None, input_shape=(side, side, 3), classes=10).save(path)
        yield name, path


def measure(name: str, path: str, batches, repeat: int) -> dict[int, float]:
    """One line per batch size; returns {batch: engine / faster Keras}."""
    import keras
    import tensorflow as tf

    engine = kerascheck.load(path)
    model = keras.models.load_model(path, compile=False)
    compiled = tf.function(lambda x: model(x, training=False))
    ratios = {}
    for batch in batches:
        shape = (batch, *engine.spec.inputs[0].shape)
        x = np.random.default_rng(0).standard_normal(shape).astype("float32")
        ours = best(repeat, engine.predict, x)
        predict = best(repeat, model.predict, x, batch_size=batch, verbose=0)
        graph = best(repeat, compiled, x)
        ratios[batch] = ours / min(predict, graph)
        gap = float(np.max(np.abs(engine.predict(x) - np.asarray(compiled(x)))))
        print(
            f"{name:<22} {batch:>5} {str(shape[1:]):<15} {ours:>9.4f} {predict:>9.4f} "
            f"{graph:>9.4f} {ratios[batch]:>8.2f}x {gap:>9.1e}",
            flush=True,
        )
    return ratios


def gflops(workdir: str, repeat: int) -> None:
    """The five largest convolutions of VGG16 and ResNet50 (224x224, batch 16)."""
    import keras

    print(
        f"\n{'model / layer':<34} {'GFLOP':>7} {'engine GFLOP/s':>15} "
        f"{'matmul GFLOP/s':>15} {'%':>5}"
    )
    for name in ("VGG16", "ResNet50"):
        path = os.path.join(workdir, f"{name}_224.keras")
        keras.utils.set_random_seed(0)
        getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3)).save(path)
        engine = kerascheck.load(path)
        convs = []
        for call in engine.spec.calls:
            layer = engine.graph.layers[call.layer]
            if layer.class_name != "Conv2D":
                continue
            out = engine.output_shapes[call.name]
            kernel = layer.w["kernel"].shape
            flops = 2 * 16 * math.prod(out[1:-1]) * math.prod(kernel)
            convs.append((flops, call, layer))
        for flops, call, layer in sorted(convs, key=lambda c: -c[0])[:5]:
            source = call.inputs[0]
            shape = (16, *engine.output_shapes[source.layer][1:])
            x = np.random.default_rng(0).standard_normal(shape).astype("float32")
            ours = best(repeat, layer.call, x)
            kernel = layer.w["kernel"]
            positions = 16 * math.prod(engine.output_shapes[call.name][1:-1])
            a = np.random.default_rng(1).standard_normal((positions, kernel[..., 0].size))
            a = a.astype("float32")
            b = kernel.reshape(-1, kernel.shape[-1])
            theirs = best(repeat, np.matmul, a, b)
            print(
                f"{name + ' / ' + call.name:<34} {flops / 1e9:>7.1f} {flops / ours / 1e9:>15.1f} "
                f"{flops / theirs / 1e9:>15.1f} {100 * theirs / ours:>5.0f}",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="models to run (default: the zoo and seeds)")
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 16, 64])
    parser.add_argument("--size", type=int, default=96, help="input pixels (default 96)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--gflops", action="store_true", help="also the conv GFLOP/s table")
    args = parser.parse_args()
    names = [n for n in (args.only or [*SEEDS, *ZOO]) if n != "none"]
    print(
        f"load average {os.getloadavg()[0]:.1f}; best of {args.repeat} (of up to 50 under 0.5 s); "
        "engine / faster Keras"
    )
    print(
        f"{'model':<22} {'batch':>5} {'input':<15} {'engine s':>9} {'predict':>9} "
        f"{'tf.func':>9} {'ratio':>9} {'max diff':>9}"
    )
    ratios = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, path in models(names, args.size, workdir):
            try:
                ratios[name] = measure(name, path, args.batches, args.repeat)
            except Exception as exc:  # one model Keras cannot run must not stop the table
                print(f"{name:<22} error: {type(exc).__name__}: {' '.join(str(exc).split())}"[:200])
        for batch in args.batches if ratios else ():
            row = {name: r[batch] for name, r in ratios.items()}
            worst = max(row, key=row.get)
            mean = math.exp(sum(math.log(v) for v in row.values()) / len(row))
            print(
                f"batch {batch}: {sum(v <= 1.0 for v in row.values())} of {len(row)} at or "
                f"under 1.0x; geometric mean {mean:.2f}x; worst {worst} {row[worst]:.2f}x"
            )
        if args.gflops:
            gflops(workdir, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
