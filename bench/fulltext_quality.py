"""Full-text ranking quality on a BEIR set: the search statement against the exact BM25 statement it replaced.

The peer is bench/hybrid_search_exact.sql, which scores every chunk holding a query word. Both run in
full-text mode as `manage.py evaluate` runs chunk_search (k = its ranking depth, each document ranked by
its best chunk) and are scored with the same measures. The statement is meant to be exact, so the
measures should match and the document rankings should differ only where scores tie.

Run on a collection that `manage.py evaluate --dataset FOLDER` loaded, with the same DATA_DIR.
"""

import argparse
import time
from pathlib import Path

from common import django_setup, latency_summary, results_write, scifact_path
from retrieval import EXACT_SQL

PEER = "the exact BM25 statement the postings replaced (bench/hybrid_search_exact.sql)"


def options_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", help="The BEIR folder evaluate loaded (default: SciFact, as bench/common finds it).")
    parser.add_argument("--split", default="train", help="The judged split whose queries are asked (default: train).")
    parser.add_argument("--output", default="fulltext-quality",
                        help="Results go to bench/results/NAME.json (default: fulltext-quality).")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    options = options_parse(argv)
    django_setup()
    from ragapp.documents.models import Chunk, Collection
    from ragapp.tuning import evaluation

    dataset_dir = scifact_path(options.dataset)
    dataset = evaluation.beir_dataset_read(dataset_dir=dataset_dir, split=options.split)
    collection = Collection.objects.get(name=evaluation.collection_name(dataset_dir))
    document_of = dict(Chunk.objects.filter(collection=collection).values_list("pk", "document_id"))
    rankings = {"statement": {}, "peer": {}}
    seconds = {"statement": [], "peer": []}
    for index, (query_id, query) in enumerate(dataset.queries.items()):
        # Whichever runs second finds the query's pages cached: take turns going first.
        for name in ("statement", "peer")[::1 if index % 2 else -1]:
            start = time.perf_counter()
            chunk_ids = _fulltext_ids(query, collection, exact=name == "peer")
            seconds[name].append(time.perf_counter() - start)
            rankings[name][query_id] = evaluation.ranked_documents((document_of[i] for i in chunk_ids),
                                                                depth=evaluation.RANKING_DEPTH)
    figures = _figures(dataset, collection, rankings, seconds)
    path = results_write(options.output, parameters={**vars(options), "peer": PEER}, figures=figures)
    print(f"nDCG@10 {figures['statement']['nDCG@10']} (peer {figures['peer']['nDCG@10']}, "
          f"difference {figures['ndcg_at_10_difference']}); top 10 documents differ on "
          f"{figures['queries_with_different_top10']} of {len(dataset.queries)} queries; written to {path}")


def _fulltext_ids(query: str, collection, *, exact: bool) -> list[int]:
    from django.db import connection, transaction

    from ragapp.retrieval.selectors import search_query, search_session_configure, search_statement
    from ragapp.tuning.evaluation import RANKING_DEPTH

    template = {"template": EXACT_SQL} if exact else {}
    statement = search_statement(parsed=search_query(query), collection=collection, reader=None, embedding=None,
                                 k=RANKING_DEPTH, limit=2 * RANKING_DEPTH, mode="fulltext", **template)
    if statement is None:
        return []
    with transaction.atomic(), connection.cursor() as cursor:
        search_session_configure(cursor, k=RANKING_DEPTH, collection=collection)
        cursor.execute(*statement)
        return [row[0] for row in cursor.fetchall()]


def _figures(dataset, collection, rankings: dict, seconds: dict) -> dict:
    from ragapp.documents.models import Document
    from ragapp.tuning.evaluation import rankings_score

    external_id = dict(Document.objects.filter(collection=collection).values_list("pk", "external_id"))
    measures = {}
    for name, by_query in rankings.items():
        # Scores only carry the order, as in evaluation: the first document gets the highest.
        run = {query_id: {external_id[document]: float(len(ranking) - position)
                          for position, document in enumerate(ranking)}
               for query_id, ranking in by_query.items()}
        measures[name] = {key: round(value, 4) for key, value in rankings_score(qrels=dataset.qrels, run=run).items()}
        measures[name].update(latency_summary(seconds[name]))
    different = sum(rankings["statement"][query_id][:10] != rankings["peer"][query_id][:10] for query_id in dataset.queries)
    return {
        "statement": measures["statement"], "peer": measures["peer"],
        "ndcg_at_10_difference": round(measures["statement"]["nDCG@10"] - measures["peer"]["nDCG@10"], 4),
        "queries_with_different_top10": different,
    }


if __name__ == "__main__":
    main()
