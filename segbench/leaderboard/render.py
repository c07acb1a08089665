"""How a :class:`~segbench.leaderboard.Leaderboard` is shown: Markdown (GitHub table), CSV
(``<column>_mean`` and ``<column>_std`` apart, full precision), LaTeX (a booktabs ``table``
float) and a self-contained HTML page (inline CSS, no scripts, no external files); the
``wandb.Table`` of :func:`segbench.leaderboard.wandb_io.log_to_wandb` has the CSV's columns
(:func:`table_rows`).

Markdown, LaTeX and HTML show ``mean ± std`` (sample std, ddof=1; none for a single run), ``–``
for an absent value, ``(k/n)`` after a figure that only k of the row's n runs have, and the best
value of each score column in bold: mIoU, per-class IoU, accuracies, fwIoU and mDice, compared
at display precision (ties all bold; nothing is bold in a one-row table), and the lowest ECE,
NLL and Brier score. Params, GFLOPs and images/s are not marked. With ``spread="ci"`` a mean is
followed by its bootstrap interval over images, ``[low, high]``, instead of ``± std``; ``†``
after an mIoU marks a row not significantly below the best row
(:mod:`segbench.leaderboard.uncertainty`).
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Callable, Sequence
from typing import Any

from segbench.leaderboard.notes import ABSENT, TIED, notes, significance_notes
from segbench.leaderboard.table import Column, Leaderboard, Row, Stat

__all__ = [
    "ABSENT",
    "TIED",
    "FORMATS",
    "RENDERERS",
    "best_rows",
    "cell_text",
    "csv_safe",
    "notes",
    "scaled",
    "significance_notes",
    "table_rows",
    "tex_escape",
    "to_csv",
    "to_html",
    "to_latex",
    "to_markdown",
    "md_escape",
]

FORMATS = ("md", "csv", "tex", "html")  # the file formats, by extension (RENDERERS' keys)
STAT_KINDS = ("score", "lower_score", "lower", "throughput")  # a mean and a std in CSV
BEST_KINDS = {"score": max, "lower_score": min, "lower": min}  # columns whose best is marked


def _decimals(board: Leaderboard, column: Column) -> int:
    score = 2 if board.percent else 4
    decimals = {"score": score, "lower_score": score, "lower": 3, "throughput": 1, "params": 2}
    return decimals.get(column.kind, 0)


def scaled(board: Leaderboard, row: Row, column: Column) -> Stat:
    """``row``'s statistics for a numeric column in the table's units: scores in percent (or
    fractions), params in millions.

    Args:
        board: the table.
        row: one of its rows.
        column: a numeric column.
    """
    stat = row.stats[column.key]
    percent = 100.0 if board.percent else 1.0
    scale = {"score": percent, "lower_score": percent, "published": percent, "params": 1e-6}
    scale = scale.get(column.kind, 1.0)
    if stat.mean is None or scale == 1.0:
        return stat
    return Stat(stat.mean * scale, None if stat.std is None else stat.std * scale, stat.count)


def _plain(row: Row, column: Column) -> Any:
    """The value of a text or integer column."""
    return {
        "method": row.method,
        "n": row.n,
        "seed": row.seed,
        "eval_mode": row.eval_mode,
        "date": row.date,
    }[column.key]


def cell_text(board: Leaderboard, row: Row, column: Column) -> str:
    """A cell as Markdown, LaTeX and HTML show it (before bold and escaping).

    Args:
        board: the table.
        row: one of its rows.
        column: one of its columns.
    """
    if column.kind in ("text", "int"):
        value = _plain(row, column)
        return ABSENT if value is None else str(value)
    stat = scaled(board, row, column)
    if stat.mean is None:
        return ABSENT
    if column.kind == "gflops":
        return f"{stat.mean:.3g}" if stat.mean < 10 else f"{stat.mean:.1f}"
    if column.kind == "published":  # as printed in the source: one decimal, no spread
        return f"{stat.mean:.1f}" if board.percent else f"{stat.mean:.3f}"
    digits = _decimals(board, column)
    text = f"{stat.mean:.{digits}f}"
    if column.kind == "params":  # one count per configuration
        return text
    interval = row.intervals.get(column.key) if board.spread == "ci" else None
    if interval is not None:
        scale = 100.0 if board.percent else 1.0
        text += f" [{interval[0] * scale:.{digits}f}, {interval[1] * scale:.{digits}f}]"
    elif stat.std is not None:
        text += f" ± {stat.std:.{digits}f}"
    if column.key == "mIoU" and row.tied_with_best:
        text += f" {TIED}"
    return text + (f" ({stat.count}/{row.n})" if stat.count < row.n else "")


def best_rows(board: Leaderboard, column: Column) -> set[int]:
    """Indices of the rows with the best value of a score column at display precision (all of
    them on a tie); empty for other columns and for a one-row table.

    Args:
        board: the table.
        column: one of its columns.
    """
    if column.kind not in BEST_KINDS or len(board.rows) < 2:
        return set()
    shown = {
        i: round(scaled(board, row, column).mean, _decimals(board, column))
        for i, row in enumerate(board.rows)
        if row.stats[column.key].mean is not None
    }
    top = BEST_KINDS[column.kind](shown.values(), default=None)
    return {i for i, value in shown.items() if value == top}


def _cells(board: Leaderboard) -> list[list[tuple[str, bool]]]:
    """Per row, per column: the text shown and whether it is the column's best."""
    best = {c.key: best_rows(board, c) for c in board.columns}
    return [
        [(cell_text(board, row, c), i in best[c.key]) for c in board.columns]
        for i, row in enumerate(board.rows)
    ]


# ---------------------------------------------------------------------------------- Markdown


def _one_line(text: str) -> str:
    """``text`` on one line: a line break inside a table row or a title would end it."""
    return " ".join(str(text).splitlines())


# what Markdown (GitHub's) would read as markup in a cell: emphasis, code, links, HTML, pipes
_MD_SPECIAL = re.compile(r"([\\`*\[\]|~])")


def md_escape(text: str) -> str:
    """``text`` as literal Markdown table-cell text: one line, markup characters
    backslash-escaped, ``<``, ``>`` and ``&`` as HTML entities (GitHub renders raw HTML)."""
    text = _one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def to_markdown(board: Leaderboard) -> str:
    """A GitHub Markdown table under a ``###`` title, the notes below it. Every text from the
    runs (method names, class names, eval modes ...) is escaped (:func:`md_escape`), so a name
    cannot add markup, break a row or inject HTML.

    Args:
        board: the table.
    """

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    lines = [
        f"### {md_escape(board.title)}",
        "",
        line([md_escape(c.header) for c in board.columns]),
    ]
    lines.append("|" + "|".join("---" if c.kind == "text" else "---:" for c in board.columns) + "|")
    text = [c.kind == "text" for c in board.columns]  # the runs' words; the rest numbers
    for row in _cells(board):
        cells = [md_escape(t) if words else t for (t, _), words in zip(row, text)]
        lines.append(line([f"**{c}**" if best else c for c, (_, best) in zip(cells, row)]))
    caption = _one_line(" ".join(notes(board))).replace("<", "&lt;").replace(">", "&gt;")
    return "\n".join([*lines, "", caption]) + "\n"


# ---------------------------------------------------------------------------------- CSV


def table_rows(board: Leaderboard) -> tuple[list[str], list[list[Any]]]:
    """Column names and typed values (numbers, strings or None) of the CSV file and the W&B
    table: scores and images/s as ``<name>_mean``, ``<name>_std`` (``iou_<class>_...`` for a
    class; std None for a single run), params as a count, then kind and the runs' paths.

    Args:
        board: the table.
    """
    names = ["method", "model", "backbone", "variant"]
    ci = board.interval is not None
    for column in board.columns[1:]:
        if column.kind in STAT_KINDS:
            names += [f"{column.csv_name}_mean", f"{column.csv_name}_std"]
            if ci and column.kind == "score":
                names += [f"{column.csv_name}_low", f"{column.csv_name}_high"]
        else:
            names.append(column.csv_name)
    tested = board.significance is not None
    if tested:
        names += ["p_vs_best", "tied_with_best"]
    data = []
    for row in board.rows:
        values: list[Any] = [row.method, row.model, row.backbone, row.variant]
        for column in board.columns[1:]:
            if column.kind in STAT_KINDS:
                stat = scaled(board, row, column)
                values += [stat.mean, stat.std]
                if ci and column.kind == "score":
                    scale = 100.0 if board.percent else 1.0
                    low, high = row.intervals.get(column.key, (None, None))
                    values += [None if low is None else low * scale]
                    values += [None if high is None else high * scale]
            elif column.kind == "published":
                values.append(scaled(board, row, column).mean)
            elif column.kind in ("params", "gflops"):
                mean = row.stats[column.key].mean
                values.append(round(mean) if column.kind == "params" and mean is not None else mean)
            else:
                values.append(_plain(row, column))
        if tested:
            values += [row.p_vs_best, row.tied_with_best]
        data.append([*values, row.kind, ";".join(row.sources)])
    return [*names, "kind", "runs"], data


def to_csv(board: Leaderboard) -> str:
    """CSV with a header row; absent values are empty fields.

    Args:
        board: the table.
    """
    names, data = table_rows(board)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([csv_safe(n) for n in names])
    writer.writerows([["" if v is None else csv_safe(v) for v in values] for values in data])
    return buffer.getvalue()


# a text cell a spreadsheet would run as a formula (OWASP's CSV-injection list)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """``value`` for a CSV field: numbers as they are; a text that a spreadsheet would take for
    a formula (``=``, ``+``, ``-``, ``@``, tab or carriage return first) behind a ``'``, which
    spreadsheets show as text."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


# ---------------------------------------------------------------------------------- LaTeX

_TEX = {
    "\\": r"\textbackslash{}",
    **{c: "\\" + c for c in "&%$#_{}"},
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "–": "--",
    "…": r"\ldots{}",
}
_TEX_PATTERN = re.compile("|".join(map(re.escape, _TEX)))


def tex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``±`` as ``$\\pm$``, ``–`` as ``--``),
    on one line (a blank line would end the table's paragraph).

    Args:
        text: plain text.
    """
    return _TEX_PATTERN.sub(lambda m: _TEX[m.group()], _one_line(text))


def to_latex(board: Leaderboard) -> str:
    """A ``table`` float: a booktabs ``tabular`` with class names rotated, scaled to the line
    width, the notes as caption, label ``tab:<name>``; needs ``booktabs`` and ``graphicx``.

    Args:
        board: the table.
    """
    heads = [
        f"\\rotatebox{{90}}{{{tex_escape(c.header)}}}" if c.is_class else tex_escape(c.header)
        for c in board.columns
    ]
    lines = [
        f"% segbench leaderboard: {tex_escape(board.title)}",
        "% needs \\usepackage{booktabs} and \\usepackage{graphicx} (\\rotatebox, \\resizebox)",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{tex_escape(' '.join(notes(board)))}}}",
        f"\\label{{tab:{board.name.replace('_', '-')}}}",
        "\\resizebox{\\linewidth}{!}{%",
        "\\begin{tabular}{"
        + "".join("l" if c.kind == "text" else "r" for c in board.columns)
        + "}",
        "\\toprule",
        " & ".join(heads) + " \\\\",
        "\\midrule",
    ]
    for row in _cells(board):
        cells = [f"\\textbf{{{tex_escape(t)}}}" if best else tex_escape(t) for t, best in row]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}%", "}", "\\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em;
        border-top: 2px solid #222; border-bottom: 2px solid #222; }
th, td { padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th.text, td.text { text-align: left; }
thead th { border-bottom: 1px solid #222; vertical-align: bottom; }
thead th.class { writing-mode: vertical-rl; transform: rotate(180deg); }
tbody tr:nth-child(even) { background: #f4f4f4; }
td.best { background: #e3f1e3; }
.notes { font-size: 0.85em; color: #555; max-width: 60em; }
"""


def to_html(board: Leaderboard) -> str:
    """A self-contained HTML page: a title with dataset and split, the table (class names in
    ``<th class="class">``, best cells in ``<b>``, a row's runs in its method cell's tooltip)
    and the notes.

    Args:
        board: the table.
    """
    esc = html.escape
    title = f"segbench leaderboard: {board.title}"
    kinds = [
        "class" if c.is_class else "text" if c.kind == "text" else "num" for c in board.columns
    ]
    heads = "".join(
        f'<th class="{k}" scope="col">{esc(c.header)}</th>' for c, k in zip(board.columns, kinds)
    )
    body = []
    for row, cells in zip(board.rows, _cells(board)):
        tds = []
        for column, (text, best) in zip(board.columns, cells):
            css = ("text" if column.kind == "text" else "num") + (" best" if best else "")
            tip = f' title="{esc(chr(10).join(row.sources))}"' if column.key == "method" else ""
            inner = f"<b>{esc(text)}</b>" if best else esc(text)
            tds.append(f'<td class="{css}"{tip}>{inner}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    items = "".join(f"<li>{esc(note)}</li>" for note in notes(board))
    page = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        f'<head><meta charset="utf-8"><title>{esc(title)}</title><style>{_CSS}</style></head>',
        "<body>",
        f"<h1>{esc(title)}</h1>",
        "<table>",
        f"<thead><tr>{heads}</tr></thead>",
        "<tbody>",
        *body,
        "</tbody>",
        "</table>",
        f'<ul class="notes">{items}</ul>',
        "</body>",
        "</html>",
    ]
    return "\n".join(page) + "\n"


RENDERERS: dict[str, Callable[[Leaderboard], str]] = {
    "md": to_markdown,
    "csv": to_csv,
    "tex": to_latex,
    "html": to_html,
}
