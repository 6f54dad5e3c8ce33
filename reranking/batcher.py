"""Dynamic batching of rerank requests across concurrent callers.

Three roles, as in text-embeddings-inference's queue/infer split:

1. **Callers** (HTTP handlers) call ``submit(query, documents)``: capacity is reserved at once
   (or ``Overloaded`` is raised: the queue is bounded and never grows), then a tokenizer thread
   tokenizes the request, off the event loop and in parallel with the model.
2. **The queue owner** (one thread) waits briefly for concurrent requests to pile up
   (``max_wait_ms``), sorts the waiting pairs of all requests by length, cuts them into
   micro-batches under the token budget and pads each one, while the model runs the previous.
3. **The model thread** (one) only runs forward passes and hands each score to its request;
   a request's future resolves when its last pair is scored, with scores in its own order.

A caller who goes away cancels its future (``asyncio`` does when the awaiting task is
cancelled): its capacity is released and its waiting pairs leave the queue at once, pairs
already cut into a batch are dropped before the forward pass, and a result that is ready
anyway is thrown away. Nothing a caller does to its future can stop the model thread.

``close()`` stops accepting and drains: everything already accepted is scored and answered.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from reranking.model import CrossEncoderScorer, plan_batches
from reranking.pairs import EncodedPair, ModelInputs

logger = logging.getLogger(__name__)

# The queue owner sorts at most this many budgets' worth of waiting tokens at once, so a huge
# backlog is cut into windows (oldest first) and later requests are not reordered ahead.
WINDOW_BUDGETS = 8


class BatcherError(Exception):
    """Base class of the batcher's errors."""


class Overloaded(BatcherError):
    """The queue holds too many pairs: retry later (HTTP 429/503 with Retry-After)."""


class BatcherClosed(BatcherError):
    """The batcher is shutting down and accepts no new work."""


class RequestTooLarge(BatcherError):
    """One request has more pairs than the whole queue may hold: it could never be served."""


class BatcherMetrics(Protocol):
    """Hooks the server implements (e.g. with Prometheus); every method must be cheap."""

    def batch_scored(self, *, pairs: int, tokens: int, padded_tokens: int, seconds: float) -> None: ...

    def request_started(self, *, queue_seconds: float) -> None: ...

    def request_finished(self, *, pairs: int, tokens: int, seconds: float, failed: bool) -> None: ...

    def request_abandoned(self, *, pairs: int) -> None: ...


class NoMetrics:
    """Metrics hooks that record nothing."""

    def batch_scored(self, *, pairs: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        pass

    def request_started(self, *, queue_seconds: float) -> None:
        pass

    def request_finished(self, *, pairs: int, tokens: int, seconds: float, failed: bool) -> None:
        pass

    def request_abandoned(self, *, pairs: int) -> None:
        pass


@dataclass(frozen=True)
class ScoredRequest:
    """The answer to one submitted request, in the order its documents were given."""

    raw_scores: np.ndarray
    tokens: int
    truncated: list[bool]


@dataclass(eq=False)
class _Request:
    query: str
    documents: Sequence[str]
    future: Future
    submitted_at: float = field(default_factory=time.perf_counter)
    encoded: list[EncodedPair] = field(default_factory=list)
    raw_scores: np.ndarray | None = None
    remaining: int = 0
    started: bool = False
    settled: bool = False  # answered, failed or abandoned: its pairs need no more model time


@dataclass(frozen=True, slots=True)
class _Batch:
    owners: list[tuple[_Request, int]]  # (request, index of the pair in that request)
    inputs: ModelInputs
    tokens: int


class DynamicBatcher:
    """Batch pairs from concurrent requests into token-budget forward passes on one model thread.

    Args:
        scorer: the loaded model; only its ``tokenize_query``, ``collate`` and ``forward`` are used.
        token_budget: padded tokens per forward pass; default the scorer's.
        max_wait_ms: how long an idle model waits for more requests to fill a batch.
        max_queue_pairs: pairs accepted but not yet answered; beyond it ``submit`` raises ``Overloaded``.
        tokenizer_threads: threads tokenizing requests beside the model thread.
        metrics: hooks called on every batch and request.
    """

    def __init__(
        self,
        scorer: CrossEncoderScorer,
        *,
        token_budget: int | None = None,
        max_wait_ms: float = 2.0,
        max_queue_pairs: int = 8192,
        tokenizer_threads: int = 1,
        metrics: BatcherMetrics | None = None,
    ):
        self.scorer = scorer
        self.token_budget = token_budget or scorer.token_budget
        self.max_wait = max_wait_ms / 1000
        self.max_queue_pairs = max_queue_pairs
        self.metrics = metrics or NoMetrics()
        self._lock = threading.Condition()  # re-entrant: _settle takes it again inside locked sections
        self._waiting: collections.deque[tuple[_Request, int]] = collections.deque()
        self._waiting_tokens = 0
        self._queued_pairs = 0  # accepted, not yet answered
        self._accepting = True
        self._tokenizing = 0
        self._batches: queue.Queue[_Batch | None] = queue.Queue(maxsize=2)
        self._tokenizers = ThreadPoolExecutor(tokenizer_threads, thread_name_prefix="rerank-tokenize")
        self._owner = threading.Thread(target=self._own_queue, name="rerank-queue", daemon=True)
        self._model = threading.Thread(target=self._run_model, name="rerank-model", daemon=True)
        self._owner.start()
        self._model.start()

    # ----- callers -------------------------------------------------------------------------

    @property
    def queued_pairs(self) -> int:
        """Pairs accepted and not yet answered."""
        return self._queued_pairs

    @property
    def alive(self) -> bool:
        """Whether the queue owner and the model thread are running (False once closed)."""
        return self._owner.is_alive() and self._model.is_alive()

    def submit(self, query: str, documents: Sequence[str]) -> Future:
        """Accept a request or raise ``Overloaded`` / ``BatcherClosed``; the future gets a ``ScoredRequest``."""
        if len(documents) > self.max_queue_pairs:
            raise RequestTooLarge(
                f"{len(documents)} documents exceed the queue's capacity of {self.max_queue_pairs} pairs."
            )
        request = _Request(query=query, documents=documents, future=Future(), remaining=len(documents))
        with self._lock:
            if not self._accepting:
                raise BatcherClosed("The reranker is shutting down: send the request to another worker.")
            if self._queued_pairs + len(documents) > self.max_queue_pairs:
                raise Overloaded(
                    f"The reranker queue is full ({self._queued_pairs} of {self.max_queue_pairs} pairs waiting): retry shortly."
                )
            self._queued_pairs += len(documents)
            self._tokenizing += 1
        request.future.add_done_callback(lambda future: self._drop_if_cancelled(request, future))
        if not documents:
            self._finish(request, np.empty(0, dtype=np.float32))
            with self._lock:
                self._tokenizing -= 1
            return request.future
        self._tokenizers.submit(self._tokenize, request)
        return request.future

    async def score(self, query: str, documents: Sequence[str]) -> ScoredRequest:
        """Submit and await from asyncio code (raises at once when overloaded or closed)."""
        return await asyncio.wrap_future(self.submit(query, documents))

    def _tokenize(self, request: _Request) -> None:
        try:
            if not request.settled:  # skip a request abandoned while it waited for this thread
                self._enqueue(request, self.scorer.tokenize_query(request.query, request.documents))
        except Exception as error:  # noqa: BLE001 - the caller gets the error on its future
            logger.exception("Tokenizing a rerank request failed")
            self._fail(request, error)
        finally:
            with self._lock:
                self._tokenizing -= 1
                self._lock.notify_all()

    def _enqueue(self, request: _Request, encoded: list[EncodedPair]) -> None:
        request.encoded = encoded
        request.raw_scores = np.empty(len(encoded), dtype=np.float32)
        with self._lock:
            if request.settled:  # abandoned while it was tokenized
                return
            self._waiting.extend((request, index) for index in range(len(encoded)))
            self._waiting_tokens += sum(len(pair) for pair in encoded)

    def _drop_if_cancelled(self, request: _Request, future: Future) -> None:
        """Done callback: a cancelled request frees its capacity and leaves the queue at once."""
        if not future.cancelled():
            return
        with self._lock:
            if not self._settle(request):
                return
            self._remove_waiting(request)
        self.metrics.request_abandoned(pairs=len(request.documents))

    def _remove_waiting(self, request: _Request) -> None:
        """Take a request's pairs out of the waiting queue (with the lock held)."""
        kept: collections.deque[tuple[_Request, int]] = collections.deque()
        for entry in self._waiting:
            if entry[0] is request:
                self._waiting_tokens -= len(request.encoded[entry[1]])
            else:
                kept.append(entry)
        self._waiting = kept

    # ----- queue owner ---------------------------------------------------------------------

    def _own_queue(self) -> None:
        """Build batches from waiting pairs until closed and drained, then stop the model thread."""
        while True:
            window = self._next_window()
            if window is None:
                break
            try:
                batches = self._cut(window)
            except Exception as error:  # noqa: BLE001 - fail these requests, keep serving others
                logger.exception("Building a rerank batch failed")
                for request in {request for request, _ in window}:
                    self._fail(request, error)
                continue
            for batch in batches:
                self._batches.put(batch)  # blocks while the model is two batches behind
        self._batches.put(None)

    def _next_window(self) -> list[tuple[_Request, int]] | None:
        """Wait for pairs (and up to ``max_wait`` for a fuller batch); take the oldest; None when done."""
        with self._lock:
            while not self._waiting:
                if not self._accepting and self._tokenizing == 0:
                    return None
                self._lock.wait()
            deadline = time.perf_counter() + self.max_wait
            while self._accepting and self._waiting_tokens < self.token_budget:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            return self._take_window()

    def _take_window(self) -> list[tuple[_Request, int]]:
        window, tokens, limit = [], 0, self.token_budget * WINDOW_BUDGETS
        while self._waiting and (not window or tokens < limit):
            request, index = self._waiting.popleft()
            length = len(request.encoded[index])
            self._waiting_tokens -= length
            if request.settled:
                continue
            window.append((request, index))
            tokens += length
        return window

    def _cut(self, window: list[tuple[_Request, int]]) -> list[_Batch]:
        """Sort a window by length into token-budget batches and pad each one."""
        lengths = [len(request.encoded[index]) for request, index in window]
        batches = []
        for members in plan_batches(lengths, self.token_budget):
            owners = [window[member] for member in members]
            pairs = [request.encoded[index] for request, index in owners]
            tokens = sum(lengths[member] for member in members)
            batches.append(_Batch(owners, self.scorer.collate(pairs), tokens))
        return batches

    # ----- model thread --------------------------------------------------------------------

    def _run_model(self) -> None:
        while (batch := self._batches.get()) is not None:
            try:
                self._run_batch(batch)
            except Exception as error:  # noqa: BLE001 - e.g. CUDA out of memory: fail these requests, keep serving
                logger.exception("A rerank forward pass failed")
                for request in {request for request, _ in batch.owners}:
                    self._fail(request, error)

    def _run_batch(self, batch: _Batch) -> None:
        live = self._without_settled(batch)
        if live is None:
            return
        self._mark_started(live)
        started = time.perf_counter()
        scores = self.scorer.forward(live.inputs)
        seconds = time.perf_counter() - started
        self.metrics.batch_scored(
            pairs=len(live.owners), tokens=live.tokens, padded_tokens=live.inputs.input_ids.size, seconds=seconds
        )
        self._dispatch(live, scores)

    def _without_settled(self, batch: _Batch) -> _Batch | None:
        """The batch less the pairs of requests settled since it was cut (padded again); None if empty."""
        owners = [(request, index) for request, index in batch.owners if not request.settled]
        if len(owners) == len(batch.owners):
            return batch
        if not owners:
            return None
        pairs = [request.encoded[index] for request, index in owners]
        return _Batch(owners, self.scorer.collate(pairs), sum(len(pair) for pair in pairs))

    def _mark_started(self, batch: _Batch) -> None:
        now = time.perf_counter()
        for request, _ in batch.owners:
            if not request.started:
                request.started = True
                self.metrics.request_started(queue_seconds=now - request.submitted_at)

    def _dispatch(self, batch: _Batch, scores: np.ndarray) -> None:
        """Hand each score to its request; resolve requests whose last pair this was."""
        for (request, index), score in zip(batch.owners, scores):
            if request.settled:  # failed, or abandoned during this batch: nobody wants the score
                continue
            request.raw_scores[index] = score
            request.remaining -= 1
            if request.remaining == 0:
                self._finish(request, request.raw_scores)

    def _finish(self, request: _Request, raw_scores: np.ndarray) -> None:
        if not self._settle(request):
            return
        tokens = sum(len(pair) for pair in request.encoded)
        result = ScoredRequest(raw_scores, tokens, [pair.truncated for pair in request.encoded])
        self.metrics.request_finished(
            pairs=len(request.documents), tokens=tokens, seconds=time.perf_counter() - request.submitted_at, failed=False
        )
        _answer(request.future, result=result)

    def _fail(self, request: _Request, error: BaseException) -> None:
        if not self._settle(request):
            return
        self.metrics.request_finished(
            pairs=len(request.documents), tokens=0, seconds=time.perf_counter() - request.submitted_at, failed=True
        )
        _answer(request.future, error=error)

    def _settle(self, request: _Request) -> bool:
        """Release a request's capacity; True only the first time, so it has exactly one outcome."""
        with self._lock:
            if request.settled:
                return False
            request.settled = True
            self._queued_pairs -= len(request.documents)
            return True

    # ----- shutdown ------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting, score everything already accepted, stop the threads; False on timeout."""
        with self._lock:
            self._accepting = False
            self._lock.notify_all()
        self._tokenizers.shutdown(wait=True)
        self._owner.join(timeout)
        self._model.join(timeout)
        return not (self._owner.is_alive() or self._model.is_alive())


def _answer(future: Future, *, result: ScoredRequest | None = None, error: BaseException | None = None) -> None:
    """Complete a caller's future, unless the caller cancelled it meanwhile: then nobody is waiting."""
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass
