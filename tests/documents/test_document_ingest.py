"""Ingestion end to end in the real database: parse -> chunk -> embed -> store, and bad input."""

import io
import zipfile

import numpy as np
import pytest
from django.core.files.base import ContentFile
from pypdf import PdfReader, PdfWriter

from ragapp.documents.models import Chunk, Document
from ragapp.documents.services import document_create, document_ingest, document_reingest
from tests.conftest import make_pdf

pytestmark = pytest.mark.django_db

HANDBOOK = (
    "Vacation policy\n\nEmployees receive twenty-five days of paid vacation each year. "
    "Unused days can be carried over until the end of March.\n\n"
    "Travel expenses\n\nTrain tickets are reimbursed in second class. Taxi rides need a receipt."
)


def snapshot(collection, *, excluding=()):
    """Everything retrieval could see of a collection's documents, except the ones named."""
    return sorted(
        (chunk.document_id, chunk.document.status, chunk.id, chunk.text, float(np.sum(chunk.embedding)))
        for chunk in Chunk.objects.filter(collection=collection).exclude(document__in=excluding).select_related("document")
    )


@pytest.fixture
def existing(collection, ingest):
    """Two ready documents already in the collection."""
    ingest(collection, "handbook.txt", HANDBOOK.encode())
    ingest(collection, "manual.pdf", make_pdf(["The coffee machine is descaled every Friday.", "Call facilities for repairs."]))
    return snapshot(collection)


def test_pdf_reaches_ready_with_chunks_pages_and_search_vectors(collection, ingest):
    revenue = "Quarterly revenue grew by twelve percent in every region we serve. " * 30
    office = "The board approved a new office in Lisbon for the southern team. " * 30
    document = ingest(collection, "report.pdf", make_pdf([revenue, office]))
    assert (document.status, document.progress, document.error) == ("ready", 100, "")
    assert document.content_type == "application/pdf"
    chunks = list(document.chunks.order_by("ordinal"))
    assert document.chunk_count == len(chunks) >= 1
    assert chunks[0].page == 1 and "revenue" in chunks[0].text
    assert any(chunk.page == 2 and "Lisbon" in chunk.text and "revenue" not in chunk.text for chunk in chunks)
    assert all(chunk.token_count > 0 and len(chunk.embedding) == 384 for chunk in chunks)
    assert Chunk.objects.filter(document=document, search_vector__isnull=False).count() == len(chunks)


def test_identical_file_in_same_collection_is_not_stored_twice(collection, ingest):
    first = ingest(collection, "handbook.txt", HANDBOOK.encode())
    again, created = document_create(collection=collection, file=ContentFile(HANDBOOK.encode(), name="copy.txt"), queue=False)
    assert (again.pk, created) == (first.pk, False)
    assert Document.objects.filter(collection=collection).count() == 1


def test_identical_file_in_another_collection_is_stored(collection, ingest):
    from ragapp.documents.services import collection_get_or_create

    ingest(collection, "handbook.txt", HANDBOOK.encode())
    other = ingest(collection_get_or_create(name="Archive"), "handbook.txt", HANDBOOK.encode())
    assert other.status == "ready"
    assert Document.objects.count() == 2


def test_reingest_replaces_chunks_in_one_go(collection, ingest, django_capture_on_commit_callbacks):
    document = ingest(collection, "handbook.txt", HANDBOOK.encode())
    old_ids = set(document.chunks.values_list("id", flat=True))
    with django_capture_on_commit_callbacks(execute=False):
        document_reingest(document=document)
    document_ingest(document=document)
    document.refresh_from_db()
    new_ids = set(document.chunks.values_list("id", flat=True))
    assert document.status == "ready" and new_ids and not (new_ids & old_ids)
    assert sorted(document.chunks.values_list("ordinal", flat=True)) == list(range(len(new_ids)))


def test_failed_reingest_keeps_the_previous_chunks_searchable(collection, ingest):
    document = ingest(collection, "handbook.txt", HANDBOOK.encode())
    before = snapshot(collection)
    with document.file.open("wb") as stored:  # the stored file got damaged since
        stored.write(b"\x00\x01\x02 binary junk \xff" * 100)
    document_ingest(document=document)
    document.refresh_from_db()
    assert snapshot(collection) == before
    assert document.status == "ready" and "previous version is still searchable" in document.error


def _encrypted_pdf() -> bytes:
    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(make_pdf(["Secret salaries."]))))
    writer.encrypt(user_password="hunter2", owner_password="owner")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


def _zip_without_word_document() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "not a word file")
    return buffer.getvalue()


BAD_INPUTS = {
    "corrupt_pdf": ("broken.pdf", make_pdf(["A report."])[:300], "pdf"),
    "encrypted_pdf": ("locked.pdf", _encrypted_pdf(), "encrypted"),
    "empty_file": ("empty.txt", b"", "empty"),
    "whitespace_only": ("blank.md", b" \n\n\t \n", "no text"),
    "image_renamed_pdf": ("scan.pdf", _png(), "supported"),
    "unsupported_zip_named_docx": ("letter.docx", _zip_without_word_document(), "supported"),
    "binary_named_txt": ("data.txt", bytes(range(256)) * 50, "supported"),
    "latin1_text": ("notes.txt", "Café crème, déjà vu, naïve façade.".encode("latin-1"), "utf-8"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_fails_with_a_plain_reason_and_leaves_the_rest_unchanged(case, collection, ingest, existing):
    filename, data, reason_word = BAD_INPUTS[case]
    document = ingest(collection, filename, data)
    assert document.status == "failed"
    assert reason_word.lower() in document.error.lower()
    assert "Traceback" not in document.error and document.chunks.count() == 0
    assert snapshot(collection, excluding=[document]) == existing


def test_oversized_file_fails_at_upload_without_keeping_its_bytes(collection, ingest, existing, settings):
    settings.MAX_UPLOAD_BYTES = 1024 * 1024
    document = ingest(collection, "huge.txt", b"word " * 300_000)
    assert document.status == "failed"
    assert "over the 1 MB limit" in document.error and "MAX_UPLOAD_MB" in document.error
    assert not document.file
    assert snapshot(collection, excluding=[document]) == existing


def test_mislabelled_html_named_pdf_is_parsed_as_html(collection, ingest):
    html = b"<!doctype html><html><head><title>Menu</title></head><body><h1>Lunch</h1><p>Soup of the day is tomato.</p></body></html>"
    document = ingest(collection, "menu.pdf", html)
    assert (document.status, document.content_type) == ("ready", "text/html")
    assert "tomato" in document.chunks.get().text


def test_chinese_text_is_segmented_for_full_text_search(collection, ingest):
    document = ingest(collection, "notes.txt", "北京大学是中国著名的高等学府。它位于北京市海淀区。".encode())
    chunk = document.chunks.get()
    assert chunk.search_text and "北京大学" in chunk.search_text.split()
    assert Chunk.objects.filter(pk=chunk.pk, search_vector="海淀区").exists()


@pytest.mark.django_db(transaction=True)
def test_worker_processes_queue_and_keeps_going_after_bad_files(collection):
    from procrastinate.contrib.django import app

    uploads = [("bad.pdf", b"%PDF-1.7 truncated"), ("good.txt", HANDBOOK.encode()), ("empty.txt", b"")]
    documents = [document_create(collection=collection, file=ContentFile(data, name=name))[0] for name, data in uploads]
    assert {document.status for document in documents} == {"queued"}
    # As `manage.py procrastinate worker` does: the worker gets its own psycopg connector.
    with app.replace_connector(app.connector.get_worker_connector()) as worker_app:
        worker_app.run_worker(queues=["ingestion"], wait=False, install_signal_handlers=False, listen_notify=False)
    statuses = {document.original_filename: Document.objects.get(pk=document.pk).status for document in documents}
    assert statuses == {"bad.pdf": "failed", "good.txt": "ready", "empty.txt": "failed"}
