"""Shared fixtures: collections and documents in the real (embedded) PostgreSQL test database."""

import io
import textwrap

import pytest
from django.core.files.base import ContentFile

from ragapp.documents.services import collection_get_or_create, document_create, document_ingest


def make_pdf(pages: list[str]) -> bytes:
    """Build a text PDF with one page per string (reportlab), wrapping long lines."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    for text in pages:
        y = 800
        for paragraph in text.split("\n"):
            for line in textwrap.wrap(paragraph, 90) or [""]:
                pdf.drawString(40, y, line)
                y -= 14
            y -= 8
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


@pytest.fixture
def collection(db):
    return collection_get_or_create(name="Handbook")


@pytest.fixture
def ingest(db):
    """Store bytes as a document and ingest it here, as a worker would; return it refreshed."""

    def ingest_bytes(collection, filename: str, data: bytes):
        document, _ = document_create(collection=collection, file=ContentFile(data, name=filename), queue=False)
        if document.status == document.Status.QUEUED:
            document_ingest(document=document)
        document.refresh_from_db()
        return document

    return ingest_bytes


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """Keep uploaded files of each test in its own folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
