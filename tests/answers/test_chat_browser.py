"""The chat in a real browser (Playwright driving Debian's Chromium): log in, ask, watch the answer
stream, open a citation, give feedback.

The generator is the scripted OpenAI-compatible server streaming slowly, so the test can see
tokens arrive before the end; test_vllm_end_to_end.py covers a real vLLM.
"""

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
