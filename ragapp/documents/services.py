"""Writes for collections and documents: create, ingest, re-ingest, delete.

Ingestion runs in a worker (see tasks.py): parse -> chunk -> embed -> store. The document's
status and progress are written as it goes, outside the final transaction, so the admin
shows them live; the chunks themselves are replaced in one transaction at the end.
"""

import hashlib
import logging
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import models, transaction
from django.utils import timezone
from django.utils.text import slugify

from ragapp.documents import chunking, embedding, parsing
from ragapp.documents.content import ChunkDraft
from ragapp.documents.errors import DocumentError, file_too_large, worker_stopped
from ragapp.documents.models import Chunk, Collection, Document
from ragapp.documents.segmentation import segment_for_search

logger = logging.getLogger(__name__)

Status = Document.Status


def collection_get_or_create(*, name: str, language: str = "english") -> Collection:
    collection, _ = Collection.objects.get_or_create(
        name=name, defaults={"slug": _unique_slug(name), "language": language}
    )
    return collection


def collection_create(*, name: str, creator=None, **fields) -> Collection:
    """A new collection with a unique slug; its creator (when not a superuser) may read it."""
    collection = Collection.objects.create(name=name, slug=_unique_slug(name), **fields)
    if creator is not None and not creator.is_superuser:
        collection.readers.add(creator)
    return collection


def _unique_slug(name: str) -> str:
    base = slugify(name)[:190] or "collection"
    slug, suffix = base, 2
    while Collection.objects.filter(slug=slug).exists():
        slug, suffix = f"{base}-{suffix}", suffix + 1
    return slug


def document_create(*, collection: Collection, file: File, uploaded_by=None, title: str = "",
                    external_id: str = "", queue: bool = True) -> tuple[Document, bool]:
    """Store an uploaded file and (unless queue=False) queue its ingestion; return (document, created).

    A file whose bytes are already in the collection is not stored again: the existing
    document is returned with created=False. A file over the size limit is kept as a
    failed document (without its bytes) so the administrator sees why; a later upload of
    the same name or bytes takes its place.
    """
    sha256 = _file_sha256(file)
    existing = Document.objects.filter(collection=collection, sha256=sha256).exclude(file="").first()
    if existing is not None:
        return existing, False
    filename = Path(file.name or "upload").name
    document = Document(
        collection=collection, title=title or Path(filename).stem, original_filename=filename,
        size_bytes=file.size, sha256=sha256, uploaded_by=uploaded_by, external_id=external_id,
    )
    with transaction.atomic():
        _refused_uploads(collection=collection, filename=filename, sha256=sha256).delete()
        if file.size > settings.MAX_UPLOAD_BYTES:
            _mark_failed(document, file_too_large(file.size, settings.MAX_UPLOAD_BYTES))
            document.save()
            return document, True
        document.file.save(filename, file, save=False)
        document.save()
    if queue:
        _queue_ingestion(document)
    return document, True


def _refused_uploads(*, collection: Collection, filename: str, sha256: str):
    """Documents refused at upload (no bytes kept) that an upload of this name or content replaces."""
    return Document.objects.filter(collection=collection, file="").filter(
        models.Q(original_filename=filename) | models.Q(sha256=sha256)
    )


def _file_sha256(file: File) -> str:
    digest = hashlib.sha256()
    for block in file.chunks():
        digest.update(block)
    file.seek(0)
    return digest.hexdigest()


def _queue_ingestion(document: Document) -> None:
    # After commit: the worker must see the row, and a rolled-back upload must queue nothing.
    transaction.on_commit(lambda: _defer_ingestion(document.pk))


def _defer_ingestion(document_id: int) -> None:
    from procrastinate.exceptions import AlreadyEnqueued

    from ragapp.documents.tasks import ingest_document

    try:
        ingest_document.configure(queueing_lock=f"document-{document_id}").defer(document_id=document_id)
    except AlreadyEnqueued:
        pass  # a job for this document is already waiting: it will read the current file


def document_reingest(*, document: Document) -> bool:
    """Queue a document for ingestion again; its current chunks stay until the new ones are stored.

    Returns False, changing nothing, for a document whose file was refused at upload: there is
    nothing stored to read again, only a new upload helps."""
    if not document.file:
        return False
    document_requeue(document_id=document.pk)
    _queue_ingestion(document)
    return True


def document_requeue(*, document_id: int) -> None:
    """Show a document as waiting in the queue again (re-ingested, or its worker stopped mid-way)."""
    Document.objects.filter(pk=document_id).update(status=Status.QUEUED, progress=0, error="")


def document_give_up(*, document_id: int, attempts: int) -> None:
    """Record why a document is not ingested after its worker stopped during every attempt."""
    document = Document.objects.filter(pk=document_id).first()
    if document is not None:
        _record_failure(document, worker_stopped(attempts))


def document_delete(*, document: Document) -> None:
    """Delete a document, its chunks and, once the deletion is committed, its file."""
    file_name, storage = document.file.name, document.file.storage
    document.delete()
    if file_name:
        transaction.on_commit(lambda: storage.delete(file_name))


def document_ingest(*, document: Document) -> None:
    """Parse, chunk, embed and store a document; on bad input record the reason instead of raising."""
    try:
        _ingest(document)
    except DocumentError as error:
        _record_failure(document, error)
    except Exception as error:  # noqa: BLE001 - a bug must not stop the worker or leave the document "parsing"
        logger.exception("Ingesting document %s failed unexpectedly", document.pk)
        _record_failure(document, DocumentError(
            f"Ingestion failed unexpectedly ({type(error).__name__}: {error}). The worker log has the details; "
            "re-ingest the document once the cause is fixed."
        ))


def _ingest(document: Document) -> None:
    _set_progress(document, Status.PARSING, 5)
    with document.file.open("rb") as stored:
        data = stored.read()
    parsed = parsing.document_parse(data, filename=document.original_filename, limits=_parse_limits())
    Document.objects.filter(pk=document.pk).update(content_type=parsed.content_type)
    _set_progress(document, Status.CHUNKING, 15)
    drafts = chunking.document_chunk(
        parsed, tokenizer=embedding.embedding_tokenizer(),
        chunk_tokens=min(settings.CHUNK_TOKENS, embedding.max_chunk_tokens()),
        overlap_tokens=settings.CHUNK_OVERLAP_TOKENS,
    )
    _set_progress(document, Status.EMBEDDING, 20)
    vectors = _embed_with_progress(document, [draft.text for draft in drafts])
    chunks_store(document=document, drafts=drafts, vectors=vectors)


def _parse_limits() -> parsing.ParseLimits:
    return parsing.ParseLimits(
        max_bytes=settings.MAX_UPLOAD_BYTES, max_expanded_bytes=settings.MAX_EXPANDED_BYTES,
        max_archive_members=settings.MAX_ARCHIVE_MEMBERS,
    )


def _embed_with_progress(document: Document, texts: list[str]):
    """Embed in batches, moving progress from 20 to 95 percent as batches finish."""
    import numpy as np

    batch = max(settings.EMBEDDING_BATCH_SIZE, 1) * 4
    parts = []
    for start in range(0, len(texts), batch):
        parts.append(embedding.embed_texts(texts[start:start + batch]))
        done = min(start + batch, len(texts))
        _set_progress(document, Status.EMBEDDING, 20 + int(75 * done / len(texts)))
    return np.concatenate(parts)


def chunks_store(*, document: Document, drafts: list[ChunkDraft], vectors) -> None:
    """Replace the document's chunks with new ones and mark it ready, all in one transaction."""
    with transaction.atomic():
        embedding.embedding_space_check()
        # Lock the row so two ingestions of one document cannot interleave their chunks.
        locked = Document.objects.select_for_update().get(pk=document.pk)
        language = locked.collection.language
        locked.chunks.all().delete()
        Chunk.objects.bulk_create(
            [_chunk_from_draft(locked, language, ordinal, draft, vector)
             for ordinal, (draft, vector) in enumerate(zip(drafts, vectors, strict=True))],
            batch_size=500,
        )
        Document.objects.filter(pk=document.pk).update(
            status=Status.READY, progress=100, error="", chunk_count=len(drafts), ingested_at=timezone.now(),
        )


def _chunk_from_draft(document: Document, language: str, ordinal: int, draft: ChunkDraft, vector) -> Chunk:
    return Chunk(
        document=document, collection_id=document.collection_id, language=language, ordinal=ordinal,
        text=draft.text, search_text=segment_for_search(draft.text), page=draft.page,
        heading_path=list(draft.heading_path), char_start=draft.char_start, char_end=draft.char_end,
        token_count=draft.token_count, embedding=vector,
    )


def _set_progress(document: Document, status: str, progress: int) -> None:
    Document.objects.filter(pk=document.pk).update(status=status, progress=progress)


def _mark_failed(document: Document, error: DocumentError) -> None:
    document.status, document.progress, document.error = Status.FAILED, 0, str(error)


def _record_failure(document: Document, error: DocumentError) -> None:
    """Mark the document failed; a document with chunks from an earlier ingestion keeps them."""
    if Chunk.objects.filter(document_id=document.pk).exists():
        Document.objects.filter(pk=document.pk).update(
            status=Status.READY, progress=100,
            error=f"Re-ingestion failed, the previous version is still searchable: {error}",
        )
        return
    Document.objects.filter(pk=document.pk).update(status=Status.FAILED, progress=0, error=str(error))
