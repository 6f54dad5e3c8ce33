"""The supervisor with real processes: restarts with backoff, what it logs, and stopping leaves nothing."""

import signal
import sys
import threading
import time

import psutil
import pytest

from ragapp.core import supervision
from ragapp.core.supervision import Child, Supervisor, child_states, start_in_own_group

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
# Starts a grandchild in the same group, as vLLM starts its engine and gunicorn its workers.
PARENT_OF_SLEEPER = [sys.executable, "-c",
                     "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
                     " time.sleep(60)"]


def wait_until(condition, seconds=15):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.fixture
def supervisor(tmp_path):
    lines: list[str] = []
    supervisor = Supervisor(state_file=tmp_path / "state.json", log=lines.append)
    supervisor.lines = lines
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    yield supervisor
    supervisor.stop()
    thread.join(timeout=30)


def test_a_killed_child_is_restarted_and_the_log_names_it_with_its_exit_and_count(supervisor, tmp_path):
    child = Child("worker", start=lambda: start_in_own_group(SLEEPER))
    supervisor.add(child)
    first = child.process.pid
    psutil.Process(first).send_signal(signal.SIGKILL)
    assert wait_until(lambda: child.process is not None and child.process.pid != first and child.state == "ready")
    assert "worker exited with signal SIGKILL; restart 1 in 1 s." in supervisor.lines
    state = child_states(tmp_path / "state.json")["worker"]
    assert state["restarts"] == 1 and state["last_exit"] == -signal.SIGKILL and state["state"] == "ready"


def test_backoff_doubles_and_a_child_that_keeps_crashing_is_reported(supervisor, monkeypatch):
    monkeypatch.setattr(supervision, "BACKOFF_FIRST_SECONDS", 0.05)
    child = Child("reranker", start=lambda: start_in_own_group([sys.executable, "-c", "raise SystemExit(3)"]))
    supervisor.add(child)
    assert wait_until(lambda: child.restarts >= supervision.CRASHES_REPORTED)
    delays = [line for line in supervisor.lines if line.startswith("reranker exited with exit code 3")]
    assert delays[:4] == [f"reranker exited with exit code 3; restart {n} in {0.05 * 2 ** (n - 1):g} s." for n in range(1, 5)]
    assert any(line.startswith("reranker keeps crashing: 5 times in a row") for line in supervisor.lines)
    assert child.state == "failing"


def test_a_start_that_raises_is_retried_like_a_crash(supervisor, monkeypatch):
    monkeypatch.setattr(supervision, "BACKOFF_FIRST_SECONDS", 0.05)
    attempts = []

    def start():
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("port 8001 is in use")
        return start_in_own_group(SLEEPER)

    child = Child("generator", start=start)
    supervisor.add(child)
    assert wait_until(lambda: child.state == "ready" and child.process is not None)
    assert "generator could not start: port 8001 is in use; restart 1 in 0.05 s." in supervisor.lines


def test_a_dead_childs_own_children_are_killed_with_it(supervisor):
    child = Child("vllm", start=lambda: start_in_own_group(PARENT_OF_SLEEPER))
    supervisor.add(child)
    leader = psutil.Process(child.process.pid)
    assert wait_until(lambda: len(leader.children()) == 1)
    grandchild = leader.children()[0]
    leader.kill()
    assert wait_until(lambda: not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE)


def test_stopping_leaves_no_process_of_any_child_behind(tmp_path, monkeypatch):
    supervisor = Supervisor(state_file=tmp_path / "state.json", log=lambda line: None)
    # This one ignores SIGTERM: it is killed once the grace period is over.
    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"]
    children = [Child("web", start=lambda: start_in_own_group(PARENT_OF_SLEEPER)),
                Child("stubborn", start=lambda: start_in_own_group(stubborn))]
    for child in children:
        supervisor.add(child)
    leader = psutil.Process(children[0].process.pid)
    assert wait_until(lambda: len(leader.children()) == 1)
    tree = [leader, *leader.children(), psutil.Process(children[1].process.pid)]
    monkeypatch.setattr(supervision, "STOP_GRACE_SECONDS", 1.0)
    supervisor.stop_children()
    assert not [process for process in tree if process.is_running() and process.status() != psutil.STATUS_ZOMBIE]
    assert {state["state"] for state in child_states(tmp_path / "state.json").values()} == {"stopped"}


def test_a_state_file_left_by_a_dead_serve_says_nothing(tmp_path):
    state_file = tmp_path / "state.json"
    dead = start_in_own_group([sys.executable, "-c", "pass"])
    dead.wait()
    state_file.write_text(f'{{"supervisor_pid": {dead.pid}, "children": {{"generator": {{"state": "preparing"}}}}}}')
    assert child_states(state_file) == {}


def test_a_signal_that_lands_while_the_loop_holds_its_wait_lock_still_stops_serve(tmp_path):
    """A signal handler runs in the main thread between two of its steps, possibly inside Event.wait while
    that holds the event's lock (held here by hand, since the real window is a few steps wide): a handler
    that waited for the lock would leave serve hung with every child running."""
    supervisor = Supervisor(state_file=tmp_path / "state.json", log=lambda line: None)
    supervisor.add(Child("sleeper", start=lambda: start_in_own_group(SLEEPER)))
    child = supervisor.children[0].process
    with supervisor._stopping._cond:
        handler = threading.Thread(target=supervisor._on_signal, args=(signal.SIGTERM, None), daemon=True)
        handler.start()
        handler.join(timeout=5)
        assert not handler.is_alive(), "the signal handler waited for the lock the loop holds"
    loop = threading.Thread(target=supervisor.run, daemon=True)
    loop.start()
    loop.join(timeout=30)
    assert not loop.is_alive() and child.poll() is not None
