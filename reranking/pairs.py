"""The one encoding of (query, passage) pairs, shared by serving (`CrossEncoderScorer`) and training.

A pair is ``prefix query middle passage suffix`` in the tokenizer's own layout. The query keeps
at most ``query_max_length`` tokens, the passage is cut to fill ``max_length``. A folder written
by `reranking.train` records both numbers in ``pair_encoding.json``, so it is served as it was trained.
No torch here: tokens in, numpy arrays out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

# Serving's numbers since the first worker: hub rerankers are trained on 512-token pairs, and
# keeping them leaves the scores of every model served today as they were.
DEFAULT_MAX_LENGTH = 512
PAIR_ENCODING_FILE = "pair_encoding.json"
# Characters of a document tokenized per token of budget before falling back to the full
# text: English averages 4-5 characters a token, so a 1 MB document is cut to a few kB first.
CHARACTERS_PER_TOKEN_BOUND = 12


class PairLayoutError(ValueError):
    """The tokenizer has no pair layout: it cannot encode (query, passage) pairs."""


@dataclass(frozen=True, slots=True)
class EncodedPair:
    """One tokenized (query, document) pair, special tokens included, ready to pad."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    truncated: bool = False  # the query or the document lost tokens to fit max_length

    def __len__(self) -> int:
        return len(self.input_ids)


class ModelInputs(NamedTuple):
    """A padded batch as int64 arrays; ``token_type_ids`` is None for models without segments."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray | None


@dataclass(frozen=True, slots=True)
class PairTemplate:
    """Where a tokenizer puts its special tokens around a pair: prefix Q middle D suffix."""

    prefix: list[int]
    middle: list[int]
    suffix: list[int]
    prefix_types: list[int]
    query_type: int
    middle_types: list[int]
    document_type: int
    suffix_types: list[int]

    @property
    def special_token_count(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def join(self, query_ids: list[int], document_ids: list[int], with_types: bool, truncated: bool) -> EncodedPair:
        """Assemble one pair exactly as the tokenizer's own post-processor would."""
        input_ids = self.prefix + query_ids + self.middle + document_ids + self.suffix
        if not with_types:
            return EncodedPair(input_ids, None, truncated)
        token_type_ids = (
            self.prefix_types
            + [self.query_type] * len(query_ids)
            + self.middle_types
            + [self.document_type] * len(document_ids)
            + self.suffix_types
        )
        return EncodedPair(input_ids, token_type_ids, truncated)


def pair_template(tokenizer) -> PairTemplate:
    """Find the tokenizer's pair layout by encoding a probe pair with and without special tokens."""
    query_probe, document_probe = "query text", "document text here"
    query_ids = tokenizer(query_probe, add_special_tokens=False)["input_ids"]
    document_ids = tokenizer(document_probe, add_special_tokens=False)["input_ids"]
    encoded = tokenizer(query_probe, document_probe, return_token_type_ids=True)
    ids = list(encoded["input_ids"])
    types = list(encoded.get("token_type_ids") or [0] * len(ids))
    start = _find(ids, query_ids, 0)
    document_start = _find(ids, document_ids, start + len(query_ids))
    if start < 0 or document_start < 0:
        raise PairLayoutError("Cannot find the pair layout of this tokenizer: it is not a pair tokenizer.")
    query_end, document_end = start + len(query_ids), document_start + len(document_ids)
    return PairTemplate(
        prefix=ids[:start],
        middle=ids[query_end:document_start],
        suffix=ids[document_end:],
        prefix_types=types[:start],
        query_type=types[start],
        middle_types=types[query_end:document_start],
        document_type=types[document_start],
        suffix_types=types[document_end:],
    )


def _find(haystack: list[int], needle: list[int], start: int) -> int:
    """Index of ``needle`` as a contiguous run in ``haystack`` from ``start``, or -1."""
    for index in range(start, len(haystack) - len(needle) + 1):
        if haystack[index : index + len(needle)] == needle:
            return index
    return -1


def pair_lengths(*, model: str, max_length: int | None, query_max_length: int | None) -> tuple[int, int | None]:
    """(max length, query cap) to encode with: each argument, else the model folder's record, else the default.

    A None query cap means a quarter of the max length (see `PairEncoder`).
    """
    recorded = pair_lengths_read(folder=Path(model))
    return (max_length or recorded.get("max_length") or DEFAULT_MAX_LENGTH,
            query_max_length or recorded.get("query_max_length"))


def pair_lengths_read(*, folder: Path) -> dict[str, int]:
    """The lengths a training run recorded in `folder`; empty for hub ids and folders without the record."""
    path = folder / PAIR_ENCODING_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


class PairEncoder:
    """Tokenize (query, document) pairs and pad them into batches, with the model's tokenizer.

    Args:
        tokenizer: the model's Hugging Face tokenizer.
        max_length: tokens per pair including special tokens, capped by ``position_limit`` and
            the tokenizer's own limit.
        query_max_length: tokens a query may keep before the document is cut; default a quarter
            of ``max_length``, at most half, so long queries cannot crowd out the passage.
        position_limit: the model's ``max_position_embeddings``, when known.
    """

    def __init__(self, tokenizer, *, max_length: int = DEFAULT_MAX_LENGTH, query_max_length: int | None = None,
                 position_limit: int | None = None):
        self.tokenizer = tokenizer
        limits = [max_length, position_limit or max_length]
        if 0 < tokenizer.model_max_length < 1_000_000:
            limits.append(tokenizer.model_max_length)
        self.max_length = min(limits)
        self.query_max_length = min(query_max_length or self.max_length // 4, self.max_length // 2)
        self.template = pair_template(tokenizer)
        self.uses_token_types = "token_type_ids" in tokenizer.model_input_names
        self.pad_token_id = tokenizer.pad_token_id or 0

    def save(self, folder: Path) -> None:
        """Record the lengths in `folder`, for whoever serves the model saved there."""
        lengths = {"max_length": self.max_length, "query_max_length": self.query_max_length}
        (Path(folder) / PAIR_ENCODING_FILE).write_text(json.dumps(lengths, indent=2) + "\n", encoding="utf-8")

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> list[EncodedPair]:
        """Tokenize pairs: the query capped at ``query_max_length``, the document cut to fit.

        Equivalent to ``tokenizer(queries, documents, truncation="only_second", max_length=...)``
        after cutting each query's token ids to the cap, but a query repeated across pairs (the
        usual rerank request) is tokenized once.
        """
        unique = list(dict.fromkeys(query for query, _ in pairs))
        query_ids = dict(zip(unique, self._encode_plain(unique)))
        return self.tokenize_query_documents(
            [query_ids[query] for query, _ in pairs], [document for _, document in pairs]
        )

    def tokenize_query(self, query: str, documents: Sequence[str]) -> list[EncodedPair]:
        """Tokenize one query against many documents (one rerank request)."""
        query_ids = self._encode_plain([query])[0]
        return self.tokenize_query_documents([query_ids] * len(documents), documents)

    def tokenize_query_documents(self, query_ids: Sequence[list[int]], documents: Sequence[str]) -> list[EncodedPair]:
        """Join each query's ids (capped here) with its document's, cutting only the document."""
        room = self.max_length - self.template.special_token_count
        document_ids = self._encode_documents(documents, room)
        encoded = []
        for query, document in zip(query_ids, document_ids):
            kept_query = query[: self.query_max_length]
            kept_document = document[: room - len(kept_query)]
            truncated = len(kept_query) < len(query) or len(kept_document) < len(document)
            encoded.append(self.template.join(kept_query, kept_document, self.uses_token_types, truncated))
        return encoded

    def collate(self, batch: Sequence[EncodedPair], *, pad_to_multiple_of: int = 1) -> ModelInputs:
        """Right-pad a batch into (input ids, attention mask, token type ids) int64 arrays."""
        longest = max(len(pair) for pair in batch)
        width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = np.full((len(batch), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(batch), width), dtype=np.int64)
        token_type_ids = np.zeros((len(batch), width), dtype=np.int64) if self.uses_token_types else None
        for row, pair in enumerate(batch):
            length = len(pair.input_ids)
            input_ids[row, :length] = pair.input_ids
            attention_mask[row, :length] = 1
            if token_type_ids is not None:
                token_type_ids[row, :length] = pair.token_type_ids
        return ModelInputs(input_ids, attention_mask, token_type_ids)

    def _encode_documents(self, documents: Sequence[str], room: int) -> list[list[int]]:
        """Tokenize documents, reading only a prefix of very long ones.

        A prefix cut at a whitespace tokenizes to the same leading tokens as the whole text. When
        the prefix yields at least ``room`` tokens, nothing past it can be kept anyway; otherwise
        the full text is tokenized, so the result always equals tokenizing the full text.
        """
        limit = room * CHARACTERS_PER_TOKEN_BOUND
        prefixes = [_cut_at_whitespace(document, limit) for document in documents]
        encoded = self._encode_plain(prefixes)
        for index, (prefix, document) in enumerate(zip(prefixes, documents)):
            if len(prefix) < len(document) and len(encoded[index]) < room:
                encoded[index] = self._encode_plain([document])[0]
        return encoded

    def _encode_plain(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(
            list(texts),
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )["input_ids"]


def _cut_at_whitespace(text: str, limit: int) -> str:
    """The first ``limit`` characters of ``text``, ending at a whitespace when one is near."""
    if len(text) <= limit:
        return text
    for index in range(limit - 1, max(0, limit - 1000), -1):
        if text[index].isspace():
            return text[:index]
    return text[:limit]
