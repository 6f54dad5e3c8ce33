"""The app's reranker client against real workers over HTTP: order, round robin, fallback."""

import httpx
import pytest

from ragapp.retrieval.rerank_client import RerankerPool, candidates_rerank, fused_score
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
    assert pool.workers[0].failed_at is not None and "refused" in pool.workers[0].last_error


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


def test_fusion_weight_blends_reranker_and_retrieval_ranks():
    assert fused_score(rerank_rank=1, retrieval_rank=9, weight=1.0, rrf_k=60) == pytest.approx(1 / 61)
    assert fused_score(rerank_rank=1, retrieval_rank=9, weight=0.0, rrf_k=60) == pytest.approx(1 / 69)
    assert fused_score(rerank_rank=2, retrieval_rank=2, weight=0.5, rrf_k=60) == pytest.approx(1 / 62)
