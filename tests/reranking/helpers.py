"""Test helpers for the reranker: a gate on forward passes, a real server in a thread, metrics."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator

import httpx
import uvicorn

from reranking.model import CrossEncoderScorer
from reranking.server import Settings, load_scorer


class Gate:
    """Hold a model's forward passes until opened, to fill queues deterministically in tests."""

    def __init__(self):
        self.opened = threading.Event()
        self.entered = threading.Event()

    def wrap(self, function: Callable) -> Callable:
        def gated(*args, **kwargs):
            self.entered.set()
            assert self.opened.wait(30), "the test never opened the gate"
            return function(*args, **kwargs)

        return gated

    def open(self) -> None:
        self.opened.set()


def gated_loader(gate: Gate, *, hold_loading: threading.Event | None = None):
    """A model loader whose forward passes wait for ``gate`` (and loading for ``hold_loading``)."""

    def load(settings: Settings) -> CrossEncoderScorer:
        if hold_loading is not None:
            assert hold_loading.wait(30), "the test never let the model load"
        scorer = load_scorer(settings)
        scorer.forward = gate.wrap(scorer.forward)
        return scorer

    return load


@contextlib.contextmanager
def running_server(app) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn server on a free port in a thread; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    app.state.uvicorn_server = server
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def wait_until_healthy(client: httpx.Client, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.02)


def metric_value(text: str, name: str, labels: str = "") -> float:
    """Read one sample from Prometheus text, e.g. ``metric_value(text, "reranker_batch_size_count")``."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0
