"""ragapp/database: the embedded PostgreSQL starts when a process first connects, not when settings are read.

Each test runs Python in a subprocess with its own DATA_DIR, as a user does on a first checkout.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Prints whether the server's folder exists and how many postgres processes run on it, after
# django.setup() and again after the first query.
FIRST_QUERY = """
import json, django
from pathlib import Path
django.setup()
from django.conf import settings
from django.db import connection
from tests.test_database import servers_on

pgdata = Path(settings.DATA_DIR) / "postgres"
after_setup = {"folder": pgdata.exists(), "servers": len(servers_on(pgdata))}
with connection.cursor() as cursor:
    cursor.execute("SELECT 40 + 2")
    answer = cursor.fetchone()[0]
after_query = {"folder": pgdata.exists(), "servers": len(servers_on(pgdata))}
print(json.dumps({"after_setup": after_setup, "after_query": after_query, "answer": answer}))
"""


def embedded_environment(data_dir: Path) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    return {**environment, "DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "ragapp.settings"}


def servers_on(pgdata: Path) -> list[int]:
    """The pids of the postgres processes running on `pgdata`."""
    return [process.pid for process in psutil.process_iter(["name", "cmdline"])
            if process.info["name"] == "postgres" and str(pgdata) in " ".join(process.info["cmdline"] or [])]


def test_settings_start_no_server_and_the_first_query_does(tmp_path):
    result = subprocess.run([sys.executable, "-c", FIRST_QUERY], cwd=ROOT, env=embedded_environment(tmp_path / "data"),
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"after_setup": {"folder": False, "servers": 0},
                                         "after_query": {"folder": True, "servers": 1}, "answer": 42}
    assert servers_on(tmp_path / "data" / "postgres") == []  # the last process that used it has exited


@pytest.mark.parametrize("command", ["help", "check"])
def test_commands_that_need_no_database_start_none(tmp_path, command):
    result = subprocess.run([sys.executable, "manage.py", command], cwd=ROOT, env=embedded_environment(tmp_path / "data"),
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "data" / "postgres").exists()


@pytest.mark.skipif(shutil.which("psql") is None, reason="dbshell runs psql, which is not installed here")
def test_dbshell_starts_the_server_before_psql_connects(tmp_path):
    result = subprocess.run([sys.executable, "manage.py", "dbshell", "--", "-tAc", "SELECT 40 + 2"], cwd=ROOT,
                            env=embedded_environment(tmp_path / "data"), capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "42\n"


# Connects, says it has, then waits to be killed.
CONNECT_AND_WAIT = """
import time, django
django.setup()
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
print("connected", flush=True)
time.sleep(600)
"""


def test_a_process_killed_while_connected_does_not_keep_the_server_running_after_the_others_exit(tmp_path):
    environment = embedded_environment(tmp_path / "data")
    killed = subprocess.Popen([sys.executable, "-c", CONNECT_AND_WAIT], cwd=ROOT, env=environment,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline() == "connected\n"
    finally:
        killed.kill()  # SIGKILL: it never says it has gone
        killed.wait()
    pgdata = tmp_path / "data" / "postgres"
    assert len(servers_on(pgdata)) == 1

    try:
        result = subprocess.run([sys.executable, "-c", FIRST_QUERY], cwd=ROOT, env=environment,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["answer"] == 42
        assert servers_on(pgdata) == []  # the last live process stopped it
    finally:
        for pid in servers_on(pgdata):  # a failure here must not leave a server behind
            psutil.Process(pid).terminate()
