"""Retrieval latency and HNSW recall against exact search, at 10k and 100k chunks.

For each size a synthetic collection is loaded without running the embedding model per chunk:
a pool of real SciFact chunks (parsed and chunked as ingestion does) is embedded once with the
real model and cached under bench/.cache; each synthetic chunk copies a pool chunk's text and
takes its vector plus gaussian noise shaped like the pool's own spread (so the vectors stay
in the region real embeddings occupy), re-normalised. The chunks are written with COPY, then
the table's HNSW and full-text indexes are built from scratch (timed) and VACUUM ANALYZE runs.

Measured on real SciFact queries embedded with the real model:
- dense kNN through the HNSW index (ORDER BY embedding <=> q LIMIT 10, filtered by collection,
  with the session settings chunk_search uses: hnsw.ef_search and hnsw.iterative_scan);
- the peer: the same statement with index scans disabled (exact search), which gives the
  ground truth for recall@10 and the latency ratio; EXPLAIN shows which plan each side used;
- chunk_search itself (hybrid, k=100, and its dense and full-text halves alone), with the
  query vector computed beforehand so only the SQL and the row building are timed.

The benchmark drops and rebuilds the chunk table's indexes, so it refuses to run on a
database with chunks other than its own: run it on a throwaway DATA_DIR.
"""

import argparse
import hashlib
import json
import math
import re
import time
from contextlib import contextmanager

import numpy as np
from common import (
    CACHE_DIR, abstract_text, chunk_drafts, django_setup, latency_summary, results_write, scifact_abstracts,
    scifact_path, scifact_queries,
)

COLLECTION_PREFIX = "bench-"  # every collection named so is benchmark data and may be deleted
INDEX_NAMES = ("chunk_embedding_hnsw", "chunk_search_vector_gin")
PEER = "exact search: the same kNN statement with SET LOCAL enable_indexscan = off (sequential scan + sort)"
VECTOR_LITERAL = re.compile(r"'\[[^\]]*\]'::vector")
DENSE_SQL = """
SELECT id FROM documents_chunk WHERE collection_id = %(collection_id)s
ORDER BY embedding <=> %(embedding)s::vector LIMIT %(limit)s
"""


def options_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure retrieval latency (p50/p95) and HNSW recall@10 against exact search "
                    "on synthetic collections built from real SciFact embeddings.",
    )
    parser.add_argument("--sizes", default="10000,100000",
                        help="Comma-separated collection sizes in chunks (default: 10000,100000).")
    parser.add_argument("--queries", type=int, default=200,
                        help="SciFact queries to time and to measure recall with (default: 200).")
    parser.add_argument("--pool", type=int, default=4000,
                        help="Real SciFact chunks embedded with the model (cached) from which the synthetic "
                             "chunks are drawn (default: 4000; the first run embeds them, a few minutes on 2 cores).")
    parser.add_argument("--noise", type=float, default=0.3,
                        help="Expected length of the noise added to each unit pool vector (default: 0.3, "
                             "i.e. cosine ~0.96 between a synthetic vector and its source).")
    parser.add_argument("--chunks-per-document", type=int, default=10,
                        help="Synthetic chunks per synthetic document (default: 10).")
    parser.add_argument("--ef-search-sweep", default="40,100,400",
                        help="Extra hnsw.ef_search values at which to measure dense recall@10 and latency, "
                             "besides chunk_search's own setting (default: 40,100,400; empty: none).")
    parser.add_argument("--modes", default="hybrid,dense,fulltext",
                        help="chunk_search modes to time, comma-separated (default: hybrid,dense,fulltext; "
                             "empty: none, to measure only HNSW against exact search).")
    parser.add_argument("--maintenance-work-mem", default="512MB",
                        help="maintenance_work_mem for building the indexes (default: 512MB; an HNSW graph "
                             "that does not fit is built much more slowly).")
    parser.add_argument("--warm-up", type=int, default=10, help="Untimed queries before each timed series (default: 10).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed for the synthetic vectors (default: 0).")
    parser.add_argument("--keep", action="store_true",
                        help="Keep the last synthetic collection (bench-retrieval-SIZE) for inspection.")
    parser.add_argument("--scifact", help="BEIR SciFact folder (default: $SCIFACT_DIR or ../shared/data/scifact).")
    parser.add_argument("--output", default="retrieval", help="Name of the results file under bench/results/ (default: retrieval).")
    options = parser.parse_args(argv)
    try:
        options.sizes = [int(size) for size in options.sizes.split(",") if size.strip()]
        options.ef_search_sweep = [int(value) for value in options.ef_search_sweep.split(",") if value.strip()]
    except ValueError:
        parser.error("--sizes and --ef-search-sweep take comma-separated whole numbers")
    options.modes = [mode.strip() for mode in options.modes.split(",") if mode.strip()]
    if set(options.modes) - {"hybrid", "dense", "fulltext"}:
        parser.error("--modes takes a comma-separated list of hybrid, dense, fulltext")
    if not options.sizes or min(options.sizes) < 10:
        parser.error("--sizes must be at least 10 chunks each")
    if options.queries < 1 or options.pool < 1:
        parser.error("--queries and --pool must be at least 1")
    return options


# ---- the pool of real embeddings ---------------------------------------------------------------

def pool_load(folder, size: int) -> tuple[list[str], list[int], np.ndarray]:
    """Return (texts, token counts, unit vectors) of `size` real SciFact chunks, embedding them once."""
    from django.conf import settings

    from ragapp.documents.embedding import embedding_model_label

    key = json.dumps([embedding_model_label(), settings.CHUNK_TOKENS, settings.CHUNK_OVERLAP_TOKENS, str(folder), size])
    path = CACHE_DIR / f"scifact-pool-{size}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    if path.exists():
        cached = np.load(path)
        return [str(text) for text in cached["texts"]], cached["tokens"].tolist(), cached["vectors"]
    texts, tokens = _pool_chunks(folder, size)
    vectors = _embed_with_progress_bar(texts)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(path, texts=np.array(texts), tokens=np.array(tokens), vectors=vectors)
    return texts, tokens, vectors


def _pool_chunks(folder, size: int) -> tuple[list[str], list[int]]:
    texts, tokens = [], []
    for record in scifact_abstracts(folder):
        for draft in chunk_drafts(abstract_text(record)):
            texts.append(draft.text)
            tokens.append(draft.token_count)
        if len(texts) >= size:
            return texts[:size], tokens[:size]
    raise SystemExit(f"SciFact has only {len(texts)} chunks: pass --pool {len(texts)} or less.")


def _embed_with_progress_bar(texts: list[str]) -> np.ndarray:
    from tqdm import tqdm

    from ragapp.documents.embedding import embed_texts

    batch = 256
    with tqdm(total=len(texts), desc="Embedding the pool (once; cached)", unit="chunk") as bar:
        parts = []
        for start in range(0, len(texts), batch):
            parts.append(embed_texts(texts[start:start + batch]))
            bar.update(len(parts[-1]))
    return np.concatenate(parts)


def synthetic_vectors(pool: np.ndarray, count: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return (pool index, unit vector) per synthetic chunk: a pool vector plus noise, re-normalised.

    The noise is gaussian with the pool's own covariance, scaled to an expected length of
    `noise`: isotropic noise would push vectors into directions real embeddings never take.
    """
    centred = pool - pool.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(pool))
    eigenvalues = np.clip(eigenvalues, 0, None)
    shape = eigenvectors * np.sqrt(eigenvalues) * (noise / math.sqrt(eigenvalues.sum()))
    sources = rng.integers(0, len(pool), size=count)
    vectors = pool[sources] + rng.standard_normal((count, pool.shape[1]), dtype=np.float32) @ shape.T.astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return sources, vectors.astype(np.float32)


def nearest_neighbour_cosine(vectors: np.ndarray, rng: np.random.Generator, sample: int = 500) -> float:
    """Mean cosine between a sample of the vectors and the nearest other vector of the set."""
    picked = rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)
    similarities = vectors[picked] @ vectors.T
    similarities[np.arange(len(picked)), picked] = -1.0  # not itself
    return round(float(similarities.max(axis=1).mean()), 4)


# ---- loading a collection and (re)building the indexes --------------------------------------

def foreign_chunks_refuse() -> None:
    from ragapp.documents.models import Chunk

    foreign = Chunk.objects.exclude(collection__name__startswith=COLLECTION_PREFIX).count()
    if foreign:
        raise SystemExit(
            f"The chunk table holds {foreign} chunks of other collections, and this benchmark drops and "
            "rebuilds its indexes. Run it on a throwaway database, e.g. DATA_DIR=/tmp/data-bench."
        )


@contextmanager
def indexes_dropped():
    """Drop the chunk table's HNSW and full-text indexes; recreate any still missing on the way out."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'documents_chunk' "
                       "AND indexname = ANY(%s)", [list(INDEX_NAMES)])
        definitions = dict(cursor.fetchall())
        missing = set(INDEX_NAMES) - set(definitions)
        if missing:
            raise SystemExit(f"The chunk table lacks the indexes {sorted(missing)}: run `manage.py migrate` first.")
        for name in definitions:
            cursor.execute(f'DROP INDEX "{name}"')
    try:
        yield definitions
    finally:
        indexes_create(definitions, maintenance_work_mem=None, only_missing=True)


def indexes_create(definitions: dict[str, str], *, maintenance_work_mem: str | None, only_missing: bool = False) -> dict:
    """Create the indexes from their original definitions; return the seconds each took."""
    from django.db import connection

    seconds = {}
    with connection.cursor() as cursor:
        if maintenance_work_mem:
            cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [maintenance_work_mem])
        for name, definition in definitions.items():
            if only_missing:
                cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [name])
                if cursor.fetchone():
                    continue
            start = time.perf_counter()
            cursor.execute(definition)
            seconds[name] = time.perf_counter() - start
        cursor.execute("RESET maintenance_work_mem")
    return seconds


def bench_data_delete() -> None:
    """Delete every benchmark collection, then VACUUM (call with the indexes dropped: it is fast then)."""
    from django.db import connection

    from ragapp.documents.models import Collection

    ids = list(Collection.objects.filter(name__startswith=COLLECTION_PREFIX).values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM documents_chunk WHERE collection_id = ANY(%s)", [ids])
        cursor.execute("DELETE FROM documents_document WHERE collection_id = ANY(%s)", [ids])
        Collection.objects.filter(pk__in=ids).delete()
        cursor.execute("VACUUM documents_chunk")
        cursor.execute("VACUUM documents_document")


def collection_load(size: int, *, pool_texts, pool_tokens, sources, vectors, chunks_per_document: int):
    """Create the collection, its documents, and COPY its chunks in; return the collection."""
    from ragapp.documents.models import Document
    from ragapp.documents.services import collection_get_or_create

    collection = collection_get_or_create(name=f"{COLLECTION_PREFIX}retrieval-{size}")
    document_count = math.ceil(size / chunks_per_document)
    documents = Document.objects.bulk_create([
        Document(collection=collection, title=f"Synthetic document {index}", original_filename=f"synthetic-{index}.txt",
                 content_type="text/plain", sha256=hashlib.sha256(f"{collection.pk}-{index}".encode()).hexdigest(),
                 status=Document.Status.READY, progress=100, chunk_count=chunks_per_document)
        for index in range(document_count)
    ], batch_size=2000)
    document_ids = [document.pk for document in documents]
    _chunks_copy(collection, document_ids, chunks_per_document, pool_texts, pool_tokens, sources, vectors)
    return collection


def _chunks_copy(collection, document_ids, chunks_per_document, pool_texts, pool_tokens, sources, vectors) -> None:
    """COPY the chunks in binary form, vectors included (pgvector's binary format, set on this cursor only)."""
    from django.db import connection
    from pgvector.psycopg.vector import register_vector_info
    from psycopg.types import TypeInfo
    from psycopg.types.json import Jsonb
    from tqdm import tqdm

    connection.ensure_connection()
    raw = connection.connection
    columns = ("document_id", "collection_id", "language", "ordinal", "text", "search_text", "page",
               "heading_path", "char_start", "char_end", "token_count", "embedding")
    types = ["int8", "int8", "text", "int4", "text", "text", "int4", "jsonb", "int4", "int4", "int4", "vector"]
    with raw.cursor() as cursor:
        register_vector_info(cursor, TypeInfo.fetch(raw, "vector"))
        statement = f"COPY documents_chunk ({', '.join(columns)}) FROM STDIN WITH (FORMAT BINARY)"
        with cursor.copy(statement) as copy:
            copy.set_types(types)
            for index in tqdm(range(len(sources)), desc="COPY chunks", unit="chunk", mininterval=1):
                text = pool_texts[sources[index]]
                copy.write_row((
                    document_ids[index // chunks_per_document], collection.pk, collection.language,
                    index % chunks_per_document, text, None, None, Jsonb([]), 0, len(text),
                    pool_tokens[sources[index]], vectors[index],
                ))
    if not raw.autocommit:
        raw.commit()


def table_sizes() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size('documents_chunk'), pg_relation_size('chunk_embedding_hnsw'), "
                       "pg_relation_size('chunk_search_vector_gin')")
        total, hnsw, gin = cursor.fetchone()
    return {"chunk_table_total_mb": round(total / 2**20, 1), "hnsw_index_mb": round(hnsw / 2**20, 1),
            "gin_index_mb": round(gin / 2**20, 1)}


def server_settings() -> dict:
    from django.db import connection

    names = ["shared_buffers", "work_mem", "maintenance_work_mem", "max_parallel_maintenance_workers",
             "max_parallel_workers_per_gather", "effective_cache_size", "jit"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", [names])
        return {name: f"{setting}{unit or ''}" for name, setting, unit in cursor.fetchall()}


# ---- measuring --------------------------------------------------------------------------------

@contextmanager
def search_session(*, k: int, ef_search: int | None = None, exact: bool = False):
    """A transaction with chunk_search's HNSW settings (or with index scans off, for exact search)."""
    from django.db import connection, transaction

    from ragapp.retrieval.selectors import hnsw_scan_configure

    with transaction.atomic(), connection.cursor() as cursor:
        if exact:
            cursor.execute("SET LOCAL enable_indexscan = off")
        else:
            hnsw_scan_configure(cursor, k=k)  # the very settings chunk_search uses
            if ef_search is not None:
                cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(ef_search)])
        yield cursor


def dense_series(collection, query_vectors, *, limit: int, warm_up: int, exact: bool = False,
                 ef_search: int | None = None) -> tuple[list[list[int]], list[float]]:
    """Run the kNN statement once per query; return the ids found and the seconds each took."""
    found, seconds = [], []
    for index in range(-min(warm_up, len(query_vectors)), len(query_vectors)):
        params = {"collection_id": collection.pk, "embedding": query_vectors[index].tolist(), "limit": limit}
        with search_session(k=limit, ef_search=ef_search, exact=exact) as cursor:
            start = time.perf_counter()
            cursor.execute(DENSE_SQL, params)
            rows = cursor.fetchall()
            elapsed = time.perf_counter() - start
        if index >= 0:
            found.append([row[0] for row in rows])
            seconds.append(elapsed)
    return found, seconds


def recall(found: list[list[int]], truth: list[list[int]], at: int) -> float:
    hits = [len(set(got[:at]) & set(expected[:at])) / min(at, len(expected)) for got, expected in zip(found, truth) if expected]
    return round(float(np.mean(hits)), 4)


def plan(sql: str, params: dict, *, k: int, exact: bool = False, ef_search: int | None = None) -> str:
    """Return the plan PostgreSQL chooses, with the query vector's 384 numbers shortened to '[...]'."""
    with search_session(k=k, exact=exact, ef_search=ef_search) as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        return VECTOR_LITERAL.sub("'[...]'::vector", "\n".join(row[0] for row in cursor.fetchall()))


def chunk_search_series(collection, query_texts, query_vectors, *, mode: str, k: int, warm_up: int):
    """Time chunk_search itself with the query vectors computed beforehand; return seconds and results."""
    from ragapp.retrieval.selectors import chunk_search

    results, seconds = [], []
    for index in range(-min(warm_up, len(query_texts)), len(query_texts)):
        start = time.perf_counter()
        candidates = chunk_search(query=query_texts[index], collection=collection, reader=None, k=k, mode=mode,
                                  embedding=query_vectors[index])
        elapsed = time.perf_counter() - start
        if index >= 0:
            results.append(candidates)
            seconds.append(elapsed)
    return results, seconds


def size_measure(collection, query_texts, query_vectors, options) -> dict:
    """Time HNSW against exact search, check their plans, then time chunk_search itself."""
    from django.conf import settings

    k = settings.RETRIEVAL_CANDIDATES
    figures = plans_check(collection, query_texts[0], query_vectors[0], k=k)
    dense, exact_found = dense_figures(collection, query_vectors, options, k=k)
    figures.update(dense)
    figures["ef_search_sweep"] = {}
    sample = {"collection_id": collection.pk, "embedding": query_vectors[0].tolist(), "limit": 10}
    for ef_search in options.ef_search_sweep:
        found, seconds = dense_series(collection, query_vectors, limit=10, warm_up=options.warm_up, ef_search=ef_search)
        figures["ef_search_sweep"][str(ef_search)] = {
            "recall_at_10": recall(found, exact_found, 10),
            "uses_hnsw_index": "chunk_embedding_hnsw" in plan(DENSE_SQL, sample, k=10, ef_search=ef_search),
            **latency_summary(seconds),
        }
    figures["chunk_search"] = {
        mode: chunk_search_figures(collection, query_texts, query_vectors, exact_found, mode=mode, k=k,
                                   warm_up=options.warm_up)
        for mode in options.modes
    }
    return figures


def plans_check(collection, query_text: str, query_vector, *, k: int) -> dict:
    """EXPLAIN the HNSW, exact and hybrid statements; record whether each uses the index it should."""
    from ragapp.retrieval.selectors import search_query, search_statement

    sample = {"collection_id": collection.pk, "embedding": query_vector.tolist(), "limit": 10}
    plans = {
        "hnsw": plan(DENSE_SQL, sample, k=10),
        "exact": plan(DENSE_SQL, sample, k=10, exact=True),
        "hybrid": plan(*search_statement(parsed=search_query(query_text), collection=collection, reader=None,
                                         embedding=query_vector.tolist(), k=k, limit=k, mode="hybrid"), k=k),
    }
    return {
        "plans_checked": {
            "hnsw_uses_hnsw_index": "chunk_embedding_hnsw" in plans["hnsw"],
            "exact_avoids_hnsw_index": "chunk_embedding_hnsw" not in plans["exact"],
            "hybrid_uses_hnsw_index": "chunk_embedding_hnsw" in plans["hybrid"],
            "hybrid_uses_gin_index": "chunk_search_vector_gin" in plans["hybrid"],
        },
        "plans": plans,
    }


def dense_figures(collection, query_vectors, options, *, k: int) -> tuple[dict, list[list[int]]]:
    """Latency of HNSW top 10 against exact top 10 (the peer) and HNSW recall@10; also the exact top k ids."""
    from django.conf import settings

    print(f"  exact search (the peer), top 10 and top {k} ...", flush=True)
    _, exact_seconds = dense_series(collection, query_vectors, limit=10, warm_up=options.warm_up, exact=True)
    exact_found, exact_k_seconds = dense_series(collection, query_vectors, limit=k, warm_up=0, exact=True)
    print("  HNSW kNN ...", flush=True)
    hnsw_found, hnsw_seconds = dense_series(collection, query_vectors, limit=10, warm_up=options.warm_up)
    hnsw_summary, exact_summary = latency_summary(hnsw_seconds), latency_summary(exact_seconds)
    figures = {
        "hnsw_ef_search": max(settings.HNSW_EF_SEARCH, 10),
        "dense_hnsw_top10": hnsw_summary,
        "dense_exact_top10": exact_summary,
        f"dense_exact_top{k}": latency_summary(exact_k_seconds),
        "recall_at_10_hnsw_vs_exact": recall(hnsw_found, exact_found, 10),
        "latency_ratio_exact_over_hnsw_p50": round(exact_summary["p50_ms"] / hnsw_summary["p50_ms"], 2),
    }
    return figures, exact_found


def chunk_search_figures(collection, query_texts, query_vectors, exact_found, *, mode: str, k: int, warm_up: int) -> dict:
    """Latency of chunk_search in one mode; for the dense mode also its recall@k against exact search."""
    print(f"  chunk_search {mode}, k={k} ...", flush=True)
    results, seconds = chunk_search_series(collection, query_texts, query_vectors, mode=mode, k=k, warm_up=warm_up)
    figures = {"k": k, **latency_summary(seconds),
               "candidates_mean": round(float(np.mean([len(candidates) for candidates in results])), 1)}
    if mode == "dense":
        found = [[candidate.chunk.pk for candidate in candidates] for candidates in results]
        figures["recall_at_k_vs_exact"] = recall(found, exact_found, k)
    return figures


def query_embedding_latency(query_texts) -> dict:
    """What chunk_search adds on top of the SQL: embedding one question with the model."""
    from ragapp.documents.embedding import embed_query

    seconds = []
    for text in query_texts:
        start = time.perf_counter()
        embed_query(text)
        seconds.append(time.perf_counter() - start)
    return latency_summary(seconds)


# ---- the run ----------------------------------------------------------------------------------

def size_run(size: int, pool, query_texts, query_vectors, options, rng) -> dict:
    from django.db import connection

    pool_texts, pool_tokens, pool_vectors = pool
    print(f"\n{size} chunks: building the collection ...", flush=True)
    sources, vectors = synthetic_vectors(pool_vectors, size, options.noise, rng)
    build = {}
    with indexes_dropped() as definitions:
        bench_data_delete()
        start = time.perf_counter()
        collection = collection_load(size, pool_texts=pool_texts, pool_tokens=pool_tokens, sources=sources,
                                     vectors=vectors, chunks_per_document=options.chunks_per_document)
        build["load_seconds"] = time.perf_counter() - start
        print("  building the indexes ...", flush=True)
        index_seconds = indexes_create(definitions, maintenance_work_mem=options.maintenance_work_mem)
        build["gin_index_seconds"] = index_seconds["chunk_search_vector_gin"]
        build["hnsw_index_seconds"] = index_seconds["chunk_embedding_hnsw"]
    start = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE documents_chunk")
        cursor.execute("VACUUM ANALYZE documents_document")
    build["vacuum_analyze_seconds"] = time.perf_counter() - start
    figures = {
        "chunks": size,
        "build": {name: round(value, 2) for name, value in build.items()},
        "sizes": table_sizes(),
        "synthetic_cosine_to_source_mean": round(float(np.mean(np.sum(vectors * pool_vectors[sources], axis=1))), 4),
        # How crowded the space is: real chunks' nearest other chunk, against the synthetic set's.
        "nearest_neighbour_cosine_mean": {"pool": nearest_neighbour_cosine(pool_vectors, rng),
                                          "synthetic": nearest_neighbour_cosine(vectors, rng)},
    }
    figures.update(size_measure(collection, query_texts, query_vectors, options))
    return figures


def summary_print(results: dict, embedding_latency: dict) -> None:
    print("\nRetrieval (peer: exact search with index scans off); latencies in ms, SQL only (query pre-embedded)")
    print(f"{'chunks':>8}{'HNSW build s':>14}{'HNSW p50':>10}{'p95':>8}{'exact p50':>11}{'p95':>8}"
          f"{'ratio':>7}{'recall@10':>11}{'hybrid p50':>12}{'p95':>8}")
    for size, figures in results.items():
        hnsw, exact = figures["dense_hnsw_top10"], figures["dense_exact_top10"]
        hybrid = figures["chunk_search"].get("hybrid", {"p50_ms": math.nan, "p95_ms": math.nan})
        print(f"{size:>8}{figures['build']['hnsw_index_seconds']:>14.1f}{hnsw['p50_ms']:>10.2f}{hnsw['p95_ms']:>8.2f}"
              f"{exact['p50_ms']:>11.2f}{exact['p95_ms']:>8.2f}{figures['latency_ratio_exact_over_hnsw_p50']:>6.1f}x"
              f"{figures['recall_at_10_hnsw_vs_exact']:>11.3f}{hybrid['p50_ms']:>12.2f}{hybrid['p95_ms']:>8.2f}")
    for size, figures in results.items():
        sweep = ", ".join(f"ef {ef}: {values['recall_at_10']:.3f} @ {values['p50_ms']:.2f} ms"
                          + ("" if values["uses_hnsw_index"] else " (planner skipped HNSW: exact scan)")
                          for ef, values in figures["ef_search_sweep"].items())
        modes = ", ".join(f"{mode} {values['p50_ms']:.1f}/{values['p95_ms']:.1f}" for mode, values in figures["chunk_search"].items())
        dense_recall = figures["chunk_search"].get("dense", {}).get("recall_at_k_vs_exact")
        if modes:
            print(f"  {size}: chunk_search p50/p95 ms: {modes}"
                  + (f"; dense recall@k {dense_recall:.3f}" if dense_recall is not None else ""))
        if sweep:
            print(f"  {size}: recall@10 by ef_search: {sweep}")
        checks = figures["plans_checked"]
        if not all(checks.values()):
            print(f"  {size}: WARNING, plans not as expected: {checks}")
    print(f"  query embedding (not in the figures above): p50 {embedding_latency['p50_ms']:.1f} ms, "
          f"p95 {embedding_latency['p95_ms']:.1f} ms")


def main(argv=None) -> None:
    options = options_parse(argv)
    django_setup()
    from django.conf import settings

    from ragapp.documents.embedding import embed_texts, embedding_model_label

    foreign_chunks_refuse()
    folder = scifact_path(options.scifact)
    pool = pool_load(folder, options.pool)
    query_texts = scifact_queries(folder, options.queries)
    query_vectors = embed_texts(query_texts)
    embedding_latency = query_embedding_latency(query_texts)
    rng = np.random.default_rng(options.seed)
    results = {}
    try:
        for size in options.sizes:
            results[str(size)] = size_run(size, pool, query_texts, query_vectors, options, rng)
    finally:
        if not options.keep:
            with indexes_dropped():
                bench_data_delete()
    parameters = {
        "sizes": options.sizes, "queries": len(query_texts), "pool": len(pool[0]), "noise": options.noise,
        "chunks_per_document": options.chunks_per_document, "ef_search_sweep": options.ef_search_sweep,
        "chunk_search_modes": options.modes,
        "warm_up": options.warm_up, "seed": options.seed, "embedding_model": embedding_model_label(),
        "hnsw_ef_search_setting": settings.HNSW_EF_SEARCH, "retrieval_candidates": settings.RETRIEVAL_CANDIDATES,
        "index_build_maintenance_work_mem": options.maintenance_work_mem, "server_settings": server_settings(),
        "peer": PEER,
        "timing": "SQL only: latencies cover executing and fetching (chunk_search: the whole call, with "
                  "embed_query answered from vectors computed beforehand); query embedding is reported apart.",
    }
    summary_print(results, embedding_latency)
    path = results_write(options.output, parameters=parameters,
                         figures={"query_embedding": embedding_latency, "sizes": results})
    print(f"\nWrote {path}")


if __name__ == "__main__":
    main()
