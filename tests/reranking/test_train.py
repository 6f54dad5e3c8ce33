"""reranking.train: sampling, losses, a short run of a tiny cross-encoder, the saved folder, the CLI."""

import json
import math
import random

import ir_measures
import pytest
import torch
from ir_measures import nDCG
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reranking import train
from reranking.groups import TrainingGroup, training_groups_write, validation_split
from reranking.model import CrossEncoderScorer
from reranking.server import Settings, load_scorer
from reranking.synthetic import build_preset_cross_encoder, shipped_tokenizer_path
from reranking.train import TrainingOptions
from tests.reranking.factories import colour_groups

# Fast enough for a test on two cores, strong enough that the tiny model learns the task.
# One thread: a tiny model gains nothing from more, and loses much on a busy machine.
QUICK = TrainingOptions(epochs=6, learning_rate=5e-3, group_size=4, batch_groups=2, max_length=32,
                        max_query_tokens=16, seed=13, device="cpu", threads=1)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory):
    return build_preset_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"), "tiny", seed=3)


def logit_scorer(path):
    """Load a saved sequence-classification model once; return pairs -> logits."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()

    def score(pairs) -> list[float]:
        with torch.inference_mode():
            features = tokenizer([q for q, _ in pairs], [p for _, p in pairs], padding=True, truncation=True, return_tensors="pt")
            return model(**features).logits.squeeze(-1).tolist()

    return score


def ndcg_at_10(groups: list[TrainingGroup], score) -> float:
    """nDCG@10 of ranking each group's positives and negatives by `score(pairs)`."""
    qrels, run = {}, {}
    for number, group in enumerate(groups):
        passages = [*group.positives, *group.negatives]
        scores = score([(group.query, passage) for passage in passages])
        qrels[str(number)] = {str(index): 1 for index in range(len(group.positives))}
        run[str(number)] = {str(index): float(value) for index, value in enumerate(scores)}
    return ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10]


@pytest.fixture(scope="module")
def trained(tiny_cross_encoder, tmp_path_factory):
    """Train the tiny model once per loss on the colour groups: loss -> (result, saved folder)."""
    runs = {}
    for loss in train.LOSSES:
        output = tmp_path_factory.mktemp(f"trained-{loss}")
        options = TrainingOptions(**{**QUICK.__dict__, "loss": loss})
        runs[loss] = train.cross_encoder_train(groups=colour_groups(), base_model=str(tiny_cross_encoder),
                                               output=output, options=options, progress=False), output
    return runs


@pytest.mark.parametrize("loss", train.LOSSES)
def test_short_training_lowers_the_loss_and_raises_ndcg(loss, trained, tiny_cross_encoder):
    result, output = trained[loss]

    before = ndcg_at_10(colour_groups(), logit_scorer(tiny_cross_encoder))
    after = ndcg_at_10(colour_groups(), logit_scorer(output))

    assert result.epoch_losses[-1] < 0.5 * result.epoch_losses[0], result.epoch_losses
    assert after > before + 0.2 and after > 0.9, (before, after)


def test_saved_folder_loads_as_a_sentence_transformers_cross_encoder_with_sigmoid_scores(trained):
    from sentence_transformers import CrossEncoder

    _, output = trained["infonce"]

    cross_encoder = CrossEncoder(str(output), device="cpu")

    pairs = [("what colour is the kite?", "the kite is green"), ("what colour is the kite?", "the kite is heavy")]
    scores = cross_encoder.predict(pairs)
    logits = torch.tensor(logit_scorer(output)(pairs))
    assert torch.allclose(torch.tensor(scores, dtype=torch.float32), torch.sigmoid(logits), atol=1e-4)
    assert scores[0] > scores[1]
    assert ndcg_at_10(colour_groups(), cross_encoder.predict) > 0.9
    record = json.loads((output / train.TRAINING_RECORD).read_text())
    assert len(record["epoch_losses"]) == QUICK.epochs and record["options"]["loss"] == "infonce"
    assert record["chance_loss"] == pytest.approx(math.log(QUICK.group_size))
    assert len(record["step_losses"]) == record["steps"] and record["final_loss"] < record["epoch_losses"][0]


def test_a_plain_encoder_gets_a_fresh_one_logit_head(tmp_path):
    from transformers import AutoConfig, AutoModel

    encoder = AutoModel.from_config(AutoConfig.from_pretrained(build_preset_cross_encoder(tmp_path / "ce", "tiny")))
    encoder.save_pretrained(tmp_path / "encoder")
    AutoTokenizer.from_pretrained(shipped_tokenizer_path()).save_pretrained(tmp_path / "encoder")

    model, _ = train.cross_encoder_load(str(tmp_path / "encoder"))

    assert model.config.num_labels == 1 and model.classifier.out_features == 1


def test_a_bfloat16_checkpoint_trains_with_float32_weights(tiny_cross_encoder, tmp_path):
    # Weights moved to the GPU machine in bf16 (to fit the transfer) must not train in bf16.
    AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    AutoTokenizer.from_pretrained(tiny_cross_encoder).save_pretrained(tmp_path / "bf16")

    model, _ = train.cross_encoder_load(str(tmp_path / "bf16"))

    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}


def test_negatives_are_redrawn_every_epoch_without_repeats():
    group = TrainingGroup(query="q", positives=["p1", "p2"], negatives=[f"n{i}" for i in range(30)])
    rng = random.Random(1)

    first, second = (train.epoch_step_groups([group], group_size=5, rng=rng) for _ in range(2))

    assert len(first) == 2  # one step group per positive
    for step_group in first + second:
        assert step_group.passages[0] in group.positives and len(step_group.passages) == 5
        assert len(set(step_group.passages)) == 5 and step_group.labels == [1.0, 0, 0, 0, 0]
    assert {tuple(s.passages[1:]) for s in first} != {tuple(s.passages[1:]) for s in second}


def test_a_small_negative_pool_gives_a_smaller_group_and_infonce_ignores_the_padding():
    small = train.epoch_step_groups([TrainingGroup(query="q", positives=["p"], negatives=["n1", "n2"])],
                                    group_size=8, rng=random.Random(0))[0]
    full = train.StepGroup(query="q", passages=["p", "a", "b", "c"], labels=[1.0, 0, 0, 0])
    assert small.passages[0] == "p" and sorted(small.passages[1:]) == ["n1", "n2"]

    logits = torch.tensor([2.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    loss = train.batch_loss(logits, [small, full], "infonce")

    expected = (-torch.log_softmax(logits[:3], 0)[0] - torch.log_softmax(logits[3:], 0)[0]) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_groups_without_a_positive_or_a_negative_are_skipped(tiny_cross_encoder, tmp_path):
    groups = [*colour_groups()[:4], TrainingGroup(query="q", positives=[], negatives=["n"]),
              TrainingGroup(query="q", positives=["p"], negatives=[])]

    result = train.cross_encoder_train(groups=groups, base_model=str(tiny_cross_encoder), output=tmp_path / "model",
                                       options=TrainingOptions(**{**QUICK.__dict__, "epochs": 1}), progress=False)

    assert (result.groups, result.skipped_groups) == (4, 2)


def test_frozen_embeddings_stay_as_they_were_while_the_rest_trains(tiny_cross_encoder, tmp_path):
    options = TrainingOptions(**{**QUICK.__dict__, "epochs": 1, "freeze_embeddings": True})

    train.cross_encoder_train(groups=colour_groups()[:6], base_model=str(tiny_cross_encoder), output=tmp_path / "model",
                              options=options, progress=False)

    before = AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder)
    after = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    assert torch.equal(before.get_input_embeddings().weight, after.get_input_embeddings().weight)
    assert not torch.equal(before.classifier.weight, after.classifier.weight)


def test_no_usable_group_is_a_clear_error(tiny_cross_encoder, tmp_path):
    with pytest.raises(train.TrainingError, match="nothing to learn"):
        train.cross_encoder_train(groups=[TrainingGroup(query="q", positives=["p"], negatives=[])],
                                  base_model=str(tiny_cross_encoder), output=tmp_path / "model", options=QUICK)


def test_a_trained_folder_is_served_with_the_lengths_it_was_trained_with(trained):
    _, output = trained["infonce"]

    served = CrossEncoderScorer(str(output), device="cpu")
    worker = load_scorer(Settings(model=str(output), device="cpu"))
    overridden = CrossEncoderScorer(str(output), device="cpu", max_length=64, query_max_length=8)

    assert (QUICK.max_length, QUICK.max_query_tokens) == (32, 16)  # not the defaults, 512 and a quarter of it
    assert (served.max_length, served.query_max_length) == (32, 16)
    assert (worker.max_length, worker.query_max_length) == (32, 16)
    assert (overridden.max_length, overridden.query_max_length) == (64, 8)


def test_training_feeds_the_model_the_token_ids_serving_does(trained):
    _, output = trained["infonce"]
    model, tokenizer = train.cross_encoder_load(str(output))
    pairs = [("which of the many colours is the kite that flew over the hill on the windy day? " * 2, "the kite is green " * 9),
             ("what colour is the kite?", "the kite is green")]

    training_encoder = train.pair_encoder(model, tokenizer, QUICK)
    trained_on = train.pair_features(training_encoder, training_encoder.tokenize(pairs), torch.device("cpu"))
    scorer = CrossEncoderScorer(str(output), device="cpu")
    served = scorer.collate(scorer.tokenize(pairs))

    assert trained_on["input_ids"].tolist() == served.input_ids.tolist()
    assert trained_on["attention_mask"].tolist() == served.attention_mask.tolist()
    assert trained_on["token_type_ids"].tolist() == served.token_type_ids.tolist()
    long_pair = tokenizer.convert_ids_to_tokens(served.input_ids[0])
    assert len(long_pair) == 32 and long_pair.index("[SEP]") == 1 + 16  # [CLS] + the query cut to its 16 tokens


def test_invalid_options_are_refused_with_every_problem_named(tiny_cross_encoder, tmp_path):
    options = TrainingOptions(loss="hinge", group_size=1, max_length=32, max_query_tokens=64)

    with pytest.raises(train.TrainingError) as error:
        train.cross_encoder_train(groups=colour_groups(), base_model=str(tiny_cross_encoder), output=tmp_path, options=options)

    assert all(word in str(error.value).lower() for word in ("loss", "group size", "max query tokens"))


def test_the_best_epoch_is_kept_not_the_last():
    model = torch.nn.Linear(2, 1)
    best = train._BestEpoch()
    best.offer(1, 0.50, model)
    kept = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    best.offer(2, 0.40, model)

    assert best.epoch == 1 and best.scores == [0.50, 0.40]
    assert torch.equal(best.state["weight"], kept)


def test_validation_scores_every_epoch_and_the_saved_model_is_the_best_one(tiny_cross_encoder, tmp_path):
    options = TrainingOptions(**{**QUICK.__dict__, "epochs": 3, "validation_fraction": 0.25})

    result = train.cross_encoder_train(groups=colour_groups(), base_model=str(tiny_cross_encoder), output=tmp_path,
                                       options=options, progress=False)

    _, validation = validation_split(colour_groups(), fraction=0.25, seed=options.seed)
    assert result.validation_groups == len(validation) == 5 and result.groups == 15
    assert len(result.validation_ndcg) == 3
    assert result.saved_epoch == 1 + max(range(3), key=lambda epoch: result.validation_ndcg[epoch])
    saved = ndcg_at_10(validation, logit_scorer(tmp_path))
    assert saved == pytest.approx(max(result.validation_ndcg), abs=1e-6)
    record = json.loads((tmp_path / train.TRAINING_RECORD).read_text())
    assert record["saved_epoch"] == result.saved_epoch and len(record["validation_ndcg_at_10"]) == 3
    assert record["weights_dtype"] == "float32"
    assert result.validation_seconds > 0 and record["validation_seconds"] == round(result.validation_seconds, 1)


def test_ndcg_at_10_counts_graded_gains_and_only_the_top_ten():
    assert train.ndcg_at_10([0.9, 0.1, 0.5], [1.0, 0.0, 0.0]) == 1.0
    assert train.ndcg_at_10([0.1, 0.9], [1.0, 0.0]) == pytest.approx(1 / math.log2(3))
    assert train.ndcg_at_10([-float(rank) for rank in range(12)], [0.0] * 11 + [1.0]) == 0.0


def test_ndcg_at_10_agrees_with_ir_measures_the_evaluation_uses():
    rng = random.Random(5)
    qrels, run, ours = {}, {}, {}
    for query in map(str, range(40)):
        grades = [rng.choice([0, 0, 0, 1, 2]) for _ in range(rng.randint(2, 25))]
        grades[rng.randrange(len(grades))] = 2  # at least one relevant passage
        scores = [float(score) for score in rng.sample(range(1000), len(grades))]  # no ties: their order differs
        qrels[query] = {str(index): grade for index, grade in enumerate(grades)}
        run[query] = {str(index): score for index, score in enumerate(scores)}
        ours[query] = train.ndcg_at_10(scores, [grade / 2 for grade in grades])  # labels in [0, 1], as trained

    theirs = {metric.query_id: metric.value for metric in ir_measures.iter_calc([nDCG @ 10], qrels, run)}

    assert theirs == pytest.approx(ours, abs=1e-9)


def test_command_line_trains_and_prints_the_losses(tiny_cross_encoder, tmp_path, capsys):
    groups_path = tmp_path / "groups.jsonl"
    training_groups_write(groups=colour_groups(), path=groups_path)

    status = train.main(["--groups", str(groups_path), "--base-model", str(tiny_cross_encoder), "--output",
                         str(tmp_path / "model"), "--loss", "bce", "--epochs", "1", "--group-size", "4",
                         "--max-length", "32", "--max-query-tokens", "16", "--device", "cpu", "--threads", "1",
                         "--limit-groups", "8"])

    out = capsys.readouterr().out
    assert status == 0 and "Trained on 8 groups" in out and "pairs/s" in out
    assert (tmp_path / "model" / "config.json").is_file()


def test_every_command_line_option_has_help(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])

    text = capsys.readouterr().out
    for option in ("--groups", "--base-model", "--output", "--loss", "--epochs", "--lr", "--group-size",
                   "--batch-groups", "--max-length", "--max-query-tokens", "--limit-groups", "--freeze-embeddings",
                   "--seed", "--device", "--threads", "--validation-fraction"):
        assert option in text
