"""manage.py serve: migrate, ensure an administrator, run the web server and ingestion worker together."""

import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from ragapp.core.services import admin_ensure

MANAGE_PY = str(Path(settings.BASE_DIR) / "manage.py")


class Command(BaseCommand):
    help = (
        "Run the whole product on this machine: apply migrations, create the first administrator "
        "(ADMIN_USERNAME/ADMIN_PASSWORD, or a generated password printed once), then start the web "
        "server (gunicorn) and the ingestion worker (Procrastinate) and keep them running."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8000, help="Port to listen on (default 8000).")
        parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (default 2).")
        parser.add_argument("--ingestion-workers", type=int, default=1, help="Ingestion worker processes (default 1).")

    def handle(self, *args, host, port, web_workers, ingestion_workers, **options):
        call_command("migrate", interactive=False, verbosity=0)
        password = admin_ensure()
        if password:
            self.stdout.write(self.style.WARNING(
                f"Created administrator '{settings.ADMIN_USERNAME}' with password: {password}\n"
                "It is shown only this once: change it in the admin, or set ADMIN_PASSWORD before the first start."
            ))
        processes = [self._start(command) for command in self._commands(host, port, web_workers, ingestion_workers)]
        self.stdout.write(self.style.SUCCESS(f"Admin at http://{host}:{port}/admin/  (Ctrl-C stops everything)"))
        self._supervise(processes)

    def _commands(self, host: str, port: int, web_workers: int, ingestion_workers: int) -> list[list[str]]:
        web = [sys.executable, "-m", "gunicorn", "ragapp.wsgi", "--bind", f"{host}:{port}",
               "--workers", str(web_workers), "--threads", "4", "--timeout", "120",
               "--access-logfile", "-", "--chdir", str(settings.BASE_DIR)]
        worker = [sys.executable, MANAGE_PY, "procrastinate", "worker"]
        return [web] + [worker] * ingestion_workers

    def _start(self, command: list[str]) -> subprocess.Popen:
        return subprocess.Popen(command, cwd=settings.BASE_DIR)

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


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
