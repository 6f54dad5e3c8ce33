"""The reranker worker over real HTTP: both API shapes, errors, overload, batching, health, drain,
clients that leave."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from reranking.model import CrossEncoderScorer, sigmoid
from reranking.server import OPTIONS, Settings, create_app, parse_settings
from tests.reranking.helpers import (
    Gate,
    SlowStubScorer,
    gated_loader,
    metric_value,
    running_server,
    send_without_reading,
    wait_for_metric,
    wait_until_healthy,
)

QUERY = "how do cross encoders rank passages"
DOCUMENTS = [
    "a cross encoder reads the query and the passage together",
    "bananas are rich in potassium",
    "rerankers score each candidate passage for a question",
    "the weather was sunny all week",
]


def test_v1_rerank_returns_every_document_best_first_with_usage(client, scorer):
    response = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})

    assert response.status_code == 200
    body = response.json()
    expected = scorer.predict([(QUERY, document) for document in DOCUMENTS])
    assert [result["index"] for result in body["results"]] == list(np.argsort(-expected))
    scores = [result["relevance_score"] for result in body["results"]]
    np.testing.assert_allclose(sorted(scores, reverse=True), sorted(expected, reverse=True), atol=1e-4)
    assert all("document" not in result for result in body["results"])
    assert body["usage"]["total_tokens"] == sum(len(pair) for pair in scorer.tokenize([(QUERY, d) for d in DOCUMENTS]))
    assert body["model"]


def test_v1_rerank_top_n_and_return_documents(client):
    response = client.post(
        "/v1/rerank", json={"model": "any", "query": QUERY, "documents": DOCUMENTS, "top_n": 2, "return_documents": True}
    )

    results = response.json()["results"]
    assert len(results) == 2
    assert all(result["document"]["text"] == DOCUMENTS[result["index"]] for result in results)
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]


def test_top_n_larger_than_the_documents_returns_them_all(client):
    response = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 50})

    assert len(response.json()["results"]) == len(DOCUMENTS)


def test_tei_rerank_returns_sigmoid_scores_or_raw_logits_best_first(client, scorer):
    raw = scorer.predict([(QUERY, document) for document in DOCUMENTS], normalize=False)

    normalised = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS}).json()
    logits = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()

    assert [rank["index"] for rank in normalised] == list(np.argsort(-raw))
    assert [rank["index"] for rank in logits] == list(np.argsort(-raw))
    np.testing.assert_allclose([rank["score"] for rank in logits], sorted(raw, reverse=True), atol=1e-4)
    assert all(0 < rank["score"] < 1 for rank in normalised)
    assert all("text" not in rank for rank in normalised)


def test_tei_rerank_return_text(client):
    ranks = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "return_text": True}).json()

    assert all(rank["text"] == DOCUMENTS[rank["index"]] for rank in ranks)


def test_tei_truncate_false_refuses_a_text_longer_than_the_model_with_413(client):
    response = client.post("/rerank", json={"query": QUERY, "texts": ["word " * 1000], "truncate": False})

    assert response.status_code == 413
    assert "truncate" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"query": "", "documents": DOCUMENTS}, "query is empty"),
        ({"query": "   ", "documents": DOCUMENTS}, "query is empty"),
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": QUERY, "documents": ["fine", 42]}, "documents.1"),
        ({"query": QUERY, "documents": ["fine", None]}, "documents.1"),
        ({"documents": DOCUMENTS}, "query"),
        ({"query": QUERY, "documents": DOCUMENTS, "top_n": 0}, "top_n"),
    ],
)
def test_bad_rerank_requests_get_a_json_error_that_names_the_problem(client, body, message):
    response = client.post("/v1/rerank", json=body)

    assert response.status_code == 422
    assert response.json()["error_type"] == "validation"
    assert message in response.json()["error"]


def test_bad_tei_request_and_broken_json_get_json_errors(client):
    empty_texts = client.post("/rerank", json={"query": QUERY, "texts": []})
    broken = client.post("/v1/rerank", content=b"{not json", headers={"content-type": "application/json"})

    assert empty_texts.status_code == 422 and "texts" in empty_texts.json()["error"]
    assert broken.status_code == 422 and broken.json()["error_type"] == "validation"


def test_more_documents_than_the_limit_is_413(client):
    response = client.post("/v1/rerank", json={"query": QUERY, "documents": ["a document"] * 51})

    assert response.status_code == 413
    assert response.json()["error_type"] == "too_many_documents"
    assert "at most 50" in response.json()["error"]


def test_one_megabyte_document_is_truncated_and_scored(client):
    huge = ("the passage goes on and on " * 40_000)[:1_000_000]

    response = client.post("/v1/rerank", json={"query": QUERY, "documents": [huge, DOCUMENTS[0]]})

    assert response.status_code == 200
    assert len(response.json()["results"]) == 2
    assert response.json()["usage"]["total_tokens"] <= 2 * 128


def test_unknown_path_is_a_json_404(client):
    response = client.get("/nowhere")

    assert response.status_code == 404 and response.json()["error_type"] == "http"


def test_v1_models_lists_the_served_model(client, server_url):
    body = client.get("/v1/models").json()

    assert body["object"] == "list"
    assert body["data"][0]["max_model_len"] == 128
    assert body["data"][0]["id"] == client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()["model"]


def test_metrics_are_prometheus_text_counting_requests_and_pairs(client):
    client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})

    text = client.get("/metrics").text

    assert metric_value(text, "reranker_requests_total", 'endpoint="/v1/rerank",status="200"') >= 1
    assert metric_value(text, "reranker_pairs_total") >= len(DOCUMENTS)
    for name in ("reranker_batch_size_bucket", "reranker_queue_wait_seconds_bucket", "reranker_request_latency_seconds_bucket", "reranker_tokens_total", "reranker_model_loaded 1.0"):
        assert name in text


def test_health_is_503_while_the_model_loads_and_200_after(one_logit_model_path):
    hold_loading, gate = threading.Event(), Gate()
    gate.open()
    app = create_app(Settings(model=one_logit_model_path, device="cpu"), loader=gated_loader(gate, hold_loading=hold_loading))

    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        loading = client.get("/health")
        rerank_while_loading = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
        hold_loading.set()
        wait_until_healthy(client)

        assert loading.status_code == 503 and "loading" in loading.json()["error"]
        assert rerank_while_loading.status_code == 503 and rerank_while_loading.headers["retry-after"]
        assert client.get("/health").json()["status"] == "ok"


def test_model_that_fails_to_load_keeps_health_at_503_with_the_reason(tmp_path):
    app = create_app(Settings(model=str(tmp_path / "missing-model"), device="cpu"))

    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(500):
            health = client.get("/health")
            if "failed" in health.json()["error"]:
                break
            threading.Event().wait(0.02)

    assert health.status_code == 503 and "missing-model" in health.json()["error"]


def test_full_queue_answers_429_with_retry_after_and_serves_again_afterwards(one_logit_model_path):
    gate = Gate()
    settings = Settings(model=one_logit_model_path, device="cpu", max_documents=8, max_queue_pairs=10, max_wait_ms=0)
    app = create_app(settings, loader=gated_loader(gate))

    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        wait_until_healthy(client)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/v1/rerank", json={"query": QUERY, "documents": ["a document"] * 8})
            assert gate.entered.wait(30)
            overloaded = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
            gate.open()
            assert first.result(60).status_code == 200
        after = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
        metrics = client.get("/metrics").text

    assert overloaded.status_code == 429
    assert overloaded.json()["error_type"] == "overloaded"
    assert overloaded.headers["retry-after"] == "1"
    assert after.status_code == 200
    assert metric_value(metrics, "reranker_requests_total", 'endpoint="/v1/rerank",status="429"') == 1


def test_concurrent_requests_share_forward_batches(one_logit_model_path):
    # A long max wait lets the queue owner gather the concurrent requests into shared batches.
    settings = Settings(model=one_logit_model_path, device="cpu", max_wait_ms=300, token_budget=100_000)
    requests = 8

    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as client:
        wait_until_healthy(client)
        with ThreadPoolExecutor(requests) as pool:
            send = lambda _: client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})  # noqa: E731
            responses = list(pool.map(send, range(requests)))
        metrics = client.get("/metrics").text

    assert all(response.status_code == 200 for response in responses)
    assert metric_value(metrics, "reranker_batch_size_sum") == requests * len(DOCUMENTS)
    assert 1 <= metric_value(metrics, "reranker_batch_size_count") < requests


def test_shutdown_answers_requests_already_accepted(one_logit_model_path):
    gate = Gate()
    app = create_app(Settings(model=one_logit_model_path, device="cpu", max_wait_ms=0), loader=gated_loader(gate))

    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        wait_until_healthy(client)
        pool = ThreadPoolExecutor(3)
        pending = [pool.submit(client.post, "/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}) for _ in range(3)]
        assert gate.entered.wait(30)
        app.state.uvicorn_server.should_exit = True  # as on SIGTERM: stop accepting, finish open requests
        gate.open()
        responses = [future.result(60) for future in pending]
        pool.shutdown()

    assert [response.status_code for response in responses] == [200, 200, 200]


def test_an_int8_worker_ranks_like_the_exact_one(tmp_path):
    from reranking.synthetic import build_preset_cross_encoder

    # Moderate weights, as a trained model has (very large random ones quantize badly).
    path = str(build_preset_cross_encoder(tmp_path / "model", "tiny", initializer_range=0.1))
    exact = CrossEncoderScorer(path, device="cpu").predict([(QUERY, document) for document in DOCUMENTS], normalize=False)

    with running_server(create_app(Settings(model=path, device="cpu", backend="int8"))) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            wait_until_healthy(client)
            response = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True})

    assert response.status_code == 200, response.text
    scores = {item["index"]: item["score"] for item in response.json()}
    assert [index for index, _ in sorted(scores.items(), key=lambda item: -item[1])] == list(np.argsort(-exact))
    assert 0 < max(abs(scores[index] - exact[index]) for index in scores) < 0.05  # int8: close, not identical


def test_settings_come_from_the_environment_and_flags_override_them():
    environ = {"RERANKER_MODEL": "BAAI/bge-reranker-base", "RERANKER_PORT": "9001", "RERANKER_MAX_WAIT_MS": "4.5", "RERANKER_DEVICE": ""}

    from_environment = parse_settings([], environ)
    overridden = parse_settings(["--port", "9002", "--max-documents", "20"], environ)

    assert (from_environment.model, from_environment.port, from_environment.max_wait_ms) == ("BAAI/bge-reranker-base", 9001, 4.5)
    assert from_environment.host == "127.0.0.1" and from_environment.device is None
    assert (overridden.port, overridden.max_documents) == (9002, 20)


def test_missing_model_is_a_clear_command_line_error(capsys):
    with pytest.raises(SystemExit):
        parse_settings([], {})

    assert "RERANKER_MODEL" in capsys.readouterr().err


def test_help_explains_every_option_and_its_environment_variable(capsys):
    with pytest.raises(SystemExit):
        parse_settings(["--help"], {})

    text = capsys.readouterr().out
    for name in OPTIONS:
        assert f"--{name.replace('_', '-')}" in text and f"RERANKER_{name.upper()}" in text


def test_failed_scoring_is_a_json_500_and_the_worker_keeps_serving(one_logit_model_path):
    def flaky_loader(settings):
        scorer = CrossEncoderScorer(settings.model, device="cpu")
        real_forward, calls = scorer.forward, []

        def forward(inputs):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("CUDA out of memory (simulated)")
            return real_forward(inputs)

        scorer.forward = forward
        return scorer

    app = create_app(Settings(model=one_logit_model_path, device="cpu"), loader=flaky_loader)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        wait_until_healthy(client)
        failed = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
        recovered = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})

    assert failed.status_code == 500
    assert failed.json() == {"error": "Scoring failed: CUDA out of memory (simulated)", "error_type": "internal"}
    assert recovered.status_code == 200


def test_command_line_server_serves_and_exits_cleanly_on_sigterm(one_logit_model_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "RERANKER_MODEL": one_logit_model_path, "RERANKER_PORT": str(port), "RERANKER_DEVICE": "cpu"}
    process = subprocess.Popen([sys.executable, "-m", "reranking.server"], env=environment, stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.1)
            response = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status shows it.
        assert process.wait(60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert response.status_code == 200
    assert "Finished server process" in process.stderr.read()


def stub_app(stub: SlowStubScorer, **settings):
    """A worker app serving ``stub`` in place of a model."""
    return create_app(Settings(model="stub", **settings), loader=lambda _: stub)


def expected_ranking(stub: SlowStubScorer, documents: list[str]) -> list[tuple[int, float]]:
    """(index, relevance score) best first, as the worker should answer for ``documents``."""
    scores = sigmoid(np.array([stub.raw_score(document) for document in documents]))
    return [(int(index), float(scores[index])) for index in np.argsort(-scores, kind="stable")]


@pytest.mark.parametrize(("path", "field"), [("/v1/rerank", "documents"), ("/rerank", "texts")])
def test_a_client_that_disconnects_while_its_request_waits_costs_no_model_time(path, field):
    stub, gate = SlowStubScorer(seconds_per_pair=0), Gate()
    stub.forward = gate.wrap(stub.forward)
    kept, gone = [f"kept {index}" for index in range(3)], [f"gone {index}" for index in range(5)]

    with running_server(stub_app(stub, max_wait_ms=0)) as url, httpx.Client(base_url=url, timeout=60) as client:
        wait_until_healthy(client)
        with ThreadPoolExecutor(1) as pool:
            answered = pool.submit(client.post, path, json={"query": QUERY, field: kept})
            assert gate.entered.wait(30)  # the model holds kept's batch
            leaving = send_without_reading(url, path, {"query": QUERY, field: gone})
            wait_for_metric(client, "reranker_queued_pairs", len(kept) + len(gone))
            leaving.close()
            wait_for_metric(client, "reranker_abandoned_requests_total", 1)
            gate.open()
            response = answered.result(60)
        metrics = client.get("/metrics").text

    assert response.status_code == 200
    assert stub.scored == kept
    assert metric_value(metrics, "reranker_queued_pairs") == 0
    assert metric_value(metrics, "reranker_requests_total", f'endpoint="{path}",status="499"') == 1


def test_after_a_burst_of_abandoned_requests_a_new_request_is_answered_at_once():
    # 36 requests of 100 documents at 30 ms a pair: 108 s of model time, all of it spent before
    # this fix while the next request waited. 40-character documents make batches of 50 pairs.
    stub = SlowStubScorer(seconds_per_pair=0.03, token_budget=2000)
    abandoned = [[f"abandoned {request:02d} {index:03d}".ljust(40, ".") for index in range(100)] for request in range(36)]
    fresh = [f"fresh {index} " + "x" * index * 9 for index in range(10)]

    app = stub_app(stub)

    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        wait_until_healthy(client)
        leaving = [send_without_reading(url, "/v1/rerank", {"query": QUERY, "documents": documents}) for documents in abandoned]
        wait_for_metric(client, "reranker_queued_pairs", 36 * 100)
        for connection in leaving:
            connection.close()
        started = time.monotonic()
        response = client.post("/v1/rerank", json={"query": QUERY, "documents": fresh}, timeout=10)
        seconds = time.monotonic() - started
        wait_for_metric(client, "reranker_abandoned_requests_total", 36)
        model_thread_alive = app.state.worker.batcher.alive

    assert response.status_code == 200 and seconds < 10
    ranking, expected = response.json()["results"], expected_ranking(stub, fresh)
    assert [result["index"] for result in ranking] == [index for index, _ in expected]
    np.testing.assert_allclose([result["relevance_score"] for result in ranking], [score for _, score in expected], rtol=1e-6)
    # At most the batch in progress, and one begun while the disconnects were arriving.
    assert len([document for document in stub.scored if document.startswith("abandoned")]) <= 2 * 50
    assert model_thread_alive
