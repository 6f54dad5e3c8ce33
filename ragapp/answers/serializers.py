"""Answers as every reader gets them (the stream's events, the REST answer and search, the chat's history) and as the schema describes them."""

from rest_framework import serializers

from ragapp.answers.models import Citation, Message
from ragapp.answers.prompt import citations_check


class PassageSerializer(serializers.Serializer):
    """A passage ranked for the question, best first (search results; an answer's passages as they stream)."""

    # Renders {"passage": prompt.Passage, "ranked": rerank_client.RankedCandidate}.

    number = serializers.IntegerField(source="passage.number")
    chunk = serializers.IntegerField(source="ranked.candidate.chunk.pk")
    document = serializers.IntegerField(source="ranked.candidate.chunk.document.pk")
    title = serializers.CharField(source="passage.title")
    page = serializers.IntegerField(source="passage.page", allow_null=True)
    text = serializers.CharField(source="passage.text")
    score = serializers.FloatField(source="ranked.score")
    rerank_score = serializers.FloatField(source="ranked.rerank_score", allow_null=True)


class CitationSerializer(serializers.ModelSerializer):
    """A passage shown with an answer, numbered as the answer cites it."""

    chunk = serializers.IntegerField(source="chunk_id", allow_null=True,
                                     help_text="Null once the document was re-ingested or deleted; the text stays.")
    document = serializers.IntegerField(source="document_id", allow_null=True)
    title = serializers.CharField(source="document_title")
    sent = serializers.BooleanField(help_text="Sent to the generator (False: left out to fit).")
    cited = serializers.BooleanField(help_text="The answer cites it as [number].")

    class Meta:
        model = Citation
        fields = ["number", "chunk", "document", "title", "page", "text", "score", "rerank_score", "sent", "cited"]


class AnswerSerializer(serializers.ModelSerializer):
    """An answer message with its citations and how it was made."""

    message = serializers.IntegerField(source="pk")
    conversation = serializers.IntegerField(source="conversation_id")
    answer = serializers.CharField(source="content", allow_blank=True)
    generated = serializers.BooleanField(help_text="False: no generator answered; the citations are the best passages.")
    notice = serializers.CharField(allow_blank=True, help_text="What was skipped or failed, in plain words.")
    cited = serializers.SerializerMethodField()
    invalid_citations = serializers.SerializerMethodField(help_text="[n] in the answer that name no passage sent: not links.")
    citations = CitationSerializer(many=True)
    timings = serializers.DictField(child=serializers.FloatField(), help_text="Seconds per stage.")
    usage = serializers.DictField(child=serializers.IntegerField(),
                                  help_text="prompt_tokens and completion_tokens as the generator counted them; "
                                            "empty when it did not say.")

    class Meta:
        model = Message
        fields = ["conversation", "message", "answer", "generated", "notice", "standalone_question", "reranked",
                  "cited", "invalid_citations", "citations", "timings", "usage"]

    def get_cited(self, message) -> list[int]:
        return [citation.number for citation in message.citations.all() if citation.cited]

    def get_invalid_citations(self, message) -> list[int]:
        sent = sum(citation.sent for citation in message.citations.all())
        return citations_check(message.content, passage_count=sent)[1]
