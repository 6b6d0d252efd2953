"""Ray executor: ``--executor ray [--address auto|HOST:PORT] [--shared-dir DIR]``.

Each job is one Ray task. It asks for one GPU when the cluster has GPUs (``--devices auto``;
``--devices cpu`` asks for CPUs only). Ray sets ``CUDA_VISIBLE_DEVICES`` for the task; the task
reads its GPU ids with ``ray.get_gpu_ids()``, reports them as the ``bench.gpu_ids`` tag and
runs on ``cuda`` (on the CPU where torch sees no CUDA device). A worker or node that dies is
retried by Ray (``max_retries``), and a retried TRAIN job resumes from its checkpoint in the
shared folder. A job that raises comes back as ``Outcome(error=...)`` and is FAILED at once; one
whose retries were all used up by deaths comes back as ``Outcome(crashed=...)``, which the shared
scheduler (:func:`bench.execute.scheduler.run_plan`) resubmits up to ``--retries`` more times.

Results come back to the driver as dicts: the driver stays the only MLflow writer. Every node
must have this package installed and mount the shared folder at the same path.

``address``: None starts a local Ray (or joins ``$RAY_ADDRESS`` when set, as ``ray.init`` does);
``auto`` joins the cluster started on this machine with ``ray start --head``; ``HOST:PORT`` (or
``ray://HOST:PORT``) joins that cluster. The address is checked first (TCP connect, then the
HTTP/2 handshake every gRPC server answers) so an unreachable one fails in seconds: ``ray.init``
itself would wait for minutes.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from bench.core.errors import BenchError
from bench.core.network import connect_timeout
from bench.execute.registry import Flag, pool_options, register_executor
from bench.execute.remote import check_shared_dir, require
from bench.execute.scheduler import Outcome
from bench.plan import Job

CONNECT_TIMEOUT = 10.0  # seconds for the address check (connect + handshake); $BENCH_CONNECT_TIMEOUT overrides
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS


def bench_job(kind: str, config: dict[str, Any], key: str, shared_dir: str, progress: bool = False
              ) -> dict[str, Any]:
    """The Ray task (its worker process is titled ``ray::bench_job`` while it runs)."""
    import ray

    from bench.execute.remote import run_remote

    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    tags = {"bench.executor": "ray", "bench.gpu_ids": ",".join(gpu_ids),
            "bench.ray_node": ray.get_runtime_context().get_node_id()[:12]}
    return run_remote(kind, config, key, shared_dir, gpu=bool(gpu_ids), threads=int(max(1, cpus)), tags=tags,
                      progress=progress)


class RayPool:
    """One Ray task per job; at most ``slots`` at once (the cluster's GPUs, else CPUs / cpus_per_job)."""

    def __init__(self, devices: str = "auto", address: str | None = None, shared_dir: str | None = None,
                 max_retries: int = 2, cpus_per_job: float = 1.0, slots: int | None = None,
                 progress: bool = False, connect_timeout: float | None = None,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        ray = require("ray", "ray")
        from bench.core.paths import cache_dir

        self.shared_dir = str(check_shared_dir(shared_dir or cache_dir(), "the driver"))
        self.progress = progress
        self.max_retries = int(max_retries)
        self._owns_ray = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
        if address:  # checked even when this process is already connected: a typo fails loudly
            check_address(address, connect_timeout)
        if not ray.is_initialized():
            if address:
                ray.init(address=address, **(init_kwargs or {}))
            else:  # a local Ray on this machine, only for this run
                ray.init(include_dashboard=False, object_store_memory=256 * 2**20, **(init_kwargs or {}))
            self._owns_ray = True
        self.use_gpu, self.slots = _resources(devices, ray.cluster_resources(), cpus_per_job, slots)
        resources = {"num_gpus": 1, "num_cpus": cpus_per_job} if self.use_gpu else {"num_cpus": cpus_per_job}
        self._task = ray.remote(bench_job).options(max_retries=self.max_retries, retry_exceptions=False,
                                                   **resources)
        self.refs: dict[Any, str] = {}  # ObjectRef -> job key

    def submit(self, job: Job) -> None:
        ref = self._task.remote(job.kind, job.config.to_dict(), job.key, self.shared_dir, self.progress)
        self.refs[ref] = job.key

    def wait(self, timeout: float) -> list[Outcome]:
        import ray

        if not self.refs:
            time.sleep(min(timeout, 0.1))
            return []
        pending = list(self.refs)
        ready, rest = ray.wait(pending, num_returns=1, timeout=timeout)
        if ready and rest:  # collect everything else already finished, without waiting
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return [self._outcome(ref) for ref in ready]

    def _outcome(self, ref: Any) -> Outcome:
        import ray
        from ray.exceptions import RayError, RayTaskError

        key = self.refs.pop(ref)
        try:
            result = ray.get(ref)
        except RayTaskError as e:  # the job itself raised: FAILED, not retried
            return Outcome(key, error=str(e))
        except RayError as e:  # worker or node died, and Ray's retries are used up
            return Outcome(key, crashed=f"Ray task died {self.max_retries + 1} times: {type(e).__name__}: "
                                        f"{str(e).strip()[-2000:]}")
        return Outcome(key, result=result)

    def close(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        for ref in list(self.refs):  # the driver is stopping: nothing keeps running without it
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
        self.refs.clear()
        if self._owns_ray:
            ray.shutdown()


def _resources(devices: str, cluster: dict[str, float], cpus_per_job: float, slots: int | None
               ) -> tuple[bool, int]:
    """(ask for a GPU per job?, how many jobs at once) from ``--devices`` and the cluster's resources."""
    spec = (devices or "auto").strip()
    gpus, cpus = int(cluster.get("GPU", 0)), cluster.get("CPU", 0)
    if spec == "auto":
        use_gpu = gpus > 0
    elif spec == "cpu" or spec.startswith("cpu*"):
        use_gpu = False
    elif spec in ("cuda", "gpu") or spec.startswith("cuda:"):
        if gpus == 0:
            raise BenchError(f"--devices {spec}: the Ray cluster has no GPUs (resources: {_show(cluster)}); "
                             "use --devices auto or cpu, or start the Ray nodes with GPUs")
        use_gpu = True
    else:
        raise BenchError(f"--devices {spec!r}: with --executor ray use auto (a GPU per job when the cluster "
                         "has GPUs), cpu, or cuda; Ray places the jobs itself")
    n = gpus if use_gpu else int(cpus // max(cpus_per_job, 1e-9))
    if n < 1:
        raise BenchError(f"the Ray cluster offers no {'GPU' if use_gpu else 'CPU'} for a job "
                         f"(resources: {_show(cluster)}, cpus_per_job={cpus_per_job})")
    return use_gpu, int(slots or n)


def _show(cluster: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(cluster.items()) if k in ("CPU", "GPU")) or "none"


def check_address(address: str, timeout: float | None = None) -> str:
    """Fail within ``timeout`` seconds (default :data:`CONNECT_TIMEOUT`, or ``$BENCH_CONNECT_TIMEOUT``)
    with one BenchError unless a gRPC server answers at ``address``.

    ``auto`` is resolved the way Ray does (the cluster started on this machine). Returns HOST:PORT.
    """
    timeout = connect_timeout(CONNECT_TIMEOUT, timeout)
    target = _resolve(address)
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise BenchError(f"--address {address!r}: write auto or HOST:PORT (the head node's GCS port, "
                         "6379 by default), e.g. --address 10.0.0.1:6379")
    how = ("start the cluster with `ray start --head --port PORT` on the head node and "
           "`ray start --address HEAD:PORT` on the others, or fix --address")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.settimeout(timeout)
            if os.environ.get("RAY_USE_TLS", "0") in ("0", "", "false"):
                s.sendall(_H2_PREFACE)
                head = _recv(s, 9)
                if len(head) < 9 or head[3] != 4:  # an HTTP/2 server answers with a SETTINGS frame
                    raise BenchError(f"--address {address}: {target} answered, but not as a Ray cluster "
                                     f"(no gRPC handshake); {how}")
    except (OSError, TimeoutError) as e:
        why = f"no answer within {timeout:g} s" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
        raise BenchError(f"--address {address}: no Ray cluster reachable at {target} ({why}); {how}") from None
    return target


def _resolve(address: str) -> str:
    address = address.strip()
    if address.startswith("ray://"):
        return address[len("ray://"):]
    if address != "auto":
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address_or_die

        return str(canonicalize_bootstrap_address_or_die("auto"))
    except Exception as e:  # ConnectionError: no cluster started on this machine
        raise BenchError(f"--address auto: no Ray cluster was started on this machine ({e}); run "
                         "`ray start --head` first, or give --address HOST:PORT") from None


def _recv(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _make_ray(devices: str, progress: bool, **options: Any) -> RayPool:
    return RayPool(devices=devices, **options)


register_executor(
    "ray", _make_ray, options=pool_options(RayPool, ("devices",)), package="ray", extra="ray",
    flags=(Flag("address", str, "Ray cluster address (auto or HOST:PORT)"),
           Flag("max_retries", int, "Ray: times a task whose worker died is retried by Ray (default 2)"),
           Flag("cpus_per_job", float, "Ray: CPUs a job reserves (default 1)"),
           Flag("slots", int, "Ray: jobs running at once (default: the cluster's GPUs, else CPUs / cpus per job)"),
           Flag("connect_timeout", float, "Ray: seconds to wait for --address to answer "
                                          "(default $BENCH_CONNECT_TIMEOUT)")),
    # a short socket path (Ray's default under $TMPDIR can be too long); no $RAY_ADDRESS: a cluster of its own
    test_env={"RAY_TMPDIR": "/tmp", "RAY_ADDRESS": ""},
    help="Ray tasks on a local or remote cluster")
