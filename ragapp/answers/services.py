"""A question -> a stored, cited answer: rewrite, retrieve, rerank, prompt, generate.

`question_answer_stream` yields events as the stages finish (the chat UI, the REST API's
server-sent events and the OpenAI-compatible endpoint all read the same events);
`question_answer` runs it to the end. Each stage's time is kept on the answer.

Events, in order (plain dicts, ready for JSON):
  {"event": "start", "conversation": id, "collection": slug, "question_message": id}
  {"event": "passages", "standalone_question", "reranked", "notice", "passages": [...]}
  {"event": "token", "text": str}                      (zero or more)
  {"event": "done", ...}                               (the answer as serializers.AnswerSerializer renders it)
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.db.models import prefetch_related_objects

from ragapp.answers import generator
from ragapp.answers.models import Citation, Conversation, Feedback, Message
from ragapp.answers.prompt import Passage, answer_prompt, citations_check, rewrite_prompt, rewritten_question
from ragapp.answers.capacity import answer_slot, retrieval_slot
from ragapp.answers.errors import AnswerError
from ragapp.answers.selectors import ask_target
from ragapp.answers.serializers import AnswerSerializer, PassageSerializer
from ragapp.documents.models import Collection
from ragapp.retrieval.rerank_client import RankedCandidate, candidates_rerank
from ragapp.retrieval.selectors import chunk_search

HISTORY_TURNS = 6  # earlier messages shown to the rewriter
REWRITE_MAX_TOKENS = 96


FEEDBACK_RATINGS = {"up": Feedback.Rating.UP, "1": Feedback.Rating.UP, "down": Feedback.Rating.DOWN, "-1": Feedback.Rating.DOWN}


def feedback_record(*, message: Message, user, rating, comment: str = "") -> Feedback:
    """Store `user`'s rating of an answer ('up' or 'down'; 1 and -1 too), replacing an earlier one."""
    value = FEEDBACK_RATINGS.get(str(rating).strip().lower())
    if value is None:
        raise AnswerError("Rate the answer 'up' or 'down'.")
    feedback, _ = Feedback.objects.update_or_create(
        message=message, user=user, defaults={"rating": value, "comment": (comment or "").strip()[:4000]},
    )
    return feedback


@dataclass
class _Run:
    """What one answer gathers on its way, for the stored message and the final event."""

    started: float = field(default_factory=time.perf_counter)
    timings: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)  # the generator's token counts for the answer
    notices: list[str] = field(default_factory=list)
    no_answer_explained: bool = False  # a notice already says why there is no generated text

    def lap(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[stage] = round(now - since, 4)
        return now


def question_answer(*, user, question: str, collection=None, conversation=None) -> Message:
    """Answer `question` to the end and return the stored answer message (arguments as question_answer_stream's)."""
    done = None
    for event in question_answer_stream(user=user, question=question, collection=collection, conversation=conversation):
        done = event
    return Message.objects.get(pk=done["message"])


def question_answer_stream(*, user, question: str, collection=None, conversation=None,
                           history: list[tuple[str, str]] | None = None) -> Iterator[dict]:
    """Answer `question` in `collection` (or continue `conversation`), yielding events as stages finish.

    `collection` is a Collection or its id, slug or name; `conversation` a Conversation or its id.
    Both are looked up for `user` here, so every entry point checks the read rule the same way.
    `history` gives earlier (role, text) turns of a conversation kept elsewhere (an OpenAI client's messages)."""
    question = (question or "").strip()
    if not question:
        raise AnswerError("The question is empty: type a question.")
    collection, conversation = ask_target(user=user, collection=collection, conversation=conversation)
    history = _history(conversation) if conversation else (history or [])[-HISTORY_TURNS:]
    with answer_slot():  # refused before anything is stored when the process is writing its limit
        yield from _answer_events(user, question, collection, conversation, history)


def _answer_events(user, question: str, collection: Collection, conversation: Conversation | None,
                   history: list[tuple[str, str]]) -> Iterator[dict]:
    run = _Run()
    with transaction.atomic():
        conversation = conversation or Conversation.objects.create(user=user, collection=collection, title=question[:200])
        asked = Message.objects.create(conversation=conversation, role=Message.Role.USER, content=question)
    yield {"event": "start", "conversation": conversation.pk, "collection": collection.slug, "question_message": asked.pk}

    standalone = _standalone_question(question, history, run)
    ranked, reranked = _passages_ranked(standalone, collection, user, run)
    passages = [_passage(number, item) for number, item in enumerate(ranked, 1)]
    yield {"event": "passages", "standalone_question": standalone, "reranked": reranked,
           "notice": " ".join(run.notices), "passages": _passages_json(passages, ranked)}

    answer_parts: list[str] = []
    prompt = None
    if passages:
        since = time.perf_counter()
        prompt = answer_prompt(question=standalone, passages=passages, count_tokens=generator.token_counter(),
                               context_tokens=settings.GENERATOR_CONTEXT_TOKENS, answer_tokens=settings.GENERATOR_MAX_TOKENS)
        run.lap("prompt", since)
        try:
            for text in _generate(prompt.messages, run):
                answer_parts.append(text)
                yield {"event": "token", "text": text}
        except GeneratorExit:  # the reader went away: keep what was written, say it was cut short
            run.notices.append("The answer was interrupted before it finished.")
            _answer_store(conversation, "".join(answer_parts), standalone, reranked, ranked, prompt, run)
            raise
    else:
        run.notices.append(f"Nothing in {collection.name} matches the question.")
        run.no_answer_explained = True
    message = _answer_store(conversation, "".join(answer_parts), standalone, reranked, ranked, prompt, run)
    yield _done_event(message)


def primed(events: Iterator[dict]) -> Iterator[dict]:
    """Run an event stream to its first event now, so bad input fails before a response starts
    streaming; closing the result closes `events` (a reader who leaves still ends the answer)."""
    first = next(events)

    def replay():
        yield first
        yield from events

    return replay()


def passages_search(*, user, query: str, collection: Collection, top_n: int | None = None) -> dict:
    """Retrieval and reranking without generation: the best passages for `query`, as the APIs return them."""
    query = (query or "").strip()
    if not query:
        raise AnswerError("The query is empty: type what to search for.")
    run = _Run()
    ranked, reranked = _passages_ranked(query, collection, user, run, top_n=top_n)
    results = _passages_json([_passage(number, item) for number, item in enumerate(ranked, 1)], ranked)
    run.timings["total"] = round(time.perf_counter() - run.started, 4)
    return {"reranked": reranked, "notice": " ".join(run.notices), "results": results, "timings": run.timings}


def _history(conversation: Conversation) -> list[tuple[str, str]]:
    messages = list(conversation.messages.order_by("-created_at", "-id")[:HISTORY_TURNS])
    return [(message.role, message.content) for message in reversed(messages) if message.content]


def _standalone_question(question: str, history: list[tuple[str, str]], run: _Run) -> str:
    """A follow-up rewritten to stand alone, so retrieval sees what it refers to."""
    if not history or not generator.generator_configured():
        return question
    since = time.perf_counter()
    try:
        reply = generator.chat_complete(messages=rewrite_prompt(history=history, question=question),
                                        max_tokens=REWRITE_MAX_TOKENS)
        standalone = rewritten_question(reply, question=question)
    except generator.GeneratorUnavailable as error:
        run.notices.append(f"The follow-up could not be rewritten ({error}); it was searched as asked.")
        standalone = question
    run.lap("rewrite", since)
    return standalone


def _passages_ranked(question: str, collection: Collection, user, run: _Run,
                     top_n: int | None = None) -> tuple[list[RankedCandidate], bool]:
    since = time.perf_counter()
    with retrieval_slot():
        candidates = chunk_search(query=question, collection=collection, reader=user, k=settings.RETRIEVAL_CANDIDATES)
    since = run.lap("retrieve", since)
    top_n = top_n or settings.RERANK_TOP_N
    if not collection.reranking_enabled:
        run.notices.append("Reranking is switched off for this collection: passages are in retrieval order.")
        ranked = [RankedCandidate(c, rank, None, c.score) for rank, c in enumerate(candidates[:top_n], 1)]
        return ranked, False
    outcome = candidates_rerank(query=question, candidates=candidates, top_n=top_n,
                                fusion_weight=collection.rerank_fusion_weight)
    run.lap("rerank", since)
    if not outcome.reranked:
        run.notices.append(f"Reranking was skipped: {outcome.reason.rstrip('.')}. Passages are in retrieval order.")
    return outcome.ranked, outcome.reranked


def _generate(messages: list[dict], run: _Run) -> Iterator[str]:
    """The generator's text as it comes; on failure a notice instead (passages are still shown)."""
    since = time.perf_counter()
    first = True
    try:
        for text in generator.chat_stream(messages=messages, usage=run.usage):
            if first:
                run.timings["first_token"] = round(time.perf_counter() - run.started, 4)
                first = False
            yield text
    except generator.GeneratorUnavailable as error:
        run.notices.append(f"No answer was generated: {error} The most relevant passages are shown instead.")
        run.no_answer_explained = True
    run.lap("generate", since)


def _passage(number: int, item: RankedCandidate) -> Passage:
    chunk = item.candidate.chunk
    return Passage(number=number, title=chunk.document.title or chunk.document.original_filename,
                   page=chunk.page, text=chunk.text)


def _passages_json(passages: list[Passage], ranked: list[RankedCandidate]) -> list[dict]:
    pairs = [{"passage": passage, "ranked": item} for passage, item in zip(passages, ranked)]
    return PassageSerializer(pairs, many=True).data


@transaction.atomic
def _answer_store(conversation: Conversation, answer: str, standalone: str, reranked: bool,
                  ranked: list[RankedCandidate], prompt, run: _Run) -> Message:
    sent = prompt.passages if prompt else []
    generated = bool(answer.strip())
    cited = citations_check(answer, passage_count=len(sent))[0] if generated else []
    if prompt and prompt.dropped:
        run.notices.append(f"{prompt.dropped} lower-ranked passage(s) did not fit the generator's context and were left out.")
    if not generated and not run.no_answer_explained:
        run.notices.append("The generator returned no text. The most relevant passages are shown instead.")
    run.timings["total"] = round(time.perf_counter() - run.started, 4)
    message = Message.objects.create(
        conversation=conversation, role=Message.Role.ASSISTANT, content=answer, standalone_question=standalone,
        reranked=reranked, notice=" ".join(run.notices), generated=generated, timings=run.timings, usage=run.usage,
    )
    # Every passage shown is stored: those sent (numbered as in the prompt), then any left out.
    shown = {passage.number: passage for passage in sent}
    Citation.objects.bulk_create([
        _citation(message, item, shown.get(number) or _passage(number, item), sent=number in shown, cited=number in cited)
        for number, item in enumerate(ranked, 1)
    ])
    conversation.save(update_fields=["updated_at"])
    return message


def _citation(message: Message, item: RankedCandidate, passage: Passage, *, sent: bool, cited: bool) -> Citation:
    chunk = item.candidate.chunk
    return Citation(
        message=message, number=passage.number, chunk_id=chunk.pk, document_id=chunk.document.pk,
        document_title=passage.title, page=passage.page, text=passage.text, score=item.score,
        rerank_score=item.rerank_score, sent=sent, cited=cited,
    )


def _done_event(message: Message) -> dict:
    prefetch_related_objects([message], "citations")  # read once, not by each field that lists them
    return {"event": "done", **AnswerSerializer(message).data}


def fallback_text(answer: dict) -> str:
    """What to say when no answer was generated: the reason, then the best passages."""
    lines = [answer["notice"] or "No answer was generated."]
    for citation in answer["citations"]:
        page = f", page {citation['page']}" if citation["page"] else ""
        lines.append(f"[{citation['number']}] {citation['title']}{page}: {citation['text'][:500]}")
    return "\n\n".join(lines)
