"""The admin as an administrator uses it: upload many files, watch status, re-ingest, delete."""

import os

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from ragapp.documents.models import Chunk, Document

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
