"""reranking.pairs: which lengths a model folder is encoded with."""

from transformers import AutoTokenizer

from reranking.pairs import DEFAULT_MAX_LENGTH, PairEncoder, pair_lengths
from reranking.synthetic import shipped_tokenizer_path


def test_each_length_comes_from_the_argument_else_the_folders_record_else_the_default(tmp_path):
    PairEncoder(AutoTokenizer.from_pretrained(shipped_tokenizer_path()), max_length=96, query_max_length=20).save(tmp_path)

    assert pair_lengths(model=str(tmp_path), max_length=None, query_max_length=None) == (96, 20)
    assert pair_lengths(model=str(tmp_path), max_length=64, query_max_length=None) == (64, 20)
    assert pair_lengths(model=str(tmp_path / "no-record"), max_length=None, query_max_length=None) == (DEFAULT_MAX_LENGTH, None)
    assert pair_lengths(model="BAAI/bge-reranker-base", max_length=None, query_max_length=7) == (DEFAULT_MAX_LENGTH, 7)


def test_the_query_cap_is_a_quarter_of_max_length_by_default_and_at_most_half():
    tokenizer = AutoTokenizer.from_pretrained(shipped_tokenizer_path())

    assert PairEncoder(tokenizer).query_max_length == DEFAULT_MAX_LENGTH // 4
    assert PairEncoder(tokenizer, max_length=100, query_max_length=80).query_max_length == 50
    assert PairEncoder(tokenizer, max_length=100_000).max_length == tokenizer.model_max_length
