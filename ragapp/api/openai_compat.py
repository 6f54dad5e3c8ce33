"""The whole RAG pipeline behind an OpenAI-compatible API: /v1/chat/completions and /v1/models.

`model` names a collection (slug or name); the last user message is the question and earlier
turns help rewrite a follow-up. The user's API token is the API key (`Authorization: Bearer
KEY`). Citations travel in an extra `citations` field: on the completion, and on the last
chunk of a stream. Errors use OpenAI's shape, {"error": {"message", "type", "code"}}.
"""

import json
import time

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from ragapp.answers.services import fallback_text, primed, question_answer_stream
from ragapp.api.errors import openai_error, openai_exception_handler
from ragapp.core.streaming import unbuffered_stream
from ragapp.documents.selectors import collection_readable_by


class ChatMessage(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant", "developer", "tool"])
    content = serializers.JSONField(help_text="Text, or a list of content parts of which the text parts are read.")


class StreamOptions(serializers.Serializer):
    include_usage = serializers.BooleanField(default=False, help_text="Send the token counts in a last chunk.")


class ChatCompletionRequest(serializers.Serializer):
    model = serializers.CharField(help_text="The collection to answer from (its slug or name; see /v1/models).")
    messages = ChatMessage(many=True, allow_empty=False)
    stream = serializers.BooleanField(default=False)
    stream_options = StreamOptions(required=False)


def message_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")
    return ""


class OpenAIView(APIView):
    """Every error in OpenAI's shape, DRF's own included (401, 405, invalid JSON): clients show its message."""

    def get_exception_handler(self):
        return openai_exception_handler


class ModelList(OpenAIView):
    @extend_schema(responses={200: dict}, description="The collections you may ask, listed as models.")
    def get(self, request):
        data = [{"id": collection.slug, "object": "model", "created": int(collection.created_at.timestamp()),
                 "owned_by": "ragapp", "name": collection.name} for collection in collection_readable_by(user=request.user)]
        return Response({"object": "list", "data": data})


class ChatCompletions(OpenAIView):
    @extend_schema(request=ChatCompletionRequest, responses={200: dict},
                   description="Chat completions answered by the RAG pipeline; citations in an extra `citations` field.")
    def post(self, request):
        body = ChatCompletionRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        turns = [(m["role"], message_text(m["content"])) for m in data["messages"] if m["role"] in ("user", "assistant")]
        if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
            return openai_error("The last message must be the user's question, with text.", status=400, param="messages")
        events = primed(question_answer_stream(user=request.user, question=turns[-1][1], collection=data["model"],
                                               history=turns[:-1]))
        start = next(events)
        completion_id, created, model = f"chatcmpl-{start['question_message']}", int(time.time()), start["collection"]
        if data["stream"]:
            include_usage = data.get("stream_options", {}).get("include_usage", False)
            return _stream(events, completion_id, created, model, include_usage=include_usage)
        *_, done = events
        answer = done["answer"] if done["generated"] else fallback_text(done)
        return Response({
            "id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            **_usage_field(done), "citations": done["citations"], "rag": _rag_fields(done),
        })


class UnknownEndpoint(OpenAIView):
    """Any other path under /v1/: OpenAI's 404 instead of Django's HTML page, with or without a key."""

    authentication_classes, permission_classes = [], []
    schema = None  # not an endpoint to document

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        raise NotFound(f"Invalid URL ({request.method} {request.path}): this server answers POST /v1/chat/completions "
                       "and GET /v1/models.")


def _stream(events, completion_id: str, created: int, model: str, *, include_usage: bool):
    def chunk(delta: dict | None, finish_reason=None, **extra) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def encode():
        yield chunk({"role": "assistant", "content": ""})
        for event in events:
            if event["event"] == "token":
                yield chunk({"content": event["text"]})
            elif event["event"] == "done":
                if not event["generated"]:
                    yield chunk({"content": fallback_text(event)})
                yield chunk({}, "stop", citations=event["citations"], rag=_rag_fields(event))
                if include_usage:  # as OpenAI does: a last chunk with no choices (usage null if unknown)
                    yield chunk(None, usage=_usage_field(event).get("usage"))
        yield "data: [DONE]\n\n"

    return unbuffered_stream(encode(), "text/event-stream; charset=utf-8")


def _usage_field(done: dict) -> dict:
    """OpenAI's usage object for the answer, from the generator's own counts; nothing when it gave none.

    The prompt is the one the generator read (instructions, passages and the question), not the
    caller's messages; a follow-up's rewrite is a separate, short call and is not counted."""
    usage = done.get("usage") or {}
    if usage.get("prompt_tokens") is None or usage.get("completion_tokens") is None:
        return {}
    return {"usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}}


def _rag_fields(done: dict) -> dict:
    keys = ("generated", "notice", "reranked", "standalone_question", "cited", "invalid_citations", "timings", "message")
    return {key: done[key] for key in keys}
