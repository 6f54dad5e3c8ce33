"""Ingestion throughput: the whole pipeline against the embedding model alone, on the same chunks.

The pipeline is what an upload costs: document_create (store the file) and document_ingest
(parse, chunk, embed, store the chunks in PostgreSQL), one document after another, as the
queue worker runs it. The peer, measured in the same run, is the same sentence-transformers
model encoding the very chunk texts the pipeline stored, in one call with the configured
batch size. overhead_ratio = peer chunks/s / pipeline chunks/s: 1.0 means the pipeline costs
no more than its embeddings.

Two document shapes from the same SciFact abstracts: "small" (one abstract per .txt file,
~1.5 KB, one or two chunks) and "large" (abstracts joined into ~50 KB .txt files), because
per-document costs (file, transactions, small embedding batches) differ from per-chunk costs.
Each shape goes into a fresh collection that is deleted afterwards.
"""

import argparse
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from unittest import mock

from common import (
    abstract_text, django_setup, results_write, scifact_abstracts, scifact_path,
)

SHAPES = ("small", "large")
PEER = "sentence-transformers encode() of the same model on the same chunk texts, one call, batch_size=EMBEDDING_BATCH_SIZE"


def options_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure ingestion throughput (chunks/s) of the full pipeline against the embedding model alone.",
    )
    parser.add_argument("--documents", type=int, default=500,
                        help="SciFact abstracts to ingest per shape (default: 500).")
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help="Comma-separated document shapes to measure: small (one abstract per file), "
                             "large (abstracts joined into --large-kb files). Default: small,large.")
    parser.add_argument("--large-kb", type=int, default=50,
                        help="Target size in KB of each document of the large shape (default: 50).")
    parser.add_argument("--scifact", help="BEIR SciFact folder (default: $SCIFACT_DIR or ../shared/data/scifact).")
    parser.add_argument("--output", default="ingest", help="Name of the results file under bench/results/ (default: ingest).")
    options = parser.parse_args(argv)
    options.shapes = [shape.strip() for shape in options.shapes.split(",") if shape.strip()]
    unknown = set(options.shapes) - set(SHAPES)
    if unknown or not options.shapes:
        parser.error(f"--shapes takes a comma-separated list of {', '.join(SHAPES)}")
    if options.documents < 1:
        parser.error("--documents must be at least 1")
    return options


def documents_build(records: list[dict], shape: str, large_kb: int) -> list[tuple[str, str, str]]:
    """Return (filename, title, text) per document of the shape, all from the same abstracts."""
    if shape == "small":
        return [(f"scifact-{record['_id']}.txt", record["title"], abstract_text(record)) for record in records]
    documents, parts, size = [], [], 0
    for record in records:
        text = abstract_text(record)
        parts.append(text)
        size += len(text.encode("utf-8")) + 2
        if size >= large_kb * 1024:
            documents.append(parts)
            parts, size = [], 0
    if parts:
        documents.append(parts)
    return [(f"scifact-joined-{index}.txt", f"SciFact abstracts, part {index}", "\n\n".join(parts))
            for index, parts in enumerate(documents)]


class StageTimer:
    """Add up the wall time spent inside named functions while the pipeline runs."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def timed(self, name: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            with self.stage(name):
                return function(*args, **kwargs)
        return wrapper

    @contextlib.contextmanager
    def wrapping(self, targets: dict[str, tuple[object, str]]):
        """Replace each owner.attribute by a timed wrapper for the duration of the block."""
        with contextlib.ExitStack() as stack:
            for name, (owner, attribute) in targets.items():
                stack.enter_context(mock.patch.object(owner, attribute, self.timed(name, getattr(owner, attribute))))
            yield


def pipeline_run(documents: list[tuple[str, str, str]], shape: str) -> dict:
    """Ingest the documents into a throwaway collection; return timings and the stored chunk texts."""
    from django.core.files.base import ContentFile
    from tqdm import tqdm

    from ragapp.documents import chunking, parsing, services
    from ragapp.documents.models import Chunk, Document

    collection = services.collection_get_or_create(name=f"bench-ingest-{shape}-{uuid.uuid4().hex[:8]}")
    timer = StageTimer()
    # What each stage is: services calls these through their modules, so patching them there times every call.
    stages = {
        "parse": (parsing, "document_parse"),
        "chunk": (chunking, "document_chunk"),
        "embed": (services, "_embed_with_progress"),
        "store": (services, "chunks_store"),
    }
    try:
        with timer.wrapping(stages):
            start = time.perf_counter()
            for filename, title, text in tqdm(documents, desc=f"Pipeline, {shape} documents", unit="doc"):
                with timer.stage("create"):
                    document, created = services.document_create(
                        collection=collection, file=ContentFile(text.encode("utf-8"), name=filename),
                        title=title, queue=False,
                    )
                if created and document.status == Document.Status.QUEUED:
                    services.document_ingest(document=document)
            seconds = time.perf_counter() - start
        failed = list(Document.objects.filter(collection=collection, status=Document.Status.FAILED)
                      .values_list("original_filename", "error"))
        chunks = list(Chunk.objects.filter(collection=collection).order_by("document_id", "ordinal")
                      .values_list("text", "token_count"))
        stored_documents = Document.objects.filter(collection=collection).count()
    finally:
        collection_remove(collection)
    return {"seconds": seconds, "stages": dict(timer.seconds), "failed": failed,
            "documents": stored_documents, "texts": [text for text, _ in chunks],
            "tokens": [tokens for _, tokens in chunks]}


def collection_remove(collection) -> None:
    """Delete the throwaway collection, its documents' files and its chunks."""
    from ragapp.documents.services import document_delete

    for document in collection.documents.all():
        document_delete(document=document)
    collection.delete()


def raw_embedding_seconds(texts: list[str]) -> float:
    """Time the peer: the model alone encoding all texts in one call."""
    from django.conf import settings

    from ragapp.documents.embedding import embedding_model

    model = embedding_model()
    start = time.perf_counter()
    model.encode(texts, batch_size=settings.EMBEDDING_BATCH_SIZE, normalize_embeddings=True,
                 convert_to_numpy=True, show_progress_bar=False)
    return time.perf_counter() - start


def shape_measure(records: list[dict], shape: str, large_kb: int) -> dict:
    documents = documents_build(records, shape, large_kb)
    pipeline = pipeline_run(documents, shape)
    texts = pipeline["texts"]
    if not texts:
        raise SystemExit(f"The {shape} documents produced no chunks: {pipeline['failed'][:3]}")
    print(f"Peer: encoding the same {len(texts)} chunk texts with the model alone ...", flush=True)
    raw_seconds = raw_embedding_seconds(texts)
    pipeline_rate = len(texts) / pipeline["seconds"]
    raw_rate = len(texts) / raw_seconds
    stages = pipeline["stages"]
    stages["other"] = max(pipeline["seconds"] - sum(stages.values()), 0.0)
    return {
        "documents": len(documents),
        "documents_failed": len(pipeline["failed"]),
        "failures": pipeline["failed"][:5],
        "document_kb_mean": round(sum(len(text.encode("utf-8")) for _, _, text in documents) / len(documents) / 1024, 2),
        "chunks": len(texts),
        "chunk_tokens_mean": round(sum(pipeline["tokens"]) / len(texts), 1),
        "pipeline": {
            "seconds": round(pipeline["seconds"], 3),
            "chunks_per_s": round(pipeline_rate, 2),
            "documents_per_s": round(len(documents) / pipeline["seconds"], 2),
            "stage_seconds": {name: round(value, 3) for name, value in stages.items()},
            "stage_share": {name: round(value / pipeline["seconds"], 3) for name, value in stages.items()},
        },
        "raw_embedding": {"seconds": round(raw_seconds, 3), "chunks_per_s": round(raw_rate, 2)},
        "overhead_ratio": round(raw_rate / pipeline_rate, 3),
    }


def model_warm_up() -> None:
    """Load the model and run it once, so neither side pays for loading."""
    from ragapp.documents.embedding import embed_texts

    embed_texts(["warm-up sentence for the embedding model"] * 8)


def summary_print(results: dict) -> None:
    print("\nIngestion throughput (peer: the model's encode() alone on the same chunks)")
    print(f"{'shape':<7}{'docs':>6}{'chunks':>8}{'pipeline s':>12}{'chunks/s':>10}{'raw s':>9}{'raw chunks/s':>14}{'overhead':>10}")
    for shape, figures in results.items():
        pipeline, raw = figures["pipeline"], figures["raw_embedding"]
        print(f"{shape:<7}{figures['documents']:>6}{figures['chunks']:>8}{pipeline['seconds']:>12.1f}"
              f"{pipeline['chunks_per_s']:>10.1f}{raw['seconds']:>9.1f}{raw['chunks_per_s']:>14.1f}"
              f"{figures['overhead_ratio']:>9.2f}x")
    for shape, figures in results.items():
        shares = ", ".join(f"{name} {share:.0%}" for name, share in figures["pipeline"]["stage_share"].items())
        print(f"  {shape} pipeline time: {shares}")
        if figures["documents_failed"]:
            print(f"  {shape}: {figures['documents_failed']} documents failed, e.g. {figures['failures'][0]}")


def main(argv=None) -> None:
    options = options_parse(argv)
    django_setup()
    from django.conf import settings

    records = scifact_abstracts(scifact_path(options.scifact), options.documents)
    model_warm_up()
    results = {shape: shape_measure(records, shape, options.large_kb) for shape in options.shapes}
    parameters = {
        "documents_requested": options.documents, "abstracts": len(records), "shapes": options.shapes,
        "large_kb": options.large_kb, "embedding_model": _model_label(),
        "embedding_batch_size": settings.EMBEDDING_BATCH_SIZE, "chunk_tokens": settings.CHUNK_TOKENS,
        "chunk_overlap_tokens": settings.CHUNK_OVERLAP_TOKENS, "peer": PEER,
    }
    summary_print(results)
    path = results_write(options.output, parameters=parameters, figures={"shapes": results})
    print(f"\nWrote {path}")


def _model_label() -> str:
    from ragapp.documents.embedding import embedding_model_label

    return embedding_model_label()


if __name__ == "__main__":
    main()
