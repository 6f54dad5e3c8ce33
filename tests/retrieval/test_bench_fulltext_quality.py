"""bench/fulltext_quality.py on a tiny BEIR set that `manage.py evaluate` loaded: the search statement and the exact
peer rank the same documents, and the script scores them as evaluate scores its full-text mode."""

import json
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from tests.tuning.test_evaluate import ENGLISH_CORPUS, ENGLISH_QUERIES, write_beir

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import common  # noqa: E402
import fulltext_quality  # noqa: E402

pytestmark = pytest.mark.django_db


def test_statement_and_exact_peer_rank_alike_and_score_as_evaluate_does(tmp_path, monkeypatch, capsys):
    dataset = write_beir(tmp_path / "tinyset", ENGLISH_CORPUS, ENGLISH_QUERIES)
    evaluated = tmp_path / "evaluate.json"
    call_command("evaluate", "--dataset", str(dataset), "--split", "train", "--mode", "fulltext", "--json", str(evaluated))
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")

    fulltext_quality.main(["--dataset", str(dataset), "--output", "quality"])

    figures = json.loads((tmp_path / "results" / "quality.json").read_text())
    fulltext = json.loads(evaluated.read_text())["metrics"]["fulltext"]
    for side in ("statement", "peer"):
        assert {name: figures[side][name] for name in fulltext} == pytest.approx(fulltext, abs=1e-4)
        assert figures[side]["calls"] == len(ENGLISH_QUERIES)
    assert figures["statement"]["nDCG@10"] > 0.5
    assert figures["ndcg_at_10_difference"] == 0 and figures["queries_with_different_top10"] == 0
    assert "top 10 documents differ on 0 of 6 queries" in capsys.readouterr().out
