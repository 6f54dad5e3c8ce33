"""Broken and hostile files through the admin's upload, as an administrator would send them: each ends
with a plain reason (or, where the file is fine, ready), and the documents already stored are unchanged.

The request-body and zip-bomb cases have tests of their own below; a worker process measures the bomb."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from ragapp.documents.models import Chunk, Document
from ragapp.documents.services import document_ingest
from tests.conftest import make_pdf
from tests.documents.files import docx_with_body, pdf_encrypted
from tests.documents.workers import REPO, WORKER, worker_environment

MEGABYTE = 1024 * 1024
HOSTILE_HTML = b"""<!doctype html><html><head><title>Expense policy</title>
<script>alert("script ran"); fetch("/api/v1/collections/").then(r => r.text()).then(t => fetch("/steal?" + t));</script>
</head><body><h1>Expenses</h1><p>Hotel bills are reimbursed up to 150 euros a night.</p>
<img src="missing.png" onerror="alert(document.cookie)"></body></html>"""


@pytest.fixture
def stored(collection, ingest):
    """Two ready documents whose rows and chunks must come through any upload untouched."""
    ingest(collection, "travel.txt", b"Train tickets are reimbursed in second class. Taxi rides need a receipt.")
    ingest(collection, "laptops.pdf", make_pdf(["Laptops are replaced every four years."]))
    return snapshot()


def snapshot(*, besides: Document | None = None) -> list[tuple]:
    """Every ready document other than `besides`, with its chunks' ids, texts and vectors."""
    documents = Document.objects.filter(status=Document.Status.READY).exclude(pk=getattr(besides, "pk", None)).order_by("pk")
    return [
        (document.pk, document.status, document.error, document.chunk_count, document.updated_at,
         list(Chunk.objects.filter(document=document).order_by("ordinal").values_list("pk", "text", "embedding")))
        for document in documents
    ]


def admin_upload(admin_client, collection, filename: str, data: bytes):
    """Upload through the admin's form, then ingest as the worker would; return the document and the page."""
    response = admin_client.post(reverse("admin:documents_document_upload"),
                                 {"collection": collection.pk, "files": [SimpleUploadedFile(filename, data)]}, follow=True)
    document = Document.objects.filter(original_filename=filename).get()
    if document.status == Document.Status.QUEUED:
        document_ingest(document=document)
    document.refresh_from_db()
    return document, response.content.decode()


def pdf(text: str) -> bytes:
    return make_pdf([text])


HOSTILE_INPUTS = [
    pytest.param("empty.txt", lambda: b"", "failed", "The file is empty", id="empty file"),
    pytest.param("truncated.pdf", lambda: pdf("Quarterly figures " * 200)[:1500], "failed",
                 "The PDF is damaged or incomplete", id="truncated PDF"),
    pytest.param("aes.pdf", lambda: pdf_encrypted(pdf("Secret salaries."), user_password="secret", algorithm="AES-256"),
                 "failed", "The PDF is encrypted with a password: upload an unencrypted copy", id="AES-encrypted PDF"),
    pytest.param("owner.pdf", lambda: pdf_encrypted(pdf("Parking is free on Sundays."), user_password="",
                                                    owner_password="owner", algorithm="AES-256"),
                 "ready", "", id="owner-password PDF"),
    pytest.param("picture.pdf", lambda: b"\x89PNG\r\n\x1a\n" + os.urandom(2000), "failed",
                 "The file looks like a PNG image, which cannot be indexed", id="PNG named .pdf"),
    pytest.param("latin1.txt", lambda: "Le café crème coûte trois euros.".encode("latin-1"), "failed",
                 "The file is not UTF-8 text", id="Latin-1 text"),
    pytest.param("huge.txt", lambda: b"a" * (60 * MEGABYTE), "failed",
                 "The file is 60.0 MB, over the 50 MB limit", id="60 MB file"),
    pytest.param("page.html", lambda: HOSTILE_HTML, "ready", "", id="HTML with scripts"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("filename", "make", "status", "reason"), HOSTILE_INPUTS)
def test_hostile_upload_ends_with_a_plain_reason_and_leaves_other_documents_alone(
        admin_client, collection, stored, filename, make, status, reason):
    document, page = admin_upload(admin_client, collection, filename, make())

    assert document.status == status
    assert document.error.startswith(reason) if reason else document.error == ""
    assert "Traceback" not in document.error
    assert snapshot(besides=document) == stored


@pytest.mark.django_db
def test_html_is_indexed_without_its_scripts_and_its_original_is_an_inert_download(admin_client, collection, stored):
    document, _ = admin_upload(admin_client, collection, "page.html", HOSTILE_HTML)

    assert snapshot(besides=document) == stored
    text = " ".join(Chunk.objects.filter(document=document).values_list("text", flat=True))
    assert "150 euros" in text and "alert" not in text and "fetch" not in text
    original = admin_client.get(reverse("document_file", args=[document.pk]))
    assert original["Content-Disposition"].startswith("attachment")
    assert original["Content-Security-Policy"] == "sandbox" and original["X-Content-Type-Options"] == "nosniff"
    assert not original["Content-Type"].startswith("text/html")


@pytest.mark.django_db
def test_oversized_file_is_listed_with_its_reason_without_its_bytes(admin_client, collection, stored):
    document, page = admin_upload(admin_client, collection, "huge.txt", b"a" * (60 * MEGABYTE))

    assert not document.file and document.size_bytes == 60 * MEGABYTE
    assert "“huge.txt”: The file is 60.0 MB, over the 50 MB limit" in page
    listing = admin_client.get(reverse("admin:documents_document_changelist")).content.decode()
    assert "over the 50 MB limit" in listing


def request_that_must_not_be_read(content_type: str, length: int) -> dict:
    """WSGI environ extras for a body of `length` bytes whose first read fails the test."""

    class UnreadableBody:
        def read(self, *args):
            raise AssertionError("the body was read")

        readline = read

    return {"CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(length), "wsgi.input": UnreadableBody()}


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "content_type"), [
    ("/accounts/login/", "application/x-www-form-urlencoded"),
    ("/accounts/login/", "multipart/form-data; boundary=x"),
    ("/api/v1/documents/", "multipart/form-data; boundary=x"),
    ("/api/v1/ask", "application/json"),
    ("/v1/chat/completions", "application/json"),
])
def test_a_200_mb_request_body_is_refused_unread_with_413(client, path, content_type, stored):
    response = client.generic("POST", path, **request_that_must_not_be_read(content_type, 200 * MEGABYTE))

    assert response.status_code == 413
    if path.startswith("/api/"):
        assert response.json()["error_type"] == "request_too_large" and "200.0 MB" in response.json()["error"]
    elif path.startswith("/v1/"):
        assert response.json()["error"]["code"] == "request_too_large"
    else:
        assert "The request body is 200.0 MB, over the" in response.content.decode()
    assert snapshot() == stored and Document.objects.count() == len(stored)


@pytest.mark.django_db
def test_a_form_or_json_body_has_a_smaller_limit_than_an_upload(client):
    too_big_for_json = 6 * MEGABYTE
    json_response = client.generic("POST", "/api/v1/ask", **request_that_must_not_be_read("application/json", too_big_for_json))
    assert json_response.status_code == 413 and "over the 5 MB limit" in json_response.json()["error"]


# The zip bomb: a worker process ingests it, and its peak memory is measured.


@pytest.fixture(scope="module")
def docx_bomb(tmp_path_factory) -> Path:
    """A 1.1 MB Word document whose main part expands to about 1.1 GB."""
    paragraph = b"<w:p><w:r><w:t>" + b"a" * 100_000 + b"</w:t></w:r></w:p>"  # long runs pack tightest
    path = tmp_path_factory.mktemp("bomb") / "bomb.docx"
    path.write_bytes(docx_with_body(paragraph, repeats=11_500))
    return path


# A child's peak memory counts the pages of whoever forked it (Linux keeps the larger of the two at
# exec), so a small interpreter starts the worker and reports the worker's own peak.
PEAK_MEMORY_OF_CHILD = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); sys.exit(code)"
)


def worker_run(media_root: Path) -> tuple[int, int]:
    """Run a real Procrastinate worker on the test database until the queue is empty; (exit code, peak MiB)."""
    finished = subprocess.run([sys.executable, "-c", PEAK_MEMORY_OF_CHILD, *WORKER, "--one-shot"], cwd=REPO,
                              env=worker_environment(media_root), capture_output=True, text=True, timeout=300)
    return finished.returncode, int(finished.stdout.split()[-1])


@pytest.mark.django_db(transaction=True)
def test_docx_that_expands_to_a_gigabyte_fails_with_the_reason_in_bounded_memory(
        admin_client, collection, docx_bomb, django_capture_on_commit_callbacks, settings):
    assert docx_bomb.stat().st_size < 2 * MEGABYTE
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(reverse("admin:documents_document_upload"), {"collection": collection.pk, "files": [
            SimpleUploadedFile("notes.txt", b"The office opens at eight."),
        ]})
    exit_code, ordinary_peak = worker_run(settings.MEDIA_ROOT)  # an ordinary document: the embedding model loaded
    assert exit_code == 0 and Document.objects.get(original_filename="notes.txt").status == Document.Status.READY
    before = snapshot()
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(reverse("admin:documents_document_upload"), {"collection": collection.pk, "files": [
            SimpleUploadedFile("bomb.docx", docx_bomb.read_bytes()),
        ]})

    exit_code, bomb_peak = worker_run(settings.MEDIA_ROOT)

    bomb = Document.objects.get(original_filename="bomb.docx")
    assert exit_code == 0 and bomb.status == Document.Status.FAILED
    assert re.match(r"The file expands to more than 200 MB when unpacked \(1,0\d\d MB\), so it was not read", bomb.error)
    assert snapshot(besides=bomb) == before
    print(f"worker peak RSS: ordinary document {ordinary_peak} MiB, 1.1 GB-expanding DOCX {bomb_peak} MiB")
    assert bomb_peak < ordinary_peak  # unpacked, its main part alone would need over 1,000 MiB more
