"""Training data for the reranker, mined from the app's own retrieval on a BEIR-format dataset.

For each training query, hybrid retrieval (`chunk_search`, the same first stage the reranker
will sit behind) returns its top k chunks. A group for `reranking.train` is then

- positives: for each document the qrels judge relevant, its best-ranked chunk in those k;
  a relevant document that retrieval missed gives all its chunks. The best-ranked chunk is
  the one the reranker will be shown for that document in use, and the document-level metric
  counts a document by its best chunk, so other chunks of a retrieved relevant document are
  left out (neither positive nor negative: they may or may not hold the evidence). A missed
  document has no such pointer; all its chunks are kept (BEIR abstracts are one to three
  chunks) so that the hardest queries still teach something.
- negatives: every other chunk of the top k whose document is not judged relevant, in
  retrieval order (hard negatives: they looked relevant to retrieval).

Users' feedback on answers is a second source (`ragapp.tuning.feedback.feedback_groups_mine`).

A third needs no labels at all: pseudo-queries from the collection's own documents
(`pseudo_query_groups_mine`). A document's title states what the document is about, much as a
question does; with the title as the query, the document's best-ranked chunk is the positive and
other documents' chunks from the same hybrid top k are the negatives. Titles are cut from the
start of every passage of these groups, else the model would learn to spot the copied title
instead of reading the text. On a collection with few labelled questions this is several times
more training data of the collection's own kind (as GPL and similar domain adaptation do with
generated questions, here without a generator). Whether it lifts quality is not settled: in a
reduced CPU run on SciFact it did not; `bench/gpu_check.py` tries it at full scale.
"""

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ragapp.documents.models import Chunk, Collection, Document
from ragapp.retrieval.query_syntax import without_negation
from ragapp.retrieval.selectors import chunk_search
from ragapp.tuning.evaluation import BeirDataset
from reranking.groups import TrainingGroup, queries_hold_out

MINING_DEPTH = 100  # chunks retrieved per query, as in the reranker's use
# Negatives kept per pseudo-query, the best-ranked (hardest) first: fresh ones for groups of 16
# over two epochs, in a file a third the size of full pools (it travels to a GPU machine).
PSEUDO_NEGATIVES = 31
PSEUDO_TITLE_MIN_WORDS = 4  # shorter titles ("Results", "Chapter 2") say too little to be a question


@dataclass(frozen=True)
class MinedGroup:
    query_id: str
    group: TrainingGroup


@dataclass(frozen=True)
class MiningResult:
    groups: list[MinedGroup]
    positives_retrieved: int  # relevant documents found in the top k (their best chunk is the positive)
    positives_missed: int  # relevant documents outside the top k (all their chunks are positives)
    queries_without_negatives: int
    seconds: float


@dataclass(frozen=True)
class QuerySplit:
    train_ids: list[str]
    heldout_ids: list[str]
    train_path: Path
    heldout_path: Path


def training_groups_mine(*, dataset: BeirDataset, collection: Collection, depth: int = MINING_DEPTH,
                         progress: bool = True) -> MiningResult:
    """Build one group per query of `dataset` from its hybrid top `depth` and its qrels."""
    started = time.perf_counter()
    documents = dict(Document.objects.filter(collection=collection).values_list("external_id", "pk"))
    max_relevance = max((grade for judged in dataset.qrels.values() for grade in judged.values()), default=1)
    groups, retrieved, missed = [], 0, 0
    for query_id, text in tqdm(dataset.queries.items(), desc="Mining hard negatives", unit="query", disable=not progress):
        relevant = {documents[corpus_id]: grade for corpus_id, grade in dataset.qrels[query_id].items()
                    if grade > 0 and corpus_id in documents}
        group, found = query_group_mine(query=text, relevant=relevant, collection=collection, depth=depth,
                                        max_relevance=max_relevance)
        groups.append(MinedGroup(query_id=query_id, group=group))
        retrieved, missed = retrieved + found, missed + len(relevant) - found
    return MiningResult(groups=groups, positives_retrieved=retrieved, positives_missed=missed,
                        queries_without_negatives=sum(not mined.group.negatives for mined in groups),
                        seconds=time.perf_counter() - started)


def query_group_mine(*, query: str, relevant: dict[int, int], collection: Collection, depth: int,
                     max_relevance: int) -> tuple[TrainingGroup, int]:
    """One query's group (`relevant`: document pk -> grade) and how many relevant documents were retrieved."""
    candidates = chunk_search(query=query, collection=collection, reader=None, k=depth, mode="hybrid")
    best_chunks = _best_chunk_per_document(candidates, relevant)
    positives, labels = _positives(best_chunks, relevant, max_relevance)
    negatives = list(dict.fromkeys(
        c.chunk.text for c in candidates if c.chunk.document.id not in relevant and c.chunk.text not in positives
    ))
    group = TrainingGroup(query=query, positives=positives, negatives=negatives,
                          positive_labels=labels if any(label != 1.0 for label in labels) else None)
    return group, len(best_chunks)


def _best_chunk_per_document(candidates, relevant: dict[int, int]) -> dict[int, str]:
    """Relevant document pk -> text of its first (best-ranked) chunk among the candidates."""
    best: dict[int, str] = {}
    for candidate in candidates:
        if candidate.chunk.document.id in relevant:
            best.setdefault(candidate.chunk.document.id, candidate.chunk.text)
    return best


def _positives(best_chunks: dict[int, str], relevant: dict[int, int], max_relevance: int) -> tuple[list[str], list[float]]:
    """Positive texts with their labels (relevance / the dataset's highest grade), retrieved ones first."""
    missed = [pk for pk in relevant if pk not in best_chunks]
    missed_chunks = Chunk.objects.filter(document_id__in=missed).order_by("document_id", "ordinal").values_list("document_id", "text")
    labels: dict[str, float] = {}  # text -> label; a text shared by two documents counts once
    for pk, text in [*best_chunks.items(), *missed_chunks]:
        labels.setdefault(text, relevant[pk] / max_relevance)
    return list(labels), list(labels.values())


def pseudo_query_groups_mine(*, collection: Collection, limit: int, depth: int = MINING_DEPTH, seed: int = 13,
                             progress: bool = True) -> MiningResult:
    """Up to `limit` label-free groups: a document's title as the query (documents drawn by `seed`).

    Only titles a person gave are used: at least PSEUDO_TITLE_MIN_WORDS words and not the file's
    own name (the title a document gets when none is given).
    """
    started = time.perf_counter()
    documents = [document for document in Document.objects.filter(collection=collection, status=Document.Status.READY)
                 .only("pk", "title", "original_filename", "external_id").order_by("pk") if _title_usable(document)]
    random.Random(seed).shuffle(documents)
    titles = dict(Document.objects.filter(collection=collection).values_list("pk", "title"))
    groups, retrieved = [], 0
    for document in tqdm(documents[:limit], desc="Mining pseudo-queries", unit="title", disable=not progress):
        group, found = _pseudo_query_group(document, titles, collection=collection, depth=depth)
        if group is not None:
            groups.append(MinedGroup(query_id=f"pseudo:{document.external_id or document.pk}", group=group))
            retrieved += found
    return MiningResult(groups=groups, positives_retrieved=retrieved, positives_missed=len(groups) - retrieved,
                        queries_without_negatives=sum(not mined.group.negatives for mined in groups),
                        seconds=time.perf_counter() - started)


def _title_usable(document: Document) -> bool:
    title = document.title.strip()
    return len(title.split()) >= PSEUDO_TITLE_MIN_WORDS and title != Path(document.original_filename).stem


def _pseudo_query_group(document: Document, titles: dict[int, str], *, collection: Collection,
                        depth: int) -> tuple[TrainingGroup | None, bool]:
    """The group of one title (None when the document has no chunk) and whether retrieval found the document."""
    # A title is text, not search syntax: "NF-κB-Dependent and -Independent" excludes nothing.
    query = without_negation(document.title)
    candidates = chunk_search(query=query, collection=collection, reader=None, k=depth, mode="hybrid")
    own = next((c.chunk.text for c in candidates if c.chunk.document.id == document.pk), None)
    positive = own or Chunk.objects.filter(document=document).order_by("ordinal").values_list("text", flat=True).first()
    positive = _untitled(positive or "", document.title)
    if not positive:  # no chunk, or one that holds the title alone
        return None, False
    # Another document with the very same title is no negative: it may well be the same work.
    negatives = [_untitled(c.chunk.text, titles[c.chunk.document.id]) for c in candidates
                 if c.chunk.document.id != document.pk and titles[c.chunk.document.id].strip() != document.title.strip()]
    negatives = [text for text in dict.fromkeys(negatives) if text][:PSEUDO_NEGATIVES]
    group = TrainingGroup(query=document.title.strip(), positives=[positive],
                          negatives=negatives, pseudo=True)
    return group, own is not None


def _untitled(text: str, title: str) -> str:
    """The chunk text without the document's title where the text starts with it."""
    title = title.strip()
    return text[len(title):].lstrip() if title and text.startswith(title) else text


def query_ids_split(*, query_ids: Sequence[str], holdout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split query ids into (train, held-out) by a seeded shuffle; both keep the input order."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"The held-out fraction must be between 0 and 1, got {holdout_fraction}.")
    unique = list(dict.fromkeys(query_ids))
    heldout = queries_hold_out(queries=unique, fraction=holdout_fraction, seed=seed)
    return [qid for qid in unique if qid not in heldout], [qid for qid in unique if qid in heldout]


def query_split_write(*, dataset: BeirDataset, split: str, holdout_fraction: float, seed: int,
                      splits_dir: Path) -> QuerySplit:
    """Split the dataset's judged queries and write two files of ids (one a line) for `evaluate --queries`."""
    train_ids, heldout_ids = query_ids_split(query_ids=list(dataset.queries), holdout_fraction=holdout_fraction, seed=seed)
    splits_dir = Path(splits_dir)
    splits_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{dataset.name}-{split}-holdout{holdout_fraction:g}-seed{seed}"
    paths = splits_dir / f"{stem}-train.txt", splits_dir / f"{stem}-heldout.txt"
    for path, ids in zip(paths, (train_ids, heldout_ids)):
        path.write_text("".join(f"{qid}\n" for qid in ids), encoding="utf-8")
    return QuerySplit(train_ids=train_ids, heldout_ids=heldout_ids, train_path=paths[0], heldout_path=paths[1])
