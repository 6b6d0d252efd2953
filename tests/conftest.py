import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from bench.core.allocator import tune_allocator

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# One intra-op thread: the tests run tiny networks, where extra OpenMP threads only spin against
# the other processes the suite starts (workers, servers) and cost up to 10x.
torch.set_num_threads(1)
tune_allocator()  # as the bench's own workers do: activation buffers reused, not page-faulted in anew


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Tests never read or write a cache outside this test process's own temporary folder: not the
    repository's ``.bench_cache``, not a ``$BENCH_CACHE_DIR`` of the shell (a user's real cache, shared
    with their runs and with the other xdist worker). Set for the whole session, so module fixtures
    (trained models, Ray clusters) see it too. Nor a tracking server or Ray cluster the shell names."""
    cache = str(tmp_path_factory.getbasetemp() / "bench_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", cache)
        for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):  # the shell's server or cluster is not the tests'
            mp.delenv(var, raising=False)
        yield cache


@pytest.fixture(autouse=True)
def _isolated_cache(_session_cache, monkeypatch):
    """Each test runs on the session's cache unless a module fixture of its file chose its own
    (e.g. test_metrics' one cache where the digits classifier is trained once)."""
    if not os.environ.get("BENCH_CACHE_DIR"):
        monkeypatch.setenv("BENCH_CACHE_DIR", _session_cache)


# The smallest DINOv2 and CLIP architectures, with random weights in their official file formats:
# fd_dinov2 and cmmd run through the real loading path without the released weights.
FOUNDATION_MODELS = {"dinov2": "dinov2-vit-s-14", "clip": "clip-vit-b-32"}


@pytest.fixture(scope="session")
def foundation_weights(tmp_path_factory) -> dict[str, str]:
    """``{extractor name: random-weights file}`` for ``FOUNDATION_MODELS``, written once per session."""
    import warnings

    from bench.metrics.foundation import official_file, save_random_weights

    folder = tmp_path_factory.mktemp("foundation_weights")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        return {name: str(save_random_weights(name, folder / official_file(name)))
                for name in FOUNDATION_MODELS.values()}


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1:<free port> (initdb into a temporary folder, as the
    ``postgres`` user when run as root); yields its URL; stopped and deleted after the module. Skipped,
    with the reason, where the server binaries or SQLAlchemy's PostgreSQL driver are missing."""
    from sqlalchemy.engine import make_url

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    try:
        make_url("postgresql://u@h/db").get_dialect().import_dbapi()
    except ImportError as e:
        pytest.skip(f"no PostgreSQL driver for SQLAlchemy ({e}): pip install -e .[postgres]")
    run_as: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))  # outside pytest's root-only folders
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"

    def pg(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([*run_as, *cmd], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 or not check, f"{' '.join(cmd)}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
        return out

    try:
        pg(initdb, "-D", str(data), "-U", "bench", "--auth=trust", "-E", "UTF8", "--no-sync")
        for _ in range(3):  # a free port can be taken by another process before the server binds it
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            started = pg(pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "180", "-o",
                         f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start", check=False)
            text = log.read_text(errors="replace") if log.exists() else ""
            if started.returncode == 0 or "already in use" not in text:
                break
        assert started.returncode == 0, f"pg_ctl start:\n{started.stdout}{started.stderr}{text[-2000:]}"
        try:
            yield f"postgresql://bench@127.0.0.1:{port}/postgres"
        finally:
            pg(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
