"""Keep the product's processes running: restart a child that exits, with backoff, and stop them all.

`serve` runs the web server, the ingestion workers, a reranker worker and the local vLLM as
children. A child that exits when nobody asked is started again after 1, 2, 4 ... 30 s; one that
stayed up for a minute counts as healthy again. Each child runs in a process group of its own,
so stopping it (or cleaning up after it died) reaches the processes it started too: vLLM's
engine, gunicorn's workers.

What each child is doing is written to a small JSON file that the web processes read for
`/health` and for the chat's notices (`child_states`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
STABLE_SECONDS = 60.0  # up this long after a start: its earlier crashes no longer count
CRASHES_REPORTED = 5  # this many crashes in a row, each before STABLE_SECONDS: "keeps crashing"
STOP_GRACE_SECONDS = 20.0
POLL_SECONDS = 0.5

# What a child can be doing, as /health and the chat read it.
PREPARING, STARTING, READY, RESTARTING, FAILING, UNAVAILABLE, STOPPED = (
    "preparing", "starting", "ready", "restarting", "failing", "unavailable", "stopped")


@dataclass
class Child:
    """One supervised process: how to start it, how to tell it is ready, and what happened to it."""

    name: str
    start: Callable[[], subprocess.Popen]  # must start the process in a new session (its own group)
    ready: Callable[[], bool] | None = None  # None: ready as soon as it runs
    process: subprocess.Popen | None = None
    state: str = STARTING
    restarts: int = 0
    crashes_in_a_row: int = 0
    last_exit: int | None = None
    last_stop: str = ""  # how it last stopped, in words ("exited with signal SIGKILL")
    started_at: float = 0.0
    restart_at: float | None = None
    detail: str = ""

    def backoff_seconds(self) -> float:
        return min(BACKOFF_FIRST_SECONDS * 2 ** max(self.crashes_in_a_row - 1, 0), BACKOFF_MAX_SECONDS)


@dataclass
class Supervisor:
    """Starts children, restarts the ones that exit, and stops them all when told to."""

    state_file: Path
    log: Callable[[str], None] = print
    children: list[Child] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _signalled: bool = False  # SIGINT or SIGTERM arrived (see _on_signal)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _placeholders: dict[str, tuple[str, str]] = field(default_factory=dict)

    def add(self, child: Child) -> None:
        """Start CHILD and supervise it from now on (callable from any thread)."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._placeholders.pop(child.name, None)
            self._launch(child)
            self.children.append(child)
        self._write_states()

    def announce(self, name: str, state: str, detail: str = "") -> None:
        """Record a part that is not a process yet (vLLM being installed) or never will be (it failed)."""
        with self._lock:
            self._placeholders[name] = (state, detail)
        self._write_states()

    def run(self) -> None:
        """Supervise until stop() (or SIGINT/SIGTERM, when run in the main thread), then stop every child."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, self._on_signal)
        try:
            while not self._signalled and not self._stopping.wait(POLL_SECONDS):
                self.check_children()
        finally:
            self.stop_children()

    def stop(self) -> None:
        """Stop supervising, from another thread; a signal goes through _on_signal instead."""
        self._stopping.set()

    def _on_signal(self, signum, frame) -> None:
        # Python runs a handler in the main thread between two of its steps, possibly inside Event.wait
        # while that holds the event's own lock: Event.set here would wait for it forever (serve hung on
        # SIGTERM once in CI, its children never told). A plain flag takes no lock; the loop reads it.
        self._signalled = True

    def check_children(self) -> None:
        """One round: notice exits, restart the children whose backoff is over, notice readiness."""
        with self._lock:
            children = list(self.children)
        changed = False
        for child in children:
            changed |= self._check(child)
        if changed:
            self._write_states()

    def _check(self, child: Child) -> bool:
        if child.process is not None and child.process.poll() is not None:
            self._exited(child)
            return True
        if child.restart_at is not None and time.monotonic() >= child.restart_at:
            with self._lock:
                if not self._stopping.is_set():
                    self._launch(child)
            return True
        if child.process is not None and child.state != READY and _ready(child):
            self._became_ready(child)
            return True
        if child.crashes_in_a_row and time.monotonic() - child.started_at > STABLE_SECONDS:
            child.crashes_in_a_row = 0
        return False

    def _launch(self, child: Child) -> None:
        child.restart_at, child.started_at = None, time.monotonic()
        try:
            child.process = child.start()
        except Exception as error:  # a start that fails counts as a crash: retried with backoff
            child.process, child.last_exit = None, None
            self._crashed(child, f"could not start: {error}")
            return
        child.state = RESTARTING if child.restarts else STARTING
        if child.ready is None:
            self._became_ready(child)

    def _became_ready(self, child: Child) -> None:
        child.state = READY
        if child.restarts:
            child.detail = f"restarted {child.restarts} time(s); the last stop: {child.last_stop}"
        self.log(f"{child.name} is ready (pid {child.process.pid}).")

    def _exited(self, child: Child) -> None:
        process, child.process = child.process, None
        _kill_group(process)  # what it started (vLLM's engine, gunicorn's workers) goes with it
        child.last_exit = process.returncode
        self._crashed(child, f"exited with {_exit_description(process.returncode)}")

    def _crashed(self, child: Child, what: str) -> None:
        quick = time.monotonic() - child.started_at < STABLE_SECONDS
        child.crashes_in_a_row = child.crashes_in_a_row + 1 if quick else 1
        child.restarts += 1
        delay = child.backoff_seconds()
        child.restart_at = time.monotonic() + delay
        child.state, child.last_stop = RESTARTING, what
        child.detail = f"{what}; restart {child.restarts} in {delay:g} s"
        self.log(f"{child.name} {child.detail}.")
        if child.crashes_in_a_row >= CRASHES_REPORTED:
            child.state = FAILING
            self.log(f"{child.name} keeps crashing: {child.crashes_in_a_row} times in a row, each within "
                     f"{STABLE_SECONDS:g} s of starting. serve keeps trying every {BACKOFF_MAX_SECONDS:g} s; "
                     "its own output above says why it stops.")

    def stop_children(self) -> None:
        """SIGTERM to every child's group, SIGKILL to what is left after the grace period (idempotent)."""
        with self._lock:
            self._stopping.set()
            processes = [child.process for child in self.children if child.process is not None]
            for child in self.children:
                child.process = None
        for process in processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.log(f"{process.args[:4]} did not stop within {STOP_GRACE_SECONDS:g} s: killed.")
            _kill_group(process)
        for child in self.children:
            child.state = STOPPED
        self._write_states()

    def _write_states(self) -> None:
        with self._lock:
            states = {name: {"state": state, "detail": detail} for name, (state, detail) in self._placeholders.items()}
            for child in self.children:
                states[child.name] = {"state": child.state, "restarts": child.restarts,
                                      "last_exit": child.last_exit, "last_stop": child.last_stop,
                                      "detail": child.detail}
        _write_json(self.state_file, {"supervisor_pid": os.getpid(), "children": states})


def child_states(state_file: Path) -> dict[str, dict]:
    """What a running `serve` says its children are doing; {} when no live serve wrote the file."""
    try:
        written = json.loads(state_file.read_text())
        os.kill(written["supervisor_pid"], 0)  # a file left by a serve that was killed says nothing
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return written.get("children", {})


def start_in_own_group(command: list[str], **options) -> subprocess.Popen:
    """Popen in a new session: signals from the terminal reach serve only, which stops children in order."""
    return subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL, **options)


def descendants_stop() -> None:
    """Kill every process still running below this one (serve's last step: a pip install started for vLLM).

    Only for a process that owns everything it started, like serve; never inside a test run."""
    import psutil

    leftovers = psutil.Process().children(recursive=True)
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(leftovers, timeout=5)


def _ready(child: Child) -> bool:
    try:
        return child.ready is None or child.ready()
    except Exception:  # a probe that fails means "not yet"
        return False


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(process: subprocess.Popen) -> None:
    _signal_group(process, signal.SIGKILL)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _exit_description(returncode: int) -> str:
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def _write_json(path: Path, data: dict) -> None:
    # Written beside and renamed, so a reader never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)
