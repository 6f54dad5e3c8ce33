"""The app's client for reranker workers (reranking.server): round robin, health, fallback.

Workers are listed in RERANKER_URL (comma-separated). Each call goes to the next worker
that is not resting; a worker that times out or errs rests for RERANKER_RETRY_AFTER_SECONDS,
and one that is only overloaded (429/503 with Retry-After) rests for the time it asked. Either
way the call moves on to the next worker at once. When no worker answers, the candidates keep
their retrieval order and the outcome says `reranked=False` with the reason, so callers can show it.
"""

import email.utils
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx
from django.conf import settings

from ragapp.retrieval.selectors import Candidate

logger = logging.getLogger(__name__)

# An overloaded worker that asks for a longer pause is tried again after this: a burst passes in
# seconds, and a worker (or a proxy before it) asking for minutes would idle a GPU that long.
LONGEST_OVERLOAD_PAUSE_SECONDS = 10.0
# A worker that refuses connections is most often being restarted (serve restarts it within seconds).
REFUSED_CONNECTION_PAUSE_SECONDS = 2.0


class RerankerUnavailable(Exception):
    """No worker gave scores; the message says why, for the caller to show."""


@dataclass(frozen=True)
class RankedCandidate:
    """A retrieval candidate with its place after reranking (and fusion, when used)."""

    candidate: Candidate
    retrieval_rank: int  # 1-based place in the retrieval order
    rerank_score: float | None  # the reranker's relevance (0..1), None when not reranked
    score: float  # what the final order is sorted by


@dataclass(frozen=True)
class RerankOutcome:
    ranked: list[RankedCandidate]
    reranked: bool
    reason: str = ""  # why not reranked, in plain words
    worker: str = ""  # which worker answered
    seconds: float = 0.0


@dataclass
class _Worker:
    url: str
    resting_until: float = 0.0  # time.monotonic() before which the worker is skipped
    last_error: str = ""


@dataclass
class RerankerPool:
    """Round robin over worker URLs, skipping those resting after a failure or an overload."""

    urls: list[str]
    timeout: float = 10.0
    retry_after: float = 30.0
    workers: list[_Worker] = field(init=False)

    def __post_init__(self):
        self.workers = [_Worker(url.rstrip("/")) for url in self.urls]
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=self.timeout)

    def scores(self, *, query: str, documents: list[str]) -> tuple[list[float], str]:
        """Return relevance scores in document order and the worker URL that gave them."""
        if not self.workers:
            raise RerankerUnavailable("no reranker is configured (set RERANKER_MODEL, a hub id such as "
                                      "BAAI/bge-reranker-base or a folder, for `manage.py serve` to start a worker; "
                                      "or RERANKER_URL to use running workers)")
        errors = []
        for worker in self._rotation():
            try:
                return self._ask(worker, query, documents), worker.url
            except (httpx.HTTPError, ValueError, KeyError) as error:
                self._rest(worker, error)
                errors.append(f"{worker.url}: {worker.last_error}")
        raise RerankerUnavailable("no reranker worker answered (" + "; ".join(errors or self._resting()) + ")")

    def _resting(self) -> list[str]:
        """Why each worker is skipped now, and for how long still: what a caller shows when none was asked."""
        now = time.monotonic()
        return [f"{worker.url} resting {worker.resting_until - now:.0f} s more after: {worker.last_error}"
                for worker in self.workers]

    def _rotation(self) -> list[_Worker]:
        """Workers in round-robin order from the next turn, healthy ones only."""
        with self._lock:
            start = next(self._turn) % len(self.workers)
        now = time.monotonic()
        ordered = self.workers[start:] + self.workers[:start]
        return [worker for worker in ordered if worker.resting_until <= now]

    def _ask(self, worker: _Worker, query: str, documents: list[str]) -> list[float]:
        response = self._client.post(f"{worker.url}/v1/rerank", json={"query": query, "documents": documents})
        response.raise_for_status()
        scores = [0.0] * len(documents)
        for result in response.json()["results"]:
            scores[result["index"]] = float(result["relevance_score"])
        return scores

    def _rest(self, worker: _Worker, error: Exception) -> None:
        """Skip a worker for the pause an overloaded one asked for, briefly when it refused the connection
        (being restarted, most often), else for the retry period."""
        asked = _asked_pause(error)
        if asked is not None:
            pause = min(asked, LONGEST_OVERLOAD_PAUSE_SECONDS)
        elif isinstance(error, httpx.ConnectError):  # costs a millisecond to try again, unlike a timeout
            pause = min(self.retry_after, REFUSED_CONNECTION_PAUSE_SECONDS)
        else:
            pause = self.retry_after
        worker.resting_until, worker.last_error = time.monotonic() + pause, _describe(error)
        logger.warning("Reranker worker %s failed: %s; skipped for %.0f s", worker.url, worker.last_error, pause)


def _asked_pause(error: Exception) -> float | None:
    """Seconds a 429/503 answer's Retry-After asks for (delta-seconds or an HTTP date); None otherwise."""
    if not isinstance(error, httpx.HTTPStatusError) or error.response.status_code not in (429, 503):
        return None
    value = error.response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": a date in UTC with no zone given
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _describe(error: Exception) -> str:
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    if isinstance(error, httpx.ConnectError):
        return "connection refused"
    return f"{type(error).__name__}: {error}"


_pools: dict[tuple, RerankerPool] = {}


def reranker_pool() -> RerankerPool:
    """Return the process-wide pool for the configured workers (kept, so health state persists)."""
    key = (tuple(settings.RERANKER_URLS), settings.RERANKER_TIMEOUT_SECONDS, settings.RERANKER_RETRY_AFTER_SECONDS)
    if key not in _pools:
        _pools[key] = RerankerPool(list(key[0]), timeout=key[1], retry_after=key[2])
    return _pools[key]


def fused_score(*, rerank_rank: int, retrieval_rank: int, weight: float, rrf_k: int) -> float:
    """Weighted reciprocal-rank fusion of the reranker's and the retrieval's orders."""
    return weight / (rrf_k + rerank_rank) + (1 - weight) / (rrf_k + retrieval_rank)


def candidates_rerank(*, query: str, candidates: list[Candidate], top_n: int | None = None,
                      fusion_weight: float = 1.0, pool: RerankerPool | None = None) -> RerankOutcome:
    """Reorder candidates by the reranker (fused with retrieval order by `fusion_weight`); keep top_n.

    When no worker answers, the retrieval order is kept and the outcome is flagged.
    """
    top_n = top_n or len(candidates)
    if not candidates:
        return RerankOutcome(ranked=[], reranked=True)
    started = time.perf_counter()
    try:
        scores, worker = (pool or reranker_pool()).scores(query=query, documents=[c.chunk.text for c in candidates])
    except RerankerUnavailable as error:
        kept = [RankedCandidate(c, rank, None, c.score) for rank, c in enumerate(candidates, 1)]
        return RerankOutcome(ranked=kept[:top_n], reranked=False, reason=str(error), seconds=time.perf_counter() - started)
    ranked = rerank_order(candidates, scores, fusion_weight)
    return RerankOutcome(ranked=ranked[:top_n], reranked=True, worker=worker, seconds=time.perf_counter() - started)


def rerank_order(candidates: list[Candidate], scores: list[float], weight: float) -> list[RankedCandidate]:
    """Candidates (in retrieval order) sorted by the fusion of their reranker and retrieval ranks.

    weight 1 is the reranker's order alone, 0 the retrieval order; ties keep retrieval order.
    """
    by_rerank = sorted(range(len(candidates)), key=lambda i: -scores[i])
    rerank_rank = {index: rank for rank, index in enumerate(by_rerank, 1)}
    ranked = [
        RankedCandidate(candidate, index + 1, scores[index], fused_score(
            rerank_rank=rerank_rank[index], retrieval_rank=index + 1, weight=weight, rrf_k=settings.RRF_K))
        for index, candidate in enumerate(candidates)
    ]
    return sorted(ranked, key=lambda r: (-r.score, r.retrieval_rank))
