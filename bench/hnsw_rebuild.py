"""HNSW recall@10 and latency at 1M chunks for other build parameters, on the collection `retrieval.py --keep` left.

Rebuilds that collection's HNSW index with --m and --ef-construction, regenerates its vectors exactly as
retrieval.py made them (same --seed, sizes and pool, so the exact neighbours are the same), and measures
recall against numpy's exact neighbours at each --ef-search. Peer: exact search. The migrations' index is
not restored: run it on the throwaway DATA_DIR that retrieval.py used.
"""

import argparse
import json

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
    parser.add_argument("--pool", type=int, default=13000, help="As the --keep run had it (retrieval.py's default).")
    parser.add_argument("--noise", type=float, default=0.3, help="As the --keep run had it (retrieval.py's default).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--maintenance-work-mem", default="5GB")
    parser.add_argument("--output", default="hnsw-rebuild")
    return parser.parse_args(argv)


def kept_vectors(sizes: list[int], pool: np.ndarray, *, noise: float, seed: int) -> np.ndarray:
    """The last size's vectors, drawn from one random stream as retrieval.py drew them."""
    rng = np.random.default_rng(seed)
    for size in sizes:
        vectors = retrieval.synthetic_vectors(pool, size, noise, rng)
    return vectors


def main(argv=None) -> None:
    options = options_parse(argv)
    django_setup()
    from ragapp.documents.embedding import embed_texts
    from ragapp.documents.models import Collection

    sizes = [int(size) for size in options.sizes.split(",")]
    folder = scifact_path(None)
    query_vectors = embed_texts(scifact_queries(folder, 200))
    collection = Collection.objects.get(name=f"{retrieval.COLLECTION_PREFIX}retrieval-{sizes[-1]}")
    vectors = kept_vectors(sizes, retrieval.pool_load(folder, options.pool), noise=options.noise, seed=options.seed)
    truth = retrieval.exact_neighbours(vectors, query_vectors, retrieval.chunk_ids_ascending(collection), at=10)
    del vectors
    figures = {"m": options.m, "ef_construction": options.ef_construction}
    built = {"chunk_embedding_hnsw": retrieval.hnsw_definition(retrieval.index_definitions()["chunk_embedding_hnsw"],
                                                               hnsw=[options.m, options.ef_construction], halfvec=False)}
    retrieval.indexes_drop(built)
    seconds = retrieval.indexes_create(built, maintenance_work_mem=options.maintenance_work_mem)
    figures["build_seconds"] = round(seconds["chunk_embedding_hnsw"], 1)
    figures["index_mb"] = retrieval.relation_sizes()["chunk_embedding_hnsw"]
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
