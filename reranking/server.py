"""The reranker worker: an HTTP service scoring (query, document) pairs with a cross-encoder.

Run ``python -m reranking.server --model BAAI/bge-reranker-base``; ``--help`` lists every
option, each of which can also come from the environment (``RERANKER_*``).

Endpoints: ``POST /v1/rerank`` (Cohere/Jina/vLLM shape), ``POST /rerank`` (TEI shape),
``GET /health`` (503 while the model loads, 200 after), ``GET /metrics`` (Prometheus),
``GET /v1/models``. Every error is JSON ``{"error", "error_type"}``.

The model loads in a background thread at start-up so that /health answers at once. Handlers
validate and submit to the ``DynamicBatcher``; a client that disconnects while it waits cancels
its pairs (answered 499, counted in the metrics). On shutdown uvicorn finishes open requests and
the batcher drains what is queued.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import threading
import time
from dataclasses import MISSING, dataclass, fields
from typing import Awaitable, Callable, Mapping, Sequence, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from reranking.batcher import BatcherClosed, DynamicBatcher, Overloaded, RequestTooLarge, ScoredRequest
from reranking.model import BACKENDS, DTYPES, CrossEncoderScorer, sigmoid
from reranking.pairs import DEFAULT_MAX_LENGTH, pair_lengths
from reranking.protocol import (
    ErrorResponse,
    ModelCard,
    ModelList,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    TeiRank,
    TeiRerankRequest,
)

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Everything the worker can be told; see ``OPTIONS`` for the help text of each field."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8080
    served_model_name: str | None = None
    max_documents: int = 1000
    max_length: int | None = None
    query_max_length: int | None = None
    token_budget: int | None = None
    max_queue_pairs: int = 8192
    max_wait_ms: float = 2.0
    backend: str = "torch"
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    tokenizer_threads: int = 1
    shutdown_timeout: float = 30.0

    @property
    def model_id(self) -> str:
        """The name the API reports: ``served_model_name`` or the model argument."""
        return self.served_model_name or self.model


# field -> (type, help). The environment variable is RERANKER_<FIELD>, the flag --<field>.
OPTIONS: dict[str, tuple[type, str]] = {
    "model": (str, "Hugging Face hub id or local folder of a sequence-classification cross-encoder (required)."),
    "host": (str, "Address to listen on; 0.0.0.0 for all interfaces."),
    "port": (int, "TCP port to listen on."),
    "served_model_name": (str, "Model name reported by the API (default: --model)."),
    "max_documents": (int, "Most documents one request may rank; more is a 413 error."),
    "max_length": (int, "Tokens per (query, document) pair, special tokens included; longer documents are cut "
                        f"(default: what training recorded in the model's folder, else {DEFAULT_MAX_LENGTH})."),
    "query_max_length": (int, "Tokens a query may keep (default: what training recorded, else a quarter of --max-length)."),
    "token_budget": (int, "Padded tokens per forward pass (default: 16384 on GPU, 2048 on CPU)."),
    "max_queue_pairs": (int, "Pairs accepted but not yet answered; beyond it requests get 429 with Retry-After."),
    "max_wait_ms": (float, "Milliseconds an idle model waits for concurrent requests to fill a batch."),
    "backend": (str, "torch (exact) or int8 (CPU only: int8 encoder layers with per-token input ranges; ~1.3x faster than torch, not exact)."),
    "device": (str, "cuda, cuda:N or cpu (default: cuda when available)."),
    "dtype": (str, f"Weights and activations: {', '.join(DTYPES)} (default: bfloat16 on GPU, float32 on CPU)."),
    "threads": (int, "CPU threads for the model (default: all usable cores)."),
    "tokenizer_threads": (int, "Threads tokenizing requests while the model runs."),
    "shutdown_timeout": (float, "Seconds to finish open requests and queued work on shutdown."),
}


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from flags, falling back to RERANKER_* environment variables, then defaults."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m reranking.server",
        description="Serve a cross-encoder reranker over HTTP (POST /v1/rerank, POST /rerank, /health, /metrics).",
        epilog="Every option can also be set in the environment as RERANKER_<OPTION>, e.g. RERANKER_MODEL.",
    )
    defaults = {item.name: item.default for item in fields(Settings) if item.default is not MISSING}
    for name, (kind, help_text) in OPTIONS.items():
        variable = f"RERANKER_{name.upper()}"
        shown = f"; default {defaults[name]}" if defaults.get(name) is not None else ""
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            # argparse converts a string default with `type`; an empty variable counts as unset.
            default=environ.get(variable) or defaults.get(name),
            help=f"{help_text} [env {variable}{shown}]",
        )
    arguments = parser.parse_args(argv)
    if not arguments.model:
        parser.error("--model (or RERANKER_MODEL) is required: a hub id such as BAAI/bge-reranker-base or a folder.")
    if arguments.backend not in BACKENDS:
        parser.error(f"--backend must be one of {', '.join(BACKENDS)}.")
    if arguments.max_queue_pairs < arguments.max_documents:
        parser.error("--max-queue-pairs must be at least --max-documents, or a full request could never be queued.")
    return Settings(**vars(arguments))


# ----- metrics -----------------------------------------------------------------------------


class ServerMetrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("reranker_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=registry)
        self.latency = Histogram(
            "reranker_request_latency_seconds", "Time from request to response.", ["endpoint"], registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.pairs = Counter("reranker_pairs", "Query-document pairs scored.", registry=registry)
        self.tokens = Counter("reranker_tokens", "Tokens of scored pairs (no padding).", registry=registry)
        self.padded_tokens = Counter("reranker_padded_tokens", "Tokens the model ran, padding included.", registry=registry)
        self.batch_size = Histogram(
            "reranker_batch_size", "Pairs per forward pass.", registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        self.forward_seconds = Histogram(
            "reranker_forward_seconds", "Time of one forward pass.", registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.queue_wait = Histogram(
            "reranker_queue_wait_seconds", "Time from accepting a request to its first forward pass.", registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.request_pairs = Histogram(
            "reranker_request_pairs", "Documents per scored request.", registry=registry,
            buckets=(1, 5, 10, 25, 50, 100, 200, 500, 1000),
        )
        self.queued_pairs = Gauge("reranker_queued_pairs", "Pairs accepted and not yet answered.", registry=registry)
        self.abandoned = Counter(
            "reranker_abandoned_requests", "Requests whose caller left before the answer; their unscored pairs were dropped.",
            registry=registry,
        )
        self.model_loaded = Gauge("reranker_model_loaded", "1 once the model is loaded.", registry=registry)

    # BatcherMetrics hooks

    def batch_scored(self, *, pairs: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        self.batch_size.observe(pairs)
        self.forward_seconds.observe(seconds)
        self.pairs.inc(pairs)
        self.tokens.inc(tokens)
        self.padded_tokens.inc(padded_tokens)

    def request_started(self, *, queue_seconds: float) -> None:
        self.queue_wait.observe(queue_seconds)

    def request_finished(self, *, pairs: int, tokens: int, seconds: float, failed: bool) -> None:
        # Requests by endpoint and status are counted by the HTTP middleware; this sizes them.
        self.request_pairs.observe(pairs)

    def request_abandoned(self, *, pairs: int) -> None:
        self.abandoned.inc()


# ----- the worker --------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as ``{"error", "error_type"}`` with an HTTP status."""

    def __init__(self, status: int, error_type: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.error_type, self.message, self.retry_after = status, error_type, message, retry_after


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it and raise ``ClientDisconnected`` if the client goes first.

    uvicorn does not cancel a handler whose client disconnects (tried: the work went on to the
    end), so this listens for the ``http.disconnect`` message beside the work.
    """
    working = asyncio.ensure_future(work)
    disconnect = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((working, disconnect), return_when=asyncio.FIRST_COMPLETED)
    finally:
        working.cancel()  # no-op once done; stops the work if this handler is itself cancelled
        disconnect.cancel()
    if working.done() and not working.cancelled():
        return working.result()
    raise ClientDisconnected("The client closed the connection before the ranking was ready.")


async def _disconnected(request: Request) -> None:
    """Return when the client has gone (the body is already read, so that is all receive says)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


ScorerLoader = Callable[[Settings], CrossEncoderScorer]


def load_scorer(settings: Settings) -> CrossEncoderScorer:
    """Load the model named in the settings."""
    return CrossEncoderScorer(
        settings.model,
        device=settings.device,
        dtype=settings.dtype,
        backend=settings.backend,
        max_length=settings.max_length,
        query_max_length=settings.query_max_length,
        token_budget=settings.token_budget,
        num_threads=settings.threads,
    )


class RerankerWorker:
    """The state behind the app: the model (once loaded), its batcher and the metrics."""

    def __init__(self, settings: Settings, loader: ScorerLoader, metrics: ServerMetrics):
        self.settings, self.loader, self.metrics = settings, loader, metrics
        self.scorer: CrossEncoderScorer | None = None
        self.batcher: DynamicBatcher | None = None
        self.load_error: str | None = None
        self._loading = threading.Thread(target=self._load, name="rerank-load", daemon=True)

    def start_loading(self) -> None:
        self._loading.start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            scorer = self.loader(self.settings)
        except Exception as error:  # noqa: BLE001 - reported by /health and every request
            logger.exception("Loading the reranker model %s failed", self.settings.model)
            self.load_error = f"Loading the model {self.settings.model} failed: {error}"
            return
        self.batcher = DynamicBatcher(
            scorer,
            token_budget=self.settings.token_budget,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue_pairs=self.settings.max_queue_pairs,
            tokenizer_threads=self.settings.tokenizer_threads,
            metrics=self.metrics,
        )
        self.metrics.queued_pairs.set_function(lambda: self.batcher.queued_pairs)
        self.scorer = scorer
        self.metrics.model_loaded.set(1)
        logger.info("Loaded %s on %s in %.1f s", self.settings.model, scorer.device, time.perf_counter() - started)

    def require_ready(self) -> DynamicBatcher:
        if self.load_error:
            raise ApiError(503, "unavailable", self.load_error)
        if self.batcher is None:
            raise ApiError(503, "unavailable", "The model is still loading: retry shortly.", RETRY_AFTER_SECONDS)
        return self.batcher

    async def score(self, query: str, documents: list[str], *, client: Request) -> ScoredRequest:
        """Validate the size, queue the pairs and wait for their raw scores while ``client`` is connected."""
        if len(documents) > self.settings.max_documents:
            raise ApiError(
                413,
                "too_many_documents",
                f"{len(documents)} documents sent; this worker ranks at most {self.settings.max_documents} per request: split the request.",
            )
        batcher = self.require_ready()
        try:
            return await unless_disconnected(client, batcher.score(query, documents))
        except ClientDisconnected as error:
            raise ApiError(499, "client_closed", str(error)) from error
        except Overloaded as error:
            raise ApiError(429, "overloaded", str(error), RETRY_AFTER_SECONDS) from error
        except BatcherClosed as error:
            raise ApiError(503, "unavailable", str(error), RETRY_AFTER_SECONDS) from error
        except RequestTooLarge as error:
            raise ApiError(413, "too_many_documents", str(error)) from error
        except Exception as error:  # noqa: BLE001 - e.g. CUDA out of memory; logged by the batcher
            raise ApiError(500, "internal", f"Scoring failed: {error}") from error

    def close(self) -> None:
        """Finish queued work and stop the batcher's threads."""
        if self.batcher is not None and not self.batcher.close(self.settings.shutdown_timeout):
            logger.warning("The reranker queue did not drain within %.0f s", self.settings.shutdown_timeout)


def ranked(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Indices best first (ties keep document order), cut to ``top_n``."""
    order = np.argsort(-scores, kind="stable")
    return [int(index) for index in order[:top_n]]


# ----- the app -----------------------------------------------------------------------------

ENDPOINTS = {"/v1/rerank", "/rerank", "/health", "/metrics", "/v1/models"}


def create_app(settings: Settings, *, loader: ScorerLoader = load_scorer) -> FastAPI:
    """Build the worker's app; the model starts loading when the app starts (lifespan)."""
    metrics = ServerMetrics()
    worker = RerankerWorker(settings, loader, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start_loading()
        yield
        worker.close()

    app = FastAPI(title="Cross-encoder reranker", lifespan=lifespan)
    app.state.worker = worker
    app.state.metrics = metrics
    _add_error_handlers(app)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        endpoint = request.url.path if request.url.path in ENDPOINTS else "other"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True)
    async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
        """Rank documents by relevance to the query (Cohere / Jina / vLLM shape), best first."""
        scored = await worker.score(body.query, body.documents, client=request)
        scores = sigmoid(scored.raw_scores)
        results = [
            RerankResult(
                index=index,
                relevance_score=float(scores[index]),
                document=RerankDocument(text=body.documents[index]) if body.return_documents else None,
            )
            for index in ranked(scores, body.top_n)
        ]
        return RerankResponse(model=settings.model_id, results=results, usage=RerankUsage(total_tokens=scored.tokens))

    @app.post("/rerank", response_model=list[TeiRank], response_model_exclude_none=True)
    async def rerank_tei(body: TeiRerankRequest, request: Request) -> list[TeiRank]:
        """Rank texts by relevance to the query (text-embeddings-inference shape), best first."""
        scored = await worker.score(body.query, body.texts, client=request)
        if body.truncate is False and any(scored.truncated):
            index = scored.truncated.index(True)
            raise ApiError(
                413,
                "validation",
                f"Text {index} with the query is longer than {worker.scorer.max_length} tokens and truncate is false: "
                "send truncate=true or a shorter text.",
            )
        scores = scored.raw_scores if body.raw_scores else sigmoid(scored.raw_scores)
        return [
            TeiRank(index=index, score=float(scores[index]), text=body.texts[index] if body.return_text else None)
            for index in ranked(scores, None)
        ]

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 once the model is loaded, 503 while it loads or if loading failed."""
        worker.require_ready()
        return JSONResponse({"status": "ok", "model": settings.model_id})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        if worker.scorer:
            max_length = worker.scorer.max_length
        else:
            max_length, _ = pair_lengths(model=settings.model, max_length=settings.max_length, query_max_length=None)
        return ModelList(data=[ModelCard(id=settings.model_id, max_model_len=max_length)])

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Answer every error, including FastAPI's own, as ``{"error", "error_type"}``."""

    def error_response(status: int, error_type: str, message: str, retry_after: int | None = None) -> JSONResponse:
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        body = ErrorResponse(error=message, error_type=error_type).model_dump()
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.error_type, error.message, error.retry_after)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation", _describe_validation(error))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("Unexpected error answering %s", request.url.path)
        return error_response(500, "internal", "The reranker failed unexpectedly; the error is in its log.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, "http", str(error.detail))


def _describe_validation(error: RequestValidationError) -> str:
    """One readable line per problem, e.g. ``documents.2: Input should be a valid string``."""
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        message = item.get("msg", "invalid").removeprefix("Value error, ")
        problems.append(f"{location}: {message}" if location else message)
    return "Invalid request: " + "; ".join(problems)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse flags and environment, then serve until SIGINT/SIGTERM (draining the queue)."""
    import uvicorn

    settings = parse_settings(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
        log_level="info",
    )


if __name__ == "__main__":
    main()
