"""REST API views: thin wrappers that validate, call the services and shape the answers."""

import json
from collections.abc import Iterator

from django.db.models import Count
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.exceptions import PermissionDenied
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response

from ragapp.answers.models import Conversation, Message
from ragapp.answers.selectors import collection_for_reader
from ragapp.answers.serializers import AnswerSerializer
from ragapp.answers.services import feedback_record, passages_search, primed, question_answer_stream
from ragapp.api import serializers
from ragapp.core.streaming import unbuffered_stream
from ragapp.documents.models import Collection, Document
from ragapp.documents.selectors import collection_readable_by
from ragapp.documents.services import collection_create, document_create, document_delete


def server_sent_events(events: Iterator[dict]):
    def encode():
        for event in events:
            yield f"event: {event['event']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"

    return unbuffered_stream(encode(), "text/event-stream; charset=utf-8")


@extend_schema(request=serializers.AskRequest, responses={200: AnswerSerializer},
               description="Answer a question from a collection's documents, with citations and per-stage timings. "
                           "With stream=true the answer comes as server-sent events: start, passages, token (many), done.")
@api_view(["POST"])
def ask(request):
    request_data = serializers.AskRequest(data=request.data)
    request_data.is_valid(raise_exception=True)
    data = request_data.validated_data
    events = primed(question_answer_stream(user=request.user, question=data["question"],
                                           collection=data.get("collection"), conversation=data.get("conversation")))
    if data["stream"]:
        return server_sent_events(events)
    *_, done = events
    return Response({key: value for key, value in done.items() if key != "event"})


@extend_schema(request=serializers.SearchRequest, responses={200: serializers.SearchResponse},
               description="Retrieval and reranking without generation: the best passages for a question "
                           "(`query`, its former name, is still accepted).")
@api_view(["POST"])
def search(request):
    request_data = serializers.SearchRequest(data=request.data)
    request_data.is_valid(raise_exception=True)
    data = request_data.validated_data
    collection = collection_for_reader(user=request.user, reference=data["collection"])
    return Response(passages_search(user=request.user, query=data["question"], collection=collection, top_n=data.get("top_n")))


class IsStaffForWrites(permissions.BasePermission):
    """Anyone signed in reads what they may read; only staff with the model's rights change things."""

    def has_permission(self, request, view):
        if request.method in permissions.SAFE_METHODS:
            return True
        model = view.queryset.model
        action_name = {"POST": "add", "DELETE": "delete"}.get(request.method, "change")
        return request.user.is_staff and request.user.has_perm(f"{model._meta.app_label}.{action_name}_{model._meta.model_name}")


class CollectionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """Collections you may read; staff with the right create them."""

    serializer_class = serializers.CollectionSerializer
    permission_classes = [permissions.IsAuthenticated, IsStaffForWrites]
    queryset = Collection.objects.all()

    def get_queryset(self):
        return collection_readable_by(user=self.request.user).annotate(document_count=Count("documents")).order_by("name")

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        collection = collection_create(creator=request.user, **serializer.validated_data)
        return Response(self.get_serializer(collection).data, status=status.HTTP_201_CREATED)


class DocumentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                      mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Documents of collections you may read, with their ingestion status and progress; staff upload and delete."""

    serializer_class = serializers.DocumentSerializer
    permission_classes = [permissions.IsAuthenticated, IsStaffForWrites]
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    queryset = Document.objects.all()

    def get_queryset(self):
        documents = Document.objects.filter(collection__in=collection_readable_by(user=self.request.user)).order_by("-created_at")
        collection = self.request.query_params.get("collection")
        return documents.filter(collection_id=collection) if collection and collection.isdigit() else documents

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if not collection_readable_by(user=request.user).filter(pk=data["collection"].pk).exists():
            raise PermissionDenied("You may not read that collection, so you cannot add to it.")
        document, created = document_create(collection=data["collection"], file=data["file"], uploaded_by=request.user,
                                            title=data.get("title", ""))
        body = self.get_serializer(document).data
        body["duplicate"] = not created
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    def perform_destroy(self, instance):
        document_delete(document=instance)


class ConversationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin,
                          viewsets.GenericViewSet):
    """Your conversations; one conversation comes with its messages and their citations."""

    queryset = Conversation.objects.all()

    def get_queryset(self):
        return Conversation.objects.filter(user=self.request.user).prefetch_related("messages__citations")

    def get_serializer_class(self):
        return serializers.ConversationDetailSerializer if self.action == "retrieve" else serializers.ConversationSerializer


class MessageViewSet(viewsets.GenericViewSet):
    queryset = Message.objects.all()
    serializer_class = serializers.FeedbackSerializer

    def get_queryset(self):
        return Message.objects.filter(conversation__user=self.request.user, role=Message.Role.ASSISTANT)

    @extend_schema(request=serializers.FeedbackSerializer, responses={200: serializers.FeedbackSerializer,
                                                                      404: OpenApiResponse(description="Not your answer.")})
    @action(detail=True, methods=["post"])
    def feedback(self, request, pk=None):
        """Rate an answer up or down, with an optional comment (a second rating replaces the first)."""
        message = self.get_object()
        serializer = serializers.FeedbackSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        feedback = feedback_record(message=message, user=request.user, rating=serializer.validated_data["rating"],
                                   comment=serializer.validated_data.get("comment", ""))
        return Response(serializers.FeedbackSerializer(feedback).data)

