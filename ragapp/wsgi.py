"""WSGI entry point (gunicorn ragapp.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ragapp.settings")
application = get_wsgi_application()
