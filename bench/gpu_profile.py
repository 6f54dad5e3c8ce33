"""Where the reranker's model path spends a call on a GPU: tokenizing, or scoring (padding + model).

For calls of one query (100 pairs) and of all queries at once, at several token budgets, after a
warm-up that shows the model every batch shape once. Prints JSON (also to $OUT/gpu_profile.json).
Needs what `bench/rerank.py` needs; on the GPU machine set RERANKING_TOKENIZER=.data/gpu/minilm.

    python bench/gpu_profile.py --size base
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="base", help="Model size, as in rerank.py (default: base).")
    parser.add_argument("--queries", type=int, default=16, help="Queries of 100 candidates (default: 16).")
    parser.add_argument("--budgets", default="16384,32768,65536", help="Token budgets to try (default: 16k, 32k, 64k).")
    parser.add_argument("--rounds", type=int, default=3, help="Timed rounds per setting (default: 3).")
    options = parser.parse_args(argv)

    import torch

    import rerank
    from reranking.model import CrossEncoderScorer

    sets = rerank.query_sets(options.queries, 100)
    scorer = CrossEncoderScorer(rerank.model_path(options.size), device="cuda" if torch.cuda.is_available() else "cpu")
    tokenized = [scorer.tokenize_query(pairs[0][0], [document for _, document in pairs]) for pairs in sets]
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "size": options.size,
              "dtype": str(scorer.dtype), "pairs_per_query": len(sets[0]),
              "tokenize_ms_per_query": milliseconds(lambda: [scorer.tokenize_query(p[0][0], [d for _, d in p]) for p in sets],
                                                    options.rounds) / len(sets),
              "budgets": {}}
    everything = [pair for pairs in tokenized for pair in pairs]
    for budget in [int(value) for value in options.budgets.split(",")]:
        scorer.token_budget = budget
        for encoded in tokenized:  # warm-up: every batch shape of this budget once
            scorer.score_encoded(encoded)
        scorer.score_encoded(everything)
        per_query = milliseconds(lambda: [scorer.score_encoded(encoded) for encoded in tokenized], options.rounds) / len(sets)
        all_at_once = milliseconds(lambda: scorer.score_encoded(everything), options.rounds)
        report["budgets"][budget] = {
            "score_ms_per_query": round(per_query, 2),
            "pairs_per_second_one_query_per_call": round(len(sets[0]) / (per_query + report["tokenize_ms_per_query"]) * 1000, 1),
            "score_ms_all_queries": round(all_at_once, 2),
            "pairs_per_second_all_queries_model_only": round(len(everything) / all_at_once * 1000, 1),
        }
    report["tokenize_ms_per_query"] = round(report["tokenize_ms_per_query"], 2)
    text = json.dumps(report, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_profile.json").write_text(text + "\n")


def milliseconds(function, rounds: int) -> float:
    """Median wall time of `function` in ms, synchronised with the GPU."""
    import torch

    times = []
    for _ in range(rounds):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


if __name__ == "__main__":
    main()
