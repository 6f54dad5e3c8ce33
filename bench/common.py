"""What both benchmarks share: Django set-up, SciFact reading, timing statistics, the results file."""

import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
CACHE_DIR = REPO_ROOT / "bench" / ".cache"
DEFAULT_SCIFACT = REPO_ROOT.parent / "shared" / "data" / "scifact"
# Other work on the machine skews every figure: the results record the load at start and end.
LOAD_AT_START = os.getloadavg()[0]


def django_setup() -> None:
    """Make the repository importable and start Django (the embedded PostgreSQL starts at the first query)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ragapp.settings")
    import django

    django.setup()


def scifact_path(value: str | None) -> Path:
    """Return the SciFact folder: the option, else $SCIFACT_DIR, else ../shared/data/scifact."""
    path = Path(value or os.environ.get("SCIFACT_DIR") or DEFAULT_SCIFACT)
    if not (path / "corpus.jsonl").exists():
        sys.exit(f"No SciFact corpus at {path}/corpus.jsonl: pass --scifact PATH (a BEIR SciFact folder).")
    return path


def scifact_abstracts(folder: Path, limit: int | None = None) -> list[dict]:
    """Return up to `limit` corpus records ({"_id", "title", "text"}) in file order."""
    records = []
    with (folder / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            records.append(json.loads(line))
            if limit is not None and len(records) >= limit:
                break
    return records


def scifact_queries(folder: Path, limit: int | None = None) -> list[str]:
    """Return up to `limit` query texts in file order."""
    with (folder / "queries.jsonl").open(encoding="utf-8") as lines:
        queries = [json.loads(line)["text"] for line in lines]
    return queries[:limit]


def abstract_text(record: dict) -> str:
    """An abstract as the plain-text document the benchmarks ingest: title, blank line, text."""
    return f"{record['title']}\n\n{record['text']}"


def chunk_drafts(content: str | bytes, *, filename: str = "document.txt") -> list:
    """Parse and chunk a text or a file's bytes exactly as ingestion does (same parser, tokenizer and budget)."""
    from django.conf import settings

    from ragapp.documents import chunking, embedding, parsing

    data = content.encode("utf-8") if isinstance(content, str) else content
    parsed = parsing.document_parse(data, filename=filename)
    return chunking.document_chunk(
        parsed, tokenizer=embedding.embedding_tokenizer(),
        chunk_tokens=min(settings.CHUNK_TOKENS, embedding.max_chunk_tokens()),
        overlap_tokens=settings.CHUNK_OVERLAP_TOKENS,
    )


def latency_summary(seconds: list[float]) -> dict:
    """p50, p95, mean and max of per-call durations, in milliseconds."""
    ordered = sorted(seconds)
    return {
        "calls": len(ordered),
        "p50_ms": round(1000 * _percentile(ordered, 50), 3),
        "p95_ms": round(1000 * _percentile(ordered, 95), 3),
        "mean_ms": round(1000 * statistics.fmean(ordered), 3),
        "max_ms": round(1000 * ordered[-1], 3),
    }


def _percentile(ordered: list[float], percent: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    position = (len(ordered) - 1) * percent / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def machine_info() -> dict:
    """Describe where the figures were measured: CPU, OS, torch threads, PostgreSQL and pgvector."""
    import torch
    from django.conf import settings

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": {"start": round(LOAD_AT_START, 2), "end": round(os.getloadavg()[0], 2)},
        # A benchmark that drives `serve` from outside (faults.py) has no database of its own to describe.
        **(_database_info(settings, torch) if settings.configured else {}),
    }


def _database_info(settings, torch) -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version'), "
                       "(SELECT extversion FROM pg_extension WHERE extname = 'vector')")
        postgres_version, pgvector_version = cursor.fetchone()
    return {"embedding_device": settings.EMBEDDING_DEVICE or ("cuda" if torch.cuda.is_available() else "cpu"),
            "postgres": postgres_version, "pgvector": pgvector_version,
            "database": "embedded" if settings.EMBEDDED_DATABASE else "DATABASE_URL"}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def results_write(name: str, *, parameters: dict, figures: dict, path: Path | None = None) -> Path:
    """Write bench/results/<name>.json (or `path`) with the machine, the date, the parameters and the figures."""
    path = path or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": parameters,
        **figures,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
