"""Background ingestion on Procrastinate (PostgreSQL-backed; workers may run on any machine)."""

from django.db import connection
from procrastinate.contrib.django import app

from ragapp.documents.models import Document
from ragapp.documents.services import document_ingest


@app.task(name="ingest_document", queue="ingestion")
def ingest_document(document_id: int) -> None:
    """Ingest one document; a document deleted before its turn is skipped."""
    try:
        document = Document.objects.filter(pk=document_id).select_related("collection").first()
        if document is not None:
            document_ingest(document=document)
    finally:
        # Sync tasks run on a worker thread whose Django connection nobody else closes.
        connection.close()
