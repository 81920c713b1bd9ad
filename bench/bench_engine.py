"""Engine vs Keras speed, measured in the same run on the same inputs.

Prints one line per model: the best-of-N wall time of `kerascheck.load(...).predict`
and of Keras' `model(x)` (eager, the same call the oracle makes), and their ratio.

    .venv/bin/python bench/bench_engine.py [--repeat 3] [--quick]
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

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(HERE, "..", "sample_models")


def best_time(fn, x, repeat: int) -> float:
    fn(x)  # warm-up: first-call costs (graph tracing, BLAS start-up) are not the steady state
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return min(times)


def models(workdir: str, quick: bool):
    import keras

    yield "seed000_regressor", os.path.join(SAMPLES, "seed000_regressor.keras"), (256, 27, 3, 6)
    yield "seed004_cnn", os.path.join(SAMPLES, "seed004_cnn.keras"), (256, 28, 28, 1)
    apps = [("MobileNetV2", keras.applications.MobileNetV2, (4, 96, 96, 3))]
    if not quick:
        apps += [
            ("ResNet50", keras.applications.ResNet50, (4, 160, 160, 3)),
            ("VGG16", keras.applications.VGG16, (2, 128, 128, 3)),
        ]
    for name, build, shape in apps:
        path = os.path.join(workdir, f"{name}.keras")
        build(weights=None, input_shape=shape[1:], classes=10).save(path)
        yield name, path, shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the large models")
    args = parser.parse_args()
    import keras

    print(
        f"{'model':<20} {'input':<20} {'engine s':>9} {'keras s':>9} {'engine/keras':>13} "
        f"{'max abs diff':>13}"
    )
    with tempfile.TemporaryDirectory() as workdir:
        for name, path, shape in models(workdir, args.quick):
            x = np.random.default_rng(0).standard_normal(shape).astype("float32")
            engine = kerascheck.load(path)
            reference = keras.models.load_model(path, compile=False)
            ours = best_time(engine.predict, x, args.repeat)
            theirs = best_time(reference, x, args.repeat)
            diff = float(np.max(np.abs(engine.predict(x) - np.asarray(reference(x)))))
            print(
                f"{name:<20} {str(shape):<20} {ours:>9.4f} {theirs:>9.4f} "
                f"{ours / theirs:>12.2f}x {diff:>13.2e}"
            )


if __name__ == "__main__":
    main()
