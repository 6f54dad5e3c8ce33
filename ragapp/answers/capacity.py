"""How much of one web process each kind of work may take at once.

An answer holds a web thread for as long as the generator writes (seconds to minutes). The
threads above ANSWER_STREAMS_PER_PROCESS stay free for everything else, so a crowd of questions,
or a slow generator, never leaves the admin, the chat page or search waiting. A question beyond
the limit is refused at once with 503 and Retry-After, instead of waiting in a queue.

Retrieval (embedding the question, the hybrid SQL) is CPU work: run by dozens of threads at
once, it only makes every one of them slow. SEARCHES_PER_PROCESS of them run at a time and the
others wait their turn, first come first served (bench/load.py measures the difference).
"""

import contextlib
import functools
import threading

from django.conf import settings

from ragapp.answers.errors import ServerBusy

RETRY_AFTER_SECONDS = 5
RETRIEVAL_WAIT_SECONDS = 30


@functools.cache
def _slots(kind: str, limit: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(limit)


@contextlib.contextmanager
def answer_slot():
    """Hold one of this process's ANSWER_STREAMS_PER_PROCESS slots, or raise ServerBusy at once."""
    limit = settings.ANSWER_STREAMS_PER_PROCESS
    with _held(_slots("answer", limit), wait=None,
               refusal=f"This server is writing {limit} answers at once already: ask again in a few seconds."):
        yield


@contextlib.contextmanager
def retrieval_slot():
    """Wait for one of this process's SEARCHES_PER_PROCESS slots (ServerBusy after RETRIEVAL_WAIT_SECONDS)."""
    with _held(_slots("retrieval", settings.SEARCHES_PER_PROCESS), wait=RETRIEVAL_WAIT_SECONDS,
               refusal=f"This server has had more searches than it can run for {RETRIEVAL_WAIT_SECONDS} s: "
                       "try again in a few seconds."):
        yield


@contextlib.contextmanager
def _held(slots: threading.BoundedSemaphore, *, wait: float | None, refusal: str):
    # Semaphore waiters are woken in the order they came (CPython's Condition keeps a queue).
    if not slots.acquire(blocking=wait is not None, timeout=wait):
        raise ServerBusy(refusal, retry_after=RETRY_AFTER_SECONDS)
    try:
        yield
    finally:
        slots.release()
