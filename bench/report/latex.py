"""Tables as LaTeX: booktabs rules, the best cells in bold, the report's symbols as math."""

from __future__ import annotations

from typing import Any

import pandas as pd
from pandas.io.formats.style import Styler


def table_latex(table: Any, footnote: str = "") -> str:
    """The table as a LaTeX ``table`` (booktabs rules, the best cells in bold, +- as $\\pm$), its
    notes and ``footnote`` (the protocol) in small print under it. Needs booktabs and graphicx
    (row labels are repeated rather than merged: no multirow)."""
    shown = table.text.map(tex).where(~table.best, "\\textbf{" + table.text.map(tex) + "}")
    shown.index = _tex_index(shown.index)
    shown.columns = _tex_index(shown.columns)
    align = "l" * shown.index.nlevels + "r" * shown.shape[1]  # labels left, numbers right
    body = Styler(shown).to_latex(hrules=True, multicol_align="c", sparse_index=False, column_format=align)
    notes = " ".join(tex(n) for n in [*table.notes, *([footnote] if footnote else [])])
    return ("\\begin{table}[ht]\n\\centering\n" + (f"\\caption{{{tex(table.title)}}}\n" if table.title else "")
            + "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n" + body + "}\n"
            + (f"\\par\\smallskip{{\\footnotesize {notes}\\par}}\n" if notes else "") + "\\end{table}\n")


_TEX = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{",
        "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "±": "$\\pm$", "↓": "$\\downarrow$",
        "↑": "$\\uparrow$", "—": "---", "×": "$\\times$", "σ": "$\\sigma$", "̂": "", "·": "$\\cdot$",
        "≥": "$\\geq$", "≤": "$\\leq$", "→": "$\\to$", "†": "$^\\dagger$", "≡": "$\\equiv$", "η": "$\\eta$",
        "β": "$\\beta$", "−": "$-$"}  # fmt: skip


def tex(text: Any) -> str:
    """``text`` safe in LaTeX text mode (special characters escaped, the report's symbols as math)."""
    out = str(text).replace("β̃", "\x00")  # beta-tilde, a letter and a combining mark: one symbol
    return "".join(_TEX.get(ch, ch if ord(ch) < 128 else "?") for ch in out).replace(
        "\x00", "$\\tilde\\beta$")


def _tex_index(index: pd.Index) -> pd.Index:
    if isinstance(index, pd.MultiIndex):
        return pd.MultiIndex.from_tuples([tuple(tex(v) for v in t) for t in index],
                                         names=[tex(n) if n is not None else None for n in index.names])
    return pd.Index([tex(v) for v in index], name=tex(index.name) if index.name is not None else None)
