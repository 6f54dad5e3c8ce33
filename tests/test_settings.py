"""ragapp/settings.py: each variable read or refused with its name, and `check --deploy` clean with the README's HTTPS settings."""

import os
import re
import runpy
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from ragapp import settings as project_settings

ROOT = Path(__file__).resolve().parent.parent


def readme_https_block() -> dict[str, str]:
    """The variables of the README's HTTPS block, which users copy into their environment."""
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```env\n(.*?)```", readme, re.S) if "SECURE_SSL_REDIRECT=" in b)
    return dict(line.split("=", 1) for line in block.splitlines() if line.strip())


def test_check_deploy_reports_nothing_with_the_readmes_https_settings():
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("SECURE_", "DEBUG"))}
    environment.update(readme_https_block(), DEBUG="false", SECRET_KEY=secrets.token_urlsafe(50),
                       # An unreachable production database: `check` never connects, and no embedded one starts.
                       DATABASE_URL="postgres://ragapp:unused@127.0.0.1:9/ragapp")
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "DEBUG"],
                            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_nothing_is_forced_onto_https_by_default(settings):
    assert not (settings.SECURE_SSL_REDIRECT or settings.SECURE_HSTS_SECONDS or settings.SESSION_COOKIE_SECURE
                or settings.CSRF_COOKIE_SECURE or settings.SECURE_PROXY_SSL_HEADER)


@pytest.mark.parametrize("raw, header", [
    ("X-Forwarded-Proto,https", ("HTTP_X_FORWARDED_PROTO", "https")),
    ("HTTP_X_FORWARDED_PROTO, https", ("HTTP_X_FORWARDED_PROTO", "https")),
    ("", None),
])
def test_the_proxy_header_is_read_as_header_comma_value(monkeypatch, raw, header):
    monkeypatch.setenv("SECURE_PROXY_SSL_HEADER", raw)
    assert project_settings.proxy_ssl_header() == header


@pytest.mark.parametrize("raw", ["https", "X-Forwarded-Proto,", "X-Forwarded-Proto,https,on", "X Proto,https"])
def test_a_malformed_proxy_header_names_the_expected_form(monkeypatch, raw):
    monkeypatch.setenv("SECURE_PROXY_SSL_HEADER", raw)
    with pytest.raises(ImproperlyConfigured, match="must be HEADER,VALUE.*X-Forwarded-Proto,https"):
        project_settings.proxy_ssl_header()


def test_worker_heartbeat_and_stalled_timeout_default_to_procrastinates(monkeypatch):
    monkeypatch.delenv("WORKER_HEARTBEAT_SECONDS", raising=False)
    monkeypatch.delenv("WORKER_STALLED_SECONDS", raising=False)
    assert project_settings.worker_heartbeat_seconds() == (10, 30)


@pytest.mark.parametrize("heartbeat, stalled", [("10", "15"), ("0", "30")])
def test_a_stalled_timeout_a_late_heartbeat_would_pass_is_refused(monkeypatch, heartbeat, stalled):
    monkeypatch.setenv("WORKER_HEARTBEAT_SECONDS", heartbeat)
    monkeypatch.setenv("WORKER_STALLED_SECONDS", stalled)
    with pytest.raises(ImproperlyConfigured, match="must be at least twice WORKER_HEARTBEAT_SECONDS"):
        project_settings.worker_heartbeat_seconds()


@pytest.mark.parametrize("name", ["RERANKER_TIMEOUT_SECONDS", "GENERATOR_TEMPERATURE"])
def test_a_number_that_is_not_one_is_refused_with_its_name(monkeypatch, name):
    monkeypatch.setenv(name, "ten")
    with pytest.raises(ImproperlyConfigured, match=f"{name} must be a number .* got 'ten'"):
        project_settings.env_float(name, 10)
    monkeypatch.setenv(name, "0.5")
    assert project_settings.env_float(name, 10) == 0.5


def settings_read(monkeypatch, tmp_path, **variables: str) -> dict:
    """Run ragapp/settings.py afresh with these variables (and a data folder of the test's own); return its names."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SECRET_KEY", "s" * 50)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "ragapp" / "settings.py"))


@pytest.mark.parametrize("name, value, message", [
    ("RETRIEVAL_CANDIDATES", "0", "RETRIEVAL_CANDIDATES must be at least 1, got '0'."),
    ("RERANK_TOP_N", "-3", "RERANK_TOP_N must be at least 1, got '-3'."),
    ("WEB_THREADS", "0", "WEB_THREADS must be at least 1, got '0'."),
    ("ANSWER_STREAMS_PER_PROCESS", "0", "ANSWER_STREAMS_PER_PROCESS must be at least 1, got '0'."),
    ("SEARCHES_PER_PROCESS", "-1", "SEARCHES_PER_PROCESS must be at least 1, got '-1'."),
    ("EMBEDDING_BATCH_SIZE", "0", "EMBEDDING_BATCH_SIZE must be at least 1, got '0'."),
    ("MAX_UPLOAD_MB", "0", "MAX_UPLOAD_MB must be at least 1, got '0'."),
    ("INGESTION_MAX_ATTEMPTS", "0", "INGESTION_MAX_ATTEMPTS must be at least 1, got '0'."),
    ("HNSW_EF_SEARCH", "5000", "HNSW_EF_SEARCH must be at least 1 and at most 1000, got '5000'."),
    ("GENERATOR_TEMPERATURE", "3", "GENERATOR_TEMPERATURE must be at least 0 and at most 2, got '3'."),
    ("GENERATOR_TIMEOUT_SECONDS", "0", "GENERATOR_TIMEOUT_SECONDS must be more than 0, got '0'."),
    ("RERANKER_TIMEOUT_SECONDS", "nan", "RERANKER_TIMEOUT_SECONDS must be a number (like 10 or 0.5), got 'nan'."),
    ("GENERATOR_MAX_TOKENS", "4096", "GENERATOR_MAX_TOKENS (4096) must be less than GENERATOR_CONTEXT_TOKENS (2048)"),
    ("CHUNK_OVERLAP_TOKENS", "150", "CHUNK_TOKENS (200) and CHUNK_OVERLAP_TOKENS (150) do not fit together: overlap_tokens"),
    ("CHUNK_TOKENS", "8", "CHUNK_TOKENS (8) and CHUNK_OVERLAP_TOKENS (40) do not fit together: chunk_tokens must be at least 16"),
    ("TIME_ZONE", "Mars/Olympus_Mons", "TIME_ZONE must be a time zone name such as UTC or Europe/Paris, got 'Mars/Olympus_Mons'."),
    ("LOG_LEVEL", "verbose", "LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got 'verbose'."),
    ("RERANKER_URL", "http://a:8002,reranker:8080", "RERANKER_URL must be http:// or https:// URLs (comma-separated), such as "
                                                     "http://127.0.0.1:8002; got 'reranker:8080'."),
    ("GENERATOR_URL", "http://vllm:port/v1", "GENERATOR_URL must be http:// or https:// URLs"),
    ("GENERATOR_URL", "http://a/v1,http://b/v1", "GENERATOR_URL must be one URL, such as http://127.0.0.1:8001/v1; got 2"),
    ("CSRF_TRUSTED_ORIGINS", "rag.example.com", "CSRF_TRUSTED_ORIGINS must be http:// or https:// URLs"),
    ("DATABASE_URL", "mysql://ragapp:hunter2@db/ragapp", "DATABASE_URL must be a PostgreSQL URL, "
                                                          "postgres://USER:PASSWORD@HOST:5432/NAME"),
    ("DATABASE_URL", "postgres://ragapp:hunter2@db:port/ragapp", "DATABASE_URL could not be read: write it as postgres://"),
])
def test_a_value_that_would_fail_later_is_refused_naming_the_variable(monkeypatch, tmp_path, name, value, message):
    with pytest.raises(ImproperlyConfigured) as refusal:
        settings_read(monkeypatch, tmp_path, **{name: value})
    assert message in str(refusal.value)
    assert "hunter2" not in str(refusal.value)  # a database URL's password is never repeated


def test_an_empty_variable_means_its_default_as_docker_compose_passes_unset_ones(monkeypatch, tmp_path):
    read = settings_read(monkeypatch, tmp_path, ALLOWED_HOSTS="", LOG_LEVEL="", TIME_ZONE="", GENERATOR_API_KEY=" ",
                         ADMIN_USERNAME="", RETRIEVAL_CANDIDATES="")
    assert read["ALLOWED_HOSTS"] == ["127.0.0.1", "localhost", "[::1]"]
    assert (read["LOGGING"]["root"]["level"], read["TIME_ZONE"]) == ("INFO", "UTC")
    assert (read["GENERATOR_API_KEY"], read["ADMIN_USERNAME"], read["RETRIEVAL_CANDIDATES"]) == ("not-needed", "admin", 100)


def test_valid_values_are_read_as_given(monkeypatch, tmp_path):
    read = settings_read(monkeypatch, tmp_path, LOG_LEVEL="debug", TIME_ZONE="Europe/Paris", HNSW_EF_SEARCH="1000",
                         RERANKER_URL="http://a:8002, https://b", GENERATOR_TEMPERATURE="0",
                         DATABASE_URL="postgres://ragapp:p%40ss@db:5432/ragapp")
    assert (read["LOGGING"]["root"]["level"], read["TIME_ZONE"], read["HNSW_EF_SEARCH"]) == ("DEBUG", "Europe/Paris", 1000)
    assert (read["RERANKER_URLS"], read["GENERATOR_TEMPERATURE"]) == (["http://a:8002", "https://b"], 0)
    assert {name: read["DATABASES"]["default"][name] for name in ("ENGINE", "HOST", "PORT", "PASSWORD")} == {
        "ENGINE": "django.db.backends.postgresql", "HOST": "db", "PORT": 5432, "PASSWORD": "p@ss"}


def test_the_local_vllm_lives_in_vllm_home_else_the_users_cache(monkeypatch, tmp_path):
    assert settings_read(monkeypatch, tmp_path, VLLM_HOME=str(tmp_path / "vllm"))["VLLM_HOME"] == tmp_path / "vllm"
    monkeypatch.delenv("VLLM_HOME")
    read = settings_read(monkeypatch, tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert read["VLLM_HOME"] == tmp_path / "cache" / "ragapp" / "vllm"
