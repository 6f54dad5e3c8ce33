"""manage.py serve: migrate, ensure an administrator, run the whole product on this machine.

Web server, ingestion worker, a reranker worker (when RERANKER_MODEL names a model) and, unless
GENERATOR_URL points at one, a local vLLM server on the CPU with SmolLM2-135M-Instruct.
"""

import os
import signal
import threading
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ragapp.core.services import admin_ensure, database_migrate

MANAGE_PY = str(Path(settings.BASE_DIR) / "manage.py")


class Command(BaseCommand):
    help = (
        "Run the whole product on this machine: apply migrations, create the first administrator "
        "(ADMIN_USERNAME/ADMIN_PASSWORD, or a generated password printed once), then start the web "
        "server (gunicorn), the ingestion worker (Procrastinate), a reranker worker when RERANKER_MODEL "
        "is set (and RERANKER_URL is not), and a local vLLM generator when GENERATOR_URL is not set "
        "(the first start installs vLLM for the CPU into a cache: minutes); keep them all running."
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
        password = admin_ensure()
        if password:
            self.stdout.write(self.style.WARNING(
                f"Created administrator '{settings.ADMIN_USERNAME}' with password: {password}\n"
                "It is shown only this once: change it in the admin, or set ADMIN_PASSWORD before the first start."
            ))
        environment = dict(os.environ)
        processes: list[subprocess.Popen] = []
        started_generator = self._local_generator(generator_port, environment, processes)
        reranker = self._reranker_worker(reranker_port, environment)
        if reranker is not None:
            processes.append(reranker)
        processes += [self._start(command, environment) for command in self._commands(host, port, web_workers, ingestion_workers)]
        self.stdout.write(self.style.SUCCESS(
            f"Chat at http://{host}:{port}/  ·  admin at http://{host}:{port}/admin/  ·  API docs at "
            f"http://{host}:{port}/api/docs/  (Ctrl-C stops everything)"))
        try:
            self._supervise(processes)
        finally:
            for server in started_generator:
                server.stop()

    def _local_generator(self, port: int, environment: dict, processes: list) -> list:
        """Point the web server at GENERATOR_URL, or at a local vLLM prepared and started in the background.

        The first start installs vLLM (minutes): the chat and the admin are up meanwhile, and
        answers show passages with a notice until the generator is ready. Returns a list that
        receives the server once it has started, for stopping it at the end."""
        if settings.GENERATOR_URL:
            self.stdout.write(f"Generator: {settings.GENERATOR_URL}")
            return []
        from ragapp.answers import local_generator

        home = local_generator.default_home()
        environment.update(
            GENERATOR_URL=f"http://127.0.0.1:{port}/v1", GENERATOR_MODEL=local_generator.LOCAL_MODEL_NAME,
            GENERATOR_TOKENIZER=str(home / local_generator.MODEL_FOLDER),
            GENERATOR_CONTEXT_TOKENS=str(local_generator.CONTEXT_TOKENS),
        )
        # A 135M model on a CPU writes ~10 tokens/s and tends to ramble: keep its answers short.
        environment.setdefault("GENERATOR_MAX_TOKENS", "200")
        started: list = []
        threading.Thread(target=self._generator_start, args=(port, processes, started), daemon=True).start()
        return started

    def _generator_start(self, port: int, processes: list, started: list) -> None:
        from ragapp.answers.local_generator import LocalGeneratorError, server_start

        try:
            server = server_start(port=port, log=self.stdout.write)
            started.append(server)
            processes.append(server.process)  # supervised from now on, like the others
            server.wait_ready(timeout=600)
        except LocalGeneratorError as error:
            self.stdout.write(self.style.WARNING(
                f"No generator: {error}\nAnswers show the best passages instead. Set GENERATOR_URL to use another server."))
            return
        self.stdout.write(self.style.SUCCESS(f"Generator ready: {server.model} at {server.url}"))

    def _reranker_worker(self, port: int, environment: dict) -> subprocess.Popen | None:
        """Start a reranker worker for RERANKER_MODEL unless RERANKER_URL names running ones."""
        if settings.RERANKER_URLS:
            self.stdout.write(f"Reranker workers: {', '.join(settings.RERANKER_URLS)}")
            return None
        model = os.environ.get("RERANKER_MODEL", "")
        if not model:
            self.stdout.write(self.style.WARNING(
                "No reranker: set RERANKER_MODEL (a hub id such as BAAI/bge-reranker-base, or a folder) to start a "
                "worker. Answers say that reranking was skipped."))
            return None
        environment["RERANKER_URL"] = f"http://127.0.0.1:{port}"
        self.stdout.write(f"Reranker worker: {model} on http://127.0.0.1:{port}")
        command = [sys.executable, "-m", "reranking.server", "--model", model, "--host", "127.0.0.1", "--port", str(port)]
        return self._start(command, environment)

    def _commands(self, host: str, port: int, web_workers: int, ingestion_workers: int) -> list[list[str]]:
        worker = [sys.executable, MANAGE_PY, "procrastinate", "worker"]
        return [web_server_command(host=host, port=port, workers=web_workers)] + [worker] * ingestion_workers

    def _start(self, command: list[str], environment: dict) -> subprocess.Popen:
        return subprocess.Popen(command, cwd=settings.BASE_DIR, env=environment)

    def _supervise(self, processes: list[subprocess.Popen]) -> None:
        """Wait until a child exits or we are told to stop; then stop every child."""
        stopping = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopping.append(True))
        try:
            while not stopping and all(process.poll() is None for process in processes):
                time.sleep(0.5)
        finally:
            _stop(processes)
        failed = [process.args[:4] for process in processes if process.returncode not in (0, -signal.SIGTERM, None)]
        if not stopping and failed:
            raise CommandError(f"A process stopped unexpectedly: {failed}")


def web_server_command(*, host: str, port: int, workers: int) -> list[str]:
    """The web server serve runs (bench/load.py measures this same command)."""
    return [sys.executable, "-m", "gunicorn", "ragapp.wsgi", "--bind", f"{host}:{port}",
            "--workers", str(workers), "--threads", "4", "--timeout", "120",
            "--access-logfile", "-", "--chdir", str(settings.BASE_DIR)]


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
