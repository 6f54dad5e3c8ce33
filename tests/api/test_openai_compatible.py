"""/v1/chat/completions and /v1/models through the official `openai` client, over real HTTP.

`model` names a collection; the API token is the API key. The generator behind the pipeline is
the scripted OpenAI-compatible server (exact replies); test_vllm_end_to_end.py uses a real vLLM.
"""

import openai
import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

from ragapp.documents.services import collection_get_or_create
from tests.answers.scripted_generator import scripted_generator, stream_pieces


@pytest.fixture
def handbook(collection, ingest):
    ingest(collection, "travel.txt", b"Train tickets are reimbursed in second class. Taxi rides need a receipt.")
    return collection


@pytest.fixture
def client(live_server, handbook):
    user = User.objects.create_user("reader", password="pw")
    handbook.readers.add(user)
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=Token.objects.create(user=user).key, max_retries=0)


@pytest.fixture(autouse=True)
def generator(settings):
    settings.RERANKER_URLS = []
    with scripted_generator(lambda messages: "Taxi rides need a receipt [1].") as (url, scripted):
        settings.GENERATOR_URL, settings.GENERATOR_MODEL = url, ""
        yield scripted


def test_models_are_the_collections_the_key_may_read(client, handbook):
    collection_get_or_create(name="Secret B")
    assert [model.id for model in client.models.list().data] == [handbook.slug]


def test_a_completion_answers_from_the_collection_with_citations(client, handbook):
    completion = client.chat.completions.create(
        model=handbook.slug, messages=[{"role": "user", "content": "Do taxi rides need a receipt?"}])
    assert completion.choices[0].message.content == "Taxi rides need a receipt [1]."
    extra = completion.model_extra
    assert extra["citations"][0]["title"] == "travel" and extra["citations"][0]["cited"]
    assert extra["rag"]["generated"] and "retrieve" in extra["rag"]["timings"]


def test_a_streamed_completion_yields_the_answer_then_citations(client, handbook):
    stream = client.chat.completions.create(
        model=handbook.slug, stream=True, messages=[{"role": "user", "content": "Do taxi rides need a receipt?"}])
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == "Taxi rides need a receipt [1]."
    assert len([c for c in chunks if c.choices[0].delta.content]) >= 4
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].model_extra["citations"][0]["number"] == 1


def _scripted_usage(request: dict, answer: str) -> tuple[int, int]:
    """The counts the scripted generator reports: words of the prompt it got, pieces it streamed."""
    return sum(len(m["content"].split()) for m in request["messages"]), len(stream_pieces(answer))


def test_usage_is_the_generators_count_for_the_prompt_it_read(client, handbook, generator):
    completion = client.chat.completions.create(
        model=handbook.slug, messages=[{"role": "user", "content": "Do taxi rides need a receipt?"}])

    prompt, completion_tokens = _scripted_usage(generator.requests[-1], "Taxi rides need a receipt [1].")
    assert generator.requests[-1]["stream_options"] == {"include_usage": True}
    assert prompt > 20  # the passages and instructions, not just the caller's six words
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt, completion_tokens)
    assert completion.usage.total_tokens == prompt + completion_tokens


def test_a_stream_sends_usage_last_only_when_asked(client, handbook, generator):
    question = [{"role": "user", "content": "Do taxi rides need a receipt?"}]
    plain = list(client.chat.completions.create(model=handbook.slug, stream=True, messages=question))
    asked = list(client.chat.completions.create(model=handbook.slug, stream=True, messages=question,
                                                stream_options={"include_usage": True}))

    assert all(chunk.usage is None and chunk.choices for chunk in plain)
    assert asked[-1].choices == [] and asked[-1].usage.completion_tokens == len(
        [c for c in asked if c.choices and c.choices[0].delta.content])
    assert all(chunk.choices for chunk in asked[:-1])


def test_no_usage_when_the_generator_reports_none(client, handbook, generator, settings):
    with scripted_generator(lambda messages: "No counts here.") as (url, scripted):
        settings.GENERATOR_URL = url
        scripted.report_usage = False
        completion = client.chat.completions.create(
            model=handbook.slug, messages=[{"role": "user", "content": "Do taxi rides need a receipt?"}])

    assert completion.choices[0].message.content == "No counts here." and completion.usage is None


def test_a_generator_that_refuses_stream_options_still_answers(client, handbook, generator):
    generator.refuse_stream_options = True

    completion = client.chat.completions.create(
        model=handbook.slug, messages=[{"role": "user", "content": "Do taxi rides need a receipt?"}])

    assert completion.choices[0].message.content == "Taxi rides need a receipt [1]." and completion.usage is None
    assert "stream_options" in generator.requests[-2] and "stream_options" not in generator.requests[-1]


def test_earlier_messages_make_a_follow_up_that_is_rewritten(client, handbook, generator):
    client.chat.completions.create(model=handbook.slug, messages=[
        {"role": "user", "content": "Are train tickets reimbursed?"},
        {"role": "assistant", "content": "Yes, in second class [1]."},
        {"role": "user", "content": "and taxis?"},
    ])
    rewrite = generator.requests[0]["messages"]
    assert rewrite[0]["content"].startswith("Rewrite") and "User: Are train tickets reimbursed?" in rewrite[1]["content"]


def test_unknown_model_wrong_key_and_bad_messages_are_openai_errors(client, handbook, live_server):
    with pytest.raises(openai.NotFoundError, match="that you may read") as unknown:
        client.chat.completions.create(model="nowhere", messages=[{"role": "user", "content": "hi"}])
    assert (unknown.value.type, unknown.value.code) == ("invalid_request_error", "model_not_found")
    with pytest.raises(openai.BadRequestError, match="last message must be the user's question") as last:
        client.chat.completions.create(model=handbook.slug, messages=[{"role": "assistant", "content": "hi"}])
    assert last.value.param == "messages"
    with pytest.raises(openai.BadRequestError, match="messages: This list may not be empty") as empty:
        client.chat.completions.create(model=handbook.slug, messages=[])
    assert (empty.value.type, empty.value.param) == ("invalid_request_error", "messages")
    stranger = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="Invalid token.*create one in the admin") as wrong_key:
        stranger.models.list()
    assert (wrong_key.value.type, wrong_key.value.code) == ("invalid_request_error", "invalid_api_key")


def test_an_endpoint_we_do_not_serve_is_an_openai_not_found(client):
    with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(POST /v1/embeddings\).*/v1/chat/completions"):
        client.embeddings.create(model="handbook", input="taxi")


@pytest.mark.parametrize("method, path, headers, status, code", [
    ("get", "/v1/models", {}, 401, "invalid_api_key"),
    ("post", "/v1/chat/completions", {"HTTP_AUTHORIZATION": "Bearer "}, 401, "invalid_api_key"),
    ("get", "/v1/chat/completions", {"HTTP_AUTHORIZATION": "Bearer KEY"}, 405, None),
    ("post", "/v1/chat/completions", {"HTTP_AUTHORIZATION": "Bearer KEY", "content_type": "application/json",
                                      "data": "{not json"}, 400, None),
    ("delete", "/v1/files/file-1", {}, 404, None),
])
def test_every_v1_error_is_in_openais_shape(db, method, path, headers, status, code):
    key = Token.objects.create(user=User.objects.create_user("reader", password="pw")).key
    headers = {name: value.replace("KEY", key) for name, value in headers.items()}
    response = getattr(Client(), method)(path, **headers)
    assert response.status_code == status and response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["type"], error["code"]) == ("invalid_request_error", code)


def test_an_internal_error_is_an_openai_server_error_and_is_logged(client, handbook, monkeypatch, caplog):
    def broken(**kwargs):
        raise RuntimeError("a bug in the pipeline")

    monkeypatch.setattr("ragapp.api.openai_compat.question_answer_stream", broken)
    with pytest.raises(openai.InternalServerError, match="internal error, recorded in its log") as failed:
        client.chat.completions.create(model=handbook.slug, messages=[{"role": "user", "content": "hi"}])
    assert (failed.value.status_code, failed.value.body["type"]) == (500, "server_error")
    assert "a bug in the pipeline" in caplog.text and "a bug in the pipeline" not in str(failed.value)
