"""Tables as text: one markdown and one fixed-width formatter for every table the package prints."""

from __future__ import annotations


def cell(value, float_format: str = ".4g") -> str:
    """One table cell: floats with `float_format`, None as empty, anything else as str()."""
    if isinstance(value, float):
        return f"{value:{float_format}}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict], columns=None) -> str:
    """A GitHub markdown table of `rows` (floats with 4 significant digits, None as empty).

    The columns are those of the first row unless given (no rows: `columns` is required)."""
    if columns is None and not rows:
        raise ValueError("markdown_table of no rows needs columns=: the table has no header")
    columns = list(columns or rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def text_table(rows: list[dict], columns, headers=None, float_format: str = ".4g") -> str:
    """A fixed-width table for the terminal: the first column left-aligned, the others right."""
    columns = list(columns)
    headers = list(headers or columns)
    cells = [[cell(r.get(c), float_format) or "-" for c in columns] for r in rows]
    widths = [max([len(h)] + [len(row[j]) for row in cells]) for j, h in enumerate(headers)]

    def line(values):
        first = f"{values[0]:<{widths[0]}}"
        return "  ".join([first] + [f"{v:>{w}}" for v, w in zip(values[1:], widths[1:])])

    return "\n".join([line(headers)] + [line(row) for row in cells])
