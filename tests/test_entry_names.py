"""An entry is known in one place: a registered name is written only in its own module.

A string literal equal to a metric's, guidance method's, sampler's or executor's name outside the
module that registers it (``Registry.origin``) is a question its registry entry should have
answered (``if name == "fid"``, ``{"is": "is_mean"}``). Docstrings and ``__all__`` are not scanned;
the defaults and the other uses that stay are listed in ``ALLOWED``, each with its count and why.
Checked like ``tests/test_architecture.py``'s layer rules: by parsing every module with ``ast``.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import bench.diffusion
import bench.execute
import bench.metrics
from bench.core.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
REGISTRIES: dict[str, Registry] = {
    "metric": bench.metrics.METRICS,
    "guidance method": bench.diffusion.GUIDANCE,
    "sampler": bench.diffusion.SAMPLERS,
    "executor": bench.execute.EXECUTORS,
}

_PERF = "a benchmark's fixed workload (bench.perf measures one named configuration on purpose)"
_TF = "torch-fidelity's own vocabulary (its flags isc / fid / kid / prc and result keys), not a registry lookup"
# (file, name) -> (times it may appear, why). Keep it short: every line here is a name someone must find.
ALLOWED: dict[tuple[str, str], tuple[int, str]] = {
    # defaults: a default has to name one entry
    ("bench/core/sections.py", "fid"): (1, "default of eval.metrics"),
    ("bench/core/sections.py", "cfg"): (1, "default of sample.guidance_method"),
    ("bench/core/sections.py", "ddim"): (1, "default of sample.sampler"),
    ("bench/diffusion/core.py", "cfg"): (2, "defaults of Diffusion.conditioning / guided calls"),
    ("bench/metrics/fidelity.py", "fid"): (1 + 3, "default of compute_metrics(metrics=); " + _TF),
    ("bench/metrics/fidelity.py", "is"): (1, "default of compute_metrics(metrics=)"),
    ("bench/metrics/fidelity.py", "kid"): (1 + 1, "default of compute_metrics(metrics=); " + _TF),
    ("bench/metrics/fidelity.py", "precision"): (1 + 2, "default of compute_metrics(metrics=); " + _TF),
    ("bench/metrics/fidelity.py", "recall"): (1 + 2, "default of compute_metrics(metrics=); " + _TF),
    ("bench/study/search_objectives.py", "fid"): (1, "default objective of a search"),
    ("bench/cli.py", "local"): (1, "default of run --executor"),
    ("bench/diffusion/request.py", "ddim"): (1, "default of SampleRequest.sampler"),
    ("bench/diffusion/request.py", "cfg"): (1, "default of SampleRequest.guidance_method"),
    ("bench/pipeline.py", "local"): (1, "default of run_study(executor=)"),
    # another vocabulary that happens to spell a registered name
    ("bench/metrics/extractors.py", "fid"): (1, _TF),
    ("bench/metrics/extractors.py", "kid"): (1, _TF),
    ("bench/execute/slurm.py", "local"): (3, "submitit's executor names (slurm | local), not the bench's"),
    ("bench/diffusion/ode.py", "dopri5"): (1, "torchdiffeq's method name (odeint(method=)), not a registry lookup"),
    ("bench/diffusion/vlb.py", "nll"): (1, "a progress bar's label"),
    ("bench/perf/gpu.py", "precision"): (3, "a row's numeric precision (fp32 / bf16), not the metric"),
    ("bench/metrics/accuracy.py", "class_accuracy"): (1, "the function's own name in its error messages"),
    # a use that is about one entry by purpose
    ("bench/metrics/defs/fid.py", "kid"): (1, "FID's advice names the metric that works with few samples"),
    ("bench/rescore.py", "fid"): (4, "audit recomputes FID through both FID backends: FID by purpose"),
    ("bench/search/run.py", "local"): (1, "a search trains its one base model on this machine"),
    # benchmarks
    ("bench/perf/grid.py", "ddim"): (1, _PERF),
    ("bench/perf/drill.py", "ddim"): (1, _PERF),
    ("bench/perf/drill.py", "nll"): (1, _PERF),
    ("bench/perf/grid.py", "nll"): (1, _PERF),
    ("bench/perf/gpu.py", "ddim"): (1, _PERF),
    ("bench/perf/gpu.py", "fid"): (2, _PERF),
    ("bench/perf/sampler.py", "euler"): (1, _PERF),
    ("bench/perf/sampler.py", "dpm-solver++"): (1, _PERF),
    ("bench/perf/sampler.py", "ddim"): (3, _PERF),
    ("bench/perf/metrics.py", "fid"): (1, _PERF),
    ("bench/perf/metrics.py", "is"): (2, _PERF),
    ("bench/perf/metrics.py", "kid"): (2, _PERF),
    ("bench/perf/metrics.py", "precision"): (1, _PERF),
    ("bench/perf/metrics.py", "recall"): (1, _PERF),
    ("bench/perf/plan.py", "fid"): (2, _PERF),
    ("bench/perf/plan.py", "kid"): (1, _PERF),
    ("bench/perf/train.py", "precision"): (1, _PERF),
    ("bench/perf/ipndm.py", "euler"): (1, _PERF),
    ("bench/perf/ipndm.py", "dpm-solver++"): (1, _PERF),
    ("bench/perf/ipndm.py", "ipndm"): (1, _PERF),
    ("bench/perf/ipndm.py", "fid"): (1, _PERF),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant but docstrings and the names in ``__all__``."""
    tree = ast.parse(source)
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body:
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip.add(id(body[0].value))
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            skip |= {id(c) for c in ast.walk(node.value)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def scan() -> tuple[Counter, dict[tuple[str, str], list[str]]]:
    """Counts of (file, name) for every registered name written outside its own module, and where."""
    counts: Counter = Counter()
    where: dict[tuple[str, str], list[str]] = {}
    for path in sorted((ROOT / "bench").rglob("*.py")):
        mod, rel = module_name(path), str(path.relative_to(ROOT))
        for line, text in literals(path.read_text()):
            for kind, reg in REGISTRIES.items():
                if text in reg and reg.origin(text) != mod:
                    counts[rel, text] += 1
                    where.setdefault((rel, text), []).append(f"{rel}:{line}: {kind} {text!r}")
    return counts, where


def test_registered_names_are_written_only_in_their_own_module() -> None:
    counts, where = scan()
    extra = [loc for key, n in counts.items() if n > ALLOWED.get(key, (0, ""))[0] for loc in where[key]]
    assert not extra, (
        "a registered name is written outside its own module; ask its registry entry instead (declare what "
        "you need on the entry: MetricDef, register_guidance, register_executor, register_sampler), or, for a "
        "default, add it to ALLOWED with why:\n  " + "\n  ".join(extra))
    stale = {key: (allowed, counts.get(key, 0)) for key, (allowed, _) in ALLOWED.items() if counts.get(key, 0) < allowed}
    assert not stale, f"ALLOWED lists more than is there (allowed, found); lower it: {stale}"


def test_the_scan_sees_what_it_checks() -> None:
    src = '"""fid in a docstring"""\n__all__ = ["fid"]\ndef f(m):\n    """kid"""\n    return m == "fid"\n'
    assert literals(src) == [(5, "fid")]
    assert bench.metrics.METRICS.origin("fid") == "bench.metrics.defs.fid"
    assert bench.execute.EXECUTORS.origin("ray") == "bench.execute.ray"
    assert bench.diffusion.SAMPLERS.origin("heun") == "bench.diffusion.samplers.euler"
    counts, _ = scan()
    assert counts["bench/core/sections.py", "ddim"] == 1  # a default is found (and allowed)
    assert sum(counts.values()) == sum(n for n, _ in ALLOWED.values())
