from django.apps import AppConfig


class DocumentsConfig(AppConfig):
    name = "ragapp.documents"
    verbose_name = "Documents"
