"""Peak resident memory of `kerascheck diff --layer-wise` on ResNet50 at 224x224.

Each run is its own process (`kerascheck diff --layer-wise MODEL X.npy`, default
batch size and --max-memory unless given), measured as the child's peak RSS; the
first line is `kerascheck summary` of the same model, whose peak is the loading
baseline. Several sample counts show the peak staying flat.

    .venv/bin/python bench/bench_memory.py [--samples 8 32] [--size 224] [--max-memory 8G]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
KERASCHECK = os.path.join(os.path.dirname(sys.executable), "kerascheck")
PEAK = (
    "import resource, subprocess, sys;"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL);"
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)"
)


def peak(command: list[str]) -> tuple[int, int, float]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True, text=True)
    code, rss = out.stdout.split()
    return int(code), int(rss), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="*", default=[8, 32])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--max-memory", default=None)
    args = parser.parse_args()
    import keras
    import numpy as np

    workdir = tempfile.mkdtemp(prefix="kerascheck-memory-")
    path = os.path.join(workdir, "resnet50.keras")
    keras.utils.set_random_seed(0)
    keras.applications.ResNet50(weights=None, input_shape=(args.size, args.size, 3)).save(path)
    prefix = [KERASCHECK] + (["--max-memory", args.max_memory] if args.max_memory else [])
    code, rss, seconds = peak([*prefix, "summary", path])
    print(f"ResNet50 {args.size}x{args.size}, --max-memory {args.max_memory or 'default (8G)'}")
    print(f"{'run':<28}{'exit':>5}{'peak RSS':>12}{'wall s':>9}  batches")
    print(f"{'summary (loading only)':<28}{code:>5}{rss / 2**30:>10.2f} G{seconds:>9.1f}")
    for samples in args.samples:
        x = np.random.default_rng(0).normal(0, 2, (samples, args.size, args.size, 3))
        np.save(os.path.join(workdir, "x.npy"), x.astype("float32"))
        report = os.path.join(workdir, "report.json")
        command = [*prefix, "diff", "--layer-wise", path, os.path.join(workdir, "x.npy")]
        code, rss, seconds = peak([*command, "--json", report])
        batches = json.load(open(report)).get("batches", "?") if code in (0, 1) else "-"
        label = f"diff --layer-wise, {samples} samples"
        print(f"{label:<28}{code:>5}{rss / 2**30:>10.2f} G{seconds:>9.1f}  {batches}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
