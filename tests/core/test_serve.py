"""The README's main command, as a new user meets it: serve, log in, upload a PDF, see it ready."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_pdf

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
def served(tmp_path):
    """Run `manage.py serve` on a fresh data directory (its own embedded PostgreSQL)."""
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "ADMIN_PASSWORD": "correct-horse-battery"}
    env.pop("DATABASE_URL", None)
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


def test_uploaded_pdf_reaches_ready_with_chunks_without_other_steps(served):
    client = httpx.Client(base_url=served, follow_redirects=True, timeout=30)
    login = client.get("/admin/login/")
    client.post("/admin/login/?next=/admin/", data={
        "username": "admin", "password": "correct-horse-battery", "csrfmiddlewaretoken": csrf_token(login.text),
    })
    collection_form = client.get("/admin/documents/collection/add/")
    created = client.post("/admin/documents/collection/add/", data={
        "name": "Policies", "slug": "policies", "language": "english", "reranking_enabled": "on",
        "rerank_fusion_weight": "1.0",
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
