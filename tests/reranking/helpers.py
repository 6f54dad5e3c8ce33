"""Test helpers for the reranker: a gate on forward passes, a slow stub model, a real server in a
thread, a client that leaves without reading its answer, metrics."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Callable, Iterator
from urllib.parse import urlsplit

import httpx
import numpy as np
import uvicorn

from reranking.model import CrossEncoderScorer
from reranking.pairs import EncodedPair, ModelInputs
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


class SlowStubScorer:
    """A stand-in model that costs real time per pair and records every document it scores.

    A pair's token ids are its document's characters, so a forward pass can read back which
    documents it was given. The raw score of a pair is its document's length over 100.
    """

    max_length = 512
    device = "stub"

    def __init__(self, *, seconds_per_pair: float, token_budget: int = 4096):
        self.seconds_per_pair = seconds_per_pair
        self.token_budget = token_budget
        self.scored: list[str] = []  # documents, in the order the model saw them

    @staticmethod
    def raw_score(document: str) -> float:
        return len(document) / 100

    def tokenize_query(self, query: str, documents) -> list[EncodedPair]:
        return [EncodedPair([ord(character) for character in document[: self.max_length]], None) for document in documents]

    def collate(self, batch) -> ModelInputs:
        width = max(len(pair) for pair in batch)
        input_ids = np.zeros((len(batch), width), dtype=np.int64)
        for row, pair in enumerate(batch):
            input_ids[row, : len(pair)] = pair.input_ids
        return ModelInputs(input_ids, (input_ids != 0).astype(np.int64), None)

    def forward(self, inputs: ModelInputs) -> np.ndarray:
        documents = ["".join(chr(code) for code in row if code) for row in inputs.input_ids.tolist()]
        self.scored.extend(documents)
        time.sleep(self.seconds_per_pair * len(documents))
        return np.array([self.raw_score(document) for document in documents], dtype=np.float32)


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


def send_without_reading(url: str, path: str, body: dict) -> socket.socket:
    """POST ``body`` on a raw socket and return the socket unread: closing it is the client leaving."""
    address = urlsplit(url)
    content = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\nContent-Length: {len(content)}\r\n\r\n"
    connection = socket.create_connection((address.hostname, address.port))
    connection.sendall(head.encode() + content)
    return connection


def wait_until_healthy(client: httpx.Client, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.02)


def wait_for_metric(client: httpx.Client, name: str, value: float, timeout: float = 30) -> None:
    """Poll /metrics until the sample ``name`` reaches ``value``."""
    deadline = time.monotonic() + timeout
    while metric_value(client.get("/metrics").text, name) < value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.01)


def metric_value(text: str, name: str, labels: str = "") -> float:
    """Read one sample from Prometheus text, e.g. ``metric_value(text, "reranker_batch_size_count")``."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0
