from django.apps import AppConfig


class TuningConfig(AppConfig):
    name = "ragapp.tuning"
    verbose_name = "Tuning"
