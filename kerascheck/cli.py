"""Command-line interface: thin click commands over the library.

Exit codes: 0 agree (or success), 1 a divergence was found, 2 could not run.
Results go to stdout, errors to stderr as one line, never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import warnings

import click
import numpy as np
from rich.console import Console

from . import __version__
from .compare import DEFAULT_ATOL, DEFAULT_RTOL
from .errors import KerascheckError

EXIT_MATCH, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2
# Big inputs stream through both runners in chunks: statistics accumulate, and peak
# memory is set by the chunk, not the input (10,000 MNIST-sized samples: ~0.9 GiB
# in chunks of 500, ~5.3 GiB in one piece).
DEFAULT_BATCH_SIZE = 256


def _console() -> Console:
    return Console(width=max(140, Console().width), highlight=False)


def _print_table(render, only_failures: bool, all_rows: bool) -> None:
    """Print `render(width, height, only_failures)`: fitted to a terminal's width and
    height; a file or pipe gets the full layout (140 columns or more) and every row."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = _console()
    height = console.height if console.is_terminal else None
    console.print(render(console.width, height, _rows_choice(only_failures, all_rows)))


def _rows_choice(only_failures: bool, all_rows: bool) -> bool | None:
    if only_failures and all_rows:
        raise KerascheckError("--only-failures and --all-rows contradict; expected one of them")
    return True if only_failures else False if all_rows else None


def rows_options(command):
    """--only-failures/--all-rows: which rows a diff or audit table shows."""
    command = click.option(
        "--all-rows", is_flag=True, help="Show every row, however tall the table."
    )(command)
    return click.option(
        "--only-failures",
        is_flag=True,
        help="Show only the rows that are not 'match' (and the first divergence); the "
        "default in a terminal when something failed and the table is taller than it.",
    )(command)


def friendly_errors(command):
    """Turn every failure into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from .limits import gib, max_memory
        from .report.names import message as one_line

        try:
            # Overflow and invalid-value warnings are part of what a model computes: the
            # comparison reports them, stderr does not.
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                return command(*args, **kwargs)
        except KerascheckError as exc:
            click.echo(f"error: {one_line(exc)}", err=True)
            sys.exit(EXIT_ERROR)
        except (KeyboardInterrupt, SystemExit, click.exceptions.Exit):
            raise
        except MemoryError:
            limit = gib(max_memory())
            click.echo(
                f"error: the run needs more memory than is available (limit {limit}); "
                "expected a model and input that fit (try a smaller --batch-size)",
                err=True,
            )
            sys.exit(EXIT_ERROR)
        except Exception as exc:  # a bug in kerascheck; still no traceback for the user
            if os.environ.get("KERASCHECK_DEBUG"):
                raise
            message = one_line(f"{type(exc).__name__}: {exc}")
            click.echo(
                f"error: internal error ({message}); set KERASCHECK_DEBUG=1 for a traceback",
                err=True,
            )
            sys.exit(EXIT_ERROR)

    return wrapper


def _load(model_path: str, values: bool = True):
    """The engine model; `values=False` reads the weights' shapes only (see read_model)."""
    from .engine.model import EngineModel
    from .loading import read_model

    return EngineModel(read_model(model_path, values=values))


def _inputs(model, input_path, seed, batch, layout=None):
    from .inputs import random_inputs, read_inputs

    if input_path:
        return read_inputs(input_path, model.spec, layout=layout)
    return random_inputs(model.spec, batch=batch, seed=seed)


def input_options(command):
    command = click.option(
        "--input-layout",
        type=click.Choice(["channels_last", "channels_first"]),
        default=None,
        help="The layout INPUT arrays are in: channels_first (N, C, ...) or channels_last "
        "(N, ..., C); they are transposed to the layout the model reads [default: the "
        "model's own].",
    )(command)
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
        default=DEFAULT_BATCH_SIZE,
        show_default=True,
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
@click.option(
    "--verbose",
    is_flag=True,
    help="Show TensorFlow's and Keras' own messages (start-up notices, warnings) on stderr.",
)
@click.option(
    "--max-memory",
    default=None,
    metavar="SIZE",
    help="Refuse files and inputs needing more memory than this (e.g. 4G, 512M) "
    "[default: 8G, or $KERASCHECK_MAX_MEMORY].",
)
def main(verbose, max_memory):
    """Check what a saved Keras model computes, against an independent NumPy engine."""
    from .limits import ENV_MAX_MEMORY, parse_size
    from .oracle import set_verbose  # imports no TensorFlow

    set_verbose(verbose)
    if max_memory is not None:
        try:
            os.environ[ENV_MAX_MEMORY] = str(parse_size(max_memory))
        except KerascheckError as exc:
            raise click.BadParameter(str(exc), param_hint="--max-memory") from None


def entry() -> None:
    """The `kerascheck` command: `main`, then an exit that skips tearing TensorFlow down.

    Once TensorFlow is loaded, the interpreter's own shutdown (its modules, threads
    and graphs) takes about 0.6 s after the report is out. Everything kerascheck
    writes is closed by then, so when no child process is left the output is flushed
    and the process ends at once with the same exit code. (`main` itself still raises
    SystemExit, as Click's test runner expects.)"""
    try:
        main(prog_name="kerascheck")
    except SystemExit as done:
        import multiprocessing

        if "tensorflow" not in sys.modules or multiprocessing.active_children():
            raise
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if not isinstance(done.code, (int, type(None))):
            print(done.code, file=sys.stderr)  # what SystemExit("message") prints
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (`| head`): nothing to deliver
                pass
        os._exit(code)


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
def predict(model_path, input_path, engine, output, oracle, seed, batch, batch_size, input_layout):
    """Print (and optionally save) the model's predictions for INPUT (.npy/.npz)."""
    from .report.tables import predictions_view

    model = _load(model_path)
    inputs = _inputs(model, input_path, seed, batch, input_layout)
    if engine == "numpy":
        from .engine.layers.recurrent import check_stateful_run

        check_stateful_run(model.spec, int(np.shape(inputs[0])[0]), batch_size)
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


def tolerance_options(command):
    """--atol/--rtol/--layer-tol/--config: the tolerance policy (see kerascheck/settings.py)."""
    options = [
        click.option(
            "--atol",
            type=click.FloatRange(0),
            default=None,
            help=f"Absolute tolerance [default: {DEFAULT_ATOL:g}].",
        ),
        click.option(
            "--rtol",
            type=click.FloatRange(0),
            default=None,
            help="Tolerance relative to each layer's largest |Keras output| "
            f"[default: {DEFAULT_RTOL:g}].",
        ),
        click.option(
            "--layer-tol",
            multiple=True,
            metavar="PATTERN:rtol=R[,atol=A]",
            help="Per-layer tolerance; PATTERN globs a layer name or class. Repeatable.",
        ),
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="TOML settings file (default: ./kerascheck.toml or "
            "[tool.kerascheck] in ./pyproject.toml).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def report_options(command):
    options = [
        click.option(
            "--json",
            "json_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="Write a JSON report (schema 1) to this path.",
        ),
        click.option(
            "--junit",
            "junit_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="Write JUnit XML (one testcase per layer call) to this path.",
        ),
        click.option(
            "--markdown",
            "markdown_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="Write a Markdown summary (for a CI job page).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _write(path: str | None, text: str) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("input_path", metavar="[INPUT]", required=False)
@click.option("--layer-wise", is_flag=True, help="Compare every layer call, not only the outputs.")
@tolerance_options
@report_options
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float64"]),
    default="float32",
    show_default=True,
    help="float64: also run the engine in float64 as ground truth for both sides.",
)
@click.option(
    "--save-outputs",
    type=click.Path(dir_okay=False),
    default=None,
    help="Save every call's output from both sides to an .npz (keys keras/<layer>, numpy/<layer>).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Save a chart of own and carried error per layer (needs matplotlib).",
)
@click.option(
    "--against",
    "against_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Check YOUR per-layer outputs (.npz keyed by layer name) instead of the engine.",
)
@click.option(
    "--against-layout",
    type=click.Choice(["channels_last", "channels_first"]),
    default=None,
    help="The layout the --against arrays are in; each is transposed to its layer's "
    "output layout [default: the model's own].",
)
@click.option(
    "--reference",
    type=click.Choice(["keras", "numpy"]),
    default="keras",
    show_default=True,
    help="What --against arrays are compared with.",
)
@click.option(
    "--input",
    "input_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="INPUT as an option; the inputs of `diff A B` (two model files).",
)
@ORACLE_OPTION
@input_options
@rows_options
@friendly_errors
def diff(
    model_path,
    input_path,
    layer_wise,
    atol,
    rtol,
    layer_tol,
    config_path,
    json_path,
    junit_path,
    markdown_path,
    dtype,
    save_outputs,
    plot_path,
    against_path,
    against_layout,
    reference,
    input_file,
    oracle,
    seed,
    batch,
    batch_size,
    input_layout,
    only_failures,
    all_rows,
):
    """Run Keras and the NumPy engine on the same inputs and compare them.

    With a model file in place of INPUT (`diff A.keras B.h5`), compare two files of
    one architecture instead: both run in the engine on the same inputs (--input, or
    seeded random ones), layer by layer with calls matched by name, plus every shared
    weight and the layers only in one file.

    Exit code 0 when every compared output agrees within tolerance, 1 when one
    diverges, 2 when the check could not run.
    """
    from .settings import tolerance_policy

    _rows_choice(only_failures, all_rows)
    policy = tolerance_policy(atol, rtol, layer_tol, config_path)
    from .diff_models import is_model_file

    if input_path and is_model_file(input_path):
        unused = {"--against": against_path, "--save-outputs": save_outputs, "--plot": plot_path}
        unused["--dtype"] = dtype != "float32"
        given = [flag for flag, value in unused.items() if value]
        if given:
            raise KerascheckError(
                f"diff A B compares two model files in the engine; expected none of "
                f"{', '.join(given)} with it"
            )
        _diff_models(
            model_path, input_path, input_file, policy, (seed, batch, batch_size, input_layout),
            (json_path, junit_path, markdown_path), (only_failures, all_rows),
        )  # fmt: skip
    if input_path and input_file:
        raise KerascheckError(f"expected INPUT or --input, found both ({input_path}, {input_file})")
    input_path = input_path or input_file
    from .progress import Phases

    phases = Phases()
    with phases.timed("read", "reading the model and its input"):
        model = _load(model_path)
        inputs = _inputs(model, input_path, seed, batch, input_layout)
    if against_path:
        result = _against(
            model_path, model, inputs, against_path, against_layout, reference, oracle, policy,
            phases,
        )  # fmt: skip
    else:
        from .diff import diff_model

        result = diff_model(
            model_path,
            model,
            inputs,
            layer_wise=layer_wise,
            tolerance=policy,
            oracle=oracle,
            batch_size=batch_size,
            float64=dtype == "float64",
            progress=phases.batches(),
            collect=save_outputs is not None,
            phases=phases,
        )
    result.timings, result.wall_seconds = phases.seconds, phases.wall()
    _write_reports(result, json_path, junit_path, markdown_path, save_outputs, plot_path)
    from .report.tables import diff_table

    result.input_path = input_path
    _print_table(functools.partial(diff_table, result), only_failures, all_rows)
    sys.exit(EXIT_MATCH if result.status == "match" else EXIT_MISMATCH)


def _diff_models(path_a, path_b, input_path, policy, input_settings, reports, rows):
    """`diff A B`: two model files, both in the engine; exits."""
    from .diff_models import diff_models, load_pair, models_report, models_view
    from .report.json_report import dumps
    from .report.junit import junit_xml
    from .report.markdown import diff_markdown

    seed, batch, batch_size, layout = input_settings
    a, b = load_pair(path_a, path_b)
    inputs = _inputs(a, input_path, seed, batch, layout)
    found = diff_models(path_a, a, path_b, b, inputs, policy, batch_size)
    json_path, junit_path, markdown_path = reports
    _write(json_path, dumps(models_report(found)) + "\n")
    _write(junit_path, junit_xml([found.result]))
    _write(markdown_path, diff_markdown(found.result))
    _print_table(functools.partial(models_view, found), *rows)
    sys.exit(EXIT_MATCH if found.status == "match" else EXIT_MISMATCH)


def _write_reports(result, json_path, junit_path, markdown_path, save_outputs, plot_path):
    from .report.json_report import diff_report, dumps
    from .report.junit import junit_xml
    from .report.markdown import diff_markdown

    _write(json_path, dumps(diff_report(result)) + "\n")
    _write(junit_path, junit_xml([result]))
    _write(markdown_path, diff_markdown(result))
    if save_outputs:
        if not save_outputs.endswith(".npz"):
            raise KerascheckError(f"{save_outputs}: expected an .npz path for --save-outputs")
        np.savez(save_outputs, **(result.outputs or {}))
    if plot_path:
        from .report.plot import error_plot

        error_plot(result, plot_path)


def _against(model_path, model, inputs, against_path, layout, reference, oracle, policy, phases):
    """`diff --against`: the user's arrays vs Keras (or the engine), with hints."""
    from .against import compare_against, engine_alternatives
    from .diff import DiffResult

    with phases.timed("read", "reading your arrays"):
        mine = _read_arrays(against_path)
    start = time.perf_counter()
    with phases.timed("engine", "running the engine (for the hints)"):
        ours, engine_calls = model.graph.run(inputs, keep=True)
    engine_seconds = time.perf_counter() - start
    masks = model.graph.masks
    keras_seconds = 0.0
    if reference == "numpy":
        per_call, name, version, why = engine_calls, "numpy", "engine", "--reference numpy"
    else:
        from .oracle import KerasRunner, choose_oracle

        flavor, why = choose_oracle(model.spec, oracle)
        with phases.showing(f"starting TensorFlow and loading the model in {flavor}"):
            runner = KerasRunner(model_path, model.spec, flavor)
        phases.add("TensorFlow start-up", runner.import_seconds)
        phases.add("Keras load", runner.load_seconds)
        with phases.timed("Keras", f"running the model in {flavor}"):
            per_call = runner.run_batch(inputs, keep=True)[1]
        name, version, keras_seconds = flavor, runner.version, runner.seconds
    values = {(i.name, 0): a for i, a in zip(model.spec.inputs, inputs)}
    for call in model.spec.calls:
        values[(call.layer, call.index)] = per_call[call.name]
    with phases.timed("compare", "comparing your arrays"):
        comparison = compare_against(
            mine,
            per_call,
            model.spec,
            policy,
            layout,
            engine_alternatives(model.graph, values, masks),
        )
    return DiffResult(
        model_path=model_path,
        keras_version=model.spec.keras_version,
        oracle=name,
        oracle_reason=why,
        oracle_version=version,
        comparison=comparison,
        layer_wise=True,
        engine_seconds=engine_seconds,
        keras_seconds=keras_seconds,
        graph_check=0.0,
        batch=int(inputs[0].shape[0]),
        subject=f"your arrays ({against_path})",
    )


def _read_arrays(path: str) -> dict:
    if not os.path.exists(path):
        raise KerascheckError(f"{path}: no such file; expected an .npz of arrays keyed by layer")
    try:
        with np.load(path, allow_pickle=False) as data:
            if isinstance(data, np.ndarray):
                raise KerascheckError(f"{path}: expected an .npz keyed by layer name, found .npy")
            return {key: data[key] for key in data.files}
    except (ValueError, OSError) as exc:
        raise KerascheckError(f"{path}: expected an .npz of numeric arrays ({exc})")


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("input_path", metavar="INPUT")
@click.argument("target_path", metavar="TARGET")
@click.option(
    "--loss", default=None, help="Loss name; default: the loss the file was compiled with."
)
@click.option("--from-logits", is_flag=True, help="The loss takes the model output as logits.")
@click.option(
    "--sample-weight",
    "sample_weight_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="A .npy of one weight per sample.",
)
@click.option(
    "--mode",
    type=click.Choice(["train", "inference"]),
    default="train",
    show_default=True,
    help="train: what fit computes (batch statistics, Keras' own dropout masks).",
)
@click.option(
    "--rtol",
    type=click.FloatRange(0),
    default=None,
    help="Tolerance relative to each gradient tensor's norm [default: 1e-3].",
)
@click.option(
    "--atol",
    type=click.FloatRange(0),
    default=None,
    help="Absolute floor per element (RMS) [default: 1e-9].",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float64"]),
    default="float32",
    show_default=True,
    help="float64: also run each call's backward in float64 on Keras' values as ground truth.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=None,
    help="Check the gradients of each batch of N samples (each tensor's worst batch is "
    "shown); default: INPUT as one batch, as one fit step would take it.",
)
@click.option(
    "--layer-tol",
    multiple=True,
    metavar="PATTERN:rtol=R[,atol=A]",
    help="Per-call gradient tolerance; PATTERN globs a call name or class. Repeatable.",
)
@click.option(
    "--save-grads",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write Keras' and the engine's loss and gradients to this .npz.",
)
@click.option(
    "--against",
    "against_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Check your own gradients (.npz: loss, d/<call>, grad/<layer>/<weight>).",
)
@click.option(
    "--against-layout",
    type=click.Choice(["channels_last", "channels_first", "torch"]),
    default="channels_last",
    show_default=True,
    help="channels_first: activation gradients as (N, C, H, W); torch: also kernels as "
    "(out, in, kh, kw) and Dense kernels as (out, in).",
)
@click.option(
    "--reference",
    type=click.Choice(["keras", "numpy"]),
    default="keras",
    show_default=True,
    help="What --against arrays are judged against; numpy runs without TensorFlow.",
)
@rows_options
@report_options
@ORACLE_OPTION
@click.option(
    "--input-layout",
    type=click.Choice(["channels_last", "channels_first"]),
    default=None,
    help="The layout INPUT arrays are in: channels_first (N, C, ...) or channels_last "
    "[default: the model's own].",
)
@friendly_errors
def grad(
    model_path,
    input_path,
    target_path,
    loss,
    from_logits,
    sample_weight_path,
    mode,
    rtol,
    atol,
    dtype,
    batch_size,
    layer_tol,
    save_grads,
    against_path,
    against_layout,
    reference,
    json_path,
    junit_path,
    markdown_path,
    only_failures,
    all_rows,
    oracle,
    input_layout,
):
    """Check the engine's backward pass against Keras' gradients, layer by layer.

    Rows run in backward order, from the loss to the inputs. Exit code 0 when
    every gradient agrees, 1 when one diverges, 2 when the check could not run.
    """
    from .grad import grad_model
    from .inputs import read_inputs
    from .progress import Phases
    from .report import grad_report
    from .targets import read_sample_weight, read_targets

    _rows_choice(only_failures, all_rows)  # contradicting flags fail before the work
    phases = Phases()
    with phases.showing("reading the model, its input and target"):
        model = _load(model_path)
        inputs = read_inputs(input_path, model.spec, layout=input_layout)
        inputs = [np.asarray(a) for a in inputs]
        targets = read_targets(target_path, model.spec)
        sample_weight = (
            read_sample_weight(sample_weight_path, int(inputs[0].shape[0]))
            if sample_weight_path
            else None
        )
    if save_grads and not save_grads.endswith(".npz"):
        raise KerascheckError(f"{save_grads}: expected an .npz path for --save-grads")
    loss_option = _loss_option(model, loss, from_logits)
    tolerance = _grad_policy(rtol, atol, layer_tol)
    total = int(inputs[0].shape[0])
    step = batch_size or total
    from .engine.layers.recurrent import check_stateful_run

    check_stateful_run(model.spec, total, step)
    if (save_grads or against_path) and step < total:
        raise KerascheckError(
            "--save-grads and --against work on one batch: use them without --batch-size"
        )
    against = _read_arrays(against_path) if against_path else None
    results = []
    starts = range(0, total, step)
    progress = phases.batches()
    for number, start in enumerate(starts):
        chunk = slice(start, start + step)
        label = "gradients in the engine and in Keras" + (
            " (TensorFlow starts first)" if not number else ""
        )
        with phases.showing(label):
            results.append(
                grad_model(
                    model_path,
                    model,
                    [a[chunk] for a in inputs],
                    [t[chunk] for t in targets],
                    loss_option=loss_option,
                    sample_weight=None if sample_weight is None else sample_weight[chunk],
                    mode=mode,
                    oracle=oracle,
                    tolerance=tolerance,
                    save=save_grads is not None,
                    against=against,
                    against_layout=against_layout,
                    reference=reference,
                    float64=dtype == "float64",
                )
            )
        progress(number + 1, len(starts))
    from .grad import merge_results

    result = merge_results(results)
    from .report.json_report import dumps

    _write(json_path, dumps(grad_report.grad_json(result)) + "\n")
    _write(junit_path, grad_report.grad_junit(result))
    _write(markdown_path, grad_report.grad_markdown(result))
    if save_grads:
        np.savez(save_grads, **result.saved)
    _print_table(
        lambda width, height, only: grad_report.grad_table(result, only, height),
        only_failures,
        all_rows,
    )
    sys.exit(EXIT_MATCH if result.status == "match" else EXIT_MISMATCH)


def _grad_policy(rtol, atol, layer_tols):
    from .compare import Tolerance
    from .grad import DEFAULT_GRAD_ATOL, DEFAULT_GRAD_RTOL, GradPolicy, GradTolerance
    from .settings import parse_layer_tolerance

    default = GradTolerance(
        rtol=DEFAULT_GRAD_RTOL if rtol is None else rtol,
        atol=DEFAULT_GRAD_ATOL if atol is None else atol,
    )
    overrides = []
    for text in layer_tols:
        pattern, parsed = parse_layer_tolerance(text, Tolerance(default.atol, default.rtol))
        overrides.append((pattern, GradTolerance(rtol=parsed.rtol, atol=parsed.atol)))
    return GradPolicy(default, tuple(overrides))


def _loss_option(model, loss, from_logits):
    """`--loss`, with `--from-logits` turned into the loss's config."""
    if not from_logits:
        return loss
    from .grad import resolve_loss

    chosen = resolve_loss(model, loss)[0]
    return {"class_name": chosen.name, "config": {"from_logits": True}}


@main.command()
@click.option("--family", default=None, help="Only this family (e.g. conv, recurrent).")
def layers(family):
    """List the Keras classes the engine supports, by family."""
    from .engine.registry import supported_by_family

    families = supported_by_family()
    if family is not None and family not in families:
        click.echo(
            f"error: expected a family among {', '.join(families)}, found {family!r}", err=True
        )
        sys.exit(EXIT_ERROR)
    for name, classes in families.items():
        if family in (None, name):
            click.echo(f"{name} ({len(classes)}): {', '.join(classes)}")


@main.command("train-step")
@click.argument("model_path", metavar="MODEL")
@click.argument("input_path", metavar="INPUT")
@click.argument("target_path", metavar="TARGET")
@click.option("--steps", type=click.IntRange(1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Default: INPUT whole.")
@click.option("--loss", default=None, help="Loss name; default: the file's.")
@click.option("--sample-weight", "sample_weight_path", type=click.Path(dir_okay=False))
@click.option("--optimizer", "optimizer_name", default=None, help="Default: the file's.")
@click.option("--lr", type=float, default=None, help="Learning rate.")
@click.option("--momentum", type=float, default=None)
@click.option("--nesterov", is_flag=True, default=None)
@click.option("--beta-1", type=float, default=None)
@click.option("--beta-2", type=float, default=None)
@click.option("--epsilon", type=float, default=None)
@click.option("--weight-decay", type=float, default=None)
@click.option("--clipnorm", type=float, default=None)
@click.option("--global-clipnorm", type=float, default=None)
@click.option("--clipvalue", type=float, default=None)
@click.option("--fresh-optimizer", is_flag=True, help="Start from zero optimizer state.")
@click.option("--rtol", type=click.FloatRange(0), default=None, help="[default: 1e-3]")
@click.option("--save-weights", type=click.Path(dir_okay=False), help="Both sides' weights after.")
@click.option(
    "--against",
    "against_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Check your own weights after one step (.npz keys new/<layer>/<weight>; "
    "optional loss, grad/..., d/... as in grad).",
)
@click.option(
    "--reference",
    type=click.Choice(["keras", "numpy"]),
    default="keras",
    show_default=True,
    help="What --against weights are judged against; numpy runs without TensorFlow.",
)
@report_options
@ORACLE_OPTION
@friendly_errors
def train_step(
    model_path,
    input_path,
    target_path,
    steps,
    batch_size,
    loss,
    sample_weight_path,
    optimizer_name,
    lr,
    momentum,
    nesterov,
    beta_1,
    beta_2,
    epsilon,
    weight_decay,
    clipnorm,
    global_clipnorm,
    clipvalue,
    fresh_optimizer,
    rtol,
    save_weights,
    against_path,
    reference,
    json_path,
    junit_path,
    markdown_path,
    oracle,
):
    """Check N training steps (forward, backward, optimizer) against Keras, weight by weight.

    Exit code 0 when every update agrees, 1 when one diverges, 2 when the check could
    not run.
    """
    from .grad import DEFAULT_GRAD_RTOL, GradTolerance
    from .inputs import read_inputs
    from .report.json_report import dumps
    from .report.train_step_report import (
        train_step_json,
        train_step_junit,
        train_step_markdown,
        train_step_table,
    )
    from .targets import read_sample_weight, read_targets
    from .train_step import train_step_model

    model = _load(model_path)
    inputs = [np.asarray(a) for a in read_inputs(input_path, model.spec)]
    targets = read_targets(target_path, model.spec)
    weights = (
        read_sample_weight(sample_weight_path, int(inputs[0].shape[0]))
        if sample_weight_path
        else None
    )
    flags = {
        "learning_rate": lr,
        "momentum": momentum,
        "nesterov": nesterov,
        "beta_1": beta_1,
        "beta_2": beta_2,
        "epsilon": epsilon,
        "weight_decay": weight_decay,
        "clipnorm": clipnorm,
        "global_clipnorm": global_clipnorm,
        "clipvalue": clipvalue,
    }
    if save_weights and not save_weights.endswith(".npz"):
        raise KerascheckError(f"{save_weights}: expected an .npz path for --save-weights")
    from .progress import Phases

    with Phases().showing(
        f"{steps} training step(s) in the engine and in Keras (TensorFlow starts first)"
    ):
        result = train_step_model(
            model_path,
            model,
            inputs,
            targets,
            loss_option=loss,
            sample_weight=weights,
            optimizer_name=optimizer_name,
            overrides={k: v for k, v in flags.items() if v is not None},
            fresh=fresh_optimizer,
            steps=steps,
            batch_size=batch_size,
            oracle=oracle,
            tolerance=GradTolerance(rtol=DEFAULT_GRAD_RTOL if rtol is None else rtol),
            save=save_weights is not None,
            against=_read_arrays(against_path) if against_path else None,
            reference=reference,
        )
    _write(json_path, dumps(train_step_json(result)) + "\n")
    _write(junit_path, train_step_junit(result))
    _write(markdown_path, train_step_markdown(result))
    if save_weights:
        np.savez(save_weights, **result.saved)
    _console().print(train_step_table(result))
    sys.exit(EXIT_MATCH if result.status == "match" else EXIT_MISMATCH)


@main.command()
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@tolerance_options
@report_options
@ORACLE_OPTION
@click.option("--seed", default=0, show_default=True, help="Seed for random inputs.")
@click.option(
    "--batch",
    default=2,
    show_default=True,
    type=click.IntRange(1),
    help="Batch size of random inputs for models without an input file.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Run in batches of this many samples (bounded memory).",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1),
    default=None,
    help="Check models in this many worker processes [default: the number of cores].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Give up on a model after this long (reported; the others go on).",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Run the checks on this Dask distributed scheduler (tcp://host:8786) instead of "
    "local processes; needs pip install 'kerascheck[distributed]'.",
)
@rows_options
@friendly_errors
def audit(
    paths,
    atol,
    rtol,
    layer_tol,
    config_path,
    json_path,
    junit_path,
    markdown_path,
    oracle,
    seed,
    batch,
    batch_size,
    jobs,
    timeout,
    scheduler,
    only_failures,
    all_rows,
):
    """Check many models (files or directories) layer by layer in one run.

    Each model uses MODEL.input.npy/.npz beside it, or seeded random inputs.
    Models are checked in parallel worker processes (--jobs) or on a Dask cluster
    (--scheduler); the report keeps the order of the paths.
    Exit 0 when all match, 1 when any diverges, 2 when any could not be checked
    (the others are still checked).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from . import oracle as oracle_module
    from .audit import AuditSettings, find_models
    from .audit import audit as run_audit
    from .audit_pool import default_jobs
    from .report.json_report import audit_report, dumps
    from .report.junit import junit_xml
    from .report.markdown import audit_markdown
    from .report.tables import audit_table
    from .settings import tolerance_policy

    _rows_choice(only_failures, all_rows)
    policy = tolerance_policy(atol, rtol, layer_tol, config_path)
    total = len(find_models(list(paths)))
    settings = AuditSettings(policy, seed, batch, oracle, batch_size, oracle_module.VERBOSE)
    jobs = min(jobs or default_jobs(), max(total, 1))
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    running: list[str] = []

    def started(path):
        running.append(path)
        progress.update(task, description=_running_label(running))

    def finished(path):
        running.remove(path)
        progress.update(task, advance=1, description=_running_label(running))

    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as progress:
        task = progress.add_task("starting", total=total)
        outcome = run_audit(
            list(paths),
            settings,
            jobs=jobs,
            timeout=timeout,
            scheduler=scheduler,
            on_start=started,
            on_model=finished,
        )
    _write(json_path, dumps(audit_report(outcome)) + "\n")
    _write(junit_path, junit_xml(outcome.results, outcome.errors))
    _write(markdown_path, audit_markdown(outcome))
    _print_table(functools.partial(audit_table, outcome), only_failures, all_rows)
    sys.exit(outcome.exit_code)


def _running_label(running: list[str]) -> str:
    from .report.names import display

    if not running:
        return "models"
    shown = display(os.path.basename(running[-1]))
    return shown if len(running) == 1 else f"{shown} (+{len(running) - 1} more)"


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("input_path", metavar="[INPUT]", required=False)
@click.option("--layer", required=True, help="The layer (or call, `name#1`) to explain.")
@click.option(
    "--index",
    required=True,
    metavar="N,I,J,...",
    help="The output element, batch index first, e.g. 0,3,1,7; with --grad, "
    "WEIGHT:i,j,... (kernel:1,2,0,1) or i,j,... for the layer's input.",
)
@click.option(
    "--grad",
    "grad_target",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="TARGET",
    help="Explain one gradient element instead, for this TARGET (.npy/.npz).",
)
@click.option("--loss", default=None, help="With --grad: the loss (default: the file's).")
@input_options
@friendly_errors
def explain(
    model_path,
    input_path,
    layer,
    index,
    grad_target,
    loss,
    seed,
    batch,
    batch_size,
    input_layout,
):
    """Spell out the arithmetic of one output element (Conv, Dense, Flatten), or with
    --grad of one gradient element (Conv kernel tap or input cell, Dense, MaxPooling).

    Shows the input cells a convolution reads (zero padding included), each kernel
    tap's contribution, the bias and the activation, or where a Flatten output
    comes from; no TensorFlow needed. The forward runs in batches of --batch-size;
    a gradient is taken over all the samples at once (as `grad` does by default).
    """
    from rich.text import Text

    from .explain import explain as explain_element

    model = _load(model_path)
    inputs = _inputs(model, input_path, seed, batch, input_layout)
    if grad_target:
        from .explain_grad import explain_grad
        from .targets import read_targets

        targets = read_targets(grad_target, model.spec)
        inputs = [np.asarray(a, np.float32) for a in inputs]
        result = explain_grad(model, inputs, targets, layer, index, loss)
    else:
        try:
            coordinates = tuple(int(part) for part in index.split(","))
        except ValueError:
            raise KerascheckError(f"--index expects integers like 0,3,1,7, found '{index}'")
        result = explain_element(model, inputs, layer, coordinates, batch_size)
    console = _console()
    from .report.names import display, safe_text

    heading = f"{display(result.layer)}{list(result.index)} = {result.value:.7g}"
    console.print(Text(heading, style="bold"))
    for line in result.lines:
        console.print(Text(safe_text(line)))
    console.print(
        f"engine value {result.value:.7g}; rebuilt from the terms above {result.recomputed:.7g}"
    )


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.option(
    "--explain",
    "explain_shapes",
    is_flag=True,
    help="Walk the shape arithmetic layer by layer (why 7·7·4 = 196 reaches Dense).",
)
@friendly_errors
def summary(model_path, explain_shapes):
    """The architecture as the engine sees it: output shapes, each layer's window
    (kernel or pool size, strides, padding, dilation), weight shapes and parameter
    arithmetic. Reads the weights' shapes only, never their values (no TensorFlow)."""
    from .report.summary import shape_walk_view, summary_table, view_width

    model = _load(model_path, values=False)
    console = Console(highlight=False)
    if console.is_terminal:
        view = summary_table(model, console.width)
    else:  # files and pipes get every column, as wide as the names need
        view = summary_table(model)
        console = Console(width=max(_console().width, view_width(view)), highlight=False)
    console.print(view)
    if explain_shapes:
        console.print(shape_walk_view(model))
