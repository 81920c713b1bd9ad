"""`diff --layer-wise` wall time against what a user pays to run the model in Keras once.

For each model: the wall time of a fresh process that imports TensorFlow, loads the
model in Keras and calls `model.predict` once (the floor any Keras-backed check
pays), and of `kerascheck diff --layer-wise` on the same file and input, with the
phases kerascheck reports (read, TensorFlow start-up, Keras load, engine, Keras,
own errors). The ratio is the overhead; the target is 1.3x or less.

Models: ResNet50 (keras.applications, weights=None) and a 300-layer functional
model (residual blocks of Dense, BatchNormalization, ReLU and Add).

    .venv/bin/python bench/bench_diff_overhead.py [--size 224] [--batch 4] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
KERASCHECK = os.path.join(os.path.dirname(sys.executable), "kerascheck")

KERAS_ONCE = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
import numpy as np
import keras
model = keras.models.load_model(sys.argv[1], compile=False)
model.predict(np.load(sys.argv[2]), verbose=0)
"""


def deep_model(keras, blocks: int = 75):
    """4 layers per block (Dense, BatchNormalization, ReLU, Add): 300 layers."""
    inputs = keras.Input((64,))
    x = inputs
    for _ in range(blocks):
        h = keras.layers.Dense(64)(x)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
        x = keras.layers.Add()([x, h])
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="deep300")


def build(folder: str, size: int, batch: int) -> list[tuple[str, str, str]]:
    import numpy as np

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    rng = np.random.default_rng(0)
    image = (size, size, 3)
    made = []
    for name, make, shape in (
        ("ResNet50", lambda: keras.applications.ResNet50(weights=None, input_shape=image), image),
        ("deep300", lambda: deep_model(keras), (64,)),
    ):
        path = os.path.join(folder, f"{name}.keras")
        data = os.path.join(folder, f"{name}.input.npy")
        if not os.path.exists(path):
            make().save(path)
            np.save(data, rng.standard_normal((batch, *shape)).astype("float32"))
        made.append((name, path, data))
    return made


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-500:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "kc-overhead"))
    args = parser.parse_args()
    os.makedirs(args.folder, exist_ok=True)
    print(f"{'model':<10}{'keras once s':>14}{'diff -lw s':>12}{'ratio':>8}  kerascheck phases")
    for name, path, data in build(args.folder, args.size, args.batch):
        report = os.path.join(args.folder, f"{name}.json")
        keras_times, diff_times = [], []
        for _ in range(args.repeat):
            keras_times.append(wall([sys.executable, "-c", KERAS_ONCE, path, data]))
            diff_times.append(
                wall([KERASCHECK, "diff", "--layer-wise", path, data, "--json", report])
            )
        with open(report) as handle:
            phases = json.load(handle)["timing"]["phases"]
        floor, ours = statistics.median(keras_times), statistics.median(diff_times)
        shown = ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
        print(f"{name:<10}{floor:>14.1f}{ours:>12.1f}{ours / floor:>8.2f}  {shown}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
