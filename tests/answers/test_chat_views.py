"""The chat pages: login, conversations, the streamed answer, feedback, and markup that stays inert."""

import json

import pytest
from django.contrib.auth.models import User

from ragapp.answers.models import Feedback
from ragapp.documents.services import collection_get_or_create
from tests.answers.scripted_generator import scripted_generator

pytestmark = pytest.mark.django_db

HOSTILE = "Reset the router.<script>alert('document')</script><img src=x onerror=alert(1)> Hold the button ten seconds."


@pytest.fixture
def handbook(collection, ingest):
    ingest(collection, "router.txt", HOSTILE.encode())
    return collection


@pytest.fixture
def reader(handbook, client):
    user = User.objects.create_user("reader", password="pw")
    handbook.readers.add(user)
    client.force_login(user)
    return user


@pytest.fixture
def generator(settings):
    settings.RERANKER_URLS = []
    reply = "**Hold it** ten seconds [1]. <script>alert('answer')</script> [9]"
    with scripted_generator(lambda messages: reply) as (url, scripted):
        settings.GENERATOR_URL, settings.GENERATOR_MODEL = url, ""
        yield scripted


def ask(client, **data) -> list[dict]:
    response = client.post("/chat/ask", data)
    assert response.status_code == 200, response.content
    return [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines() if line]


def test_the_chat_needs_a_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert client.get("/accounts/login/").status_code == 200


def test_the_page_offers_the_collections_the_user_may_read(client, reader, handbook):
    collection_get_or_create(name="Secret B")
    page = client.get("/").content.decode()
    assert "Handbook" in page and "Secret B" not in page
    assert 'name="viewport"' in page  # usable on a phone


def test_asking_streams_events_and_the_answer_html_is_sanitised(client, reader, handbook, generator):
    events = ask(client, question="How do I reset the router?", collection=handbook.pk)
    kinds = [event["event"] for event in events]
    assert kinds[0] == "start" and "token" in kinds and kinds[-1] == "done"
    done = events[-1]
    assert "<strong>Hold it</strong>" in done["html"] and 'data-citation="1"' in done["html"]
    assert "<script" not in done["html"] and "&lt;script&gt;" in done["html"]
    assert 'data-citation="9"' not in done["html"] and done["invalid_citations"] == [9]


def test_a_stored_conversation_renders_answers_and_passages_inert(client, reader, handbook, generator):
    start = ask(client, question="How do I reset the router?", collection=handbook.pk)[0]
    page = client.get(f"/chat/{start['conversation']}").content.decode()
    assert "<script>alert(" not in page and "<img src=x" not in page
    assert "\\u003Cscript\\u003E" in page  # the passage travels as escaped JSON for the citation panel
    assert 'data-citation="1"' in page and "How do I reset the router?" in page


def test_follow_ups_continue_the_conversation_and_others_cannot(client, reader, handbook, generator):
    start = ask(client, question="How do I reset the router?", collection=handbook.pk)[0]
    again = ask(client, question="and then?", conversation=start["conversation"])[0]
    assert again["conversation"] == start["conversation"]
    other = User.objects.create_user("other", password="pw")
    handbook.readers.add(other)
    client.force_login(other)
    assert client.get(f"/chat/{start['conversation']}").status_code == 404
    response = client.post("/chat/ask", {"question": "and?", "conversation": start["conversation"]})
    assert response.status_code == 404 and "No conversation" in response.json()["error"]


def test_feedback_is_stored_with_its_comment(client, reader, handbook, generator):
    done = ask(client, question="How do I reset the router?", collection=handbook.pk)[-1]
    response = client.post(f"/chat/messages/{done['message']}/feedback", {"rating": "up", "comment": "Clear"})
    assert response.status_code == 200
    assert Feedback.objects.get().rating == 1 and Feedback.objects.get().comment == "Clear"
    client.post(f"/chat/messages/{done['message']}/feedback", {"rating": "down"})
    assert Feedback.objects.count() == 1 and Feedback.objects.get().rating == -1
    assert client.post(f"/chat/messages/{done['message']}/feedback", {"rating": "5"}).status_code == 400


def test_errors_come_back_as_json_for_the_page_to_show(client, reader, handbook):
    response = client.post("/chat/ask", {"question": "", "collection": handbook.pk})
    assert response.status_code == 400 and "empty" in response.json()["error"]
