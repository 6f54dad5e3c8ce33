"""Question -> candidate chunks, in one SQL statement (hybrid_search.sql): HNSW kNN and BM25, fused by RRF."""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template

from django.conf import settings
from django.db import connection, transaction

from ragapp.documents.embedding import embed_query
from ragapp.documents.models import Chunk, Collection, CollectionLexeme, CollectionTextStatistics, Document, PostingBlock
from ragapp.documents.segmentation import segment_for_search
from ragapp.documents.selectors import collection_readable_by
from ragapp.retrieval.query_syntax import SearchQuery, search_query_parse

MODES = ("dense", "fulltext", "hybrid")
PLACEHOLDER = re.compile(r"%%|%s")  # a literal percent sign, or one of Django's positional parameters


@dataclass(frozen=True)
class Candidate:
    """A retrieved chunk with its rank on each side (None: not in that side's top k) and fused score."""

    chunk: Chunk
    dense_rank: int | None
    fulltext_rank: int | None
    score: float

    @property
    def document(self) -> Document:
        return self.chunk.document


# BM25's term-frequency saturation and length normalisation: Anserini's defaults for BEIR.
BM25_K1 = 0.9
BM25_B = 0.4

# hnsw.ef_search bounds how many neighbours one scan yields (pgvector's default 40 < k): at least k,
# at most HNSW_EF_SEARCH, and 1 per 100 chunks of the collection in between. A small collection reaches
# recall@10 ~1 with ef_search 100-200, and there a larger one makes PostgreSQL scan the whole collection
# instead (seen from 10k chunks at ef_search 200). Iterative scans keep searching when the collection
# filter removes rows. work_mem: one group per chunk holding a query word, which 4MB spills to disk at ~50k.
SESSION_SQL = f"""
SELECT set_config('hnsw.ef_search',
                  greatest(%(k)s, least(%(ceiling)s,
                                        (SELECT chunk_count / 100 FROM {connection.ops.quote_name(CollectionTextStatistics._meta.db_table)}
                                         WHERE collection_id = %(collection)s)))::text, true),
       set_config('hnsw.iterative_scan', 'relaxed_order', true),
       set_config('work_mem', %(work_mem)s, true)
"""
SEARCH_WORK_MEM = "32MB"  # per search; bounded, so 8 concurrent searches take at most ~0.5 GB (hash memory is 2x)

HYBRID_SQL = Template((Path(__file__).parent / "hybrid_search.sql").read_text())


def chunk_search(*, query: str, collection: Collection, reader, k: int | None = None, limit: int | None = None,
                 mode: str = "hybrid", embedding: Sequence[float] | None = None,
                 dense_weight: float | None = None) -> list[Candidate]:
    """Return up to `limit` candidates for `query` in `collection`, best first.

    `reader` is the user asking: nothing comes back unless `collection_readable_by` lets them read
    the collection. None is a trusted caller without a user (management commands, evaluation),
    never a web request. `k` candidates are taken from each side (default RETRIEVAL_CANDIDATES);
    `mode` picks one side alone ("dense", "fulltext") or both fused ("hybrid"). `-word` and
    `-"a phrase"` in `query` rule out the chunks holding them (query_syntax). `embedding` is the
    query's vector when the caller has it; otherwise the dense side embeds the query here.
    `dense_weight` (default: the collection's) is the dense side's share in the fusion.
    """
    k = k or settings.RETRIEVAL_CANDIDATES
    parsed = search_query(query)
    if mode != "fulltext" and embedding is None:
        embedding = search_embedding(parsed)
    statement = search_statement(parsed=parsed, collection=collection, reader=reader, embedding=embedding,
                                 k=k, limit=limit or k, mode=mode, dense_weight=dense_weight)
    if statement is None:
        return []
    with transaction.atomic(), connection.cursor() as cursor:
        search_session_configure(cursor, k=k, collection=collection)
        cursor.execute(*statement)
        return _candidates_from_rows(cursor.fetchall())


def search_query(text: str) -> SearchQuery:
    """The question's parts for search, Chinese segmented for the full-text side."""
    return search_query_parse(text, segment=lambda part: segment_for_search(part) or part)


def search_embedding(parsed: SearchQuery) -> list[float]:
    """The vector the dense side searches with: the question's text without its exclusions, embedded."""
    return embed_query(parsed.embedded_text).tolist()


def search_statement(*, parsed: SearchQuery, collection: Collection, reader, embedding: Sequence[float] | None,
                     k: int, limit: int, mode: str, template: Template = HYBRID_SQL,
                     dense_weight: float | None = None) -> tuple[str, dict] | None:
    """`template` (HYBRID_SQL) filled in for one search, and its values; None when the reader may read nothing at all.

    The permission subquery is `collection_readable_by` compiled by the ORM; a side that `mode`
    leaves out takes 0 rows. Another template with the same placeholders and values may stand in,
    as the benchmark's and the tests' exact full-text reference does.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    readable = Collection.objects.all() if reader is None else collection_readable_by(user=reader)
    permitted = readable.filter(pk=collection.pk).order_by().values("pk")
    if permitted.query.is_empty():  # an anonymous or inactive user: the rule has no SQL to compile
        return None
    permitted_sql, permitted_params = _named_parameters(*permitted.query.sql_with_params(), prefix="permitted")
    statement = template.substitute(
        permitted_collection=permitted_sql,
        chunk_table=connection.ops.quote_name(Chunk._meta.db_table),
        document_table=connection.ops.quote_name(Document._meta.db_table),
        statistics_table=connection.ops.quote_name(CollectionTextStatistics._meta.db_table),
        lexeme_table=connection.ops.quote_name(CollectionLexeme._meta.db_table),
        posting_table=connection.ops.quote_name(PostingBlock._meta.db_table),
    )
    use_dense, use_fulltext = mode in ("dense", "hybrid"), mode in ("fulltext", "hybrid")
    return statement, {
        **permitted_params,
        "embedding": _vector_literal(embedding) if use_dense else None,
        "language": collection.language,
        "scored_text": parsed.scored_text if use_fulltext else "",
        "matched_text": parsed.matched_text if use_fulltext else "",
        "excluded_texts": list(parsed.excluded),
        "excluding": bool(parsed.excluded),
        "dense_k": k if use_dense else 0,
        "fulltext_k": k if use_fulltext else 0,
        "rrf_k": settings.RRF_K,
        "dense_weight": collection.dense_weight if dense_weight is None else dense_weight,
        "k1": BM25_K1,
        "b": BM25_B,
        "limit": limit,
    }


def search_session_configure(cursor, *, k: int, collection: Collection) -> None:
    """Settings for this transaction's search, in one round trip; see SESSION_SQL."""
    cursor.execute(SESSION_SQL, {"k": k, "ceiling": settings.HNSW_EF_SEARCH, "collection": collection.pk,
                                 "work_mem": SEARCH_WORK_MEM})


def _vector_literal(embedding: Sequence[float]) -> str:
    """pgvector's text form of `embedding`: one string to send and parse, where a list is bound as an array of
    numbers, twice (the statement names the vector twice)."""
    return "[" + ",".join(repr(float(value)) for value in embedding) + "]"


def _named_parameters(sql: str, params: Sequence, *, prefix: str) -> tuple[str, dict]:
    """Django's compiled SQL with its positional %s turned into named ones, to sit inside HYBRID_SQL."""
    names = [f"{prefix}_{index}" for index in range(len(params))]
    unused = iter(names)
    sql = PLACEHOLDER.sub(lambda match: match.group() if match.group() == "%%" else f"%({next(unused)})s", sql)
    return sql, dict(zip(names, params))


# The statement's columns, in its order: the chunk's, then its document's, then the ranks and the fused score.
CHUNK_COLUMNS = ("id", "ordinal", "text", "page", "heading_path", "char_start", "char_end", "token_count")
DOCUMENT_COLUMNS = ("id", "title", "original_filename", "content_type", "file")


def _candidates_from_rows(rows) -> list[Candidate]:
    """The statement's rows as candidates, loaded as Django loads a query's rows (`from_db`: positional, cheaper
    than keyword construction), with one Document object per document."""
    chunk_loader, document_loader = _loader(Chunk, CHUNK_COLUMNS), _loader(Document, DOCUMENT_COLUMNS)
    documents, candidates = {}, []
    for row in rows:
        chunk_values, document_values = row[:len(CHUNK_COLUMNS)], row[len(CHUNK_COLUMNS):-3]
        dense_rank, fulltext_rank, score = row[-3:]
        document = documents.get(document_values[0])
        if document is None:
            document = documents[document_values[0]] = document_loader(document_values)
        chunk = chunk_loader(chunk_values)
        chunk.document = document
        candidates.append(Candidate(chunk=chunk, dense_rank=dense_rank, fulltext_rank=fulltext_rank, score=float(score)))
    return candidates


@cache
def _loader(model, columns: tuple[str, ...]):
    """A function from values in `columns`' order to a loaded `model` instance. `from_db` takes them in the order
    of the model's fields, converted as a query would (a JSON column arrives as text)."""
    fields = [field for field in model._meta.concrete_fields if field.attname in columns]
    names = [field.attname for field in fields]
    positions = [columns.index(name) for name in names]
    converters = [field.get_db_converters(connection) for field in fields]

    def load(values):
        return model.from_db(connection.alias, names, [_converted(values[position], field_converters)
                                                       for position, field_converters in zip(positions, converters)])

    return load


def _converted(value, converters):
    for convert in converters:
        value = convert(value, None, connection)
    return value
