"""``build_report``: a study's MLflow runs -> ``reports/<study>/report.md``, ``report.html`` (one
self-contained file, images inlined as base64 PNG), ``tables.tex`` (every table as LaTeX, booktabs)
and ``runs.csv`` / ``runs.parquet`` (every run, every param and metric). Every file is written atomically (temp file + rename), so a report is never half-written.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from bench.core.paths import atomic_write_bytes
from bench.metrics import OUTPUTS
from bench.report.captions import common_formats
from bench.report.plots import Figure, default_plots, render_plot
from bench.report.runs import MISSING, StudyRuns, axis_order, collect_runs, short_names
from bench.report.tables import Table, make_table
from bench.study.baselines import Baseline, baselines_dir_for, load_baselines
from bench.study.report_specs import validate_report_specs
from bench.tracking import fetch_runs, using_uri

if TYPE_CHECKING:
    from bench.study import Study

__all__ = ["build_report", "runs_csv", "runs_parquet", "study_tables"]

_FIRST_COLUMNS = ("run_id", "status", "tags.bench.kind", "tags.bench.label", "tags.bench.key",
                  "tags.bench.train_key", "tags.bench.error", "start_time", "end_time")  # fmt: skip


@dataclass
class _Report:
    """Everything the two templates show."""

    study: Any
    data: StudyRuns
    tables: list[Table]
    figures: list[Figure]
    generated: str
    search_md: str = ""  # the Optuna search section (bench.report.search), when the study has one
    search_html: str = ""

    def summary(self) -> str:
        counts = self.data.jobs["_status"].value_counts()
        parts = [f"{int(n)} {'not run' if s == MISSING else s.lower()}" for s, n in counts.items()]
        n = len(self.data.jobs)
        search = " (the search's trials among them)" if self.study.search else ""
        return (f"{n} grid evaluation{'' if n == 1 else 's'} expected: {', '.join(parts)}; "
                f"{len(self.data.runs)} MLflow runs in the experiment{search}.")

    def failures(self) -> pd.DataFrame:
        jobs = self.data.jobs
        bad = jobs[~jobs["_status"].isin(["FINISHED", MISSING])]
        axes = [a for a in self.study.axes if a in jobs]
        names = short_names(list(self.study.axes))
        out = bad[[*axes, "_status", "_kind", "_reason", "_run_id"]].copy()
        out.columns = [*(names[a] for a in axes), "status", "job", "reason", "run"]
        return out.astype(str)

    def badges(self) -> set[str]:
        """The cell styles that occur in the tables (the legend shows only these)."""
        found = {str(v) for t in self.tables for v in t.state.to_numpy().ravel()}
        return found | ({"best"} if any(bool(t.best.to_numpy().any()) for t in self.tables) else set())

    def protocol(self) -> pd.DataFrame:
        p = self.data.protocol
        rows = [(k.replace("_", " "), ", ".join(v) or "—") for k, v in p.items()]
        return pd.DataFrame(rows, columns=["protocol", "ours"])


def build_report(
    study: Study,
    tracking_uri: str | None = None,
    out_dir: str | Path = "reports",
    baselines_dir: str | Path | None = None,
) -> Path:
    """Write ``<out_dir>/<study.name>/report.md``, ``report.html`` and ``runs.csv``; return the folder.

    ``tracking_uri`` defaults to MLflow's current one. Baselines are read from ``baselines_dir``
    (default: ``./baselines``, else the ``baselines/`` beside the study file's folder).
    """
    uri, runs, data, tables, plot_specs, order, names = _gather(study, tracking_uri, baselines_dir)
    figures = [render_plot(s, data, order, names) for s in plot_specs]
    report = _Report(study, data, tables, figures, dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    folder = Path(out_dir) / study.name
    if study.search:
        from bench.report.search import search_section

        section = search_section(study, tracking_uri=uri)
        for name, png in section["images"].items():
            atomic_write_bytes(folder / name, png)
        report.search_md = section["markdown"]
        report.search_html = search_section(study, tracking_uri=uri, inline_images=True)["html"]
    images = _write_images(folder, figures)
    atomic_write_bytes(folder / "runs.csv", runs_csv(runs).encode())
    atomic_write_bytes(folder / "runs.parquet", runs_parquet(runs))
    atomic_write_bytes(folder / "report.md", _markdown(report, images).encode())
    atomic_write_bytes(folder / "report.html", _html(report).encode())
    atomic_write_bytes(folder / "tables.tex", _latex(report).encode())
    return folder


def study_tables(study: Study, tracking_uri: str | None = None, baselines_dir: str | Path | None = None
                 ) -> list[Table]:
    """The study's tables from its MLflow runs, as the report shows them (each cell's state too)."""
    return _gather(study, tracking_uri, baselines_dir)[3]


def _gather(study: Study, tracking_uri: str | None, baselines_dir: str | Path | None) -> tuple[Any, ...]:
    """(tracking uri, runs, StudyRuns, tables, plot specs, axis order, short names) of a study."""
    with using_uri(tracking_uri) as uri:
        runs = fetch_runs(study.name)
    data = collect_runs(study, runs, uri)
    baselines = load_baselines(_baselines_dir(study, baselines_dir))
    metrics = set(OUTPUTS.names()) | set(data.metrics)  # the tracking contract's names: always valid
    table_specs, plot_specs = validate_report_specs(
        study.tables, study.plots, set(study.axes), metrics, str(study.path or study.name), set(baselines)
    )
    order, names = axis_order(study), short_names(list(study.axes))
    tables = [make_table(s, data, order, names, _baseline(baselines, s.baseline)) for s in table_specs]
    formats = common_formats(tables)  # one format per metric across the report: rebuild the tables that differ
    tables = [t if all(formats.get(m, f) == f for m, f in t.formats.items())
              else make_table(t.spec, data, order, names, _baseline(baselines, t.spec.baseline), formats)
              for t in tables]  # fmt: skip
    if "plots" not in study.raw:  # no `plots:` at all (an empty list asks for none): the default figures
        plot_specs = default_plots(table_specs, data, study.axes)
    return uri, runs, data, tables, plot_specs, order, names


def _baselines_dir(study: Any, given: str | Path | None) -> Path:
    return Path(given) if given is not None else baselines_dir_for(study.path)


def _baseline(baselines: dict[str, Baseline], bid: str | None) -> Baseline | None:
    return baselines[bid] if bid else None


def runs_csv(runs: pd.DataFrame) -> str:
    """One row per run: identity and status first, then params, metrics and the other tags."""
    cols = list(runs.columns)
    first = [c for c in _FIRST_COLUMNS if c in cols]
    rest = sorted(c for c in cols if c not in first)
    ordered = first + [c for prefix in ("params.", "metrics.", "tags.") for c in rest if c.startswith(prefix)]
    ordered += [c for c in rest if c not in ordered]
    frame = runs[ordered].copy()
    for c in ("start_time", "end_time"):
        if c in frame:
            frame[c] = pd.to_datetime(frame[c], utc=True).map(lambda t: t.isoformat() if pd.notna(t) else "")
    return frame.to_csv(index=False)


def runs_parquet(runs: pd.DataFrame) -> bytes:
    """The runs as Parquet for pandas users (``pd.read_parquet``): the columns of ``runs.csv``, typed."""
    import io

    frame = pd.read_csv(io.StringIO(runs_csv(runs)), low_memory=False)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _write_images(folder: Path, figures: list[Figure]) -> list[list[str]]:
    """PNG files for the Markdown report (``figures/plot-<i>-<j>.png``); returns their paths.
    Figures of an earlier report of this study that this one does not write are removed."""
    paths = []
    for old in (folder / "figures").glob("plot-*.png"):
        old.unlink()
    for i, fig in enumerate(figures, 1):
        mine = []
        for j, (_, png) in enumerate(fig.images, 1):
            rel = f"figures/plot-{i}-{fig.kind}-{j}.png"
            atomic_write_bytes(folder / rel, png)
            mine.append(rel)
        paths.append(mine)
    return paths


def _markdown(r: _Report, images: list[list[str]]) -> str:
    s = r.study
    out = [f"# {s.name}", ""]
    if s.question:
        out += [f"> {s.question.strip()}", ""]
    out += [f"Generated {r.generated} from `{r.data.tracking_uri}`"
            + (f"; study file `{s.path}`." if s.path else "."), "", f"**Runs:** {r.summary()}", ""]  # fmt: skip
    if r.tables:
        out += ["## Tables", ""]
    for t in r.tables:
        out += [f"### {t.title}", "", t.markdown(), "", *[f"*{n}*  " for n in t.notes], ""]
    if r.figures:
        out += ["## Plots", ""]
    for fig, paths in zip(r.figures, images):
        out += [f"### {fig.title}", ""]
        many = len(fig.images) > 1 or fig.kind == "samples"
        for (caption, _), p in zip(fig.images, paths):
            out += [f"![{caption}]({p})" + (f"  \n*{caption}*" if many else ""), ""]
        out += [*([f"*{fig.caption}*", ""] if fig.caption else []), *[f"*{n}*  " for n in fig.notes], ""]
    if r.search_md:
        out += [r.search_md, ""]
    failures = r.failures()
    if len(failures):
        out += ["## Failed runs", "", failures.to_markdown(index=False, disable_numparse=True), ""]
    out += ["## Protocol", "", r.protocol().to_markdown(index=False, disable_numparse=True), "",
            "Full per-run data: `runs.csv` (every param and metric).", ""]  # fmt: skip
    return "\n".join(out)


def _latex(r: _Report) -> str:
    """Every table as LaTeX in one document that compiles on its own (``pdflatex tables.tex``);
    copy a ``table`` environment into a paper (it needs booktabs and graphicx)."""
    from bench.report.latex import tex

    protocol = "Protocol: " + "; ".join(f"{k} {v}" for k, v in r.protocol().itertuples(index=False)) + "."
    head = ("\\documentclass{article}\n\\usepackage[margin=2cm]{geometry}\n"
            "\\usepackage{booktabs,graphicx}\n\\begin{document}\n"
            f"\\section*{{{tex(r.study.name)}}}\n" + (f"{tex(r.study.question.strip())}\n\n" if r.study.question else ""))
    return head + "\n".join(t.latex(protocol) for t in r.tables) + "\\end{document}\n"


def _html(r: _Report) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    failures = r.failures()
    return env.from_string(_TEMPLATE).render(
        r=r, study=r.study,
        tables=[(t, t.html(uuid=f"t{i}")) for i, t in enumerate(r.tables)],
        figures=[(f, [(c, base64.b64encode(png).decode("ascii")) for c, png in f.images]) for f in r.figures],
        failures=failures.to_html(index=False, classes="bench-table kv", border=0) if len(failures) else "",
        protocol=r.protocol().to_html(index=False, classes="bench-table kv", border=0),
    )  # fmt: skip


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ study.name }} — ablation report</title>
<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1150px; padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; margin-top: 2rem; }
.question { font-size: 1.1rem; color: #444; border-left: 4px solid #6f42c1; padding-left: .8rem; }
.meta { color: #57606a; font-size: .9rem; }
table.bench-table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
table.bench-table th, table.bench-table td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: right; }
table.bench-table th { background: #f6f8fa; text-align: center; }
table.kv td { text-align: left; }
table.bench-table caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3rem; }
.note { color: #57606a; font-size: .85rem; margin: .2rem 0; }
.caption { color: #333; font-size: .88rem; margin: .2rem 0 .6rem; max-width: 900px; }
.legend span { display: inline-block; padding: 0 .4rem; margin-right: .5rem; border: 1px solid #d0d7de; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
.grids { display: flex; flex-wrap: wrap; gap: 1rem; }
.grids figure { width: 340px; } .grids img { width: 340px; image-rendering: pixelated; }
figcaption { font-size: .85rem; color: #57606a; }
</style></head><body>
<h1>{{ study.name }}</h1>
{% if study.question %}<p class="question">{{ study.question }}</p>{% endif %}
<p class="meta">Generated {{ r.generated }} from <code>{{ r.data.tracking_uri }}</code>{% if study.path %};
study file <code>{{ study.path }}</code>{% endif %}.<br><strong>Runs:</strong> {{ r.summary() }}</p>
{% set badges = r.badges() %}{% if badges | reject("equalto", "ok") | list %}<p class="legend note">
{% if "best" in badges %}<span style="font-weight:700;background:#dff3e4">best in column</span>{% endif %}
{% if "failed" in badges %}<span style="color:#b3261e;font-style:italic">failed</span>{% endif %}
{% if "missing" in badges %}<span style="color:#9e9e9e">— not run</span>{% endif %}
{% if "running" in badges %}<span style="color:#8a6d00;font-style:italic">running</span>{% endif %}
{% if "paper" in badges %}<span style="background:#f4f6f8;color:#455a64">published</span>{% endif %}</p>{% endif %}
{% if tables %}<h2>Tables</h2>{% endif %}
{% for t, html in tables %}<section class="table">{{ html | safe }}
{% for n in t.notes %}<p class="note">{{ n }}</p>{% endfor %}</section>{% endfor %}
{% if figures %}<h2>Plots</h2>{% endif %}
{% for f, images in figures %}<section class="plot"><h3>{{ f.title }}</h3>
{% if f.kind == "samples" %}<div class="grids">{% endif %}
{% for caption, b64 in images %}<figure><img alt="{{ caption }}" src="data:image/png;base64,{{ b64 }}">
{% if images | length > 1 or f.kind == "samples" %}<figcaption>{{ caption }}</figcaption>{% endif %}</figure>{% endfor %}
{% if f.kind == "samples" %}</div>{% endif %}
{% if f.caption %}<p class="caption">{{ f.caption }}</p>{% endif %}
{% for n in f.notes %}<p class="note">{{ n }}</p>{% endfor %}</section>{% endfor %}
{% if r.search_html %}{{ r.search_html | safe }}{% endif %}
{% if failures %}<h2>Failed runs</h2>{{ failures | safe }}{% endif %}
<h2>Protocol</h2>{{ protocol | safe }}
<p class="note">Every run with every param and metric: <code>runs.csv</code> beside this file.</p>
</body></html>
"""
