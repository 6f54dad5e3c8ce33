"""bench/corpus.py on a small package made here (no apt, no PostgreSQL): the build is the same bytes for the same
seed, stops at its target, drops repeated files and chunks, and tops up from the word model when the text runs out."""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import corpus  # noqa: E402

PACKAGE = corpus.DocPackage("handmade-doc", include=("usr/share/doc/handmade/*",), exclude=("*/drafts/*",))


def prose(seed: int, words: int) -> str:
    """An HTML page of sentences whose words follow a Zipf law, so that the vocabulary keeps growing as in real text."""
    rng = np.random.default_rng(seed)
    vocabulary = [corpus.pseudo_word(index) for index in range(20_000)]

    def sentence() -> str:
        ranks = np.minimum(rng.zipf(1.3, size=12), len(vocabulary)) - 1
        return " ".join(vocabulary[rank] for rank in ranks).capitalize() + "."

    paragraphs = [" ".join(sentence() for _ in range(5)) for _ in range(words // 60)]
    return "<html><body><h1>Page</h1>" + "".join(f"<p>{text}</p>" for text in paragraphs) + "</body></html>"


def handmade_package(cache: Path) -> None:
    """An unpacked package as package_fetch leaves one: three pages, one of them twice, and a draft to skip."""
    root = cache / "unpacked" / PACKAGE.name
    docs = root / "usr/share/doc/handmade"
    (docs / "drafts").mkdir(parents=True)
    for index in range(3):
        (docs / f"page{index}.html").write_text(prose(index, 1500))
    (docs / "copy-of-page0.html").write_text(prose(0, 1500))
    (docs / "drafts" / "draft.html").write_text(prose(9, 600))
    (root / ".unpacked-from").write_text("handmade-doc_1.0_all.deb")


def build(cache: Path, chunks: int, name: str) -> tuple[dict, list[dict], bytes]:
    options = argparse.Namespace(packages=[PACKAGE], cache=cache, chunks=chunks, seed=7, workers=1)
    path = cache / name
    result = corpus.corpus_build(options, path)
    return result, list(corpus.corpus_read(path)), path.read_bytes()


def test_the_build_reads_each_page_once_and_tops_up_to_the_target(tmp_path):
    handmade_package(tmp_path)

    result, chunks, data = build(tmp_path, 100, "a.jsonl.gz")
    _, _, again = build(tmp_path, 100, "b.jsonl.gz")

    assert data == again  # deterministic bytes for the same options
    package, real = result["packages"][PACKAGE.name], result["real_chunks"]
    assert package["documents_read"] == 4 and package["documents_duplicate"] == 1  # the draft is not a document
    assert [chunk["chunk"] for chunk in chunks] == list(range(100))
    assert 0 < real < 100 and [chunk["source"] for chunk in chunks] == ["debian"] * real + ["zipf"] * (100 - real)
    assert len({chunk["text"] for chunk in chunks}) == len(chunks)
    assert not any("drafts" in chunk["document"] for chunk in chunks)
    assert result["top_up"]["chunks"] == 100 - real and result["top_up"]["new_words"] > 0
    assert 0 < result["top_up"]["heaps_beta"] < 1


def test_documents_are_drawn_once_each_in_an_order_set_by_the_seed():
    listings = {"a": [(f"a{index}", 10) for index in range(20)], "b": [(f"b{index}", 100) for index in range(5)]}

    drawn = list(corpus.documents_drawn(listings, np.random.default_rng(1)))

    assert sorted(path for _, path in drawn) == sorted(path for paths in listings.values() for path, _ in paths)
    assert drawn == list(corpus.documents_drawn(listings, np.random.default_rng(1)))
    assert drawn != list(corpus.documents_drawn(listings, np.random.default_rng(2)))


def test_pseudo_words_are_new_words_of_three_syllables_or_more():
    words = [corpus.pseudo_word(index) for index in range(5000)]

    assert len(set(words)) == len(words)
    assert min(len(word) for word in words) >= 6 and all(word.isalpha() for word in words)
