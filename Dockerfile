# One image for every role of the app: web (gunicorn, the default command), the ingestion
# worker, the one-shot migration and the GPU reranker. docker-compose.yml picks the role with
# `command:` and defines the health checks, since each role is probed differently.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    MEDIA_ROOT=/data/media \
    HF_HOME=/cache/huggingface

# The app runs unprivileged; it owns only what it writes (uploads, model downloads).
RUN useradd --create-home --uid 1000 app

WORKDIR /app

# Dependencies first, so a code change does not reinstall them. torch comes from PyPI, whose
# Linux build includes CUDA: the reranker needs it, and the web and worker roles run it on CPU.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .

# Named volumes mounted here start with this ownership, so the app user can write to them.
RUN mkdir -p /data/media /cache/huggingface && chown -R app:app /data /cache

USER app

EXPOSE 8000

# Static files come from the installed apps through whitenoise's finders: no collectstatic.
CMD ["gunicorn", "ragapp.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4", "--timeout", "120", "--access-logfile", "-"]
