"""HNSW recall@10 and latency at 1M chunks for other build parameters, on the collection `retrieval.py --keep` left.

Rebuilds that collection's HNSW index with --m and --ef-construction, regenerates its vectors exactly as
retrieval.py made them (same --seed, sizes and pool, so the exact neighbours are the same), and measures
recall against numpy's exact neighbours at each --ef-search. Peer: exact search. The migrations' index is
not restored: run it on the throwaway DATA_DIR that retrieval.py used.
"""

import argparse
import json
import time

import numpy as np
import retrieval
from common import django_setup, latency_summary, results_write, scifact_path, scifact_queries


def options_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, required=True)
    parser.add_argument("--ef-construction", type=int, required=True)
    parser.add_argument("--ef-search", default="400,800,1000", help="Comma-separated ef_search values.")
    parser.add_argument("--sizes", default="100000,1000000",
                        help="The sizes the --keep run loaded, in order: the vectors come from one random stream.")
    parser.add_argument("--pool", type=int, default=13000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--maintenance-work-mem", default="5GB")
    parser.add_argument("--output", default="hnsw-rebuild")
    return parser.parse_args(argv)


def kept_vectors(sizes: list[int], pool: np.ndarray, seed: int) -> np.ndarray:
    """The last size's vectors, drawn as retrieval.py drew them (noise 0.3, its default)."""
    rng = np.random.default_rng(seed)
    for size in sizes:
        vectors = retrieval.synthetic_vectors(pool, size, 0.3, rng)
    return vectors


def main(argv=None) -> None:
    options = options_parse(argv)
    django_setup()
    from django.db import connection

    from ragapp.documents.embedding import embed_texts
    from ragapp.documents.models import Collection

    sizes = [int(size) for size in options.sizes.split(",")]
    folder = scifact_path(None)
    query_vectors = embed_texts(scifact_queries(folder, 200))
    collection = Collection.objects.get(name=f"{retrieval.COLLECTION_PREFIX}retrieval-{sizes[-1]}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM documents_chunk WHERE collection_id = %s ORDER BY id", [collection.pk])
        chunk_ids = np.array([row[0] for row in cursor.fetchall()])
    truth = retrieval.exact_neighbours(kept_vectors(sizes, retrieval.pool_load(folder, options.pool), options.seed),
                                       query_vectors, chunk_ids, at=10)
    figures = {"m": options.m, "ef_construction": options.ef_construction}
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [options.maintenance_work_mem])
        cursor.execute('DROP INDEX IF EXISTS "chunk_embedding_hnsw"')
        start = time.perf_counter()
        cursor.execute("CREATE INDEX chunk_embedding_hnsw ON documents_chunk USING hnsw (embedding vector_cosine_ops) "
                       f"WITH (m = {options.m}, ef_construction = {options.ef_construction})")
        figures["build_seconds"] = round(time.perf_counter() - start, 1)
        cursor.execute("SELECT pg_relation_size('chunk_embedding_hnsw') / 1e6")
        figures["index_mb"] = round(float(cursor.fetchone()[0]))
    sql = retrieval.DENSE_SQL
    for ef_search in (int(value) for value in options.ef_search.split(",")):
        found, seconds = retrieval.dense_series(collection, query_vectors, sql=sql, ef_search=ef_search, warm_up=10)
        figures[str(ef_search)] = {"recall_at_10": retrieval.recall(found, truth, 10), **latency_summary(seconds)}
        print(ef_search, figures[str(ef_search)], flush=True)
    peer = "exact nearest neighbours by cosine, numpy over the regenerated vectors (recall is against it)"
    path = results_write(options.output, parameters={**vars(options), "peer": peer}, figures={"results": figures})
    print(json.dumps(figures), f"\nWrote {path}")


if __name__ == "__main__":
    main()
