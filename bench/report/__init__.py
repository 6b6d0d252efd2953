"""Reports: a study's MLflow runs -> paper-style tables (Markdown / HTML), seaborn plots, and
published numbers beside ours.

>>> from bench.report import build_report
>>> folder = build_report(load_study("ablations/ddim_steps_eta.yaml"))   # reports/ddim-steps-eta/
>>> (folder / "report.html").exists(), (folder / "report.md").exists(), (folder / "runs.csv").exists()

mlflow, seaborn and matplotlib are imported when a report is built, not on ``import bench.report``
(which imports pandas and PyYAML only).
"""

from bench.report.render import build_report, study_tables
from bench.study.baselines import Baseline, BaselineResult, PaperValue, Protocol, load_baselines
from bench.study.report_specs import PLOT_KINDS, PlotSpec, TableSpec, validate_report_specs

__all__ = [
    "PLOT_KINDS",
    "Baseline",
    "BaselineResult",
    "PaperValue",
    "PlotSpec",
    "Protocol",
    "TableSpec",
    "build_report",
    "study_tables",
    "load_baselines",
    "validate_report_specs",
]
