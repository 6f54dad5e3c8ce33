from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "ragapp.core"
    verbose_name = "Core"
