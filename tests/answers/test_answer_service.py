"""question -> rewrite -> retrieve -> rerank -> prompt -> generate -> stored answer with citations.

The generator here is a scripted OpenAI-compatible server (tests/answers/scripted_generator.py):
these tests need exact replies. The end-to-end test against a real vLLM is test_vllm_end_to_end.py.
"""

import json
import os

import httpx
import pytest
from django.contrib.auth.models import User

from ragapp.answers.models import Citation, Conversation, Message
from ragapp.answers.errors import AnswerError, ConversationNotFound, ServerBusy
from ragapp.answers.selectors import conversation_for_user
from ragapp.answers.serializers import AnswerSerializer
from ragapp.answers.services import passages_search, primed, question_answer, question_answer_stream
from ragapp.retrieval.selectors import chunk_search
from reranking.server import Settings, create_app
from reranking.synthetic import build_preset_cross_encoder
from tests.answers.scripted_generator import scripted_generator
from tests.reranking.helpers import running_server, wait_until_healthy

pytestmark = pytest.mark.django_db

POLICIES = {
    "travel.txt": "Train tickets are reimbursed in second class. Taxi rides need a receipt from the driver.",
    "vacation.txt": "Employees receive twenty-five days of paid vacation. Unused days expire at the end of March.",
    "aspirin.txt": "Aspirin relieves pain and fever. Its side effects include stomach bleeding and ringing in the ears.",
}


@pytest.fixture
def policies(collection, ingest):
    return {name: ingest(collection, name, text.encode()) for name, text in POLICIES.items()}


@pytest.fixture
def reader(collection):
    user = User.objects.create_user("reader", password="pw")
    collection.readers.add(user)
    return user


@pytest.fixture
def no_reranker(settings):
    settings.RERANKER_URLS = []


def answer_with(settings, reply, **options):
    """Context: GENERATOR_URL pointed at a scripted generator that answers with `reply(messages)`."""
    manager = scripted_generator(reply, **options)

    class Configured:
        def __enter__(self):
            url, scripted = manager.__enter__()
            settings.GENERATOR_URL, settings.GENERATOR_MODEL = url, ""
            return scripted

        def __exit__(self, *exc):
            return manager.__exit__(*exc)

    return Configured()


def test_an_answer_is_stored_with_its_citations_and_the_time_of_each_stage(settings, collection, policies, reader, no_reranker):
    with answer_with(settings, lambda messages: "Taxi rides need a receipt [1].") as scripted:
        message = question_answer(user=reader, question="Do taxi rides need a receipt?", collection=collection)
    assert message.role == Message.Role.ASSISTANT and message.generated
    assert message.content == "Taxi rides need a receipt [1]."
    citations = list(message.citations.all())
    assert citations[0].number == 1 and citations[0].cited and citations[0].sent
    assert citations[0].document.original_filename == "travel.txt" and "receipt" in citations[0].text
    assert not any(c.cited for c in citations[1:])
    assert set(message.timings) >= {"retrieve", "prompt", "first_token", "generate", "total"}
    prompt = scripted.requests[0]["messages"][1]["content"]
    assert '<passage number="1" title="travel"' in prompt and "Do taxi rides need a receipt?" in prompt
    assert message.conversation.messages.first().content == "Do taxi rides need a receipt?"


def test_events_stream_tokens_between_the_passages_and_the_end(settings, collection, policies, reader, no_reranker):
    with answer_with(settings, lambda messages: "Twenty-five days of paid vacation [1]."):
        events = list(question_answer_stream(user=reader, question="How many vacation days?", collection=collection))
    kinds = [event["event"] for event in events]
    assert kinds[:2] == ["start", "passages"] and kinds[-1] == "done"
    assert kinds.count("token") >= 4
    assert "".join(e["text"] for e in events if e["event"] == "token") == events[-1]["answer"]
    assert events[1]["passages"][0]["title"] == "vacation"


def test_a_citation_number_that_names_no_passage_sent_is_reported_not_cited(settings, collection, policies, reader, no_reranker):
    with answer_with(settings, lambda messages: "Receipts are needed [1], see also [7] and [0]."):
        message = question_answer(user=reader, question="taxi receipt", collection=collection)
    events_done = message.citations.filter(cited=True).values_list("number", flat=True)
    assert list(events_done) == [1]
    assert AnswerSerializer(message).data["invalid_citations"] == [0, 7]


def test_generator_down_shows_the_passages_flagged_instead_of_an_answer(settings, collection, policies, reader, no_reranker):
    settings.GENERATOR_URL, settings.GENERATOR_MODEL = "http://127.0.0.1:9/v1", "any"
    message = question_answer(user=reader, question="taxi receipt", collection=collection)
    assert not message.generated and message.content == ""
    assert "No answer was generated" in message.notice and "cannot be reached" in message.notice
    assert message.citations.count() == 3 and message.citations.first().document.original_filename == "travel.txt"


def test_while_serve_prepares_the_local_generator_the_notice_says_so(settings, collection, policies, reader, no_reranker, tmp_path):
    settings.GENERATOR_URL, settings.GENERATOR_MODEL = "http://127.0.0.1:9/v1", "any"
    settings.SERVE_STATE_FILE = tmp_path / "serve-state.json"
    settings.SERVE_STATE_FILE.write_text(json.dumps(
        {"supervisor_pid": os.getpid(), "children": {"generator": {"state": "preparing", "detail": ""}}}))
    message = question_answer(user=reader, question="taxi receipt", collection=collection)
    assert "The local generator is being prepared" in message.notice and "cannot be reached" not in message.notice
    assert message.citations.count() == 3


def test_a_reader_who_leaves_frees_the_answer_slot(settings, collection, policies, reader, no_reranker):
    settings.ANSWER_STREAMS_PER_PROCESS = 1
    with scripted_generator(lambda messages: "Keep the receipt [1].") as (url, _):
        settings.GENERATOR_URL, settings.GENERATOR_MODEL = url, ""
        first = primed(question_answer_stream(user=reader, question="taxi receipt", collection=collection))
        with pytest.raises(ServerBusy):
            next(question_answer_stream(user=reader, question="taxi receipt", collection=collection))
        first.close()
        assert question_answer(user=reader, question="taxi receipt", collection=collection).generated


def test_a_generator_error_status_is_a_plain_notice(settings, collection, policies, reader, no_reranker):
    with answer_with(settings, lambda messages: "unused", status=500):
        message = question_answer(user=reader, question="taxi receipt", collection=collection)
    assert not message.generated and "refused the request (500)" in message.notice


def test_without_a_generator_configured_the_reply_says_so(settings, collection, policies, reader, no_reranker):
    settings.GENERATOR_URL = ""
    message = question_answer(user=reader, question="taxi receipt", collection=collection)
    assert not message.generated and "No generator is configured" in message.notice
    assert message.citations.exists()


def test_reranker_down_keeps_retrieval_order_and_says_why(settings, collection, policies, reader):
    settings.RERANKER_URLS = ["http://127.0.0.1:9"]
    with answer_with(settings, lambda messages: "A receipt [1]."):
        message = question_answer(user=reader, question="taxi receipt", collection=collection)
    assert not message.reranked and "Reranking was skipped" in message.notice and "127.0.0.1:9" in message.notice
    assert message.generated


def test_a_running_reranker_reorders_the_passages(settings, collection, policies, reader, tmp_path):
    model = build_preset_cross_encoder(tmp_path / "reranker", "tiny")
    with running_server(create_app(Settings(model=str(model), device="cpu"))) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            wait_until_healthy(client)
        settings.RERANKER_URLS = [url]
        result = passages_search(user=reader, query="taxi receipt", collection=collection)
    assert result["reranked"] and result["notice"] == ""
    assert all(passage["rerank_score"] is not None for passage in result["results"])
    assert "rerank" in result["timings"]


def test_reranking_switched_off_for_a_collection_is_said(settings, collection, policies, reader, no_reranker):
    collection.reranking_enabled = False
    collection.save()
    result = passages_search(user=reader, query="taxi receipt", collection=collection)
    assert not result["reranked"] and "switched off" in result["notice"]


def test_a_follow_up_is_rewritten_to_stand_alone_before_retrieval(settings, collection, policies, reader, no_reranker):
    def reply(messages):
        if messages[0]["content"].startswith("Rewrite"):
            return "What are the side effects of aspirin?"
        return "Stomach bleeding [1]."

    with answer_with(settings, reply) as scripted:
        first = question_answer(user=reader, question="What does aspirin relieve?", collection=collection)
        follow_up = question_answer(user=reader, question="and its side effects?", conversation=first.conversation)
    rewrite_request = scripted.requests[1]["messages"]  # [0] answered the first question
    assert "User: What does aspirin relieve?" in rewrite_request[1]["content"]
    assert follow_up.standalone_question == "What are the side effects of aspirin?"
    assert follow_up.citations.get(number=1).document.original_filename == "aspirin.txt"
    assert "rewrite" in follow_up.timings and follow_up.conversation_id == first.conversation_id


def test_a_question_with_no_matching_passage_is_answered_plainly(settings, collection, reader, no_reranker):
    settings.GENERATOR_URL = ""
    message = question_answer(user=reader, question="anything at all", collection=collection)
    assert not message.generated and "Nothing in Handbook matches" in message.notice


def test_an_empty_question_is_refused():
    with pytest.raises(AnswerError, match="empty"):
        next(question_answer_stream(user=None, question="  ", collection=None))


def test_a_user_without_rights_gets_nothing_from_the_collection(settings, collection, policies, no_reranker):
    outsider = User.objects.create_user("outsider", password="pw")
    with pytest.raises(AnswerError, match="No collection 'Handbook' that you may read"):
        next(question_answer_stream(user=outsider, question="taxi", collection=collection))
    # The SQL itself refuses too, for any caller that skipped the check.
    assert chunk_search(query="taxi receipt", collection=collection, reader=outsider) == []
    assert Conversation.objects.count() == 0


def test_citations_keep_their_text_after_the_document_is_re_ingested(settings, collection, policies, reader, no_reranker):
    settings.GENERATOR_URL = ""
    message = question_answer(user=reader, question="taxi receipt", collection=collection)
    from ragapp.documents.services import document_delete

    document_delete(document=policies["travel.txt"])
    citation = Citation.objects.get(message=message, number=1)
    assert citation.chunk is None and "receipt" in citation.text and citation.document_title == "travel"


def test_another_users_conversation_cannot_be_continued(settings, collection, policies, reader, no_reranker):
    settings.GENERATOR_URL = ""
    first = question_answer(user=reader, question="taxi receipt", collection=collection)
    other = User.objects.create_user("other")
    collection.readers.add(other)
    with pytest.raises(ConversationNotFound, match="No conversation"):
        conversation_for_user(user=other, reference=first.conversation_id)
    with pytest.raises(ConversationNotFound, match="No conversation"):
        next(question_answer_stream(user=other, question="and trains?", conversation=first.conversation_id))


def test_a_conversation_is_not_continued_once_its_collection_is_no_longer_readable(settings, collection, policies,
                                                                                  reader, no_reranker):
    settings.GENERATOR_URL = ""
    first = question_answer(user=reader, question="taxi receipt", collection=collection)
    collection.readers.remove(reader)
    with pytest.raises(AnswerError, match="that you may read"):
        next(question_answer_stream(user=reader, question="and trains?", conversation=first.conversation_id))
    assert first.conversation.messages.count() == 2



def test_an_answer_cut_short_by_a_reader_who_leaves_is_kept_with_a_notice(settings, collection, policies, reader, no_reranker):
    with answer_with(settings, lambda messages: "Taxi rides need a receipt from the driver [1]."):
        events = question_answer_stream(user=reader, question="taxi receipt", collection=collection)
        while next(events)["event"] != "token":
            pass
        events.close()  # what Django does when the client disconnects mid-stream
    answer = Message.objects.get(role=Message.Role.ASSISTANT)
    assert answer.content == "Taxi " and "interrupted" in answer.notice
    assert answer.citations.count() == 3
