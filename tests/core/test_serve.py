"""The README's main command, as a new user meets it: serve, log in, upload a PDF, see it ready,
ask in the chat and get a streamed answer that cites the PDF.

The generator is the session's real vLLM (tests/conftest.py): `serve` would start its own when
GENERATOR_URL is unset, and two on a 2-core machine would only slow each other down.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, make_pdf

REPO = Path(__file__).resolve().parents[2]


def wait_for(url: str, *, seconds: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve exited early"
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@pytest.fixture
def served(tmp_path, local_vllm):
    """Run `manage.py serve` on a fresh data directory (its own embedded PostgreSQL)."""
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "ADMIN_PASSWORD": "correct-horse-battery",
           "GENERATOR_URL": local_vllm.url, "GENERATOR_MODEL": local_vllm.model, "GENERATOR_MAX_TOKENS": "48",
           "GENERATOR_TOKENIZER": str(local_vllm.model_dir)}
    for name in ("DATABASE_URL", "RERANKER_URL", "RERANKER_MODEL"):
        env.pop(name, None)
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), "--web-workers", "1"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/admin/login/", seconds=120, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        print((tmp_path / "serve.log").read_text()[-3000:])


def csrf_token(page: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)


pytestmark = pytest.mark.vllm


def test_upload_a_pdf_then_ask_in_the_chat_without_other_steps(served):
    client = httpx.Client(base_url=served, follow_redirects=True, timeout=30)
    login = client.get("/admin/login/")
    client.post("/admin/login/?next=/admin/", data={
        "username": "admin", "password": "correct-horse-battery", "csrfmiddlewaretoken": csrf_token(login.text),
    })
    collection_form = client.get("/admin/documents/collection/add/")
    created = client.post("/admin/documents/collection/add/", data={
        "name": "Policies", "slug": "policies", "language": "english", "reranking_enabled": "on",
        "rerank_fusion_weight": "1.0", "dense_weight": "0.5",
        "csrfmiddlewaretoken": csrf_token(collection_form.text),
    })
    assert "was added successfully" in created.text
    upload_form = client.get("/admin/documents/document/upload/")
    collection_id = re.search(r'<option value="(\d+)">Policies</option>', upload_form.text).group(1)
    pdf = make_pdf(["Remote work is allowed three days a week.", "Laptops are replaced every four years."])
    listing = client.post(
        "/admin/documents/document/upload/",
        data={"collection": collection_id, "csrfmiddlewaretoken": csrf_token(upload_form.text)},
        files={"files": ("policy.pdf", pdf, "application/pdf")},
    )
    assert "queued for ingestion" in listing.text
    ready, failed = 'class="doc-status doc-status-ready"', 'class="doc-status doc-status-failed"'
    deadline = time.monotonic() + 120
    while ready not in listing.text and time.monotonic() < deadline:
        assert failed not in listing.text
        time.sleep(1)
        listing = client.get("/admin/documents/document/")
    assert ready in listing.text
    document_url = re.search(r'href="(/admin/documents/document/\d+/change/)', listing.text).group(1)
    assert "Laptops are replaced every four years." in client.get(document_url).text

    login = client.get("/accounts/login/")
    client.post("/accounts/login/", data={"username": "admin", "password": "correct-horse-battery",
                                          "csrfmiddlewaretoken": csrf_token(login.text)})
    chat = client.get("/")
    assert '<option value="' + collection_id + '">Policies</option>' in chat.text
    with client.stream("POST", "/chat/ask", data={"question": "How often are laptops replaced?", "collection": collection_id,
                                                  "csrfmiddlewaretoken": csrf_token(chat.text)},
                       headers={"X-CSRFToken": csrf_token(chat.text)}, timeout=300) as response:
        assert response.status_code == 200
        events = [json.loads(line) for line in response.iter_lines() if line]
    done = events[-1]
    assert [e["event"] for e in events].count("token") >= 3 and done["generated"], done["notice"]
    assert done["citations"][0]["title"] == "policy" and done["citations"][0]["page"] in (1, 2)
    assert "Reranking was skipped" in done["notice"] and "RERANKER_MODEL" in done["notice"]
