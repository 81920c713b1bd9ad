"""`kerascheck audit` throughput: models per minute over the keras.applications zoo.

The zoo's architectures (as `bench/zoo.py` builds them: weights=None, small inputs,
10 classes) are saved once into one folder, then audited three ways in the same run:
`--jobs 1`, `--jobs 2`, and on a two-worker Dask LocalCluster (`--scheduler`). Each
line gives the wall time, the models per minute, and the statuses, which must be
the same for all three.

    .venv/bin/python bench/bench_audit.py [--only VGG16 ResNet50 ...] [--folder DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from zoo import ZOO, build  # noqa: E402

KERASCHECK = os.path.join(os.path.dirname(sys.executable), "kerascheck")


def audit(folder: str, *extra: str) -> tuple[float, collections.Counter]:
    report = os.path.join(folder, "..", f"report{'-'.join(extra)}.json".replace("/", "_"))
    start = time.perf_counter()
    subprocess.run([KERASCHECK, "audit", folder, "--json", report, *extra], check=False)
    seconds = time.perf_counter() - start
    with open(report) as handle:
        data = json.load(handle)
    statuses = collections.Counter(m["status"] for m in data["models"])
    statuses["error"] += len(data["errors"])
    return seconds, statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="architectures (default: the whole zoo)")
    parser.add_argument("--folder", help="reuse (or fill) this folder of saved models")
    args = parser.parse_args()
    names = args.only or list(ZOO)
    folder = args.folder or os.path.join(tempfile.mkdtemp(prefix="kerascheck-audit-"), "zoo")
    os.makedirs(folder, exist_ok=True)
    for name in names:
        path = os.path.join(folder, f"{name}.keras")
        if not os.path.exists(path):
            build(name, path)
    count = len(names)
    print(f"{count} models in {folder}")

    from distributed import LocalCluster

    runs = [("--jobs 1", ["--jobs", "1"]), ("--jobs 2", ["--jobs", "2"])]
    results = []
    for label, extra in runs:
        results.append((label, *audit(folder, *extra)))
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        results.append(
            ("dask, 2 workers", *audit(folder, "--scheduler", cluster.scheduler_address))
        )
    print(f"{'run':<18}{'wall s':>9}{'models/min':>12}  statuses")
    for label, seconds, statuses in results:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()) if v)
        print(f"{label:<18}{seconds:>9.1f}{count / seconds * 60:>12.2f}  {shown}")
    same = len({tuple(sorted(s.items())) for _, _, s in results}) == 1
    print("statuses agree across runs" if same else "STATUSES DIFFER across runs")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
