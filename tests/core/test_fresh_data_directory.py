"""Commands on a fresh data directory (a new embedded database, no tables): they work, or say what to run.

Each test runs manage.py in a subprocess with its own DATA_DIR, as a user does on a first checkout.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def manage(data_dir: Path, *arguments: str) -> subprocess.CompletedProcess:
    environment = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    environment["DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "manage.py", *arguments], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)


def write_tiny_beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": "lava", "title": "Volcanoes", "text": "Magma erupts as lava and ash."},
              {"_id": "bread", "title": "Bread", "text": "Sourdough is leavened by wild yeast."}]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in corpus))
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "What does a volcano erupt?"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\tlava\t1\n")
    return folder


def test_evaluate_migrates_quietly_then_scores(tmp_path):
    result = manage(tmp_path / "data", "evaluate", "--dataset", str(write_tiny_beir(tmp_path / "beir")),
                    "--split", "test", "--mode", "fulltext")

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Applying" not in result.stdout
    assert "fulltext   1.0000" in result.stdout


def test_train_reranker_from_feedback_says_there_is_no_feedback_yet(tmp_path):
    result = manage(tmp_path / "data", "train_reranker", "--from-feedback", "--output", str(tmp_path / "model"))

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("CommandError: No answer rated up")


def test_djangos_own_commands_say_to_migrate_first_in_one_line(tmp_path):
    result = manage(tmp_path / "data", "changepassword", "admin")

    assert result.returncode == 1  # stdout has Django's own notice of unapplied migrations
    assert result.stderr == ('The database is not migrated yet (relation "auth_user" does not exist). '
                             "Run `python manage.py migrate` first (`python manage.py serve` migrates too).\n")
