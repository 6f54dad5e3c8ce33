"""Reranker training data mined from hybrid retrieval, query splits, and manage.py train_reranker."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from ragapp.documents.models import Chunk
from ragapp.retrieval.selectors import chunk_search
from ragapp.tuning import evaluation, training_data
from reranking.synthetic import build_preset_cross_encoder
from tests.tuning.test_evaluate import write_beir

# Two chunks (more than CHUNK_TOKENS): the first about what the whale eats, the second about its songs.
WHALE_TEXT = (" ".join(f"In survey {number} the blue whale was seen eating krill near the surface." for number in range(12))
              + " " + " ".join(f"Recording {number} captured low whale songs travelling far through the ocean." for number in range(12)))
CORPUS = {
    "whale": ("Blue whales", WHALE_TEXT),
    "bread": ("Sourdough bread", "A sourdough starter of wild yeast and flour leavens the dough overnight."),
    "volcano": ("Volcanoes", "Magma rises through the crust and erupts as lava, ash and volcanic gas."),
    "bees": ("Honey bees", "Worker bees collect nectar and pollen and turn nectar into honey in the hive."),
    "glacier": ("Glaciers", "Glaciers are rivers of ice that carve valleys as they slowly move downhill."),
    "saturn": ("Saturn", "Saturn's rings are made of ice and rock orbiting the gas giant planet."),
}
QUERIES = {
    "q-whale": ("What does the blue whale eat?", "whale"),
    "q-bread": ("How is sourdough bread leavened?", "bread"),
    "q-volcano": ("What comes out when a volcano erupts?", "volcano"),
    "q-bees": ("How do bees make honey?", "bees"),
    "q-saturn": ("What are the rings of Saturn made of?", "saturn"),
}


@pytest.fixture
def beir_folder(tmp_path):
    folder = write_beir(tmp_path / "minedset", CORPUS, QUERIES)
    with (folder / "qrels" / "train.tsv").open("a", encoding="utf-8") as qrels:
        qrels.write("q-bread\twhale\t1\n")  # a relevant document that a bread query will not retrieve
    return folder


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    return build_preset_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"), "tiny", seed=3)


def mine(folder, depth=100):
    dataset = evaluation.beir_dataset_read(dataset_dir=folder, split="train")
    collection = evaluation.beir_collection_load(dataset_dir=folder, corpus=dataset.corpus).collection
    mined = training_data.training_groups_mine(dataset=dataset, collection=collection, depth=depth, progress=False)
    return collection, {group.query_id: group.group for group in mined.groups}, mined


def chunk_texts(collection, corpus_id) -> list[str]:
    return list(Chunk.objects.filter(document__collection=collection, document__external_id=corpus_id)
                .order_by("ordinal").values_list("text", flat=True))


@pytest.mark.django_db
def test_mining_takes_the_best_ranked_chunk_of_a_retrieved_relevant_document_and_never_a_relevant_negative(beir_folder):
    collection, groups, mined = mine(beir_folder)
    whale_chunks = chunk_texts(collection, "whale")
    assert len(whale_chunks) == 2

    best = next(c.chunk.text for c in chunk_search(query="What does the blue whale eat?", collection=collection, reader=None, k=100)
                if c.chunk.text in whale_chunks)
    assert groups["q-whale"].positives == [best]
    assert not set(whale_chunks) & set(groups["q-whale"].negatives)
    assert len(groups["q-whale"].negatives) == len(CORPUS) - 1  # every other document's chunk, once
    for query_id, (_, relevant) in QUERIES.items():
        assert not set(chunk_texts(collection, relevant)) & set(groups[query_id].negatives)
    assert mined.queries_without_negatives == 0


@pytest.mark.django_db
def test_a_relevant_document_outside_the_top_k_gives_all_its_chunks(beir_folder):
    collection, groups, mined = mine(beir_folder, depth=2)

    bread = groups["q-bread"]
    assert bread.positives[0] in chunk_texts(collection, "bread")  # retrieved: first
    assert bread.positives[1:] == chunk_texts(collection, "whale")  # missed: all its chunks, in order
    assert not set(bread.positives) & set(bread.negatives)
    assert mined.positives_missed >= 1


def test_query_split_is_seeded_disjoint_and_covers_every_query():
    query_ids = [f"q{number}" for number in range(50)]

    train_ids, heldout_ids = training_data.query_ids_split(query_ids=query_ids, holdout_fraction=0.2, seed=13)

    assert len(heldout_ids) == 10 and not set(train_ids) & set(heldout_ids)
    assert sorted(train_ids + heldout_ids) == sorted(query_ids)
    assert (train_ids, heldout_ids) == training_data.query_ids_split(query_ids=query_ids, holdout_fraction=0.2, seed=13)
    reordered = training_data.query_ids_split(query_ids=list(reversed(query_ids)), holdout_fraction=0.2, seed=13)
    assert reordered[1] == list(reversed(heldout_ids))  # the same queries, whatever the input order
    assert training_data.query_ids_split(query_ids=query_ids, holdout_fraction=0.2, seed=14)[1] != heldout_ids


@pytest.mark.django_db
def test_command_writes_split_files_and_groups_then_a_cross_encoder_folder(beir_folder, tiny_cross_encoder, tmp_path, capsys):
    from sentence_transformers import CrossEncoder

    output = tmp_path / "models" / "reranker"
    call_command("train_reranker", "--dataset", str(beir_folder), "--split", "train", "--output", str(output),
                 "--holdout-fraction", "0.4", "--split-seed", "13", "--splits-dir", str(tmp_path / "splits"),
                 "--base-model", str(tiny_cross_encoder), "--epochs", "1", "--group-size", "4",
                 "--max-length", "64", "--max-query-tokens", "16", "--device", "cpu", "--threads", "1")

    train_file, = (tmp_path / "splits").glob("*-train.txt")
    heldout_file, = (tmp_path / "splits").glob("*-heldout.txt")
    train_ids = evaluation.query_ids_read(path=train_file)
    heldout_ids = evaluation.query_ids_read(path=heldout_file)
    assert len(heldout_ids) == 2 and sorted(train_ids + heldout_ids) == sorted(QUERIES)
    rows = [json.loads(line) for line in (tmp_path / "models" / "reranker-groups.jsonl").read_text().splitlines()]
    assert [row["query_id"] for row in rows] == train_ids
    scores = CrossEncoder(str(output), device="cpu").predict([("What does the blue whale eat?", "Krill.")])
    assert 0 < scores[0] < 1
    out = capsys.readouterr().out
    assert "ln(group size)" in out and "Done in" in out


@pytest.mark.django_db
def test_command_trains_only_on_the_queries_of_a_file(beir_folder, tiny_cross_encoder, tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text("q-whale\nq-bees\n")

    call_command("train_reranker", "--dataset", str(beir_folder), "--split", "train", "--output", str(tmp_path / "model"),
                 "--queries", str(queries), "--base-model", str(tiny_cross_encoder), "--epochs", "1",
                 "--group-size", "4", "--max-length", "64", "--max-query-tokens", "16", "--device", "cpu", "--threads", "1")

    rows = (tmp_path / "model-groups.jsonl").read_text().splitlines()
    assert [json.loads(row)["query_id"] for row in rows] == ["q-whale", "q-bees"]
    assert (tmp_path / "model" / "reranker_training.json").is_file()


# Titles long enough to be pseudo-queries, one too short, one missing (the file name stands in), one shared by two papers.
PAPERS = {
    "p-aspirin": ("Aspirin lowers the risk of heart attack in older adults",
                  "In a trial of older adults, daily low-dose aspirin cut myocardial infarctions by a fifth."),
    "p-aspirin-copy": ("Aspirin lowers the risk of heart attack in older adults",
                       "A second report of the same trial, with five more years of follow-up of the aspirin group."),
    "p-statins": ("Statins reduce cholesterol and cardiovascular events",
                  "Patients taking statins had lower cholesterol and fewer heart attacks and strokes than placebo."),
    "p-sleep": ("Short sleep impairs memory consolidation in students",
                "Students who slept five hours recalled fewer words the next morning than those who slept eight."),
    # A suspended hyphen, as in real titles: text, not an exclusion, so the paper still retrieves itself.
    "p-coffee": ("Coffee-drinking and -abstaining adults and the risk of liver disease",
                 "Drinking coffee daily was associated with less liver fibrosis and cirrhosis in a large cohort."),
    "p-short": ("Results", "Heart attack rates fell in the treated group."),
    "p-untitled": ("", "An untitled note on heart attack prevention with aspirin."),
}


@pytest.fixture
def papers_folder(tmp_path):
    return write_beir(tmp_path / "papers", PAPERS, {"q-aspirin": ("Does aspirin prevent heart attacks?", "p-aspirin")})


@pytest.mark.django_db
def test_pseudo_queries_are_given_titles_cut_from_every_passage(papers_folder):
    dataset = evaluation.beir_dataset_read(dataset_dir=papers_folder, split="train")
    collection = evaluation.beir_collection_load(dataset_dir=papers_folder, corpus=dataset.corpus).collection

    mined = training_data.pseudo_query_groups_mine(collection=collection, limit=10, progress=False)

    groups = {group.query_id: group.group for group in mined.groups}
    assert set(groups) == {f"pseudo:{corpus_id}" for corpus_id in ("p-aspirin", "p-aspirin-copy", "p-statins", "p-sleep", "p-coffee")}
    aspirin = groups["pseudo:p-aspirin"]
    assert aspirin.pseudo and aspirin.query == PAPERS["p-aspirin"][0]
    assert aspirin.positives == [PAPERS["p-aspirin"][1]]  # the paper's text without its title
    assert PAPERS["p-statins"][1] in aspirin.negatives and PAPERS["p-short"][1] in aspirin.negatives
    assert PAPERS["p-aspirin-copy"][1] not in aspirin.negatives  # the same title: maybe the same work, no negative
    titles = [title for title, _ in PAPERS.values() if title]
    passages = [text for group in groups.values() for text in [*group.positives, *group.negatives]]
    assert not [text for text in passages if any(text.startswith(title) for title in titles)]
    assert mined.positives_missed == 0 and mined.queries_without_negatives == 0
    again = training_data.pseudo_query_groups_mine(collection=collection, limit=3, progress=False)
    assert [group.query_id for group in again.groups] == [group.query_id for group in mined.groups][:3]  # seeded


@pytest.mark.django_db
def test_command_adds_pseudo_query_groups_to_the_labelled_ones(papers_folder, tiny_cross_encoder, tmp_path, capsys):
    call_command("train_reranker", "--dataset", str(papers_folder), "--split", "train", "--output", str(tmp_path / "model"),
                 "--pseudo-queries", "2", "--base-model", str(tiny_cross_encoder), "--epochs", "1", "--group-size", "4",
                 "--max-length", "64", "--max-query-tokens", "16", "--device", "cpu", "--threads", "1")

    rows = [json.loads(row) for row in (tmp_path / "model-groups.jsonl").read_text().splitlines()]
    assert [row["query_id"] for row in rows][0] == "q-aspirin" and "pseudo" not in rows[0]
    assert len(rows) == 3 and all(row["pseudo"] and row["query_id"].startswith("pseudo:") for row in rows[1:])
    record = json.loads((tmp_path / "model" / "reranker_training.json").read_text())
    assert record["groups"] == 3 and record["pseudo_groups"] == 2
    assert "2 pseudo-query groups" in capsys.readouterr().out


@pytest.mark.django_db
def test_pseudo_queries_from_feedback_need_a_collection(tmp_path):
    with pytest.raises(CommandError, match="--collection"):
        call_command("train_reranker", "--from-feedback", "--output", str(tmp_path / "model"), "--pseudo-queries", "5")


def test_mining_imports_the_group_types_without_the_training_code_or_torch():
    code = ("import sys, django; django.setup(); import ragapp.tuning.training_data, ragapp.tuning.feedback; "
            "loaded = {'reranking.train', 'torch'} & set(sys.modules); assert not loaded, loaded")

    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2],
                   env={**os.environ, "DJANGO_SETTINGS_MODULE": "ragapp.settings"})
