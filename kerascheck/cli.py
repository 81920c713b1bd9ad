"""Command-line interface: thin click commands over the library.

Exit codes: 0 agree (or success), 1 a divergence was found, 2 could not run.
Results go to stdout, errors to stderr as one line, never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys

import click
import numpy as np
from rich.console import Console

from . import __version__
from .compare import DEFAULT_ATOL, DEFAULT_RTOL, Tolerance
from .errors import KerascheckError

EXIT_MATCH, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2


def _console() -> Console:
    return Console(width=max(120, Console().width), highlight=False)


def friendly_errors(command):
    """Turn every failure into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KerascheckError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_ERROR)
        except (KeyboardInterrupt, SystemExit, click.exceptions.Exit):
            raise
        except Exception as exc:  # a bug in kerascheck; still no traceback for the user
            if os.environ.get("KERASCHECK_DEBUG"):
                raise
            message = " ".join(str(exc).split())
            click.echo(
                f"error: internal error ({type(exc).__name__}: {message}); "
                "set KERASCHECK_DEBUG=1 for a traceback",
                err=True,
            )
            sys.exit(EXIT_ERROR)

    return wrapper


def _load(model_path: str):
    from .engine.model import EngineModel
    from .loading import read_model

    return EngineModel(read_model(model_path))


def _inputs(model, input_path, seed, batch):
    from .inputs import random_inputs, read_inputs

    if input_path:
        return read_inputs(input_path, model.spec)
    return random_inputs(model.spec, batch=batch, seed=seed)


def input_options(command):
    command = click.option(
        "--seed",
        default=0,
        show_default=True,
        help="Seed for random inputs when INPUT is not given.",
    )(command)
    command = click.option(
        "--batch",
        default=2,
        show_default=True,
        type=click.IntRange(1),
        help="Batch size of random inputs when INPUT is not given.",
    )(command)
    command = click.option(
        "--batch-size",
        type=click.IntRange(1),
        default=None,
        help="Run in batches of this many samples (bounded memory).",
    )(command)
    return command


ORACLE_OPTION = click.option(
    "--oracle",
    type=click.Choice(["keras", "tf_keras"]),
    default=None,
    help="Keras to compare with; default: tf_keras for files saved by Keras 2, keras otherwise.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kerascheck")
def main():
    """Check what a saved Keras model computes, against an independent NumPy engine."""


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("input_path", metavar="[INPUT]", required=False)
@click.option(
    "--engine",
    type=click.Choice(["numpy", "keras"]),
    default="numpy",
    show_default=True,
    help="Compute with kerascheck's NumPy engine or with Keras itself.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write predictions to OUT.npy (one output) or OUT.npz (one array per output).",
)
@ORACLE_OPTION
@input_options
@friendly_errors
def predict(model_path, input_path, engine, output, oracle, seed, batch, batch_size):
    """Print (and optionally save) the model's predictions for INPUT (.npy/.npz)."""
    from .report.tables import predictions_view

    model = _load(model_path)
    inputs = _inputs(model, input_path, seed, batch)
    if engine == "numpy":
        outputs = model.predict(inputs, batch_size=batch_size)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        label = "numpy engine"
    else:
        from .oracle import choose_flavor, run_keras

        flavor = choose_flavor(model.spec, oracle)
        result = run_keras(
            model_path, model.spec, inputs, flavor, keep=False, batch_size=batch_size
        )
        outputs, label = result.outputs, f"{flavor} {result.version}"
    names = [r.layer for r in model.spec.outputs]
    if output:
        _save_outputs(output, names, outputs)
    _console().print(predictions_view(outputs, names, label))
    if output:
        click.echo(f"saved to {output}")


def _save_outputs(path: str, names: list[str], outputs: list[np.ndarray]) -> None:
    if path.endswith(".npy"):
        if len(outputs) != 1:
            raise KerascheckError(
                f"{path}: the model has {len(outputs)} outputs; expected an .npz path to hold them"
            )
        np.save(path, outputs[0])
    elif path.endswith(".npz"):
        np.savez(path, **{_unique(names, i): out for i, out in enumerate(outputs)})
    else:
        raise KerascheckError(f"{path}: expected an output path ending in .npy or .npz")


def _unique(names: list[str], index: int) -> str:
    name = names[index]
    return name if names.count(name) == 1 else f"{name}_{index}"


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("input_path", metavar="[INPUT]", required=False)
@click.option("--layer-wise", is_flag=True, help="Compare every layer call, not only the outputs.")
@click.option(
    "--atol",
    type=click.FloatRange(0),
    default=DEFAULT_ATOL,
    show_default=True,
    help="Absolute tolerance.",
)
@click.option(
    "--rtol",
    type=click.FloatRange(0),
    default=DEFAULT_RTOL,
    show_default=True,
    help="Tolerance relative to each layer's largest |Keras output|.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a JSON report (schema 1) to this path.",
)
@ORACLE_OPTION
@input_options
@friendly_errors
def diff(
    model_path, input_path, layer_wise, atol, rtol, json_path, oracle, seed, batch, batch_size
):
    """Run Keras and the NumPy engine on the same inputs and compare them.

    Exit code 0 when every compared output agrees within tolerance, 1 when one
    diverges, 2 when the check could not run.
    """
    from .diff import diff_model
    from .report.json_report import diff_report, dumps
    from .report.tables import diff_table

    model = _load(model_path)
    inputs = _inputs(model, input_path, seed, batch)
    result = diff_model(
        model_path,
        model,
        inputs,
        layer_wise=layer_wise,
        tolerance=Tolerance(atol=atol, rtol=rtol),
        oracle=oracle,
        batch_size=batch_size,
    )
    if json_path:
        with open(json_path, "w") as handle:
            handle.write(dumps(diff_report(result)) + "\n")
    _console().print(diff_table(result))
    sys.exit(EXIT_MATCH if result.status == "match" else EXIT_MISMATCH)


@main.command()
@click.argument("model_path", metavar="MODEL")
@friendly_errors
def summary(model_path):
    """The architecture as the engine sees it (no TensorFlow needed)."""
    from .report.tables import summary_table

    _console().print(summary_table(_load(model_path)))
