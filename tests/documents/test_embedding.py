"""ragapp/documents/embedding: the CPU threads a process embeds with."""

import pytest
import torch

from ragapp.documents import embedding


@pytest.fixture
def torch_threads(monkeypatch):
    """Warm up without loading the model, and give torch its thread count back afterwards."""
    monkeypatch.setattr(embedding, "embed_query", lambda text: None)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_web_process_embeds_with_the_threads_it_asks_for_when_embedding_threads_is_unset(settings, torch_threads):
    settings.EMBEDDING_THREADS = 0
    embedding.embedding_warm_up(threads=1)
    assert torch.get_num_threads() == 1


def test_embedding_threads_when_set_wins_over_the_processs_own_default(settings, torch_threads):
    settings.EMBEDDING_THREADS = 2
    torch.set_num_threads(2)
    embedding.embedding_warm_up(threads=1)
    assert torch.get_num_threads() == 2
