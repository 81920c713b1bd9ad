"""Seeded mutations of small model and input files: every one exits 0 or 2 with at most
one line on stderr, never a traceback or "internal error", within time and memory bounds.

`make_cases` is shared with the longer campaign in fuzz/run_fuzz.py. Cases run in two
worker subprocesses (click's CliRunner in-process, RLIMIT_AS set), so one bad case cannot
take pytest down with it.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
BASE_KERAS = SAMPLES / "seed000_regressor.keras"
BASE_H5 = SAMPLES / "seed000_regressor_keras2.h5"
BASE_INPUT = SAMPLES / "seed000_regressor.input.npy"
CASE_SECONDS = 10
MEMORY_BYTES = 4 * 2**30

HOSTILE_VALUES = [
    10**12, -(2**31), 2**63, float("inf"), float("nan"), True, False, None, "x", [], {},
    [10**12, 10**12], -1, 0, 1.5, "A" * 5000,
]  # fmt: skip
FUNCTION_VALUES = [
    {"class_name": "__lambda__", "config": {"code": "4wEAAA=="}},
    {"module": "os", "class_name": "system", "config": {"command": "true"}},
    {"module": "subprocess", "class_name": "Popen", "config": {}},
    {"module": "evil.pkg", "class_name": "Thing", "config": {}, "registered_name": "X>Y"},
    "os.system",
]


# ---------------------------------------------------------------- building mutated files


def _zip(members: dict, compress=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compress) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _members(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _paths(value, prefix=()):
    """Every (path, value) in a JSON tree."""
    yield prefix, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _set(tree, path, value):
    """`tree[path] = value`, making missing dicts on the way (or the top key, failing that)."""
    node = tree
    try:
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
        node[path[-1]] = value
    except (IndexError, KeyError, TypeError):
        tree[path[0]] = value


def mutate_json(config: dict, rng: random.Random) -> dict:
    config = copy.deepcopy(config)
    paths = [p for p, _ in _paths(config) if p]
    kind = rng.choice(["value", "value", "function", "nest", "drop"])
    if kind == "function":
        keys = [
            p for p in paths if str(p[-1]).endswith(("_initializer", "_regularizer", "_constraint"))
        ]
        keys += [("compile_config", "loss"), ("compile_config", "optimizer"), ("build_config",)]
        _set(config, rng.choice(keys), copy.deepcopy(rng.choice(FUNCTION_VALUES)))
    elif kind == "nest":
        inner = {"class_name": "Sequential", "config": {"layers": []}}
        for _ in range(rng.choice([50, 200, 300])):
            inner = {"class_name": "Sequential", "config": {"layers": [inner]}}
        _set(config, ("config", "layers", 1), inner)
    elif kind == "drop":
        path = rng.choice(paths)
        node = config
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]
    else:
        _set(config, rng.choice(paths), copy.deepcopy(rng.choice(HOSTILE_VALUES)))
    return config


def keras_case(rng: random.Random) -> bytes:
    members = _members(BASE_KERAS)
    kind = rng.choice(["bytes", "json", "json", "json", "zip", "weights"])
    if kind == "bytes":
        return _mutate_bytes(BASE_KERAS.read_bytes(), rng)
    if kind == "json":
        config = json.loads(members["config.json"])
        members["config.json"] = json.dumps(mutate_json(config, rng)).encode()
        return _zip(members)
    if kind == "weights":
        members["model.weights.h5"] = h5_mutation(members["model.weights.h5"], rng)
        return _zip(members)
    choice = rng.choice(["bomb", "method", "encrypted", "missing", "bzip2", "lzma"])
    if choice == "bomb":
        members["config.json"] = b" " * (300 * 2**20)
        return _zip(members, zipfile.ZIP_DEFLATED)
    if choice in ("bzip2", "lzma"):
        method = zipfile.ZIP_BZIP2 if choice == "bzip2" else zipfile.ZIP_LZMA
        return (
            _mutate_bytes(_zip(members, method), rng)
            if rng.random() < 0.5
            else _zip(members, method)
        )
    if choice == "missing":
        members.pop(rng.choice(sorted(members)))
        return _zip(members)
    data = bytearray(_zip(members))
    for offset in _local_headers(data):
        if choice == "method":
            data[offset + 8 : offset + 10] = (99).to_bytes(2, "little")
        else:
            data[offset + 6] |= 1
    for offset in _central_headers(data):
        if choice == "method":
            data[offset + 10 : offset + 12] = (99).to_bytes(2, "little")
        else:
            data[offset + 8] |= 1
    return bytes(data)


def _local_headers(data):
    start = 0
    while (start := data.find(b"PK\x03\x04", start)) >= 0:
        yield start
        start += 4


def _central_headers(data):
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:
        yield start
        start += 4


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    kind = rng.choice(["flip", "overwrite", "truncate"])
    if kind == "flip":
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "overwrite":
        start = rng.randrange(len(data))
        data[start : start + 512] = rng.randbytes(min(512, len(data) - start))
    else:
        del data[rng.randrange(len(data)) :]
    return bytes(data)


def h5_mutation(data: bytes, rng: random.Random) -> bytes:
    """A structural mutation of an HDF5 file (attributes, datasets, groups, links)."""
    buffer = io.BytesIO(data)
    with h5py.File(buffer, "r+") as handle:
        datasets = []
        handle.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset) else None)
        groups = [n for n in _names(handle) if isinstance(handle[n], h5py.Group)] or ["/"]
        kind = rng.choice(["bomb", "attr", "dtype", "delete", "link", "deep", "shape"])
        name = rng.choice(datasets) if datasets else None
        if kind == "bomb" and name:
            del handle[name]
            handle.create_dataset(name, shape=(2**20, 2**20), dtype="float32")
        elif kind == "shape" and name:
            del handle[name]
            handle[name] = np.zeros(rng.choice([(0,), (3, 3, 3), (1,)]), "float32")
        elif kind == "dtype" and name:
            del handle[name]
            handle[name] = np.array([b"text"])
        elif kind == "delete" and name:
            del handle[name]
        elif kind == "link":
            handle[groups[0] + "/soft"] = h5py.SoftLink("/etc/passwd")
        elif kind == "deep":
            group = handle
            for _ in range(rng.choice([100, 2000])):
                group = group.create_group("g")
        else:
            target = handle[rng.choice(groups)]
            key = rng.choice(list(target.attrs) or ["x"])
            target.attrs[key] = rng.choice([b"\xff\xfe", np.arange(5), "{not json", "x" * 10**5])
    return buffer.getvalue()


def _names(handle):
    names = []
    handle.visit(names.append)
    return names


def h5_case(rng: random.Random) -> bytes:
    data = BASE_H5.read_bytes()
    kind = rng.choice(["bytes", "bytes", "struct", "json"])
    if kind == "bytes":
        return _mutate_bytes(data, rng)
    if kind == "struct":
        return h5_mutation(data, rng)
    return h5_config_mutation(data, rng)


def h5_config_mutation(data: bytes, rng: random.Random) -> bytes:
    """A legacy `.h5` file with its model or training config mutated as JSON."""
    buffer = io.BytesIO(data)
    with h5py.File(buffer, "r+") as handle:
        key = rng.choice(["model_config", "training_config"])
        config = json.loads(handle.attrs[key])
        handle.attrs[key] = json.dumps(mutate_json(config, rng))
    return buffer.getvalue()


def input_case(rng: random.Random) -> tuple[str, bytes]:
    data = BASE_INPUT.read_bytes()
    kind = rng.choice(["bytes", "header", "npz", "npz_bomb", "npz_encrypted"])
    if kind == "bytes":
        return ".npy", _mutate_bytes(data, rng)
    if kind == "header":
        shape = rng.choice(["(-5, 4)", "(1099511627776,)", "(2, 3)", "(1e3,)", "()", "(2, " * 3])
        header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
        if rng.random() < 0.3:  # a long header needs format 2.0 (a 4-byte length)
            header += " " * 70000
            return ".npy", b"\x93NUMPY\x02\x00" + len(header).to_bytes(
                4, "little"
            ) + header.encode()
        return ".npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    array = np.load(BASE_INPUT)
    buffer = io.BytesIO()
    np.save(buffer, array)
    if kind == "npz_bomb":
        big = io.BytesIO()
        np.save(big, np.zeros(80 * 2**20, "uint8"))
        return ".npz", _zip({"arr_0.npy": big.getvalue()}, zipfile.ZIP_DEFLATED)
    packed = bytearray(_zip({"arr_0.npy": buffer.getvalue()}, zipfile.ZIP_DEFLATED))
    if kind == "npz_encrypted":
        for offset in _local_headers(packed):
            packed[offset + 6] |= 1
        for offset in _central_headers(packed):
            packed[offset + 8] |= 1
        return ".npz", bytes(packed)
    return ".npz", _mutate_bytes(bytes(packed), rng)


def make_cases(count: int, seed: int, directory: Path) -> list[list[str]]:
    """`count` CLI argument lists over mutated files written to `directory`."""
    rng = random.Random(seed)
    cases = []
    for index in range(count):
        kind = rng.choice(["keras", "keras", "h5", "h5", "input"])
        command = rng.choice([["summary"], ["predict", "--engine", "numpy"]])
        if kind == "input":
            suffix, data = input_case(rng)
            path = directory / f"case{index}{suffix}"
            path.write_bytes(data)
            cases.append(["predict", "--engine", "numpy", str(BASE_KERAS), str(path)])
            continue
        data = keras_case(rng) if kind == "keras" else h5_case(rng)
        path = directory / f"case{index}.{'keras' if kind == 'keras' else 'h5'}"
        path.write_bytes(data)
        cases.append([*command, str(path)])
    return cases


# ---------------------------------------------------------------- running them

WORKER = """
import json, resource, sys, time, warnings
resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
from click.testing import CliRunner
from kerascheck.cli import main
runner = CliRunner()
for line in sys.stdin:
    args = json.loads(line)
    print(json.dumps({{"start": args}}), flush=True)
    start = time.monotonic()
    result = runner.invoke(main, args)
    tb = result.exception is not None and not isinstance(result.exception, SystemExit)
    print(json.dumps({{"args": args, "code": result.exit_code, "stderr": result.stderr,
        "traceback": bool(tb), "seconds": time.monotonic() - start}}), flush=True)
"""


def run_cases(cases: list[list[str]], workers: int = 2) -> list[dict]:
    """Run cases in `workers` subprocesses; a crashed or hung worker reports its case."""
    script = WORKER.format(memory=MEMORY_BYTES)
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    env.pop("KERASCHECK_DEBUG", None)
    chunks = [cases[i::workers] for i in range(workers)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in chunks
    ]
    results = []
    for proc, chunk in zip(procs, chunks):
        stdin = "".join(json.dumps(args) + "\n" for args in chunk)
        try:
            out, err = proc.communicate(stdin, timeout=CASE_SECONDS * len(chunk) + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        done = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        finished = [d for d in done if "code" in d]
        results += finished
        started = [d["start"] for d in done if "start" in d]
        if len(finished) < len(chunk):  # the worker died or hung on this case
            args = started[-1] if started else chunk[0]
            results.append(
                {
                    "args": args,
                    "code": None,
                    "stderr": err[-500:],
                    "traceback": True,
                    "seconds": math.inf,
                }
            )
    return results


def problems(results: list[dict]) -> list[str]:
    found = []
    for r in results:
        lines = [line for line in (r["stderr"] or "").splitlines() if line.strip()]
        bad = (
            r["code"] not in (0, 2)
            or r["traceback"]
            or len(lines) > 1
            or any(len(line) > 400 for line in lines)
            or "Traceback" in (r["stderr"] or "")
            or "internal error" in (r["stderr"] or "")
            or r["seconds"] > CASE_SECONDS
        )
        if bad:
            found.append(
                f"{r['args']}: code {r['code']} in {r['seconds']:.1f}s: {r['stderr'][:300]!r}"
            )
    return found


def outcome(r: dict) -> str:
    if problems([r]):
        return "problem"
    return "ok (exit 0)" if r["code"] == 0 else "refused (exit 2)"


@pytest.mark.skipif(not BASE_KERAS.exists(), reason="sample models not built")
def test_mutations(tmp_path):
    cases = make_cases(240, seed=1234, directory=tmp_path)
    results = run_cases(cases)
    assert len(results) == len(cases)
    found = problems(results)
    assert not found, f"{len(found)} bad outcomes:\n" + "\n".join(found[:20])


# ---------------------------------------------------------------- one test per hostile class


def _run(tmp_path, name: str, data: bytes, *extra: str, command=("summary",)):
    from click.testing import CliRunner

    from kerascheck.cli import main

    path = tmp_path / name
    path.write_bytes(data)
    result = CliRunner().invoke(main, [*command, str(path), *extra])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert len(lines) == 1 and len(lines[0]) < 400, result.stderr
    assert "internal error" not in result.stderr
    return lines[0]


def _with_config(mutate) -> bytes:
    members = _members(BASE_KERAS)
    config = json.loads(members["config.json"])
    mutate(config)
    members["config.json"] = json.dumps(config).encode()
    return _zip(members)


def _with_weights(mutate) -> bytes:
    members = _members(BASE_KERAS)
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as handle:
        mutate(handle)
    members["model.weights.h5"] = buffer.getvalue()
    return _zip(members)


def _first_dataset(handle) -> str:
    names = []
    handle.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names[0]


def test_bomb_dataset(tmp_path):
    def bomb(handle):
        name = _first_dataset(handle)
        del handle[name]
        handle.create_dataset(name, shape=(2**20, 2**20), dtype="float32")

    line = _run(tmp_path, "bomb.keras", _with_weights(bomb))
    assert "(1048576, 1048576)" in line and "memory limit" in line


def test_unwritten_dataset_within_limit(tmp_path):
    def hollow(handle):
        name = _first_dataset(handle)
        shape = handle[name].shape
        del handle[name]
        handle.create_dataset(name, shape=shape, dtype="float32")

    assert "the file stores 0 bytes" in _run(tmp_path, "hollow.keras", _with_weights(hollow))


@pytest.mark.parametrize(
    "key, value, found",
    [
        ("strides", [-(2**31), 1], "-2147483648"),
        ("dilation_rate", [10**12, 1], "1000000000000"),
        ("filters", float("inf"), "non-finite"),
        ("kernel_size", [True, 3], "a bool"),
    ],
)
def test_huge_or_wrong_config_numbers(tmp_path, key, value, found):
    def mutate(config):
        config["config"]["layers"][1]["config"][key] = value

    line = _run(tmp_path, "numbers.keras", _with_config(mutate))
    assert f"'{key}'" in line and found in line


def test_huge_batch_shape(tmp_path):
    def mutate(config):
        config["config"]["layers"][0]["config"]["batch_shape"] = [None, 10**12, 1]

    assert "'batch_shape'" in _run(tmp_path, "batch.keras", _with_config(mutate))


def test_zip_bomb(tmp_path):
    members = _members(BASE_KERAS)
    members["config.json"] = b" " * (300 * 2**20)
    line = _run(tmp_path, "zipbomb.keras", _zip(members, zipfile.ZIP_DEFLATED))
    assert "config.json" in line


def test_npz_bomb(tmp_path):
    big = io.BytesIO()
    np.save(big, np.zeros(80 * 2**20, "uint8"))
    data = _zip({"arr_0.npy": big.getvalue()}, zipfile.ZIP_DEFLATED)
    command = ("predict", "--engine", "numpy", str(BASE_KERAS))
    path = tmp_path / "bomb.npz"
    path.write_bytes(data)
    from click.testing import CliRunner

    from kerascheck.cli import main

    result = CliRunner().invoke(main, [*command, str(path)])
    assert result.exit_code == 2 and "decompression bomb" in result.stderr, result.stderr


def test_deep_nesting(tmp_path):
    def mutate(config):
        inner = {"class_name": "Sequential", "config": {"layers": []}}
        for _ in range(300):
            inner = {"class_name": "Sequential", "config": {"layers": [inner]}}
        config["config"]["layers"][1] = inner

    assert "nested at most" in _run(tmp_path, "deep.keras", _with_config(mutate))


@pytest.mark.parametrize("key", ["kernel_initializer", "kernel_regularizer", "kernel_constraint"])
@pytest.mark.parametrize("value", FUNCTION_VALUES[:3])
def test_function_bearing_entries(tmp_path, key, value):
    def mutate(config):
        config["config"]["layers"][1]["config"][key] = value

    line = _run(tmp_path, "func.keras", _with_config(mutate))
    assert f"config.{key}" in line and "expected a built-in" in line


def test_function_bearing_compile_config(tmp_path):
    def mutate(config):
        config["compile_config"] = {"loss": {"module": "os", "class_name": "system", "config": {}}}

    line = _run(tmp_path, "compile.keras", _with_config(mutate))
    assert "compile_config.loss" in line and "module 'os'" in line


def test_deep_groups_file(tmp_path):
    def deep(handle):
        group = handle
        for _ in range(2000):
            group = group.create_group("g")

    assert "nested at most" in _run(tmp_path, "groups.keras", _with_weights(deep))


def test_long_npy_header_is_one_line(tmp_path):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }" + " " * 20000
    data = b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header.encode()
    path = tmp_path / "long.npy"
    path.write_bytes(data)
    from click.testing import CliRunner

    from kerascheck.cli import main

    result = CliRunner().invoke(main, ["predict", "--engine", "numpy", str(BASE_KERAS), str(path)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and len(lines[0]) < 400, result.stderr


def test_max_memory_option(monkeypatch):
    from click.testing import CliRunner

    from kerascheck.cli import main

    monkeypatch.setenv("KERASCHECK_MAX_MEMORY", "8G")  # restored after the test
    result = CliRunner().invoke(main, ["--max-memory", "1K", "summary", str(BASE_KERAS)])
    assert result.exit_code == 2 and "over the memory limit of" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = CliRunner().invoke(main, ["--max-memory", "lots", "summary", str(BASE_KERAS)])
    assert result.exit_code == 2 and "--max-memory" in result.stderr
