"""REST API /api/v1/: token auth, ask (JSON and server-sent events), search, documents, collections,
conversations, feedback, the OpenAPI schema; and no endpoint leaks a collection to a non-reader."""

import json

import pytest
import yaml
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from drf_spectacular.drainage import GENERATOR_STATS
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from ragapp.answers.models import Feedback, Message
from ragapp.documents.models import Document
from ragapp.documents.services import collection_get_or_create
from tests.answers.scripted_generator import scripted_generator, stream_pieces

pytestmark = pytest.mark.django_db


@pytest.fixture
def handbook(collection, ingest):
    ingest(collection, "travel.txt", b"Train tickets are reimbursed in second class. Taxi rides need a receipt.")
    ingest(collection, "vacation.txt", b"Employees receive twenty-five days of paid vacation.")
    return collection


@pytest.fixture
def secret(ingest, db):
    collection = collection_get_or_create(name="Secret B")
    ingest(collection, "merger.txt", b"The confidential merger with Initech closes in May. Taxi budget is frozen.")
    return collection


@pytest.fixture
def reader(handbook):
    user = User.objects.create_user("reader", password="pw")
    handbook.readers.add(user)
    return user


def client_for(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(reader):
    return client_for(reader)


@pytest.fixture
def generator(settings):
    settings.RERANKER_URLS = []
    with scripted_generator(lambda messages: "Taxi rides need a receipt [1].") as (url, scripted):
        settings.GENERATOR_URL, settings.GENERATOR_MODEL = url, ""
        yield scripted


def test_every_endpoint_needs_a_token():
    client = APIClient()
    for method, path in [("post", "/api/v1/ask"), ("post", "/api/v1/search"), ("get", "/api/v1/collections/"),
                         ("get", "/api/v1/documents/"), ("get", "/api/v1/conversations/"), ("get", "/v1/models")]:
        response = getattr(client, method)(path, {}, format="json")
        assert response.status_code == 401, path
        assert "error" in response.json()


def test_ask_returns_the_answer_citations_and_timings(api, handbook, generator):
    response = api.post("/api/v1/ask", {"question": "Do taxi rides need a receipt?", "collection": handbook.slug}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["answer"] == "Taxi rides need a receipt [1]." and body["generated"] and body["cited"] == [1]
    first = body["citations"][0]
    assert set(first) >= {"number", "chunk", "document", "page", "score", "text", "title"}
    assert first["title"] == "travel" and "receipt" in first["text"]
    assert {"retrieve", "generate", "total"} <= set(body["timings"])
    # The scripted generator counts the pieces it streamed and the words of the prompt it got.
    assert body["usage"]["completion_tokens"] == len(stream_pieces(body["answer"])) and body["usage"]["prompt_tokens"] > 20
    stored = api.get(f"/api/v1/conversations/{body['conversation']}/").json()
    assert stored["messages"][-1]["usage"] == body["usage"]
    follow_up = api.post("/api/v1/ask", {"question": "And trains?", "conversation": body["conversation"]}, format="json")
    assert follow_up.status_code == 200 and follow_up.json()["conversation"] == body["conversation"]


def test_ask_streams_server_sent_events(api, handbook, generator):
    response = api.post("/api/v1/ask", {"question": "taxi receipt", "collection": handbook.pk, "stream": True}, format="json")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    events = [json.loads(block.split("data: ", 1)[1]) for block in b"".join(response.streaming_content).decode().split("\n\n")
              if block.strip()]
    kinds = [event["event"] for event in events]
    assert kinds[0] == "start" and kinds[1] == "passages" and kinds[-1] == "done" and "token" in kinds


def test_beyond_the_answer_limit_an_ask_is_refused_at_once_and_the_next_one_is_answered(api, handbook, generator, settings):
    settings.ANSWER_STREAMS_PER_PROCESS = 1
    ask = {"question": "taxi receipt", "collection": handbook.pk, "stream": True}
    writing = api.post("/api/v1/ask", ask, format="json")
    events = iter(writing.streaming_content)
    assert b'"event": "start"' in next(events)  # this answer holds the one slot now
    refused = api.post("/api/v1/ask", ask, format="json")
    assert refused.status_code == 503 and refused["Retry-After"] == "5"
    assert refused.json()["error_type"] == "busy" and "ask again in a few seconds" in refused.json()["error"]
    openai = client_for(User.objects.get(username="reader")).post(
        "/v1/chat/completions", {"model": handbook.slug, "messages": [{"role": "user", "content": "taxi?"}]}, format="json")
    assert openai.status_code == 503 and openai.json()["error"]["type"] == "server_error"
    assert b'"event": "done"' in b"".join(events)  # the answer ends: its slot is free again
    assert api.post("/api/v1/ask", {**ask, "stream": False}, format="json").status_code == 200
    assert Message.objects.filter(role=Message.Role.USER).count() == 2  # a refused question stored nothing


def test_bad_asks_get_clear_errors(api, handbook, secret, generator):
    empty = api.post("/api/v1/ask", {"question": "", "collection": handbook.slug}, format="json")
    assert empty.status_code == 400 and "question" in empty.json()["error"]
    unknown = api.post("/api/v1/ask", {"question": "taxi", "collection": "nowhere"}, format="json")
    assert unknown.status_code == 404 and "that you may read" in unknown.json()["error"]
    forbidden = api.post("/api/v1/ask", {"question": "taxi", "collection": secret.slug}, format="json")
    assert forbidden.status_code == 404  # a collection you may not read looks like one that does not exist


def test_search_returns_reranked_or_flagged_passages_without_generating(api, handbook, settings):
    settings.RERANKER_URLS, settings.GENERATOR_URL = ["http://127.0.0.1:9"], ""
    response = api.post("/api/v1/search", {"question": "taxi receipt", "collection": handbook.slug, "top_n": 2}, format="json")
    body = response.json()
    assert response.status_code == 200 and len(body["results"]) == 2
    assert body["reranked"] is False and "Reranking was skipped" in body["notice"]
    assert body["results"][0]["title"] == "travel"


def test_search_takes_question_as_ask_does_and_query_as_its_former_name(api, handbook, settings):
    settings.RERANKER_URLS = []
    by_question = api.post("/api/v1/search", {"question": "taxi receipt", "collection": handbook.slug}, format="json")
    by_query = api.post("/api/v1/search", {"query": "taxi receipt", "collection": handbook.slug}, format="json")
    assert by_question.status_code == by_query.status_code == 200
    assert [r["text"] for r in by_query.json()["results"]] == [r["text"] for r in by_question.json()["results"]]
    both = api.post("/api/v1/search", {"question": "taxi", "query": "train", "collection": handbook.slug}, format="json")
    assert both.status_code == 400 and both.json()["fields"] == {"query": ["Give `question` or `query` (its former name), not both."]}
    neither = api.post("/api/v1/search", {"collection": handbook.slug}, format="json")
    assert neither.status_code == 400 and neither.json()["error"] == "question: This field is required."


def test_no_endpoint_gives_a_non_reader_anything_of_collection_b(api, reader, handbook, secret, generator):
    assert api.post("/api/v1/search", {"question": "merger taxi", "collection": secret.slug}, format="json").status_code == 404
    assert [c["name"] for c in api.get("/api/v1/collections/").json()["results"]] == ["Handbook"]
    documents = api.get("/api/v1/documents/").json()["results"]
    assert {d["original_filename"] for d in documents} == {"travel.txt", "vacation.txt"}
    merger = Document.objects.get(original_filename="merger.txt")
    assert api.get(f"/api/v1/documents/{merger.pk}/").status_code == 404
    assert [m["id"] for m in api.get("/v1/models").json()["data"]] == [handbook.slug]
    answer = api.post("/api/v1/ask", {"question": "What about the merger with Initech?", "collection": handbook.slug},
                      format="json").json()
    assert all("merger" not in c["text"].lower() for c in answer["citations"])
    web = APIClient()
    web.force_login(reader)
    assert web.get(f"/documents/{merger.pk}/file").status_code == 404


def test_documents_upload_status_and_delete_need_staff_rights(api, reader, handbook):
    upload = {"collection": handbook.pk, "file": SimpleUploadedFile("notes.txt", b"Parking is free on Sundays.")}
    assert api.post("/api/v1/documents/", upload, format="multipart").status_code == 403
    reader.is_staff = True
    reader.save()
    reader.user_permissions.add(*Permission.objects.filter(codename__in=["add_document", "delete_document"]))
    staff = client_for(User.objects.get(pk=reader.pk))
    upload["file"].seek(0)
    created = staff.post("/api/v1/documents/", upload, format="multipart")
    assert created.status_code == 201, created.content
    document = created.json()
    assert document["status"] in ("queued", "ready") and 0 <= document["progress"] <= 100
    assert staff.get(f"/api/v1/documents/{document['id']}/").json()["original_filename"] == "notes.txt"
    upload["file"].seek(0)
    again = staff.post("/api/v1/documents/", upload, format="multipart")
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert staff.delete(f"/api/v1/documents/{document['id']}/").status_code == 204
    assert not Document.objects.filter(pk=document["id"]).exists()


def test_conversations_list_their_messages_and_feedback_is_stored(api, handbook, generator):
    answer = api.post("/api/v1/ask", {"question": "taxi receipt", "collection": handbook.slug}, format="json").json()
    listed = api.get("/api/v1/conversations/").json()["results"]
    assert [c["id"] for c in listed] == [answer["conversation"]]
    detail = api.get(f"/api/v1/conversations/{answer['conversation']}/").json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    assert detail["messages"][1]["citations"][0]["number"] == 1
    rated = api.post(f"/api/v1/messages/{answer['message']}/feedback/", {"rating": "down", "comment": "Wrong page"}, format="json")
    assert rated.status_code == 200 and rated.json()["rating"] == "down"
    assert Feedback.objects.get().rating == -1 and Feedback.objects.get().comment == "Wrong page"
    assert api.post(f"/api/v1/messages/{answer['message']}/feedback/", {"rating": "meh"}, format="json").status_code == 400


def test_another_users_conversation_and_answer_are_not_found(api, handbook, generator):
    answer = api.post("/api/v1/ask", {"question": "taxi receipt", "collection": handbook.slug}, format="json").json()
    other = User.objects.create_user("other")
    handbook.readers.add(other)
    stranger = client_for(other)
    assert stranger.get(f"/api/v1/conversations/{answer['conversation']}/").status_code == 404
    assert stranger.post(f"/api/v1/messages/{answer['message']}/feedback/", {"rating": "up"}, format="json").status_code == 404


def test_collections_are_created_by_staff_with_the_right(api, reader):
    assert api.post("/api/v1/collections/", {"name": "Legal"}, format="json").status_code == 403
    admin = client_for(User.objects.create_superuser("root", password="pw"))
    created = admin.post("/api/v1/collections/", {"name": "Legal", "language": "english"}, format="json")
    assert created.status_code == 201 and created.json()["slug"] == "legal" and created.json()["document_count"] == 0


def test_the_openapi_schema_and_docs_page_are_served(api):
    schema = api.get("/api/schema/?format=json")
    assert schema.status_code == 200
    document = json.loads(schema.content)
    assert {"/api/v1/ask", "/api/v1/search", "/api/v1/documents/", "/v1/chat/completions"} <= set(document["paths"])
    search = document["components"]["schemas"]["SearchRequest"]["properties"]
    assert "former name of `question`" in search["query"]["description"] and "question" in search
    docs = api.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


def test_the_schema_generates_without_warnings_and_names_each_auth_scheme_once(tmp_path):
    GENERATOR_STATS.reset()  # count only this generation's warnings
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    schemes = yaml.safe_load((tmp_path / "schema.yml").read_text())["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert schemes["tokenAuth"]["description"].endswith('prefix "Token"')
