"""Real Procrastinate workers for the tests: `manage.py procrastinate worker`, as serve runs it, on the test database."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from django.db import connection

REPO = Path(__file__).resolve().parents[2]
WORKER = [sys.executable, "manage.py", "procrastinate", "worker"]


def worker_environment(media_root: Path, **overrides: str) -> dict[str, str]:
    """The environment of a worker process that reads the test database and this test's uploaded files."""
    database = connection.settings_dict
    return {**os.environ, "DATABASE_URL": f"postgres://{database['USER']}@{quote(database['HOST'], safe='')}/{database['NAME']}",
            "SECRET_KEY": "test-secret-key-for-the-worker-process-" + "x" * 20, "MEDIA_ROOT": str(media_root), **overrides}


def worker_start(environment: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a worker that waits for jobs until it is stopped; its output goes to `log`."""
    with log.open("ab") as output:
        return subprocess.Popen(WORKER, cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT)


def worker_stop(worker: subprocess.Popen) -> None:
    """Stop a worker as serve does (SIGTERM), killing it if it does not stop in time."""
    worker.terminate()
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def wait_until(condition: Callable[[], bool], *, seconds: float, worker: subprocess.Popen, log: Path, what: str) -> None:
    """Poll `condition` until it holds; fail with the worker's log if the worker exits or time runs out."""
    deadline = time.monotonic() + seconds
    while not condition():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached (worker exit code {worker.poll()}). Worker log:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
