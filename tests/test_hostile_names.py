"""Names are data: hostile layer and class names print literally and never break a report.

Models are saved by Keras with a placeholder name that is then replaced in the
zip's config.json, since Keras refuses some names (Keras 3 rejects '/', tf_keras
anything outside [A-Za-z0-9_.>-]); names Keras cannot load are still checked by
`summary`, by error messages and by the report functions directly.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from xml.etree import ElementTree

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import keras_module, randomize_weights, save

import kerascheck
from kerascheck.cli import main
from kerascheck.compare import Tolerance
from kerascheck.diff import diff_model
from kerascheck.report.json_report import diff_report, dumps
from kerascheck.report.junit import junit_xml
from kerascheck.report.markdown import diff_markdown
from kerascheck.report.names import NAME_LIMIT, display, markdown_code, safe_text
from kerascheck.report.tables import diff_table

LONG = "L" * 10_000
# Names Keras 3 loads (no '/'): checked end to end, Keras included.
LOADABLE = {
    "link": "[link=http:e]dense_2",
    "markup": "[bold red]boom :smile:",
    "ctrl": "tab\tnl\nbell\x07del\x7f\u202erev\x1b[31mred\x9b2J",
    "surrogate": "sur\udcffrogate",
    "long": LONG,
    "md": "pipe|`tick`*star*<b>x<!--",
}
# Names only the engine reads.
ENGINE_ONLY = {
    "closed": "[bold]x[/bold]",
    "hyperlink": "[link=http://e]dense_2[/link]",
    "osc": "a\x1b]8;;http://e\x07osc\x1b]8;;\x07b",
}
ALL = {**LOADABLE, **ENGINE_ONLY}
RAW = ("\x1b", "\x07", "\x9b", "\x7f", "\u202e", "\udcff", "\t")


def rename(path, out, placeholder, name, field='"name"'):
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                text = data.decode().replace(f'"{placeholder}"', json.dumps(name))
                data = text.encode("utf-8", "surrogatepass")
            dst.writestr(item, data)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("hostile"))
    k = keras_module("keras")
    x = k.Input((4, 3))
    model = k.Model(x, k.layers.Dense(2)(k.layers.Flatten(name="zzplaceholder")(x)))
    randomize_weights(model)
    path = save(model, root, "keras")
    paths = {key: rename(path, f"{root}/{key}.keras", "zzplaceholder", n) for key, n in ALL.items()}
    np.save(f"{root}/x.npy", np.random.default_rng(0).standard_normal((2, 4, 3), "float32"))
    np.save(f"{root}/y.npy", np.random.default_rng(1).standard_normal((2, 2), "float32"))
    paths["root"] = root
    return paths


def assert_literal(text, name):
    """`text` holds `name` escaped and capped, and no raw control character at all."""
    for raw in RAW:
        assert raw not in text, (raw, text[:300])
    shown = display(name)
    assert len(shown) <= NAME_LIMIT
    assert shown in text, (shown, text[:2000])
    assert "L" * NAME_LIMIT not in text


def test_display_and_safe_text():
    assert display("[bold]x[/bold]") == "[bold]x[/bold]"
    assert safe_text("a\x1b[0m\udcff\n") == "a\\x1b[0m\\udcff\\n"
    assert display(LONG) == "L" * (NAME_LIMIT - 1) + "…"
    assert safe_text("dense_1") == "dense_1"
    safe_text(LONG * 100).encode("utf-8")  # never raises
    assert markdown_code("a|`b") == "``a\\|`b``"


@pytest.mark.parametrize("key", sorted(ALL))
def test_summary_prints_names_literally(models, key):
    result = CliRunner().invoke(main, ["summary", models[key]])
    assert result.exit_code == 0, result.output
    assert_literal(result.stdout, ALL[key])
    assert re.search(r"│ [^│]+│ Flatten", result.stdout)  # the row is there
    if key == "hyperlink":  # not rendered as a link to a layer named dense_2
        assert "[link=http://e]dense_2[/link]" in result.stdout


@pytest.mark.parametrize("key", sorted(LOADABLE))
def test_diff_and_reports(models, key, tmp_path):
    files = {ext: tmp_path / f"report.{ext}" for ext in ("json", "xml", "md")}
    result = CliRunner().invoke(
        main,
        ["diff", models[key], "--layer-wise", "--json", files["json"], "--junit", files["xml"]]
        + ["--markdown", files["md"]],
    )
    assert result.exit_code == 0, result.output
    assert_literal(result.stdout, LOADABLE[key])
    if key == "markup":
        assert "[bold red]boom :smile:" in result.stdout
    report = json.loads(files["json"].read_text(encoding="utf-8"))
    assert report["layers"][0]["name"] == LOADABLE[key]
    ElementTree.parse(files["xml"])
    check_markdown(files["md"].read_text(encoding="utf-8"))


@pytest.mark.parametrize("key", ["ctrl", "md", "long", "link"])
def test_grad_and_audit(models, key):
    root = models["root"]
    result = CliRunner().invoke(
        main, ["grad", models[key], f"{root}/x.npy", f"{root}/y.npy", "--loss", "mse"]
    )
    assert result.exit_code == 0, result.output
    assert_literal(result.stdout, LOADABLE[key])
    audit = CliRunner().invoke(main, ["audit", models[key], models["closed"]])
    assert audit.exit_code == 2, audit.output  # Keras cannot load names with '/'
    assert "Traceback" not in audit.output
    for raw in RAW:
        assert raw not in audit.output


def test_explain_does_not_raise(models):
    result = CliRunner().invoke(
        main, ["explain", models["surrogate"], "--layer", "dense_1", "--index", "0,0"]
    )
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output


def check_markdown(text):
    for raw in RAW:
        assert raw not in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    cells = {len(re.findall(r"(?<!\\)\|", row)) for row in rows}
    assert len(cells) <= 1, rows  # every row has as many cells as the header


def test_report_functions_with_every_name(models):
    model = kerascheck.load(models["md"])
    x = [np.random.default_rng(0).standard_normal((2, 4, 3), "float32")]
    result = diff_model(models["md"], model, x, tolerance=Tolerance())
    template = result.comparison.layers
    for name in ALL.values():
        for row in template:
            row.name, row.class_name, row.reason = name, name, "shapes differ"
            row.status = "mismatch"
        result.comparison.layers = template
        from rich.console import Console

        console = Console(width=140, record=True, file=open(os.devnull, "w"))
        console.print(diff_table(result))
        assert_literal(console.export_text(), name)
        assert json.loads(dumps(diff_report(result)))["layers"][0]["name"] == name
        ElementTree.fromstring(junit_xml([result]).encode("utf-8"))
        check_markdown(diff_markdown(result, rows="all"))


def test_hostile_class_name_error_is_one_escaped_line(models, tmp_path):
    path = rename(models["md"], tmp_path / "cls.keras", "Flatten", "[bold]Evil\x1b[31m\udcff")
    result = CliRunner().invoke(main, ["summary", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "[bold]Evil\\x1b[31m\\udcff" in lines[0], lines
