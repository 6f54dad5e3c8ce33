"""How many answers one web process writes at once.

An answer holds a web thread for as long as the generator writes (seconds to minutes). The
threads above this limit stay free for everything else, so a crowd of questions, or a slow
generator, never leaves the admin, the chat page or search waiting. A question beyond the
limit is refused at once with 503 and Retry-After, instead of waiting in a queue.
"""

import contextlib
import functools
import threading

from django.conf import settings

from ragapp.answers.errors import AnswersBusy

RETRY_AFTER_SECONDS = 5


@functools.cache
def _slots(limit: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(limit)


@contextlib.contextmanager
def answer_slot():
    """Hold one of this process's ANSWER_STREAMS_PER_PROCESS slots, or raise AnswersBusy."""
    limit = settings.ANSWER_STREAMS_PER_PROCESS
    slots = _slots(limit)
    if not slots.acquire(blocking=False):
        raise AnswersBusy(f"This server is writing {limit} answers at once already: ask again in a few seconds.",
                          retry_after=RETRY_AFTER_SECONDS)
    try:
        yield
    finally:
        slots.release()
