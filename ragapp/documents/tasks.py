"""Background ingestion on Procrastinate (PostgreSQL-backed; workers may run on any machine).

A worker killed mid-job (out of memory, SIGKILL, machine lost) leaves its job `doing`. Every worker
sends heartbeats (settings.PROCRASTINATE_WORKER_DEFAULTS); `retry_stalled_jobs` puts the jobs of
workers gone silent back in the queue, and gives up on a document after INGESTION_MAX_ATTEMPTS.
"""

import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from procrastinate import exceptions, jobs
from procrastinate.contrib.django import app

from ragapp.documents.models import Document
from ragapp.documents.services import document_give_up, document_ingest, document_requeue

logger = logging.getLogger(__name__)


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


def every_seconds(seconds: int) -> str:
    """A cron line (seconds in the sixth field) that fires at least every `seconds`."""
    if seconds < 60:
        return f"* * * * * */{seconds}"
    return f"*/{min(seconds // 60, 59)} * * * *"


# Periodic tasks are registered at import, so the schedule is read once, when the worker starts.
# Ahead of queued documents (priority), so a dead worker's job does not wait for the whole queue.
@app.periodic(cron=every_seconds(settings.WORKER_STALLED_SECONDS))
@app.task(name="retry_stalled_jobs", queue="maintenance", queueing_lock="retry_stalled_jobs", priority=100)
async def retry_stalled_jobs(timestamp: int) -> None:
    """Queue again the jobs of workers whose heartbeat stopped; give up on a document after too many."""
    stalled = await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=settings.WORKER_STALLED_SECONDS)
    for job in stalled:
        if job.task_name == ingest_document.name:
            await _retry_or_give_up(job)
        else:  # an earlier check whose worker died: this one has done its work
            await _finish_failed(job)


async def _retry_or_give_up(job: jobs.Job) -> None:
    document_id, attempts = job.task_kwargs["document_id"], job.attempts + 1  # each retry added one
    if attempts >= settings.INGESTION_MAX_ATTEMPTS:
        logger.error("The worker stopped %s times while ingesting document %s: giving up", attempts, document_id)
        await sync_to_async(document_give_up)(document_id=document_id, attempts=attempts)
        await _finish_failed(job)
        return
    logger.warning("The worker stopped while ingesting document %s (attempt %s): queued again", document_id, attempts)
    await sync_to_async(document_requeue)(document_id=document_id)
    try:
        await app.job_manager.retry_job(job)
    except exceptions.UniqueViolation:  # a re-ingestion of the document is already queued: it does the work
        await _finish_failed(job)


async def _finish_failed(job: jobs.Job) -> None:
    await app.job_manager.finish_job(job, status=jobs.Status.FAILED, delete_job=False)
