"""Question -> candidate chunks, in one SQL statement: HNSW kNN and full-text, fused by RRF."""

from dataclasses import dataclass

from django.conf import settings
from django.db import connection, models, transaction

from ragapp.documents.embedding import embed_query
from ragapp.documents.models import Chunk, Collection, Document
from ragapp.documents.segmentation import segment_for_search
from ragapp.retrieval.query_syntax import search_query_parse

MODES = ("dense", "fulltext", "hybrid")


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

# Each side takes its own top k inside the collection, then reciprocal rank fusion:
# score = sum over sides of 1 / (rrf_k + rank). A chunk found by one side only still scores.
#
# The full-text side ranks by BM25 over chunks. PostgreSQL's ts_rank has no inverse document
# frequency, so a common word counts as much as a rare one (SciFact nDCG@10 0.41 against 0.68
# with BM25). One pass over the chunks holding any query lexeme (through the GIN index) gives
# everything: each chunk's tsvector is cut down to the query's lexemes (setweight marks them,
# ts_filter keeps them: no unnest of whole vectors), which yields term frequencies, and counting
# those rows per lexeme yields document frequencies. A chunk's length is its number of distinct
# lexemes; the collection's totals come from CollectionTextStatistics.
# Ranked chunks must match the question's words as websearch_to_tsquery reads them (quoted
# phrases stay phrases), ORed: it ANDs them, and a natural-language question rarely has every
# word in one passage. A chunk holding a word or phrase the question excludes (-word, see
# query_syntax) is ruled out on both sides; excluded words are never scored. Without exclusions
# %(excluding)s is a false constant, and the planner drops those filters.
HYBRID_SQL = """
WITH permitted AS (
    -- The collection, only when the caller may read it: checked here, in the statement every
    -- entry point runs, so none can forget it. No reader (NULL) is a trusted caller such as a
    -- management command. Tables: Django's default user model and the Collection grants.
    SELECT collection.id
    FROM documents_collection AS collection
    WHERE collection.id = %(collection_id)s
      AND (%(reader_id)s::bigint IS NULL
           OR EXISTS (SELECT 1 FROM auth_user AS reader
                      WHERE reader.id = %(reader_id)s AND reader.is_active
                        AND (reader.is_superuser
                             OR EXISTS (SELECT 1 FROM documents_collection_readers AS granted
                                        WHERE granted.collection_id = collection.id AND granted.user_id = reader.id)
                             OR EXISTS (SELECT 1 FROM documents_collection_reader_groups AS granted
                                        JOIN auth_user_groups AS membership ON membership.group_id = granted.group_id
                                        WHERE granted.collection_id = collection.id AND membership.user_id = reader.id))))
),
query AS NOT MATERIALIZED (
    -- Inlined where it is used (twice), so the planner sees constant tsqueries and can size them.
    SELECT replace(websearch_to_tsquery(%(language)s::regconfig, %(matched_text)s)::text, ' & ', ' | ')::tsquery AS terms,
           replace(plainto_tsquery(%(language)s::regconfig, %(scored_text)s)::text, ' & ', ' | ')::tsquery AS any_lexeme,
           tsvector_to_array(to_tsvector(%(language)s::regconfig, %(scored_text)s)) AS lexemes,
           -- One query per excluded word or phrase: its own words stay ANDed (a segmented
           -- Chinese word is several), a chunk holding any of them is out.
           ARRAY(SELECT websearch_to_tsquery(%(language)s::regconfig, part)
                 FROM unnest(%(excluded_texts)s::text[]) AS part) AS excluded
),
nearest AS (
    -- The vector is written out here, not taken from the query CTE: the HNSW index can only
    -- serve an ORDER BY against a constant.
    SELECT chunk.id, chunk.embedding <=> %(embedding)s::vector AS distance
    FROM documents_chunk AS chunk
    WHERE chunk.collection_id = (SELECT id FROM permitted)
      AND NOT (%(excluding)s AND chunk.search_vector @@ ANY ((SELECT excluded FROM query)::tsquery[]))
    ORDER BY chunk.embedding <=> %(embedding)s::vector
    LIMIT %(dense_k)s
),
dense AS (
    SELECT id, row_number() OVER (ORDER BY distance, id) AS rank FROM nearest
),
statistics AS (
    SELECT chunk_count::float8 AS chunks, lexeme_count::float8 / greatest(chunk_count, 1) AS mean_length
    FROM documents_collectiontextstatistics
    WHERE collection_id = (SELECT id FROM permitted) AND %(fulltext_k)s > 0
),
occurrences AS (
    -- One row per chunk and query lexeme it holds. Stored vectors carry no weights (all D),
    -- so weight A marks exactly the query's lexemes.
    -- Excluded chunks still count in the document frequencies: they are text of the collection.
    SELECT chunk.id, chunk.search_vector @@ query.terms AND NOT (%(excluding)s AND chunk.search_vector @@ ANY (query.excluded)) AS matches,
           length(chunk.search_vector) AS length,
           entry.lexeme, coalesce(array_length(entry.positions, 1), 1)::float8 AS frequency
    FROM documents_chunk AS chunk
         CROSS JOIN query
         CROSS JOIN LATERAL unnest(ts_filter(setweight(chunk.search_vector, 'A', query.lexemes), '{a}')) AS entry
    WHERE chunk.collection_id = (SELECT id FROM permitted) AND chunk.search_vector @@ query.any_lexeme AND %(fulltext_k)s > 0
),
lexeme_weights AS (
    SELECT occurrences.lexeme, ln(1 + (statistics.chunks - count(*) + 0.5) / (count(*) + 0.5)) AS idf
    FROM occurrences CROSS JOIN statistics
    GROUP BY occurrences.lexeme, statistics.chunks
),
bm25 AS (
    SELECT occurrences.id,
           sum(weight.idf * occurrences.frequency * (%(k1)s + 1)
               / (occurrences.frequency + %(k1)s * (1 - %(b)s + %(b)s * occurrences.length / statistics.mean_length))) AS score
    FROM occurrences
         JOIN lexeme_weights AS weight ON weight.lexeme = occurrences.lexeme
         CROSS JOIN statistics
    WHERE occurrences.matches
    GROUP BY occurrences.id
),
fulltext AS (
    SELECT id, row_number() OVER (ORDER BY score DESC, id) AS rank FROM bm25
    ORDER BY rank
    LIMIT %(fulltext_k)s
),
fused AS (
    SELECT coalesce(dense.id, fulltext.id) AS id, dense.rank AS dense_rank, fulltext.rank AS fulltext_rank,
           coalesce(1.0 / (%(rrf_k)s + dense.rank), 0) + coalesce(1.0 / (%(rrf_k)s + fulltext.rank), 0) AS score
    FROM dense FULL OUTER JOIN fulltext ON dense.id = fulltext.id
)
SELECT chunk.id, chunk.ordinal, chunk.text, chunk.page, chunk.heading_path, chunk.char_start, chunk.char_end,
       chunk.token_count, document.id, document.title, document.original_filename, document.content_type,
       document.file, fused.dense_rank, fused.fulltext_rank, fused.score
FROM fused
JOIN documents_chunk AS chunk ON chunk.id = fused.id
JOIN documents_document AS document ON document.id = chunk.document_id
ORDER BY fused.score DESC, chunk.id
LIMIT %(limit)s
"""


def chunk_search(*, query: str, collection: Collection, reader, k: int | None = None,
                 limit: int | None = None, mode: str = "hybrid") -> list[Candidate]:
    """Return up to `limit` candidates for `query` in `collection`, best first.

    `reader` is the user asking: nothing comes back unless they may read the collection
    (superuser, a reader, or in a reader group). None is a trusted caller without a user
    (management commands, evaluation), never a web request. `k` candidates are taken from
    each side (default RETRIEVAL_CANDIDATES); `mode` picks one side alone ("dense",
    "fulltext") or both fused ("hybrid"). `-word` and `-"a phrase"` in `query` rule out the
    chunks holding them (query_syntax).
    """
    k = k or settings.RETRIEVAL_CANDIDATES
    params = search_parameters(query=query, collection=collection, reader=reader, k=k, limit=limit or k, mode=mode)
    with transaction.atomic(), connection.cursor() as cursor:
        _tune_hnsw_scan(cursor, k)
        cursor.execute(HYBRID_SQL, params)
        return [_candidate_from_row(row) for row in cursor.fetchall()]


def search_parameters(*, query: str, collection: Collection, reader, k: int, limit: int, mode: str,
                      embedding: list[float] | None = None) -> dict:
    """HYBRID_SQL's parameters; a side that `mode` leaves out takes 0 rows. `embedding` skips the model."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    use_dense, use_fulltext = mode in ("dense", "hybrid"), mode in ("fulltext", "hybrid")
    parsed = search_query_parse(query, segment=lambda text: segment_for_search(text) or text)
    if use_dense and embedding is None:
        embedding = embed_query(parsed.embedded_text).tolist()
    return {
        "embedding": embedding if use_dense else None,
        "language": collection.language,
        "scored_text": parsed.scored_text if use_fulltext else "",
        "matched_text": parsed.matched_text if use_fulltext else "",
        "excluded_texts": list(parsed.excluded),
        "excluding": bool(parsed.excluded),
        "collection_id": collection.pk,
        "reader_id": reader_id(reader),
        "dense_k": k if use_dense else 0,
        "fulltext_k": k if use_fulltext else 0,
        "rrf_k": settings.RRF_K,
        "k1": BM25_K1,
        "b": BM25_B,
        "limit": limit,
    }


def reader_id(reader) -> int | None:
    """The id HYBRID_SQL checks rights for: None for a trusted caller, -1 (nobody) for an anonymous user."""
    if reader is None:
        return None
    return reader.pk if reader.is_authenticated else -1


def readable_collections(user):
    """Collections `user` may read, for listing them (the same rule HYBRID_SQL enforces on search)."""
    if not (user and user.is_authenticated and user.is_active):
        return Collection.objects.none()
    if user.is_superuser:
        return Collection.objects.all()
    return Collection.objects.filter(models.Q(readers=user) | models.Q(reader_groups__user=user)).distinct()


def _tune_hnsw_scan(cursor, k: int) -> None:
    """Let the HNSW scan return k rows even after the collection filter removes some."""
    # ef_search bounds how many neighbours one scan yields (pgvector's default 40 < k);
    # iterative scans keep searching when the WHERE clause filters rows out.
    cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(max(settings.HNSW_EF_SEARCH, k))])
    cursor.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")


def _candidate_from_row(row) -> Candidate:
    (chunk_id, ordinal, text, page, heading_path, char_start, char_end, token_count,
     document_id, title, original_filename, content_type, file, dense_rank, fulltext_rank, score) = row
    document = Document(id=document_id, title=title, original_filename=original_filename,
                        content_type=content_type, file=file)
    chunk = Chunk(id=chunk_id, document=document, ordinal=ordinal, text=text, page=page,
                  heading_path=heading_path, char_start=char_start, char_end=char_end, token_count=token_count)
    return Candidate(chunk=chunk, dense_rank=dense_rank, fulltext_rank=fulltext_rank, score=float(score))
