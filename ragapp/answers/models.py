"""Conversations with their questions, answers, the passages each answer cited, and feedback."""

from django.conf import settings
from django.db import models

from ragapp.documents.models import Chunk, Collection, Document


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]

    def __str__(self) -> str:
        return self.title


class Message(models.Model):
    """One turn: the user's question, or the answer to it with its citations and timings."""

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField()
    # For answers: the question as retrieval saw it (a follow-up rewritten to stand alone).
    standalone_question = models.TextField(blank=True)
    reranked = models.BooleanField(default=False)
    notice = models.TextField(blank=True, help_text="What went wrong or was skipped, shown with the answer.")
    generated = models.BooleanField(default=False, help_text="False: no generator answered; passages only.")
    timings = models.JSONField(default=dict, blank=True, help_text="Seconds per stage.")
    usage = models.JSONField(
        default=dict, blank=True,
        help_text="Tokens the generator reported for the answer: prompt_tokens, completion_tokens (empty if it did not say).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"


class Citation(models.Model):
    """A passage shown with an answer as [number]. `cited` says whether the answer referred to it.

    The text, title and page are copied: re-ingesting a document replaces its chunks, and an old
    answer must still show what it read.
    """

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="citations")
    number = models.PositiveIntegerField()
    chunk = models.ForeignKey(Chunk, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    document = models.ForeignKey(Document, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    document_title = models.CharField(max_length=500)
    page = models.PositiveIntegerField(null=True, blank=True)
    text = models.TextField()
    score = models.FloatField(help_text="The order's score: reranker fused with retrieval, or retrieval alone.")
    rerank_score = models.FloatField(null=True, blank=True)
    sent = models.BooleanField(default=True, help_text="False: ranked but left out to fit the generator's context.")
    cited = models.BooleanField(default=False)

    class Meta:
        ordering = ["message", "number"]
        constraints = [models.UniqueConstraint(fields=["message", "number"], name="citation_number_unique")]

    def __str__(self) -> str:
        return f"[{self.number}] {self.document_title}"


class Feedback(models.Model):
    """A user's thumbs up or down on an answer; fine-tuning the reranker can learn from it."""

    class Rating(models.IntegerChoices):
        DOWN = -1
        UP = 1

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    rating = models.SmallIntegerField(choices=Rating.choices)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "user"], name="feedback_one_per_user")]

    def __str__(self) -> str:
        return f"{self.get_rating_display()} on message {self.message_id}"
