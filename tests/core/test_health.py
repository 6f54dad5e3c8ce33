"""GET /health and the admin's status table: each part's state from what the web process can reach,
and serve's state file to tell "being prepared or restarted" from "down"."""

import json
import os

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ragapp.core.health import generator_notice
from tests.answers.scripted_generator import scripted_generator
from tests.reranking.helpers import running_server

pytestmark = pytest.mark.django_db

UNREACHABLE = "http://127.0.0.1:9"


def serve_says(settings, tmp_path, children: dict) -> None:
    """Write serve's state file as a live serve would (this process stands in for it)."""
    settings.SERVE_STATE_FILE = tmp_path / "serve-state.json"
    settings.SERVE_STATE_FILE.write_text(json.dumps({"supervisor_pid": os.getpid(), "children": children}))


def reranker_answering(status: int):
    app = FastAPI()
    app.get("/health")(lambda: JSONResponse({"status": "x"}, status_code=status))
    return running_server(app)


def test_every_part_is_reported_and_a_missing_worker_is_down_with_what_to_do(client, settings, tmp_path):
    settings.RERANKER_URLS, settings.SERVE_STATE_FILE = [], tmp_path / "none.json"
    with scripted_generator(lambda messages: "") as (url, _):
        settings.GENERATOR_URL = url
        response = client.get("/health")
    report = response.json()
    assert response.status_code == 200 and report["status"] == "degraded"
    parts = report["parts"]
    assert parts["database"]["state"] == "ready" and parts["generator"]["state"] == "ready"
    assert parts["rerankers"]["state"] == "off"
    assert parts["queue_workers"]["state"] == "down" and "manage.py procrastinate worker" in parts["queue_workers"]["detail"]


def test_a_generator_serve_is_preparing_is_starting_and_one_nobody_starts_is_down(client, settings, tmp_path):
    settings.GENERATOR_URL, settings.RERANKER_URLS = f"{UNREACHABLE}/v1", []
    settings.SERVE_STATE_FILE = tmp_path / "none.json"
    assert client.get("/health").json()["parts"]["generator"]["state"] == "down"
    serve_says(settings, tmp_path, {"generator": {"state": "preparing", "detail": "installing vLLM"}})
    generator = client.get("/health").json()["parts"]["generator"]
    assert generator["state"] == "starting" and "installing vLLM" in generator["detail"]


def test_each_reranker_worker_is_ready_starting_or_down(client, settings, tmp_path):
    settings.SERVE_STATE_FILE = tmp_path / "none.json"
    with reranker_answering(200) as ready, reranker_answering(503) as loading:
        settings.RERANKER_URLS = [ready, loading, UNREACHABLE]
        rerankers = client.get("/health").json()["parts"]["rerankers"]
    assert [worker["state"] for worker in rerankers["workers"]] == ["ready", "starting", "down"]
    assert rerankers["state"] == "ready" and rerankers["detail"] == "1 of 3 reranker worker(s) ready."


def test_the_admin_index_shows_the_same_states(admin_client, settings, tmp_path):
    settings.GENERATOR_URL, settings.RERANKER_URLS = f"{UNREACHABLE}/v1", []
    serve_says(settings, tmp_path, {"generator": {"state": "restarting", "detail": "exited with signal SIGKILL"}})
    page = admin_client.get("/admin/").content.decode()
    assert 'id="product-health"' in page and "Status: degraded" in page
    assert '<span class="health-state health-starting">starting</span>' in page
    assert '<span class="health-state health-off">off</span>' in page


def test_the_notice_while_serve_restarts_the_generator_says_what_stopped_it(settings, tmp_path):
    serve_says(settings, tmp_path, {"generator": {"state": "restarting", "restarts": 2, "last_stop": "exited with signal SIGKILL",
                                                  "detail": "exited with signal SIGKILL; restart 2 in 2 s"}})
    assert generator_notice() == ("The local generator stopped (exited with signal SIGKILL) and is being restarted "
                                  "(restart 2): answers are generated again in about a minute.")
