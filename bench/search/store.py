"""Where a search's records live: found and checked without Optuna, then opened (:func:`open_storage`).

* The Optuna storage (``--storage``), resolved by :func:`resolve_storage`:

  - nothing: an SQLite file ``reports/<study>/optuna.db`` under the working folder
    (:func:`default_storage`), beside the study's report; a path ending ``.db`` / ``.sqlite``
    is an SQLite file too;
  - a database URL: ``sqlite:///PATH``, or ``postgresql://`` / ``mysql://`` for workers on several
    machines (the driver must be installed and the server must answer within seconds);
  - a journal file, ``PATH.log`` or ``journal:PATH`` (Optuna's JournalStorage with the file
    backend), for several processes on one machine without a database.

* The MLflow runs: one parent run (``bench.kind = search``, ``bench.key`` = the Optuna study
  name) and one run per trial (``bench.kind = trial``, tags ``optuna.study_name`` and
  ``optuna.trial_number``), in the study's experiment.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.network import connect_timeout

_DRIVERS = {"psycopg": "'psycopg[binary]' (or psycopg2-binary with postgresql+psycopg2://)",
            "psycopg2": "psycopg2-binary", "pg8000": "pg8000", "asyncpg": "asyncpg",
            "mysqldb": "mysqlclient (or pymysql with mysql+pymysql://)", "pymysql": "pymysql"}
_PORTS = {"postgresql": 5432, "mysql": 3306}


@dataclass(frozen=True)
class StorageTarget:
    kind: str  # "rdb" (an SQLAlchemy URL) | "journal" (a file path)
    location: str  # the URL or the absolute path
    shown: str  # for messages and MLflow tags: passwords hidden
    server: bool = False  # a database server (heartbeats detect dead workers on other machines)


def default_storage(study_name: str) -> Path:
    """``reports/<study>/optuna.db`` in the working folder (beside the study's report)."""
    return Path("reports") / study_name.replace("/", "_") / "optuna.db"


def resolve_storage(storage: str | None, study_name: str, create: bool = True) -> StorageTarget:
    """Parse ``--storage``; a server URL is checked (driver installed, port open) in seconds.
    ``create`` makes the folder of a file storage."""
    if storage is None or (storage.endswith((".db", ".sqlite", ".sqlite3")) and "://" not in storage):
        path = (Path(storage) if storage else default_storage(study_name)).resolve()
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        return StorageTarget("rdb", f"sqlite:///{path}", f"sqlite:///{path}")
    if storage.startswith("journal:") or (storage.endswith(".log") and "://" not in storage):
        path = Path(storage.removeprefix("journal:")).resolve()
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        return StorageTarget("journal", str(path), f"journal:{path}")
    if "://" not in storage:
        raise BenchError(f"--storage {storage!r}: give a database URL (sqlite:///x.db, postgresql://user@host/db, "
                         "mysql://...), a journal file (x.log or journal:PATH), or nothing for "
                         "reports/<study>/optuna.db")
    shown = hide_password(storage)
    if storage.startswith("sqlite"):
        return StorageTarget("rdb", storage, shown)
    check_server(storage, shown)
    return StorageTarget("rdb", storage, shown, server=True)


def hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def check_server(url: str, shown: str, timeout: float | None = None) -> None:
    """The database driver is installed and the server answers on its port within ``timeout``
    (default 5 s, or ``$BENCH_CONNECT_TIMEOUT``)."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
        driver = u.get_dialect().driver
    except Exception as e:
        raise BenchError(f"--storage {shown}: not a database URL Optuna can use ({e})") from None
    try:
        load_driver(u)
    except ImportError as e:
        raise BenchError(f"--storage {shown}: the database driver {driver!r} is not installed ({e}); "
                         f"pip install {_DRIVERS.get(driver, e.name or driver)}") from None
    if u.host:
        timeout = connect_timeout(5.0, timeout)
        port = u.port or _PORTS.get(u.get_backend_name(), 0)
        try:
            socket.create_connection((u.host, port), timeout=timeout).close()
        except OSError as e:
            raise BenchError(f"--storage {shown}: the database server {u.host}:{port} is unreachable ({e}); "
                             "start it or fix the URL") from None


def load_driver(url: Any) -> None:
    """Import the DB-API module of an SQLAlchemy URL (ImportError when it is not installed)."""
    url.get_dialect().import_dbapi()


# --- MLflow ----------------------------------------------------------------------------------


def trial_runs(tracker: Any, name: str) -> list[Any]:
    """Every MLflow trial run of the Optuna study ``name`` (any status)."""
    out, token = [], None
    query = f"tags.`bench.kind` = 'trial' and tags.`optuna.study_name` = '{name}'"
    while True:
        page = tracker.client.search_runs([tracker.experiment_id], query, max_results=5000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def parent_runs(tracker: Any, name: str) -> list[Any]:
    """The parent run(s) of the search ``name``, oldest first (two racing workers may make two)."""
    query = f"tags.`bench.kind` = 'search' and tags.`bench.key` = '{name}'"
    return list(tracker.client.search_runs([tracker.experiment_id], query, max_results=100,
                                           order_by=["attributes.start_time ASC"]))


def open_storage(storage: str | None, study_name: str) -> tuple[Any, str]:
    """(an Optuna storage, its description with any password hidden); see
    :func:`bench.search.store.resolve_storage` for the accepted forms and the checks."""
    import optuna

    target = resolve_storage(storage, study_name)
    if target.kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(target.location)), target.shown
    try:
        kwargs: dict[str, Any] = {"heartbeat_interval": 60, "grace_period": 180} if target.server else {}
        engine = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}} if target.server else None
        return optuna.storages.RDBStorage(target.location, engine_kwargs=engine, **kwargs), target.shown
    except ImportError as e:
        raise BenchError(f"--storage {target.shown}: {e}") from None
    except Exception as e:  # sqlalchemy's OperationalError and friends: one line is enough
        raise BenchError(f"--storage {target.shown}: cannot open the database ({str(e).splitlines()[0]}); "
                         "check the URL, the server and your credentials") from None
