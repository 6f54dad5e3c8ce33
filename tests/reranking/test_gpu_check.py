"""bench/gpu_check.py's training recipes, run here on the CPU with a tiny model (the script itself runs on a GPU
machine only now and then, so CI keeps it working)."""

import gzip
import json
import lzma
import sys
from pathlib import Path

import pytest

from reranking.groups import TrainingGroup, training_groups_write
from reranking.synthetic import build_preset_cross_encoder

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import gpu_check  # noqa: E402

THINGS = [f"thing{number}" for number in range(24)]


@pytest.fixture
def carried(tmp_path, monkeypatch):
    """What --prepare leaves in .data/gpu, small: a model, labelled and pseudo-query groups, exported pairs."""
    folder = tmp_path / "gpu"
    folder.mkdir()
    monkeypatch.setattr(gpu_check, "GPU_DIR", folder)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    build_preset_cross_encoder(folder / "minilm", "tiny", seed=3)
    # The script sets this for its speed benchmark when unset; pinned here so that it cannot leak to other tests.
    monkeypatch.setenv("RERANKING_TOKENIZER", str(folder / "minilm"))
    labelled = [TrainingGroup(query=f"what colour is {thing}?", positives=[f"{thing} is red"],
                              negatives=[f"{thing} is {quality}" for quality in ("big", "small", "old", "new", "soft")])
                for thing in THINGS]
    pseudo = [TrainingGroup(query=f"A study of {thing}", positives=[f"We studied {thing} closely."],
                            negatives=[f"We studied {other} closely." for other in THINGS[:6] if other != thing], pseudo=True)
              for thing in THINGS]
    training_groups_write(groups=labelled, path=tmp_path / "groups.jsonl")
    training_groups_write(groups=pseudo, path=tmp_path / "pseudo.jsonl")
    gpu_check.compress(tmp_path / "groups.jsonl", folder / "groups.jsonl.xz")
    gpu_check.compress(tmp_path / "pseudo.jsonl", folder / "pseudo-groups.jsonl.xz")
    texts = ["thing1 is red", "thing1 is big", "thing2 is old"]
    record = {"format": "ragapp-rerank-pairs/1", "texts": texts,
              "queries": [{"query": "what colour is thing1?", "candidates": [0, 1]}, {"query": "how old is thing2?", "candidates": [2]}]}
    with gzip.open(folder / "pairs.json.gz", "wt", encoding="utf-8") as handle:
        json.dump(record, handle)
    return tmp_path


def test_every_recipe_trains_and_scores_the_exported_pairs(carried):
    gpu_check.main(["--skip-speed", "--epochs", "2", "--pseudo-epochs", "1", "--pseudo-limit", "10"])

    out = carried / "out"
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["recipes"] == ["labelled", "mixed", "staged"]
    assert report["fine_tuning"]["pseudo_groups"] == 0 and report["fine_tuning"]["validation_groups"] > 0
    assert report["fine_tuning_mixed"]["pseudo_groups"] == 10
    pseudo_phase, labelled_phase = report["fine_tuning_staged"]["phases"]
    assert pseudo_phase["groups"] == pseudo_phase["pseudo_groups"] == 10 and pseudo_phase["validation_groups"] == 0
    assert labelled_phase["validation_groups"] == report["fine_tuning"]["validation_groups"]
    scores = {}
    for name in ("pair_scores.json.gz", "pair_scores-mixed.json.gz", "pair_scores-staged.json.gz"):
        with gzip.open(out / name, "rt", encoding="utf-8") as handle:
            scored = json.load(handle)
        assert [len(entry["scores"]) for entry in scored["queries"]] == [2, 1]
        scores[name] = [score for entry in scored["queries"] for score in entry["scores"]]
    assert len({tuple(values) for values in scores.values()}) == 3  # three different models
    assert (out / "trained.tar.part-00").is_file()
    recorded = json.loads((carried / "gpu" / "trained" / "pair_encoding.json").read_text())
    assert recorded == {"max_length": 384, "query_max_length": 64}  # the recipe's lengths, served as trained
    assert not [key for key, value in report.items() if isinstance(value, dict) and "error" in value]


def test_without_pseudo_query_groups_only_the_labelled_recipe_runs(carried):
    (carried / "gpu" / "pseudo-groups.jsonl.xz").unlink()

    gpu_check.main(["--skip-speed", "--epochs", "1"])

    report = json.loads((carried / "out" / "gpu_check.json").read_text())
    assert report["recipes"] == ["labelled"] and "fine_tuning_mixed" not in report
    assert (carried / "out" / "pair_scores.json.gz").is_file()


def test_a_broken_groups_file_is_reported_and_nothing_trains(carried):
    with lzma.open(carried / "gpu" / "groups.jsonl.xz", "wt") as handle:
        handle.write('{"query": "no passages"}\n')

    gpu_check.main(["--skip-speed"])

    report = json.loads((carried / "out" / "gpu_check.json").read_text())
    assert "line 1" in report["recipes"]["error"] and "fine_tuning" not in report
