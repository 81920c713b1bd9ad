"""JUnit and Markdown for reports made of per-tensor rows (`grad`, `train-step`).

Each tensor of each row is one JUnit testcase (a failure when it mismatches,
with the likely cause as its message) and, when it does not match, one line of
the Markdown table.
"""

from __future__ import annotations

from xml.etree import ElementTree

from .names import markdown_cell, markdown_code, safe_text


def tensor_junit(suite: str, model_path: str, rows, seconds: float) -> str:
    root = ElementTree.Element("testsuites", name="kerascheck")
    cases = [(row, t) for row in rows for t in row.tensors]
    element = ElementTree.SubElement(
        root,
        "testsuite",
        name=safe_text(suite),
        tests=str(len(cases)),
        failures=str(sum(t.status == "mismatch" for _, t in cases)),
        time=f"{seconds:.3f}",
    )
    for row, tensor in cases:
        case = ElementTree.SubElement(
            element,
            "testcase",
            classname=safe_text(f"{model_path}.{row.class_name}"),
            name=safe_text(f"{row.name}/{tensor.tensor}"),
        )
        own = tensor.own.rel_error if tensor.own else None
        carried = tensor.carried.rel_error if tensor.carried else None
        text = f"status={tensor.status}\nown_rel_error={own}\ncarried_rel_error={carried}"
        if tensor.hint:
            text += f"\nhint={safe_text(tensor.hint)}"
        if tensor.status == "mismatch":
            failure = ElementTree.SubElement(
                case,
                "failure",
                message=safe_text(
                    tensor.hint or f"relative error {own or carried:.3e} out of tolerance"
                ),
                type="divergence",
            )
            failure.text = text
        else:
            ElementTree.SubElement(case, "system-out").text = text
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def tensor_markdown(rows, what: str) -> list[str]:
    """The table of tensors that do not match, or one line saying all agree."""
    from .grad_report import _num

    bad = [(r, t) for r in rows for t in r.tensors if t.status != "match"]
    if not bad:
        count = sum(len(r.tensors) for r in rows)
        return [f"All {count} {what} agree."]
    lines = [
        "| call | class | tensor | own rel | carried rel | status | likely cause |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for row, t in bad:
        own = _num(t.own.rel_error) if t.own else "-"
        carried = _num(t.carried.rel_error) if t.carried else "-"
        lines.append(
            f"| {markdown_code(row.name)} | {markdown_cell(row.class_name)} | "
            f"{markdown_cell(t.tensor)} | {own} | {carried} | {t.status} | "
            f"{markdown_cell(t.hint or '', None)} |"
        )
    return lines
