"""Run a saved model in real Keras and capture every layer call's output.

This is the only package that imports TensorFlow, and it does so lazily.
Files saved by Keras 2 run in `tf_keras`, files saved by Keras 3 in Keras 3
(Keras 3 cannot load many Keras 2 files, and the two differ in semantics such
as hard_sigmoid), unless the user overrides the choice.

Layers are called one by one, eagerly, in the ModelSpec's call order, with the
outputs of earlier calls: one forward pass that yields every intermediate
value. The model is also called whole, and the two are compared, so a
misread graph shows up as a finding instead of a silent agreement.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..engine.layers.recurrent import check_stateful_run
from ..errors import KerascheckError
from ..loading.spec import ModelSpec, release_schedule, resolve

FLAVORS = ("keras", "tf_keras")


@dataclass
class OracleResult:
    flavor: str
    version: str
    outputs: list[np.ndarray]
    per_call: dict = field(default_factory=dict)
    graph_check: float = 0.0  # max |whole-model output - layer-by-layer output|
    seconds: float = 0.0


def choose_flavor(spec: ModelSpec, override: str | None = None) -> str:
    return choose_oracle(spec, override)[0]


def choose_oracle(spec: ModelSpec, override: str | None = None) -> tuple[str, str]:
    """(flavor, why): the Keras that saved the file runs it, unless the user says otherwise."""
    if override:
        if override not in FLAVORS:
            raise KerascheckError(f"--oracle must be one of {FLAVORS}, found '{override}'")
        return override, f"--oracle {override}"
    if spec.keras_major < 3:
        return "tf_keras", (
            f"saved by Keras {spec.keras_version}: run in tf_keras, since Keras 3 cannot load "
            "many Keras 2 files and differs in semantics such as hard_sigmoid"
        )
    return "keras", f"saved by Keras {spec.keras_version}"


# Keras' whole-model output and its layer-by-layer replay use identical kernels;
# a larger difference (relative to the output's magnitude, at least 1) means the
# replay does not reproduce model.predict, and nothing compared with it is meaningful.
GRAPH_CHECK_LIMIT = 1e-6

# --verbose: TensorFlow's own start-up and load messages reach stderr.
VERBOSE = False


def set_verbose(flag: bool) -> None:
    global VERBOSE
    VERBOSE = bool(flag)


@contextlib.contextmanager
def _quiet_native_stderr():
    """TensorFlow's C++ chatter (oneDNN notices, CUDA lines, absl's InitializeLog
    warning) bypasses Python logging: mute fd 2 meanwhile."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def quiet(native: bool = True):
    """TensorFlow and Keras say nothing on kerascheck's stderr unless --verbose:
    native output (`native`) and Python warnings are muted while they import, load
    and run."""
    if VERBOSE:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _quiet_native_stderr() if native else contextlib.nullcontext():
            yield


def _import(flavor: str):
    if not VERBOSE:
        # Before the import: TensorFlow reads these once. oneDNN's notice is muted.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # TensorFlow's own CPU kernels cannot run channels-first convolutions and pooling
    # (or dilated transposed convolutions); oneDNN's can, and TensorFlow enables it by
    # default only on CPUs with AVX-512. Enabled everywhere, so a channels-first model
    # gets a Keras oracle on every CPU (an explicit setting is kept).
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    try:
        with quiet():
            import tensorflow as tf

            if not VERBOSE:
                tf.get_logger().setLevel("ERROR")
                from absl import logging as absl_logging

                absl_logging.set_verbosity(absl_logging.ERROR)
            if flavor == "tf_keras":
                import tf_keras as module
            else:
                import keras as module
    except ImportError as exc:
        raise KerascheckError(
            f"the Keras oracle needs '{flavor}' installed "
            f"(pip install tensorflow-cpu tf-keras): {exc}"
        )
    return module


# Keras formats some messages for a terminal (`\x1b[1m...\x1b[0m`): the escape sequences
# are dropped, not shown as `\x1b` text, in the one line kerascheck prints.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def keras_message(exc: BaseException, limit: int = 300) -> str:
    """A Keras or TensorFlow exception's text as one line: whitespace runs collapsed,
    terminal formatting dropped, at most `limit` characters."""
    return " ".join(_ANSI.sub("", str(exc)).split())[:limit]


def load_keras_model(path: str, flavor: str, compile: bool = False):
    """Load with the chosen Keras, safe mode on; a failure is reported, not raised raw."""
    module = _import(flavor)
    try:
        with quiet():
            return module.models.load_model(
                path, compile=compile, safe_mode=True, custom_objects=_application_layers(flavor)
            )
    except Exception as exc:  # Keras raises many types for files it cannot read
        message = keras_message(exc, 400)
        raise KerascheckError(
            f"{flavor} {module.__version__} cannot load {path}: {type(exc).__name__}: {message}"
        )


def _application_layers(flavor: str) -> dict:
    """Layer classes keras.applications defines for itself, which tf_keras does not find
    by name when loading (ConvNeXt's LayerScale, InceptionResNetV2's CustomScaleLayer).
    They are Keras' own code, imported from Keras, never from the model file."""
    if flavor != "tf_keras":
        return {}
    from tf_keras.src.applications import convnext, inception_resnet_v2

    return {
        "LayerScale": convnext.LayerScale,
        "StochasticDepth": convnext.StochasticDepth,
        "Custom>CustomScaleLayer": inception_resnet_v2.CustomScaleLayer,
    }


class KerasRunner:
    """A model loaded once in the chosen Keras, run batch by batch."""

    def __init__(self, path: str, spec: ModelSpec, flavor: str):
        start = time.perf_counter()
        self.module = _import(flavor)
        self.import_seconds = time.perf_counter() - start  # TensorFlow's start-up
        self.flavor = flavor
        self.version = self.module.__version__
        self.spec = spec
        self.model = load_keras_model(path, flavor)
        self.load_seconds = time.perf_counter() - start - self.import_seconds
        self.seconds = 0.0

    def run_batch(
        self, arrays: list[np.ndarray], keep: bool = True, strict: bool = True, each=None
    ):
        """(model outputs, {call name: output}, graph check) for one batch.

        strict: a replay that does not reproduce the whole model is the oracle's
        failure (KerascheckError), not a finding about the model. each: see `_replay`.
        """
        start = time.perf_counter()
        # fd 2 is muted for the first batch only (kernels' first-use notices), so a
        # progress bar on stderr keeps drawing during the later ones
        with quiet(native=self.seconds == 0.0):
            result = _run_batch(self.model, self.spec, arrays, keep, each)
        self.seconds += time.perf_counter() - start
        if strict:
            require_graph_agreement(result[2], result[0], self.flavor)
        return result


def require_graph_agreement(check: float, outputs: list[np.ndarray], flavor: str) -> None:
    scale = max(
        [1.0] + [float(np.max(np.abs(o))) for o in outputs if o.size and o.dtype.kind == "f"]
    )
    if check > GRAPH_CHECK_LIMIT * scale:
        raise KerascheckError(
            f"oracle error: {flavor}'s whole-model output differs from kerascheck's "
            f"layer-by-layer replay of it by {check:.2e} (limit {GRAPH_CHECK_LIMIT:g} x "
            f"{scale:.3g}), so Keras' per-layer values are not what model.predict computes "
            "and no comparison is made; this is a kerascheck bug, please report it"
        )


def run_keras(
    path: str,
    spec: ModelSpec,
    inputs: list[np.ndarray],
    flavor: str,
    keep: bool = True,
    batch_size: int | None = None,
) -> OracleResult:
    """Every call's output from Keras itself (and the model outputs)."""
    total = inputs[0].shape[0]
    step = batch_size or total or 1
    check_stateful_run(spec, int(total), step)
    runner = KerasRunner(path, spec, flavor)
    pieces = [
        runner.run_batch([np.asarray(a[i : i + step]) for a in inputs], keep, strict=keep)
        for i in range(0, max(total, 1), step)
    ]
    outputs = [np.concatenate(parts) for parts in zip(*(p[0] for p in pieces))]
    per_call = {}
    if keep:
        for name in pieces[0][1]:
            per_call[name] = _concat([p[1][name] for p in pieces])
    return OracleResult(
        flavor=flavor,
        version=runner.version,
        outputs=outputs,
        per_call=per_call,
        graph_check=max(p[2] for p in pieces),
        seconds=runner.seconds,
    )


def _run_batch(model, spec: ModelSpec, arrays: list[np.ndarray], keep: bool, each=None):
    """(whole-model outputs, {call name: output}, max |whole - replay|), in inference mode."""
    _reset_states(model)
    stepwise, per_call = _replay(model, spec, arrays, keep, each)
    _reset_states(model)
    whole = model(arrays if len(arrays) > 1 else arrays[0], training=False)
    whole = [_numpy(w) for w in (whole if isinstance(whole, (list, tuple)) else [whole])]
    check = max(
        (
            float(np.max(np.abs(a - b)))
            if a.shape == b.shape and a.size
            else (0.0 if a.shape == b.shape else np.inf)
        )
        for a, b in zip(whole, stepwise)
    )
    return whole, per_call, check


def _replay(model, spec: ModelSpec, arrays: list[np.ndarray], keep: bool, each=None):
    """(model outputs, {call name: output}): every call in the spec's order, eagerly,
    each with `training=False` where its call takes it, as model.predict runs it
    (Keras 3's augmentation layers default to training=True when called bare).

    With `each`, `each(call, output, inputs)` sees every call's output as soon as it
    is computed, with the values of the tensors the call read (`inputs`, keyed like
    the engine's values), all as NumPy arrays. Tensors no later call reads are
    dropped as the replay goes."""
    import tensorflow as tf

    values = {(i.name, 0): tf.constant(a) for i, a in zip(spec.inputs, arrays)}
    released = release_schedule(spec)

    def tensor(ref):
        value = values[(ref.layer, ref.call)]
        return value[ref.tensor] if isinstance(value, (list, tuple)) else value

    per_call = {}
    operations = _operations(model)
    for position, call in enumerate(spec.calls):
        first = [tensor(ref) for ref in call.inputs]
        args = resolve(call.args, tensor)
        kwargs = resolve(call.kwargs, tensor)
        layer = operations.get(call.layer) or model.get_layer(call.layer)
        if "training" not in kwargs and _takes_training(layer):
            kwargs["training"] = False
        try:
            if call.first is not None:  # constants in the first argument (`2.0 - x`)
                first = resolve(call.first, tensor)
            elif not call.as_list:
                first = first[0]
            output = layer(first, *args, **kwargs)
        except Exception as exc:
            message = keras_message(exc)
            raise KerascheckError(
                f"Keras failed to run layer '{call.layer}' ({type(layer).__name__}): {message}"
            )
        output = _flat(output)
        values[(call.layer, call.index)] = output
        if keep:
            per_call[call.name] = _numpy(output)
        if each is not None:
            read = {(ref.layer, ref.call) for ref in call.refs}
            each(call, _numpy(output), {key: _numpy(values[key]) for key in read})
        for key in released[position]:
            values.pop(key, None)
    return [_numpy(tensor(ref)) for ref in spec.outputs], per_call


def _takes_training(layer) -> bool:
    """Whether the layer's call accepts `training` (Keras 3 and tf_keras record it)."""
    for attribute in ("_call_has_training_arg", "_expects_training_arg"):
        value = getattr(layer, attribute, None)
        if isinstance(value, bool):
            return value
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def _reset_states(model) -> None:
    """Stateful RNNs start from zero states, as right after `reset_states()`."""
    for layer in _all_layers(model):
        if getattr(layer, "stateful", False) is True:
            reset = getattr(layer, "reset_states", None) or getattr(layer, "reset_state", None)
            if reset is not None:
                reset()


def _all_layers(model):
    flatten = getattr(model, "_flatten_layers", None)
    return list(flatten(include_self=False)) if flatten else list(getattr(model, "layers", []))


def _operations(model) -> dict:
    """Layers and, in Keras 3, operation nodes (the `not_equal` that computes an
    Embedding's mask for a layer taking `mask`), which `get_layer` omits."""
    return {op.name: op for op in getattr(model, "operations", [])}


def _flat(output):
    """Nested outputs (stacked RNN cells' states) indexed flat, as the functional graph does."""
    if not isinstance(output, (list, tuple)):
        return output
    flat = []
    for item in output:
        flat.extend(_flat(item) if isinstance(item, (list, tuple)) else [item])
    return flat


def _numpy(value):
    if isinstance(value, (list, tuple)):
        return [np.asarray(v) for v in value]
    return np.asarray(value)


def _concat(values):
    if isinstance(values[0], list):
        return [np.concatenate(parts) for parts in zip(*values)]
    return np.concatenate(values)
