"""``run_ablation.py`` sub-commands: run | plan | list | report | search."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.core.errors import BenchError


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs or []:
        key, eq, value = p.partition("=")
        if not eq or not key:
            raise BenchError(f"--set {p!r}: write KEY=VALUE with a dotted key, e.g. --set eval.num_samples=200")
        out[key.strip()] = value.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_ablation.py", description="Diffusion ablation bench: one study file, "
                                "one command, trustworthy and comparable numbers.")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("study", help="study file (YAML), e.g. ablations/quickstart.yaml")
        sp.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an unexpected error")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a base config key, e.g. --set eval.num_samples=200 (repeatable)")

    run = sub.add_parser("run", help="train and evaluate every configuration of a study, then write its report")
    common(run)
    run.add_argument("--devices", default="auto",
                     help="auto (every visible GPU, else CPU) | cpu | cpu*2 | cuda:0,cuda:1 (one worker each)")
    run.add_argument("--retries", type=int, default=2, help="retries of a job whose worker died (default 2)")
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    _executor_flags(run)
    run.add_argument("--shared-dir", default=None,
                     help="checkpoint/cache folder every node can read and write (Ray/Slurm); sets BENCH_CACHE_DIR")
    run.add_argument("--no-report", action="store_true", help="skip writing reports/<study>/")
    run.add_argument("--out", default="reports", help="folder for the report (default reports/)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    plan = sub.add_parser("plan", help="print the jobs of a study, which are done, and their order")
    common(plan)

    sub.add_parser("list", help="list every registry (samplers, schedules, models, ...) with its choices")

    rep = sub.add_parser("report", help="write reports/<study>/report.{md,html} and runs.csv from MLflow")
    common(rep)
    rep.add_argument("--out", default="reports", help="folder for the report (default reports/)")

    rescore = sub.add_parser("rescore", help="compute new metrics of a study's finished runs from their stored "
                             "samples and features (no sampling) and log them into the same runs")
    common(rescore)
    rescore.add_argument("--metrics", nargs="+", required=True, help="metric names, e.g. fd_dinov2 cmmd density")
    rescore.add_argument("--bootstrap", type=int, default=None,
                         help="resamples for 95%% bootstrap intervals (default: the study's eval.bootstrap)")
    rescore.add_argument("--device", default="cpu", help="device for the feature extractors (cpu | cuda:0)")
    rescore.add_argument("--out", default="reports", help="folder for the report (default reports/)")
    rescore.add_argument("--no-report", action="store_true", help="skip rewriting reports/<study>/")

    audit = sub.add_parser("audit", help="recompute each finished run's FID from its stored samples through "
                           "torch-fidelity and clean-fid, and print the differences with each protocol")
    common(audit)
    audit.add_argument("--device", default="cpu", help="device for the feature extractors (cpu | cuda:0)")
    audit.add_argument("--limit", type=int, default=None, help="audit only the first N runs")

    search = sub.add_parser("search", help="Optuna search over inference-time axes (the study's search: section)")
    common(search)
    search.add_argument("--storage", default=None,
                        help="Optuna storage: a database URL (postgresql://...), a journal file (*.log), "
                             "or default: an SQLite file per study in reports/<study>/")
    search.add_argument("--devices", default="auto", help="device for training and trials (auto | cpu | cuda:0)")
    search.add_argument("--n-trials", type=int, default=None, help="override search.n_trials")
    return p


def _executor_flags(run: argparse.ArgumentParser) -> None:
    """``--executor`` and the flags every executor declares (``register_executor(..., flags=)``)."""
    from bench.execute import EXECUTORS
    from bench.execute.registry import executor_flags

    extras = [(n, EXECUTORS.meta(n)["extra"]) for n in EXECUTORS.names() if EXECUTORS.meta(n).get("extra")]
    need = " and ".join(n for n, _ in extras)
    run.add_argument("--executor", default="local",  # the default: this machine, nothing to install
                     help=f"where jobs run: {', '.join(EXECUTORS.names())}" + (
                         f" ({need} need the extras: {' / '.join(f'pip install -e .[{e}]' for _, e in extras)})"
                         if extras else ""))
    for f in executor_flags():
        run.add_argument(f.cli, type=f.type, default=None, help=f.help)


def cmd_list() -> None:
    """Every registry with its choices; samplers with the options they declare, metrics with their
    outputs (direction arrows), executors with their CLI options."""
    from bench.data import DATASETS
    from bench.diffusion import ALL_OBJECTIVES as OBJECTIVES
    from bench.diffusion import GUIDANCE, LOSSES, PROCESSES, SAMPLERS, SCHEDULES, SPACINGS, VARIANCES
    from bench.execute import EXECUTORS
    from bench.metrics import EXTRACTORS, METRICS
    from bench.models import MODELS

    regs = (SAMPLERS, GUIDANCE, PROCESSES, SCHEDULES, SPACINGS, OBJECTIVES, VARIANCES, LOSSES, MODELS, DATASETS, EXTRACTORS,
            METRICS, EXECUTORS)
    _aligned([(reg.kind + ("es" if reg.kind.endswith("s") else "s"), ", ".join(reg.names())) for reg in regs], "")
    print("\nsampler options (sample.options):")
    _aligned([(name, ", ".join(f"{o.name}={o.default!r}{_range(o)}" for o in SAMPLERS.meta(name)["options"].values())
               or "none") for name in SAMPLERS.names()])  # fmt: skip
    print("\nguidance methods (sample.guidance_method, its sample.guidance_options):")
    _aligned([(name, ", ".join(f"{o.name}={o.default!r}{_range(o)}" for o in GUIDANCE.meta(name)["options"].values()))
              for name in GUIDANCE.names()])  # fmt: skip
    from bench.diffusion import TIME_SAMPLING

    print("\ntimestep densities (train.t_sampling, its train.t_sampling_options):")
    _aligned([(name, ", ".join(f"{o.name}={o.default!r}{_range(o)}" for o in TIME_SAMPLING.meta(name)["options"].values()))
              for name in TIME_SAMPLING.names()])  # fmt: skip
    print("\nmetric outputs (MLflow names; arrow = better):")
    arrows = {True: " ↑", False: " ↓", None: ""}
    _aligned([(name, ", ".join(f"{o.key}{arrows[o.higher_is_better]}" for o in METRICS.get(name).outputs))
              for name in METRICS.names()])


def _aligned(rows: list[tuple[str, str]], indent: str = "  ") -> None:
    """Print ``name  text`` rows with the text in one column, however long the longest name."""
    width = max((len(name) for name, _ in rows), default=0) + 2
    for name, text in rows:
        print(f"{indent}{name:<{width}}{text}")


def main(argv: list[str] | None = None) -> int:
    """A user's mistake is one message and exit status 2; an unexpected error is one line and 1
    (``--debug`` shows its traceback)."""
    from bench.execute.stop import Stopped, stop_line, stop_signals

    args = build_parser().parse_args(argv)
    try:
        with stop_signals():  # SIGINT/SIGTERM: a clean stop, one line, 130/143 (bench.execute.stop)
            return _dispatch(args)
    except (Stopped, KeyboardInterrupt) as e:
        stopped = e if isinstance(e, Stopped) else Stopped(2)
        print(stop_line(stopped, None if argv is None else ["run_ablation.py", *argv]), file=sys.stderr)
        return stopped.exit_status
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 (a bug or an environment problem: say what, offer the traceback)
        if args.debug:
            raise
        print(f"error: unexpected {type(e).__name__}: {e} (run again with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    import os

    if args.command == "list":
        cmd_list()
        return 0
    overrides = _overrides(args.set)
    if args.command == "run":
        from bench.pipeline import run_study

        if args.shared_dir:
            os.environ["BENCH_CACHE_DIR"] = args.shared_dir
        from bench.execute.registry import executor_flags

        options = {f.name: getattr(args, f.name) for f in executor_flags() if getattr(args, f.name) is not None}
        summary = run_study(args.study, tracking_uri=args.tracking_uri, devices=args.devices, retries=args.retries,
                            dry_run=args.dry_run, progress=not args.quiet, report=not args.no_report,
                            executor=args.executor, overrides=overrides, executor_options=options,
                            out_dir=args.out)
        return 1 if summary is not None and summary.failed else 0
    if args.command == "plan":
        from bench.execute import done_keys
        from bench.pipeline import load_with_overrides
        from bench.tracking import Tracker

        study = load_with_overrides(args.study, overrides)
        plan = study.plan()
        done = done_keys(plan, Tracker(study.name, args.tracking_uri))
        print(f"study {study.name!r}: {len(study.configs)} configurations")
        print(plan.summary(done))
        return 0
    if args.command == "report":
        from bench.pipeline import load_with_overrides
        from bench.report import build_report

        study = load_with_overrides(args.study, overrides)
        print(build_report(study, tracking_uri=args.tracking_uri, out_dir=args.out))
        return 0
    if args.command == "rescore":
        from bench.rescore import rescore_study

        rescore_study(args.study, args.metrics, tracking_uri=args.tracking_uri, bootstrap=args.bootstrap,
                      device=args.device, overrides=overrides, report=not args.no_report, out_dir=args.out)
        return 0
    if args.command == "audit":
        from bench.rescore import audit_study

        audit_study(args.study, tracking_uri=args.tracking_uri, device=args.device, overrides=overrides,
                    limit=args.limit)
        return 0
    if args.command == "search":
        from bench.pipeline import load_with_overrides
        from bench.search import run_search

        study = load_with_overrides(args.study, overrides)
        run_search(study, tracking_uri=args.tracking_uri, storage=args.storage, devices=args.devices,
                   n_trials=args.n_trials)
        return 0
    raise AssertionError(args.command)


def _range(o: Any) -> str:
    """How an option's allowed values read: ' in [0, 1]', ' >= 0', ' (true/false)'."""
    if o.type is bool:
        return " (true/false)"
    if o.type is str:
        return f" in {{{', '.join(o.choices)}}}"
    if o.low is not None and o.high is not None:
        return f" in [{o.low:g}, {o.high:g}]"
    return f" >= {o.low:g}" if o.low is not None else (f" <= {o.high:g}" if o.high is not None else "")
