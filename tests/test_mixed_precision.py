"""Mixed precision: layers whose dtype policy computes in float16 are judged at float16.

Keras rounds such a layer's inputs, weights and output to float16; the engine computes
in float32, so the default 1e-4 tolerance would call a faithful file divergent. Those
rows get float16's tolerance (said in the report); float32 layers keep the default,
and a user's own --layer-tol still wins.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import keras_module, randomize_weights

from kerascheck.cli import main
from kerascheck.diff import LOW_PRECISION_RTOL, compute_dtype


@pytest.fixture(scope="module", params=["keras", "tf_keras"])
def mixed(request, tmp_path_factory):
    k = keras_module(request.param)
    model = k.Sequential(
        [
            k.Input((5, 4, 3)),
            k.layers.ZeroPadding2D(1, dtype="mixed_float16", name="pad"),
            k.layers.Dense(6, activation="tanh", dtype="mixed_float16", name="half"),
            k.layers.Flatten(dtype="float32", name="flat"),
            k.layers.Dense(2, dtype="float32", name="full"),
        ]
    )
    randomize_weights(model)
    root = tmp_path_factory.mktemp(f"mixed_{request.param}")
    path = str(root / ("m.keras" if request.param == "keras" else "m.h5"))
    model.save(path)
    x = np.random.default_rng(0).normal(0, 3, (4, 5, 4, 3)).astype(np.float32)
    np.save(root / "x.npy", x)
    return path, str(root / "x.npy"), root


def _diff(mixed, *extra):
    path, x, root = mixed
    report = root / f"r{len(extra)}.json"
    result = CliRunner().invoke(
        main, ["diff", "--layer-wise", path, x, "--json", str(report), *extra]
    )
    return result, {row["name"]: row for row in json.loads(report.read_text())["layers"]}


def test_float16_layers_are_judged_at_float16(mixed):
    result, rows = _diff(mixed)
    assert result.exit_code == 0, result.output
    for name in ("pad", "half"):
        assert rows[name]["tolerance"]["rtol"] == LOW_PRECISION_RTOL["float16"]
        assert "float16" in rows[name]["tolerance"]["why"]
    # float16 rounding is visible, well above float32's and within float16's
    assert 1e-4 < rows["half"]["own"]["max_rel_diff"] < LOW_PRECISION_RTOL["float16"]
    assert rows["full"].get("tolerance") is None
    assert "per-layer tolerances in force: pad rtol=0.01" in result.output


def test_a_users_own_tolerance_wins(mixed):
    result, rows = _diff(mixed, "--layer-tol", "half:rtol=1e-6")
    assert rows["half"]["tolerance"]["rtol"] == 1e-6
    assert rows["half"]["status"] == "mismatch" and result.exit_code == 1


@pytest.mark.parametrize(
    "dtype, expected",
    [
        ("mixed_float16", "float16"),
        ("mixed_bfloat16", "bfloat16"),
        ("float32", None),
        ({"class_name": "DTypePolicy", "config": {"name": "mixed_float16"}}, "float16"),
        ({"class_name": "Policy", "config": {"name": "bfloat16"}}, "bfloat16"),
        (None, None),
        (7, None),
    ],
)
def test_compute_dtype_of_a_config(dtype, expected):
    assert compute_dtype({"dtype": dtype}) == expected
