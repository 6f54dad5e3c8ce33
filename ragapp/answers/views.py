"""The chat UI: conversations, a streamed answer, citations that open their passage, feedback."""

import json

from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_POST

from ragapp.answers.models import Conversation, Message
from ragapp.answers.rendering import answer_html
from ragapp.answers.errors import AnswerError
from ragapp.answers.serializers import CitationSerializer
from ragapp.answers.services import feedback_record, primed, question_answer_stream
from ragapp.core.streaming import unbuffered_stream
from ragapp.documents.selectors import collection_readable_by

MAX_QUESTION_CHARACTERS = 4000


@require_GET
@login_required
def chat(request, conversation_id: int | None = None):
    conversation = None
    if conversation_id is not None:
        conversation = get_object_or_404(Conversation, pk=conversation_id, user=request.user)
    context = {
        "conversations": Conversation.objects.filter(user=request.user)[:100],
        "collections": collection_readable_by(user=request.user),
        "conversation": conversation,
        "turns": _turns(conversation) if conversation else [],
    }
    return render(request, "answers/chat.html", context)


def _turns(conversation: Conversation) -> list[dict]:
    """Messages with what the template needs: answers rendered safe, citations as JSON for the panel."""
    turns = []
    for message in conversation.messages.prefetch_related("citations", "feedback"):
        citations = list(message.citations.all())
        sent = sum(citation.sent for citation in citations)
        turns.append({
            "message": message,
            "html": answer_html(message.content, sent=sent) if message.role == Message.Role.ASSISTANT else "",
            "citations": CitationSerializer(citations, many=True).data,
            "rating": next((f.rating for f in message.feedback.all() if f.user_id == conversation.user_id), 0),
        })
    return turns


@require_POST
@login_required
def ask(request):
    """Stream the answer as newline-delimited JSON events (see answers.services)."""
    question = request.POST.get("question", "").strip()[:MAX_QUESTION_CHARACTERS]
    try:
        events = primed(question_answer_stream(user=request.user, question=question,
                                               collection=request.POST.get("collection"),
                                               conversation=request.POST.get("conversation")))
    except AnswerError as error:
        return JsonResponse({"error": str(error)}, status=error.status, headers=error.headers())
    return unbuffered_stream(_lines(events), "application/x-ndjson; charset=utf-8")


def _lines(events):
    for event in events:
        if event["event"] == "done":
            sent = sum(citation["sent"] for citation in event["citations"])
            event = {**event, "html": answer_html(event["answer"], sent=sent)}
        yield json.dumps(event, ensure_ascii=False) + "\n"


@require_POST
@login_required
def feedback(request, message_id: int):
    message = Message.objects.filter(pk=message_id, conversation__user=request.user, role=Message.Role.ASSISTANT).first()
    if message is None:
        raise Http404("No such answer of yours.")
    try:
        recorded = feedback_record(message=message, user=request.user, rating=request.POST.get("rating", ""),
                                   comment=request.POST.get("comment", ""))
    except AnswerError as error:
        return JsonResponse({"error": str(error)}, status=error.status)
    return JsonResponse({"rating": "up" if recorded.rating > 0 else "down", "comment": recorded.comment})
