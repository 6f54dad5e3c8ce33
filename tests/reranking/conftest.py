"""Fixtures for the reranker tests: tiny random cross-encoders built once, a real HTTP server.

Nothing here touches the database. The models are random BERTs with the real all-MiniLM-L6-v2
WordPiece tokenizer; ``initializer_range=0.5`` spreads their scores so rankings are stable.
"""

from __future__ import annotations

from typing import Iterator

import httpx
import pytest

from reranking.model import CrossEncoderScorer
from reranking.server import Settings, create_app
from reranking.synthetic import build_preset_cross_encoder, sample_pairs
from tests.reranking.helpers import running_server, wait_until_healthy


@pytest.fixture(scope="session")
def one_logit_model_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("one-logit-cross-encoder")
    return str(build_preset_cross_encoder(path, "tiny", num_labels=1, initializer_range=0.5))


@pytest.fixture(scope="session")
def two_logit_model_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("two-logit-cross-encoder")
    return str(build_preset_cross_encoder(path, "tiny", num_labels=2, seed=1, initializer_range=0.5))


@pytest.fixture(scope="session")
def scorer(one_logit_model_path) -> CrossEncoderScorer:
    return CrossEncoderScorer(one_logit_model_path, device="cpu")


@pytest.fixture(scope="session")
def pairs() -> list[tuple[str, str]]:
    """Pairs of varied length: queries of 10-20 words, documents of 20-300 words."""
    return sample_pairs(40, seed=7)


@pytest.fixture(scope="module")
def server_url(one_logit_model_path) -> Iterator[str]:
    """One shared worker for tests that only send requests (small limits to test them)."""
    settings = Settings(model=one_logit_model_path, device="cpu", max_documents=50, max_length=128)
    with running_server(create_app(settings)) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            wait_until_healthy(client)
        yield url


@pytest.fixture
def client(server_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=60) as client:
        yield client
