"""Load a Hugging Face cross-encoder and score (query, document) pairs.

The model code knows nothing about queues. ``CrossEncoderScorer.predict(pairs)`` tokenizes,
sorts the pairs by length, cuts them into micro-batches under a token budget (padded tokens =
batch size x longest pair), runs each batch under ``torch.inference_mode()`` and returns the
scores in the caller's order. ``tokenize`` and ``forward`` are public and separate so that the
batcher can tokenize one batch while the model runs the previous one.

Scores. A one-logit head gives the raw logit; a two-logit head gives ``logit[1] - logit[0]``,
the log-odds of label 1 ("relevant"). The normalised score is ``sigmoid(raw)``: for one logit
that is exactly what ``sentence_transformers.CrossEncoder.predict`` returns (its default
activation is a sigmoid), and for two logits it equals ``softmax(logits)[1]``, i.e.
``CrossEncoder.predict(pairs, apply_softmax=True)[:, 1]`` (plain ``predict`` returns both raw
logits there and ``rank`` refuses such models), so the ranking is the same.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch

from reranking.quantization import quantize_linears

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("torch", "int8")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

GPU_TOKEN_BUDGET = 16384
# Measured on a 2-core CPU with a MiniLM-L6-size model (batches split over both cores): 2k
# padded tokens per forward pass beat 4k and 8k (less padding, cache-sized matmuls).
CPU_TOKEN_BUDGET = 2048
# Characters of a document tokenized per token of budget before falling back to the full
# text: English averages 4-5 characters a token, so a 1 MB document is cut to a few kB first.
CHARACTERS_PER_TOKEN_BOUND = 12


class ModelLoadError(RuntimeError):
    """The model cannot be loaded or is not a usable cross-encoder."""


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
        raise ModelLoadError("Cannot find the pair layout of this tokenizer: it is not a pair tokenizer.")
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


def plan_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Group indices, longest first, so that batch size x longest length stays within the budget.

    Sorting by length keeps padding small; a pair longer than the budget gets a batch of its own.
    Longest first makes the first batch the largest, so running out of memory shows up at once.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted descending, so the first pair of a batch is its longest.
        if current and lengths[current[0]] * (len(current) + 1) > token_budget:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def sigmoid(raw_scores: np.ndarray) -> np.ndarray:
    """Map raw logits (or log-odds) to (0, 1)."""
    scores = 1.0 / (1.0 + np.exp(-raw_scores.astype(np.float64)))
    return scores.astype(np.float32)


def default_device() -> str:
    """CUDA when available, else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


class CrossEncoderScorer:
    """Score (query, document) pairs with a sequence-classification cross-encoder.

    Args:
        model_name_or_path: a Hugging Face hub id (``BAAI/bge-reranker-base``) or a local folder.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``; default CUDA when available.
        dtype: ``"bfloat16"`` (default on GPU), ``"float16"`` or ``"float32"`` (default and only
            choice on CPU for the exact path).
        backend: ``"torch"`` (exact) or ``"int8"`` (CPU only: the encoder's Linear layers in int8
            with per-token input ranges, see ``reranking.quantization``; faster, not exact).
        max_length: tokens per pair including special tokens (capped by the model's limit).
        query_max_length: tokens a query may keep before the document is cut; default a
            quarter of ``max_length``, so long queries cannot crowd out the passage.
        token_budget: padded tokens per forward pass; default 16k on GPU, 2k on CPU.
        num_threads: CPU cores to use; default all usable ones. Each batch is split by rows
            into this many slices run in parallel threads with single-threaded torch kernels:
            on a 2-core machine that was ~1.4x faster than torch's intra-op threads, which
            synchronise after every small matmul.
    """

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        backend: str = "torch",
        max_length: int = 512,
        query_max_length: int | None = None,
        token_budget: int | None = None,
        num_threads: int | None = None,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoConfig, AutoTokenizer

        if backend not in BACKENDS:
            raise ValueError(f"Unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}.")
        self.model_name = str(model_name_or_path)
        self.device = torch.device(device or default_device())
        if backend != "torch" and self.device.type != "cpu":
            raise ValueError(f"The {backend} backend runs on the CPU only: use backend='torch' on {self.device}.")
        self.backend = backend
        self.dtype = self._resolve_dtype(dtype)
        self.num_threads = (num_threads or _usable_cores()) if self.device.type == "cpu" else 1
        self._slices = ThreadPoolExecutor(self.num_threads, thread_name_prefix="rerank-cpu") if self.num_threads > 1 else None
        if self.device.type == "cpu":
            torch.set_num_threads(1)  # parallelism comes from the slices above

        config = AutoConfig.from_pretrained(self.model_name, trust_remote_code=trust_remote_code)
        if config.num_labels not in (1, 2):
            raise ModelLoadError(
                f"{self.model_name} has {config.num_labels} labels; a reranker needs a head with 1 or 2 logits."
            )
        self.num_labels = config.num_labels
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_name, trust_remote_code=trust_remote_code)
        self.max_length = self._resolve_max_length(max_length, config)
        self.query_max_length = min(query_max_length or self.max_length // 4, self.max_length // 2)
        self.token_budget = token_budget or (GPU_TOKEN_BUDGET if self.device.type == "cuda" else CPU_TOKEN_BUDGET)
        self.template = pair_template(self.tokenizer)
        self.uses_token_types = "token_type_ids" in self.tokenizer.model_input_names
        self.pad_token_id = self.tokenizer.pad_token_id or 0
        # Tensor cores like dimensions in multiples of 8; the CPU gains nothing from extra padding.
        self.pad_to_multiple_of = 8 if self.device.type == "cuda" else 1
        self.model = self._load_model(trust_remote_code)
        if self.device.type == "cuda":
            self.warm_up()

    # ----- loading -------------------------------------------------------------------------

    def _resolve_dtype(self, dtype: str | None) -> torch.dtype:
        if dtype is None:
            return torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}.")
        if self.backend != "torch" and dtype != "float32":
            raise ValueError(f"The {self.backend} backend computes in float32 (with int8 weights for int8).")
        return DTYPES[dtype]

    def _resolve_max_length(self, max_length: int, config) -> int:
        limits = [max_length, getattr(config, "max_position_embeddings", max_length)]
        if 0 < self.tokenizer.model_max_length < 1_000_000:
            limits.append(self.tokenizer.model_max_length)
        return min(limits)

    def _load_model(self, trust_remote_code: bool) -> torch.nn.Module:
        model = self._load_torch_model(trust_remote_code)
        if self.backend == "int8":
            # Only the encoder: the small classification head keeps float32 precision.
            encoder_linears = {
                name
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and not _is_head(name)
            }
            model = quantize_linears(model, encoder_linears)
        return model

    def _load_torch_model(self, trust_remote_code: bool) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        options = dict(dtype=self.dtype, trust_remote_code=trust_remote_code)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                self.model_name, attn_implementation="sdpa", **options
            )
        except (ValueError, ImportError) as error:
            # Some architectures have no SDPA attention; their eager attention still works.
            logger.info("SDPA attention unavailable for %s (%s); using the default.", self.model_name, error)
            model = AutoModelForSequenceClassification.from_pretrained(self.model_name, **options)
        return model.to(self.device).eval()

    # ----- tokenization --------------------------------------------------------------------

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

    # ----- scoring -------------------------------------------------------------------------

    def predict(self, pairs: Sequence[tuple[str, str]], *, normalize: bool = True) -> np.ndarray:
        """Score pairs in the caller's order: sigmoid scores, or raw logits with ``normalize=False``."""
        return self.score_encoded(self.tokenize(pairs), normalize=normalize)

    def score_encoded(self, encoded: Sequence[EncodedPair], *, normalize: bool = True) -> np.ndarray:
        """Score tokenized pairs in length-sorted, token-budget micro-batches; keep the given order."""
        raw = np.empty(len(encoded), dtype=np.float32)
        batches = plan_batches([len(pair) for pair in encoded], self.token_budget)
        if self.device.type == "cuda":
            # Launch every batch before reading any result back: the GPU runs one batch while
            # the CPU pads the next, instead of waiting for each batch's copy to the host.
            launched = [(batch, self._model_logits(*self.collate([encoded[i] for i in batch]))) for batch in batches]
            for batch, logits in launched:
                raw[batch] = self._head_scores(logits.float().cpu().numpy())
        else:
            for batch in batches:
                raw[batch] = self.forward(self.collate([encoded[index] for index in batch]))
        return sigmoid(raw) if normalize else raw

    def forward(self, inputs: ModelInputs) -> np.ndarray:
        """Run one padded batch through the model; return raw scores (float32) in batch order."""
        slices = self._split(inputs)
        if len(slices) == 1:
            logits = self._run_model(*inputs)
        else:
            logits = np.concatenate(list(self._slices.map(lambda part: self._run_model(*part), slices)))
        return self._head_scores(logits)

    def warm_up(self) -> None:
        """Run the model once on every padded width a batch can have, full and single-row, masked and not.

        On a GPU the first batch of each new shape is slow (memory pool growth, kernel choice):
        one H100 call of 1,600 pairs took 1.65 s the first time and 0.31 s after. Paying that
        here, about a second at load, keeps it off the first requests."""
        step = self.pad_to_multiple_of
        for width in range(step, self.max_length + 1, step):
            for rows in sorted({max(1, self.token_budget // width), 1}):
                input_ids = np.full((rows, width), self.pad_token_id, dtype=np.int64)
                token_type_ids = np.zeros_like(input_ids) if self.uses_token_types else None
                for padded in (False, True):
                    mask = np.ones_like(input_ids)
                    if padded and width > 1:
                        mask[:, -1] = 0
                    self._model_logits(input_ids, mask, token_type_ids)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _head_scores(self, logits: np.ndarray) -> np.ndarray:
        """One raw score per row: the logit, or the difference of a two-logit head's logits."""
        if self.num_labels == 2:
            return (logits[:, 1] - logits[:, 0]).astype(np.float32)
        return logits[:, 0].astype(np.float32)

    def _split(self, inputs: ModelInputs) -> list[ModelInputs]:
        """Cut a CPU batch into row slices of about equal tokens, each trimmed to its own longest row."""
        rows = len(inputs.input_ids)
        if self._slices is None or rows < 2:
            return [inputs]
        lengths = inputs.attention_mask.sum(axis=1)
        cumulative = np.cumsum(lengths)
        parts = min(self.num_threads, rows)
        targets = cumulative[-1] * np.arange(1, parts) / parts
        cuts = np.unique(np.clip(np.searchsorted(cumulative, targets) + 1, 1, rows - 1))
        slices = []
        for part in np.split(np.arange(rows), cuts):
            width = int(lengths[part].max())
            slices.append(ModelInputs(*(None if array is None else array[part, :width] for array in inputs)))
        return slices

    def collate(self, batch: Sequence[EncodedPair]) -> ModelInputs:
        """Right-pad a batch into (input ids, attention mask, token type ids) int64 arrays."""
        longest = max(len(pair) for pair in batch)
        multiple = self.pad_to_multiple_of
        width = -(-longest // multiple) * multiple
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

    def _run_model(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None):
        return self._model_logits(input_ids, attention_mask, token_type_ids).float().cpu().numpy()

    @torch.inference_mode()
    def _model_logits(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                      token_type_ids: np.ndarray | None) -> torch.Tensor:
        """The model's logits for one padded batch, left on the device (on CUDA: not yet computed)."""
        non_blocking = self.device.type == "cuda"
        inputs = {"input_ids": _to_device(input_ids, self.device, non_blocking)}
        # Without padding the mask is all ones: leaving it out lets SDPA take its unmasked
        # kernels (same result, less work). Length-sorted small batches often have no padding.
        if not attention_mask.all():
            inputs["attention_mask"] = _to_device(attention_mask, self.device, non_blocking)
        if token_type_ids is not None:
            inputs["token_type_ids"] = _to_device(token_type_ids, self.device, non_blocking)
        return self.model(**inputs).logits


def _is_head(module_name: str) -> bool:
    """Whether a module belongs to the pooler or classification head (kept in float32 by int8)."""
    parts = module_name.split(".")
    return parts[0] in ("classifier", "score") or "pooler" in parts


def _cut_at_whitespace(text: str, limit: int) -> str:
    """The first ``limit`` characters of ``text``, ending at a whitespace when one is near."""
    if len(text) <= limit:
        return text
    for index in range(limit - 1, max(0, limit - 1000), -1):
        if text[index].isspace():
            return text[:index]
    return text[:limit]


def _to_device(array: np.ndarray, device: torch.device, non_blocking: bool) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=non_blocking)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
