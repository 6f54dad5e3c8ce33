"""The read rule compiled into the search statement, against one ORM check and the collection id as a parameter.

Both designs answer the same question with the same rule (ragapp.documents.selectors): the
candidate is today's statement, whose `permitted` CTE is `collection_readable_by` compiled by the
ORM; the peer asks the ORM once whether the reader may read the collection, then runs the statement
with that CTE reduced to the collection id. Each query is timed both ways, alternating, for a
reader granted the collection (not a superuser: the grants are what the rule tests); the two take
turns going first. Queries are
embedded before timing, so only the permission check, the SQL and the row building are measured.

Run on a collection that `manage.py evaluate` loaded (beir-scifact by default).
"""

import argparse
import time

from common import django_setup, latency_summary, results_write, scifact_path, scifact_queries

PEER = "one ORM exists() check with the same rule, then the statement with the collection id as a constant"


def options_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", default="beir-scifact",
                        help="Slug of a loaded collection (default: beir-scifact, as manage.py evaluate names it).")
    parser.add_argument("--scifact", help="The SciFact folder whose queries are asked (default: ../shared/data/scifact).")
    parser.add_argument("--queries", type=int, default=200, help="Queries to time (default: 200).")
    parser.add_argument("--output", default="permission", help="Results go to bench/results/NAME.json (default: permission).")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    options = options_parse(argv)
    django_setup()
    from django.contrib.auth.models import User

    from ragapp.documents.embedding import embed_texts
    from ragapp.documents.models import Collection

    collection = Collection.objects.get(slug=options.collection)
    reader, _ = User.objects.get_or_create(username="bench-permission-reader")
    collection.readers.add(reader)
    queries = scifact_queries(scifact_path(options.scifact), limit=options.queries)
    vectors = embed_texts(queries)
    composed, peer, differing = [], [], 0
    for index, (query, vector) in enumerate(zip(queries, vectors)):
        # Whichever runs second finds the query's pages cached: take turns going first.
        order = (_search_composed, _search_after_orm_check)[::1 if index % 2 else -1]
        timed = {search: _timed(search, query, vector, collection, reader) for search in order}
        composed.append(timed[_search_composed][1])
        peer.append(timed[_search_after_orm_check][1])
        differing += timed[_search_composed][0] != timed[_search_after_orm_check][0]
    composed_summary, peer_summary = latency_summary(composed), latency_summary(peer)
    figures = {
        "composed_rule": composed_summary, "peer": peer_summary, "queries_with_different_results": differing,
        "p50_ratio_composed_to_peer": round(composed_summary["p50_ms"] / peer_summary["p50_ms"], 3),
        "p95_ratio_composed_to_peer": round(composed_summary["p95_ms"] / peer_summary["p95_ms"], 3),
    }
    path = results_write(options.output, parameters={**vars(options), "peer": PEER}, figures=figures)
    print(f"composed rule p50/p95 {composed_summary['p50_ms']:.1f}/{composed_summary['p95_ms']:.1f} ms; "
          f"peer {peer_summary['p50_ms']:.1f}/{peer_summary['p95_ms']:.1f} ms; "
          f"ratio p50 {figures['p50_ratio_composed_to_peer']}, p95 {figures['p95_ratio_composed_to_peer']}; "
          f"different results: {differing}; written to {path}")


def _timed(search, *arguments) -> tuple[list[int], float]:
    start = time.perf_counter()
    ids = search(*arguments)
    return ids, time.perf_counter() - start


def _search_composed(query, vector, collection, reader) -> list[int]:
    from ragapp.retrieval.selectors import chunk_search

    return [c.chunk.pk for c in chunk_search(query=query, collection=collection, reader=reader, embedding=vector)]


def _search_after_orm_check(query, vector, collection, reader) -> list[int]:
    from django.db import connection, transaction

    from ragapp.documents.selectors import collection_readable_by
    from ragapp.retrieval.selectors import search_session_configure, search_query, search_statement

    if not collection_readable_by(user=reader).filter(pk=collection.pk).exists():
        return []
    # The trusted form of the statement: its permitted CTE is the collection id alone.
    statement, params = search_statement(parsed=search_query(query), collection=collection, reader=None,
                                         embedding=vector, k=100, limit=100, mode="hybrid")
    with transaction.atomic(), connection.cursor() as cursor:
        search_session_configure(cursor, k=100, collection=collection)
        cursor.execute(statement, params)
        return [row[0] for row in cursor.fetchall()]


if __name__ == "__main__":
    main()
