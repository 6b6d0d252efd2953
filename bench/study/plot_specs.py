"""Plot specs of a study file (``plots:``): the kinds, the fields each takes, and their checks.

Plot spec: ``kind`` is one of :data:`PLOT_KINDS` (default ``line``, or ``tradeoff`` when ``x``
is a metric); ``y`` is always the plotted metric; ``x``/``hue``/``style``/``col``/``row`` are
axes (``x`` is a metric for ``tradeoff``). See :data:`PLOT_FIELDS` for what each kind takes;
:mod:`bench.study.report_specs` checks tables and hands each plot to :func:`check_plot`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.core.registry import did_you_mean

PLOT_KINDS = ("line", "tradeoff", "heatmap", "bars", "loss", "samples")

# kind -> {field: role}; roles: "axis", "metric", "axes" (list of axes), "value" (free-form).
_COMMON = {"kind": "value", "title": "value", "caption": "value", "where": "where", "pool": "axes"}
PLOT_FIELDS: dict[str, dict[str, str]] = {
    "line": {"x": "axis", "y": "metric", "hue": "axis", "style": "axis", "col": "axis", "row": "axis",
             "logx": "value", "logy": "value"},
    "tradeoff": {"x": "metric", "y": "metric", "hue": "axis", "style": "axis", "col": "axis",
                 "label": "axis"},
    "heatmap": {"x": "axis", "y": "metric", "row": "axis", "col": "axis", "format": "value"},
    "bars": {"x": "axis", "y": "metric", "hue": "axis", "col": "axis", "logy": "value"},
    "loss": {"x": "value", "y": "metric", "hue": "axis", "style": "axis", "col": "axis",
             "smooth": "value", "logy": "value"},
    "samples": {"by": "axes", "y": "metric", "seed": "value", "max": "value"},
}  # fmt: skip
_REQUIRED = {
    "line": ("x", "y"),
    "tradeoff": ("x", "y"),
    "heatmap": ("x", "y", "row"),
    "bars": ("x", "y"),
    "loss": (),
    "samples": (),
}
# Sections that define a TRAIN job: a loss curve can only be told apart by these axes.
TRAIN_SECTIONS = ("data", "model", "vae", "diffusion", "train")


@dataclass(frozen=True)
class PlotSpec:
    """A normalised plot spec; fields a kind does not take stay None."""

    kind: str
    x: str | None = None
    y: str | None = None
    hue: str | None = None
    style: str | None = None
    col: str | None = None
    row: str | None = None
    label: str | None = None
    by: tuple[str, ...] = ()
    title: str = ""
    where: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # logx, logy, smooth, seed, max, format
    pool: tuple[str, ...] = ()


def check_plot(c: Any, spec: Any, at: str) -> PlotSpec:
    """A plot spec normalised and checked by ``c`` (the study's report-spec checker: axes, metrics)."""
    from bench.metrics import value_key

    if not isinstance(spec, dict):
        raise c.fail(at, f"must be a mapping (a plot), got {spec!r}")
    kind = spec.get("kind")
    if kind is None:
        x = spec.get("x")
        kind = "tradeoff" if isinstance(x, str) and value_key(x) in c.metrics and x not in c.axes \
            else "line"  # fmt: skip
    if kind not in PLOT_KINDS:
        raise c.fail(
            f"{at}.kind", f"unknown plot kind {kind!r}.{did_you_mean(str(kind), PLOT_KINDS)} "
            f"Kinds: {', '.join(PLOT_KINDS)}",
        )  # fmt: skip
    fields = PLOT_FIELDS[kind]
    c.keys(spec, at, [*_COMMON, *fields], f"a {kind} plot")
    for req in _REQUIRED[kind]:
        if spec.get(req) is None:
            raise c.fail(at, f"a {kind} plot needs `{req}:` ({', '.join(_REQUIRED[kind])} are required)")
    out: dict[str, Any] = {"kind": kind, "options": {}}
    for name, role in fields.items():
        value = spec.get(name)
        if value is None:
            continue
        loc = f"{at}.{name}"
        if role == "axis":
            out[name] = c.axis(value, loc)
        elif role == "metric":
            out[name] = c.metric(value, loc)
        elif role == "axes":
            out[name] = c.names(value, loc, c.axis)
        else:
            out["options"][name] = value
    _plot_rules(c, kind, spec, out, at)
    out["where"] = c.where_filter(spec.get("where"), f"{at}.where")
    roles = {out.get(n) for n in ("x", "hue", "style", "col", "row", "label") if fields_is_axis(kind, n)}
    out["pool"] = c.pool(spec.get("pool"), {r for r in roles if r} | set(out.get("by", ())), f"{at}.pool")
    out["title"] = c.text(spec.get("title"), f"{at}.title") or c.text(spec.get("caption"), f"{at}.caption")
    return PlotSpec(**out)

def _plot_rules(c: Any, kind: str, spec: dict[str, Any], out: dict[str, Any], at: str) -> None:
    """Checks particular to one kind of plot."""
    if kind == "loss":
        x = out["options"].pop("x", "step")
        if x != "step":
            raise c.fail(f"{at}.x", f"a loss plot's x is the training step (x: step, the default), got {x!r}")
        out["options"]["x"] = x
        if out.setdefault("y", "train_loss") != "train_loss":
            raise c.fail(f"{at}.y", f"a loss plot shows train_loss, got {out['y']!r}")
        for name in ("hue", "style", "col"):
            axis = out.get(name)
            if axis and axis != "seed" and axis.split(".")[0] not in TRAIN_SECTIONS:
                raise c.fail(
                    f"{at}.{name}", f"{axis!r} is a sampling/evaluation axis, but loss curves belong to "
                    f"trainings; use an axis of {', '.join(TRAIN_SECTIONS)} or seed",
                )  # fmt: skip
    for opt in ("logx", "logy"):
        if opt in out["options"] and not isinstance(out["options"][opt], bool):
            raise c.fail(f"{at}.{opt}", f"must be true or false, got {out['options'][opt]!r}")
    for opt in ("smooth", "max", "seed"):
        v = out["options"].get(opt)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (0 if opt == "seed" else 1)):
            raise c.fail(f"{at}.{opt}", f"must be a positive integer, got {v!r}")
    if "format" in out["options"]:
        out["options"]["format"] = c.format_spec(out["options"]["format"], f"{at}.format")
    used = [out.get(n) for n in ("x", "hue", "style", "col", "row", "label") if fields_is_axis(kind, n)]
    used = [u for u in used if u]
    if len(set(used)) < len(used):
        raise c.fail(at, f"uses an axis twice ({', '.join(used)}); give each role its own axis")


def fields_is_axis(kind: str, name: str) -> bool:
    """Whether ``name`` is an axis-valued field of a ``kind`` plot."""
    return PLOT_FIELDS[kind].get(name) == "axis"
