"""Retrieval latency, full-text exactness and HNSW recall on collections of 100k-1M chunks of real text.

For each size the collection is bulk-loaded without running the embedding model per chunk: the chunk texts are
the first SIZE chunks of bench/corpus.py's corpus (Debian documentation, parsed and chunked as ingestion does),
and each chunk's vector is a real SciFact chunk's embedding (a pool embedded once with the model, cached under
bench/.cache) plus gaussian noise shaped like the pool's own spread, re-normalised, so the vectors stay in the
region real embeddings occupy. Chunks go in with COPY in batches (the chunk table's triggers build the BM25
totals, lexeme counts and posting blocks once per batch), then the HNSW and GIN indexes are built from scratch
and VACUUM ANALYZE runs; all of it is timed as the load.

Measured on real SciFact queries embedded with the real model, the query vectors computed beforehand:
- chunk_search itself in each mode (dense, fulltext, hybrid; k = RETRIEVAL_CANDIDATES): p50/p95, the three modes
  taking turns (each on a different question at each turn) so that the machine's drift over minutes falls on all
  three alike and stays out of their ratios;
- the full-text side against its peer, the exact BM25 statement it replaced (bench/hybrid_search_exact.sql,
  which scores every chunk holding a query word): top-10 and top-100 overlap, and its latency;
- HNSW recall@10 against exact nearest neighbours (computed with numpy over the loaded vectors), at
  chunk_search's ef_search and at the --ef-search-sweep values;
- hybrid throughput with --concurrency clients (processes, one connection each) against one client, who runs
  in a process of its own the same way.

The benchmark drops and rebuilds the chunk table's indexes, so it refuses to run on a database with chunks
other than its own: run it on a throwaway DATA_DIR.
"""

import argparse
import hashlib
import json
import math
import multiprocessing
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from string import Template

import numpy as np
from common import (
    CACHE_DIR, REPO_ROOT, abstract_text, chunk_drafts, django_setup, latency_summary, results_write,
    scifact_abstracts, scifact_path, scifact_queries,
)
from corpus import corpus_read

COLLECTION_PREFIX = "bench-"  # every collection named so is benchmark data and may be deleted
INDEX_NAMES = ("chunk_embedding_hnsw", "chunk_search_vector_gin")
EXACT_SQL = Template((Path(__file__).parent / "hybrid_search_exact.sql").read_text())
# The alternative without MaxScore: every posting of every query lexeme is read and summed (term at a time).
PRUNING = "ordered_weights.bound_so_far >= seed_floor.score AS essential"
PEERS = {
    "fulltext": "the exact BM25 statement the postings replaced (bench/hybrid_search_exact.sql): every chunk "
                "holding a query word is scored",
    "fulltext_unpruned": "the same postings read whole: every posting of every query lexeme scored (no MaxScore)",
    "hnsw": "exact nearest neighbours by cosine, numpy over the loaded vectors",
    "concurrency": "the same hybrid searches from one client",
}
# Spawning a client, setting Django up and its first search take seconds; a client that has not begun by now is stuck.
CLIENT_START_SECONDS = 300
DENSE_SQL = """
SELECT id FROM documents_chunk WHERE collection_id = %(collection_id)s
ORDER BY embedding <=> %(embedding)s::vector LIMIT %(limit)s
"""


def options_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure retrieval latency (p50/p95), full-text exactness against the exact BM25 statement, "
                    "HNSW recall@10 and concurrency on collections of real text with synthetic vectors.",
    )
    parser.add_argument("--sizes", default="100000,1000000",
                        help="Comma-separated collection sizes in chunks (default: 100000,1000000).")
    parser.add_argument("--corpus", type=Path,
                        help="Chunk texts: a corpus file from bench/corpus.py (default: the largest one cached "
                             "under bench/.cache/corpus/).")
    parser.add_argument("--queries", type=int, default=200,
                        help="SciFact queries to time and to measure recall with (default: 200).")
    parser.add_argument("--reference-queries", type=int, default=200,
                        help="How many of those also run through the exact full-text statement, the peer "
                             "(default: 200; it reads every chunk holding a query word, seconds each at 1M).")
    parser.add_argument("--pool", type=int, default=13000,
                        help="Real SciFact chunks embedded with the model (cached) whose vectors, plus noise, the "
                             "chunks take (default: 13000; fewer sources copied more often crowd the vectors: at 1M, "
                             "4,000 gave HNSW recall@10 0.823 where 13,000 gave 0.975 at the same settings; the first "
                             "run embeds them once and caches them).")
    parser.add_argument("--noise", type=float, default=0.3,
                        help="Expected length of the noise added to each unit pool vector (default: 0.3, "
                             "i.e. cosine ~0.96 between a synthetic vector and its source).")
    parser.add_argument("--chunks-per-document", type=int, default=10,
                        help="Chunks per synthetic document (default: 10).")
    parser.add_argument("--batch", type=int, default=100_000,
                        help="Chunks per COPY statement; the text index is built once per batch (default: 100000).")
    parser.add_argument("--load-work-mem", default="256MB",
                        help="work_mem while loading, for the triggers' sorts of each batch's postings (default: 256MB).")
    parser.add_argument("--hnsw", default="",
                        help="HNSW build parameters m,ef_construction (default: the migration's own).")
    parser.add_argument("--halfvec", action="store_true",
                        help="Index the vectors cast to halfvec (half precision) instead, and search that way.")
    parser.add_argument("--ef-search-sweep", default="40,100,200,400",
                        help="hnsw.ef_search values at which to measure dense recall@10 and latency "
                             "(default: 40,100,200,400; empty: none).")
    parser.add_argument("--hnsw-only", action="store_true",
                        help="Measure only the HNSW index (build, size, recall and latency by ef_search): for sweeps "
                             "of --hnsw and --halfvec.")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="Clients searching at once for the throughput ratio (default: 8).")
    parser.add_argument("--maintenance-work-mem", default="5GB",
                        help="maintenance_work_mem for building the indexes (default: 5GB, in which HNSW over 1M "
                             "chunks at m=32 builds in about 14 minutes here; a graph that does not fit is built much "
                             "more slowly: at m=24 with 64MB it had not finished after 20 minutes).")
    parser.add_argument("--warm-up", type=int, default=10, help="Untimed queries before each timed series (default: 10).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed for the synthetic vectors (default: 0).")
    parser.add_argument("--keep", action="store_true",
                        help="Keep the last collection (bench-retrieval-SIZE) for inspection.")
    parser.add_argument("--scifact", help="BEIR SciFact folder (default: $SCIFACT_DIR or ../shared/data/scifact).")
    parser.add_argument("--output", default="retrieval", help="Name of the results file under bench/results/ (default: retrieval).")
    options = parser.parse_args(argv)
    try:
        options.sizes = [int(size) for size in options.sizes.split(",") if size.strip()]
        options.ef_search_sweep = [int(value) for value in options.ef_search_sweep.split(",") if value.strip()]
        options.hnsw = [int(value) for value in options.hnsw.split(",") if value.strip()]
    except ValueError:
        parser.error("--sizes, --ef-search-sweep and --hnsw take comma-separated whole numbers")
    if options.hnsw and len(options.hnsw) != 2:
        parser.error("--hnsw takes two numbers: m,ef_construction")
    if not options.sizes or min(options.sizes) < 10:
        parser.error("--sizes must be at least 10 chunks each")
    if options.queries < 1 or options.pool < 1 or options.concurrency < 1:
        parser.error("--queries, --pool and --concurrency must be at least 1")
    options.corpus = options.corpus or corpus_default()
    if options.corpus is None or not options.corpus.exists():
        parser.error("no corpus: build one with `bench/corpus.py` (see bench/README.md) or pass --corpus FILE")
    return options


def corpus_default() -> Path | None:
    found = sorted((CACHE_DIR / "corpus").glob("chunks-*.jsonl.gz"), key=lambda path: int(path.name.split("-")[1]))
    return found[-1] if found else None


def corpus_texts(path: Path, size: int) -> tuple[list[str], list[int]]:
    """The first `size` chunk texts of the corpus and their token counts."""
    texts, tokens = [], []
    for record in corpus_read(path):
        texts.append(record["text"])
        tokens.append(record["tokens"])
        if len(texts) == size:
            return texts, tokens
    raise SystemExit(f"{path} has only {len(texts)} chunks: build a larger one with bench/corpus.py --chunks {size}.")


# ---- the pool of real embeddings ---------------------------------------------------------------

def pool_load(folder, size: int) -> np.ndarray:
    """Return the unit vectors of `size` real SciFact chunks, embedding them once."""
    from django.conf import settings

    from ragapp.documents.embedding import embedding_model_label

    key = json.dumps([embedding_model_label(), settings.CHUNK_TOKENS, settings.CHUNK_OVERLAP_TOKENS, str(folder), size])
    path = CACHE_DIR / f"scifact-pool-{size}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    if path.exists():
        return np.load(path)["vectors"]
    texts = _pool_texts(folder, size)
    vectors = _embed_with_progress_bar(texts)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(path, texts=np.array(texts), vectors=vectors)
    return vectors


def _pool_texts(folder, size: int) -> list[str]:
    texts = []
    for record in scifact_abstracts(folder):
        texts.extend(draft.text for draft in chunk_drafts(abstract_text(record)))
        if len(texts) >= size:
            return texts[:size]
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


def synthetic_vectors(pool: np.ndarray, count: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """One unit vector per chunk: a random pool vector plus noise, re-normalised.

    The noise is gaussian with the pool's own covariance, scaled to an expected length of
    `noise`: isotropic noise would push vectors into directions real embeddings never take.
    """
    centred = pool - pool.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(pool))
    eigenvalues = np.clip(eigenvalues, 0, None)
    shape = (eigenvectors * np.sqrt(eigenvalues) * (noise / math.sqrt(eigenvalues.sum()))).T.astype(np.float32)
    vectors = np.empty((count, pool.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):  # in slices: 1M x 384 gaussians at once would take 3 GB
        stop = min(start + 100_000, count)
        part = pool[rng.integers(0, len(pool), size=stop - start)]
        part = part + rng.standard_normal((stop - start, pool.shape[1]), dtype=np.float32) @ shape
        vectors[start:stop] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return vectors


# ---- loading a collection and (re)building the indexes --------------------------------------

def foreign_chunks_refuse() -> None:
    from ragapp.documents.models import Chunk

    foreign = Chunk.objects.exclude(collection__name__startswith=COLLECTION_PREFIX).count()
    if foreign:
        raise SystemExit(
            f"The chunk table holds {foreign} chunks of other collections, and this benchmark drops and "
            "rebuilds its indexes. Run it on a throwaway database, e.g. DATA_DIR=/tmp/data-bench."
        )


def index_definitions() -> dict[str, str]:
    """The chunk table's HNSW and GIN index definitions as the migrations made them."""
    definitions = index_definitions_present()
    missing = set(INDEX_NAMES) - set(definitions)
    if missing:
        raise SystemExit(f"The chunk table lacks the indexes {sorted(missing)}: run `manage.py migrate` first.")
    if "halfvec" in definitions["chunk_embedding_hnsw"]:
        raise SystemExit("The HNSW index is a benchmark's halfvec variant: drop it and run `manage.py migrate`.")
    return definitions


def index_definitions_present() -> dict[str, str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'documents_chunk' "
                       "AND indexname = ANY(%s)", [list(INDEX_NAMES)])
        return dict(cursor.fetchall())


@contextmanager
def indexes_dropped(definitions: dict[str, str], *, maintenance_work_mem: str):
    """Drop the chunk table's HNSW and full-text indexes; put `definitions` back, whatever happens inside.

    An index the last size built as `definitions` say stays: rebuilding HNSW over a kept 1M-chunk collection
    takes many minutes.
    """
    indexes_drop(definitions)
    try:
        yield
    finally:
        current = index_definitions_present()
        differing = {name: definition for name, definition in definitions.items() if current.get(name) != definition}
        indexes_drop(differing)
        indexes_create(differing, maintenance_work_mem=maintenance_work_mem)


def indexes_drop(definitions: dict[str, str]) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for name in definitions:
            cursor.execute(f'DROP INDEX IF EXISTS "{name}"')


def hnsw_definition(definition: str, *, hnsw: list[int] | None, halfvec: bool) -> str:
    """The migration's HNSW index, with `hnsw`'s m and ef_construction and `halfvec`'s cast when given."""
    if hnsw:
        m, ef_construction = hnsw
        definition = definition[:definition.index(" WITH (")] + f" WITH (m='{m}', ef_construction='{ef_construction}')"
    if halfvec:
        definition = definition.replace("(embedding vector_cosine_ops)", "((embedding::halfvec(384)) halfvec_cosine_ops)")
    return definition


def indexes_create(definitions: dict[str, str], *, maintenance_work_mem: str | None) -> dict:
    """Create the indexes from their definitions; return the seconds each took."""
    from django.db import connection

    seconds = {}
    with connection.cursor() as cursor:
        if maintenance_work_mem:
            cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [maintenance_work_mem])
        for name, definition in definitions.items():
            start = time.perf_counter()
            cursor.execute(definition)
            seconds[name] = time.perf_counter() - start
        cursor.execute("RESET maintenance_work_mem")
    return seconds


def bench_data_delete() -> None:
    """Delete every benchmark collection with its text index, then VACUUM (fast with the indexes dropped)."""
    from django.db import connection

    from ragapp.documents.models import Collection

    ids = list(Collection.objects.filter(name__startswith=COLLECTION_PREFIX).values_list("pk", flat=True))
    with connection.cursor() as cursor:
        # Whole collections go: their lexemes and blocks are deleted outright, not posting by posting.
        cursor.execute("ALTER TABLE documents_chunk DISABLE TRIGGER documents_chunk_text_index_delete")
        cursor.execute("DELETE FROM documents_chunk WHERE collection_id = ANY(%s)", [ids])
        cursor.execute("ALTER TABLE documents_chunk ENABLE TRIGGER documents_chunk_text_index_delete")
        cursor.execute("DELETE FROM documents_postingblock WHERE collection_id = ANY(%s)", [ids])
        cursor.execute("DELETE FROM documents_collectionlexeme WHERE collection_id = ANY(%s)", [ids])
        cursor.execute("DELETE FROM documents_document WHERE collection_id = ANY(%s)", [ids])
        Collection.objects.filter(pk__in=ids).delete()
        for table in ("documents_chunk", "documents_document", "documents_postingblock", "documents_collectionlexeme"):
            cursor.execute(f"VACUUM {table}")


def collection_load(size: int, *, texts, tokens, vectors, options):
    """Create the collection, its documents, and COPY its chunks in; return the collection."""
    from django.db import connection

    from ragapp.documents.models import Document
    from ragapp.documents.services import collection_get_or_create

    collection = collection_get_or_create(name=f"{COLLECTION_PREFIX}retrieval-{size}")
    per_document = options.chunks_per_document
    documents = Document.objects.bulk_create([
        Document(collection=collection, title=f"Corpus document {index}", original_filename=f"corpus-{index}.txt",
                 content_type="text/plain", sha256=hashlib.sha256(f"{collection.pk}-{index}".encode()).hexdigest(),
                 status=Document.Status.READY, progress=100, chunk_count=per_document)
        for index in range(math.ceil(size / per_document))
    ], batch_size=5000)
    document_ids = [document.pk for document in documents]
    with connection.cursor() as cursor:
        # The triggers sort each batch's postings: in memory rather than in temporary files.
        cursor.execute("SET work_mem = %s", [options.load_work_mem])
    for start in range(0, size, options.batch):
        _chunks_copy(collection, document_ids, per_document, texts, tokens, vectors, range(start, min(start + options.batch, size)))
    with connection.cursor() as cursor:
        cursor.execute("RESET work_mem")
    return collection


def _chunks_copy(collection, document_ids, per_document, texts, tokens, vectors, indexes: range) -> None:
    """COPY one batch of chunks in binary form, vectors included (pgvector's binary format, set on this cursor only)."""
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
            for index in tqdm(indexes, desc=f"COPY chunks {indexes.start}-{indexes.stop}", unit="chunk", mininterval=2):
                copy.write_row((
                    document_ids[index // per_document], collection.pk, collection.language, index % per_document,
                    texts[index], None, None, Jsonb([]), 0, len(texts[index]), tokens[index], vectors[index],
                ))
    if not raw.autocommit:
        raw.commit()


def relation_sizes() -> dict:
    """Megabytes of the chunk table, each of its indexes, and the text index's tables with their indexes."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT relname, pg_total_relation_size(oid) FROM pg_class
            WHERE relname IN ('documents_chunk', 'documents_postingblock', 'documents_collectionlexeme')
            UNION ALL
            SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes
            WHERE relname IN ('documents_chunk', 'documents_postingblock', 'documents_collectionlexeme')""")
        return {name: round(size / 2**20, 1) for name, size in cursor.fetchall()}


def server_settings() -> dict:
    from django.db import connection

    names = ["server_version", "shared_buffers", "work_mem", "maintenance_work_mem", "max_parallel_maintenance_workers",
             "max_parallel_workers_per_gather", "effective_cache_size", "jit"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", [names])
        return {name: f"{setting}{unit or ''}" for name, setting, unit in cursor.fetchall()}


# ---- measuring --------------------------------------------------------------------------------

def chunk_ids_ascending(collection) -> np.ndarray:
    """The collection's chunk ids in ascending order: the order COPY loaded their vectors in."""
    from ragapp.documents.models import Chunk

    return np.array(Chunk.objects.filter(collection=collection).order_by("id").values_list("id", flat=True))


def exact_neighbours(vectors: np.ndarray, query_vectors: np.ndarray, chunk_ids: np.ndarray, at: int) -> list[list[int]]:
    """The ids of each query's `at` nearest chunks by cosine (unit vectors: the largest dot products)."""
    found = []
    for query in query_vectors:
        similarities = vectors @ query
        best = np.argpartition(-similarities, at)[:at]
        found.append(chunk_ids[best[np.argsort(-similarities[best])]].tolist())
    return found


def dense_sql(options) -> str:
    return DENSE_SQL.replace("embedding <=> %(embedding)s::vector",
                             "embedding::halfvec(384) <=> %(embedding)s::halfvec(384)") if options.halfvec else DENSE_SQL


def dense_series(collection, query_vectors, *, sql: str, ef_search: int, warm_up: int) -> tuple[list[list[int]], list[float]]:
    """Run the kNN statement through HNSW at `ef_search` once per query; return the ids found and the seconds."""
    from django.db import connection, transaction

    from ragapp.retrieval.selectors import search_session_configure

    found, seconds = [], []
    for index in range(-min(warm_up, len(query_vectors)), len(query_vectors)):
        params = {"collection_id": collection.pk, "embedding": query_vectors[index].tolist(), "limit": 10}
        with transaction.atomic(), connection.cursor() as cursor:
            search_session_configure(cursor, k=10, collection=collection)
            cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(ef_search)])
            start = time.perf_counter()
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            elapsed = time.perf_counter() - start
        if index >= 0:
            found.append([row[0] for row in rows])
            seconds.append(elapsed)
    return found, seconds


def recall(found: list[list[int]], truth: list[list[int]], at: int) -> float:
    hits = [len(set(got[:at]) & set(expected[:at])) / min(at, len(expected)) for got, expected in zip(found, truth) if expected]
    return round(float(np.mean(hits)), 4)


def search_series(collection, query_texts, query_vectors, *, modes: tuple[str, ...], k: int, warm_up: int,
                  template=None) -> dict[str, tuple[list[list[int]], list[float]]]:
    """Time chunk_search (or `template` in its place) in each mode; return each mode's ids ranked and seconds.

    The modes take turns, each call timed on its own: the machine drifts over minutes, and series run one after
    another would carry that drift into the ratios between modes. At each turn each mode asks a different
    question (mode m is m/len(modes) of the way round the list), since a search just made for the same question
    leaves its index pages in the cache for the next mode.
    """
    count = len(query_texts)
    series = {mode: ([None] * count, [0.0] * count) for mode in modes}
    for turn in range(-min(warm_up, count), count):
        for offset, mode in enumerate(modes):
            index = (turn + offset * count // len(modes)) % count
            start = time.perf_counter()
            ids = search_ids(collection, query_texts[index], query_vectors[index], mode=mode, k=k, template=template)
            elapsed = time.perf_counter() - start
            if turn >= 0:
                series[mode][0][index] = ids
                series[mode][1][index] = elapsed
    return series


def search_ids(collection, query_text: str, query_vector, *, mode: str, k: int, limit: int | None = None,
               template=None) -> list[int]:
    from django.db import connection, transaction

    from ragapp.retrieval.selectors import chunk_search, search_session_configure, search_query, search_statement

    if template is None:
        candidates = chunk_search(query=query_text, collection=collection, reader=None, k=k, limit=limit, mode=mode,
                                  embedding=query_vector)
        return [candidate.chunk.pk for candidate in candidates]
    statement = search_statement(parsed=search_query(query_text), collection=collection, reader=None,
                                 embedding=query_vector, k=k, limit=limit or k, mode=mode, template=template)
    with transaction.atomic(), connection.cursor() as cursor:
        search_session_configure(cursor, k=k, collection=collection)
        cursor.execute(*statement)
        return [row[0] for row in cursor.fetchall()]


def unpruned_template() -> Template:
    from ragapp.retrieval.selectors import HYBRID_SQL

    if PRUNING not in HYBRID_SQL.template:
        raise SystemExit("hybrid_search.sql no longer splits lexemes as retrieval.py's PRUNING says: update it.")
    return Template(HYBRID_SQL.template.replace(PRUNING, "true AS essential"))


def overlap(found: list[list[int]], reference: list[list[int]], at: int) -> float:
    """Mean share of the reference's top `at` that was found in the top `at` (1 where both are empty)."""
    shares = [len(set(got[:at]) & set(expected[:at])) / len(expected[:at]) if expected else float(not got)
              for got, expected in zip(found, reference)]
    return round(float(np.mean(shares)), 4)


def throughput(collection, query_texts, query_vectors, *, clients: int, k: int) -> float:
    """Hybrid searches per second with `clients` processes sharing the queries, each with its own connection.

    Processes, not threads: each search builds its statement and its rows in Python, which threads of one
    interpreter take in turns. One client is a process too, so that the ratio compares like with like.
    Each client connects and runs one untimed search first; the clock runs from all ready to all done.
    """
    # Spawned, not forked: a child must set Django up and open its own connection, never share the parent's.
    context = multiprocessing.get_context("spawn")
    ready, done = context.Barrier(clients + 1), context.Barrier(clients + 1)
    shares = [(list(query_texts[offset::clients]), np.asarray(query_vectors[offset::clients])) for offset in range(clients)]
    processes = [  # daemons: a client stuck after a failure ends with this process
        context.Process(target=throughput_client, args=(collection.pk, texts, vectors, k, ready, done), daemon=True)
        for texts, vectors in shares
    ]
    for process in processes:
        process.start()
    try:
        ready.wait(timeout=CLIENT_START_SECONDS)
        start = time.perf_counter()
        done.wait()
        elapsed = time.perf_counter() - start
    except threading.BrokenBarrierError:
        raise SystemExit("A throughput client failed or did not start in time: see its traceback above.") from None
    finally:
        for process in processes:
            process.join(timeout=10)  # time for a failed client to print its traceback; a stuck one is a daemon
    return len(query_texts) / elapsed


def throughput_client(collection_pk: int, query_texts: list[str], query_vectors: np.ndarray, k: int, ready, done) -> None:
    """One client of `throughput`, in a process of its own: connect, search once untimed, then search each query."""
    django_setup()
    from django.db import connection

    from ragapp.documents.models import Collection

    try:
        collection = Collection.objects.get(pk=collection_pk)
        search_ids(collection, query_texts[0], query_vectors[0], mode="hybrid", k=k)
        ready.wait()
        for query_text, query_vector in zip(query_texts, query_vectors):
            search_ids(collection, query_text, query_vector, mode="hybrid", k=k)
        done.wait()
    except BaseException:
        ready.abort()  # else the parent and the other clients would wait for this one
        done.abort()
        raise
    finally:
        connection.close()


def chunk_search_ef(collection) -> int:
    """The hnsw.ef_search chunk_search's session settings give this collection."""
    from django.conf import settings
    from django.db import connection, transaction

    from ragapp.retrieval.selectors import search_session_configure

    with transaction.atomic(), connection.cursor() as cursor:
        search_session_configure(cursor, k=settings.RETRIEVAL_CANDIDATES, collection=collection)
        cursor.execute("SELECT current_setting('hnsw.ef_search')::int")
        return cursor.fetchone()[0]


def hnsw_sweep(collection, query_vectors, truth, options) -> dict:
    """HNSW top-10 recall against exact neighbours, and latency, at chunk_search's ef_search and the sweep's."""
    sweep, sql = {}, dense_sql(options)
    for ef_search in sorted({chunk_search_ef(collection), *options.ef_search_sweep}):
        found, seconds = dense_series(collection, query_vectors, sql=sql, ef_search=ef_search, warm_up=options.warm_up)
        sweep[str(ef_search)] = {"recall_at_10": recall(found, truth, 10), **latency_summary(seconds)}
    return sweep


def size_measure(collection, query_texts, query_vectors, truth, options) -> dict:
    """Latency per mode, full-text overlap with the exact peer, HNSW recall by ef_search, concurrency."""
    from django.conf import settings

    k = settings.RETRIEVAL_CANDIDATES
    if options.hnsw_only:
        return {"hnsw_sweep": hnsw_sweep(collection, query_vectors, truth, options)}
    modes = ("dense", "fulltext", "hybrid")
    print(f"  chunk_search {', '.join(modes)} taking turns, k={k} ...", flush=True)
    series = search_series(collection, query_texts, query_vectors, modes=modes, k=k, warm_up=options.warm_up)
    figures = {mode: {**latency_summary(seconds), "results": results} for mode, (results, seconds) in series.items()}
    reference_count = min(options.reference_queries, len(query_texts))
    print(f"  the peer: exact full text, {reference_count} queries ...", flush=True)
    exact, exact_seconds = search_series(collection, query_texts[:reference_count], query_vectors, modes=("fulltext",),
                                         k=k, warm_up=0, template=EXACT_SQL)["fulltext"]
    found = figures["fulltext"]["results"][:reference_count]
    figures["fulltext_exact"] = {"queries": reference_count, **latency_summary(exact_seconds),
                                 "top10_overlap": overlap(found, exact, 10), f"top{k}_overlap": overlap(found, exact, k)}
    print(f"  full text from postings without pruning, {reference_count} queries ...", flush=True)
    unpruned, unpruned_seconds = search_series(collection, query_texts[:reference_count], query_vectors,
                                               modes=("fulltext",), k=k, warm_up=0, template=unpruned_template())["fulltext"]
    figures["fulltext_unpruned"] = {"queries": reference_count, **latency_summary(unpruned_seconds),
                                    "top10_overlap": overlap(unpruned, exact, 10)}
    figures["hnsw_sweep"] = hnsw_sweep(collection, query_vectors, truth, options)
    print(f"  hybrid throughput, 1 and {options.concurrency} clients ...", flush=True)
    one = throughput(collection, query_texts, query_vectors, clients=1, k=k)
    many = throughput(collection, query_texts, query_vectors, clients=options.concurrency, k=k)
    figures["throughput_per_second"] = {"1": round(one, 2), str(options.concurrency): round(many, 2)}
    for mode in modes:
        del figures[mode]["results"]
    return figures


# ---- the run ----------------------------------------------------------------------------------

def size_run(size: int, pool, query_texts, query_vectors, definitions, options, rng) -> dict:
    from django.db import connection

    print(f"\n{size} chunks: reading the corpus and making vectors ...", flush=True)
    texts, tokens = corpus_texts(options.corpus, size)
    vectors = synthetic_vectors(pool, size, options.noise, rng)
    load = {}
    start = time.perf_counter()
    indexes_drop(definitions)  # those the previous size built
    bench_data_delete()
    begun = time.perf_counter()
    collection = collection_load(size, texts=texts, tokens=tokens, vectors=vectors, options=options)
    load["copy_with_text_index_seconds"] = time.perf_counter() - begun
    print("  building the indexes ...", flush=True)
    built = {**definitions, "chunk_embedding_hnsw": hnsw_definition(definitions["chunk_embedding_hnsw"],
                                                                   hnsw=options.hnsw, halfvec=options.halfvec)}
    index_seconds = indexes_create(built, maintenance_work_mem=options.maintenance_work_mem)
    load["gin_index_seconds"] = index_seconds["chunk_search_vector_gin"]
    load["hnsw_index_seconds"] = index_seconds["chunk_embedding_hnsw"]
    begun = time.perf_counter()
    with connection.cursor() as cursor:
        for table in ("documents_chunk", "documents_document", "documents_postingblock", "documents_collectionlexeme"):
            cursor.execute(f"VACUUM ANALYZE {table}")
    load["vacuum_analyze_seconds"] = time.perf_counter() - begun
    load_seconds = time.perf_counter() - start
    truth = exact_neighbours(vectors, query_vectors, chunk_ids_ascending(collection), at=10)  # COPY kept the order
    del texts, vectors
    figures = size_measure(collection, query_texts, query_vectors, truth, options)
    ef_search = str(chunk_search_ef(collection))
    if options.hnsw_only:
        return {"hnsw_recall_at_10": figures["hnsw_sweep"][ef_search]["recall_at_10"], "load_seconds": round(load_seconds, 1),
                "details": {"load": {name: round(value, 1) for name, value in load.items()}, "sizes_mb": relation_sizes(),
                            "hnsw_ef_search": int(ef_search), **figures}}
    return {
        "dense_p50_ms": figures["dense"]["p50_ms"], "dense_p95_ms": figures["dense"]["p95_ms"],
        "fulltext_p50_ms": figures["fulltext"]["p50_ms"], "fulltext_p95_ms": figures["fulltext"]["p95_ms"],
        "hybrid_p50_ms": figures["hybrid"]["p50_ms"], "hybrid_p95_ms": figures["hybrid"]["p95_ms"],
        "hybrid_p95_over_dense_p95": round(figures["hybrid"]["p95_ms"] / figures["dense"]["p95_ms"], 2),
        "fulltext_top10_overlap_vs_exact": figures["fulltext_exact"]["top10_overlap"],
        "hnsw_recall_at_10": figures["hnsw_sweep"][ef_search]["recall_at_10"],
        "load_seconds": round(load_seconds, 1),
        "concurrency_8_speedup" if options.concurrency == 8 else f"concurrency_{options.concurrency}_speedup":
            round(figures["throughput_per_second"][str(options.concurrency)] / figures["throughput_per_second"]["1"], 2),
        "details": {
            "load": {name: round(value, 1) for name, value in load.items()},
            "sizes_mb": relation_sizes(),
            "hnsw_ef_search": int(ef_search),
            **figures,
        },
    }


def summary_print(results: dict) -> None:
    if not all("dense_p50_ms" in figures for figures in results.values()):
        for size, figures in results.items():
            sweep = ", ".join(f"ef {ef}: {values['recall_at_10']:.3f} @ {values['p50_ms']:.1f}/{values['p95_ms']:.1f} ms"
                              for ef, values in figures["details"]["hnsw_sweep"].items())
            print(f"  {size}: HNSW build {figures['details']['load']['hnsw_index_seconds']:.0f} s, "
                  f"{figures['details']['sizes_mb']['chunk_embedding_hnsw']:.0f} MB; recall@10 by ef_search: {sweep}")
        return
    print("\nchunk_search p50/p95 ms (SQL and rows; queries pre-embedded)")
    print(f"{'chunks':>8}{'dense':>14}{'fulltext':>14}{'hybrid':>14}{'exact ft':>16}{'ft top10':>10}"
          f"{'recall@10':>11}{'load s':>9}{'8 clients':>11}")
    for size, figures in results.items():
        exact = figures["details"]["fulltext_exact"]
        print(f"{size:>8}{figures['dense_p50_ms']:>7.1f}/{figures['dense_p95_ms']:<6.1f}"
              f"{figures['fulltext_p50_ms']:>7.1f}/{figures['fulltext_p95_ms']:<6.1f}"
              f"{figures['hybrid_p50_ms']:>7.1f}/{figures['hybrid_p95_ms']:<6.1f}"
              f"{exact['p50_ms']:>8.1f}/{exact['p95_ms']:<7.1f}{figures['fulltext_top10_overlap_vs_exact']:>10.4f}"
              f"{figures['hnsw_recall_at_10']:>11.4f}{figures['load_seconds']:>9.0f}"
              f"{[value for name, value in figures.items() if name.startswith('concurrency')][0]:>10.2f}x")
        sweep = ", ".join(f"ef {ef}: {values['recall_at_10']:.3f} @ {values['p50_ms']:.1f}/{values['p95_ms']:.1f} ms"
                          for ef, values in figures["details"]["hnsw_sweep"].items())
        print(f"  {size}: HNSW recall@10 by ef_search: {sweep}")
        unpruned = figures["details"]["fulltext_unpruned"]
        print(f"  {size}: full text from postings without pruning: {unpruned['p50_ms']:.1f}/{unpruned['p95_ms']:.1f} ms, "
              f"top-10 overlap {unpruned['top10_overlap']:.4f}")


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
    rng = np.random.default_rng(options.seed)
    results = {}
    definitions = index_definitions()
    # The migrations' indexes come back at the end, whatever was built.
    with indexes_dropped(definitions, maintenance_work_mem=options.maintenance_work_mem):
        for size in options.sizes:
            results[str(size)] = size_run(size, pool, query_texts, query_vectors, definitions, options, rng)
        if not options.keep:
            bench_data_delete()
    parameters = {
        "sizes": options.sizes, "corpus": str(options.corpus.relative_to(REPO_ROOT) if options.corpus.is_relative_to(REPO_ROOT) else options.corpus),
        "queries": len(query_texts), "reference_queries": options.reference_queries, "pool": len(pool),
        "noise": options.noise, "chunks_per_document": options.chunks_per_document, "copy_batch": options.batch, "load_work_mem": options.load_work_mem,
        "hnsw_build": options.hnsw or definitions["chunk_embedding_hnsw"].split(" WITH ")[-1], "halfvec": options.halfvec,
        "ef_search_sweep": options.ef_search_sweep, "concurrency": options.concurrency, "hnsw_only": options.hnsw_only,
        "warm_up": options.warm_up, "seed": options.seed, "embedding_model": embedding_model_label(),
        "hnsw_ef_search_setting": settings.HNSW_EF_SEARCH, "retrieval_candidates": settings.RETRIEVAL_CANDIDATES,
        "index_build_maintenance_work_mem": options.maintenance_work_mem, "server_settings": server_settings(),
        "peers": PEERS,
        "timing": "chunk_search with vectors computed beforehand: executing the statement and building the results; "
                  "dense, fulltext and hybrid take turns, each on a different question at each turn; "
                  "throughput clients are processes.",
    }
    summary_print(results)
    path = results_write(options.output, parameters=parameters, figures={"results": results})
    print(f"\nWrote {path}")


if __name__ == "__main__":
    main()
