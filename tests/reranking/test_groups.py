"""reranking.groups: JSONL rows of training groups, the seeded query split, no torch on import."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reranking.groups import (
    TrainingError,
    TrainingGroup,
    queries_hold_out,
    training_groups_read,
    training_groups_write,
    validation_split,
)
from tests.reranking.factories import colour_groups


def test_groups_round_trip_through_jsonl_with_query_ids_and_a_bad_row_names_its_line(tmp_path):
    path = tmp_path / "groups.jsonl"
    groups = [*colour_groups()[:3], TrainingGroup(query="q", positives=["p"], negatives=["n"])]

    training_groups_write(groups=groups, path=path, query_ids=["a", "b", "c", "x"])

    assert [json.loads(line)["query_id"] for line in path.read_text().splitlines()] == ["a", "b", "c", "x"]
    assert training_groups_read(path=path) == groups

    path.write_text(json.dumps({"query": "q", "positives": ["p"]}) + "\n" + json.dumps({"query": "q"}) + "\n")
    with pytest.raises(TrainingError, match="line 2"):
        training_groups_read(path=path)


def test_a_query_id_for_every_group_or_none(tmp_path):
    with pytest.raises(ValueError):
        training_groups_write(groups=colour_groups()[:3], path=tmp_path / "groups.jsonl", query_ids=["a", "b"])


def test_the_pseudo_flag_round_trips_and_plain_rows_stay_as_they_were(tmp_path):
    path = tmp_path / "groups.jsonl"
    groups = [TrainingGroup(query="q", positives=["p"], negatives=["n"]),
              TrainingGroup(query="Title of a paper", positives=["its text"], negatives=["other text"], pseudo=True)]

    training_groups_write(groups=groups, path=path)

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {"query": "q", "positives": ["p"], "negatives": ["n"]} and rows[1]["pseudo"] is True
    assert training_groups_read(path=path) == groups


def test_validation_split_keeps_every_group_of_a_query_on_one_side():
    groups = colour_groups() + [TrainingGroup(query=group.query, positives=["again"], negatives=["other"]) for group in colour_groups()[:5]]

    training, validation = validation_split(groups, fraction=0.25, seed=13)

    assert {group.query for group in training}.isdisjoint({group.query for group in validation})
    assert len({group.query for group in validation}) == 5 and len(training) + len(validation) == len(groups)
    assert validation_split(groups, fraction=0.25, seed=13) == (training, validation)


def test_pseudo_query_groups_always_train_and_never_validate():
    labelled = colour_groups()
    pseudo = [TrainingGroup(query=group.query, positives=["a title's own passage"], negatives=["another passage"], pseudo=True)
              for group in labelled[:4]] + [TrainingGroup(query=f"title {n}", positives=["p"], negatives=["n"], pseudo=True)
                                            for n in range(40)]

    training, validation = validation_split([*labelled, *pseudo], fraction=0.25, seed=13)

    assert validation and not any(group.pseudo for group in validation)
    assert all(group in training for group in pseudo)  # even those whose text equals a validation query
    assert len({group.query for group in validation}) == 5  # a quarter of the 20 labelled queries, not of all 64
    assert validation == validation_split(labelled, fraction=0.25, seed=13)[1]


def test_the_validation_queries_are_those_the_seeded_hold_out_picks():
    groups = colour_groups()

    _, validation = validation_split(groups, fraction=0.25, seed=13)

    held = queries_hold_out(queries=[group.query for group in groups], fraction=0.25, seed=13)
    assert {group.query for group in validation} == held
    assert queries_hold_out(queries=[group.query for group in reversed(groups * 2)], fraction=0.25, seed=13) == held


def test_importing_the_groups_loads_no_torch():
    code = "import sys, reranking.groups; assert 'torch' not in sys.modules, 'torch was imported'"

    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
