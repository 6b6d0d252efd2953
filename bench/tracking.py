"""The only module that imports mlflow: the driver's writer (one writer, no lock races) and the
readers the report uses (:func:`fetch_runs`, :func:`metric_history`, :func:`download_artifact`).

Layout (DESIGN.md, 'Tracking contract'): experiment = study name; one run per job; tags
``bench.key``, ``bench.train_key``, ``bench.study``, ``bench.kind``, ``bench.label``;
params = the flattened config; metrics with fixed names; protocol as ``protocol.*`` tags;
artifacts ``config.yaml``, ``samples.png`` (eval), ``loss_curve.png`` (train).
Resume: a key with a FINISHED run is done; a RUNNING run whose driver is gone is marked KILLED.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.network import connect_timeout

KEY_TAG = "bench.key"
KIND_TAG = "bench.kind"
DRIVER_TAG = "bench.driver"
ERROR_TAG = "bench.error"
LABEL_TAG = "bench.label"
MAX_PARAM_LEN = 6000
# The MLflow UI's saved views (3.x, ``src/experiment-tracking``: ``SHARE_STATE_TAG_PREFIX``): an
# experiment tag ``mlflow.sharedViewState.<id>`` holds {name, createdAt, updatedAt, state}, ``state``
# the JSON of the runs page's search facets (``orderByKey``, ``orderByAsc``, ...) and UI state
# (``selectedColumns``, ...); the URL parameter ``viewStateShareKey=<id>`` applies it on load.
VIEW_ID = "bench-study-view"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"


def resolve_uri(tracking_uri: str | None) -> str | None:
    """``--tracking-uri`` > ``$MLFLOW_TRACKING_URI`` > MLflow's default (./mlflow.db)."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def check_server(uri: str | None, timeout: float | None = None) -> None:
    """For an http(s) tracking URI, fail within ``timeout`` seconds (default 10, or
    ``$BENCH_CONNECT_TIMEOUT``) with one clear message."""
    if not uri or not uri.startswith(("http://", "https://")):
        return
    timeout = connect_timeout(10.0, timeout)
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise BenchError(f"tracking server {uri} is unreachable ({e}); start it with "
                         f"`mlflow server --host HOST --port PORT --backend-store-uri sqlite:///mlflow.db` "
                         "or fix --tracking-uri / MLFLOW_TRACKING_URI") from None


class Tracker:
    """Writes one MLflow run per job of a study."""

    def __init__(self, study_name: str, tracking_uri: str | None = None) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.uri = resolve_uri(tracking_uri)
        check_server(self.uri)
        if self.uri:
            mlflow.set_tracking_uri(self.uri)
        self.study = study_name
        # Workers starting together on one fresh store (search workers, a driver beside a report) would
        # both create MLflow's SQLite tables ("duplicate column name") or the experiment ("already
        # exists"): the store is opened under a lock beside its file, and a lost race to create the
        # experiment (a server's store) reads the winner's.
        with _store_lock(self.uri or mlflow.get_tracking_uri()):
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment(study_name)
        self.driver = f"{socket.gethostname()}:{os.getpid()}"

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=_artifact_location(self.uri, name))
        except MlflowException:
            exp = self.client.get_experiment_by_name(name)  # another process created it meanwhile
            if exp is None:
                raise
            return exp.experiment_id

    def describe(self, question: str, metrics: list[tuple[str, bool | None]] | None = None,
                 params: list[str] | None = None, names: list[str] | None = None) -> None:
        """Tag the experiment so the MLflow UI (3.x) opens it as model-training work on its runs:
        the kind, the study's question as its description, the metric its first table reports and a
        saved view (:func:`view_state`) showing ``metrics`` ((name, higher is better) pairs, the
        primary one first) and the varying ``params``, sorted by the primary metric, its Run Name column
        wide enough for the longest of ``names`` (the study's run names)."""
        tags = {"mlflow.experimentKind": "custom_model_development", "mlflow.note.content": question.strip()}
        if metrics:
            tags["mlflow.experiment.primaryMetric.name"] = metrics[0][0]
        tags[VIEW_TAG] = view_state(metrics or [], params or [], name=f"{self.study}: metrics and axes",
                                    longest=max(map(len, names or [""])))
        for key, value in tags.items():
            self.client.set_experiment_tag(self.experiment_id, key, value)

    def runs_view(self, ui: str | None = None) -> str:
        """The URL of this study's runs in the MLflow UI: the server itself when tracking to one,
        else ``ui`` (default ``mlflow ui``'s http://127.0.0.1:5000). ``workflowType=machine_learning``
        opens the UI's model-training view, whose experiment page is the runs table (3.x opens
        the GenAI overview otherwise, whatever the experiment's kind); ``viewStateShareKey`` names
        the saved view :meth:`describe` stored, which the UI applies on first load (on the ``/runs``
        route: ``/#/experiments/<id>`` redirects there and drops the URL's parameters)."""
        base = (ui or (self.uri if str(self.uri).startswith(("http://", "https://")) else "http://127.0.0.1:5000"))
        url = f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
        if VIEW_TAG in self.client.get_experiment(self.experiment_id).tags:
            url += f"&viewStateShareKey={VIEW_ID}"
        return url

    # --- reading ------------------------------------------------------------------------------
    def runs(self, kind: str | None = None, status: str | None = None) -> list[Any]:
        filters = [f"tags.`{KIND_TAG}` = '{kind}'"] if kind else []
        if status:
            filters.append(f"attributes.status = '{status}'")
        out, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], " and ".join(filters), max_results=5000,
                                           page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def finished_keys(self) -> set[str]:
        return {r.data.tags[KEY_TAG] for r in self.runs(status="FINISHED") if KEY_TAG in r.data.tags}

    def mark_orphans_killed(self, reason: str = "cut off: its driver stopped before the job ended") -> int:
        """RUNNING runs whose driver process on this host is gone were cut off: mark them KILLED.
        This driver's own RUNNING runs count too (called after its grid ended, none is in flight)."""
        n = 0
        host = socket.gethostname()
        for r in self.runs(status="RUNNING"):
            driver = r.data.tags.get(DRIVER_TAG, "")
            drv_host, _, pid = driver.partition(":")
            if drv_host == host and pid.isdigit() and pid_alive(int(pid)) and int(pid) != os.getpid():
                continue  # another live driver on this machine owns it
            if drv_host and drv_host != host:
                continue  # a driver on another machine owns it
            self.client.set_tag(r.info.run_id, ERROR_TAG, reason)
            self.client.set_terminated(r.info.run_id, "KILLED")
            n += 1
        return n

    # --- writing ------------------------------------------------------------------------------
    def start(self, kind: str, key: str, label: str, params: dict[str, Any], tags: dict[str, str],
              parent_run_id: str | None = None) -> str:
        name = run_name(kind, label)
        all_tags = {KEY_TAG: key, KIND_TAG: kind, "bench.study": self.study, LABEL_TAG: label,
                    DRIVER_TAG: self.driver, "mlflow.runName": name, **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def finish(self, run_id: str, result: dict[str, Any]) -> None:
        """Log a worker's result (metrics, histories, tags, artifacts) and end the run FINISHED."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in result.get("metrics", {}).items() if v is not None]
        for name, history in result.get("history", {}).items():
            metrics += [Metric(name, float(v), now, int(step)) for step, v in history]
        for i in range(0, len(metrics), 900):
            self.client.log_batch(run_id, metrics=metrics[i:i + 900])
        self.set_tags(run_id, result.get("tags", {}))
        for path in result.get("artifacts", []):
            if Path(path).exists():
                self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, "FINISHED")

    def log_metrics(self, run_id: str, values: dict[str, float]) -> None:
        """Add metrics to a run (finished or not): what ``rescore`` computes later."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in sorted(values.items())]
        for i in range(0, len(items), 900):
            self.client.log_batch(run_id, metrics=items[i:i + 900])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def fail(self, run_id: str, reason: str, status: str = "FAILED") -> None:
        self.client.set_tag(run_id, ERROR_TAG, reason[:5000])
        self.client.set_terminated(run_id, status)

    def log_config(self, run_id: str, config: dict[str, Any]) -> None:
        import yaml

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            self.client.log_artifact(run_id, str(path))


def view_state(metrics: list[tuple[str, bool | None]], params: list[str], name: str, longest: int = 0) -> str:
    """A saved view of the runs page (the value of :data:`VIEW_TAG`): the ``metrics`` and ``params``
    columns visible, sorted by the first metric (ascending unless higher is better). Column ids are
    the UI's canonical keys, ``metrics.`fid``` and ``params.`sample.steps```."""
    import json

    state: dict[str, Any] = {
        "selectedColumns": [f"metrics.`{m}`" for m, _ in metrics] + [f"params.`{p}`" for p in params],
    }
    if longest:  # the UI applies widths to the columns of columnOrder; the others keep their place
        run_col = "attributes.`Run Name`"
        state.update(columnOrder=[run_col], columnWidths={run_col: min(480, max(160, 7 * longest + 60))})
    if metrics:
        state["orderByKey"] = f"metrics.`{metrics[0][0]}`"
        state["orderByAsc"] = not metrics[0][1]
    now = int(time.time() * 1000)
    return json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


# How the values of an axis read in a run name: a name alone, steps and guidance as a paper writes them.
_RANK = {"sampler": 0, "eta": 1, "steps": 2, "guidance": 3}


def run_name(kind: str, label: str) -> str:
    """A run name short enough for the MLflow UI's column and distinct from its first characters:
    the job label ``eval steps=10 guidance=2 sampler=ddim eta=0 | objective=eps`` becomes
    ``ddim eta=0 10 steps w=2 eps`` (sampler first, then its knobs, then the training axes; names
    stand alone). An eval job's name has no prefix, other kinds start with theirs (``train eps``);
    the full label stays in the ``bench.label`` tag."""
    label = label.removeprefix(f"{kind} ")
    inference, _, training = label.partition(" | ")
    if kind != "eval":
        inference, training = "", label
    sampler = next((t.partition("=")[2] for t in inference.split() if _short(t) == "sampler"), None)
    inference = " ".join(t for t in inference.split() if not (sampler and _ignored(sampler, t)))
    words = [_word(t) for t in sorted(inference.split(), key=lambda t: _RANK.get(_short(t), 9) if "=" in t else -1)]
    words += [_word(t) for t in training.split()]
    name = " ".join(w for w in words if w)
    return (name if kind == "eval" else f"{kind} {name}")[:250]


def _ignored(sampler: str, token: str) -> bool:
    """An eta or sampler option the sampler does not declare (DDPM's eta): left out of its name."""
    key = token.partition("=")[0]
    if _short(token) != "eta" and "options." not in key:
        return False
    from bench.diffusion.samplers.registry import SAMPLERS, declared_options

    return sampler in SAMPLERS and _short(token) not in declared_options(sampler)


def _short(token: str) -> str:
    return token.partition("=")[0].rpartition(".")[2]


def _word(token: str) -> str:
    key, eq, value = token.partition("=")
    if not eq:
        return token
    short = _short(token)
    if short == "steps" and key in ("steps", "sample.steps"):
        return f"{value} steps"
    if short == "guidance" and key in ("guidance", "sample.guidance"):
        return f"w={value}"
    try:
        float(value)
    except ValueError:
        if value not in ("True", "False", "None"):
            return value  # a name (ddim, eps, cosine) reads alone
    return f"{key}={value}"


def _artifact_location(uri: str | None, study: str) -> str | None:
    """With a SQLite store, artifacts go beside the database file (not into the working folder)."""
    if not uri or not uri.startswith("sqlite:///"):
        return None  # MLflow's default, or the server's own artifact store
    db = Path(uri[len("sqlite:///"):]).resolve()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study)
    return (db.parent / "mlartifacts" / safe).as_uri()


def _store_lock(uri: str) -> Any:
    """Held: an exclusive lock beside an SQLite store's file (:func:`bench.core.paths.build_lock`);
    nothing for a server, an in-memory store, or a folder this process cannot write a lock into."""
    from contextlib import ExitStack

    from bench.core.paths import build_lock

    held = ExitStack()
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    if path and not path.startswith(":memory:"):
        try:
            held.enter_context(build_lock(path))
        except OSError:
            pass
    return held


def _param_str(v: Any) -> str:
    s = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return s[:MAX_PARAM_LEN]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- reading for reports ---------------------------------------------------------------------


@contextmanager
def using_uri(uri: str | None) -> Iterator[str]:
    """Use ``uri`` as MLflow's tracking URI inside the block (the current one when None)."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    if uri is not None:
        mlflow.set_tracking_uri(uri)
    try:
        yield mlflow.get_tracking_uri()
    finally:
        if uri is not None:
            mlflow.set_tracking_uri(previous)


def fetch_runs(experiment: str) -> Any:
    """Every run of ``experiment`` (the current tracking URI) as ``mlflow.search_runs`` gives it
    (a pandas DataFrame)."""
    import mlflow

    if mlflow.MlflowClient().get_experiment_by_name(experiment) is None:
        raise BenchError(
            f"no MLflow experiment named {experiment!r} at {mlflow.get_tracking_uri()}; run the study "
            "first (run_ablation.py run <study file>), or pass the tracking URI it was run with (--tracking-uri)"
        )
    runs = mlflow.search_runs(experiment_names=[experiment], max_results=100_000, output_format="pandas")
    return runs.reset_index(drop=True)


def metric_history(uri: str | None, run_id: str, name: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of metric ``name`` of a run."""
    from mlflow import MlflowClient

    return [(h.step, h.value) for h in MlflowClient(uri).get_metric_history(run_id, name)]


def download_artifact(uri: str | None, run_id: str, path: str, dst: str) -> Path:
    """Copy a run's artifact ``path`` into the folder ``dst``; returns the local file."""
    from mlflow import MlflowClient

    return Path(MlflowClient(uri).download_artifacts(run_id, path, dst))
