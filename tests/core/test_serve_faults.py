"""`manage.py serve` as an operator meets it when parts fail: each child is SIGKILLed in turn,
the web keeps answering, /health and serve's log follow the restart, and stopping serve leaves
no process behind (the embedded PostgreSQL included).

The generator is the scripted server (outside the product); the reranker worker is real, with
a tiny random cross-encoder built here (the Hub is unreachable).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from reranking.synthetic import build_preset_cross_encoder
from tests.answers.scripted_generator import MODEL, scripted_generator
from tests.conftest import free_port
from tests.core.serving import child_running, health, processes_left, wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(tmp_path):
    model = build_preset_cross_encoder(tmp_path / "reranker", "tiny", num_labels=1)
    port = free_port()
    with scripted_generator(lambda messages: "A stub answer [1].") as (generator_url, _):
        env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "ADMIN_PASSWORD": "correct-horse-battery",
               "GENERATOR_URL": generator_url, "GENERATOR_MODEL": MODEL, "RERANKER_MODEL": str(model)}
        for name in ("DATABASE_URL", "RERANKER_URL"):
            env.pop(name, None)
        log_path = tmp_path / "serve.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "manage.py", "serve", "--port", str(port), "--web-workers", "1",
                 "--reranker-port", str(free_port())],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: health(base).get("status") == "ready", seconds=180, what="every part ready")
            yield base, process, log_path, tmp_path / "data"
        finally:
            if process.poll() is None:
                process.kill()
            print(log_path.read_text()[-4000:])


def kill_and_wait_back(base, serve, log_path, *, fragment: str, name: str, part_ready) -> None:
    victim = wait_for(lambda: child_running(serve, fragment), seconds=30, what=f"{name} running")
    victim.send_signal(signal.SIGKILL)
    wait_for(lambda: f"{name} exited with signal SIGKILL; restart 1 in 1 s." in log_path.read_text(),
             seconds=30, what=f"serve noticed {name}")
    if name != "web server":  # the web stays up while another part restarts
        assert httpx.get(f"{base}/admin/login/", timeout=10).status_code == 200
    replacement = wait_for(lambda: child_running(serve, fragment), seconds=30, what=f"{name} restarted")
    assert replacement.pid != victim.pid
    wait_for(lambda: part_ready(health(base).get("parts", {})), seconds=90, what=f"{name} ready again")


def test_each_child_killed_in_turn_comes_back_and_stopping_leaves_nothing(served):
    base, serve_process, log_path, data_dir = served
    serve = psutil.Process(serve_process.pid)
    postmaster = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])

    kill_and_wait_back(base, serve, log_path, fragment="procrastinate worker", name="ingestion worker 1",
                       part_ready=lambda parts: parts.get("queue_workers", {}).get("state") == "ready")
    kill_and_wait_back(base, serve, log_path, fragment="reranking.server", name="reranker",
                       part_ready=lambda parts: parts.get("rerankers", {}).get("state") == "ready")
    kill_and_wait_back(base, serve, log_path, fragment="gunicorn", name="web server",
                       part_ready=lambda parts: parts.get("database", {}).get("state") == "ready")
    states = json.loads((data_dir / "serve-state.json").read_text())["children"]
    assert {name: state["restarts"] for name, state in states.items()} == {
        "reranker": 1, "web server": 1, "ingestion worker 1": 1}

    tree = [serve, *serve.children(recursive=True), psutil.Process(postmaster)]
    serve_process.send_signal(signal.SIGTERM)
    serve_process.wait(timeout=60)
    assert processes_left(tree) == []
    assert "Stopped." in log_path.read_text()
