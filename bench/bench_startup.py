"""Start-up time of `kerascheck summary` and `kerascheck predict --engine numpy`.

Issue 10's target: both start in well under half a second plus the time to read
the weights they need, and `summary` needs only the weights' shapes. Models:
ResNet50 (~100 MB) and VGG16 with its top (~528 MB), random weights at 224x224,
each saved as `.keras` and `.h5`, built once and cached in a temp directory
(`--cache DIR` to choose it). Every figure is the median wall time of 3 runs of
the command as a subprocess; `python -c "import numpy"` is the floor. `load s` is
`kerascheck.load(path, values=False)` timed in this process (what `summary` spends
reading the file). Subprocesses write and reuse bytecode in the cache directory
(as an installed package does), even where PYTHONDONTWRITEBYTECODE is set, after
one warm-up run. Also checks that `summary` imports no TensorFlow (its
`-X importtime` log), and prints the load average, since the machine may be shared.

    .venv/bin/python bench/bench_startup.py [--cache DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
KERASCHECK = os.path.join(os.path.dirname(sys.executable), "kerascheck")
MODELS = {"resnet50": "ResNet50", "vgg16": "VGG16"}
BLOCKED = ("tensorflow", "keras", "tf_keras")


def build(cache: str) -> dict[str, str]:
    """The model files, saved on the first run only."""
    os.makedirs(cache, exist_ok=True)
    paths = {
        f"{name}{ext}": os.path.join(cache, f"{name}{ext}")
        for name in MODELS
        for ext in (".keras", ".h5")
    }
    if not all(os.path.exists(p) for p in paths.values()):
        import keras

        keras.utils.set_random_seed(0)
        for name, constructor in MODELS.items():
            model = getattr(keras.applications, constructor)(
                weights=None, input_shape=(224, 224, 3)
            )
            for ext in (".keras", ".h5"):
                model.save(paths[f"{name}{ext}"])
    return paths


def median_seconds(command: list[str], runs: int, env: dict | None = None) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {done.stderr.decode()[-500:]}")
    return statistics.median(times)


def median_load_seconds(path: str, runs: int) -> float:
    import kerascheck

    times = []
    for _ in range(runs):
        start = time.perf_counter()
        kerascheck.load(path, values=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def imported_tensorflow(path: str) -> list[str]:
    """Top-level TensorFlow/Keras modules `summary` imported, from `-X importtime`."""
    script = "import sys; from kerascheck.cli import main; main(sys.argv[1:])"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", script, "summary", path],
        capture_output=True,
        text=True,
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    return sorted(n for n in names if n.split(".")[0] in BLOCKED)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_cache = os.path.join(tempfile.gettempdir(), "kerascheck-startup")
    parser.add_argument("--cache", default=default_cache)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    paths = build(args.cache)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.path.join(args.cache, "pycache")
    first = next(iter(paths.values()))
    median_seconds([KERASCHECK, "summary", first], 1, env)  # writes the bytecode
    print(f"load average before: {load_average()}")
    floor = median_seconds([sys.executable, "-c", "import numpy"], args.runs, env)
    print(f"floor: python -c 'import numpy' {floor:.3f} s   (median of {args.runs})")
    header = f"{'model':<16}{'MB':>7}{'load s':>9}{'summary s':>11}{'predict s':>11}"
    print(f"{header}  tensorflow in summary")
    for label, path in paths.items():
        size = os.path.getsize(path) / 2**20
        load = median_load_seconds(path, args.runs)
        summary = median_seconds([KERASCHECK, "summary", path], args.runs, env)
        predict = median_seconds(
            [KERASCHECK, "predict", path, "--engine", "numpy", "--batch", "1"], args.runs, env
        )
        loaded = imported_tensorflow(path)
        row = f"{label:<16}{size:>7.0f}{load:>9.3f}{summary:>11.3f}{predict:>11.3f}"
        print(f"{row}  {loaded or 'none'}")
        if loaded:
            return 1
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
