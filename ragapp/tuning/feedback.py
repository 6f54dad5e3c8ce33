"""Users' feedback -> training groups for the reranker.

An answer rated up vouches for the passages it cited: they are the positives of its question,
and the question's hybrid top chunks from other documents are the hard negatives (as
`train_reranker` mines them from a BEIR dataset). An answer rated down says little about which
passage was wrong (the generator may be at fault), so it gives no group.
"""

import time

from tqdm import tqdm

from ragapp.answers.models import Feedback, Message
from ragapp.documents.models import Collection
from ragapp.retrieval.selectors import chunk_search
from ragapp.tuning.training_data import MINING_DEPTH, MinedGroup, MiningResult
from reranking.groups import TrainingGroup


def feedback_groups_mine(*, collection: Collection | None = None, depth: int = MINING_DEPTH,
                         progress: bool = True) -> MiningResult:
    """One group per answer rated up that cites a passage (in `collection`, or all collections)."""
    started = time.perf_counter()
    answers = Message.objects.filter(
        role=Message.Role.ASSISTANT, feedback__rating=Feedback.Rating.UP, citations__cited=True,
    ).distinct().select_related("conversation__collection").prefetch_related("citations")
    if collection is not None:
        answers = answers.filter(conversation__collection=collection)
    groups, retrieved, missed = [], 0, 0
    for message in tqdm(answers, desc="Mining hard negatives from feedback", unit="answer", disable=not progress):
        group, found, cited = answer_group(message, depth)
        groups.append(MinedGroup(query_id=f"message-{message.pk}", group=group))
        retrieved, missed = retrieved + found, missed + cited - found
    return MiningResult(groups=groups, positives_retrieved=retrieved, positives_missed=missed,
                        queries_without_negatives=sum(not mined.group.negatives for mined in groups),
                        seconds=time.perf_counter() - started)


def answer_group(message: Message, depth: int) -> tuple[TrainingGroup, int, int]:
    """The group of one rated answer, how many of its cited chunks retrieval finds again, and how many it cited."""
    cited = [citation for citation in message.citations.all() if citation.cited]
    positives = list(dict.fromkeys(citation.text for citation in cited))
    cited_documents = {citation.document_id for citation in cited}
    question = message.standalone_question or message.content
    candidates = chunk_search(query=question, collection=message.conversation.collection, reader=None, k=depth)
    negatives = list(dict.fromkeys(
        candidate.chunk.text for candidate in candidates
        if candidate.chunk.document.id not in cited_documents and candidate.chunk.text not in positives
    ))
    found = len({candidate.chunk.id for candidate in candidates} & {citation.chunk_id for citation in cited})
    return TrainingGroup(query=question, positives=positives, negatives=negatives), found, len(cited)
