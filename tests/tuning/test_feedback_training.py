"""Users' feedback as reranker training data: answers rated up give groups, `train_reranker --from-feedback` trains."""

import json

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from ragapp.answers.models import Feedback
from ragapp.answers.services import question_answer
from ragapp.tuning.feedback import feedback_groups_mine
from reranking.synthetic import build_preset_cross_encoder
from tests.answers.scripted_generator import scripted_generator

pytestmark = pytest.mark.django_db

POLICIES = {
    "travel.txt": "Train tickets are reimbursed in second class. Taxi rides need a receipt from the driver.",
    "vacation.txt": "Employees receive twenty-five days of paid vacation. Unused days expire at the end of March.",
    "kitchen.txt": "The coffee machine is descaled every Friday. Taxi numbers are pinned next to it.",
}


@pytest.fixture
def rated_answers(settings, collection, ingest):
    for name, text in POLICIES.items():
        ingest(collection, name, text.encode())
    user = User.objects.create_user("reader")
    collection.readers.add(user)
    settings.RERANKER_URLS = []
    with scripted_generator(lambda messages: "A receipt from the driver [1].") as (url, _):
        settings.GENERATOR_URL, settings.GENERATOR_MODEL = url, ""
        good = question_answer(user=user, question="Do taxi rides need a receipt?", collection=collection)
        bad = question_answer(user=user, question="How many vacation days?", collection=collection)
    Feedback.objects.create(message=good, user=user, rating=Feedback.Rating.UP)
    Feedback.objects.create(message=bad, user=user, rating=Feedback.Rating.DOWN)
    return good


def test_an_answer_rated_up_gives_its_cited_passages_as_positives_and_other_documents_as_negatives(rated_answers):
    mined = feedback_groups_mine(progress=False)
    assert [group.query_id for group in mined.groups] == [f"message-{rated_answers.pk}"]  # the one rated down gives none
    group = mined.groups[0].group
    assert group.query == "Do taxi rides need a receipt?"
    assert len(group.positives) == 1 and "receipt from the driver" in group.positives[0]
    assert group.negatives and not any("receipt from the driver" in text for text in group.negatives)
    assert mined.positives_retrieved == 1


def test_train_reranker_from_feedback_writes_groups_and_a_model(rated_answers, tmp_path):
    base = build_preset_cross_encoder(tmp_path / "base", "tiny", seed=3)
    output = tmp_path / "models" / "from-feedback"
    call_command("train_reranker", "--from-feedback", "--output", str(output), "--base-model", str(base), "--epochs", "1",
                 "--group-size", "3", "--max-length", "64", "--max-query-tokens", "16", "--device", "cpu", "--threads", "1")
    rows = [json.loads(line) for line in (tmp_path / "models" / "from-feedback-groups.jsonl").read_text().splitlines()]
    assert [row["query"] for row in rows] == ["Do taxi rides need a receipt?"]
    assert (output / "reranker_training.json").is_file()


def test_without_any_answer_rated_up_the_command_says_what_to_do(db, tmp_path):
    with pytest.raises(CommandError, match="No answer rated up"):
        call_command("train_reranker", "--from-feedback", "--output", str(tmp_path / "model"))
    with pytest.raises(CommandError, match="needs --split"):
        call_command("train_reranker", "--dataset", str(tmp_path), "--output", str(tmp_path / "model"))
