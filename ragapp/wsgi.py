"""WSGI entry point (gunicorn ragapp.wsgi): the web processes.

Each web process loads the embedding model before it takes its first request, so no one's
first search waits seconds for it, and embeds with one CPU thread unless EMBEDDING_THREADS says
otherwise: it embeds one short question at a time (ragapp.answers.capacity), which a second
thread only slows down. Commands and workers load the same settings and keep torch's default
(the cores), so the one-thread default is given here, where the process is known to be a web one.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ragapp.settings")
application = get_wsgi_application()

from ragapp.documents.embedding import embedding_warm_up  # noqa: E402 - needs Django set up

embedding_warm_up(threads=1)
