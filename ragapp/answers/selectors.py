"""What a question names, looked up for the user who asks: the collection it reads, the conversation it continues."""

from ragapp.answers.errors import AnswerError, CollectionNotFound, ConversationNotFound
from ragapp.answers.models import Conversation
from ragapp.documents.models import Collection
from ragapp.documents.selectors import collection_readable_by


def collection_for_reader(*, user, reference: Collection | int | str | None = None) -> Collection:
    """The collection `reference` names (itself, or its id, slug or name), if `user` may read it.

    One that exists but is not readable is not found either: no hint that it exists. Without a
    reference: the user's only readable collection.
    """
    readable = collection_readable_by(user=user)
    if reference in (None, ""):
        if readable.count() != 1:
            raise AnswerError("Choose a collection: you may read several (or none).")
        return readable.get()
    if isinstance(reference, Collection):
        match = readable.filter(pk=reference.pk).first()
    else:
        reference = str(reference)
        match = ((readable.filter(pk=reference).first() if reference.isdigit() else None)
                 or readable.filter(slug=reference).first() or readable.filter(name=reference).first())
    if match is None:
        label = reference.name if isinstance(reference, Collection) else reference
        raise CollectionNotFound(f"No collection {label!r} that you may read.")
    return match


def conversation_for_user(*, user, reference: Conversation | int | str) -> Conversation:
    """`user`'s own conversation that `reference` names (itself or its id); another's is not found."""
    conversation_id = reference.pk if isinstance(reference, Conversation) else reference
    conversation = None
    if str(conversation_id).isdigit():
        conversation = Conversation.objects.filter(pk=conversation_id, user=user).select_related("collection").first()
    if conversation is None:
        raise ConversationNotFound(f"No conversation {conversation_id} of yours.")
    return conversation


def ask_target(*, user, collection=None, conversation=None) -> tuple[Collection, Conversation | None]:
    """The collection an ask reads and the conversation it continues (None: a new one).

    A conversation, when named, decides the collection. Either way the read rule is checked here,
    once: a user may no longer read the collection of their own earlier conversation.
    """
    if conversation not in (None, ""):
        conversation = conversation_for_user(user=user, reference=conversation)
        return collection_for_reader(user=user, reference=conversation.collection), conversation
    return collection_for_reader(user=user, reference=collection), None
