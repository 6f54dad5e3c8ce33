"""DynamicBatcher: shared batches across requests, bounded queue, order, drain, abandoned requests."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from reranking.batcher import BatcherClosed, DynamicBatcher, Overloaded, RequestTooLarge
from reranking.model import CrossEncoderScorer
from tests.reranking.helpers import Gate, SlowStubScorer


class CountingMetrics:
    """Record what the batcher reports."""

    def __init__(self):
        self.batch_sizes: list[int] = []
        self.padded_tokens: list[int] = []
        self.queue_waits: list[float] = []
        self.finished: list[bool] = []
        self.abandoned: list[int] = []

    def batch_scored(self, *, pairs, tokens, padded_tokens, seconds):
        self.batch_sizes.append(pairs)
        self.padded_tokens.append(padded_tokens)

    def request_started(self, *, queue_seconds):
        self.queue_waits.append(queue_seconds)

    def request_finished(self, *, pairs, tokens, seconds, failed):
        self.finished.append(failed)

    def request_abandoned(self, *, pairs):
        self.abandoned.append(pairs)


@pytest.fixture
def gated_scorer(one_logit_model_path):
    """A real scorer whose forward passes wait for the test to open the gate."""
    scorer = CrossEncoderScorer(one_logit_model_path, device="cpu")
    gate = Gate()
    scorer.forward = gate.wrap(scorer.forward)
    yield scorer, gate
    gate.open()


@pytest.fixture
def gated_stub():
    """A stub model that records what it scores, its forward passes held until the test opens the gate."""
    stub, gate = SlowStubScorer(seconds_per_pair=0), Gate()
    stub.forward = gate.wrap(stub.forward)
    yield stub, gate
    gate.open()


def labelled(label, count):
    """``count`` documents of different lengths, each starting with ``label``."""
    return [f"{label} {index} " + "x" * index for index in range(count)]


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


def test_a_request_cancelled_during_its_batch_is_discarded_and_the_model_thread_serves_on(gated_stub):
    stub, gate = gated_stub
    batcher = DynamicBatcher(stub, max_wait_ms=0)
    running = batcher.submit("query", labelled("running", 5))
    assert gate.entered.wait(30)

    assert running.cancel()
    gate.open()
    later = batcher.submit("query", labelled("later", 3))

    np.testing.assert_allclose(later.result(timeout=30).raw_scores, [stub.raw_score(d) for d in labelled("later", 3)])
    assert batcher.alive and batcher.queued_pairs == 0
    batcher.close()


def test_a_cancelled_request_frees_its_queue_capacity_at_once(gated_stub):
    stub, gate = gated_stub
    batcher = DynamicBatcher(stub, max_queue_pairs=10, max_wait_ms=0)
    running = batcher.submit("query", labelled("running", 8))
    assert gate.entered.wait(30)

    running.cancel()
    replacement = batcher.submit("query", labelled("replacement", 10))  # would be Overloaded if 8 were still held
    gate.open()

    assert len(replacement.result(timeout=30).raw_scores) == 10
    batcher.close()


def test_requests_cancelled_before_or_during_their_batch_cost_no_model_time_and_the_others_are_answered(gated_stub):
    stub, gate = gated_stub
    padded = threading.Condition()
    padded_batches: list[set[str]] = []  # the documents of each batch the queue owner padded
    real_collate = stub.collate

    def recording_collate(batch):
        with padded:
            padded_batches.append({"".join(map(chr, pair.input_ids)) for pair in batch})
            padded.notify_all()
        return real_collate(batch)

    stub.collate = recording_collate
    metrics = CountingMetrics()
    batcher = DynamicBatcher(stub, max_wait_ms=200, token_budget=100_000, metrics=metrics)
    running = batcher.submit("query", labelled("running", 3))
    assert gate.entered.wait(30)  # the model holds the first batch; the others queue behind it

    waiting = batcher.submit("query", labelled("waiting", 3))
    waiting.cancel()  # before its batch is built
    kept = batcher.submit("query", labelled("kept", 4))
    cut = batcher.submit("query", labelled("cut", 4))
    with padded:  # wait until one batch holds both kept's and cut's pairs
        assert padded.wait_for(lambda: any({"kept 0 ", "cut 0 "} <= batch for batch in padded_batches), 30)
    cut.cancel()  # its pairs are in a batch already built
    running.cancel()  # during its batch
    gate.open()

    np.testing.assert_allclose(kept.result(timeout=30).raw_scores, [stub.raw_score(d) for d in labelled("kept", 4)])
    assert all(future.cancelled() for future in (running, waiting, cut))
    assert not [document for document in stub.scored if document.startswith(("waiting", "cut"))]
    assert sorted(metrics.abandoned) == [3, 3, 4]
    assert batcher.queued_pairs == 0
    assert len(batcher.submit("query", labelled("after", 2)).result(timeout=30).raw_scores) == 2
    assert batcher.alive
    batcher.close()
