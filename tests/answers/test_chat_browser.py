"""The chat in a real browser (Playwright driving Debian's Chromium): log in, ask, watch the answer
stream, open a citation, give feedback.

The generator is the scripted OpenAI-compatible server streaming slowly, so the test can see
tokens arrive before the end; test_vllm_end_to_end.py covers a real vLLM.
"""

import json
import os
import shutil

import pytest
from django.contrib.auth.models import User
from django.db import connections

from ragapp.answers.models import Feedback
from tests.answers.scripted_generator import scripted_generator

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Chromium keeps calling home without these, and nothing outside can be reached here.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]
ANSWER = "Hold the reset button for **ten seconds** [1]. Then wait for the light [1]."

# Skipped only outside CI: .ci/run installs Chromium and sets CI, where a missing browser fails.
pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM) and not os.environ.get("CI"),
                                reason=f"No Chromium at {CHROMIUM}: `apt-get install chromium` or set CHROMIUM_PATH")


@pytest.fixture
def browser_page(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls are
    # still plain synchronous code (Django's documented setting for this case).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone's screen
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        yield context.new_page()
        browser.close()


@pytest.fixture
def reader(collection, ingest):
    ingest(collection, "router.txt", b"To reset the router, hold the reset button for ten seconds. Wait for the green light.")
    user = User.objects.create_user("reader", password="a-good-password")
    collection.readers.add(user)
    return user


def test_log_in_ask_see_the_answer_stream_open_a_citation_and_give_feedback(live_server, browser_page, reader, settings):
    settings.RERANKER_URLS = []
    page = browser_page
    with scripted_generator(lambda messages: ANSWER, token_delay=0.15) as (url, _):
        settings.GENERATOR_URL, settings.GENERATOR_MODEL = url, ""
        page.goto(f"{live_server.url}/")
        page.fill("input[name=username]", "reader")
        page.fill("input[name=password]", "a-good-password")
        page.click("button[type=submit]")
        page.wait_for_selector("#question")

        page.fill("#question", "How do I reset the router?")
        page.click("#ask-button")
        streaming = page.locator("li.turn.answer.streaming .answer-text")
        streaming.filter(has_text="Hold").wait_for(timeout=30_000)
        partial = streaming.inner_text()
        assert partial.startswith("Hold") and "light" not in partial  # seen before the end: streamed

        answer = page.locator("li.turn.answer:not(.streaming)")
        answer.wait_for(timeout=30_000)
        assert answer.locator(".answer-text strong").inner_text() == "ten seconds"
        assert answer.locator(".passages details").evaluate("details => details.open") is False  # the answer comes first
        answer.locator("button.citation").first.click()
        panel = page.locator("#passage-panel")
        panel.wait_for(state="visible")
        assert "[1] router" in page.locator("#panel-title").inner_text()
        assert "hold the reset button" in page.locator("#panel-text").inner_text()
        assert page.locator("#panel-text mark").count() > 0  # the question's words are marked
        assert page.locator("#panel-link").get_attribute("href").endswith("/file")
        page.click("#panel-close")

        with page.expect_response(lambda response: "/feedback" in response.url) as rated:
            answer.locator("button.rate-up").click()
        assert rated.value.ok
        page.locator(".feedback-status").filter(has_text="saved").wait_for()
        answer.locator("form.comment input").fill("Clear steps")
        with page.expect_response(lambda response: "/feedback" in response.url) as commented:
            answer.locator("form.comment button").click()
        assert commented.value.ok

    assert page.url.startswith(f"{live_server.url}/chat/")
    feedback = Feedback.objects.get()
    # With Playwright's sync API running, this query got a database connection of its own (Django
    # keeps one per context) that no fixture sees: close it, else the test database cannot be
    # dropped at the end of the run ("being accessed by other users").
    connections.close_all()
    assert feedback.rating == 1 and feedback.comment == "Clear steps"


def sign_in(page, base_url: str) -> None:
    page.goto(f"{base_url}/")
    page.fill("input[name=username]", "reader")
    page.fill("input[name=password]", "a-good-password")
    page.click("button[type=submit]")
    page.wait_for_selector("#question")


def test_while_the_local_generator_is_prepared_the_chat_says_so_and_shows_the_passages_open(
        live_server, browser_page, reader, settings, tmp_path):
    settings.RERANKER_URLS, settings.GENERATOR_URL, settings.GENERATOR_MODEL = [], "http://127.0.0.1:9/v1", "any"
    settings.SERVE_STATE_FILE = tmp_path / "serve-state.json"
    settings.SERVE_STATE_FILE.write_text(json.dumps(
        {"supervisor_pid": os.getpid(), "children": {"generator": {"state": "preparing", "detail": ""}}}))
    page = browser_page
    sign_in(page, live_server.url)
    page.fill("#question", "How do I reset the router?")
    page.click("#ask-button")
    answer = page.locator("li.turn.answer:not(.streaming)")
    answer.wait_for(timeout=30_000)
    assert "The local generator is being prepared" in answer.locator(".notice").inner_text()
    assert answer.locator(".passages details").evaluate("details => details.open") is True
    assert answer.locator(".passage-link").first.is_visible()
    page.reload()  # the conversation as history shows it the same way
    assert page.locator("li.turn.answer .passages details").evaluate("details => details.open") is True
    connections.close_all()


HOSTILE_PAGE = b"""<!doctype html><html><head><title>Hotel policy</title>
<script>alert("script ran"); fetch("/api/v1/collections/").then(r => r.text()).then(t => fetch("/steal?" + t));</script>
</head><body><h1>Hotels</h1><p>Hotel bills are reimbursed up to 150 euros a night.</p>
<img src="/missing.png" onerror="alert(document.cookie); fetch('/api/v1/collections/')"></body></html>"""
HOSTILE_TEXT = b"Hotel bills need an itemised invoice. <script>alert('text ran')</script> <img src=x onerror=alert(1)>"


def watch_everything(context) -> tuple[list[str], list[str], list[str]]:
    """Record every dialog any page of the browser opens, every request it sends and every file it downloads."""
    dialogs, requests, downloads = [], [], []

    def watch(page):
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.on("download", lambda download: downloads.append(download.suggested_filename))

    for page in context.pages:
        watch(page)
    context.on("page", watch)
    context.on("request", lambda request: requests.append(request.url))
    return dialogs, requests, downloads


def test_a_hostile_html_original_opened_from_its_citation_runs_nothing(live_server, browser_page, collection, ingest,
                                                                       settings):
    settings.RERANKER_URLS = []
    hostile = ingest(collection, "hotels.html", HOSTILE_PAGE)
    as_text = ingest(collection, "invoice.txt", HOSTILE_TEXT)
    user = User.objects.create_user("reader", password="a-good-password")
    collection.readers.add(user)
    page = browser_page
    dialogs, requests, downloads = watch_everything(page.context)
    with scripted_generator(lambda messages: "Up to 150 euros a night [1].") as (url, _):
        settings.GENERATOR_URL, settings.GENERATOR_MODEL = url, ""
        page.goto(f"{live_server.url}/")
        page.fill("input[name=username]", "reader")
        page.fill("input[name=password]", "a-good-password")
        page.click("button[type=submit]")
        page.fill("#question", "How much is reimbursed for a hotel?")
        page.click("#ask-button")
        page.locator("li.turn.answer:not(.streaming) button.citation").first.click()
        assert page.locator("#panel-link").get_attribute("href") == f"/documents/{hostile.pk}/file"
        seen_before_opening = len(requests)

        page.click("#panel-link")  # opens a new tab, as a reader would
        for _ in range(50):
            if downloads:
                break
            page.wait_for_timeout(100)
        assert downloads == ["hotels.html"]  # saved as a file, never rendered in our origin

        text_page = page.context.new_page()
        text_page.goto(f"{live_server.url}/documents/{as_text.pk}/file")
        assert "<script>alert('text ran')</script>" in text_page.locator("body").inner_text()  # shown as text
        text_page.wait_for_timeout(500)

    connections.close_all()
    assert dialogs == []
    assert not [url for url in requests[seen_before_opening:] if "/api/" in url or "/steal" in url]


def test_the_chat_admin_and_api_docs_work_under_the_content_security_policy(live_server, browser_page, collection,
                                                                            ingest):
    ingest(collection, "router.txt", b"To reset the router, hold the reset button for ten seconds.")
    User.objects.create_superuser("boss", password="a-good-password")
    page = browser_page
    violations = []
    page.on("console", lambda message: violations.append(message.text)
            if "Content Security Policy" in message.text else None)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", "a-good-password")
    page.click("input[type=submit]")
    for path in ("/admin/", "/admin/documents/document/", f"/admin/documents/collection/{collection.pk}/change/",
                 "/admin/documents/document/upload/", "/"):
        response = page.goto(f"{live_server.url}{path}")
        assert "script-src 'self';" in response.headers["content-security-policy"]
        page.wait_for_load_state("load")
    page.goto(f"{live_server.url}/api/docs/")
    page.locator(".swagger-ui .opblock").first.wait_for(timeout=15_000)  # Swagger UI started: its script is a file
    connections.close_all()
    assert violations == []
