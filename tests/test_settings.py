"""ragapp/settings.py: the HTTPS settings read from the environment, and `check --deploy` clean with them."""

import os
import re
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
