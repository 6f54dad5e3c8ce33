"""Static checks of docker-compose.yml, the Dockerfile and .dockerignore (no Docker engine)."""

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SETTINGS_FILE = ROOT / "ragapp" / "settings.py"

APP_IMAGE = "ragapp:latest"
DJANGO_SERVICES = ("migrate", "web", "worker")
GPU_SERVICES = ("reranker", "vllm")
# The variables a user must put in .env; every other one has a default in the compose file.
REQUIRED_VARIABLES = {"POSTGRES_PASSWORD": "test-password", "SECRET_KEY": "test-secret-key"}

# Read by libraries inside the app image (huggingface_hub), not by settings.py.
LIBRARY_VARIABLES = {"HF_TOKEN", "HF_HOME"}
# What the third-party images read, service by service.
IMAGE_VARIABLES = {
    "db": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "vllm": {"HF_TOKEN", "VLLM_API_KEY"},
}

SETTINGS_READER = re.compile(r"\benv_[a-z]+\(\s*[\"'](?P<name>[A-Z0-9_]+)[\"']")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; `$$` escapes a `$`.
COMPOSE_VARIABLE = re.compile(
    r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<argument>[^}]*))?\}"
)


class MissingVariable(Exception):
    """A `${NAME:?error}` variable was not set."""


def interpolate(text: str, environ: dict[str, str]) -> str:
    """Expand Compose variables in `text` from `environ`, as `docker compose config` does."""

    def expand(match: re.Match) -> str:
        name, operator = match["name"], match["operator"] or ""
        value = environ.get(name)
        missing = not value if operator.startswith(":") else value is None
        if missing and operator.endswith("-"):
            return match["argument"]
        if missing and operator.endswith("?"):
            raise MissingVariable(f"{name}: {match['argument']}")
        return value or ""

    return COMPOSE_VARIABLE.sub(expand, text).replace("$$", "$")


def resolved(node, environ: dict[str, str]):
    """Return a copy of the parsed compose document with every string interpolated."""
    if isinstance(node, dict):
        return {key: resolved(value, environ) for key, value in node.items()}
    if isinstance(node, list):
        return [resolved(item, environ) for item in node]
    if isinstance(node, str):
        return interpolate(node, environ)
    return node


def parsed_compose() -> dict:
    """Parse docker-compose.yml as written (YAML anchors and merge keys applied)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def raw_services() -> dict:
    return parsed_compose()["services"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return resolved(parsed_compose(), REQUIRED_VARIABLES)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def environment(service: dict) -> dict[str, str]:
    """Return a service's environment as a mapping, from either Compose spelling."""
    variables = service.get("environment") or {}
    if isinstance(variables, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in variables)
    return {name: "" if value is None else str(value) for name, value in variables.items()}


def command(service: dict) -> list[str]:
    """Return a service's command as a list of arguments."""
    arguments = service.get("command") or []
    return shlex.split(arguments) if isinstance(arguments, str) else [str(a) for a in arguments]


def option(arguments: list[str], flag: str) -> str | None:
    """Return the value given to `flag` in `arguments`, or None."""
    for index, argument in enumerate(arguments):
        if argument == flag and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith(flag + "="):
            return argument.split("=", 1)[1]
    return None


def dependencies(service: dict) -> dict[str, dict]:
    """Return `depends_on` as {service: options}, from either Compose spelling."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return {name: {"condition": "service_started"} for name in depends_on}
    return depends_on


def health_check_url(service: dict) -> str:
    """Return the URL that a service's health check probes."""
    test = " ".join(service["healthcheck"]["test"])
    found = re.search(r"http://[^'\"\s]+", test)
    assert found, f"the health check does not probe a URL: {test}"
    return found[0]


def listening_port(service: dict) -> int:
    """Return the port a service's command listens on (vLLM's default is 8000)."""
    arguments = command(service)
    bind = option(arguments, "--bind")
    if bind:
        return int(bind.rsplit(":", 1)[1])
    return int(option(arguments, "--port") or 8000)


def services_running(services: dict, module: str) -> list[str]:
    """Return the names of the services whose command runs `python -m module`."""
    return [name for name, service in services.items() if module in command(service)]


def long_running(services: dict) -> list[str]:
    """Return the services that stay up (all but one-shot jobs such as migrate)."""
    return [name for name, service in services.items() if str(service.get("restart")) != "no"]


def named_volume(mount) -> str | None:
    """Return the named volume of a service mount, or None for a bind mount."""
    source = mount.get("source") if isinstance(mount, dict) else mount.split(":", 1)[0]
    if mount_type := (mount.get("type") if isinstance(mount, dict) else None):
        return source if mount_type == "volume" else None
    return None if source.startswith((".", "/", "~")) else source


def settings_variables() -> set[str]:
    """Return the environment variables that ragapp/settings.py reads."""
    return set(SETTINGS_READER.findall(SETTINGS_FILE.read_text()))


def dockerfile_instructions() -> dict[str, list[str]]:
    """Return the Dockerfile's arguments by instruction (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            instructions.setdefault(keyword.upper(), []).append(arguments.strip())
    return instructions

def test_compose_defines_the_database_app_and_model_services(services):
    assert {"db", "migrate", "web", "worker", "reranker", "vllm"} <= set(services)


def test_database_and_generator_run_the_published_images_at_pinned_tags(services):
    assert services["db"]["image"].startswith("pgvector/pgvector:pg")
    vllm_image, _, vllm_tag = services["vllm"]["image"].partition(":")
    assert vllm_image == "vllm/vllm-openai"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", vllm_tag), "pin a vLLM release, not latest"


def test_app_services_share_one_image_built_from_the_repository(services):
    for name in (*DJANGO_SERVICES, "reranker"):
        build = services[name]["build"]
        context = build["context"] if isinstance(build, dict) else build
        assert services[name]["image"] == APP_IMAGE, name
        assert (ROOT / context / "Dockerfile").resolve() == DOCKERFILE


def test_django_services_share_one_environment(services):
    web_environment = environment(services["web"])
    for name in DJANGO_SERVICES:
        assert environment(services[name]) == web_environment, name


def test_every_long_running_service_has_a_health_check(services):
    for name in long_running(services):
        health_check = services[name].get("healthcheck") or {}
        assert not health_check.get("disable"), name
        assert health_check.get("test") and health_check["test"] != ["NONE"], name


def test_long_running_services_restart_automatically(services):
    assert set(long_running(services)) == set(services) - {"migrate"}
    for name in long_running(services):
        assert services[name]["restart"] in {"always", "unless-stopped"}, name


def test_migrations_run_once_before_web_and_worker_start(services):
    assert command(services["migrate"]) == ["python", "manage.py", "migrate", "--noinput"]
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "worker"):
        migrate = dependencies(services[name])["migrate"]
        assert migrate["condition"] == "service_completed_successfully", name
        assert "migrate" not in command(services[name]), name


def test_django_services_wait_for_a_healthy_database(services):
    for name in DJANGO_SERVICES:
        assert dependencies(services[name])["db"]["condition"] == "service_healthy", name
    assert services["db"]["healthcheck"]["test"][-1].startswith("pg_isready")


def test_web_does_not_wait_for_the_model_services_to_be_healthy(services):
    web_dependencies = dependencies(services["web"])
    for name in GPU_SERVICES:
        if name in web_dependencies:
            assert web_dependencies[name]["condition"] != "service_healthy", name


def test_reranker_and_vllm_reserve_nvidia_gpus(services):
    for name in GPU_SERVICES:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(
            device["driver"] == "nvidia" and "gpu" in device["capabilities"] for device in devices
        ), name


def test_database_url_points_every_django_service_at_the_db_service(services):
    database = environment(services["db"])
    urls = {environment(services[name])["DATABASE_URL"] for name in DJANGO_SERVICES}
    assert len(urls) == 1, "migrate, web and worker must use the same database"
    url = urlsplit(urls.pop())
    assert url.scheme in {"postgres", "postgresql"}
    assert (url.hostname, url.port or 5432) == ("db", 5432)
    assert url.path.lstrip("/") == database["POSTGRES_DB"]
    assert (url.username, url.password) == (database["POSTGRES_USER"], database["POSTGRES_PASSWORD"])


@pytest.mark.parametrize("variable", sorted(REQUIRED_VARIABLES))
def test_compose_refuses_to_start_without_the_database_password_or_secret_key(variable):
    environ = {name: value for name, value in REQUIRED_VARIABLES.items() if name != variable}
    with pytest.raises(MissingVariable, match=variable):
        resolved(parsed_compose(), environ)


def test_reranker_url_reaches_the_port_each_reranker_listens_on(services):
    rerankers = services_running(services, "reranking.server")
    assert "reranker" in rerankers
    urls = environment(services["web"])["RERANKER_URL"].split(",")
    for url in map(urlsplit, urls):
        assert url.hostname in rerankers, url.geturl()
        assert url.port == listening_port(services[url.hostname]), url.geturl()


def test_generator_url_reaches_the_openai_api_of_vllm(services):
    url = urlsplit(environment(services["web"])["GENERATOR_URL"])
    assert url.hostname == "vllm"
    assert url.port == listening_port(services["vllm"])
    assert url.path.rstrip("/") == "/v1"


def test_app_asks_for_the_model_that_vllm_serves(services):
    arguments = command(services["vllm"])
    served = option(arguments, "--served-model-name") or option(arguments, "--model") or arguments[0]
    assert environment(services["web"])["GENERATOR_MODEL"] == served


def test_health_checks_probe_the_port_each_service_listens_on(services):
    for name, path in (("web", "/admin/login/"), ("reranker", "/health"), ("vllm", "/health")):
        url = urlsplit(health_check_url(services[name]))
        assert url.port == listening_port(services[name]), name
        assert url.path == path, name


def test_named_volumes_are_declared_and_used(compose, services):
    declared = set(compose["volumes"])
    used = {
        volume
        for service in services.values()
        for volume in map(named_volume, service.get("volumes", []))
        if volume
    }
    assert {"pgdata", "media", "hf-cache"} <= declared
    assert used == declared


def test_uploads_are_shared_by_web_and_worker_and_the_database_persists(services):
    def volumes_of(name):
        return set(map(named_volume, services[name].get("volumes", [])))

    assert "media" in volumes_of("web") & volumes_of("worker")
    assert "pgdata" in volumes_of("db")
    assert "hf-cache" in volumes_of("vllm")


def test_web_publishes_port_8000(services):
    published = []
    for port in services["web"]["ports"]:
        if isinstance(port, dict):
            published.append((str(port.get("published")), str(port["target"])))
        else:
            *host, container = str(port).split(":")
            published.append((host[-1] if host else "", container.split("/")[0]))
    assert ("8000", "8000") in published
    assert listening_port(services["web"]) == 8000
    assert option(command(services["web"]), "--bind").startswith("0.0.0.0:")


def test_web_runs_gunicorn_on_the_project_wsgi_application(services):
    arguments = command(services["web"])
    assert arguments[:2] == ["gunicorn", "ragapp.wsgi"]
    assert int(option(arguments, "--workers")) >= 1
    assert int(option(arguments, "--threads")) >= 1


def test_worker_runs_the_procrastinate_worker(services):
    assert command(services["worker"]) == ["python", "manage.py", "procrastinate", "worker"]


def test_app_services_pass_only_variables_the_app_reads():
    known = settings_variables()
    assert {"DATABASE_URL", "SECRET_KEY", "EMBEDDING_MODEL"} <= known, "settings parser broke"
    allowed = known | LIBRARY_VARIABLES
    for name, service in parsed_compose()["services"].items():
        if service.get("image") == APP_IMAGE:
            assert set(environment(service)) <= allowed, (name, set(environment(service)) - allowed)


def test_third_party_services_pass_only_variables_their_images_read(raw_services):
    for name, variables in IMAGE_VARIABLES.items():
        assert set(environment(raw_services[name])) <= variables, name


def test_each_app_setting_comes_from_the_host_variable_of_the_same_name(raw_services):
    for name in (*DJANGO_SERVICES, "reranker"):
        for setting, value in environment(raw_services[name]).items():
            names = {match["name"] for match in COMPOSE_VARIABLE.finditer(value)}
            if setting != "DATABASE_URL":  # assembled from the db service's variables
                assert names == {setting}, (name, setting, value)


def test_dockerfile_builds_on_python_3_11_and_runs_gunicorn_as_a_non_root_user():
    instructions = dockerfile_instructions()
    assert re.fullmatch(r"python:3\.11(\.\d+)?(-slim)?(-bookworm)?", instructions["FROM"][0])
    assert instructions["USER"] and instructions["USER"][-1] not in {"root", "0"}
    assert instructions["EXPOSE"] == ["8000"]
    assert "gunicorn" in instructions["CMD"][-1] and "ragapp.wsgi" in instructions["CMD"][-1]


def test_dockerfile_installs_the_pinned_requirements_from_pypi_only():
    text = DOCKERFILE.read_text()
    assert "pip install --no-cache-dir -r requirements.txt" in text
    assert "index-url" not in text and "find-links" not in text


def test_build_context_leaves_out_local_state_and_secrets():
    ignored = {line.strip().lstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".venv", ".venvs", ".data", ".git", ".env", "bench/results"} <= ignored
    assert any("__pycache__" in pattern for pattern in ignored)

