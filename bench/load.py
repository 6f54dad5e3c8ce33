"""Load on the web tier: the web server before issue 12 against the one `serve` runs now, in the same run.

Each web server is started here as `serve` starts it (same environment), on 127.0.0.1, with the
tests' scripted generator at a fixed token rate in a process of its own, so that answers take
the same time whatever the web server and the figures are the app's own. For each one:

- search: `POST /api/v1/search` (token auth) from --search-clients concurrent clients,
  --search-requests each, one after another: p50/p95;
- answers: --asks concurrent `POST /api/v1/ask` with "stream": true (server-sent events):
  time to the first token event and to the end of the stream;
- pages: the admin's document list and the chat page, signed in, requested --page-samples times
  each at fixed moments while those answers stream: p95;
- errors per workload: non-2xx, timeouts, connection errors, answers not generated.

The peer is the web server before issue 12 (PEER_COMMAND below); the candidate is
`serve.web_server_command`. Ratios are candidate / peer: below 1 the candidate is faster.

    /work/main/.venv/bin/python bench/load.py            # or .venv/bin/python in a checkout
    # Data in bench/.cache/load-data, with an embedded PostgreSQL of its own: the first --documents
    # SciFact abstracts are ingested once, by the product's own ingestion, and kept for later runs.

Writes bench/results/load.json (or --json PATH). Everything started here (the generator, the web
servers, the database) is stopped at the end, on Ctrl-C, on an error and when --time-limit passes.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common import CACHE_DIR, REPO_ROOT, RESULTS_DIR, django_setup, latency_summary, results_write, scifact_path, scifact_queries

HOST = "127.0.0.1"
# The product as it was before issue 12, code and web server both: its tree is exported once from git.
PEER_COMMIT = "d9567db910aa167207db5a3d45605a1b8de53914"
PEER_DESCRIPTION = (f"the product before issue 12 (commit {PEER_COMMIT[:7]}) and its web server: "
                    "gunicorn ragapp.wsgi --workers 2 --threads 4 --timeout 120")
BENCH_USERNAME = "bench-load"
ADMIN_PAGE = "/admin/documents/document/"
CHAT_PAGE = "/"
# The environment serve gives its web server when GENERATOR_URL names a generator is its own;
# these would point the run at someone's database or reranker instead of its own.
VARIABLES_DROPPED = ("DATABASE_URL", "RERANKER_URL", "RERANKER_MODEL")
STOP_GRACE_SECONDS = 15
LOG_TAIL_LINES = 40


def peer_command(*, port: int) -> list[str]:
    """The web server serve ran before issue 12, on the code of then: the reference of every run."""
    return [sys.executable, "-m", "gunicorn", "ragapp.wsgi", "--bind", f"{HOST}:{port}",
            "--workers", "2", "--threads", "4", "--timeout", "120", "--chdir", str(peer_tree())]


def peer_tree() -> Path:
    """PEER_COMMIT's files under bench/.cache (exported once; the database schema is the same)."""
    tree = CACHE_DIR / f"peer-{PEER_COMMIT[:12]}"
    if not (tree / "manage.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", PEER_COMMIT], cwd=REPO_ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def candidate_command(*, port: int, workers: int) -> list[str]:
    """The web server serve runs today, from serve itself, so the benchmark follows it as it changes."""
    from ragapp.core.management.commands.serve import web_server_command

    return web_server_command(host=HOST, port=port, workers=workers)


def options_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scifact", help="BEIR SciFact folder (default: $SCIFACT_DIR or ../shared/data/scifact).")
    parser.add_argument("--documents", type=int, default=300, help="SciFact abstracts in the collection (default 300).")
    parser.add_argument("--data-dir", type=Path, default=CACHE_DIR / "load-data",
                        help="DATA_DIR of the run, kept between runs (default bench/.cache/load-data).")
    parser.add_argument("--search-clients", type=int, default=50, help="Concurrent search clients (default 50).")
    parser.add_argument("--search-requests", type=int, default=4, help="Searches per client, one after another (default 4).")
    parser.add_argument("--asks", type=int, default=20, help="Concurrent streamed answers (default 20).")
    parser.add_argument("--page-samples", type=int, default=10,
                        help="Requests of each page (admin, chat) while the answers stream (default 10).")
    parser.add_argument("--answer-words", type=int, default=60, help="Words per generated answer, one token each (default 60).")
    parser.add_argument("--tokens-per-second", type=float, default=20.0, help="The generator's rate per answer (default 20).")
    parser.add_argument("--web-workers", type=int, default=2, help="Worker processes of the candidate, as serve's --web-workers "
                                                                   "(default 2; the peer always has 2).")
    parser.add_argument("--request-timeout", type=float, default=60.0,
                        help="Longest wait for one request, a whole streamed answer included (default 60 s).")
    parser.add_argument("--startup-timeout", type=float, default=120.0,
                        help="Longest wait for a web server to answer /admin/login/ (default 120 s).")
    parser.add_argument("--time-limit", type=float, default=900.0,
                        help="Bound on the whole run, ingestion included; everything is stopped when it passes (default 900 s).")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "load.json", help="Results file (default bench/results/load.json).")
    options = parser.parse_args(argv)
    options.scifact = scifact_path(options.scifact)
    options.data_dir = options.data_dir.resolve()
    counts = ("documents", "search_clients", "search_requests", "asks", "page_samples", "answer_words", "web_workers")
    for name in counts:
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return options


def main(argv=None) -> None:
    options = options_parse(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the app's logging would print every request
    started = time.perf_counter()
    environment_isolate(options.data_dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        with RunDeadline(options.time_limit) as deadline, embedded_database(options.data_dir):
            payload = run_measure(options, started, deadline)
    except (StartupFailed, RunTimeExceeded) as error:
        sys.exit(str(error))
    except KeyboardInterrupt:
        sys.exit("Interrupted: the generator, the web servers and the database started here are stopped.")
    summary_print(payload)


def environment_isolate(data_dir: Path) -> None:
    """Point this process, and so every child, at the run's own DATA_DIR and nothing else."""
    for name in VARIABLES_DROPPED:
        os.environ.pop(name, None)
    os.environ["DATA_DIR"] = str(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)


def run_measure(options, started: float, deadline: "RunDeadline") -> dict:
    """Prepare the data, then measure the peer and the candidate against the same generator."""
    fixture = fixture_prepare(options)
    logs = options.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    with generator_running(options, logs / "generator.log") as generator_url:
        environment = web_environment(generator_url)
        commands = {"peer": peer_command,
                    "candidate": lambda *, port: candidate_command(port=port, workers=options.web_workers)}
        configurations = {name: configuration_measure(name, command, environment, fixture, options, logs)
                          for name, command in commands.items()}
    figures = {"peer": PEER_DESCRIPTION, "documents_in_collection": fixture.documents, "configurations": configurations,
               "ratios": ratios(configurations["peer"], configurations["candidate"]),
               "run_seconds": round(time.perf_counter() - started, 1)}
    parameters = {**vars(options), "scifact": str(options.scifact), "data_dir": str(options.data_dir), "json": str(options.json)}
    path = results_write("load", parameters=parameters, figures=figures, path=options.json)
    deadline.disarm()  # measured and written: the stops that follow are never cut short
    return {**figures, "path": str(path)}


# --- the data: a collection of real text, a token and a signed-in session --------------------------

@dataclass(frozen=True)
class Fixture:
    collection: str  # the collection's id, as the API takes it
    documents: int  # in the collection: at least --documents (a larger earlier run's are kept)
    token: str  # API token of the bench's administrator
    session_cookie: tuple[str, str]  # (name, value) of a signed-in session of the same administrator
    queries: list[str]


def fixture_prepare(options) -> Fixture:
    """Migrate, ingest the abstracts not ingested yet, and sign the bench's administrator in."""
    from django.db import connections
    from rest_framework.authtoken.models import Token

    from ragapp.core.services import database_migrate

    database_migrate()
    collection = collection_load(options)
    administrator = administrator_ensure()
    fixture = Fixture(collection=str(collection.pk), documents=collection.documents.count(), token=Token.objects.get_or_create(user=administrator)[0].key,
                      session_cookie=session_open(administrator), queries=scifact_queries(options.scifact))
    connections.close_all()  # this process holds no connection while the web servers are measured
    return fixture


def collection_load(options):
    """The first --documents SciFact abstracts, ingested by the product's services (once: ready ones are kept)."""
    from ragapp.tuning import evaluation

    corpus = evaluation.corpus_deduplicate(evaluation.beir_corpus_read(dataset_dir=options.scifact))[0]
    load = evaluation.beir_collection_load(dataset_dir=options.scifact, corpus=corpus[: options.documents], language="english")
    if load.failed:
        print(f"{load.failed} abstracts failed to ingest: the collection has fewer documents than --documents.")
    return load.collection


def administrator_ensure():
    from django.contrib.auth import get_user_model

    users = get_user_model()
    return users.objects.filter(username=BENCH_USERNAME).first() or users.objects.create_superuser(BENCH_USERNAME)


def session_open(user) -> tuple[str, str]:
    """A session signed in as `user`, stored as a login stores it, for the pages a browser loads."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return settings.SESSION_COOKIE_NAME, client.cookies[settings.SESSION_COOKIE_NAME].value


def conversations_clear() -> None:
    """Start each web server from the same chat page: the answers of an earlier one would lengthen it."""
    from django.db import connections

    from ragapp.answers.models import Conversation

    Conversation.objects.filter(user__username=BENCH_USERNAME).delete()
    connections.close_all()


# --- processes: the generator and the web servers -------------------------------------------------

class StartupFailed(Exception):
    """A child did not come up; the message ends with its log's tail."""


@contextlib.contextmanager
def generator_running(options, log_path: Path):
    """The scripted generator in its own process; yields its API base URL."""
    port = free_port()
    command = [sys.executable, str(REPO_ROOT / "bench" / "scripted_server.py"), "--port", str(port),
               "--words", str(options.answer_words), "--tokens-per-second", str(options.tokens_per_second)]
    with child_running(command, os.environ, log_path) as process:
        ready_wait(f"http://{HOST}:{port}/v1/models", process, log_path, timeout=30, what="The scripted generator")
        yield f"http://{HOST}:{port}/v1"


def web_environment(generator_url: str) -> dict:
    """What serve gives its web server when GENERATOR_URL names a generator: its own environment as it is."""
    from tests.answers.scripted_generator import MODEL

    return {**os.environ, "GENERATOR_URL": generator_url, "GENERATOR_MODEL": MODEL}


@contextlib.contextmanager
def child_running(command: list[str], environment, log_path: Path):
    """Run `command` in a process group of its own, its output in `log_path`; stop the whole group at the end.

    Its own group, so that Ctrl-C reaches only this process, which then stops the children in order."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield process
    finally:
        with signals_held():
            group_stop(process)


def group_stop(process: subprocess.Popen) -> None:
    """Stop the process as Ctrl-C would (a server stops its own workers), then KILL what is left of its group.

    Ctrl-C rather than TERM: gunicorn's TERM waits for the requests in flight, and on an
    interrupted run those may be searches still loading the model."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # workers of a server that did not stop in time
    process.wait()


def ready_wait(url: str, process: subprocess.Popen, log_path: Path, *, timeout: float, what: str) -> None:
    """Poll `url` until it answers 200; fail with the log's tail when the process exits or time runs out."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if process.poll() is not None:
            raise StartupFailed(f"{what} exited with status {process.returncode}.\n{log_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.25)
    raise StartupFailed(f"{what} did not answer {url} within {timeout:g} s.\n{log_tail(log_path)}")


def log_tail(log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return f"Last lines of {log_path}:\n" + "\n".join(lines)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def configuration_measure(name: str, command_for: Callable[..., list[str]], environment: dict, fixture: Fixture,
                          options, logs: Path) -> dict:
    """Start one web server, wait for it, run every workload against it, stop it."""
    conversations_clear()
    port = free_port()
    command, log_path = command_for(port=port), logs / f"{name}-web.log"
    started = time.perf_counter()
    with child_running(command, environment, log_path) as process:
        ready_wait(f"http://{HOST}:{port}/admin/login/", process, log_path, timeout=options.startup_timeout,
                   what=f"The {name} web server")
        startup_seconds = time.perf_counter() - started
        figures = asyncio.run(workloads_run(f"http://{HOST}:{port}", fixture, options))
        if process.poll() is not None:
            print(f"The {name} web server stopped during the run (status {process.returncode}).\n{log_tail(log_path)}")
    return {"command": command, "log": str(log_path), "startup_seconds": round(startup_seconds, 2),
            **figures, "seconds": round(time.perf_counter() - started, 1)}


# --- the workloads ----------------------------------------------------------------------------------

@dataclass
class Tally:
    """Durations of the requests that succeeded, and a count of the others by what went wrong."""

    seconds: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    # The app's own time, as its response reports it: the rest of `seconds` is waiting and HTTP.
    app_seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        latencies = latency_summary(self.seconds) if self.seconds else {}
        app = {"app": latency_summary(self.app_seconds)} if self.app_seconds else {}
        return {"requests": len(self.seconds) + sum(self.errors.values()), "errors": dict(self.errors), **latencies, **app}


class Failed(Exception):
    """A request that answered, but not as it should; the message is the kind counted."""


@contextlib.asynccontextmanager
async def counted(tally: Tally, timeout: float):
    """Time the block, bounded by `timeout`, and count it: a success's seconds, or what went wrong."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            yield
    except (TimeoutError, httpx.TimeoutException):
        tally.errors["timeout"] += 1
    except httpx.TransportError:
        tally.errors["connection"] += 1
    except Failed as failure:
        tally.errors[str(failure)] += 1
    else:
        tally.seconds.append(time.perf_counter() - started)


def status_check(response: httpx.Response) -> None:
    if not response.is_success:
        raise Failed(f"status {response.status_code}")


async def workloads_run(url: str, fixture: Fixture, options) -> dict:
    """Search from a cold start, warm up, search again, then answers streaming with the pages sampled meanwhile."""
    concurrency = options.search_clients + options.asks + 2 * options.page_samples
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(options.request_timeout)
    api = httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout, headers={"Authorization": f"Token {fixture.token}"})
    browser = httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout, cookies=dict([fixture.session_cookie]))
    async with api, browser:
        # First as a new user meets it: the server has just answered its first page.
        cold = await search_load(api, fixture, options)
        warm_up = await warm_up_run(api, browser, fixture, options)
        search = await search_load(api, fixture, options)
        streamed = await answers_with_pages(api, browser, fixture, options)
    return {"search_cold": cold.summary(), "warm_up": warm_up.summary(), "search": search.summary(), **streamed}


async def warm_up_run(api, browser, fixture: Fixture, options) -> Tally:
    """Untimed rounds first: each worker process loads the embedding model on its first search (seconds)."""
    tally = Tally()
    for _ in range(2):
        searches = [search_one(api, fixture, fixture.queries[index], tally, options) for index in range(16)]
        answers = [answer_one(api, fixture, fixture.queries[index], Answers(total=tally), options) for index in range(2)]
        pages = [page_get(browser, page, tally, options) for page in (ADMIN_PAGE, CHAT_PAGE)]
        await asyncio.gather(*searches, *answers, *pages)
    return tally


async def search_one(api, fixture: Fixture, question: str, tally: Tally, options) -> None:
    async with counted(tally, options.request_timeout):
        response = await api.post("/api/v1/search", json={"question": question, "collection": fixture.collection})
        status_check(response)
        tally.app_seconds.append(response.json()["timings"]["total"])


async def search_load(api, fixture: Fixture, options) -> Tally:
    """--search-clients clients at once, each sending --search-requests searches one after another."""
    tally = Tally()

    async def client(number: int) -> None:
        for turn in range(options.search_requests):
            question = fixture.queries[(number * options.search_requests + turn) % len(fixture.queries)]
            await search_one(api, fixture, question, tally, options)

    await asyncio.gather(*(client(number) for number in range(options.search_clients)))
    return tally


async def page_get(browser, path: str, tally: Tally, options) -> None:
    async with counted(tally, options.request_timeout):
        status_check(await browser.get(path))


@dataclass
class Answers:
    """Streamed answers: `total` times each whole stream (and counts failures); first tokens of the successes,
    as the client saw them and as the app timed them from the moment it began the answer."""

    total: Tally = field(default_factory=Tally)
    first_token: list[float] = field(default_factory=list)
    first_token_app: list[float] = field(default_factory=list)


async def answer_one(api, fixture: Fixture, question: str, answers: Answers, options) -> None:
    started = time.perf_counter()
    async with counted(answers.total, options.request_timeout):
        first_token, done = await answer_stream_read(api, {"question": question, "collection": fixture.collection,
                                                           "stream": True}, started)
        if done is None:
            raise Failed("stream ended without a done event")
        if not done.get("generated"):
            raise Failed("not generated")  # the generator failed: the app answered with passages only
        if first_token is None:
            raise Failed("no token")
        answers.first_token.append(first_token)
        answers.first_token_app.append(done["timings"]["first_token"])


async def answer_stream_read(api, payload: dict, started: float) -> tuple[float | None, dict | None]:
    """Read one server-sent event stream to its end: seconds to the first token event, and the done event."""
    first_token, done, event = None, None, None
    async with api.stream("POST", "/api/v1/ask", json=payload) as response:
        status_check(response)
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
                if event == "token" and first_token is None:
                    first_token = time.perf_counter() - started
            elif event == "done" and line.startswith("data: "):
                done = json.loads(line.removeprefix("data: "))
    return first_token, done


async def answers_with_pages(api, browser, fixture: Fixture, options) -> dict:
    """--asks streamed answers at once, and the two pages sampled while they stream."""
    answers, admin, chat = Answers(), Tally(), Tally()
    first = options.search_clients * options.search_requests  # questions not searched just before
    questions = [fixture.queries[(first + index) % len(fixture.queries)] for index in range(options.asks)]
    streaming = [options.asks]

    async def answer(question: str) -> None:
        try:
            await answer_one(api, fixture, question, answers, options)
        finally:
            streaming[0] -= 1

    tasks = [asyncio.create_task(answer(question)) for question in questions]
    still_streaming = await pages_sample(browser, admin, chat, options, lambda: streaming[0])
    await asyncio.gather(*tasks)
    return {"answers": {"total": answers.total.summary(),
                        "first_token": latency_summary(answers.first_token) if answers.first_token else None,
                        "first_token_app": latency_summary(answers.first_token_app) if answers.first_token_app else None},
            "admin_page": admin.summary(), "chat_page": chat.summary(),
            "answers_streaming_at_page_samples": {"min": min(still_streaming), "max": max(still_streaming)}}


async def pages_sample(browser, admin: Tally, chat: Tally, options, streaming: Callable[[], int]) -> list[int]:
    """Request both pages --page-samples times at fixed moments over the time one answer takes to stream.

    Fixed moments, not one request after another: a slow page must not thin out its own samples.
    Returns how many answers were still streaming at each moment."""
    answer_seconds = options.answer_words / options.tokens_per_second
    interval = 0.7 * answer_seconds / options.page_samples
    await asyncio.sleep(0.1 * answer_seconds)
    requests, still_streaming = [], []
    for _ in range(options.page_samples):
        still_streaming.append(streaming())
        requests += [asyncio.create_task(page_get(browser, ADMIN_PAGE, admin, options)),
                     asyncio.create_task(page_get(browser, CHAT_PAGE, chat, options))]
        await asyncio.sleep(interval)
    await asyncio.gather(*requests)
    return still_streaming


# --- figures -------------------------------------------------------------------------------------------

RATIOS = {
    "search_cold_p95": ("search_cold", "p95_ms"),
    "search_cold_p50": ("search_cold", "p50_ms"),
    "search_p95": ("search", "p95_ms"),
    "search_p50": ("search", "p50_ms"),
    "search_app_p50": ("search", "app", "p50_ms"),
    "admin_page_p95": ("admin_page", "p95_ms"),
    "chat_page_p95": ("chat_page", "p95_ms"),
    "time_to_first_token_p50": ("answers", "first_token", "p50_ms"),
    "time_to_first_token_p95": ("answers", "first_token", "p95_ms"),
    "time_to_first_token_app_p50": ("answers", "first_token_app", "p50_ms"),
    "answer_total_p95": ("answers", "total", "p95_ms"),
}


def ratios(peer: dict, candidate: dict) -> dict:
    """candidate / peer for each figure both have: below 1, the candidate is faster."""
    result = {}
    for name, keys in RATIOS.items():
        peer_value, candidate_value = figure(peer, keys), figure(candidate, keys)
        result[name] = round(candidate_value / peer_value, 3) if peer_value and candidate_value is not None else None
    return result


def figure(figures: dict, keys: tuple[str, ...]):
    for key in keys:
        figures = (figures or {}).get(key)
    return figures


def summary_print(payload: dict) -> None:
    configurations = payload["configurations"]
    print(f"{'':32}{'peer':>12}{'candidate':>12}{'ratio':>8}")
    for name, keys in RATIOS.items():
        values = [figure(configurations[side], keys) for side in ("peer", "candidate")]
        shown = [f"{value:12.0f}" if value is not None else f"{'-':>12}" for value in values]
        ratio = payload["ratios"][name]
        print(f"{name + ' (ms)':32}{''.join(shown)}{ratio if ratio is not None else '-':>8}")
    for side, figures in configurations.items():
        errors = {workload: figure(figures, keys) for workload, keys in ERRORS.items()}
        print(f"errors, {side}: " + ", ".join(f"{workload} {count or 'none'}" for workload, count in errors.items()))
    print(f"Run time {payload['run_seconds']} s. Wrote {payload['path']}")


ERRORS = {"search, cold": ("search_cold", "errors"), "search": ("search", "errors"), "answers": ("answers", "total", "errors"),
          "admin page": ("admin_page", "errors"), "chat page": ("chat_page", "errors")}


# --- the run's bounds: its time, its database, signals during stops --------------------------------

class RunTimeExceeded(Exception):
    pass


class RunDeadline:
    """The run's time bound: when it passes, RunTimeExceeded is raised wherever the run is, and the
    stops on the way out still run (signals_held keeps them whole)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        signal.signal(signal.SIGALRM, self._expired)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc_info):
        self.disarm()

    def disarm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _expired(self, *_):
        raise RunTimeExceeded(f"The run took longer than --time-limit {self.seconds:g} s: stopped "
                              "(run it again with a larger --time-limit, or fewer requests).")


@contextlib.contextmanager
def signals_held():
    """Hold Ctrl-C, TERM and the time limit while a stop runs, so it is never left half-way; they act after it."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGALRM}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


@contextlib.contextmanager
def embedded_database(data_dir: Path):
    """Django on the run's DATA_DIR; its embedded PostgreSQL is stopped at the end if this run started it.

    The embedded server stops by itself when the last process that used it exits, but a web worker
    that had to be killed never signs off, and the server would then outlive the run."""
    pgdata = data_dir / "postgres"
    started_here = postmaster_pid(pgdata) is None
    try:
        django_setup()
        yield
    finally:
        if started_here:
            with signals_held():
                database_stop(pgdata)


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the PostgreSQL server running on `pgdata`, or None."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def database_stop(pgdata: Path) -> None:
    """Close this process's connections and shut the server down (fast: it ends the other sessions)."""
    from django.conf import settings

    if settings.configured:
        from django.db import connections

        connections.close_all()
    pid = postmaster_pid(pgdata)
    if pid is None:
        return
    os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
    # Wait for the process, not its pid file (which goes a moment before): else the embedded
    # server's own exit handler would find it still running and try to stop it again.
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


if __name__ == "__main__":
    main()
