"""Request and response shapes of the REST API (/api/v1/)."""

from rest_framework import serializers

from ragapp.answers.models import Conversation, Feedback, Message
from ragapp.answers.serializers import CitationSerializer, PassageSerializer
from ragapp.documents.models import Collection, Document


class AskRequest(serializers.Serializer):
    question = serializers.CharField(max_length=4000, trim_whitespace=True)
    collection = serializers.CharField(required=False, help_text="Collection id, slug or name. Not needed to continue a conversation.")
    conversation = serializers.IntegerField(required=False, help_text="Continue this conversation (a follow-up).")
    stream = serializers.BooleanField(default=False, help_text="Answer as server-sent events (start, passages, token..., done).")


class SearchRequest(serializers.Serializer):
    question = serializers.CharField(max_length=4000, required=False,
                                     help_text="What to search for, as `question` is for ask. Required (or `query`).")
    query = serializers.CharField(max_length=4000, required=False,
                                  help_text="The former name of `question`, still accepted; give one of the two, not both.")
    collection = serializers.CharField(help_text="Collection id, slug or name.")
    top_n = serializers.IntegerField(required=False, min_value=1, max_value=100)

    def validate(self, data):
        """Read `query` as `question`: ask and search take the same name, older clients keep working."""
        if "question" in data and "query" in data:
            raise serializers.ValidationError({"query": "Give `question` or `query` (its former name), not both."})
        if "question" not in data and "query" not in data:
            raise serializers.ValidationError({"question": "This field is required."})
        if "query" in data:
            data["question"] = data.pop("query")
        return data


class SearchResponse(serializers.Serializer):
    reranked = serializers.BooleanField()
    notice = serializers.CharField(allow_blank=True)
    results = PassageSerializer(many=True)
    timings = serializers.DictField(child=serializers.FloatField())


class CollectionSerializer(serializers.ModelSerializer):
    document_count = serializers.SerializerMethodField()

    class Meta:
        model = Collection
        fields = ["id", "name", "slug", "language", "reranking_enabled", "rerank_fusion_weight", "document_count", "created_at"]
        read_only_fields = ["slug", "rerank_fusion_weight", "created_at"]

    def get_document_count(self, collection) -> int:
        annotated = getattr(collection, "document_count", None)
        return annotated if annotated is not None else collection.documents.count()


class DocumentSerializer(serializers.ModelSerializer):
    file = serializers.FileField(write_only=True, help_text="PDF, DOCX, HTML, Markdown or text.")
    collection = serializers.PrimaryKeyRelatedField(queryset=Collection.objects.all())

    class Meta:
        model = Document
        fields = ["id", "collection", "title", "file", "original_filename", "content_type", "size_bytes", "status",
                  "progress", "error", "chunk_count", "created_at", "ingested_at"]
        read_only_fields = ["original_filename", "content_type", "size_bytes", "status", "progress", "error",
                            "chunk_count", "created_at", "ingested_at"]
        extra_kwargs = {"title": {"required": False}}


class MessageSerializer(serializers.ModelSerializer):
    citations = CitationSerializer(many=True, read_only=True)

    class Meta:
        model = Message
        fields = ["id", "role", "content", "standalone_question", "generated", "reranked", "notice", "timings",
                  "usage", "created_at", "citations"]


class ConversationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Conversation
        fields = ["id", "title", "collection", "created_at", "updated_at"]


class ConversationDetailSerializer(ConversationSerializer):
    messages = MessageSerializer(many=True, read_only=True)

    class Meta(ConversationSerializer.Meta):
        fields = [*ConversationSerializer.Meta.fields, "messages"]


class FeedbackSerializer(serializers.ModelSerializer):
    rating = serializers.CharField(help_text="up or down (1 and -1 are accepted too).")

    class Meta:
        model = Feedback
        fields = ["id", "rating", "comment", "created_at"]
        read_only_fields = ["created_at"]

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["rating"] = "up" if instance.rating > 0 else "down"
        return data
