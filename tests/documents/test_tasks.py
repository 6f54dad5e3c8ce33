"""The ingestion queue with real worker processes: a worker killed mid-embedding, a worker that dies on a
document every time, and a task that fails with an exception. No document stays half-way."""

import time

import pytest
from asgiref.sync import async_to_sync
from croniter import croniter
from django.core.files.base import ContentFile
from django.db import connection
from procrastinate.contrib.django import app
from procrastinate.contrib.django.models import ProcrastinateJob

from ragapp.documents import parsing
from ragapp.documents.models import Chunk, Document
from ragapp.documents.services import collection_get_or_create, document_create, document_reingest
from ragapp.documents.tasks import every_seconds, retry_stalled_jobs
from tests.conftest import text_statistics_hold
from tests.documents.workers import wait_until, worker_environment, worker_start, worker_stop

# Heartbeats every second, a worker silent for 3 s taken for dead.
QUICK_RECOVERY = {"WORKER_HEARTBEAT_SECONDS": "1", "WORKER_STALLED_SECONDS": "3"}
STARTED = 20  # the progress at which embedding starts (see services._ingest)


def long_text() -> bytes:
    """About 30 chunks of distinct sentences: long enough to catch its embedding half-way."""
    sentences = (f"Clause {number} of the handbook sets the allowance for team {number % 17} at {number * 3} euros a month."
                 for number in range(240))
    return " ".join(sentences).encode()


@pytest.fixture
def recovery(settings, tmp_path):
    """The environment and log file of workers that recover quickly."""
    return worker_environment(settings.MEDIA_ROOT, **QUICK_RECOVERY), tmp_path / "workers.log"


def upload(collection, name: str, data: bytes) -> Document:
    document, _ = document_create(collection=collection, file=ContentFile(data, name=name))
    return document


def ingestion_job(document: Document) -> ProcrastinateJob | None:
    return ProcrastinateJob.objects.filter(task_name="ingest_document", args__document_id=document.pk).first()


def kill_while_embedding(document: Document, environment: dict, log, *, attempt: int) -> None:
    """Start a worker, SIGKILL it once the document's `attempt`-th run has embedded some chunks."""
    # One text per embedding batch: progress moves every 4 chunks, so the kill lands half-way.
    worker = worker_start({**environment, "EMBEDDING_BATCH_SIZE": "1"}, log)

    def embedding_half_way() -> bool:
        job, current = ingestion_job(document), Document.objects.get(pk=document.pk)
        return (job is not None and job.status == "doing" and job.attempts == attempt - 1
                and current.status == Document.Status.EMBEDDING and current.progress > STARTED)

    try:
        wait_until(embedding_half_way, seconds=120, worker=worker, log=log, what=f"attempt {attempt} embedding half-way")
    finally:
        worker.kill()
        worker.wait()
    document.refresh_from_db()
    assert (document.status, document.chunks.count()) == (Document.Status.EMBEDDING, 0)  # killed before the end


@pytest.mark.django_db(transaction=True)
def test_a_document_whose_worker_was_killed_while_embedding_is_ingested_by_the_next_worker(ingest, recovery):
    environment, log = recovery
    undisturbed = ingest(collection_get_or_create(name="Reference"), "handbook.txt", long_text())
    expected = list(undisturbed.chunks.order_by("ordinal").values_list("text", flat=True))
    collection = collection_get_or_create(name="Handbook")
    document = upload(collection, "handbook.txt", long_text())

    kill_while_embedding(document, environment, log, attempt=1)
    killed_at = time.monotonic()
    worker = worker_start(environment, log)
    try:
        wait_until(lambda: Document.objects.get(pk=document.pk).status == Document.Status.READY,
                   seconds=120, worker=worker, log=log, what="the document ready")
        print(f"From SIGKILL to ready: {time.monotonic() - killed_at:.1f} s ({len(expected)} chunks)")
    finally:
        worker_stop(worker)

    document.refresh_from_db()
    assert (document.status, document.progress, document.error) == ("ready", 100, "")
    texts = list(document.chunks.order_by("ordinal").values_list("text", flat=True))
    assert len(expected) > 20 and texts == expected and document.chunk_count == len(expected)
    assert text_statistics_hold(collection)
    assert ingestion_job(document) is None  # succeeded, and deleted as finished jobs are


@pytest.mark.django_db(transaction=True)
def test_a_document_whose_worker_dies_every_time_fails_with_the_reason_after_the_last_attempt(recovery):
    environment, log = recovery
    environment["INGESTION_MAX_ATTEMPTS"] = "2"
    collection = collection_get_or_create(name="Handbook")
    document = upload(collection, "handbook.txt", long_text())

    for attempt in (1, 2):
        kill_while_embedding(document, environment, log, attempt=attempt)
    worker = worker_start(environment, log)
    try:
        wait_until(lambda: Document.objects.get(pk=document.pk).status == Document.Status.FAILED,
                   seconds=120, worker=worker, log=log, what="the document failed")
    finally:
        worker_stop(worker)

    document.refresh_from_db()
    assert document.error.startswith("The ingestion worker stopped 2 times while reading this document")
    assert "out of memory" in document.error and "re-ingest" in document.error
    assert (document.progress, document.chunks.count()) == (0, 0) and text_statistics_hold(collection)
    assert ingestion_job(document).status == "failed"


@pytest.mark.django_db(transaction=True)
def test_a_stalled_job_of_a_document_queued_again_meanwhile_leaves_the_work_to_the_waiting_job(collection):
    document = upload(collection, "handbook.txt", b"Train tickets are reimbursed in second class.")
    stalled = ingestion_job(document)
    with connection.cursor() as cursor:  # as a worker that died holding it leaves it, once its row is pruned
        cursor.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = NULL WHERE id = %s", [stalled.id])
    document_reingest(document=document)  # the administrator queues it again: a second job

    with app.replace_connector(app.connector.get_worker_connector()) as worker_app:
        async_to_sync(stalled_jobs_check)(worker_app)
        worker_app.run_worker(queues=["ingestion"], wait=False, install_signal_handlers=False, listen_notify=False)

    document.refresh_from_db()
    jobs = ProcrastinateJob.objects.filter(task_name="ingest_document", args__document_id=document.pk)
    assert list(jobs.values_list("id", "status")) == [(stalled.id, "failed")]  # the second one succeeded
    assert document.status == Document.Status.READY and document.chunks.count() == 1


async def stalled_jobs_check(worker_app) -> None:
    async with worker_app.open_async():
        await retry_stalled_jobs(timestamp=0)


@pytest.mark.django_db(transaction=True)
def test_a_document_whose_ingestion_raises_unexpectedly_ends_failed_with_the_error(collection, monkeypatch):
    def broken_parser(*args, **kwargs):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(parsing, "document_parse", broken_parser)
    document = upload(collection, "handbook.txt", b"Train tickets are reimbursed in second class.")
    with app.replace_connector(app.connector.get_worker_connector()) as worker_app:
        worker_app.run_worker(queues=["ingestion"], wait=False, install_signal_handlers=False, listen_notify=False)

    document.refresh_from_db()
    assert document.status == Document.Status.FAILED and Chunk.objects.filter(document=document).count() == 0
    assert document.error.startswith("Ingestion failed unexpectedly (RuntimeError: parser bug)")


@pytest.mark.parametrize("seconds", [1, 3, 7, 30, 45, 90, 600, 7200])
def test_the_stalled_job_check_runs_at_least_every_stalled_timeout(seconds):
    runs = croniter(every_seconds(seconds), start_time=0)
    times = [runs.get_next(float) for _ in range(300)]
    assert max(later - earlier for earlier, later in zip(times, times[1:])) <= seconds
