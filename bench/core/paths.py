"""Where the bench keeps what it computes once and reuses (checkpoints, reference features)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError


def cache_dir() -> Path:
    """``$BENCH_CACHE_DIR`` if set, else ``./.bench_cache`` in the working folder.

    Checkpoints, trained VAEs, domain classifiers and reference statistics live here, keyed by
    content hash; on a cluster point it at a path every node can read and write.
    """
    root = Path(os.environ.get("BENCH_CACHE_DIR", ".bench_cache")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


BUILD_COUNTS: dict[str, int] = {}  # artefact name -> builds by this process (tests count them)


@contextmanager
def build_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``path`` while building what ``path`` holds.

    Workers on one fresh cache (a local pool, Ray or Slurm on a shared folder) then build a shared
    artefact once: the first takes the lock and builds; the others wait, then find the file. Callers
    check for the file again once they hold the lock. An OS file lock (``filelock``: ``fcntl`` on
    POSIX) is released by the kernel when its holder dies, so a killed builder blocks no one.
    """
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f".{path.name}.lock")):
        yield


def built(name: str) -> None:
    """Count one build of the artefact ``name`` in this process (see :data:`BUILD_COUNTS`)."""
    BUILD_COUNTS[name] = BUILD_COUNTS.get(name, 0) + 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file a normal file's mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` through a temp file + rename, so a kill never leaves a half-written file."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_torch_file(path: str | os.PathLike, fmt: str, required: tuple[str, ...], what: str,
                    map_location: Any = "cpu", error: type[BenchError] = BenchError) -> dict[str, Any]:
    """Read a dict saved with a ``format`` tag (checkpoints, VAEs). A missing file, or one that is
    truncated, garbled or of another format, raises ``error`` naming the file and what to do."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist; re-run the study so it is built")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != fmt:
            raise ValueError(f"not a {fmt} file")
        missing = [k for k in required if k not in blob]
        if missing:
            raise ValueError(f"keys {missing} are missing")
    except Exception as e:  # torch.load raises many kinds of error on a cut or garbled file
        raise error(f"{what} {str(path)!r} is truncated or corrupt ({type(e).__name__}: {e}); delete it and "
                    "re-run so it is built again") from e
    return blob


_SHA: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (memoised per path, size and mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA[key] = h.hexdigest()
    return _SHA[key]
