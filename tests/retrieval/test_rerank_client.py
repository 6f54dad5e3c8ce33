"""The app's reranker client against real workers over HTTP: order, round robin, fallback, overload."""

import socket
import time
from email.utils import formatdate

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from ragapp.retrieval.rerank_client import (
    LONGEST_OVERLOAD_PAUSE_SECONDS,
    REFUSED_CONNECTION_PAUSE_SECONDS,
    RerankerPool,
    RerankerUnavailable,
    candidates_rerank,
    fused_score,
)
from ragapp.retrieval.selectors import chunk_search
from reranking.server import Settings, create_app
from reranking.synthetic import build_preset_cross_encoder
from tests.reranking.helpers import running_server, wait_until_healthy

pytestmark = pytest.mark.django_db

DEAD_WORKER = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(scope="module")
def worker_url(tmp_path_factory):
    model = build_preset_cross_encoder(tmp_path_factory.mktemp("reranker"), "tiny")

    with running_server(create_app(Settings(model=str(model), device="cpu"))) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            wait_until_healthy(client)
        yield url


class Refusing:
    """A real server whose every rerank is refused with one status and Retry-After; it counts the requests."""

    def __init__(self, status: int, retry_after: str | None):
        self.asked = 0
        self.url = ""  # where it is served, once it is
        headers = {"Retry-After": retry_after} if retry_after is not None else None

        async def rerank(request):
            self.asked += 1
            return JSONResponse({"error": "busy", "error_type": "overloaded"}, status_code=status, headers=headers)

        self.app = Starlette(routes=[Route("/v1/rerank", rerank, methods=["POST"])])


@pytest.fixture
def overloaded():
    """A worker that answers 429 with Retry-After: 1, as a full reranker queue does."""
    refusing = Refusing(429, "1")
    with running_server(refusing.app) as url:
        refusing.url = url
        yield refusing


def why_unanswered(pool: RerankerPool) -> str:
    """Ask the pool to rank one document when no worker will answer; return the reason."""
    with pytest.raises(RerankerUnavailable) as unavailable:
        pool.scores(query="taxi", documents=["Taxis are reimbursed with a receipt."])
    return str(unavailable.value)


def resting_seconds(pool: RerankerPool, url: str) -> float:
    """How much longer the pool skips the worker at ``url``."""
    worker = next(worker for worker in pool.workers if worker.url == url)
    return worker.resting_until - time.monotonic()


@pytest.fixture
def candidates(collection, ingest):
    for name, text in {"a.txt": "Taxis are reimbursed with a receipt.", "b.txt": "Taxi rides at night cost more.",
                       "c.txt": "The taxi rank is outside."}.items():
        ingest(collection, name, text.encode())
    return chunk_search(query="taxi", collection=collection, reader=None, k=10)


def test_reranked_order_follows_the_worker_scores(worker_url, candidates):
    outcome = candidates_rerank(query="taxi", candidates=candidates, pool=RerankerPool([worker_url]))
    assert outcome.reranked and outcome.worker == worker_url
    scores = [r.rerank_score for r in outcome.ranked]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r.retrieval_rank for r in outcome.ranked) == list(range(1, len(candidates) + 1))


def test_dead_worker_is_skipped_and_the_live_one_answers(worker_url, candidates):
    pool = RerankerPool([DEAD_WORKER, worker_url], timeout=2)
    outcomes = [candidates_rerank(query="taxi", candidates=candidates, pool=pool) for _ in range(3)]
    assert all(o.reranked and o.worker == worker_url for o in outcomes)
    assert pool.workers[0].resting_until > time.monotonic() and "refused" in pool.workers[0].last_error


def test_a_refused_connection_rests_briefly_and_a_timeout_the_full_period(candidates):
    refused = RerankerPool([DEAD_WORKER], timeout=0.5, retry_after=30)
    candidates_rerank(query="taxi", candidates=candidates, pool=refused)
    assert refused.workers[0].resting_until - time.monotonic() <= REFUSED_CONNECTION_PAUSE_SECONDS
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts into its backlog, never answers
        hanging = RerankerPool([f"http://127.0.0.1:{silent.getsockname()[1]}"], timeout=0.5, retry_after=30)
        outcome = candidates_rerank(query="taxi", candidates=candidates, pool=hanging)
    assert "timed out" in outcome.reason and hanging.workers[0].resting_until - time.monotonic() > 25


def test_no_worker_keeps_retrieval_order_flagged_with_the_reason(candidates):
    outcome = candidates_rerank(query="taxi", candidates=candidates, top_n=2, pool=RerankerPool([DEAD_WORKER], timeout=2))
    assert not outcome.reranked and "connection refused" in outcome.reason
    assert [r.candidate for r in outcome.ranked] == candidates[:2]
    unconfigured = candidates_rerank(query="taxi", candidates=candidates, pool=RerankerPool([]))
    assert not unconfigured.reranked and "RERANKER_URL" in unconfigured.reason


def test_a_worker_killed_mid_service_falls_back_with_the_flag(tmp_path, candidates):
    model = build_preset_cross_encoder(tmp_path / "reranker", "tiny")

    with running_server(create_app(Settings(model=str(model), device="cpu"))) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            wait_until_healthy(client)
        pool = RerankerPool([url], timeout=2)
        assert candidates_rerank(query="taxi", candidates=candidates, pool=pool).reranked
    outcome = candidates_rerank(query="taxi", candidates=candidates, pool=pool)
    assert not outcome.reranked and url in outcome.reason


def test_an_overloaded_worker_passes_the_request_to_the_next_one_at_once(overloaded, worker_url, candidates):
    pool = RerankerPool([overloaded.url, worker_url], timeout=2, retry_after=30)

    outcome = candidates_rerank(query="taxi", candidates=candidates, pool=pool)

    assert outcome.reranked and outcome.worker == worker_url
    assert overloaded.asked == 1
    assert 0 < resting_seconds(pool, overloaded.url) <= 1


def test_an_overloaded_worker_rests_only_as_long_as_its_retry_after(overloaded):
    pool = RerankerPool([overloaded.url], timeout=2, retry_after=30)

    first, during_the_pause = why_unanswered(pool), why_unanswered(pool)
    time.sleep(1.1)
    why_unanswered(pool)

    assert "HTTP 429" in first and "resting" in during_the_pause
    assert overloaded.asked == 2  # asked again one second later, not thirty


@pytest.mark.parametrize(
    ("status", "retry_after", "longest_rest"),
    [
        (429, lambda: "3600", LONGEST_OVERLOAD_PAUSE_SECONDS),  # a long pause asked for is cut to the limit
        (503, lambda: formatdate(time.time() + 3, usegmt=True), 3),  # Retry-After as an HTTP date
        (503, lambda: None, 30),  # no Retry-After: a failure like any other, the full retry period
    ],
)
def test_the_rest_after_a_refusal_follows_retry_after_within_a_limit(status, retry_after, longest_rest):
    refusing = Refusing(status, retry_after())
    with running_server(refusing.app) as url:
        pool = RerankerPool([url], timeout=2, retry_after=30)
        why_unanswered(pool)

    assert longest_rest - 1.5 < resting_seconds(pool, url) <= longest_rest


def test_fusion_weight_blends_reranker_and_retrieval_ranks():
    assert fused_score(rerank_rank=1, retrieval_rank=9, weight=1.0, rrf_k=60) == pytest.approx(1 / 61)
    assert fused_score(rerank_rank=1, retrieval_rank=9, weight=0.0, rrf_k=60) == pytest.approx(1 / 69)
    assert fused_score(rerank_rank=2, retrieval_rank=2, weight=0.5, rrf_k=60) == pytest.approx(1 / 62)
