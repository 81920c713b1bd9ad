"""The README is the contract: every example in it is checked here, so a stale one fails.

- The `make demo` output block against a real run of the Makefile's `demo` commands,
  line by line, with what legitimately varies masked (floats and timings, Keras
  versions, column widths and where a long line wraps).
- Each `error: ...` line against what the command line prints for a model built here
  to cause it.
- Every `kerascheck ...` command line (console blocks, the question table, the usage
  block, the CI snippet) parsed by click; the ones on shipped sample models are run.
- The JSON example's keys against a real report of the same model (both ways), the
  TOML example through the settings loader, the Python API example on a sample model,
  the CI snippet as YAML, and the options table against the commands' real options.

After a deliberate change of the demo's output, regenerate its README block with
`KERASCHECK_UPDATE_README=1 .venv/bin/python -m pytest tests/test_readme.py`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import keras_module

import kerascheck
from kerascheck.cli import main
from kerascheck.settings import tolerance_policy

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
SAMPLE = "sample_models/seed000_regressor"
# The README's demo block is the file/pipe layout at the narrowest width it gets.
ENV = {"COLUMNS": "140", "LINES": "50", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}
UPDATE = bool(os.environ.get("KERASCHECK_UPDATE_README"))

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def fences(lang: str) -> list[re.Match]:
    return [m for m in FENCE.finditer(TEXT) if m.group(1) == lang]


def fence_after(marker: str, lang: str) -> re.Match:
    """The first `lang` code block after `marker` in the README."""
    start = TEXT.index(marker)
    return next(m for m in fences(lang) if m.start() > start)


def section(heading: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = TEXT.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    body, in_code = [], False
    for line in lines[start + 1 :]:
        in_code ^= line.startswith("```")
        hashes = len(line) - len(line.lstrip("#"))
        if not in_code and 0 < hashes <= level and line[hashes : hashes + 1] == " ":
            break
        body.append(line)
    return "\n".join(body)


def parse_command(args: list[str]) -> tuple[click.Command, click.Context]:
    """Parse a `kerascheck ...` command line as the real CLI would, without running it."""
    ctx = main.make_context("kerascheck", list(args))
    protected = getattr(ctx, "_protected_args", None)  # click 8.2+; 8.1: protected_args
    rest = [*(ctx.protected_args if protected is None else protected), *ctx.args]
    name, command, sub_args = main.resolve_command(ctx, rest)
    return command, command.make_context(name, sub_args, parent=ctx)


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, env=ENV)


# --- the demo block -------------------------------------------------------------------

BOX = "┏┓┗┛┡┩└┘┃│┳┻╇╈┼┬┴━─═╋├┤"
RULE = re.compile(r"[━─═]+")
VERSION = re.compile(r"\b\d+\.\d+\.\d+\b")
FLOAT = re.compile(r"-?\b(?:\d+\.\d+(?:e[+-]?\d+)?|\d+e[+-]?\d+)s?\b")
NUMBER_CELL = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def masked(text: str) -> list[str]:
    """Lines to compare: numbers that vary run to run become `<n>`, versions `<v>`,
    table rules and cell padding collapse, and wrapped prose is joined (where a long
    line wraps depends on the length of its timings)."""
    out: list[str] = []
    prose: list[str] = []

    def flush():
        if prose:
            out.append(" ".join(" ".join(prose).split()))
            prose.clear()

    for line in text.splitlines():
        line = VERSION.sub("<v>", line.rstrip())
        if line[:1] in ("┃", "│"):
            flush()
            cells = [cell.strip() for cell in re.split("[┃│]", line)[1:-1]]
            cells = ["<n>" if NUMBER_CELL.fullmatch(c) else FLOAT.sub("<n>", c) for c in cells]
            out.append("│" + "│".join(cells) + "│")
        elif line[:1] and line[0] in BOX:
            flush()
            out.append(RULE.sub("─", line))
        elif line:
            prose.append(FLOAT.sub("<n>", line))
    flush()
    return out


def demo_commands() -> list[list[str]]:
    """The Makefile's `demo` recipe, as kerascheck argument lists."""
    lines = (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("demo:"))
    commands = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        words = shlex.split(line.strip())
        assert words[0] == "$(BIN)/kerascheck", line
        commands.append(words[1:])
    return commands


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run of each demo command, in the repository (paths print as in the README);
    the `diff` run also writes the JSON report the JSON example is checked against."""
    report = tmp_path_factory.mktemp("readme") / "report.json"
    runs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        for args in demo_commands():
            extra = ["--json", str(report)] if args[0] == "diff" else []
            runs.append((args, invoke(args + extra)))
    return runs, json.loads(report.read_text())


def test_the_demo_block_is_todays_output(demo):
    runs, _ = demo
    for args, result in runs:
        assert result.exit_code == 0, (args, result.stderr)
        assert "error:" not in result.stderr, result.stderr
    real = "\n".join(line.rstrip() for _, r in runs for line in r.stdout.rstrip().splitlines())
    block = fence_after("`make demo` runs", "text")
    if UPDATE and masked(block.group(2)) != masked(real):
        new = TEXT[: block.start(2)] + real + "\n" + TEXT[block.end(2) :]
        README.write_text(new, encoding="utf-8")
        pytest.skip("README demo block rewritten from today's output")
    want, got = masked(block.group(2)), masked(real)
    assert got == want, (
        "README's `make demo` block is stale (KERASCHECK_UPDATE_README=1 rewrites it):\n"
        + "\n".join(difflib.unified_diff(want, got, "README", "real", lineterm=""))
    )


def test_the_demo_prose_names_the_makefile_commands():
    sentence = TEXT[TEXT.index("`make demo` runs") :].split("Real output")[0]
    for args in demo_commands():
        assert f"`kerascheck {args[0]}" in sentence, args
    assert f"`{SAMPLE}.keras`" in sentence


# --- error lines ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def error_lines(tmp_path_factory):
    """What the command line prints for each error the README shows, in its order."""
    keras = keras_module("keras")
    root = tmp_path_factory.mktemp("errors")
    dense = keras.Sequential([keras.Input(shape=(6,), name="input_layer"), keras.layers.Dense(3)])
    dense.save(root / "dense.keras")
    np.save(root / "x.npy", np.zeros((2, 7), "float32"))
    inp = keras.Input(shape=(6,))
    keras.Model(inp, keras.layers.Lambda(lambda t: t * 2, name="double")(inp)).save(
        root / "model.keras"
    )
    inp = keras.Input(shape=(6,))
    wrapped = keras.layers.SpectralNormalization(keras.layers.Dense(3), name="wrapped")
    keras.Model(inp, wrapped(inp)).save(root / "wrapped.keras")
    cases = [
        ["predict", "dense.keras", "x.npy"],  # a wrong input shape
        ["predict", "model.keras"],  # a Lambda layer
        ["predict", "wrapped.keras"],  # an unsupported class
    ]
    lines = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # relative paths: the messages name `model.keras` as the README
        for args in cases:
            result = invoke(args)
            assert result.exit_code == 2, (args, result.output)
            assert len(result.stderr.splitlines()) == 1, result.stderr
            lines.append(result.stderr.strip())
    return lines


def test_the_error_lines_are_what_the_cli_prints(error_lines):
    block = fence_after("Errors are one line on stderr", "text")
    shown = block.group(2).strip().splitlines()
    assert shown == error_lines


# --- command lines --------------------------------------------------------------------


def console_commands() -> list[str]:
    """`$ kerascheck ...` lines of the console blocks, and the question table's commands."""
    found = []
    for block in fences("console"):
        for line in block.group(2).splitlines():
            if line.startswith("$ kerascheck "):
                found.append(line[2:])
    questions = section("## Typical questions")
    found += re.findall(r"`(kerascheck [^`]+)`", questions)
    return found


def shell_words(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    assert words[0] == "kerascheck", line
    return words[1:]


def test_the_readme_shows_command_lines():
    assert len(console_commands()) >= 15


@pytest.mark.parametrize("line", console_commands())
def test_a_command_line_parses(line):
    parse_command(shell_words(line))


@pytest.mark.parametrize("line", [line for line in console_commands() if "sample_models/" in line])
def test_a_command_on_the_shipped_samples_runs(line):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        result = invoke(shell_words(line))
    assert result.exit_code in (0, 1), result.output
    assert "error:" not in result.stderr


# Values for the usage block's metavariables where a string would not parse.
USAGE_VALUES = {"A": "1e-5", "R": "1e-4", "N": "2", "S": "60", "LR": "0.1", "B": "4"}
USAGE_VALUES["N,I,J,..."] = "0,0,0,0"


def usage_lines() -> list[str]:
    block = next(m for m in fences("") if m.start() > TEXT.index("## Commands"))
    return [line for line in block.group(2).splitlines() if line.startswith("kerascheck ")]


def usage_args(line: str) -> list[str]:
    """A usage line as an argument list: optional parts given, first alternatives taken."""
    args = []
    for word in line.split()[1:]:
        word = word.strip("[]")
        if word in ("...", ""):
            continue
        after_option = bool(args) and args[-1].startswith("-")
        value = USAGE_VALUES.get(word) if after_option else None
        args.append(value or word.split("|")[0].removesuffix("..."))
    return args


def test_the_usage_block_lists_every_command():
    assert {line.split()[1] for line in usage_lines()} == set(main.commands)


@pytest.mark.parametrize("line", usage_lines())
def test_a_usage_line_parses(line):
    parse_command(usage_args(line))


def test_make_targets_and_scripts_in_the_readme_exist():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    shown = set(re.findall(r"`make (\w+)`", TEXT))
    for block in fences("console"):
        shown |= set(re.findall(r"^\$ make (\w+)", block.group(2), re.M))
        for script, flags in re.findall(
            r"^\$ \.venv/bin/python (\S+\.py)(.*?)(?:#|$)", block.group(2), re.M
        ):
            source = (ROOT / script).read_text(encoding="utf-8")
            for flag in re.findall(r"--[\w-]+", flags):
                assert f'"{flag}"' in source, (script, flag)
    assert shown and shown <= targets, shown - targets


# --- the JSON example -----------------------------------------------------------------


def assert_same_keys(shown, real, where="report", both_ways=True):
    """Every key the README shows exists in the real report, recursively (lists of
    objects: the first); `both_ways`: and every real key is shown."""
    if isinstance(shown, dict):
        assert isinstance(real, dict), f"{where}: README shows an object, the report has {real!r}"
        missing = sorted(set(shown) - set(real))
        assert not missing, f"{where}: README shows {missing}, not in a real report"
        unshown = sorted(set(real) - set(shown))
        assert not both_ways or not unshown, f"{where}: {unshown} missing from the README"
        for key, value in shown.items():
            # phase names are data, not schema: check the README's exist, not all
            assert_same_keys(value, real[key], f"{where}.{key}", both_ways and key != "phases")
    elif isinstance(shown, list) and shown and isinstance(shown[0], dict):
        assert isinstance(real, list) and real, f"{where}: expected a non-empty list"
        assert_same_keys(shown[0], real[0], f"{where}[0]", both_ways)


def test_the_json_example_matches_a_real_report(demo):
    _, report = demo
    shown = json.loads(fence_after("`--json PATH` writes schema version 1", "json").group(2))
    assert_same_keys(shown, report)
    for key in ("schema", "model", "status", "layer_wise", "batch", "first_divergence"):
        assert shown[key] == report[key], key
    for key in ("name", "class_name", "output_shape", "status"):
        assert shown["layers"][0][key] == report["layers"][0][key], key


# --- the TOML example -----------------------------------------------------------------


def test_the_toml_example_is_read_as_documented(tmp_path):
    tomllib = pytest.importorskip("tomllib")
    text = fences("toml")[0].group(2)
    assert "pyproject.toml" in text.splitlines()[0]
    table = tomllib.loads(text)["tool"]["kerascheck"]
    top_level = text.replace("[tool.kerascheck]\n", "").replace("[tool.kerascheck.", "[")
    for name, content in (("pyproject.toml", text), ("kerascheck.toml", top_level)):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / name).write_text(content)
        policy = tolerance_policy(cwd=str(folder))
        assert (policy.default.atol, policy.default.rtol) == (table["atol"], table["rtol"])
        for pattern, values in table["layers"].items():
            name = pattern.replace("*", "1")  # conv2d_* -> conv2d_1; a class as itself
            tolerance = policy.for_layer(name, name)
            assert tolerance.rtol == values.get("rtol", table["rtol"]), pattern
            assert tolerance.atol == values.get("atol", table["atol"]), pattern
        assert policy.for_layer("dense", "Dense") == policy.default


# --- the Python API example -----------------------------------------------------------


def test_the_python_api_example_runs():
    code = fence_after("## Python API", "python").group(2)
    assert '"model.keras"' in code
    code = code.replace('"model.keras"', repr(str(ROOT / f"{SAMPLE}.keras")))
    x = np.load(ROOT / f"{SAMPLE}.input.npy")
    namespace = {"x": x}
    exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["model"]
    assert namespace["y"].shape == (x.shape[0], 1)
    assert set(namespace["outs"]) == set(model.output_shapes)
    np.testing.assert_array_equal(namespace["outs"]["dense_2"], namespace["y"])
    assert model.param_count() == kerascheck.load(str(ROOT / f"{SAMPLE}.keras")).param_count()


# --- the CI snippet -------------------------------------------------------------------


def test_the_ci_snippet_works_as_pasted():
    text = fence_after("### In CI", "yaml").group(2)
    assert "OWNER" not in text
    runs = re.findall(r"^\s*(?:- )?run: (.*)$", text, re.M)
    install = next(r for r in runs if r.startswith("pip install"))
    audit = next(r for r in runs if r.startswith("kerascheck "))
    command, ctx = parse_command(shell_words(audit))
    assert command.name == "audit" and ctx.params["junit_path"] and ctx.params["json_path"]
    try:
        import yaml
    except ImportError:  # PyYAML comes with the test extra (distributed); else text only
        return
    steps = next(iter(yaml.safe_load(text)["jobs"].values()))["steps"]
    checkouts = [s for s in steps if str(s.get("uses", "")).startswith("actions/checkout")]
    source = next(s["with"] for s in checkouts if "repository" in s.get("with", {}))
    assert install.split()[-1] == f"./{source['path']}"
    variable = re.search(r"vars\.(\w+)", source["repository"]).group(1)
    prose = FENCE.sub("", section("### In CI"))
    assert f"`{variable}`" in prose, f"the prose must say what to set {variable} to"
    assert [s.get("run") for s in steps if "run" in s][0] == install


# --- the options table ----------------------------------------------------------------

# Options deliberately not documented, and why.
UNDOCUMENTED = {
    ("explain", "--batch-size"): "accepted with the input options; explain computes one element",
    ("(group)", "--version"): "click's own",
}


def options_table() -> list[tuple[str, list[str]]]:
    rows = []
    for line in section("### Options").splitlines():
        if line.startswith("| `") or line.startswith("| INPUT"):
            option, commands = line.replace("\\|", "/").split("|")[1:3]
            if commands.strip().startswith("every command"):
                names = ["(group)"]
            else:
                names = [name.strip() for name in commands.split(",")]
            rows.append((option, names))
    return rows


def command(name: str) -> click.Command:
    return main if name == "(group)" else main.commands[name]


def flags(command: click.Command) -> set[str]:
    return {
        opt
        for param in command.params
        if isinstance(param, click.Option)
        for opt in param.opts + param.secondary_opts
    }


def test_every_option_in_the_table_exists_on_its_commands():
    rows = options_table()
    assert len(rows) > 20
    for option, names in rows:
        shown = re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", option)
        for name in names:
            if option.strip() == "`INPUT`":
                arguments = [p.human_readable_name for p in command(name).params]
                assert "[INPUT]" in arguments, name
            for flag in shown:
                assert flag in flags(command(name)), f"{flag} is not an option of {name}"


def documentation(name: str) -> str:
    """The README text that documents a command: its bullet under `## Commands`, and
    the sections whose heading names it (`kerascheck grad`, `diff A B`, ...)."""
    lines = section("## Commands").splitlines()
    bullet = f"- **`{name}`**"
    text = []
    for i, line in enumerate(lines):
        if line.startswith(bullet):
            text.append(line)
            for rest in lines[i + 1 :]:
                if not rest.startswith("  "):
                    break
                text.append(rest)
    for line in TEXT.splitlines():
        if line.startswith("#") and (f"`kerascheck {name}`" in line or f"(`{name} " in line):
            text.append(section(line))
    return "\n".join(text)


def test_every_option_is_documented():
    documented: dict[str, set[str]] = {}
    for option, names in options_table():
        for name in names:
            documented.setdefault(name, set()).update(
                re.findall(r"(?<![\w-])--?[a-z][\w-]*", option)
            )
    missing = []
    for name in ["(group)", *main.commands]:
        text = documentation(name) if name != "(group)" else ""
        for flag in sorted(flags(command(name)) - {"--help", "-h"}):
            if flag in documented.get(name, ()) or (name, flag) in UNDOCUMENTED:
                continue
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                missing.append(f"{name} {flag}")
    assert not missing, f"options missing from the README's options table: {missing}"
