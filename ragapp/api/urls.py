from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from ragapp.api import openai_compat, views

router = DefaultRouter()
router.register("collections", views.CollectionViewSet, basename="collection")
router.register("documents", views.DocumentViewSet, basename="document")
router.register("conversations", views.ConversationViewSet, basename="conversation")
router.register("messages", views.MessageViewSet, basename="message")

urlpatterns = [
    path("api/v1/ask", views.ask, name="api-ask"),
    path("api/v1/search", views.search, name="api-search"),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its start-up script as a file: the site allows no inline scripts.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("v1/chat/completions", openai_compat.ChatCompletions.as_view(), name="openai-chat-completions"),
    path("v1/models", openai_compat.ModelList.as_view(), name="openai-models"),
    re_path(r"^v1/", openai_compat.UnknownEndpoint.as_view(), name="openai-unknown"),
]
