"""manage.py evaluate --dataset DIR --split NAME: score retrieval modes on a BEIR-format dataset."""

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ragapp.core.services import database_migrate
from ragapp.documents.embedding import embedding_model_label
from ragapp.documents.models import SEARCH_LANGUAGES
from ragapp.tuning import evaluation

COLUMNS = (  # (heading, metric name or ModeResult attribute, format)
    ("nDCG@10", "nDCG@10", "{:.4f}"),
    ("Recall@10", "R@10", "{:.4f}"),
    ("Recall@100", "R@100", "{:.4f}"),
    ("MRR@10", "RR@10", "{:.4f}"),
    ("queries", "queries", "{:d}"),
    ("ms/query", "ms_per_query", "{:.1f}"),
)


class Command(BaseCommand):
    help = (
        "Evaluate retrieval on a BEIR-format dataset (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv). "
        "The corpus is loaded once into a collection named beir-FOLDER and reused by later runs; "
        "each mode ranks documents by their best chunk, and ir-measures scores nDCG@10, Recall@10, "
        "Recall@100 and MRR@10. The modes rerank and hybrid+rerank rerank the hybrid top 100 with a "
        "cross-encoder: a worker (--reranker-url) or a model loaded here (--reranker-model)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dataset", required=True, type=Path,
                            help="BEIR folder with corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv.")
        parser.add_argument("--split", required=True,
                            help="Which judgements to score against: qrels/SPLIT.tsv (e.g. train, dev, test).")
        parser.add_argument(
            "--mode", action="append", dest="modes", choices=[*evaluation.DOCUMENT_RANKERS, *evaluation.RERANK_MODES],
            help="Retrieval mode to evaluate; repeat for several. Default: "
                 f"{', '.join(evaluation.DOCUMENT_RANKERS)}, plus {' and '.join(evaluation.RERANK_MODES)} when a "
                 "reranker is named. rerank: the reranker's order of the hybrid top 100; hybrid+rerank: that "
                 "order fused with the hybrid order by weighted reciprocal ranks (the collection's fusion weight).",
        )
        reranker = parser.add_mutually_exclusive_group()
        reranker.add_argument("--reranker-url", metavar="URL[,URL]",
                              help="Reranker worker(s) for the rerank modes. Default: RERANKER_URL.")
        reranker.add_argument("--reranker-model", metavar="PATH_OR_ID",
                              help="Load this cross-encoder in this process instead of asking a worker "
                                   "(e.g. the folder train_reranker wrote, or a hub id).")
        reranker.add_argument("--reranker-scores", type=Path, metavar="FILE",
                              help="Take the reranker's scores from FILE: pairs written by --export-pairs and scored "
                                   "elsewhere (bench/gpu_check.py --pairs scores them on a GPU machine).")
        parser.add_argument("--export-pairs", type=Path, metavar="FILE",
                            help="Only write the hybrid candidates that the rerank modes would score for the evaluated "
                                 "queries to FILE (gzipped JSON), for a reranker on another machine; then stop.")
        parser.add_argument("--reranker-backend", choices=["torch", "int8"], default="torch",
                            help="With --reranker-model: torch (exact) or int8 (faster on a CPU, approximate). Default: torch.")
        parser.add_argument("--tune-fusion", action="store_true",
                            help="Before evaluating, try fusion weights 0, 0.1, ..., 1 on the evaluated queries, keep the one "
                                 "with the best hybrid+rerank nDCG@10 and save it as the collection's fusion weight. "
                                 "Tune on training queries (--queries), then evaluate held-out ones in a second run.")
        parser.add_argument("--tune-dense-weight", action="store_true",
                            help="Before evaluating, try dense weights 0, 0.1, ..., 1 (the dense side's share in hybrid's "
                                 "fusion) on the evaluated queries, keep the one with the best hybrid nDCG@10 and save it "
                                 "as the collection's dense weight. For an embedding model that does not read the "
                                 "collection's language. Tune on training queries (--queries), then evaluate held-out ones.")
        parser.add_argument("--fusion-weight", type=float, metavar="W",
                            help="Use this fusion weight (0..1) for hybrid+rerank in this run instead of the collection's.")
        parser.add_argument("--json", type=Path, dest="json_path", metavar="FILE",
                            help="Also write the results (metrics, counts, embedding model, timestamp) to FILE as JSON.")
        parser.add_argument("--queries", type=Path, dest="queries_path", metavar="FILE",
                            help="Evaluate only the query ids listed in FILE, one per line.")
        parser.add_argument("--limit-queries", type=int, metavar="N",
                            help="Evaluate only the first N judged queries (in queries.jsonl order), for a quick run.")
        parser.add_argument(
            "--language", choices=[code for code, _ in SEARCH_LANGUAGES],
            help="Text-search language of the collection when it is created (an existing collection must "
                 "match it). Default: an existing collection's own; for a new one 'simple' when the corpus "
                 "is mostly Chinese characters, else 'english'.",
        )

    def handle(self, *args, dataset, split, modes, json_path, queries_path, limit_queries, language, **options):
        if not dataset.is_dir():
            raise CommandError(f"{dataset} is not a folder. Point --dataset at a BEIR folder (corpus.jsonl, queries.jsonl, qrels/).")
        if limit_queries is not None and limit_queries < 1:
            raise CommandError("--limit-queries must be at least 1.")
        if options["fusion_weight"] is not None and not 0 <= options["fusion_weight"] <= 1:
            raise CommandError("--fusion-weight must be between 0 and 1.")
        reranker_named = bool(options["reranker_url"] or options["reranker_model"] or options["reranker_scores"])
        modes = list(dict.fromkeys(modes or [*evaluation.DOCUMENT_RANKERS, *(evaluation.RERANK_MODES if reranker_named else ())]))
        database_migrate()
        try:
            query_ids = evaluation.query_ids_read(path=queries_path) if queries_path else None
            data = evaluation.beir_dataset_read(
                dataset_dir=dataset, split=split, query_ids=query_ids, limit_queries=limit_queries,
            )
            load = evaluation.beir_collection_load(dataset_dir=dataset, language=language, corpus=data.corpus)
            self._report_load(load, data)
            if options["export_pairs"]:
                pairs = evaluation.pairs_export(dataset=data, collection=load.collection, path=options["export_pairs"])
                self.stdout.write(f"Wrote {pairs} pairs of {len(data.queries)} queries to {options['export_pairs']}.")
                return
            dense_tuning = self._dense_weight_tune(data, load.collection) if options["tune_dense_weight"] else {}
            rankers, reranking = self._rankers(modes, data, load.collection, options)
            results = evaluation.retrieval_evaluate(dataset=data, collection=load.collection, rankers=rankers)
        except evaluation.EvaluationError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(results_table(results))
        if {"rerank", "hybrid+rerank"} <= set(results):
            self.stdout.write("(hybrid+rerank reuses the reranker scores computed for rerank: its ms/query leaves them out.)")
        if json_path:
            record = {**results_json(data, split, load, results), **dense_tuning, **reranking}
            json_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            self.stdout.write(f"Wrote {json_path}")

    def _rankers(self, modes, data, collection, options) -> tuple[dict, dict]:
        """The rankers for `modes`, and what the JSON should say about the reranker (empty without one)."""
        rankers = {mode: evaluation.DOCUMENT_RANKERS[mode] for mode in modes if mode in evaluation.DOCUMENT_RANKERS}
        if not (options["tune_fusion"] or set(modes) & set(evaluation.RERANK_MODES)):
            return rankers, {}
        scorer, label = self._scorer(options)
        reranked = evaluation.RerankedCandidates(scorer=scorer)
        weight = options["fusion_weight"] if options["fusion_weight"] is not None else collection.rerank_fusion_weight
        tuning = None
        if options["tune_fusion"]:
            tuning = evaluation.fusion_weight_tune(dataset=data, collection=collection, reranked=reranked)
            weight = tuning.weight
        rerank_modes = evaluation.rerank_rankers(reranked, fusion_weight=weight)
        rankers.update({mode: rerank_modes[mode] for mode in modes if mode in rerank_modes})
        record = {"reranker": label, "fusion_weight": weight}
        if tuning:
            record["fusion_tuning"] = self._tuning_save(tuning, collection, field="rerank_fusion_weight",
                                                        name="fusion weight", mode="hybrid+rerank", queries=len(data.queries))
        return dict(sorted(rankers.items(), key=lambda item: modes.index(item[0]))), record

    def _dense_weight_tune(self, data, collection) -> dict:
        tuning = evaluation.dense_weight_tune(dataset=data, collection=collection)
        return {"dense_weight_tuning": self._tuning_save(tuning, collection, field="dense_weight", name="dense weight",
                                                         mode="hybrid", queries=len(data.queries))}

    def _tuning_save(self, tuning, collection, *, field: str, name: str, mode: str, queries: int) -> dict[str, float]:
        """Save the tuned weight as the collection's `field`, say so with the sweep, and return the sweep for the JSON."""
        setattr(collection, field, tuning.weight)
        collection.save(update_fields=[field])
        sweep = ", ".join(f"{weight:g}: {ndcg:.4f}" for weight, ndcg in tuning.ndcg_by_weight.items())
        self.stdout.write(f"{name.capitalize()} tuned on these {queries} queries ({mode} nDCG@10 by weight: {sweep}). "
                          f"Saved {tuning.weight:g} as the {name} of {collection.name}.")
        return {f"{weight:g}": ndcg for weight, ndcg in tuning.ndcg_by_weight.items()}

    def _scorer(self, options) -> tuple[evaluation.PassageScorer, str]:
        if options["reranker_scores"]:
            return evaluation.recorded_scorer(options["reranker_scores"]), f"scores recorded in {options['reranker_scores']}"
        if options["reranker_model"]:
            backend = options["reranker_backend"]
            self.stdout.write(f"Loading the reranker {options['reranker_model']} ({backend}) in this process.")
            return evaluation.model_scorer(options["reranker_model"], backend=backend), f"{options['reranker_model']} ({backend}, in process)"
        urls = [url.strip() for url in (options["reranker_url"] or "").split(",") if url.strip()] or settings.RERANKER_URLS
        if not urls:
            raise CommandError("The rerank modes need a reranker: pass --reranker-url (a running worker) or "
                               "--reranker-model (a cross-encoder to load here), or set RERANKER_URL.")
        return evaluation.worker_scorer(urls), ", ".join(urls)

    def _report_load(self, load: evaluation.CollectionLoad, data: evaluation.BeirDataset) -> None:
        collection = load.collection
        if load.loaded:
            self.stdout.write(f"Loaded {load.loaded} documents into {collection.name} in {load.seconds:.0f} s.")
        else:
            self.stdout.write(f"Reusing collection {collection.name} ({len(data.corpus)} documents, language {collection.language}).")
        if load.failed:
            self.stderr.write(f"{load.failed} corpus entries could not be ingested (see the documents' errors in the admin); they are never retrieved.")
        if data.duplicate_entries:
            self.stdout.write(f"{data.duplicate_entries} corpus entries repeat an earlier entry's title and text: "
                              "stored once, and their judgements count for the stored one.")
        skipped = f", {data.skipped_queries} without judgements skipped" if data.skipped_queries else ""
        self.stdout.write(f"Evaluating {len(data.queries)} queries{skipped}.")


def results_table(results: dict[str, evaluation.ModeResult]) -> str:
    """Format one row per mode under the COLUMNS headings."""
    headings = ["mode", *(heading for heading, _, _ in COLUMNS)]
    rows = [[mode, *(template.format(_column_value(result, key)) for _, key, template in COLUMNS)]
            for mode, result in results.items()]
    widths = [max(len(row[index]) for row in [headings, *rows]) for index in range(len(headings))]
    lines = [headings, ["-" * width for width in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) if index == 0 else cell.rjust(width) for index, (cell, width) in enumerate(zip(line, widths)))
        for line in lines
    )


def _column_value(result: evaluation.ModeResult, key: str):
    return result.metrics[key] if key in result.metrics else getattr(result, key)


def results_json(data: evaluation.BeirDataset, split: str, load: evaluation.CollectionLoad,
                 results: dict[str, evaluation.ModeResult]) -> dict:
    return {
        "dataset": data.name,
        "split": split,
        "collection": load.collection.name,
        "language": load.collection.language,
        "dense_weight": load.collection.dense_weight,
        "modes": list(results),
        "metrics": {mode: result.metrics for mode, result in results.items()},
        "counts": {
            "corpus": len(data.corpus),
            "queries": len(data.queries),
            "skipped_queries": data.skipped_queries,
            "duplicate_entries": data.duplicate_entries,
            "failed_documents": load.failed,
        },
        "ms_per_query": {mode: round(result.ms_per_query, 2) for mode, result in results.items()},
        "load_seconds": round(load.seconds, 1),
        "documents_loaded": load.loaded,
        "embedding_model": embedding_model_label(),
        "timestamp": timezone.now().isoformat(),
    }
