"""The search section of a study's report: best parameters, the trials, FID vs guidance, Pareto front.

Read from MLflow (the trial runs of the study's current search, matched by the Optuna study name
of :func:`bench.study.search_spec.optuna_study_name`), so the report shows what was logged: every trial
with its state, searched values, metrics and feasibility. The Optuna storage, when it can be
opened, only adds the count of trials per state.

>>> sec = search_section(study, tracking_uri="sqlite:///mlflow.db")
>>> sec["markdown"], sec["html"], sec["images"]["search_objective.png"], sec["best"], sec["trials"]
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import pandas as pd

from bench.core.errors import BenchError
from bench.report.axes import honest_range as _honest_range  # the rule every metric plot follows
from bench.study.search_spec import Param, SearchSpec, optuna_study_name, parse_search

ALWAYS_SHOWN = ("seconds_per_image",)  # beside the objectives, the budget and the base run's metrics
OBJECTIVE_PNG = "search_objective.png"
PARETO_PNG = "search_pareto.png"


def search_section(study: Any, tracking_uri: str | None = None, storage: str | None = None,
                   inline_images: bool = False) -> dict[str, Any]:
    """The report section of ``study``'s ``search:`` (empty texts when it has none).

    Returns ``{"title": str, "markdown": str, "html": str, "images": {file name: PNG bytes},
    "best": [{"trial", "run_id", "params", "metrics"}], "trials": DataFrame, "optuna": {...}}``.
    Markdown and HTML refer to the images by file name (write them beside the report), or embed
    them as data URIs in the HTML with ``inline_images``. ``best`` is the best feasible FINISHED
    trial, or the Pareto front (best first objective first) for two objectives.
    """
    if not study.search:
        return {"title": "", "markdown": "", "html": "", "images": {}, "best": [], "trials": pd.DataFrame(),
                "optuna": {}}
    from bench.tracking import Tracker

    base = study.configs[0]
    spec = parse_search(study.search, base, f"{study.path or study.name}: search")
    name = optuna_study_name(study.name, base, spec)
    tracker = Tracker(study.name, tracking_uri)
    from bench.metrics import value_key

    shown = (*(value_key(m) for m in base.eval.metrics), *ALWAYS_SHOWN)
    trials = trials_frame(tracker, name, spec, shown)
    best = best_trials(trials, spec)
    images = _images(trials, best, spec)
    optuna_info = {"study_name": name, **_optuna_counts(storage, study.name, name)}
    title = f"Search: {', '.join(spec.keys)}"
    return {"title": title, "markdown": _markdown(title, study, spec, trials, best, images, optuna_info),
            "html": _html(title, study, spec, trials, best, images, optuna_info, inline_images),
            "images": images, "best": best, "trials": trials, "optuna": optuna_info}


# --- data ------------------------------------------------------------------------------------


def trials_frame(tracker: Any, name: str, spec: SearchSpec, shown: tuple[str, ...] = ALWAYS_SHOWN) -> pd.DataFrame:
    """One row per MLflow trial run: trial, state, searched values (typed), metrics (the objectives,
    the budget's and ``shown``), feasible."""
    from bench.search.store import trial_runs

    metrics = list(dict.fromkeys([*(o.metric for o in spec.objectives), *spec.budget, *shown]))
    rows = []
    for r in trial_runs(tracker, name):
        tags, m = r.data.tags, r.data.metrics
        row: dict[str, Any] = {"trial": int(tags.get("optuna.trial_number", -1)), "state": r.info.status}
        row.update({p.key: _typed(p, r.data.params.get(p.key, _omitted_default(p.key))) for p in spec.params})
        row.update({k: m.get(k, math.nan) for k in metrics})
        row["feasible"] = r.info.status == "FINISHED" and all(
            m.get(k, math.inf) <= bound for k, bound in spec.budget.items())
        row["error"] = (tags.get("bench.error") or "").strip().splitlines()[-1:] or [""]
        row["error"] = row["error"][0][:200]
        row["run_id"] = r.info.run_id
        rows.append(row)
    cols = ["trial", "state", *spec.keys, *metrics, "feasible", "error", "run_id"]
    df = pd.DataFrame(rows, columns=cols).sort_values("trial", kind="stable").reset_index(drop=True)
    keep = {o.metric for o in spec.objectives}
    unused = [c for c in metrics if c not in keep and df[c].isna().all()]
    return df.drop(columns=unused + (["error"] if not df["error"].astype(bool).any() else []))


def _omitted_default(key: str) -> str | None:
    """A key a run does not log holds its default when the field is omitted at its default
    (``sample.guidance_method: cfg``); an option a trial's method lacks stays None."""
    from bench.core.config import RunConfig

    section, _, name = key.partition(".")
    value = getattr(getattr(RunConfig(), section, None), name, None)
    return None if value is None or "." in name else str(value)


def _typed(p: Param, text: str | None) -> Any:
    if text is None:
        return None
    if p.choices is not None:
        return {str(c): c for c in p.choices}.get(text, text)
    return int(float(text)) if p.type == "int" else float(text)


def best_trials(trials: pd.DataFrame, spec: SearchSpec) -> list[dict[str, Any]]:
    """The best feasible FINISHED trial (lowest number on ties), or the Pareto front of two."""
    ok = trials[(trials["state"] == "FINISHED") & trials["feasible"]] if len(trials) else trials
    objs = [o for o in spec.objectives if o.metric in ok.columns]
    if ok.empty or len(objs) < len(spec.objectives):
        return []
    ok = ok.dropna(subset=[o.metric for o in objs])
    sign = {o.metric: 1.0 if o.direction == "minimize" else -1.0 for o in objs}
    score = [[sign[o.metric] * float(v) for o, v in zip(objs, row)] for row in ok[[o.metric for o in objs]].values]
    front = [i for i, s in enumerate(score)
             if not any(all(a <= b for a, b in zip(t, s)) and t != s for t in score)]
    front.sort(key=lambda i: (score[i], ok.iloc[i]["trial"]))
    if len(objs) == 1:
        front = front[:1]
    not_metrics = {"trial", "state", "feasible", "error", "run_id", *spec.keys}
    metric_cols = [c for c in ok.columns if c not in not_metrics]
    return [{"trial": int(ok.iloc[i]["trial"]), "run_id": ok.iloc[i]["run_id"],
             "params": {k: _plain(ok.iloc[i][k]) for k in spec.keys},
             "metrics": {k: float(ok.iloc[i][k]) for k in dict.fromkeys([*sign, *metric_cols])
                         if not pd.isna(ok.iloc[i][k])}} for i in front]


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _optuna_counts(storage: str | None, study_name: str, name: str) -> dict[str, Any]:
    """Trials per state in the Optuna storage, if it exists and opens (else nothing)."""
    from bench.search.store import default_storage

    if storage is None and not default_storage(study_name).exists():
        return {}
    try:
        from bench.search import optuna_counts

        return optuna_counts(storage, study_name, name)
    except (BenchError, KeyError):
        return {}


# --- plots -----------------------------------------------------------------------------------


def _x_param(spec: SearchSpec) -> Param:
    keys = spec.keys
    if "sample.guidance" in keys:
        return spec.params[keys.index("sample.guidance")]
    numeric = [p for p in spec.params if p.type != "categorical"]
    return (numeric or list(spec.params))[0]


def _images(trials: pd.DataFrame, best: list[dict[str, Any]], spec: SearchSpec) -> dict[str, bytes]:
    done = trials[trials["state"] == "FINISHED"] if len(trials) else trials
    y = spec.objectives[0].metric
    if done.empty or y not in done.columns:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {OBJECTIVE_PNG: _objective_plot(plt, done, best, spec)}
    if len(spec.objectives) == 2 and spec.objectives[1].metric in done.columns:
        out[PARETO_PNG] = _pareto_plot(plt, done, best, spec)
    return out


def _objective_plot(plt: Any, done: pd.DataFrame, best: list[dict[str, Any]], spec: SearchSpec) -> bytes:
    """Objective vs the searched key (guidance first), IS (or the second objective) on a twin axis."""
    p, y = _x_param(spec), spec.objectives[0].metric
    x = done[p.key].map(str) if p.type == "categorical" else done[p.key].astype(float)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    feas = done["feasible"].astype(bool)
    ax.scatter(x[feas], done[y][feas], color="C0", label=y)
    if (~feas).any():
        ax.scatter(x[~feas], done[y][~feas], facecolors="none", edgecolors="C0", label=f"{y} (over budget)")
    best_rows = done[done["trial"].isin([b["trial"] for b in best])]
    ax.scatter(x[best_rows.index], best_rows[y], marker="*", s=220, color="C3", zorder=5, label="best")
    for xi, yi, n in zip(x, done[y], done["trial"]):
        ax.annotate(str(n), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7, color="0.4")
    ax.set(xlabel=p.key, ylabel=f"{y} ({spec.objectives[0].direction})", xscale="log" if p.log else "linear")
    second = next((m for m in ("is_mean", *(o.metric for o in spec.objectives[1:])) if m != y
                   and m in done.columns and done[m].notna().any()), None)
    handles, labels = ax.get_legend_handles_labels()
    if second:
        ax2 = ax.twinx()
        ax2.scatter(x, done[second], marker="^", color="C1", label=second)
        ax2.set_ylabel(second, color="C1")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4,
              frameon=False)
    notes = [n for n in (_honest_range(ax, done[y], y), _honest_range(ax2, done[second], second) if second else "")
             if n]  # fmt: skip
    ax.set_title(f"{y} vs {p.key} ({len(done)} trials)" + (f"\n{'; '.join(notes)}" if notes else ""), fontsize=9)
    return _png(plt, fig)


def _pareto_plot(plt: Any, done: pd.DataFrame, best: list[dict[str, Any]], spec: SearchSpec) -> bytes:
    (a, da), (b, db) = [(o.metric, o.direction) for o in spec.objectives]
    fig, ax = plt.subplots(figsize=(5, 4))
    feas = done["feasible"].astype(bool)
    by = next((p.key for p in spec.params if p.type == "categorical" and p.key in done), None)
    if by is None:
        ax.scatter(done[a][feas], done[b][feas], color="0.6", label="trials")
    else:  # one colour per value of the first categorical key (the guidance method, say)
        for i, value in enumerate(dict.fromkeys(done[by].map(str))):
            mine = feas & (done[by].map(str) == value)
            ax.scatter(done[a][mine], done[b][mine], color=f"C{i % 3}" if i < 3 else f"C{i + 1}",
                       label=f"{by.rpartition('.')[2]} = {value}")
    if (~feas).any():
        ax.scatter(done[a][~feas], done[b][~feas], facecolors="none", edgecolors="0.6", label="over budget")
    front = sorted([r["metrics"][a], r["metrics"][b]] for r in best if a in r["metrics"] and b in r["metrics"])
    if front:
        ax.plot(*zip(*front), "-o", color="C3", label="Pareto front")
    ax.set(xlabel=f"{a} ({da})", ylabel=f"{b} ({db})", title="Pareto front")
    ax.legend(fontsize=7)
    return _png(plt, fig)


def _png(plt: Any, fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# --- text ------------------------------------------------------------------------------------


def _summary_line(spec: SearchSpec, trials: pd.DataFrame, info: dict[str, Any]) -> str:
    n_done = int((trials["state"] == "FINISHED").sum()) if len(trials) else 0
    n_failed = int(trials["state"].isin(["FAILED", "KILLED"]).sum()) if len(trials) else 0
    objs = " and ".join(f"{o.direction} {o.metric}" for o in spec.objectives)
    budget = "".join(f"; budget {k} <= {v:g}" for k, v in spec.budget.items())
    counts = ", ".join(f"{v} {k}" for k, v in info.get("counts", {}).items())
    ran = len(trials)
    return (f"Optuna study `{info['study_name']}` ({spec.sampler}, seed {spec.seed}): {objs}{budget}. "
            f"{ran} trial{'' if ran == 1 else 's'} ran: {n_done} finished, {n_failed} failed or cut off"
            + (f" (Optuna: {counts})" if counts else "") + ".")


def _best_line(b: dict[str, Any]) -> str:
    params = ", ".join(f"{k} = {_fmt(v)}" for k, v in b["params"].items())
    return f"trial {b['trial']}: {params} -> " + ", ".join(f"{k} {_fmt(v)}" for k, v in b["metrics"].items())


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(trials: pd.DataFrame) -> pd.DataFrame:
    return trials.drop(columns=[c for c in ("run_id",) if c in trials.columns])


def _markdown(title: str, study: Any, spec: SearchSpec, trials: pd.DataFrame, best: list[dict[str, Any]],
              images: dict[str, bytes], info: dict[str, Any]) -> str:
    lines = [f"## {title}", "", _summary_line(spec, trials, info), ""]
    if trials.empty:
        return "\n".join(lines + [f"No trials logged yet: run `python run_ablation.py search {study.path or study.name}`.", ""])
    head = "Pareto front" if len(spec.objectives) > 1 else "Best"
    lines += [f"**{head}** (feasible finished trials):", ""] + [f"- {_best_line(b)}" for b in best] + [""]
    lines += [f"![{name}]({name})" for name in images] + ["", "### Trials", ""]
    lines += [_table(trials).to_markdown(index=False, floatfmt=".4g"), ""]
    return "\n".join(lines)


def _html(title: str, study: Any, spec: SearchSpec, trials: pd.DataFrame, best: list[dict[str, Any]],
          images: dict[str, bytes], info: dict[str, Any], inline: bool) -> str:
    e = html.escape
    parts = [f"<section class='search'><h2>{e(title)}</h2>", f"<p>{e(_summary_line(spec, trials, info))}</p>"]
    if trials.empty:
        return "".join(parts + ["<p>No trials logged yet.</p></section>"])
    parts.append("<ul>" + "".join(f"<li>{e(_best_line(b))}</li>" for b in best) + "</ul>")
    for name, data in images.items():
        src = f"data:image/png;base64,{base64.b64encode(data).decode()}" if inline else e(name)
        parts.append(f"<img src='{src}' alt='{e(name)}'>")
    parts.append("<h3>Trials</h3>" + _table(trials).to_html(index=False, float_format=lambda v: f"{v:.4g}",
                                                            classes="search-trials", border=0))
    return "".join(parts + ["</section>"])
