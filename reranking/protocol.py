"""Request and response types of the reranker worker's HTTP APIs (pydantic v2).

Two request shapes score the same way:

- ``POST /v1/rerank``: the Cohere / Jina / vLLM shape, the de-facto standard.
- ``POST /rerank``: the text-embeddings-inference (TEI) shape.

Both answer best first. ``relevance_score`` / ``score`` is the sigmoid of the model's logit
(for a two-logit head, of ``logit[1] - logit[0]``); TEI's ``raw_scores=true`` returns the logit.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator


def _require_text(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} is empty: send some text to rank the documents against.")
    return value


class _Request(BaseModel):
    # Unknown fields (e.g. TEI's truncation_direction, Cohere's max_chunks_per_doc) are ignored.
    model_config = ConfigDict(extra="ignore")


class RerankRequest(_Request):
    """``POST /v1/rerank``: rank ``documents`` by relevance to ``query``."""

    model: StrictStr | None = None
    query: StrictStr
    documents: list[StrictStr] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1, description="Return only the best N; default all.")
    return_documents: bool = False

    @field_validator("query")
    @classmethod
    def _query_has_text(cls, value: str) -> str:
        return _require_text(value, "The query")


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult]
    usage: RerankUsage


class TeiRerankRequest(_Request):
    """``POST /rerank`` (text-embeddings-inference): rank ``texts`` by relevance to ``query``.

    ``truncate`` defaults to true here (TEI's default is false): a long text is cut to the
    model's length and scored. With ``truncate=false`` a pair that does not fit is a 413 error,
    as in TEI.
    """

    query: StrictStr
    texts: list[StrictStr] = Field(min_length=1)
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None

    @field_validator("query")
    @classmethod
    def _query_has_text(cls, value: str) -> str:
        return _require_text(value, "The query")


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "reranking"
    max_model_len: int


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ErrorResponse(BaseModel):
    """Every error, whatever the endpoint: a sentence for people and a stable type for programs."""

    error: str
    error_type: str
