"""pdflatex for the tests of the LaTeX export (installed by `make system-deps`; tests skip without it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PDFLATEX = shutil.which("pdflatex")


def compile_latex(tex_file: Path, out: Path) -> Path:
    """pdflatex ``tex_file`` into ``out``; returns the PDF (fails with the log's tail)."""
    assert PDFLATEX is not None
    res = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", f"-output-directory={out}",
                          str(tex_file)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:]
    return out / (tex_file.stem + ".pdf")
