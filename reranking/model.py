"""Load a Hugging Face cross-encoder and score (query, document) pairs.

The model code knows nothing about queues. ``CrossEncoderScorer.predict(pairs)`` tokenizes
(with ``reranking.pairs.PairEncoder``, as training does), sorts the pairs by length, cuts them
into micro-batches under a token budget (padded tokens = batch size x longest pair), runs each
batch under ``torch.inference_mode()`` and returns the scores in the caller's order.
``tokenize`` and ``forward`` are public and separate so that the batcher can tokenize one batch
while the model runs the previous one.

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
from typing import Sequence

import numpy as np
import torch

from reranking.pairs import EncodedPair, ModelInputs, PairEncoder, PairLayoutError, pair_lengths
from reranking.quantization import quantize_linears

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("torch", "int8")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

GPU_TOKEN_BUDGET = 16384
# Measured on a 2-core CPU with a MiniLM-L6-size model (batches split over both cores): 2k
# padded tokens per forward pass beat 4k and 8k (less padding, cache-sized matmuls).
CPU_TOKEN_BUDGET = 2048


class ModelLoadError(RuntimeError):
    """The model cannot be loaded or is not a usable cross-encoder."""


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
        max_length: tokens per pair including special tokens (capped by the model's limit);
            default what ``reranking.train`` recorded in the model's folder, else 512.
        query_max_length: tokens a query may keep before the document is cut; default the
            folder's record, else a quarter of ``max_length`` (see ``reranking.pairs``).
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
        max_length: int | None = None,
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
        tokenizer = AutoTokenizer.from_pretrained(self.model_name, trust_remote_code=trust_remote_code)
        self.encoder = self._pair_encoder(tokenizer, config, max_length, query_max_length)
        self.token_budget = token_budget or (GPU_TOKEN_BUDGET if self.device.type == "cuda" else CPU_TOKEN_BUDGET)
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

    def _pair_encoder(self, tokenizer, config, max_length: int | None, query_max_length: int | None) -> PairEncoder:
        max_length, query_max_length = pair_lengths(model=self.model_name, max_length=max_length,
                                                    query_max_length=query_max_length)
        try:
            return PairEncoder(tokenizer, max_length=max_length, query_max_length=query_max_length,
                               position_limit=getattr(config, "max_position_embeddings", None))
        except PairLayoutError as error:
            raise ModelLoadError(str(error)) from error

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

    # ----- tokenization: the pair encoder's, with this device's padding ---------------------

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    @property
    def query_max_length(self) -> int:
        return self.encoder.query_max_length

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> list[EncodedPair]:
        """Tokenize pairs (see ``PairEncoder.tokenize``)."""
        return self.encoder.tokenize(pairs)

    def tokenize_query(self, query: str, documents: Sequence[str]) -> list[EncodedPair]:
        """Tokenize one query against many documents (one rerank request)."""
        return self.encoder.tokenize_query(query, documents)

    def collate(self, batch: Sequence[EncodedPair]) -> ModelInputs:
        """Right-pad a batch into (input ids, attention mask, token type ids) int64 arrays."""
        return self.encoder.collate(batch, pad_to_multiple_of=self.pad_to_multiple_of)

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
                input_ids = np.full((rows, width), self.encoder.pad_token_id, dtype=np.int64)
                token_type_ids = np.zeros_like(input_ids) if self.encoder.uses_token_types else None
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
