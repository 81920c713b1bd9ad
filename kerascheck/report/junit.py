"""JUnit XML: one testcase per layer call, so CI systems list and count layers."""

from __future__ import annotations

from xml.etree import ElementTree

from ..diff import DiffResult
from .names import safe_text


def _stats_text(row) -> str:
    parts = [
        f"status={row.status}",
        f"max_abs_diff={row.max_abs_diff}",
        f"max_rel_diff={row.max_rel_diff}",
        f"mean_abs_diff={row.mean_abs_diff}",
        f"rms_diff={row.rms_diff}",
        f"cosine_similarity={row.cosine_similarity}",
        f"worst_index={row.worst_index}",
        f"engine_value={row.engine_value}",
        f"keras_value={row.keras_value}",
    ]
    if row.own is not None:
        parts.append(f"own_max_rel_diff={row.own['max_rel_diff']} own_status={row.own['status']}")
    if row.reason:
        parts.append(f"reason={row.reason}")
    return "\n".join(safe_text(part) for part in parts)


def testsuite(result: DiffResult) -> ElementTree.Element:
    rows = result.comparison.layers
    suite = ElementTree.Element(
        "testsuite",
        name=safe_text(f"kerascheck {result.model_path}"),
        tests=str(len(rows)),
        failures=str(sum(r.status == "mismatch" for r in rows)),
        skipped=str(sum(r.status == "skipped" for r in rows)),
        time=f"{result.engine_seconds + result.keras_seconds:.3f}",
    )
    for row in rows:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=safe_text(f"{result.model_path}.{row.class_name}"),
            name=safe_text(row.name),
        )
        text = _stats_text(row)
        if row.status == "mismatch":
            failure = ElementTree.SubElement(
                case,
                "failure",
                message=safe_text(
                    row.reason or f"max_rel_diff {row.max_rel_diff:.3e} out of tolerance"
                ),
                type="divergence",
            )
            failure.text = text
        elif row.status == "skipped":
            ElementTree.SubElement(case, "skipped", message=safe_text(row.reason or "not compared"))
        else:
            ElementTree.SubElement(case, "system-out").text = text
    reason = result.comparison.reason
    if reason:  # no layer diverges on its own, the model outputs do: one failing case more
        case = ElementTree.SubElement(
            suite, "testcase", classname=safe_text(result.model_path), name="end-to-end outputs"
        )
        ElementTree.SubElement(case, "failure", message=safe_text(reason), type="end-to-end")
        suite.set("tests", str(len(rows) + 1))
        suite.set("failures", str(int(suite.get("failures")) + 1))
    return suite


def junit_xml(results: list[DiffResult], errors: dict[str, str] | None = None) -> str:
    """A <testsuites> document; models that could not be checked become an errored case."""
    root = ElementTree.Element("testsuites", name="kerascheck")
    for result in results:
        root.append(testsuite(result))
    for model, message in (errors or {}).items():
        model, message = safe_text(model), safe_text(message)
        suite = ElementTree.SubElement(
            root, "testsuite", name=f"kerascheck {model}", tests="1", errors="1", failures="0"
        )
        case = ElementTree.SubElement(suite, "testcase", classname=model, name="load")
        ElementTree.SubElement(case, "error", message=message, type="could-not-run")
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
