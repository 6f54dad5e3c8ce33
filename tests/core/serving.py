"""Watching a running `manage.py serve` from outside, for its fault tests and bench/faults.py.

No Django here: the watcher is not one of the product's processes, and must not register with
its embedded PostgreSQL (that would keep the database up after serve stops).
"""

import time

import httpx
import psutil


def wait_for(condition, *, seconds: float, what: str):
    """Poll CONDITION until it returns something true, and return that; fail after SECONDS."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.25)
    raise TimeoutError(f"{what}: not within {seconds:g} s")


def health(base: str) -> dict:
    """The app's /health report, {} while it does not answer."""
    try:
        return httpx.get(f"{base}/health", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}


def child_running(serve: psutil.Process, fragment: str) -> psutil.Process | None:
    """serve's child whose command line holds FRAGMENT (the group leader, not its workers)."""
    for process in serve.children():
        try:
            if fragment in " ".join(process.cmdline()):
                return process
        except psutil.Error:
            continue
    return None


def processes_left(processes: list[psutil.Process]) -> list[str]:
    """The command lines of those still running (a zombie waiting for its parent counts as gone)."""
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(process.cmdline())[:160])
        except psutil.Error:
            continue
    return left
