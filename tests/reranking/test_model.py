"""CrossEncoderScorer: parity with sentence-transformers, ordering, truncation, batching."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer

from reranking.model import CrossEncoderScorer, ModelLoadError, plan_batches, sigmoid
from reranking.synthetic import build_preset_cross_encoder, build_random_cross_encoder


def test_one_logit_scores_match_sentence_transformers_predict(one_logit_model_path, scorer, pairs):
    expected = CrossEncoder(one_logit_model_path, device="cpu").predict(pairs)

    scores = scorer.predict(pairs)

    np.testing.assert_allclose(scores, expected, atol=1e-3)
    assert list(np.argsort(-scores)) == list(np.argsort(-expected))


def test_two_logit_head_scores_log_odds_of_label_one_like_sentence_transformers(two_logit_model_path, pairs):
    logits = CrossEncoder(two_logit_model_path, device="cpu").predict(pairs)  # (n, 2) raw logits
    scorer = CrossEncoderScorer(two_logit_model_path, device="cpu")

    raw = scorer.predict(pairs, normalize=False)
    scores = scorer.predict(pairs)

    np.testing.assert_allclose(raw, logits[:, 1] - logits[:, 0], atol=1e-3)
    softmax_relevant = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    np.testing.assert_allclose(scores, softmax_relevant, atol=1e-3)
    assert list(np.argsort(-scores)) == list(np.argsort(-softmax_relevant))


def test_normalize_false_returns_logits_whose_sigmoid_is_the_score(scorer, pairs):
    raw = scorer.predict(pairs, normalize=False)

    assert raw.min() < 0 or raw.max() > 1  # logits, not probabilities
    np.testing.assert_allclose(sigmoid(raw), scorer.predict(pairs), atol=1e-6)


def test_scores_come_back_in_the_callers_order_despite_length_sorting(scorer, pairs):
    one_at_a_time = np.array([scorer.predict([pair])[0] for pair in pairs])
    shuffled_order = list(range(len(pairs)))
    random.Random(3).shuffle(shuffled_order)

    together = scorer.predict(pairs)
    shuffled = scorer.predict([pairs[index] for index in shuffled_order])

    np.testing.assert_allclose(together, one_at_a_time, atol=1e-4)
    np.testing.assert_allclose(shuffled, together[shuffled_order], atol=1e-4)


def test_tokenize_equals_the_tokenizers_own_pair_encoding(one_logit_model_path, scorer, pairs):
    tokenizer = AutoTokenizer.from_pretrained(one_logit_model_path)
    long_document = " ".join(pair[1] for pair in pairs)  # thousands of tokens
    cases = pairs[:5] + [(pairs[0][0], long_document)]

    encoded = scorer.tokenize(cases)
    expected = tokenizer(
        [query for query, _ in cases], [document for _, document in cases], truncation="only_second", max_length=512
    )

    assert [pair.input_ids for pair in encoded] == expected["input_ids"]
    assert [pair.token_type_ids for pair in encoded] == expected["token_type_ids"]
    assert [pair.truncated for pair in encoded] == [False] * 5 + [True]


def test_long_query_is_capped_so_the_document_keeps_its_share(one_logit_model_path):
    scorer = CrossEncoderScorer(one_logit_model_path, device="cpu", max_length=128, query_max_length=32)
    long_query = "what does the long query ask about " * 40
    document = "the document text that should still be read " * 40

    (pair,) = scorer.tokenize([(long_query, document)])

    tokens = scorer.tokenizer.convert_ids_to_tokens(pair.input_ids)
    separator = tokens.index("[SEP]")
    assert len(pair) == 128
    assert separator == 1 + 32  # [CLS] + the capped query
    assert len(pair) - separator - 2 == 128 - 32 - 3  # the document keeps the rest
    assert pair.truncated


def test_query_cap_defaults_to_a_quarter_of_max_length(one_logit_model_path):
    assert CrossEncoderScorer(one_logit_model_path, device="cpu", max_length=256).query_max_length == 64


def test_a_model_without_recorded_lengths_is_served_at_512_tokens_a_quarter_for_the_query(scorer):
    # Hub rerankers carry no pair_encoding.json: they keep the lengths they were always served with.
    assert (scorer.max_length, scorer.query_max_length) == (512, 128)


def test_one_megabyte_document_is_cut_and_scores_like_its_first_tokens(scorer):
    words = " ".join(f"word{index % 997}" for index in range(200_000))[: 1_000_000]
    start = " ".join(words.split()[:2000])

    (huge_score, start_score) = scorer.predict([("a query", words), ("a query", start)])

    assert huge_score == pytest.approx(start_score, abs=1e-6)


def test_token_budget_bounds_padded_tokens_of_every_batch_and_covers_every_pair():
    lengths = [random.Random(seed).randint(5, 500) for seed in range(300)]

    batches = plan_batches(lengths, token_budget=2048)

    assert sorted(index for batch in batches for index in batch) == list(range(300))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 2048


def test_pair_longer_than_the_budget_gets_a_batch_of_its_own():
    assert plan_batches([600, 10, 10], token_budget=512) == [[0], [1, 2]]


def test_small_token_budget_gives_the_same_scores(one_logit_model_path, scorer, pairs):
    small = CrossEncoderScorer(one_logit_model_path, device="cpu", token_budget=256)

    np.testing.assert_allclose(small.predict(pairs), scorer.predict(pairs), atol=1e-4)


def test_int8_backend_keeps_scores_close_to_the_exact_ones(tmp_path, pairs):
    # Weights of a moderate scale: huge random weights (as in the other tests) quantize badly,
    # trained ones do not; this checks the int8 path works, not its quality on a real model.
    path = str(build_preset_cross_encoder(tmp_path / "model", "tiny", initializer_range=0.1))
    exact = CrossEncoderScorer(path, device="cpu").predict(pairs, normalize=False)

    quantized = CrossEncoderScorer(path, device="cpu", backend="int8").predict(pairs, normalize=False)

    assert np.corrcoef(exact, quantized)[0, 1] > 0.95
    assert np.abs(exact - quantized).max() < exact.std()


def test_empty_input_gives_no_scores(scorer):
    assert scorer.predict([]).shape == (0,)


def test_head_with_more_than_two_labels_is_refused(tmp_path):
    path = build_random_cross_encoder(
        tmp_path / "three", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, num_labels=3
    )

    with pytest.raises(ModelLoadError, match="3 labels"):
        CrossEncoderScorer(str(path), device="cpu")


def test_unknown_backend_is_refused(one_logit_model_path):
    with pytest.raises(ValueError, match="backend"):
        CrossEncoderScorer(one_logit_model_path, device="cpu", backend="onnx")


def test_cpu_batches_split_over_threads_give_the_same_scores(one_logit_model_path, pairs):
    single = CrossEncoderScorer(one_logit_model_path, device="cpu", num_threads=1)
    split = CrossEncoderScorer(one_logit_model_path, device="cpu", num_threads=3, token_budget=100_000)

    np.testing.assert_allclose(split.predict(pairs), single.predict(pairs), atol=1e-4)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@requires_cuda
def test_cuda_float32_scores_match_sentence_transformers(one_logit_model_path, pairs):
    expected = CrossEncoder(one_logit_model_path, device="cpu").predict(pairs)

    scores = CrossEncoderScorer(one_logit_model_path, device="cuda", dtype="float32").predict(pairs)

    np.testing.assert_allclose(scores, expected, atol=1e-3)


@requires_cuda
def test_cuda_defaults_to_bfloat16_sdpa_and_ranks_like_float32(tmp_path, pairs):
    path = str(build_preset_cross_encoder(tmp_path / "model", "minilm-l6", initializer_range=0.1))
    exact = CrossEncoderScorer(path, device="cpu").predict(pairs, normalize=False)

    gpu = CrossEncoderScorer(path)
    scores = gpu.predict(pairs, normalize=False)

    assert (gpu.device.type, gpu.dtype, gpu.token_budget) == ("cuda", torch.bfloat16, 16384)
    assert gpu.model.config._attn_implementation == "sdpa"
    assert np.corrcoef(exact, scores)[0, 1] > 0.99


def test_warm_up_runs_every_padded_width_and_leaves_scores_unchanged(tmp_path):
    path = build_preset_cross_encoder(tmp_path / "warm", "tiny")
    scorer = CrossEncoderScorer(str(path), device="cpu", max_length=64, token_budget=256)
    pairs = [("a question", "a passage about things"), ("a question", "another passage")]
    before = scorer.predict(pairs)
    widths = []
    original = scorer._model_logits
    scorer._model_logits = lambda ids, mask, types: widths.append(ids.shape) or original(ids, mask, types)
    scorer.warm_up()
    assert sorted({width for _, width in widths}) == list(range(1, 65))  # pad multiple 1 on a CPU
    assert (256 // 8, 8) in widths and (1, 64) in widths
    np.testing.assert_array_equal(scorer.predict(pairs), before)
