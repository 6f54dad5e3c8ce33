"""Retrieval evaluation on a BEIR-format dataset: load the corpus once, rank each query, score.

A BEIR folder holds `corpus.jsonl` ({_id, title, text}), `queries.jsonl` ({_id, text}) and
`qrels/<split>.tsv` (a header line, then query-id, corpus-id, score). The corpus becomes a
collection named after the folder ("beir-scifact"), loaded once and reused after. Each mode
of `DOCUMENT_RANKERS` turns a query into a ranking of documents; ir-measures scores the
rankings against the qrels.
"""

import gzip
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import ir_measures
from django.core.files.base import ContentFile
from django.utils.text import get_valid_filename
from ir_measures import RR, R, nDCG
from tqdm import tqdm

from ragapp.documents.models import Collection, Document
from ragapp.documents.segmentation import CHINESE_RUN
from ragapp.documents.services import collection_get_or_create, document_create, document_ingest
from ragapp.retrieval.rerank_client import RerankerPool, RerankerUnavailable, rerank_order
from ragapp.retrieval.selectors import chunk_search, search_embedding, search_query

# Documents ranked per query: the depth of the deepest metric (R@100).
RANKING_DEPTH = 100
MEASURES = {"nDCG@10": nDCG @ 10, "R@10": R @ 10, "R@100": R @ 100, "RR@10": RR @ 10}
# A corpus whose letters are mostly Chinese characters is indexed with the "simple" configuration
# (its text is segmented into words before indexing; no stemmer applies to them).
CHINESE_SHARE_FOR_SIMPLE = 0.5


class EvaluationError(Exception):
    """The dataset or the options cannot be evaluated as given; the message says what to fix."""


@dataclass(frozen=True)
class CorpusEntry:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class BeirDataset:
    name: str
    corpus: list[CorpusEntry]
    queries: dict[str, str]  # query id -> text, only the queries to evaluate, in file order
    qrels: dict[str, dict[str, int]]  # query id -> {corpus id: relevance}, for those queries
    skipped_queries: int  # queries left out because the split judges none of their documents
    duplicate_entries: int = 0  # corpus entries with the same title and text as an earlier one


@dataclass(frozen=True)
class CollectionLoad:
    collection: Collection
    loaded: int  # documents ingested by this call (0: the collection was reused as it was)
    failed: int  # documents of the corpus that are not searchable after this call
    seconds: float


@dataclass(frozen=True)
class ModeResult:
    metrics: dict[str, float]  # MEASURES' names -> mean over the queries
    queries: int
    ms_per_query: float


# A ranker turns a query into document ids (primary keys), best first, at most `depth` of them.
Ranker = Callable[..., list[int]]


def beir_dataset_read(*, dataset_dir: Path, split: str, query_ids: Iterable[str] | None = None,
                      limit_queries: int | None = None) -> BeirDataset:
    """Read a BEIR folder; keep the queries judged in `split` (and in `query_ids`, when given)."""
    dataset_dir = Path(dataset_dir)
    corpus, aliases = corpus_deduplicate(beir_corpus_read(dataset_dir=dataset_dir))
    all_queries = _jsonl_read(_required_file(dataset_dir / "queries.jsonl"))
    qrels = _qrels_on_kept_entries(beir_qrels_read(dataset_dir=dataset_dir, split=split), aliases)
    queries = {row["_id"]: row["text"] for row in all_queries}
    if query_ids is not None:
        queries = _restrict_queries(queries, list(query_ids))
    judged = {query_id: text for query_id, text in queries.items() if qrels.get(query_id)}
    if not judged:
        raise EvaluationError(f"No query to evaluate: none of the selected queries has judgements in qrels/{split}.tsv.")
    skipped = len(queries) - len(judged)
    if limit_queries is not None:
        judged = dict(list(judged.items())[:limit_queries])
    return BeirDataset(
        name=dataset_dir.resolve().name, corpus=corpus, queries=judged,
        qrels={query_id: qrels[query_id] for query_id in judged}, skipped_queries=skipped,
        duplicate_entries=len(aliases),
    )


def beir_corpus_read(*, dataset_dir: Path) -> list[CorpusEntry]:
    return [
        CorpusEntry(id=str(row["_id"]), title=row.get("title") or "", text=row.get("text") or "")
        for row in _jsonl_read(_required_file(Path(dataset_dir) / "corpus.jsonl"))
    ]


def corpus_deduplicate(corpus: list[CorpusEntry]) -> tuple[list[CorpusEntry], dict[str, str]]:
    """Keep the first of entries with the same title and text; map each dropped id to the kept one.

    The collection stores identical files once (same sha256), so a duplicate entry can never
    be retrieved under its own id: judgements that name it are moved to the kept entry.
    """
    kept: dict[tuple[str, str], str] = {}
    unique, aliases = [], {}
    for entry in corpus:
        first = kept.setdefault((entry.title, entry.text), entry.id)
        if first == entry.id:
            unique.append(entry)
        else:
            aliases[entry.id] = first
    return unique, aliases


def _qrels_on_kept_entries(qrels: dict[str, dict[str, int]], aliases: dict[str, str]) -> dict[str, dict[str, int]]:
    moved: dict[str, dict[str, int]] = {}
    for query_id, judgements in qrels.items():
        merged = moved.setdefault(query_id, {})
        for corpus_id, relevance in judgements.items():
            kept_id = aliases.get(corpus_id, corpus_id)
            merged[kept_id] = max(relevance, merged.get(kept_id, relevance))
    return moved


def beir_qrels_read(*, dataset_dir: Path, split: str) -> dict[str, dict[str, int]]:
    """Read qrels/<split>.tsv (header line first) into {query id: {corpus id: relevance}}."""
    qrels_dir = Path(dataset_dir) / "qrels"
    path = qrels_dir / f"{split}.tsv"
    if not path.is_file():
        available = sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
        raise EvaluationError(
            f"No judgements for split '{split}': {path} does not exist. "
            + (f"Splits in this dataset: {', '.join(available)}." if available else "The dataset has no qrels folder.")
        )
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        next(handle, None)  # header: query-id, corpus-id, score
        for line_number, line in enumerate(handle, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise EvaluationError(f"{path}, line {line_number}: expected query-id, corpus-id and score separated by tabs.")
            query_id, corpus_id, score = fields
            qrels.setdefault(query_id, {})[corpus_id] = int(score)
    return qrels


def query_ids_read(*, path: Path) -> list[str]:
    """Read query ids, one per line (blank lines ignored)."""
    path = _required_file(Path(path))
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _restrict_queries(queries: dict[str, str], query_ids: list[str]) -> dict[str, str]:
    unknown = [query_id for query_id in query_ids if query_id not in queries]
    if unknown:
        raise EvaluationError(
            f"{len(unknown)} of the requested query ids are not in queries.jsonl (e.g. {', '.join(unknown[:5])}). "
            "Check that the query file belongs to this dataset."
        )
    wanted = set(query_ids)
    return {query_id: text for query_id, text in queries.items() if query_id in wanted}


def _required_file(path: Path) -> Path:
    if not path.is_file():
        raise EvaluationError(f"{path} does not exist. Point --dataset at a BEIR folder (corpus.jsonl, queries.jsonl, qrels/).")
    return path


def _jsonl_read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def corpus_language(corpus: list[CorpusEntry]) -> str:
    """Return "simple" for a corpus written mostly in Chinese characters, else "english"."""
    sample = "".join(entry.title + entry.text for entry in corpus[:1000])
    letters = sum(character.isalpha() for character in sample)
    chinese = sum(len(run) for run in CHINESE_RUN.findall(sample))
    return "simple" if letters and chinese / letters > CHINESE_SHARE_FOR_SIMPLE else "english"


def collection_name(dataset_dir: Path) -> str:
    return f"beir-{Path(dataset_dir).resolve().name}"


def beir_collection_load(*, dataset_dir: Path, language: str | None = None,
                         corpus: list[CorpusEntry] | None = None) -> CollectionLoad:
    """Load the corpus into its collection once: ingest only the entries without a ready document.

    `language` (a text-search configuration) is used for a new collection; without it, an
    existing collection keeps its own and a new one gets the language chosen from the corpus text.
    """
    started = time.perf_counter()
    corpus = corpus if corpus is not None else corpus_deduplicate(beir_corpus_read(dataset_dir=dataset_dir))[0]
    collection = collection_get_or_create(name=collection_name(dataset_dir), language=language or corpus_language(corpus))
    if language and collection.language != language:
        raise EvaluationError(
            f"The collection '{collection.name}' exists with text-search language '{collection.language}', "
            f"not '{language}'. Pass --language {collection.language}, or delete the collection to reload it."
        )
    pending = _entries_not_ready(collection, corpus)
    for entry in tqdm(pending, desc=f"Loading {collection.name}", unit="doc", disable=not pending):
        _corpus_entry_ingest(collection, entry)
    failed = len(_entries_not_ready(collection, corpus)) if pending else 0
    return CollectionLoad(collection=collection, loaded=len(pending) - failed, failed=failed,
                          seconds=time.perf_counter() - started)


def _entries_not_ready(collection: Collection, corpus: list[CorpusEntry]) -> list[CorpusEntry]:
    ready = set(
        Document.objects.filter(collection=collection, status=Document.Status.READY).values_list("external_id", flat=True)
    )
    return [entry for entry in corpus if entry.id not in ready]


def _corpus_entry_ingest(collection: Collection, entry: CorpusEntry) -> None:
    """Store the entry as a UTF-8 text file (title, blank line, text) and ingest it here."""
    document = Document.objects.filter(collection=collection, external_id=entry.id).first()
    if document is None:
        content = ContentFile(f"{entry.title}\n\n{entry.text}".encode(), name=get_valid_filename(f"{entry.id}.txt"))
        document, created = document_create(
            collection=collection, file=content, title=(entry.title or entry.id)[:500],
            external_id=entry.id, queue=False,
        )
        if not created:
            tqdm.write(f"Corpus entry {entry.id} has the same text as {document.external_id or document.title}: not stored twice.")
            return
    if document.status != Document.Status.READY:
        document_ingest(document=document)


def search_ranker(mode: str, *, dense_weight: float | None = None, embeddings: dict | None = None) -> Ranker:
    """Rank documents by their best chunk in `chunk_search` (mode dense, fulltext or hybrid).

    `dense_weight`: the dense side's share in hybrid's fusion (default: the collection's).
    `embeddings`: a cache of query vectors shared by rankers that see the same queries.
    """

    def rank(*, query: str, collection: Collection, depth: int) -> list[int]:
        embedding = None
        if embeddings is not None and mode != "fulltext":
            if query not in embeddings:
                embeddings[query] = search_embedding(search_query(query))
            embedding = embeddings[query]
        # depth candidates per side; the limit keeps the whole fused list (both sides' chunks),
        # so that several chunks of one document still leave up to `depth` distinct documents.
        candidates = chunk_search(query=query, collection=collection, reader=None, k=depth, limit=2 * depth, mode=mode,
                                  dense_weight=dense_weight, embedding=embedding)
        return ranked_documents((candidate.chunk.document.id for candidate in candidates), depth=depth)

    return rank


def ranked_documents(document_ids: Iterable[int], *, depth: int) -> list[int]:
    """Keep each document's first (best) occurrence, up to `depth` documents."""
    ranking: dict[int, None] = {}
    for document_id in document_ids:
        ranking.setdefault(document_id, None)
        if len(ranking) == depth:
            break
    return list(ranking)


# Mode name -> ranker, for the modes that need nothing but the database.
DOCUMENT_RANKERS: dict[str, Ranker] = {mode: search_ranker(mode) for mode in ("dense", "fulltext", "hybrid")}
# Modes that also need a reranker: its order alone, and its order fused with retrieval's.
RERANK_MODES = ("rerank", "hybrid+rerank")
FUSION_WEIGHTS = tuple(round(0.1 * step, 1) for step in range(11))  # what --tune-fusion and --tune-dense-weight try

# The reranker's relevance of each passage to the query, in passage order.
PassageScorer = Callable[[str, list[str]], list[float]]


def worker_scorer(urls: list[str], *, timeout: float = 60.0) -> PassageScorer:
    """Scores from reranker workers over HTTP. A worker failure stops the evaluation (no silent fallback)."""
    pool = RerankerPool(urls, timeout=timeout, retry_after=0)

    def score(query: str, passages: list[str]) -> list[float]:
        try:
            return pool.scores(query=query, documents=passages)[0]
        except RerankerUnavailable as error:
            raise EvaluationError(f"The reranker did not answer: {error}.") from error

    return score


def model_scorer(model: str, *, backend: str = "torch") -> PassageScorer:
    """Scores from a cross-encoder loaded in this process (a hub id or a folder, e.g. train_reranker's)."""
    from reranking.model import CrossEncoderScorer, ModelLoadError

    try:
        scorer = CrossEncoderScorer(model, backend=backend)
    except (OSError, ValueError, ModelLoadError) as error:
        raise EvaluationError(f"Cannot load the reranker {model}: {error}") from error

    def score(query: str, passages: list[str]) -> list[float]:
        return scorer.predict([(query, passage) for passage in passages]).tolist()

    return score


# Recorded pairs: the hybrid candidates of each query written to a file, so that another machine
# (a GPU, say) can score them with a reranker and the evaluation reads its scores back. Gzipped JSON:
# {"format", "texts": [passage, ...], "queries": [{"query", "candidates": [text index, ...],
# "scores": [float, ...] once scored}]}; each passage's text is written once.
PAIRS_FORMAT = "ragapp-rerank-pairs/1"


def recording_scorer(records: list[tuple[str, list[str]]]) -> PassageScorer:
    """A scorer that notes each query's passages and scores them all 0 (for `pairs_export`)."""

    def score(query: str, passages: list[str]) -> list[float]:
        records.append((query, passages))
        return [0.0] * len(passages)

    return score


def pairs_export(*, dataset: BeirDataset, collection: Collection, path: Path) -> int:
    """Write the hybrid candidates that the rerank modes would score for each query; return the pair count."""
    records: list[tuple[str, list[str]]] = []
    reranked = RerankedCandidates(scorer=recording_scorer(records))
    for text in tqdm(dataset.queries.values(), desc="Retrieving candidates", unit="query"):
        reranked.get(query=text, collection=collection)
    text_index: dict[str, int] = {}
    queries = [{"query": query, "candidates": [text_index.setdefault(passage, len(text_index)) for passage in passages]}
               for query, passages in records]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        json.dump({"format": PAIRS_FORMAT, "texts": list(text_index), "queries": queries}, handle, ensure_ascii=False)
    return sum(len(passages) for _, passages in records)


def recorded_scorer(path: Path) -> PassageScorer:
    """Scores read from a pairs file that a reranker scored elsewhere; a pair it lacks stops the evaluation."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            record = json.load(handle)
        texts = record["texts"]
        scores = {(entry["query"], texts[index]): score
                  for entry in record["queries"] for index, score in zip(entry["candidates"], entry["scores"], strict=True)}
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise EvaluationError(f"{path} is not a scored pairs file ({error!r}): write one with --export-pairs and "
                              "score it with bench/gpu_check.py --pairs.") from error

    def score(query: str, passages: list[str]) -> list[float]:
        try:
            return [scores[query, passage] for passage in passages]
        except KeyError:
            raise EvaluationError(f"{path} has no scores for some candidates of the query {query!r}: export the pairs "
                                  "again from this collection, with the same queries, and score them again.") from None

    return score


@dataclass
class RerankedCandidates:
    """Hybrid candidates and their reranker scores per query, computed once for every rerank mode."""

    scorer: PassageScorer
    depth: int = RANKING_DEPTH
    _cache: dict[str, tuple[list, list[float]]] = field(default_factory=dict)

    def get(self, *, query: str, collection: Collection) -> tuple[list, list[float]]:
        if query not in self._cache:
            candidates = chunk_search(query=query, collection=collection, reader=None, k=self.depth, limit=self.depth, mode="hybrid")
            scores = self.scorer(query, [candidate.chunk.text for candidate in candidates]) if candidates else []
            self._cache[query] = (candidates, scores)
        return self._cache[query]

    def ranker(self, fusion_weight: float) -> Ranker:
        """Documents by their best chunk in the fusion of reranker and retrieval orders (1: reranker alone)."""

        def rank(*, query: str, collection: Collection, depth: int) -> list[int]:
            candidates, scores = self.get(query=query, collection=collection)
            ordered = rerank_order(candidates, scores, fusion_weight)
            return ranked_documents((ranked.candidate.chunk.document.id for ranked in ordered), depth=depth)

        return rank


def rerank_rankers(reranked: RerankedCandidates, *, fusion_weight: float) -> dict[str, Ranker]:
    return {"rerank": reranked.ranker(1.0), "hybrid+rerank": reranked.ranker(fusion_weight)}


@dataclass(frozen=True)
class FusionTuning:
    weight: float
    ndcg_by_weight: dict[float, float]  # nDCG@10 of the tuned mode on the tuning queries at each weight


def fusion_weight_tune(*, dataset: BeirDataset, collection: Collection, reranked: RerankedCandidates,
                       weights: Iterable[float] = FUSION_WEIGHTS) -> FusionTuning:
    """Pick the reranker's fusion weight with the best hybrid+rerank nDCG@10 on the dataset's queries (ties: the larger)."""
    return _weight_tune(dataset=dataset, collection=collection, ranker_at=reranked.ranker, weights=weights,
                        preference=lambda weight: weight)


def dense_weight_tune(*, dataset: BeirDataset, collection: Collection,
                      weights: Iterable[float] = FUSION_WEIGHTS) -> FusionTuning:
    """Pick the dense side's share with the best hybrid nDCG@10 on the dataset's queries (ties: the nearest to 0.5)."""
    embeddings: dict = {}  # each query embedded once for all the weights
    return _weight_tune(dataset=dataset, collection=collection,
                        ranker_at=lambda weight: search_ranker("hybrid", dense_weight=weight, embeddings=embeddings),
                        weights=weights, preference=lambda weight: -abs(weight - 0.5))


def _weight_tune(*, dataset: BeirDataset, collection: Collection, ranker_at: Callable[[float], Ranker],
                 weights: Iterable[float], preference: Callable[[float], float]) -> FusionTuning:
    ndcg = {
        weight: retrieval_evaluate(dataset=dataset, collection=collection, rankers={"tune": ranker_at(weight)},
                                   progress=False)["tune"].metrics["nDCG@10"]
        for weight in weights
    }
    best = max(ndcg, key=lambda weight: (ndcg[weight], preference(weight)))
    return FusionTuning(weight=best, ndcg_by_weight=ndcg)


def retrieval_evaluate(*, dataset: BeirDataset, collection: Collection, rankers: dict[str, Ranker],
                       depth: int = RANKING_DEPTH, progress: bool = True) -> dict[str, ModeResult]:
    """Rank every query with each ranker and score the rankings with ir-measures."""
    corpus_ids = dict(Document.objects.filter(collection=collection).values_list("pk", "external_id"))
    return {
        mode: _mode_evaluate(mode, ranker, dataset, collection, corpus_ids, depth, progress)
        for mode, ranker in rankers.items()
    }


def _mode_evaluate(mode: str, ranker: Ranker, dataset: BeirDataset, collection: Collection,
                   corpus_ids: dict[int, str], depth: int, progress: bool) -> ModeResult:
    run: dict[str, dict[str, float]] = {}
    seconds = 0.0
    for query_id, text in tqdm(dataset.queries.items(), desc=f"Evaluating {mode}", unit="query", disable=not progress):
        started = time.perf_counter()
        ranking = ranker(query=text, collection=collection, depth=depth)
        seconds += time.perf_counter() - started
        run[query_id] = ranking_run(ranking, corpus_ids=corpus_ids, depth=depth)
    return ModeResult(
        metrics=rankings_score(qrels=dataset.qrels, run=run), queries=len(dataset.queries),
        ms_per_query=1000 * seconds / len(dataset.queries),
    )


def ranking_run(ranking: list[int], *, corpus_ids: dict[int, str], depth: int) -> dict[str, float]:
    """One query's ranked documents as ir-measures reads them: scores only carry the order, the first gets the highest."""
    return {corpus_ids[document_id]: float(depth - position) for position, document_id in enumerate(ranking)}


def rankings_score(*, qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each measure over the queries of `qrels` (a query missing from `run` scores 0)."""
    aggregate = ir_measures.calc_aggregate(list(MEASURES.values()), qrels, run)
    return {name: float(aggregate[measure]) for name, measure in MEASURES.items()}
