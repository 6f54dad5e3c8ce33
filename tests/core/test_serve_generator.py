"""serve's wiring of the local generator: the web server is pointed at it at once, and vLLM is
prepared and started in the background (its real start is covered by the vllm tests)."""

import io
import subprocess
import sys
import time

from ragapp.answers import local_generator
from ragapp.core.management.commands.serve import Command


class FakeServer:
    """Stands in for LocalServer: a real short-lived process, so supervision sees a process."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        self.model, self.url, self.stopped = local_generator.LOCAL_MODEL_NAME, "http://127.0.0.1:8001/v1", False

    def wait_ready(self, timeout):
        pass

    def stop(self):
        self.stopped = True
        self.process.kill()


def wait_until(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_without_generator_url_the_local_vllm_starts_in_the_background(settings, monkeypatch):
    settings.GENERATOR_URL = ""
    server = FakeServer()
    monkeypatch.setattr(local_generator, "server_start", lambda **options: server)
    out = io.StringIO()
    command, environment, processes = Command(stdout=out), {}, []
    started = command._local_generator(8001, environment, processes)
    assert environment["GENERATOR_URL"] == "http://127.0.0.1:8001/v1"
    assert environment["GENERATOR_MODEL"] == local_generator.LOCAL_MODEL_NAME
    assert environment["GENERATOR_TOKENIZER"].endswith(local_generator.MODEL_FOLDER)
    assert wait_until(lambda: started == [server] and processes == [server.process])
    assert wait_until(lambda: "Generator ready" in out.getvalue())
    server.stop()


def test_a_failed_local_generator_leaves_the_product_running_with_a_warning(settings, monkeypatch):
    settings.GENERATOR_URL = ""

    def fail(**options):
        raise local_generator.LocalGeneratorError("pip could not reach the package index")

    monkeypatch.setattr(local_generator, "server_start", fail)
    out = io.StringIO()
    command, processes = Command(stdout=out), []
    started = command._local_generator(8001, {}, processes)
    assert wait_until(lambda: "No generator: pip could not reach" in out.getvalue())
    assert started == [] and processes == []


def test_a_configured_generator_url_starts_nothing(settings):
    settings.GENERATOR_URL = "http://vllm:8000/v1"
    environment = {}
    assert Command(stdout=io.StringIO())._local_generator(8001, environment, []) == [] and environment == {}
