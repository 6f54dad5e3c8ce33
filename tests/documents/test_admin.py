"""The admin as an administrator uses it: upload many files, watch status, re-ingest, delete."""

import os

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from ragapp.documents.models import Chunk, Document
from tests.conftest import make_pdf
from tests.documents.files import docx_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(admin_client):
    return admin_client


def upload(admin, collection, files, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = admin.post(
            reverse("admin:documents_document_upload"),
            {"collection": collection.pk, "files": files}, follow=True,
        )
    return response, callbacks


def test_add_document_opens_the_upload_form(admin):
    response = admin.get(reverse("admin:documents_document_add"), follow=True)
    assert b'type="file"' in response.content and b"multiple" in response.content


def test_upload_of_several_files_queues_each_for_ingestion(admin, collection, django_capture_on_commit_callbacks):
    files = [SimpleUploadedFile("a.txt", b"Alpha team handbook."), SimpleUploadedFile("b.md", b"# Beta\n\nBeta notes.")]
    response, callbacks = upload(admin, collection, files, django_capture_on_commit_callbacks)
    assert response.status_code == 200
    assert Document.objects.filter(collection=collection, status="queued").count() == 2
    assert len(callbacks) == 2  # one ingestion job deferred per file, after commit
    assert b"queued for ingestion" in response.content
    assert response.content.count(b'class="doc-status doc-status-queued"') == 2


def test_duplicate_upload_is_reported_not_stored(admin, collection, ingest, django_capture_on_commit_callbacks):
    ingest(collection, "a.txt", b"Alpha team handbook.")
    response, _ = upload(admin, collection, [SimpleUploadedFile("again.txt", b"Alpha team handbook.")], django_capture_on_commit_callbacks)
    assert b"not stored twice" in response.content
    assert Document.objects.count() == 1


def test_list_shows_status_progress_and_failure_reason(admin, collection, ingest):
    ingest(collection, "ok.txt", b"Everything is fine here.")
    ingest(collection, "bad.pdf", b"%PDF-1.7 broken")
    page = admin.get(reverse("admin:documents_document_changelist")).content.decode()
    assert 'class="doc-status doc-status-ready"' in page and 'class="doc-status doc-status-failed"' in page
    assert '<progress max="100" value="100"' in page
    assert "damaged or incomplete" in page


def test_document_page_lists_its_chunks_and_links_the_original(admin, collection, ingest):
    document = ingest(collection, "ok.txt", b"The fire exit is next to the lifts.")
    page = admin.get(reverse("admin:documents_document_change", args=[document.pk])).content.decode()
    assert "The fire exit is next to the lifts." in page
    assert reverse("document_file", args=[document.pk]) in page
    original = admin.get(reverse("document_file", args=[document.pk]))
    assert b"".join(original.streaming_content) == b"The fire exit is next to the lifts."


def test_reingest_action_queues_again(admin, collection, ingest, django_capture_on_commit_callbacks):
    document = ingest(collection, "ok.txt", b"Reception opens at eight.")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        admin.post(reverse("admin:documents_document_changelist"),
                   {"action": "reingest_selected", "_selected_action": [document.pk]})
    document.refresh_from_db()
    assert document.status == "queued" and len(callbacks) == 1
    assert document.chunks.exists()  # the old chunks stay until new ones replace them


def test_delete_action_removes_document_chunks_and_file(admin, collection, ingest, django_capture_on_commit_callbacks):
    document = ingest(collection, "ok.txt", b"Parking is behind the building.")
    keep = ingest(collection, "keep.txt", b"The canteen serves lunch from noon.")
    stored = document.file.path
    with django_capture_on_commit_callbacks(execute=True):
        admin.post(reverse("admin:documents_document_changelist"),
                   {"action": "delete_selected_documents", "_selected_action": [document.pk]})
    assert not Document.objects.filter(pk=document.pk).exists()
    assert not Chunk.objects.filter(document_id=document.pk).exists()
    assert not os.path.exists(stored)
    assert keep.chunks.exists()


def test_only_readers_of_the_collection_can_fetch_originals(client, collection, ingest):
    document = ingest(collection, "ok.txt", b"Internal only.")
    response = client.get(reverse("document_file", args=[document.pk]))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    outsider = User.objects.create_user("outsider")
    client.force_login(outsider)
    assert client.get(reverse("document_file", args=[document.pk])).status_code == 404
    collection.readers.add(outsider)
    assert b"".join(client.get(reverse("document_file", args=[document.pk])).streaming_content) == b"Internal only."


@pytest.mark.parametrize(("filename", "data", "content_type", "disposition"), [
    ("guide.pdf", make_pdf(["Page one."]), "application/pdf", "inline"),
    ("notes.txt", b"Plain notes.", "text/plain; charset=utf-8", "inline"),
    ("notes.md", b"# Notes\n\nMarkdown notes.", "text/plain; charset=utf-8", "inline"),
    ("page.html", b"<html><body><p>A page.</p></body></html>", "application/octet-stream", "attachment"),
    ("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><text>A drawing.</text><script>alert(1)</script></svg>',
     "application/octet-stream", "attachment"),
    ("guide.docx", docx_bytes(), "application/octet-stream", "attachment"),
    ("broken.pdf", b"%PDF-1.7 broken", "application/octet-stream", "attachment"),  # never parsed: no known type
])
def test_originals_are_sandboxed_and_only_pdf_and_text_open_in_the_browser(admin, collection, ingest, filename, data,
                                                                           content_type, disposition):
    document = ingest(collection, filename, data)
    original = admin.get(reverse("document_file", args=[document.pk]))
    assert original["Content-Type"] == content_type
    assert original["Content-Disposition"].startswith(disposition)
    assert original["Content-Security-Policy"] == "sandbox" and original["X-Content-Type-Options"] == "nosniff"


def test_refused_upload_is_not_offered_for_reingestion_and_a_new_upload_replaces_it(
        admin, collection, settings, django_capture_on_commit_callbacks):
    settings.MAX_UPLOAD_BYTES = 100
    upload(admin, collection, [SimpleUploadedFile("report.txt", b"x" * 200)], django_capture_on_commit_callbacks)
    refused = Document.objects.get()
    assert refused.status == "failed" and not refused.file and "over the 0 MB limit" in refused.error

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin.post(reverse("admin:documents_document_changelist"),
                              {"action": "reingest_selected", "_selected_action": [refused.pk]}, follow=True)
    page = response.content.decode()
    assert "Not re-ingested: report.txt" in page and "upload them again" in page and "queued for re-ingestion" not in page
    assert callbacks == [] and Document.objects.get().status == "failed"

    settings.MAX_UPLOAD_BYTES = 1000  # the same bytes, now within the limit, are not a duplicate of the refused entry
    upload(admin, collection, [SimpleUploadedFile("report.txt", b"x" * 200)], django_capture_on_commit_callbacks)
    again = Document.objects.get()
    assert again.pk != refused.pk and again.file and again.status == "queued"

    settings.MAX_UPLOAD_BYTES = 100  # refused again, then a corrected (smaller) copy of the same name replaces it
    upload(admin, collection, [SimpleUploadedFile("big.txt", b"y" * 200)], django_capture_on_commit_callbacks)
    upload(admin, collection, [SimpleUploadedFile("big.txt", b"y" * 50)], django_capture_on_commit_callbacks)
    assert list(Document.objects.filter(original_filename="big.txt").values_list("status", "size_bytes")) == [("queued", 50)]


def test_collection_language_is_read_only_once_it_has_documents(admin, collection, ingest):
    change_url = reverse("admin:documents_collection_change", args=[collection.pk])
    assert 'name="language"' in admin.get(change_url).content.decode()  # empty: still a choice

    ingest(collection, "a.txt", b"Alpha team handbook.")
    page = admin.get(change_url).content.decode()
    assert 'name="language"' not in page and "Fixed once the collection has documents" in page
    admin.post(change_url, {"name": collection.name, "slug": collection.slug, "language": "french",
                            "reranking_enabled": "on", "rerank_fusion_weight": "1.0", "dense_weight": "0.5"})
    collection.refresh_from_db()
    assert collection.language == "english"
