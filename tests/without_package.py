"""Run a snippet in a fresh interpreter where an optional package cannot be imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def make_pool_without(package: str, call: str, cwd: Path) -> str:
    """stdout+stderr of ``call`` (e.g. ``make_pool('ray', 'auto', False)``) with ``package`` blocked;
    a BenchError is printed as ``BenchError: <message>``."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {package!r} or name.startswith({package + '.'!r}):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from bench.core.errors import BenchError\n"
        "from bench.execute import make_pool\n"
        "try:\n"
        f"    {call}\n"
        "except BenchError as e:\n"
        "    print('BenchError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=cwd)
    return out.stdout + out.stderr
