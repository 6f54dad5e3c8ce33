"""What each part of the product is doing, for `GET /health` and the admin's index page.

Each part is `ready`, `starting` or `down` (or `off`: not configured), with a sentence saying
why. The web process checks what it can reach itself (the database, the queue workers'
heartbeats, the generator's and the rerankers' own endpoints); `serve`'s state file
(`ragapp.core.supervision`) tells "being prepared or restarted" apart from "down".
"""

from __future__ import annotations

import datetime
from concurrent.futures import ThreadPoolExecutor

import httpx
from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from ragapp.core import supervision

READY, STARTING, DOWN, OFF = "ready", "starting", "down", "off"
PROBE_TIMEOUT_SECONDS = 2.0
# A supervised child in one of these states is coming (back), not gone.
ON_ITS_WAY = {supervision.PREPARING, supervision.STARTING, supervision.RESTARTING}


def product_health() -> dict:
    """Every part's state, probed at once; `status` is ready, degraded (a part is not) or down (no database)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        generator = pool.submit(generator_health)
        rerankers = pool.submit(rerankers_health)
        database = database_health()
        queue = queue_workers_health() if database["state"] == READY else _part(DOWN, "The database is down.")
        parts = {"database": database, "queue_workers": queue,
                 "generator": generator.result(), "rerankers": rerankers.result()}
    return {"status": _overall(parts), "parts": parts}


def database_health() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as error:
        return _part(DOWN, f"The database does not answer: {_first_line(error)}")
    return _part(READY, "The database answers.")


def queue_workers_health() -> dict:
    """Workers with a recent heartbeat (Procrastinate's own table), and how many documents wait."""
    from procrastinate.contrib.django.models import ProcrastinateJob, ProcrastinateWorker

    alive_since = timezone.now() - datetime.timedelta(seconds=settings.WORKER_STALLED_SECONDS)
    workers = ProcrastinateWorker.objects.filter(last_heartbeat__gte=alive_since).count()
    waiting = ProcrastinateJob.objects.filter(status="todo").count()
    backlog = f"{waiting} job(s) waiting." if waiting else "No job waiting."
    if workers:
        return _part(READY, f"{workers} worker(s) with a recent heartbeat. {backlog}", workers=workers)
    supervised = _supervised_matching("ingestion worker")
    if supervised:
        return _part(STARTING, f"No worker yet: {supervised}. {backlog}", workers=0)
    return _part(DOWN, f"No queue worker has sent a heartbeat in the last {settings.WORKER_STALLED_SECONDS:g} s: "
                       f"uploads wait until one runs (`manage.py procrastinate worker`). {backlog}", workers=0)


def generator_health() -> dict:
    if not settings.GENERATOR_URL:
        return _part(DOWN, "No generator is configured (GENERATOR_URL): answers show passages only.")
    try:
        response = httpx.get(f"{settings.GENERATOR_URL.rstrip('/')}/models", timeout=PROBE_TIMEOUT_SECONDS,
                             headers={"Authorization": f"Bearer {settings.GENERATOR_API_KEY}"})
        response.raise_for_status()
        return _part(READY, "The generator lists its models.")
    except httpx.HTTPError as error:
        return _supervised_or_down("generator", f"The generator does not answer ({_first_line(error)}).")


def generator_notice() -> str:
    """Why the local generator cannot answer yet, when `serve` is preparing or restarting it; else ''."""
    child = supervision.child_states(settings.SERVE_STATE_FILE).get("generator")
    if not child or child["state"] not in ON_ITS_WAY:
        return ""
    if child["state"] == supervision.PREPARING:
        return "The local generator is being prepared (vLLM is installed on the first start: a few minutes)."
    if child["state"] == supervision.RESTARTING:
        return (f"The local generator stopped ({child.get('last_stop', '')}) and is being restarted (restart {child.get('restarts', 1)}): "
                "answers are generated again in about a minute.")
    return "The local generator is starting (about a minute)."


def rerankers_health() -> dict:
    if not settings.RERANKER_URLS:
        return _part(OFF, "No reranker is configured (RERANKER_URL): passages keep their retrieval order.", workers=[])
    workers = [_reranker_health(url) for url in settings.RERANKER_URLS]
    states = {worker["state"] for worker in workers}
    state = READY if READY in states else STARTING if STARTING in states else DOWN
    ready = sum(worker["state"] == READY for worker in workers)
    return _part(state, f"{ready} of {len(workers)} reranker worker(s) ready.", workers=workers)


def _reranker_health(url: str) -> dict:
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=PROBE_TIMEOUT_SECONDS)
    except httpx.HTTPError as error:
        return {"url": url, **_supervised_or_down("reranker", f"It does not answer ({_first_line(error)}).")}
    if response.status_code == 200:
        return {"url": url, **_part(READY, "Its model is loaded.")}
    if response.status_code == 503:
        return {"url": url, **_part(STARTING, "It is loading its model.")}
    return {"url": url, **_part(DOWN, f"Its /health answered {response.status_code}.")}


def _supervised_or_down(name: str, down: str) -> dict:
    child = supervision.child_states(settings.SERVE_STATE_FILE).get(name)
    if child and child["state"] in ON_ITS_WAY:
        return _part(STARTING, f"serve reports it {child['state']}: {child.get('detail') or 'not ready yet'}.")
    return _part(DOWN, down + (f" serve reports it {child['state']}: {child.get('detail', '')}." if child else ""))


def _supervised_matching(prefix: str) -> str:
    children = supervision.child_states(settings.SERVE_STATE_FILE)
    coming = [f"{name} {child['state']}" for name, child in children.items()
              if name.startswith(prefix) and child["state"] in ON_ITS_WAY | {supervision.READY}]
    return ", ".join(coming)


def _overall(parts: dict) -> str:
    if parts["database"]["state"] != READY:
        return DOWN
    return READY if all(part["state"] in (READY, OFF) for part in parts.values()) else "degraded"


def _part(state: str, detail: str, **extra) -> dict:
    return {"state": state, "detail": detail, **extra}


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
