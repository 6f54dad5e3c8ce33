"""The whole pipeline against a REAL vLLM server (CPU build, SmolLM2-135M-Instruct), as deployed.

The server starts once per test session (the `local_vllm` fixture in tests/conftest.py); the first run installs it
into the cache (minutes). SmolLM2-135M is tiny: these tests check the plumbing (prompt accepted,
tokens streamed, answer stored, OpenAI-compatible endpoint), not the answer's wisdom.
"""

import openai
import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from ragapp.answers.services import question_answer_stream

pytestmark = pytest.mark.vllm


@pytest.fixture
def real_generator(settings, local_vllm):
    settings.GENERATOR_URL, settings.GENERATOR_MODEL = local_vllm.url, local_vllm.model
    settings.GENERATOR_TOKENIZER = str(local_vllm.model_dir)
    settings.GENERATOR_CONTEXT_TOKENS, settings.GENERATOR_MAX_TOKENS = local_vllm.context_tokens, 64
    settings.RERANKER_URLS = []
    return local_vllm


@pytest.fixture
def reader(collection, ingest):
    ingest(collection, "router.txt", b"To reset the router, hold the reset button for ten seconds. "
                                     b"The light turns green when the router is ready.")
    ingest(collection, "coffee.txt", b"The coffee machine is descaled every Friday by the facilities staff.")
    user = User.objects.create_user("reader", password="pw")
    collection.readers.add(user)
    return user


@pytest.mark.django_db
def test_a_question_is_answered_by_vllm_streamed_and_stored(real_generator, collection, reader):
    events = list(question_answer_stream(user=reader, question="How do I reset the router?", collection=collection))
    tokens = [event["text"] for event in events if event["event"] == "token"]
    done = events[-1]
    assert len(tokens) >= 3, done["notice"]  # streamed token by token
    assert done["generated"] and done["answer"] == "".join(tokens) and done["answer"].strip()
    assert done["citations"][0]["title"] == "router" and done["citations"][0]["sent"]
    assert {"retrieve", "prompt", "first_token", "generate", "total"} <= set(done["timings"])
    assert done["timings"]["first_token"] < done["timings"]["total"]
    assert "Reranking was skipped" in done["notice"]
    # vLLM's own token counts: the prompt holds the passage, the completion what was streamed.
    assert done["usage"]["prompt_tokens"] > 50 and 0 < done["usage"]["completion_tokens"] <= 64


def test_the_openai_endpoint_serves_vllm_answers_streaming_and_not(real_generator, live_server, collection, reader):
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=Token.objects.create(user=reader).key, max_retries=0)
    messages = [{"role": "user", "content": "When is the coffee machine descaled?"}]
    completion = client.chat.completions.create(model=collection.slug, messages=messages)
    assert completion.choices[0].message.content.strip()
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 50
    assert completion.model_extra["rag"]["generated"] and completion.model_extra["citations"][0]["title"] == "coffee"
    chunks = list(client.chat.completions.create(model=collection.slug, messages=messages, stream=True))
    assert sum(1 for chunk in chunks if chunk.choices[0].delta.content) >= 3
    assert chunks[-1].model_extra["rag"]["generated"]
