"""Faults under load: `manage.py serve` as shipped (local vLLM, a reranker worker), with questions
and an upload in flight, while the queue worker, vLLM and the reranker are SIGKILLed in turn.

    python bench/faults.py [--json bench/results/faults.json]

For each kill it records how long the part took to be `ready` again on /health against the
backoff serve announced, whether the web answered throughout, and what the asks in flight got.
The upload killed mid-embedding must end `ready` with the chunk count of an undisturbed ingest
of the same text. Last, SIGTERM to serve must leave none of the processes it started (the
embedded PostgreSQL included). Exits 1 when any of these does not hold.

The peer is the undisturbed run: the same text ingested, and the same asks answered, before any
kill. The reranker is a tiny random cross-encoder built here (no weights can be downloaded);
vLLM is the cached CPU build `serve` installs (the first run installs it: minutes).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, RESULTS_DIR, abstract_text, results_write, scifact_abstracts, scifact_path, scifact_queries  # noqa: E402
from reranking.synthetic import build_preset_cross_encoder  # noqa: E402
from tests.core.serving import child_running, health, processes_left, wait_for  # noqa: E402

ADMIN_PASSWORD = "faults-bench-password"
READY_TIMEOUT_SECONDS = 900  # the first run installs vLLM
PART_TIMEOUT_SECONDS = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Serve:
    """A `manage.py serve` child with its own data directory, and what it printed."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = workdir / "data"
        self.log_path = workdir / "serve.log"
        reranker = build_preset_cross_encoder(workdir / "reranker", "tiny", num_labels=1)
        environment = {**os.environ, "DATA_DIR": str(self.data_dir), "ADMIN_PASSWORD": ADMIN_PASSWORD,
                       "RERANKER_MODEL": str(reranker), "GENERATOR_MAX_TOKENS": "32"}
        for name in ("DATABASE_URL", "RERANKER_URL", "GENERATOR_URL", "GENERATOR_MODEL"):
            environment.pop(name, None)
        self.environment = environment
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "serve", "--port", str(self.port), "--web-workers", "1",
                 "--generator-port", str(free_port()), "--reranker-port", str(free_port())],
                cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)

    def health(self) -> dict:
        return health(self.base)

    def part_state(self, part: str) -> str:
        return self.health().get("parts", {}).get(part, {}).get("state", "unknown")

    def child(self, fragment: str) -> psutil.Process | None:
        return child_running(psutil.Process(self.process.pid), fragment)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def token(self) -> str:
        output = subprocess.run([sys.executable, "manage.py", "drf_create_token", "admin"], cwd=REPO_ROOT,
                                env=self.environment, capture_output=True, text=True, check=True).stdout
        return re.search(r"\b([0-9a-f]{40})\b", output).group(1)


class Traffic:
    """Asks and page loads in background threads until stopped; every failure is kept."""

    def __init__(self, base: str, token: str, collection: int, questions: list[str]):
        self.client = httpx.Client(base_url=base, headers={"Authorization": f"Token {token}"}, timeout=120)
        self.collection, self.questions = collection, questions
        self.asks: list[dict] = []
        self.page_failures: list[str] = []
        self.pages = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._ask_loop, daemon=True),
                         threading.Thread(target=self._page_loop, daemon=True)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=180)

    def _ask_loop(self) -> None:
        number = 0
        while not self._stop.is_set():
            question = self.questions[number % len(self.questions)]
            number += 1
            try:
                response = self.client.post("/api/v1/ask", json={"question": question, "collection": self.collection})
                body = response.json()
                self.asks.append({"status": response.status_code, "generated": body.get("generated"),
                                  "reranked": body.get("reranked"), "notice": body.get("notice", body.get("error", ""))})
            except (httpx.HTTPError, ValueError) as error:
                self.asks.append({"status": None, "error": str(error)})

    def _page_loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                status = self.client.get("/admin/login/", timeout=10).status_code
                self.pages += 1
                if status != 200:
                    self.page_failures.append(f"status {status}")
            except httpx.HTTPError as error:
                self.page_failures.append(str(error))


def document_upload(client: httpx.Client, collection: int, name: str, text: str) -> int:
    response = client.post("/api/v1/documents/", data={"collection": str(collection)},
                           files={"file": (name, text.encode(), "text/plain")})
    response.raise_for_status()
    return response.json()["id"]


def document(client: httpx.Client, document_id: int) -> dict:
    return client.get(f"/api/v1/documents/{document_id}/").json()


def document_ready(client: httpx.Client, document_id: int) -> dict:
    def settled():
        state = document(client, document_id)
        return state if state["status"] in ("ready", "failed") else None
    return wait_for(settled, seconds=PART_TIMEOUT_SECONDS, what=f"document {document_id} settled")


def kill_part(serve: Serve, *, fragment: str, name: str, part: str, during=None) -> dict:
    """SIGKILL the child running FRAGMENT; time until /health says PART is ready again."""
    victim = wait_for(lambda: serve.child(fragment), seconds=60, what=f"{name} running")
    if during:
        during()
    killed_at = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    announced = wait_for(lambda: re.search(rf"{re.escape(name)} exited with signal SIGKILL; restart (\d+) in ([\d.]+) s",
                                           serve.log()), seconds=60, what=f"serve noticed {name}")
    wait_for(lambda: serve.part_state(part) != "ready" or serve.child(fragment) not in (None, victim), seconds=30,
             what=f"{name} seen restarting")
    wait_for(lambda: serve.part_state(part) == "ready" and serve.child(fragment) not in (None, victim),
             seconds=PART_TIMEOUT_SECONDS, what=f"{name} ready again")
    return {"part": name, "restart": int(announced.group(1)), "backoff_s": float(announced.group(2)),
            "ready_again_after_s": round(time.monotonic() - killed_at, 1)}


def stop_and_list_left(serve: Serve) -> list[str]:
    """SIGTERM to serve; what is still running of everything it had started, the postmaster included."""
    postmaster = int((serve.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    tree = [psutil.Process(serve.process.pid), *psutil.Process(serve.process.pid).children(recursive=True),
            psutil.Process(postmaster)]
    serve.process.send_signal(signal.SIGTERM)
    serve.process.wait(timeout=120)
    time.sleep(1)
    return processes_left(tree)


def run(scifact: Path, workdir: Path) -> dict:
    serve = Serve(workdir)
    try:
        wait_for(lambda: serve.health().get("status") == "ready", seconds=READY_TIMEOUT_SECONDS, what="every part ready")
        client = httpx.Client(base_url=serve.base, headers={"Authorization": f"Token {serve.token()}"}, timeout=60)
        collection = client.post("/api/v1/collections/", json={"name": "Faults", "slug": "faults"}).json()["id"]
        text = "\n\n".join(abstract_text(record) for record in scifact_abstracts(scifact, 300))
        undisturbed = document_ready(client, document_upload(client, collection, "undisturbed.txt", text))
        questions = scifact_queries(scifact, 20)
        kills = []
        with Traffic(serve.base, serve.token(), collection, questions) as traffic:
            disturbed_id = document_upload(client, collection, "disturbed.txt", text + "\n")

            def embedding_started():
                wait_for(lambda: document(client, disturbed_id)["status"] == "embedding"
                         and document(client, disturbed_id)["progress"] > 0, seconds=PART_TIMEOUT_SECONDS,
                         what="the upload embedding")

            kills.append(kill_part(serve, fragment="procrastinate worker", name="ingestion worker 1",
                                   part="queue_workers", during=embedding_started))
            disturbed = document_ready(client, disturbed_id)
            kills.append(kill_part(serve, fragment="vllm.entrypoints", name="generator", part="generator"))
            kills.append(kill_part(serve, fragment="reranking.server", name="reranker", part="rerankers"))
        left = stop_and_list_left(serve)
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
    return {"kills": kills, "undisturbed": _document_figures(undisturbed), "disturbed": _document_figures(disturbed),
            "asks": _asks_summary(traffic.asks), "pages": {"loaded": traffic.pages, "failures": traffic.page_failures},
            "processes_left_after_stop": left}


def _document_figures(state: dict) -> dict:
    return {"status": state["status"], "chunks": state["chunk_count"], "error": state["error"]}


def _asks_summary(asks: list[dict]) -> dict:
    notices = sorted({ask.get("notice", "")[:160] for ask in asks if ask.get("notice")})
    return {"count": len(asks), "answered_200": sum(ask["status"] == 200 for ask in asks),
            "generated": sum(bool(ask.get("generated")) for ask in asks),
            "not_generated_with_notice": sum(ask["status"] == 200 and not ask.get("generated") for ask in asks),
            "failed": [ask for ask in asks if ask["status"] != 200], "notices": notices}


def verdict(figures: dict) -> list[str]:
    problems = []
    if figures["pages"]["failures"]:
        problems.append(f"the web failed {len(figures['pages']['failures'])} page loads")
    if figures["asks"]["failed"]:
        problems.append(f"{len(figures['asks']['failed'])} asks failed")
    if figures["disturbed"] != figures["undisturbed"]:
        problems.append(f"the killed upload ended {figures['disturbed']}, the undisturbed one {figures['undisturbed']}")
    if figures["processes_left_after_stop"]:
        problems.append(f"processes left: {figures['processes_left_after_stop']}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scifact", help="BEIR SciFact folder (default ../shared/data/scifact)")
    parser.add_argument("--json", type=Path, help="where to write the results (default bench/results/faults.json)")
    arguments = parser.parse_args()
    scifact = scifact_path(arguments.scifact)
    with tempfile.TemporaryDirectory(prefix="ragapp-faults-") as workdir:
        try:
            figures = run(scifact, Path(workdir))
        finally:  # serve's own account of what happened, kept beside the results
            if (Path(workdir) / "serve.log").exists():
                RESULTS_DIR.mkdir(parents=True, exist_ok=True)
                shutil.copy(Path(workdir) / "serve.log", RESULTS_DIR / "faults-serve.log")
    figures["problems"] = verdict(figures)
    path = results_write("faults", parameters={"documents": 300, "questions": 20}, figures=figures)
    if arguments.json:
        arguments.json.write_text(path.read_text())
    for kill in figures["kills"]:
        print(f"{kill['part']}: ready again {kill['ready_again_after_s']} s after SIGKILL (backoff {kill['backoff_s']:g} s)")
    print(f"asks: {figures['asks']['answered_200']} of {figures['asks']['count']} answered "
          f"({figures['asks']['generated']} generated); page loads: {figures['pages']['loaded']}, "
          f"failed {len(figures['pages']['failures'])}")
    print(f"killed upload: {figures['disturbed']}; undisturbed: {figures['undisturbed']}")
    print(f"processes left after stopping serve: {figures['processes_left_after_stop'] or 'none'}")
    print("OK" if not figures["problems"] else "PROBLEMS: " + "; ".join(figures["problems"]))
    print(f"JSON: {path}")
    sys.exit(1 if figures["problems"] else 0)


if __name__ == "__main__":
    main()
