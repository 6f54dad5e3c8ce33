"""DynamicBatcher: shared batches across requests, bounded queue, order, drain."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from reranking.batcher import BatcherClosed, DynamicBatcher, Overloaded, RequestTooLarge
from reranking.model import CrossEncoderScorer
from tests.reranking.helpers import Gate


class CountingMetrics:
    """Record what the batcher reports."""

    def __init__(self):
        self.batch_sizes: list[int] = []
        self.padded_tokens: list[int] = []
        self.queue_waits: list[float] = []
        self.finished: list[bool] = []

    def batch_scored(self, *, pairs, tokens, padded_tokens, seconds):
        self.batch_sizes.append(pairs)
        self.padded_tokens.append(padded_tokens)

    def request_started(self, *, queue_seconds):
        self.queue_waits.append(queue_seconds)

    def request_finished(self, *, pairs, tokens, seconds, failed):
        self.finished.append(failed)


@pytest.fixture
def gated_scorer(one_logit_model_path):
    """A real scorer whose forward passes wait for the test to open the gate."""
    scorer = CrossEncoderScorer(one_logit_model_path, device="cpu")
    gate = Gate()
    scorer.forward = gate.wrap(scorer.forward)
    yield scorer, gate
    gate.open()


def split_requests(pairs, size):
    """Turn pairs into requests of one query and ``size`` documents each."""
    query = pairs[0][0]
    documents = [document for _, document in pairs]
    return [(query, documents[start : start + size]) for start in range(0, len(documents), size)]


def test_each_request_gets_its_scores_in_its_own_document_order(scorer, pairs):
    batcher = DynamicBatcher(scorer, max_wait_ms=5)
    requests = split_requests(pairs, 7)

    futures = [batcher.submit(query, documents) for query, documents in requests]

    for (query, documents), future in zip(requests, futures):
        result = future.result(timeout=60)
        expected = scorer.predict([(query, document) for document in documents], normalize=False)
        np.testing.assert_allclose(result.raw_scores, expected, atol=1e-4)
        assert result.tokens == sum(len(pair) for pair in scorer.tokenize([(query, d) for d in documents]))
    batcher.close()


def test_concurrent_requests_share_forward_batches(gated_scorer, pairs):
    scorer, gate = gated_scorer
    metrics = CountingMetrics()
    batcher = DynamicBatcher(scorer, max_wait_ms=200, token_budget=100_000, metrics=metrics)
    requests = split_requests(pairs, 5)

    futures = [batcher.submit(query, documents) for query, documents in requests]
    gate.open()
    for future in futures:
        future.result(timeout=60)
    batcher.close()

    assert sum(metrics.batch_sizes) == len(pairs)
    assert len(metrics.batch_sizes) < len(requests)
    assert max(metrics.batch_sizes) > 5  # some batch mixed pairs of several requests


def test_batches_stay_within_the_token_budget(scorer, pairs):
    metrics = CountingMetrics()
    batcher = DynamicBatcher(scorer, max_wait_ms=50, token_budget=1024, metrics=metrics)

    batcher.submit(pairs[0][0], [document for _, document in pairs]).result(timeout=60)
    batcher.close()

    assert len(metrics.batch_sizes) > 1
    assert all(padded <= 1024 or size == 1 for padded, size in zip(metrics.padded_tokens, metrics.batch_sizes))


def test_full_queue_raises_overloaded_at_once_and_serves_again_when_drained(gated_scorer):
    scorer, gate = gated_scorer
    batcher = DynamicBatcher(scorer, max_queue_pairs=10, max_wait_ms=0)
    first = batcher.submit("query", ["document"] * 8)

    with pytest.raises(Overloaded, match="queue is full"):
        batcher.submit("query", ["document"] * 3)
    assert batcher.queued_pairs == 8

    gate.open()
    first.result(timeout=60)
    assert batcher.queued_pairs == 0
    assert len(batcher.submit("query", ["document"] * 10).result(timeout=60).raw_scores) == 10
    batcher.close()


def test_request_larger_than_the_whole_queue_is_refused(scorer):
    batcher = DynamicBatcher(scorer, max_queue_pairs=4)

    with pytest.raises(RequestTooLarge):
        batcher.submit("query", ["document"] * 5)
    batcher.close()


def test_close_finishes_queued_requests_then_refuses_new_ones(gated_scorer, pairs):
    scorer, gate = gated_scorer
    batcher = DynamicBatcher(scorer, max_wait_ms=0, token_budget=512)
    futures = [batcher.submit(query, documents) for query, documents in split_requests(pairs, 4)]
    assert gate.entered.wait(30)

    closing = threading.Thread(target=batcher.close)
    closing.start()
    gate.open()
    closing.join(60)

    assert not closing.is_alive()
    assert all(len(future.result(timeout=0).raw_scores) == 4 for future in futures)
    with pytest.raises(BatcherClosed):
        batcher.submit("query", ["document"])


def test_failed_forward_pass_fails_its_requests_and_the_batcher_keeps_serving(one_logit_model_path):
    scorer = CrossEncoderScorer(one_logit_model_path, device="cpu")
    real_forward = scorer.forward
    calls = {"count": 0}

    def fail_first(inputs):
        calls["count"] += 1
        if calls["count"] == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_forward(inputs)

    scorer.forward = fail_first
    metrics = CountingMetrics()
    batcher = DynamicBatcher(scorer, metrics=metrics)

    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.submit("query", ["a document"]).result(timeout=60)
    assert len(batcher.submit("query", ["a document"]).result(timeout=60).raw_scores) == 1
    assert metrics.finished == [True, False]
    assert batcher.queued_pairs == 0
    batcher.close()


def test_score_can_be_awaited_from_asyncio(scorer):
    batcher = DynamicBatcher(scorer)

    result = asyncio.run(batcher.score("query", ["one document", "another document"]))

    assert result.raw_scores.shape == (2,)
    batcher.close()


def test_queue_wait_is_reported_once_per_request(scorer, pairs):
    metrics = CountingMetrics()
    batcher = DynamicBatcher(scorer, metrics=metrics)

    for query, documents in split_requests(pairs, 10):
        batcher.submit(query, documents).result(timeout=60)
    batcher.close()

    assert len(metrics.queue_waits) == 4 and all(wait >= 0 for wait in metrics.queue_waits)
