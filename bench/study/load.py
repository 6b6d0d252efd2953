"""Reading study files: YAML (duplicate keys refused), ``extends`` resolved, cycles refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.study.checks import StudyError, load_yaml

TOP_KEYS = (
    "name",
    "question",
    "extends",
    "base",
    "grid",
    "zip",
    "exclude",
    "seeds",
    "tables",
    "plots",
    "search",
)


def read_study_file(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a study file, resolving ``extends`` (cycles refused)."""
    path = Path(path)
    if not path.is_file():
        where = f" (extended by {_chain[-1]})" if _chain else ""
        raise StudyError(
            f"{path}: no such study file{where}; check the path (study files live in ablations/)"
        )
    raw = load_yaml(path.read_text(), str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StudyError(
            f"{path}: a study file must be a mapping of {', '.join(TOP_KEYS)}; got {type(raw).__name__}"
        )
    parent = raw.get("extends")
    if parent is None:
        return {k: v for k, v in raw.items() if k != "extends"}
    if not isinstance(parent, str):
        raise StudyError(f"{path}: extends: must be a file name (relative to this file), got {parent!r}")
    parent_path = path.parent / parent
    if parent_path.resolve() in [p.resolve() for p in (*_chain, path)]:
        raise StudyError(f"{path}: extends: {parent} extends itself (cycle); remove one of the `extends:`")
    return merge_studies(read_study_file(parent_path, (*_chain, path)), raw)


def merge_studies(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``parent``: base/search deep-merged, grid/zip per axis, the rest replaced."""
    from bench.core.config import merge

    out = dict(parent)
    for k, v in child.items():
        if k == "extends":
            continue
        if k in ("grid", "zip") and isinstance(v, dict) and isinstance(parent.get(k), dict):
            axes = dict(parent[k])
            for axis, values in v.items():
                if values is None:
                    axes.pop(axis, None)
                else:
                    axes[axis] = values
            out[k] = axes
        elif k in ("base", "search") and isinstance(v, dict) and isinstance(parent.get(k), dict):
            out[k] = merge(parent[k], v)
        else:
            out[k] = v
    return out
