"""The engine's optimizer steps against Keras' own `apply_gradients`, flavor by flavor.

Each case builds the optimizer in Keras (Keras 3, tf_keras' new optimizers, or
tf_keras' legacy ones), serializes it as a model file would, and feeds that
config to `get_optimizer`. Four weights of different shapes (plus one that gets
no gradient) hold values and gradients spanning 1e-6..1e1 with both signs;
three steps of fixed gradients run in Keras and in the engine, and weights and
slots are compared after every step. A second test starts the engine from
Keras' state after two steps (slots, iterations, Nadam's u_product) and
compares the third: the "continue from the file's optimizer state" case.

Tolerance: per tensor, `max |engine - keras| <= 1e-5 * max |keras|`. Both sides
run float32 arithmetic in the same order; what remains is a few ulps from
`pow`, `rsqrt` and reduction order (the norm-based clippings, Lamb). Measured:
89 of the 115 three-step runs are bit-identical, the worst is 4e-7 of a
tensor's magnitude (Ftrl's `pow`, legacy Adadelta's `rsqrt`), so 1e-5 leaves a
25x margin while a wrongly rounded `1 - beta_2` (1.3e-5 relative in the
velocity), an epsilon inside instead of outside a root, or a schedule or decay
read at the wrong step all fail it.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest

from kerascheck.engine import optimizers as opt
from kerascheck.errors import KerascheckError

RTOL = 1e-5
SHAPES = {"dense/kernel": (3, 4), "dense/bias": (5,), "conv/kernel": (2, 3, 2, 2), "scale": ()}
FROZEN = "frozen/kernel"  # in the model, but never gets a gradient
STEPS = 3
UNSERIALIZED = {"adaptive_epsilon"}  # tf_keras' Adam leaves it out of get_config()
K3, TK, LEG = opt.FLAVORS
ALL = (K3, TK, LEG)
NEW = (K3, TK)

EXP = {
    "class_name": "ExponentialDecay",
    "args": dict(initial_learning_rate=0.1, decay_steps=2, decay_rate=0.5),
}
PIECEWISE = {
    "class_name": "PiecewiseConstantDecay",
    "args": dict(boundaries=[0, 1], values=[0.1, 0.05, 0.01]),
}
INVERSE = {
    "class_name": "InverseTimeDecay",
    "args": dict(initial_learning_rate=0.1, decay_steps=1, decay_rate=0.5, staircase=True),
}
POLY = {
    "class_name": "PolynomialDecay",
    "args": dict(initial_learning_rate=0.1, decay_steps=4, end_learning_rate=0.01, power=2.0),
}
EXP_CONFIG = {"class_name": "ExponentialDecay", "config": EXP["args"]}
COSINE = {
    "class_name": "CosineDecay",
    "args": dict(
        initial_learning_rate=0.01, decay_steps=3, alpha=0.1, warmup_target=0.1, warmup_steps=1
    ),
}

# (optimizer, constructor arguments, flavors)
CASES = [
    ("SGD", {}, ALL),
    ("SGD", {"momentum": 0.9}, ALL),
    ("SGD", {"momentum": 0.9, "nesterov": True}, ALL),
    ("SGD", {"learning_rate": 0.1, "weight_decay": 0.05}, NEW),
    ("SGD", {"momentum": 0.5, "clipnorm": 1.0}, ALL),
    ("SGD", {"global_clipnorm": 0.5}, ALL),
    ("SGD", {"clipvalue": 0.01}, ALL),
    ("SGD", {"momentum": 0.9, "decay": 0.5}, (LEG,)),
    ("SGD", {"learning_rate": EXP}, ALL),
    ("SGD", {"learning_rate": PIECEWISE, "momentum": 0.5}, ALL),
    ("SGD", {"learning_rate": INVERSE}, NEW),
    ("SGD", {"learning_rate": POLY, "decay": 0.1}, (LEG,)),
    ("SGD", {"learning_rate": COSINE}, ALL),
    ("Adam", {}, ALL),
    ("Adam", {"learning_rate": 0.01, "amsgrad": True}, ALL),
    ("Adam", {"weight_decay": 0.1, "clipnorm": 0.1}, NEW),
    ("Adam", {"global_clipnorm": 1.0, "beta_2": 0.99}, ALL),
    ("Adam", {"clipvalue": 0.5, "epsilon": 1e-3}, ALL),
    ("Adam", {"decay": 0.3, "epsilon": 0.0}, (LEG,)),
    ("Adam", {"adaptive_epsilon": True, "epsilon": 1e-4}, (TK,)),
    ("Adam", {"learning_rate": POLY}, ALL),
    ("AdamW", {}, NEW),
    ("AdamW", {"weight_decay": 0.3, "amsgrad": True, "learning_rate": 0.01}, NEW),
    ("Adamax", {}, ALL),
    ("Adamax", {"weight_decay": 0.1, "global_clipnorm": 0.1}, NEW),
    ("Adamax", {"decay": 0.2, "clipnorm": 0.5}, (LEG,)),
    ("Nadam", {}, ALL),
    ("Nadam", {"learning_rate": 0.01, "weight_decay": 0.1, "clipvalue": 0.5}, NEW),
    ("Nadam", {"learning_rate": 0.01, "clipnorm": 0.5}, (LEG,)),
    ("RMSprop", {}, ALL),
    ("RMSprop", {"momentum": 0.9}, ALL),
    ("RMSprop", {"centered": True}, ALL),
    ("RMSprop", {"momentum": 0.5, "centered": True, "rho": 0.8}, ALL),
    ("RMSprop", {"weight_decay": 0.1, "clipnorm": 0.5}, NEW),
    ("RMSprop", {"decay": 0.5, "global_clipnorm": 0.5}, (LEG,)),
    ("Adagrad", {}, ALL),
    ("Adagrad", {"learning_rate": 0.1, "initial_accumulator_value": 0.0, "epsilon": 1e-3}, ALL),
    ("Adagrad", {"weight_decay": 0.2}, NEW),
    ("Adagrad", {"decay": 0.5}, (LEG,)),
    ("Adadelta", {"learning_rate": 1.0}, ALL),
    ("Adadelta", {"learning_rate": 1.0, "rho": 0.5, "weight_decay": 0.1}, NEW),
    ("Adadelta", {"learning_rate": 1.0, "decay": 0.5, "clipvalue": 1.0}, (LEG,)),
    ("Ftrl", {"learning_rate": 0.1}, ALL),
    (
        "Ftrl",
        {
            "learning_rate": 0.1,
            "l1_regularization_strength": 0.01,
            "l2_regularization_strength": 0.1,
            "beta": 0.5,
        },
        ALL,
    ),
    (
        "Ftrl",
        {
            "learning_rate": 0.1,
            "l2_shrinkage_regularization_strength": 0.1,
            "learning_rate_power": -0.7,
        },
        ALL,
    ),
    ("Ftrl", {"learning_rate": 0.1, "weight_decay": 0.1}, NEW),
    ("Lion", {}, NEW),
    ("Lion", {"learning_rate": 0.01, "weight_decay": 0.5, "beta_1": 0.5}, NEW),
    ("Lamb", {}, (K3,)),
    ("Lamb", {"learning_rate": 0.01, "weight_decay": 0.1, "clipnorm": 1.0}, (K3,)),
]
PARAMS = [
    pytest.param(i, flavor, id=f"{flavor}-{name}-{'-'.join(map(str, kw)) or 'defaults'}")
    for i, (name, kw, flavors) in enumerate(CASES)
    for flavor in flavors
]


# -- data ------------------------------------------------------------------------------------


def _spread(rng, shape):
    """Magnitudes 1e-6..1e1, random signs: every regime of every update rule."""
    mag = 10.0 ** rng.uniform(-6, 1, size=shape)
    return (mag * rng.choice([-1.0, 1.0], size=shape)).astype("float32")


def _data():
    rng = np.random.default_rng(7)
    weights = {k: _spread(rng, s) for k, s in SHAPES.items()}
    weights[FROZEN] = _spread(rng, (2, 2))
    grads = [{k: _spread(rng, s) for k, s in SHAPES.items()} for _ in range(STEPS)]
    return weights, grads


# -- the Keras side ----------------------------------------------------------------------------


def _keras_schedule(flavor, spec):
    if flavor == K3:
        import keras

        return getattr(keras.optimizers.schedules, spec["class_name"])(**spec["args"])
    import tf_keras

    return getattr(tf_keras.optimizers.schedules, spec["class_name"])(**spec["args"])


def _keras_optimizer(flavor, name, kwargs):
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("learning_rate"), dict):
        kwargs["learning_rate"] = _keras_schedule(flavor, kwargs["learning_rate"])
    if flavor == K3:
        import keras

        instance = getattr(keras.optimizers, name)(**kwargs)
        return instance, keras.optimizers.serialize(instance)
    import tf_keras

    module = tf_keras.optimizers.legacy if flavor == LEG else tf_keras.optimizers
    instance = getattr(module, name)(**kwargs)
    return instance, tf_keras.optimizers.serialize(instance)


def _variables(flavor, weights):
    if flavor == K3:
        import keras

        return {k: keras.Variable(w, name=k.replace("/", "_")) for k, w in weights.items()}
    import tensorflow as tf

    return {k: tf.Variable(w, name=k.replace("/", "_")) for k, w in weights.items()}


def _keras_slots(flavor, instance, variables, engine):
    """Slot values by the names each flavor gives its variables (`file_slot_names`)."""
    out = {}
    if flavor == LEG:
        for k, v in variables.items():
            if k != FROZEN:
                out[k] = {
                    n: instance.get_slot(v, file).numpy()
                    for n, file in engine.file_slot_names.items()
                }
        return out
    if flavor == K3:
        by_name = {v.name: v for v in instance.variables}
        names = {k: lambda n, k=k: f"{k.replace('/', '_')}_{n}" for k in variables}
    else:
        # Under the optimizer's name scope: "Adam/m/dense_kernel:0".
        by_name = {v.name.split("/", 1)[-1]: v for v in instance.variables()}
        names = {k: lambda n, k=k: f"{n}/{k.replace('/', '_')}:0" for k in variables}
    for k in variables:
        out[k] = {n: by_name[names[k](file)].numpy() for n, file in engine.file_slot_names.items()}
    return out


def _u_product(flavor, instance):
    if flavor == LEG:
        return instance._m_cache.numpy()
    return instance._u_product.numpy()


@functools.cache
def _keras_run(index, flavor):
    """Keras' weights, slots and (Nadam) u_product after each of the three steps."""
    name, kwargs, _ = CASES[index]
    weights, grads = _data()
    instance, config = _keras_optimizer(flavor, name, kwargs)
    for key in UNSERIALIZED & set(kwargs):  # Keras does not save it; a caller may know it
        config["config"][key] = kwargs[key]
    engine = opt.get_optimizer(config, flavor)
    variables = _variables(flavor, weights)
    history = []
    for step_grads in grads:
        pairs = [(step_grads.get(k), v) for k, v in variables.items()]
        instance.apply_gradients(pairs)
        record = {
            "weights": {k: v.numpy() for k, v in variables.items()},
            "slots": _keras_slots(flavor, instance, variables, engine),
            "iterations": int(instance.iterations.numpy()),
        }
        if name == "Nadam":
            record["u_product"] = _u_product(flavor, instance)
            if flavor == TK:  # a Python int in tf_keras, not saved in files
                record["u_product_counter"] = instance._u_product_counter
        history.append(record)
    return config, history


def _assert_close(found, expected, what):
    found, expected = np.asarray(found), np.asarray(expected)
    assert found.shape == expected.shape, what
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    err = float(np.max(np.abs(found - expected))) if expected.size else 0.0
    assert err <= RTOL * scale + 1e-30, f"{what}: max abs error {err:.3g}, scale {scale:.3g}"


def _compare(state, weights, record, where):
    for k, w in record["weights"].items():
        _assert_close(weights[k], w, f"{where}: weight {k}")
    for k, slots in record["slots"].items():
        for n, value in slots.items():
            _assert_close(state["slots"][k][n], value, f"{where}: slot {n} of {k}")
    assert state["iterations"] == record["iterations"]
    if "u_product" in record:
        _assert_close(state["u_product"], record["u_product"], f"{where}: u_product")
    if "u_product_counter" in record:
        assert state["u_product_counter"] == record["u_product_counter"]


# -- the comparisons -------------------------------------------------------------------------


@pytest.mark.parametrize("index, flavor", PARAMS)
def test_three_steps_match_keras(index, flavor):
    config, history = _keras_run(index, flavor)
    engine = opt.get_optimizer(config, flavor)
    weights, grads = _data()
    state = engine.init_state(weights)
    for step, step_grads in enumerate(grads):
        weights, state = engine.step(weights, step_grads, state)
        _compare(state, weights, history[step], f"step {step + 1}")
    np.testing.assert_array_equal(weights[FROZEN], _data()[0][FROZEN])


@pytest.mark.parametrize("index, flavor", PARAMS)
def test_continue_from_keras_state(index, flavor):
    """Step 3 from Keras' weights and slots after step 2, as when resuming a saved file."""
    config, history = _keras_run(index, flavor)
    engine = opt.get_optimizer(config, flavor)
    saved = history[1]
    state = engine.init_state(saved["weights"])
    for k, slots in saved["slots"].items():
        state["slots"][k].update(slots)
    state["iterations"] = saved["iterations"]
    for key in ("u_product", "u_product_counter"):
        if key in saved:
            state[key] = saved[key]
    weights, state = engine.step(saved["weights"], _data()[1][2], state)
    _compare(state, weights, history[2], "step 3 from Keras' state")


def test_tf_keras_nadam_reloaded_restarts_u_product():
    """tf_keras saves neither Nadam's u_product nor its counter: a reloaded optimizer
    restarts both at 1 and advances the product once per weight until the counter
    catches up. A state without them reproduces that."""
    import tensorflow as tf
    import tf_keras

    config, history = _keras_run([c[0] for c in CASES].index("Nadam"), TK)
    engine = opt.get_optimizer(config, TK)
    saved, grads = history[1], _data()[1][2]
    keys = [k for k in saved["weights"] if k != FROZEN]
    variables = [tf.Variable(saved["weights"][k]) for k in keys]
    reloaded = tf_keras.optimizers.Nadam.from_config(config["config"])
    reloaded.build(variables)
    # What loading a file does: iterations, then each weight's m and v.
    stored = [
        n for k in keys for n in (saved["slots"][k]["momentum"], saved["slots"][k]["velocity"])
    ]
    reloaded.set_weights([np.int64(saved["iterations"]), *stored])
    reloaded.apply_gradients([(grads[k], v) for k, v in zip(keys, variables)])

    state = {"iterations": saved["iterations"], "slots": {k: saved["slots"][k] for k in keys}}
    new, state = engine.step({k: saved["weights"][k] for k in keys}, grads, state)
    _assert_close(state["u_product"], reloaded._u_product.numpy(), "u_product")
    assert abs(state["u_product"] - history[2]["u_product"]) > 0.1 * history[2]["u_product"]
    for k, v in zip(keys, variables):
        _assert_close(new[k], v.numpy(), f"weight {k}")


def test_tf_keras_nadam_in_tf_function_advances_u_product_per_weight():
    """Under `tf.function` (as in `fit`) tf_keras' counter guard never fires."""
    import tensorflow as tf
    import tf_keras

    weights, grads = _data()
    keys = list(SHAPES)
    instance = tf_keras.optimizers.Nadam(learning_rate=0.01)
    variables = [tf.Variable(weights[k]) for k in keys]

    @tf.function
    def apply(step_grads):
        instance.apply_gradients(zip(step_grads, variables))

    engine = opt.get_optimizer(tf_keras.optimizers.serialize(instance), TK)
    current = {k: weights[k] for k in keys}
    state = {**engine.init_state(current), "u_product_counter": None}
    for step_grads in grads:
        apply([tf.constant(step_grads[k]) for k in keys])
        current, state = engine.step(current, step_grads, state)
        _assert_close(state["u_product"], instance._u_product.numpy(), "u_product")
        for k, v in zip(keys, variables):
            _assert_close(current[k], v.numpy(), f"weight {k}")


def test_constraints_apply_after_the_update():
    import keras
    import tensorflow as tf
    import tf_keras

    weights, grads = _data()
    specs = {
        "dense/kernel": keras.constraints.MaxNorm(max_value=0.5, axis=0),
        "dense/bias": keras.constraints.NonNeg(),
        "conv/kernel": keras.constraints.MinMaxNorm(0.1, 0.5, rate=0.7, axis=[0, 1, 2]),
        "scale": keras.constraints.UnitNorm(axis=None),
    }
    tk_specs = {
        "dense/kernel": tf_keras.constraints.MaxNorm(max_value=0.5, axis=0),
        "dense/bias": tf_keras.constraints.NonNeg(),
        "conv/kernel": tf_keras.constraints.MinMaxNorm(0.1, 0.5, rate=0.7, axis=[0, 1, 2]),
        "scale": tf_keras.constraints.UnitNorm(axis=None),
    }
    for flavor, make, cons, serialize in (
        (K3, keras.optimizers.Adam, specs, keras.constraints.serialize),
        (TK, tf_keras.optimizers.Adam, tk_specs, tf_keras.constraints.serialize),
    ):
        instance = make(learning_rate=0.1)
        if flavor == K3:
            variables = {k: keras.Variable(w) for k, w in weights.items() if k in cons}
            for k, v in variables.items():
                v.constraint = cons[k]
        else:
            variables = {
                k: tf.Variable(w, constraint=cons[k]) for k, w in weights.items() if k in cons
            }
        module = keras if flavor == K3 else tf_keras
        engine = opt.get_optimizer(module.optimizers.serialize(instance), flavor)
        constraints = {k: opt.get_constraint(serialize(c)) for k, c in cons.items()}
        current = {k: weights[k] for k in variables}
        state = engine.init_state(current)
        for step_grads in grads:
            instance.apply_gradients([(step_grads[k], v) for k, v in variables.items()])
            current, state = engine.step(current, step_grads, state, constraints)
            for k, v in variables.items():
                _assert_close(current[k], v.numpy(), f"{flavor} constrained {k}")


def test_h5_style_config_and_plain_names():
    """`.h5` files name tf_keras' new optimizers `Custom>Adam`; strings get Keras' defaults."""
    engine = opt.get_optimizer(
        {
            "class_name": "Custom>Adam",
            "config": {"learning_rate": 0.01, "jit_compile": False, "is_legacy_optimizer": False},
        },
        TK,
    )
    assert engine.name == "Adam" and engine.config["learning_rate"] == 0.01
    assert engine.file_slot_names == {"momentum": "m", "velocity": "v"}
    sgd = opt.get_optimizer("sgd", K3)
    assert sgd.config["learning_rate"] == 0.01 and sgd.slot_names == []
    assert opt.get_optimizer("sgd", TK).slot_names == ["momentum"]
    assert opt.get_optimizer("adam", K3).slot_names == ["momentum", "velocity"]
    assert opt.get_optimizer(
        {"class_name": "Adam", "config": {"amsgrad": True}}, LEG
    ).slot_names == [
        "momentum",
        "velocity",
        "velocity_hat",
    ]
    assert opt.get_optimizer("lion", TK).config["learning_rate"] == 0.0001
    assert opt.get_optimizer("lion", K3).config["learning_rate"] == 0.001
    assert opt.get_optimizer("RMSprop", LEG).file_slot_names == {"velocity": "rms"}
    # Legacy Nadam forces decay to schedule_decay, whatever the file says.
    assert (
        opt.get_optimizer({"class_name": "Nadam", "config": {"decay": 0.5}}, LEG).config["decay"]
        == 0.004
    )
    # Legacy replaces epsilon=0 with 1e-7 and reads the old `lr` key.
    legacy = opt.get_optimizer({"class_name": "Adam", "config": {"lr": 0.1, "epsilon": 0}}, LEG)
    assert legacy.config["epsilon"] == 1e-7 and legacy.config["learning_rate"] == 0.1


def test_init_state():
    weights = {"a": np.ones((2, 3), "float32"), "b": np.ones(4, "float64")}
    state = opt.get_optimizer(
        {"class_name": "Ftrl", "config": {"initial_accumulator_value": 0.3}}, K3
    ).init_state(weights)
    assert state["iterations"] == 0
    assert state["slots"]["a"]["accumulator"].dtype == np.float32
    np.testing.assert_array_equal(state["slots"]["a"]["accumulator"], np.float32(0.3))
    np.testing.assert_array_equal(state["slots"]["b"]["linear"], 0.0)
    assert state["slots"]["b"]["linear"].dtype == np.float64
    assert opt.get_optimizer("nadam", K3).init_state(weights)["u_product"] == 1.0


@pytest.mark.parametrize(
    "config, flavor, message",
    [
        ({"class_name": "Adam", "config": {"use_ema": True}}, K3, "use_ema"),
        (
            {"class_name": "Adam", "config": {"gradient_accumulation_steps": 4}},
            K3,
            "gradient accumulation",
        ),
        ({"class_name": "SGD", "config": {"loss_scale_factor": 128.0}}, K3, "loss scaling"),
        ({"class_name": "LossScaleOptimizer", "config": {}}, K3, "mixed-precision"),
        ({"class_name": "Adafactor", "config": {}}, TK, "not implemented"),
        ({"class_name": "MyOpt", "config": {}}, K3, "supported: Adadelta, Adagrad, Adam"),
        ({"module": "mypkg.opt", "class_name": "Adam", "config": {}}, K3, "custom optimizer"),
        (
            {"class_name": "Adam", "config": {}, "registered_name": "Custom>Mine"},
            K3,
            "custom optimizer",
        ),
        ({"class_name": "Lamb", "config": {}}, TK, "does not exist in tf_keras"),
        ({"class_name": "AdamW", "config": {}}, LEG, "does not exist in tf_keras_legacy"),
        ({"class_name": "Adam", "config": {"weight_decay": 0.1}}, LEG, "found 'weight_decay'"),
        ({"class_name": "Adam", "config": {"decay": 0.1}}, TK, "found 'decay'"),
        ({"class_name": "Adam", "config": {"beta_1": "0.9"}}, K3, "expected a number for 'beta_1'"),
        ({"class_name": "SGD", "config": {"clipnorm": 1.0, "clipvalue": 1.0}}, K3, "at most one"),
        (
            {"class_name": "SGD", "config": {"clipnorm": 1.0, "global_clipnorm": 1.0}},
            TK,
            "found both",
        ),
        ({"class_name": "AdamW", "config": {"weight_decay": None}}, K3, "weight_decay"),
        (
            {
                "class_name": "SGD",
                "config": {"learning_rate": {"class_name": "CosineDecayRestarts", "config": {}}},
            },
            K3,
            "unsupported schedule 'CosineDecayRestarts'",
        ),
        (
            {
                "class_name": "SGD",
                "config": {
                    "learning_rate": {
                        "module": "my.lr",
                        "class_name": "ExponentialDecay",
                        "config": {},
                    }
                },
            },
            K3,
            "custom schedule",
        ),
        (
            {"class_name": "Nadam", "config": {"learning_rate": EXP_CONFIG}},
            LEG,
            "refuses schedules",
        ),
        ({"module": "keras.optimizers.legacy", "class_name": "Adam", "config": {}}, TK, "legacy"),
        ({"class_name": "Adam", "config": {"is_legacy_optimizer": False}}, LEG, "non-legacy"),
        (
            {
                "class_name": "SGD",
                "config": {
                    "learning_rate": {
                        "class_name": "ExponentialDecay",
                        "config": {"decay_steps": 2},
                    }
                },
            },
            K3,
            "expected numbers for initial_learning_rate, decay_rate",
        ),
        ("adam", "keras2", "expected an optimizer flavor"),
        (42, K3, "found the optimizer 42"),
    ],
)
def test_refusals_are_one_line_errors(config, flavor, message):
    with pytest.raises(KerascheckError, match=message) as error:
        opt.get_optimizer(config, flavor)
    assert "\n" not in str(error.value)


def test_step_errors():
    engine = opt.get_optimizer("adam", K3)
    weights = {"a": np.ones(3, "float32")}
    state = engine.init_state(weights)
    with pytest.raises(KerascheckError, match="at least one weight"):
        engine.step(weights, {}, state)
    with pytest.raises(KerascheckError, match="shape"):
        engine.step(weights, {"a": np.ones(4, "float32")}, state)
    with pytest.raises(KerascheckError, match="known weights"):
        engine.step(weights, {"a": np.ones(3, "float32"), "b": np.ones(3, "float32")}, state)
    with pytest.raises(KerascheckError, match="slot 'velocity'"):
        engine.step(
            weights,
            {"a": np.ones(3, "float32")},
            {"iterations": 0, "slots": {"a": {"momentum": np.zeros(3)}}},
        )
    with pytest.raises(KerascheckError, match="built-in Keras constraint"):
        opt.get_constraint({"class_name": "RadialConstraint", "config": {}})
    assert opt.get_constraint(None) is None
    assert isinstance(opt.get_constraint("non_neg"), opt.NonNeg)
