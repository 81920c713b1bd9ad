"""A coverage-guided campaign over kerascheck's loader and engine (atheris / libFuzzer).

    python fuzz/coverage_fuzz.py [--runs 3000] [--seconds 600] [--corpus DIR]

Where `run_fuzz.py` draws independent mutations of the sample files, this one keeps
the mutated files that reach new lines of kerascheck (its modules are instrumented)
and mutates those further, so mutations stack: a config with one bad stride grows a
bad dilation next, a weights file loses a dataset and then gets a deep group.
A case is the bytes of a `.keras` archive (first byte `K`) or a legacy `.h5` file
(`H`). The custom mutator applies the seeded campaign's structural mutations (JSON
values and function-bearing entries in the config, HDF5 datasets, attributes, links
and groups, zip members) or libFuzzer's own byte mutations.

Each case is loaded with `kerascheck.load` and, when it loads, predicted on a small
input: it must either work or raise a KerascheckError. Anything else is a problem:
the counts so far are printed, and libFuzzer saves the case as `crash-*` and stops.
Prints the counts by outcome every 500 cases and at the end; libFuzzer prints its
coverage (`cov`: edges reached, `ft`: features) as it goes.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import resource
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import atheris  # noqa: E402
import numpy as np  # noqa: E402
from test_mutations import (  # noqa: E402
    BASE_H5,
    BASE_KERAS,
    _members,
    _mutate_bytes,
    _zip,
    h5_config_mutation,
    h5_mutation,
    mutate_json,
)

with atheris.instrument_imports(include=["kerascheck"]):
    import kerascheck
    import kerascheck.engine.model  # the loader, the config parser and every layer
    import kerascheck.inputs
    import kerascheck.loading
    from kerascheck.errors import KerascheckError

COUNTS: collections.Counter = collections.Counter()
TOTAL = [0]
WORKDIR = tempfile.mkdtemp(prefix="kerascheck-fuzz-")
MEMORY_BYTES = 4 * 2**30
MAX_STRUCTURED = 400_000  # bytes; the seeds are about 60 KB


def _print_counts(final=False):
    label = "final" if final else "so far"
    shown = ", ".join(f"{name} {number}" for name, number in sorted(COUNTS.items()))
    print(f"[{label}] {sum(COUNTS.values())} cases: {shown}", flush=True)


def target(data: bytes) -> None:
    TOTAL[0] += 1
    try:
        _check(data)
    finally:
        if TOTAL[0] % 500 == 0 or TOTAL[0] == RUNS[0]:
            _print_counts(final=TOTAL[0] == RUNS[0])


def _check(data: bytes) -> None:
    if len(data) < 2 or data[:1] not in (b"K", b"H"):
        COUNTS["not a case"] += 1
        return
    path = os.path.join(WORKDIR, "case.keras" if data[:1] == b"K" else "case.h5")
    with open(path, "wb") as handle:
        handle.write(data[1:])
    try:
        model = kerascheck.load(path)
        shapes = [spec.shape for spec in model.spec.inputs]
        if all(isinstance(d, int) and 0 < d <= 64 for s in shapes for d in s):
            rng = np.random.default_rng(0)
            arrays = [rng.normal(0, 3, (2, *s)).astype("float32") for s in shapes]
            with np.errstate(all="ignore"):
                model.predict(arrays[0] if len(arrays) == 1 else arrays)
        COUNTS["ok"] += 1
    except KerascheckError:
        COUNTS["refused"] += 1
    except BaseException:
        COUNTS["problem"] += 1
        _print_counts(final=True)
        raise


RUNS = [0]


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    kind, body = data[:1], data[1:]
    # h5py's walks are slow on files already grown huge (2,000 nested groups): those
    # only get byte mutations, so the mutator itself stays fast
    if kind not in (b"K", b"H") or rng.random() < 0.3 or len(body) > MAX_STRUCTURED:
        return (kind if kind in (b"K", b"H") else b"K") + atheris.Mutate(body, max_size - 1)
    try:
        return kind + (_mutate_keras(body, rng) if kind == b"K" else _mutate_h5(body, rng))
    except Exception:  # the case is too broken for a structural mutation
        return kind + _mutate_bytes(body, rng) if body else _seed(kind)


def _mutate_keras(body: bytes, rng: random.Random) -> bytes:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    choice = rng.choice(["config", "config", "weights", "drop", "bytes"])
    if choice == "config" and "config.json" in members:
        config = json.loads(members["config.json"])
        members["config.json"] = json.dumps(mutate_json(config, rng)).encode()
    elif choice == "weights" and "model.weights.h5" in members:
        members["model.weights.h5"] = h5_mutation(members["model.weights.h5"], rng)
    elif choice == "drop" and members:
        members.pop(rng.choice(sorted(members)))
    else:
        return _mutate_bytes(body, rng)
    return _zip(members)


def _mutate_h5(body: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return h5_mutation(body, rng)
    return h5_config_mutation(body, rng)


def _seed(kind: bytes) -> bytes:
    if kind == b"H":
        return b"H" + BASE_H5.read_bytes()
    return b"K" + _zip(_members(BASE_KERAS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--corpus", default=os.path.join(WORKDIR, "corpus"))
    args = parser.parse_args()
    RUNS[0] = args.runs
    os.makedirs(args.corpus, exist_ok=True)
    for kind in (b"K", b"H"):
        Path(args.corpus, f"seed-{kind.decode()}").write_bytes(_seed(kind))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    libfuzzer = [
        sys.argv[0],
        args.corpus,
        f"-runs={args.runs}",
        f"-max_total_time={args.seconds}",
        "-timeout=60",
        "-rss_limit_mb=0",
        f"-max_len={4 * 2**20}",
        "-print_final_stats=1",
        f"-artifact_prefix={os.getcwd()}/",
    ]
    atheris.Setup(libfuzzer, target, custom_mutator=mutate)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
