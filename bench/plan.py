"""The job DAG of a study: VAE -> TRAIN -> EVAL, deduplicated by content hash.

One VAE job per ``cfg.vae_key()`` (latent runs only), one TRAIN job per ``cfg.train_key()``
(depending on its VAE), one EVAL job per ``cfg.key()`` (depending on its TRAIN). A grid of 3
objectives x 5 step counts x 4 etas is 3 TRAIN + 60 EVAL jobs. Nothing here runs anything: an
executor asks :meth:`Plan.ready` for jobs whose dependencies are done, and done keys (found in
MLflow by the caller) let a re-run skip finished work.

Scheduling is list scheduling by *downstream work*: a job's priority is its own cost plus the
cost of everything that waits on it (each EVAL has one TRAIN, each TRAIN at most one VAE, so the
DAG is a forest and the sums count nothing twice). Among ready jobs the one unlocking the most
work goes first, so long trainings start early and workers are not left idle at the end.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.bulk import no_gc
from bench.core.config import RunConfig
from bench.jobs.cost import _elements, _model_factor, eval_cost, network_passes, train_cost, vae_cost  # noqa: F401 (re-exported)

KINDS = ("vae", "train", "eval")


@dataclass(frozen=True)
class Job:
    """One unit of work. ``config`` is the first run that needs it (for a TRAIN job only its
    training sections matter, for a VAE job only data and vae)."""

    kind: str  # "vae" | "train" | "eval"
    key: str  # content hash: cfg.vae_key(), cfg.train_key() or cfg.key()
    config: RunConfig
    deps: tuple[str, ...]  # keys of the jobs that must finish first
    cost: float  # estimated work in arbitrary units (network evaluations x pixels)
    label: str  # short human description


@dataclass
class Plan:
    """Jobs by key (VAEs, TRAINs, EVALs in order of first appearance) and their dependents.

    :meth:`ready` and :meth:`needed` walk every job (a few ms per 10,000 jobs): cheap next to
    any job, but an executor should call them once per finished job, not in a busy loop."""

    jobs: dict[str, Job]
    children: dict[str, list[str]] = field(default_factory=dict)
    priority: dict[str, float] = field(default_factory=dict)  # cost + all downstream cost

    def __post_init__(self) -> None:
        if not self.children:
            for job in self.jobs.values():
                for d in job.deps:
                    self.children.setdefault(d, []).append(job.key)
        # EVALs, then TRAINs, then VAEs: every job after all of its dependents
        by_kind: dict[str, list[Job]] = {kind: [] for kind in KINDS}
        for job in self.jobs.values():
            by_kind[job.kind].append(job)
        self._bottom_up = [j for kind in reversed(KINDS) for j in by_kind[kind]]
        self._count = Counter({kind: len(js) for kind, js in by_kind.items() if js})
        if not self.priority:
            for job in self._bottom_up:
                kids = self.children.get(job.key, ())
                self.priority[job.key] = job.cost + sum(self.priority[k] for k in kids)
        # stable sort: equal priorities keep the order of first appearance
        self._ranked = [self.jobs[k] for k in sorted(self.jobs, key=self.priority.__getitem__, reverse=True)]
        self._rank = {j.key: i for i, j in enumerate(self._ranked)}

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs.values())

    def __contains__(self, key: object) -> bool:
        return key in self.jobs

    def __getitem__(self, key: str) -> Job:
        return self.jobs[key]

    def by_kind(self, kind: str) -> list[Job]:
        return [j for j in self.jobs.values() if j.kind == kind]

    def needed(self, done: Iterable[str] = frozenset()) -> set[str]:
        """Keys still to run: EVALs not done, and TRAIN / VAE jobs not done that a needed job
        waits on (a TRAIN whose evaluations are all done is not re-run)."""
        done = set(done)
        need: set[str] = set()
        for job in self._bottom_up:
            if job.key in done:
                continue
            if job.kind == "eval" or any(k in need for k in self.children.get(job.key, ())):
                need.add(job.key)
        return need

    def ready(self, done: Iterable[str], running: Iterable[str] = frozenset()) -> list[Job]:
        """Needed jobs, not running, whose dependencies are all done; most downstream work first."""
        done, running = set(done), set(running)
        need = self.needed(done)
        return [
            j for j in self._ranked
            if j.key in need and j.key not in running and all(d in done for d in j.deps)
        ]  # fmt: skip

    def order(self, done: Iterable[str] = frozenset()) -> list[Job]:
        """A topological order of the needed jobs, as one worker taking :meth:`ready`'s first job
        at each step would run them."""
        return list(self.iter_order(done))

    def iter_order(self, done: Iterable[str] = frozenset(), need: set[str] | None = None) -> Iterator[Job]:
        """:meth:`order`, lazily (``need``: :meth:`needed` of ``done``, when already known)."""
        done = set(done)
        need = self.needed(done) if need is None else need
        rank, jobs = self._rank, self.jobs
        heap = [(rank[k], k) for k in need if done.issuperset(jobs[k].deps)]
        heapq.heapify(heap)
        emitted: set[str] = set()
        while heap:
            _, key = heapq.heappop(heap)
            emitted.add(key)
            yield jobs[key]
            for child in self.children.get(key, ()):
                if child in need and all(d in done or d in emitted for d in jobs[child].deps):
                    heapq.heappush(heap, (rank[child], child))

    def frontier(self, done: Iterable[str] = frozenset()) -> Frontier:
        """An incremental scheduler over the needed jobs (see :class:`Frontier`)."""
        return Frontier(self, done)

    def summary(self, done_keys: Iterable[str] = frozenset(), limit: int = 8) -> str:
        """Counts per kind (total, done, to run, estimated cost) and the first jobs in order."""
        jobs = self.jobs
        done = set(done_keys) & jobs.keys()
        need = self.needed(done)
        total = self._count
        n_done = Counter(jobs[k].kind for k in done)
        n_need: Counter = Counter()
        cost: Counter = Counter()
        for k in need:
            job = jobs[k]
            n_need[job.kind] += 1
            cost[job.kind] += job.cost
        lines = [f"{'kind':<6} {'jobs':>7} {'done':>7} {'to run':>7} {'est. cost':>10}"]
        for kind in KINDS:
            lines.append(
                f"{kind:<6} {total[kind]:>7} {n_done[kind]:>7} {n_need[kind]:>7} {cost[kind]:>10.3g}"
            )
        lines.append(
            f"{'total':<6} {len(self.jobs):>7} {len(done):>7} {len(need):>7} {sum(cost.values()):>10.3g}"
        )
        skipped = len(self.jobs) - len(done) - len(need)
        if skipped:
            lines.append(f"({skipped} not done but not needed: every job waiting on them is done)")
        first = list(itertools.islice(self.iter_order(done, need), limit))
        if first:
            lines.append(f"order (first {len(first)} of {len(need)}):")
            lines += [f"  {i + 1:>3}. {j.kind:<5} {j.key}  {j.label}" for i, j in enumerate(first)]
        else:
            lines.append("nothing to run: every job is done")
        return "\n".join(lines)


class Frontier:
    """Incremental scheduling over a plan, O(log n) per job (for executors with many jobs).

    >>> f = Frontier(p, done)              # or p.frontier(done)
    >>> job = f.take()                     # best ready job, now running (None: wait or finished)
    >>> f.finish(job.key)                  # done: its dependents may become ready
    >>> f.fail(job.key)                    # failed: drop everything that waits on it
    """

    def __init__(self, plan: Plan, done: Iterable[str] = frozenset()) -> None:
        self.plan = plan
        self.done = set(done)
        self.pending = plan.needed(self.done)  # needed, not yet taken
        self.running: set[str] = set()
        self.dropped: set[str] = set()
        self._heap = [(plan._rank[k], k) for k in self.pending if self._deps_done(k)]
        heapq.heapify(self._heap)

    def _deps_done(self, key: str) -> bool:
        return all(d in self.done for d in self.plan.jobs[key].deps)

    def take(self) -> Job | None:
        """The ready job with the most downstream work, marked running; None when none is ready."""
        while self._heap:
            _, key = heapq.heappop(self._heap)
            if key in self.pending:
                self.pending.discard(key)
                self.running.add(key)
                return self.plan.jobs[key]
        return None

    def finish(self, key: str) -> None:
        self.running.discard(key)
        self.done.add(key)
        for child in self.plan.children.get(key, ()):
            if child in self.pending and self._deps_done(child):
                heapq.heappush(self._heap, (self.plan._rank[child], child))

    def fail(self, key: str) -> list[str]:
        """Forget ``key`` and every pending job downstream of it; returns the dropped keys."""
        self.running.discard(key)
        stack, dropped = list(self.plan.children.get(key, ())), []
        while stack:
            k = stack.pop()
            if k in self.pending:
                self.pending.discard(k)
                dropped.append(k)
                stack.extend(self.plan.children.get(k, ()))
        self.dropped.update([key, *dropped])
        return dropped

    def finished(self) -> bool:
        """Nothing pending or running."""
        return not self.pending and not self.running


def plan(configs: Iterable[RunConfig], axes: Iterable[str] | None = None) -> Plan:
    """The deduplicated job DAG of ``configs`` (see the module docstring). ``axes`` (dotted keys,
    e.g. a study's) name what job labels show; by default the keys that differ between configs."""
    with no_gc():  # a job and its tuples per point, none in a cycle (bench.core.bulk)
        return _plan(list(configs), axes)


def _plan(configs: list[RunConfig], axes: Iterable[str] | None) -> Plan:
    labels = _Labels(configs, axes)
    per_element: dict[tuple[int, ...], float] = {}  # memos by section identity, alive for this call
    per_eval: dict[tuple[Any, ...], float] = {}
    per_train: dict[tuple[Any, ...], str] = {}
    vaes: dict[str, Job] = {}
    trains: dict[str, Job] = {}
    evals: dict[str, Job] = {}
    for cfg in configs:
        key = cfg.key()
        if key in evals:
            continue
        ids = (id(cfg.data), id(cfg.model), id(cfg.vae))
        trained_as = (*ids, id(cfg.diffusion), id(cfg.train), cfg.seed)  # what train_key() reads
        tkey = per_train.get(trained_as)
        if tkey is None:
            tkey = per_train[trained_as] = cfg.train_key()
        vkey = cfg.vae_key()
        unit = per_element.get(ids)
        if unit is None:
            unit = per_element[ids] = _elements(cfg) * _model_factor(cfg.model.backbone)
        cost_at = (id(cfg.sample), id(cfg.eval), id(cfg.diffusion), unit)
        cost = per_eval.get(cost_at)
        if cost is None:
            cost = per_eval[cost_at] = eval_cost(cfg, unit)
        if cfg.model.pretrained is not None:  # a node with no training: the eval reads the checkpoint
            labels.trained.setdefault(tkey, f"pretrained {Path(cfg.model.pretrained).name}")
            evals[key] = Job("eval", key, cfg, (), cost, labels.eval(cfg, tkey))
            continue
        if vkey is not None and vkey not in vaes:
            vaes[vkey] = Job("vae", vkey, cfg, (), vae_cost(cfg), labels.vae(cfg))
        if tkey not in trains:
            deps = (vkey,) if vkey else ()
            trains[tkey] = Job("train", tkey, cfg, deps, train_cost(cfg, unit), labels.train(cfg))
        needs = (tkey,)
        guide = cfg.guide_config()
        if guide is not None:  # autoguidance: the guiding model is a TRAIN node of its own, shared
            gkey = guide.train_key()
            if gkey not in trains:
                label = f"{labels.train(guide)} (guide: {cfg.sample.guide})"
                trains[gkey] = Job("train", gkey, guide, (vkey,) if vkey else (), train_cost(guide), label)
            needs = (tkey, gkey)
        evals[key] = Job("eval", key, cfg, needs, cost, labels.eval(cfg, tkey))
    return Plan({**vaes, **trains, **evals})


class _Labels:
    """Short job labels naming the axes' values (``eval steps=10 eta=0.5 | objective=v``)."""

    TRAINING = ("data", "model", "vae", "diffusion", "train", "seed")

    def __init__(self, configs: list[RunConfig], axes: Iterable[str] | None) -> None:
        keys = list(axes) if axes is not None else _varying(configs)
        fields = [k.rpartition(".")[2] for k in keys]
        parts = [(k, fields[i] if fields.count(fields[i]) == 1 else k) for i, k in enumerate(keys)]
        self.training = [
            (k.split(".") if "." in k else [k], short)
            for k, short in parts
            if k.split(".")[0] in self.TRAINING
        ]
        self.inference = [(k.split("."), short) for k, short in parts if k.split(".")[0] not in self.TRAINING]
        self.trained: dict[str, str] = {}
        self.inferred: dict[tuple[int, int], str] = {}

    @staticmethod
    def _show(cfg: RunConfig, parts: list[tuple[list[str], str]]) -> str:
        out = []
        for path, short in parts:
            value: object = cfg
            for p in path:
                value = getattr(value, p, None)
            out.append(f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}")
        return " ".join(out)

    def vae(self, cfg: RunConfig) -> str:
        return f"vae {cfg.data.dataset} {vae_label(cfg)}"

    def train(self, cfg: RunConfig) -> str:
        shown = self.trained[cfg.train_key()] = self._show(cfg, self.training)
        return f"train {shown}" if shown else f"train {cfg.data.dataset} {cfg.model.backbone} seed={cfg.seed}"

    def eval(self, cfg: RunConfig, train_key: str) -> str:
        ids = (id(cfg.sample), id(cfg.eval))  # memo by section identity, alive during plan()
        infer = self.inferred.get(ids)
        if infer is None:
            s = cfg.sample
            infer = (
                self._show(cfg, self.inference)
                or f"{s.sampler} steps={s.steps} eta={s.eta:g} w={s.guidance:g}"
            )
            self.inferred[ids] = infer
        train = self.trained[train_key]
        return f"eval {infer} | {train}" if train else f"eval {infer}"


def _varying(configs: list[RunConfig]) -> list[str]:
    """Dotted keys whose values differ between ``configs`` (compared once per section instance)."""
    out = []
    for section in ("data", "model", "vae", "diffusion", "train", "sample", "eval"):
        distinct = {id(v): v for v in (getattr(c, section) for c in configs) if v is not None}
        values = [dataclasses.asdict(v) for v in distinct.values()]
        if len(values) > 1:
            out += [f"{section}.{k}" for k in values[0] if len({repr(v[k]) for v in values}) > 1]
    if len({c.seed for c in configs}) > 1:
        out.append("seed")
    return out


def vae_label(cfg: RunConfig) -> str:
    v = cfg.vae
    assert v is not None
    return f"f={v.factor} c={v.latent_channels} steps={v.steps}"
