"""Full-text ranking quality on a BEIR set: the search statement against the exact BM25 statement it replaced.

The peer is bench/hybrid_search_exact.sql, which scores every chunk holding a query word. Both rank
documents as `manage.py evaluate` does in full-text mode (its ranker for the statement; the same k, limit
and best-chunk rule for the peer) and are scored with the same measures; the statement's time includes
building its result objects, as evaluate's does. The statement is meant to be exact, so the
measures should match and the document rankings should differ only where scores tie.

Run on a collection that `manage.py evaluate --dataset FOLDER` loaded, with the same DATA_DIR.
"""

import argparse
import time

from common import django_setup, latency_summary, results_write, scifact_path
from retrieval import EXACT_SQL, search_ids

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
    from ragapp.documents.models import Collection
    from ragapp.tuning import evaluation

    dataset_dir = scifact_path(options.dataset)
    dataset = evaluation.beir_dataset_read(dataset_dir=dataset_dir, split=options.split)
    collection = Collection.objects.get(name=evaluation.collection_name(dataset_dir))
    rankers = {"statement": evaluation.search_ranker("fulltext"), "peer": _exact_ranker(collection)}
    rankings = {name: {} for name in rankers}
    seconds = {name: [] for name in rankers}
    for index, (query_id, query) in enumerate(dataset.queries.items()):
        # Whichever runs second finds the query's pages cached: take turns going first.
        for name in tuple(rankers)[::1 if index % 2 else -1]:
            start = time.perf_counter()
            rankings[name][query_id] = rankers[name](query=query, collection=collection, depth=evaluation.RANKING_DEPTH)
            seconds[name].append(time.perf_counter() - start)
    figures = _figures(dataset, collection, rankings, seconds)
    path = results_write(options.output, parameters={**vars(options), "peer": PEER}, figures=figures)
    print(f"nDCG@10 {figures['statement']['nDCG@10']} (peer {figures['peer']['nDCG@10']}, "
          f"difference {figures['ndcg_at_10_difference']}); top 10 documents differ on "
          f"{figures['queries_with_different_top10']} of {len(dataset.queries)} queries; written to {path}")


def _exact_ranker(collection):
    """evaluation.search_ranker's full-text ranking, from the exact statement."""
    from ragapp.documents.models import Chunk
    from ragapp.tuning.evaluation import ranked_documents

    document_of = dict(Chunk.objects.filter(collection=collection).values_list("pk", "document_id"))

    def rank(*, query: str, collection, depth: int) -> list[int]:
        chunk_ids = search_ids(collection, query, None, mode="fulltext", k=depth, limit=2 * depth, template=EXACT_SQL)
        return ranked_documents((document_of[chunk_id] for chunk_id in chunk_ids), depth=depth)

    return rank


def _figures(dataset, collection, rankings: dict, seconds: dict) -> dict:
    from ragapp.documents.models import Document
    from ragapp.tuning.evaluation import RANKING_DEPTH, ranking_run, rankings_score

    corpus_ids = dict(Document.objects.filter(collection=collection).values_list("pk", "external_id"))
    measures = {}
    for name, by_query in rankings.items():
        run = {query_id: ranking_run(ranking, corpus_ids=corpus_ids, depth=RANKING_DEPTH)
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
