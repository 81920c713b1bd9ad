"""Run every keras.applications architecture through `kerascheck diff --layer-wise`.

Each model is built with `weights=None` (nothing is downloaded), a small input
where the architecture allows it and 10 classes, saved to `.keras`, then
compared layer by layer with Keras 3 on seeded random inputs. One line per model:
layers compared, status (judged by each layer's own error), the largest own and
carried relative errors, how many layers drift (carried error alone out of
tolerance), and times.

    .venv/bin/python bench/zoo.py                 # the whole zoo (slow: tens of minutes)
    .venv/bin/python bench/zoo.py --only ResNet50 MobileNetV3Small
    .venv/bin/python bench/zoo.py --fast          # the subset that also runs in `make test`
    .venv/bin/python bench/zoo.py --grad          # gradients (`kerascheck grad`) instead

With `--grad` each model's categorical cross-entropy gradients on a batch of 2
(training mode: batch statistics, active dropout with Keras' own masks) are
compared tensor by tensor: the tensors compared, status (by each tensor's own
error), the largest own and carried relative errors, and how many drift.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# name -> (input size, kwargs); sizes are the smallest each architecture accepts
# comfortably, so the whole zoo stays within a 2-core machine's patience.
ZOO = {
    "VGG16": (32, {}),
    "VGG19": (32, {}),
    "ResNet50": (32, {}),
    "ResNet101": (32, {}),
    "ResNet152": (32, {}),
    "ResNet50V2": (32, {}),
    "ResNet101V2": (32, {}),
    "ResNet152V2": (32, {}),
    "InceptionV3": (75, {}),
    "InceptionResNetV2": (75, {}),
    "Xception": (71, {}),
    "MobileNet": (32, {}),
    "MobileNetV2": (32, {}),
    "MobileNetV3Small": (32, {}),
    "MobileNetV3Large": (32, {}),
    "DenseNet121": (32, {}),
    "DenseNet169": (32, {}),
    "DenseNet201": (32, {}),
    "NASNetMobile": (32, {}),
    "NASNetLarge": (32, {}),
    **{f"EfficientNetB{i}": (32, {}) for i in range(8)},
    **{f"EfficientNetV2B{i}": (32, {}) for i in range(4)},
    "EfficientNetV2S": (32, {}),
    "EfficientNetV2M": (32, {}),
    "EfficientNetV2L": (32, {}),
    "ConvNeXtTiny": (32, {}),
    "ConvNeXtSmall": (32, {}),
    "ConvNeXtBase": (32, {}),
    "ConvNeXtLarge": (32, {}),
    "ConvNeXtXLarge": (32, {}),
}
FAST = (
    "MobileNetV3Small",
    "EfficientNetB0",
    "ResNet50V2",
    "DenseNet121",
    "ConvNeXtTiny",
    "InceptionResNetV2",
)


def build(name: str, path: str, flavor: str = "keras") -> None:
    if flavor == "tf_keras":
        import tf_keras as keras
    else:
        import keras

    size, kwargs = ZOO[name]
    keras.utils.set_random_seed(0)  # the same random weights on every run
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classes=10, **kwargs
    )
    model.save(path)


def check(name: str, workdir: str, seed: int = 0, flavor: str = "keras") -> dict:
    """Build, save, and diff one architecture; returns the figures of its line.

    `flavor="tf_keras"` builds it with Keras 2 and saves a legacy `.h5`.
    """
    import kerascheck
    from kerascheck.diff import diff_model
    from kerascheck.inputs import random_inputs

    path = os.path.join(workdir, f"{name}{'.h5' if flavor == 'tf_keras' else '.keras'}")
    start = time.perf_counter()
    build(name, path, flavor)
    built = time.perf_counter() - start
    model = kerascheck.load(path)
    inputs = random_inputs(model.spec, batch=1, seed=seed)
    result = diff_model(path, model, inputs, layer_wise=True)
    rows = result.comparison.layers
    os.remove(path)
    return {
        "name": name,
        "layers": len(rows),
        "status": result.status,
        "first_divergence": result.comparison.first_divergence,
        "max_rel": max((r.max_rel_diff or 0.0) for r in rows),
        "max_own_rel": max(((r.own or {}).get("max_rel_diff") or 0.0) for r in rows),
        "drift": sum(r.status == "drift" for r in rows),
        "build_s": built,
        "engine_s": result.engine_seconds,
        "keras_s": result.keras_seconds,
    }


def check_grad(name: str, workdir: str, seed: int = 0, flavor: str = "keras") -> dict:
    """Build, save, and check one architecture's gradients; the figures of its line."""
    import numpy as np

    import kerascheck
    from kerascheck.grad import grad_model
    from kerascheck.inputs import random_inputs

    path = os.path.join(workdir, f"{name}{'.h5' if flavor == 'tf_keras' else '.keras'}")
    start = time.perf_counter()
    build(name, path, flavor)
    built = time.perf_counter() - start
    model = kerascheck.load(path)
    inputs = random_inputs(model.spec, batch=2, seed=seed)
    targets = [np.eye(10, dtype="float32")[[seed % 10, (seed + 3) % 10]]]
    result = grad_model(path, model, inputs, targets, loss_option="categorical_crossentropy")
    tensors = [t for row in result.rows for t in row.tensors]
    # Tensors that are zero in exact arithmetic (below 1e-4 of their call's largest, e.g.
    # a bias in front of a BatchNormalization) are float32 noise on both sides: counted
    # in the `drift` column's neighbour, not in the own error.
    real = [
        t
        for row in result.rows
        for t in row.tensors
        if t.own and t.keras_norm >= 1e-4 * max(u.keras_norm for u in row.tensors)
    ]
    os.remove(path)
    first = result.first_divergence
    return {
        "name": name,
        "layers": len(tensors),
        "status": result.status,
        "first_divergence": f"{first['call']}/{first['tensor']}" if first else None,
        "max_rel": max((t.carried.rel_error for t in tensors if t.carried), default=0.0),
        "max_own_rel": max((t.own.rel_error for t in real), default=0.0),
        "zero": sum(1 for t in tensors if t.own) - len(real),
        "drift": sum(t.status == "drift" for t in tensors),
        "build_s": built,
        "engine_s": result.engine_seconds,
        "keras_s": result.keras_seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="architectures to run (default: all)")
    parser.add_argument("--fast", action="store_true", help="only the make-test subset")
    parser.add_argument(
        "--keras2", action="store_true", help="build with tf_keras and save legacy .h5 files"
    )
    parser.add_argument("--grad", action="store_true", help="check gradients instead")
    args = parser.parse_args()
    run = check_grad if args.grad else check
    names = args.only or (list(FAST) if args.fast else list(ZOO))
    print(
        f"{'model':<20} {'tensors' if args.grad else 'layers':>6} {'status':<9} "
        f"{'own rel':>9} {'carried':>9} {'drift':>5} "
        f"{'build s':>8} {'engine s':>9} {'keras s':>8}  first divergence"
    )
    failures = 0
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            try:
                r = run(name, workdir, flavor="tf_keras" if args.keras2 else "keras")
            except Exception as exc:  # one broken architecture must not hide the others
                failures += 1
                print(f"{name:<20} {'-':>6} {'error':<9} {type(exc).__name__}: {exc}"[:300])
                continue
            failures += r["status"] != "match"
            zero = f" zero={r['zero']}" if "zero" in r else ""
            print(
                f"{r['name']:<20} {r['layers']:>6} {r['status']:<9} {r['max_own_rel']:>9.1e} "
                f"{r['max_rel']:>9.1e} {r['drift']:>5} {r['build_s']:>8.1f} "
                f"{r['engine_s']:>9.2f} {r['keras_s']:>8.2f}  "
                f"{r['first_divergence'] or ''}{zero}",
                flush=True,
            )
    print(f"{len(names) - failures} of {len(names)} architectures match")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
