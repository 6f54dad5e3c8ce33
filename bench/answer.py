"""Answer latency per stage, and the app's own overhead, against a bare call to the same generator.

For each question (SciFact queries over a collection of SciFact abstracts) the whole pipeline runs
as the chat does: retrieve -> rerank -> prompt -> generate (streamed), and the stored timings are
collected. The peer, in the same run, is the generator alone: the same prompt sent straight to
the same server with the `openai` client. The ratios say what the pipeline costs on top of the
model, and "overhead" is the app's own time: total minus the reranker's and the generator's.

    DATA_DIR=/tmp/data-bench .venv/bin/python bench/answer.py --questions 10
    # The collection is beir-scifact with the first --documents abstracts (loaded once).
    # GENERATOR_URL unset: a local vLLM (CPU, SmolLM2-135M) is started, as `manage.py serve` does.
    # --reranker-model PATH starts a reranker worker too; without it reranking is skipped (flagged).

Writes bench/results/answer.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from common import REPO_ROOT, django_setup, results_write


def options_parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "scifact",
                        help="BEIR folder whose corpus and queries are used (default ../shared/data/scifact).")
    parser.add_argument("--documents", type=int, default=300, help="Corpus entries loaded into the collection (default 300).")
    parser.add_argument("--questions", type=int, default=10, help="Questions asked (default 10).")
    parser.add_argument("--max-tokens", type=int, default=64, help="Answer tokens per question (default 64).")
    parser.add_argument("--reranker-model", help="Start a reranker worker with this cross-encoder (hub id or folder).")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    options = options_parse(argv)
    django_setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    settings.GENERATOR_MAX_TOKENS = options.max_tokens
    user = User.objects.filter(username="bench-answer").first() or User.objects.create_superuser("bench-answer")
    with generator_running(settings), reranker_running(settings, options.reranker_model):
        collection, questions = corpus_load(options)
        results = [question_measure(user, collection, question) for question in questions]
    summary = summarise(results)
    path = results_write("answer", parameters={**vars(options), "dataset": str(options.dataset)}, figures={
        "generator": {"url": settings.GENERATOR_URL, "model": settings.GENERATOR_MODEL},
        "peer": "the same prompt sent straight to the same generator with the openai client (streamed; a unique first line defeats the prefix cache)",
        "summary": summary, "questions": results})
    print(json.dumps(summary, indent=2))
    print(f"Wrote {path}")


class generator_running:
    """GENERATOR_URL as configured, or a local vLLM started for the run (as `manage.py serve` does)."""

    def __init__(self, settings):
        self.settings, self.server = settings, None

    def __enter__(self):
        if self.settings.GENERATOR_URL:
            return self
        from ragapp.core.local_generator import server_start

        self.server = server_start(home=self.settings.VLLM_HOME, port=int(os.environ.get("BENCH_GENERATOR_PORT", "8011")))
        self.server.wait_ready(timeout=600)
        self.settings.GENERATOR_URL, self.settings.GENERATOR_MODEL = self.server.url, self.server.model
        self.settings.GENERATOR_TOKENIZER = str(self.server.model_dir)
        self.settings.GENERATOR_CONTEXT_TOKENS = self.server.context_tokens
        return self

    def __exit__(self, *exc):
        if self.server:
            self.server.stop()


class reranker_running:
    """A reranker worker for --reranker-model, or none (the answers then say reranking was skipped)."""

    def __init__(self, settings, model: str | None):
        self.settings, self.model, self.process = settings, model, None

    def __enter__(self):
        self.settings.RERANKER_URLS = []
        if not self.model:
            return self
        import httpx

        port = int(os.environ.get("BENCH_RERANKER_PORT", "8012"))
        self.process = subprocess.Popen([sys.executable, "-m", "reranking.server", "--model", self.model, "--port", str(port)],
                                        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.settings.RERANKER_URLS = [url]
        return self

    def __exit__(self, *exc):
        if self.process:
            self.process.terminate()
            self.process.wait(30)


def corpus_load(options):
    """A collection of the first N SciFact abstracts (loaded once), and questions whose answer is in it."""
    from ragapp.tuning import evaluation

    dataset = evaluation.beir_dataset_read(dataset_dir=options.dataset, split="train")
    kept = {entry.id for entry in dataset.corpus[: options.documents]}
    corpus = [entry for entry in dataset.corpus if entry.id in kept]
    load = evaluation.beir_collection_load(dataset_dir=options.dataset, corpus=corpus, language="english")
    questions = [text for query_id, text in dataset.queries.items()
                 if set(dataset.qrels.get(query_id, {})) & kept][: options.questions]
    return load.collection, questions


def question_measure(user, collection, question: str) -> dict:
    """The pipeline's stage timings for one question, and the bare generator on the same prompt."""
    from ragapp.answers.services import question_answer_stream

    started, first_token = time.perf_counter(), None
    for event in question_answer_stream(user=user, question=question, collection=collection):
        if event["event"] == "token" and first_token is None:
            first_token = time.perf_counter() - started
        done = event
    timings = done["timings"]
    prompt_messages = last_prompt(done["message"])
    model_seconds = timings.get("rerank", 0.0) + timings.get("generate", 0.0) + timings.get("rewrite", 0.0)
    return {"question": question, "generated": done["generated"], "reranked": done["reranked"], "notice": done["notice"],
            "answer_characters": len(done["answer"]), "timings": timings, "time_to_first_token": first_token,
            "overhead": round(timings["total"] - model_seconds, 4), "peer": bare_generation(prompt_messages)}


def last_prompt(message_id: int) -> list[dict]:
    """The prompt the pipeline sent for this answer, rebuilt from what it stored (same passages, same order)."""
    from django.conf import settings

    from ragapp.answers import generator
    from ragapp.answers.models import Message
    from ragapp.answers.prompt import Passage, answer_prompt

    message = Message.objects.get(pk=message_id)
    passages = [Passage(c.number, c.document_title, c.page, c.text) for c in message.citations.filter(sent=True)]
    return answer_prompt(question=message.standalone_question, passages=passages, count_tokens=generator.token_counter(),
                         context_tokens=settings.GENERATOR_CONTEXT_TOKENS, answer_tokens=settings.GENERATOR_MAX_TOKENS).messages


def bare_generation(messages: list[dict]) -> dict:
    """The generator alone on the same prompt. A unique first line keeps vLLM's prefix cache from
    serving the prompt the pipeline just sent (it would skip the prefill the pipeline paid for)."""
    from ragapp.answers import generator

    system = {**messages[0], "content": f"[{uuid.uuid4()}]\n{messages[0]['content']}"}
    messages = [system, *messages[1:]]
    started, first = time.perf_counter(), None
    for _ in generator.chat_stream(messages=messages):
        first = first if first is not None else time.perf_counter() - started
    return {"time_to_first_token": first, "total": time.perf_counter() - started}


def summarise(results: list[dict]) -> dict:
    def median(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 4) if values else None

    ours_ttft, peer_ttft = median([r["time_to_first_token"] for r in results]), median([r["peer"]["time_to_first_token"] for r in results])
    ours_total, peer_total = median([r["timings"]["total"] for r in results]), median([r["peer"]["total"] for r in results])
    return {
        "questions": len(results), "generated": sum(r["generated"] for r in results), "reranked": sum(r["reranked"] for r in results),
        "median_seconds": {stage: median([r["timings"].get(stage) for r in results])
                           for stage in ("rewrite", "retrieve", "rerank", "prompt", "first_token", "generate", "total")},
        "median_overhead_seconds": median([r["overhead"] for r in results]),
        "median_time_to_first_token": {"ours": ours_ttft, "peer": peer_ttft,
                                       "ratio": round(ours_ttft / peer_ttft, 2) if ours_ttft and peer_ttft else None},
        "median_total": {"ours": ours_total, "peer": peer_total,
                         "ratio": round(ours_total / peer_total, 2) if ours_total and peer_total else None},
    }


if __name__ == "__main__":
    main()
