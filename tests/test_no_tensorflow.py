"""`import kerascheck` and the NumPy engine never import TensorFlow or Keras.

A subprocess installs an import hook that makes `tensorflow`, `keras` and
`tf_keras` unimportable, then loads and runs saved models; if any code path
reached for them, the import would fail loudly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import keras_module, keras_predict, randomize_weights

BLOCKED = ("tensorflow", "keras", "tf_keras")

SCRIPT = textwrap.dedent(
    """
    import json, sys

    BLOCKED = {blocked!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())

    import numpy as np
    import kerascheck
    import kerascheck.inputs

    results = {{}}
    for path in {paths!r}:
        x = np.load({x_path!r})
        model = kerascheck.load(path)
        results[path] = {{
            "predict": model.predict(x).tolist(),
            "rows": sorted(model.run(x)),
        }}
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({{"results": results, "loaded": loaded}}))
    """
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("notf")
    x = np.linspace(-6, 6, 30, dtype="float32").reshape(3, 10)
    np.save(root / "x.npy", x)
    files = {}
    for flavor, ext in (("keras", ".keras"), ("tf_keras", ".h5")):
        k = keras_module(flavor)
        inp = k.Input((10,), name="x")
        hidden = k.layers.Dense(6, activation="relu", name="hidden")(inp)
        model = k.Model(inp, k.layers.Dense(3, activation="softmax", name="out")(hidden))
        randomize_weights(model)
        path = str(root / f"model_{flavor}{ext}")
        model.save(path)
        files[path] = keras_predict(model, x)
    return files, str(root / "x.npy")


def test_engine_runs_with_tensorflow_and_keras_unimportable(saved):
    files, x_path = saved
    script = SCRIPT.format(blocked=BLOCKED, paths=list(files), x_path=x_path)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    for path, expected in files.items():
        result = report["results"][path]
        np.testing.assert_allclose(np.array(result["predict"]), expected, rtol=1e-4, atol=1e-5)
        assert result["rows"] == ["hidden", "out"]
