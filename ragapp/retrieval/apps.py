from django.apps import AppConfig


class RetrievalConfig(AppConfig):
    name = "ragapp.retrieval"
    verbose_name = "Retrieval"
