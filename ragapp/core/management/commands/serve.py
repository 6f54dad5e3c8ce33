"""manage.py serve: migrate, ensure an administrator, run the whole product on this machine.

Web server, ingestion worker, a reranker worker (when RERANKER_MODEL names a model) and, unless
GENERATOR_URL points at one, a local vLLM server on the CPU with SmolLM2-135M-Instruct. Each is
a supervised child (`ragapp.core.supervision`): one that exits is restarted with backoff, and
Ctrl-C or SIGTERM stops them all and the embedded PostgreSQL.
"""

import os
import sys
import threading
from pathlib import Path

import httpx
from django.conf import settings
from django.core.management.base import BaseCommand

from ragapp.core import local_generator, supervision
from ragapp.core.services import admin_ensure, database_migrate
from ragapp.core.supervision import Child, Supervisor, start_in_own_group

MANAGE_PY = str(Path(settings.BASE_DIR) / "manage.py")
GENERATOR = "generator"
RERANKER = "reranker"


class Command(BaseCommand):
    help = (
        "Run the whole product on this machine: apply migrations, create the first administrator "
        "(ADMIN_USERNAME/ADMIN_PASSWORD, or a generated password printed once), then start the web "
        "server (gunicorn), the ingestion worker (Procrastinate), a reranker worker when RERANKER_MODEL "
        "is set (and RERANKER_URL is not), and a local vLLM generator when GENERATOR_URL is not set "
        "(the first start installs vLLM for the CPU into a cache: minutes). A part that stops is "
        "restarted with backoff; Ctrl-C stops everything."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8000, help="Port to listen on (default 8000).")
        parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (default 2).")
        parser.add_argument("--ingestion-workers", type=int, default=1, help="Ingestion worker processes (default 1).")
        parser.add_argument("--generator-port", type=int, default=8001,
                            help="Port of the local vLLM server, started when GENERATOR_URL is not set (default 8001).")
        parser.add_argument("--reranker-port", type=int, default=8002,
                            help="Port of the reranker worker, started when RERANKER_MODEL is set (default 8002).")

    def handle(self, *args, host, port, web_workers, ingestion_workers, generator_port, reranker_port, **options):
        database_migrate()
        self._administrator_announce(admin_ensure())
        environment = dict(os.environ)
        supervisor = Supervisor(state_file=settings.SERVE_STATE_FILE, log=self.stdout.write)
        try:
            prepare_generator = self._local_generator(generator_port, environment)
            children = [self._reranker_child(reranker_port, environment),
                        self._web_child(host, port, web_workers, environment),
                        *self._worker_children(ingestion_workers, environment)]
            for child in filter(None, children):
                supervisor.add(child)
            if prepare_generator:
                threading.Thread(target=prepare_generator, args=(supervisor,), daemon=True).start()
            self.stdout.write(self.style.SUCCESS(
                f"Chat at http://{host}:{port}/  ·  admin at http://{host}:{port}/admin/  ·  API docs at "
                f"http://{host}:{port}/api/docs/  ·  health at http://{host}:{port}/health  (Ctrl-C stops everything)"))
            supervisor.run()
        finally:
            supervisor.stop_children()
            supervision.descendants_stop()
        self.stdout.write("Stopped.")

    def _administrator_announce(self, password: str | None) -> None:
        if password:
            self.stdout.write(self.style.WARNING(
                f"Created administrator '{settings.ADMIN_USERNAME}' with password: {password}\n"
                "It is shown only this once: change it in the admin, or set ADMIN_PASSWORD before the first start."
            ))

    def _local_generator(self, port: int, environment: dict):
        """Point the web server at GENERATOR_URL, or at a local vLLM; return what prepares and starts that vLLM.

        The first start installs vLLM (minutes) in a background thread: the chat and the admin are
        up meanwhile, and answers show passages with a notice until the generator is ready."""
        if settings.GENERATOR_URL:
            self.stdout.write(f"Generator: {settings.GENERATOR_URL}")
            return None
        home = settings.VLLM_HOME
        url = f"http://127.0.0.1:{port}/v1"
        environment.update(
            GENERATOR_URL=url, GENERATOR_MODEL=local_generator.LOCAL_MODEL_NAME,
            GENERATOR_TOKENIZER=str(home / local_generator.MODEL_FOLDER),
            GENERATOR_CONTEXT_TOKENS=str(local_generator.CONTEXT_TOKENS),
            GENERATOR_MAX_TOKENS=str(settings.LOCAL_GENERATOR_MAX_TOKENS),
        )

        def prepare_and_start(supervisor: Supervisor) -> None:
            supervisor.announce(GENERATOR, supervision.PREPARING, "installing vLLM and converting the model (once)")
            try:
                local_generator.local_model_prepare(home=home, log=self.stdout.write)
            except local_generator.LocalGeneratorError as error:
                supervisor.announce(GENERATOR, supervision.UNAVAILABLE, str(error))
                self.stdout.write(self.style.WARNING(
                    f"No generator: {error}\nAnswers show the best passages instead. Set GENERATOR_URL to use another server."))
                return
            supervisor.add(Child(
                GENERATOR, start=lambda: local_generator.server_start(home=home, port=port, log=self.stdout.write).process,
                ready=lambda: local_generator.lists_model(url, local_generator.LOCAL_MODEL_NAME)))

        return prepare_and_start

    def _reranker_child(self, port: int, environment: dict) -> Child | None:
        """A reranker worker for RERANKER_MODEL, unless RERANKER_URL names running ones."""
        if settings.RERANKER_URLS:
            self.stdout.write(f"Reranker workers: {', '.join(settings.RERANKER_URLS)}")
            return None
        model = settings.RERANKER_MODEL
        if not model:
            self.stdout.write(self.style.WARNING(
                "No reranker: set RERANKER_MODEL (a hub id such as BAAI/bge-reranker-base, or a folder) to start a "
                "worker. Answers say that reranking was skipped."))
            return None
        url = f"http://127.0.0.1:{port}"
        environment["RERANKER_URL"] = url
        self.stdout.write(f"Reranker worker: {model} on {url}")
        command = [sys.executable, "-m", "reranking.server", "--model", model, "--host", "127.0.0.1", "--port", str(port)]
        return Child(RERANKER, start=lambda: self._start(command, environment), ready=lambda: _answers(f"{url}/health"))

    def _web_child(self, host: str, port: int, workers: int, environment: dict) -> Child:
        command = web_server_command(host=host, port=port, workers=workers)
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return Child("web server", start=lambda: self._start(command, environment),
                     ready=lambda: _answers(f"http://{local}:{port}/admin/login/"))

    def _worker_children(self, count: int, environment: dict) -> list[Child]:
        command = [sys.executable, MANAGE_PY, "procrastinate", "worker"]
        return [Child(f"ingestion worker {number}", start=lambda: self._start(command, environment))
                for number in range(1, count + 1)]

    def _start(self, command: list[str], environment: dict):
        return start_in_own_group(command, cwd=settings.BASE_DIR, env=environment)


def web_server_command(*, host: str, port: int, workers: int, threads: int | None = None) -> list[str]:
    """The web server serve runs (bench/load.py measures this same command).

    gunicorn's threaded workers: an answer mostly waits on the generator, so threads, not
    processes, carry the concurrency (README, "Web server")."""
    return [sys.executable, "-m", "gunicorn", "ragapp.wsgi", "--bind", f"{host}:{port}",
            "--workers", str(workers), "--threads", str(threads or settings.WEB_THREADS), "--timeout", "120",
            "--access-logfile", "-", "--chdir", str(settings.BASE_DIR)]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False
