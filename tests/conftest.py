"""Shared fixtures: collections and documents in the real (embedded) PostgreSQL test database."""

import io
import socket
import textwrap
from collections.abc import Iterator

import pytest
from django.core.files.base import ContentFile
from django.db import connection

from ragapp.core.local_generator import LocalGeneratorError, LocalServer, server_start
from ragapp.documents.models import CollectionTextStatistics
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


def text_statistics_hold(collection) -> bool:
    """Whether the collection's stored BM25 state equals what its chunks give now.

    The totals, each lexeme's chunk count (a lexeme no chunk holds has no row), and every posting
    (lexeme, chunk, frequency, length) in the block of its chunk id; a lexeme's max_frequency may
    only be an upper bound, since deletes leave it.
    """
    stored = CollectionTextStatistics.objects.filter(collection=collection).first()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), coalesce(sum(length(search_vector)), 0) FROM documents_chunk WHERE collection_id = %s",
                       [collection.pk])
        chunks, lexemes = cursor.fetchone()
        totals_hold = (stored.chunk_count, stored.lexeme_count) == (chunks, lexemes) if stored else chunks == 0
        return totals_hold and not _rows(cursor, LEXEMES_DIFFERENCE, collection) and not _rows(cursor, POSTINGS_DIFFERENCE, collection)


# Postings counted from the chunks now, as (lexeme, chunk, frequency, length, block).
POSTINGS_NOW = """
    SELECT entry.lexeme, chunk.id, coalesce(array_length(entry.positions, 1), 1), length(chunk.search_vector), chunk.id / 4096
    FROM documents_chunk AS chunk CROSS JOIN LATERAL unnest(chunk.search_vector) AS entry
    WHERE chunk.collection_id = %(collection)s
"""
POSTINGS_STORED = """
    SELECT block.lexeme, posting_chunk(block.block, posting), posting_frequency(posting), posting_length(posting), block.block
    FROM documents_postingblock AS block CROSS JOIN LATERAL unnest(block.postings) AS posting
    WHERE block.collection_id = %(collection)s
"""
# Rows in one and not the other, either way (EXCEPT ALL: a posting stored twice is a difference too).
POSTINGS_DIFFERENCE = f"(({POSTINGS_NOW}) EXCEPT ALL ({POSTINGS_STORED})) UNION ALL (({POSTINGS_STORED}) EXCEPT ALL ({POSTINGS_NOW}))"
LEXEMES_DIFFERENCE = f"""
    WITH now AS (SELECT lexeme, count(*) AS chunks, max(frequency) AS frequency
                 FROM ({POSTINGS_NOW}) AS posting (lexeme, chunk, frequency, length, block) GROUP BY lexeme)
    SELECT coalesce(now.lexeme, stored.lexeme)
    FROM now FULL OUTER JOIN (SELECT * FROM documents_collectionlexeme WHERE collection_id = %(collection)s) AS stored
         ON stored.lexeme = now.lexeme
    WHERE stored.chunk_count IS DISTINCT FROM now.chunks OR NOT stored.max_frequency >= now.frequency
"""


def _rows(cursor, sql: str, collection) -> list:
    cursor.execute(sql, {"collection": collection.pk})
    return cursor.fetchall()


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


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """Close connections after each request: live-server threads must not hold the test database open."""
    from django.conf import settings

    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def local_vllm() -> Iterator[LocalServer]:
    """Yield a ready LocalServer; a failed install, conversion or start is an error, never a skip."""
    from django.conf import settings

    try:
        server = server_start(home=settings.VLLM_HOME, port=free_port())
    except LocalGeneratorError as error:
        raise pytest.fail.Exception(str(error), pytrace=False) from None
    with server:  # stops it at the end of the session
        try:
            server.wait_ready(timeout=300)
        except LocalGeneratorError as error:
            raise pytest.fail.Exception(str(error), pytrace=False) from None
        yield server
