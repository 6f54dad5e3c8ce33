"""Split a parsed document into overlapping chunks that fit the embedding model's token budget.

Pure: no I/O and no Django. The document is tokenized once, in a batch, with character
offsets; every cut is then chosen among token boundaries ranked by how cleanly they separate
the text (heading change, paragraph, sentence, clause, word, token), so no substring is
re-tokenized while searching. A chunk is tokenized again, as its own text, only where a cut
could have changed how its text tokenizes (inside a word, or with a byte-level tokenizer).
"""

import re
import string
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from ragapp.documents.content import SECTION_SEPARATOR, ChunkDraft, ParsedDocument, Section

MIN_CHUNK_TOKENS = 16

# Why pieces: a fast tokenizer encodes a batch of short strings in parallel and much faster
# than one very long string, so long sections are cut, at whitespace where possible, first.
TOKENIZE_PIECE_CHARS = 2000

# Characters after which a piece may be cut without changing how WordPiece splits words.
_SAFE_PIECE_ENDS = frozenset(" \n\t。！？；，、：" + string.punctuation)


class Cut(IntEnum):
    """How cleanly a boundary between two tokens separates the text; higher is cleaner."""

    INSIDE_WORD = 0  # between subword pieces of one word: the last resort
    TOKEN = 1  # between tokens with no space: punctuation, CJK characters, parts of a URL
    WORD = 2  # whitespace between words
    CLAUSE = 3  # after , ; : and a space, or after ，、：
    SENTENCE = 4  # after . ! ? and a space, after 。！？；, or at a line break
    PARAGRAPH = 5  # a section boundary or a blank line, under the same heading
    HEADING = 6  # where a heading starts or the heading path changes


_CUT_PATTERNS = {
    Cut.PARAGRAPH: re.compile(r"\n[ \t]*\n\s*"),
    # A lowercase letter after ". " is more often an abbreviation ("e.g. the") than a sentence.
    Cut.SENTENCE: re.compile(r"[.!?][\"'”’)\]]*\s++(?![a-z])|[。！？；][”’」』）\"']*\s*|\n\s*"),
    Cut.CLAUSE: re.compile(r"[,;:][\"'”’)\]]*\s+|[，、：][”’」』）\"']*\s*"),
}


@dataclass
class _Tokens:
    """The document's tokens as character spans; boundary i lies between token i-1 and token i."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    inside_word: set[int] = field(default_factory=set)  # boundaries between pieces of one word
    # Where the text was cut for the tokenizer with no space or punctuation nearby: tokens on
    # either side may differ from how the uncut text tokenizes.
    blind_cuts: list[int] = field(default_factory=list)

    def add_piece(
        self,
        piece_start: int,
        offsets: Sequence[tuple[int, int]],
        word_ids: Sequence[int | None],
        starts_mid_word: bool,
    ) -> None:
        """Append one tokenized piece of text that begins at piece_start in the document."""
        first = len(self.starts)
        self.starts += [piece_start + start for start, _ in offsets]
        self.ends += [piece_start + end for _, end in offsets]
        self.inside_word.update([first + i for i in range(1, len(word_ids)) if word_ids[i] == word_ids[i - 1]])
        if starts_mid_word and first:
            self.inside_word.add(first)
            self.blind_cuts.append(first)


@dataclass
class _Boundaries:
    """Where chunks may be cut, by how cleanly."""

    by_cut: dict[Cut, list[int]]  # sorted boundary indices for WORD and cleaner; the rest are implied
    forbidden: set[int]  # inside a heading or right after it: a heading stays with its text
    inside_word: set[int]
    clean: set[int]  # section and paragraph boundaries: a chunk starting there needs no overlap


def document_chunk(
    parsed: ParsedDocument, *, tokenizer, chunk_tokens: int, overlap_tokens: int
) -> list[ChunkDraft]:
    """Split a parsed document into chunks of at most chunk_tokens tokens of the embedding model's tokenizer, overlapping by about overlap_tokens."""
    chunk_budget_check(chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
    text = parsed.text
    section_starts = _section_starts(parsed.sections)
    tokens = _tokenize(parsed.sections, section_starts, tokenizer)
    if not tokens.starts:
        return []
    boundaries = _find_boundaries(text, parsed.sections, section_starts, tokens)
    planner = _ChunkPlanner(tokens, boundaries, chunk_tokens, overlap_tokens)
    counter = _SpanCounter(text, tokens, tokenizer)
    drafts = _drafts(parsed.sections, section_starts, text, tokens, planner.plan(), counter)
    if all(draft.token_count <= chunk_tokens for draft in drafts):
        return drafts
    # Why: a slice cut inside a word can tokenize into more tokens than it had in context
    # ("##ization" alone becomes "i", "##zation"), so plan again, counting each chunk's text.
    spans = planner.plan(count_span=counter.count)
    return _drafts(parsed.sections, section_starts, text, tokens, spans, counter)


def chunk_budget_check(*, chunk_tokens: int, overlap_tokens: int) -> None:
    """Raise ValueError unless the chunk size and overlap make sense together."""
    if chunk_tokens < MIN_CHUNK_TOKENS:
        raise ValueError(f"chunk_tokens must be at least {MIN_CHUNK_TOKENS}, got {chunk_tokens}.")
    if not 0 <= overlap_tokens < chunk_tokens // 2:
        raise ValueError(
            f"overlap_tokens must be at least 0 and less than half of chunk_tokens "
            f"({chunk_tokens // 2}), got {overlap_tokens}."
        )


def _section_starts(sections: Sequence[Section]) -> list[int]:
    """Return where each section begins in ParsedDocument.text."""
    starts, offset = [], 0
    for section in sections:
        starts.append(offset)
        offset += len(section.text) + len(SECTION_SEPARATOR)
    return starts


def _tokenize(sections: Sequence[Section], section_starts: Sequence[int], tokenizer) -> _Tokens:
    """Tokenize every section once, as one batch, keeping offsets into the document text."""
    pieces = [
        piece
        for section, section_start in zip(sections, section_starts)
        for piece in _pieces_for_tokenizer(section.text, section_start)
    ]
    tokens = _Tokens()
    if not pieces:
        return tokens
    encoded = tokenizer(
        [piece_text for _, piece_text, _ in pieces],
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,  # the model's 512-token limit is not ours to warn about here
    )
    for index, (piece_start, _, starts_mid_word) in enumerate(pieces):
        tokens.add_piece(piece_start, encoded["offset_mapping"][index], encoded.word_ids(index), starts_mid_word)
    return tokens


def _pieces_for_tokenizer(text: str, offset: int) -> Iterator[tuple[int, str, bool]]:
    """Yield (start, text, starts mid-word) pieces of at most TOKENIZE_PIECE_CHARS characters."""
    start, starts_mid_word = 0, False
    while len(text) - start > TOKENIZE_PIECE_CHARS:
        end, starts_mid_word_next = _piece_end(text, start)
        yield offset + start, text[start:end], starts_mid_word
        start, starts_mid_word = end, starts_mid_word_next
    if text[start:].strip():
        yield offset + start, text[start:], starts_mid_word


def _piece_end(text: str, start: int) -> tuple[int, bool]:
    """Return where the piece beginning at start ends, and whether that cuts a word."""
    limit = start + TOKENIZE_PIECE_CHARS
    for position in range(limit - 1, start + TOKENIZE_PIECE_CHARS // 2, -1):
        if text[position] in _SAFE_PIECE_ENDS:
            return position + 1, False
    return limit, True


def _find_boundaries(
    text: str, sections: Sequence[Section], section_starts: Sequence[int], tokens: _Tokens
) -> _Boundaries:
    """Rank every usable token boundary in the document by how cleanly it cuts."""
    section_first_tokens = [bisect_left(tokens.starts, start) for start in section_starts]
    heading_changes, forbidden = _heading_boundaries(sections, section_first_tokens, len(tokens.starts))
    by_cut = {cut: _pattern_boundaries(pattern, text, tokens) for cut, pattern in _CUT_PATTERNS.items()}
    by_cut[Cut.HEADING] = heading_changes
    section_breaks = set(section_first_tokens[1:]) - {len(tokens.starts)}
    by_cut[Cut.PARAGRAPH] = sorted(section_breaks.union(by_cut[Cut.PARAGRAPH]))
    by_cut[Cut.WORD] = [i for i in range(1, len(tokens.starts)) if tokens.starts[i] > tokens.ends[i - 1]]
    if forbidden:
        by_cut = {cut: [i for i in positions if i not in forbidden] for cut, positions in by_cut.items()}
    clean = set(by_cut[Cut.HEADING]).union(by_cut[Cut.PARAGRAPH])
    return _Boundaries(by_cut=by_cut, forbidden=forbidden, inside_word=tokens.inside_word, clean=clean)


def _heading_boundaries(
    sections: Sequence[Section], section_first_tokens: Sequence[int], token_count: int
) -> tuple[list[int], set[int]]:
    """Return where headings change, and the boundaries that would leave a heading without its text."""
    changes: list[int] = []
    forbidden: set[int] = set()
    previous: Section | None = None
    for index, section in enumerate(sections):
        first = section_first_tokens[index]
        following = section_first_tokens[index + 1] if index + 1 < len(sections) else token_count
        if first == following:
            continue  # no tokens: whitespace only
        if previous is not None and not previous.is_heading:
            if section.is_heading or section.heading_path != previous.heading_path:
                changes.append(first)
        if section.is_heading:
            forbidden.update(range(first + 1, following + 1))
        previous = section
    return changes, forbidden


def _pattern_boundaries(pattern: re.Pattern, text: str, tokens: _Tokens) -> list[int]:
    """Return the token boundaries at the end of each match of pattern."""
    boundaries: list[int] = []
    for match in pattern.finditer(text):
        index = bisect_left(tokens.starts, match.end())
        # Skip matches at either end of the text, or that end inside a token.
        if 0 < index < len(tokens.starts) and tokens.ends[index - 1] <= match.end():
            if not boundaries or boundaries[-1] != index:
                boundaries.append(index)
    return boundaries


class _ChunkPlanner:
    """Choose token spans for chunks: where each one ends and where the next one starts."""

    def __init__(self, tokens: _Tokens, boundaries: _Boundaries, chunk_tokens: int, overlap_tokens: int):
        self.boundaries = boundaries
        self.token_count = len(tokens.starts)
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens

    def plan(self, count_span: Callable[[int, int], int] | None = None) -> list[tuple[int, int]]:
        """Return (first token, end token) spans that cover every token in order."""
        spans = []
        start = fresh = 0  # fresh: the first token the previous chunk did not cover
        while fresh < self.token_count:
            start, end = self._fit(start, fresh, count_span)
            spans.append((start, end))
            start, fresh = self._next_start(start, end), end
        return spans

    def _fit(self, start: int, fresh: int, count_span: Callable[[int, int], int] | None) -> tuple[int, int]:
        """Choose the span's end; given count_span, shrink the span until its own text fits."""
        limit = min(start + self.chunk_tokens, self.token_count)
        while True:
            end = self._choose_end(start, fresh, limit)
            excess = 0 if count_span is None else count_span(start, end) - self.chunk_tokens
            if excess <= 0 or end == start + 1:
                return start, end
            if end - excess <= fresh:
                start = fresh  # the overlap leaves no room for new text: drop it
            limit = max(end - excess, fresh + 1)

    def _choose_end(self, start: int, fresh: int, limit: int) -> int:
        """Choose where a chunk beginning at start ends, at limit at most, as cleanly as possible."""
        # Why a minimum: a clean cut that leaves a tiny chunk is worse than a plainer cut later.
        earliest = min(fresh + max(1, self.chunk_tokens // 4), limit)
        heading_change = self._first_at_or_after(Cut.HEADING, earliest)
        if heading_change is not None and heading_change <= limit:
            return heading_change
        if limit == self.token_count:
            return limit
        # Why fall back to a short chunk: past `earliest` there may be only cuts inside a heading.
        for lowest in (earliest, fresh + 1):
            end = self._cleanest_end(lowest, limit)
            if end is not None:
                return end
        return limit  # only a heading longer than a whole chunk gets here: it must be cut

    def _cleanest_end(self, lowest: int, limit: int) -> int | None:
        """Return the cleanest allowed boundary in [lowest, limit], the latest of equally clean ones."""
        for cut in (Cut.PARAGRAPH, Cut.SENTENCE, Cut.CLAUSE, Cut.WORD):
            candidate = self._last_at_or_before(cut, limit)
            if candidate is not None and candidate >= lowest:
                return candidate
        return self._last_unlisted(limit, lowest)

    def _next_start(self, start: int, end: int) -> int:
        """Start the next chunk about overlap_tokens before end, at the cleanest boundary nearby."""
        if self.overlap_tokens == 0 or end >= self.token_count or end in self.boundaries.clean:
            return end
        # Never overlap back past a heading change, nor fail to move forward.
        floor = max(start + 1, self._last_at_or_before(Cut.HEADING, end - 1) or 0)
        target = max(end - self.overlap_tokens, floor)
        if target >= end:
            return end
        reach = max(1, self.overlap_tokens // 2)
        for cut in (Cut.HEADING, Cut.PARAGRAPH, Cut.SENTENCE, Cut.CLAUSE):
            candidate = self._nearest(cut, target, max(floor, target - reach), min(end - 1, target + reach))
            if candidate is not None:
                return candidate
        for candidate in (self._nearest(Cut.WORD, target, floor, end - 1), self._last_unlisted(target, floor)):
            if candidate is not None:
                return candidate
        return end

    def _last_unlisted(self, limit: int, lowest: int) -> int | None:
        """Return the last allowed boundary from limit down to lowest, between whole words if possible."""
        for allow_inside_word in (False, True):
            for boundary in range(limit, lowest - 1, -1):
                if boundary in self.boundaries.forbidden:
                    continue
                if allow_inside_word or boundary not in self.boundaries.inside_word:
                    return boundary
        return None

    def _first_at_or_after(self, cut: Cut, position: int) -> int | None:
        positions = self.boundaries.by_cut[cut]
        index = bisect_left(positions, position)
        return positions[index] if index < len(positions) else None

    def _last_at_or_before(self, cut: Cut, position: int) -> int | None:
        positions = self.boundaries.by_cut[cut]
        index = bisect_right(positions, position)
        return positions[index - 1] if index else None

    def _nearest(self, cut: Cut, target: int, low: int, high: int) -> int | None:
        """Return the boundary of this cut nearest target within [low, high], the earlier on a tie."""
        positions = self.boundaries.by_cut[cut]
        index = bisect_left(positions, target)
        options = [position for position in positions[max(0, index - 1) : index + 1] if low <= position <= high]
        return min(options, key=lambda position: (abs(position - target), position)) if options else None


class _SpanCounter:
    """Count a span's tokens as its own text tokenizes, re-tokenizing only where that can differ."""

    def __init__(self, text: str, tokens: _Tokens, tokenizer):
        self.text = text
        self.tokens = tokens
        self.tokenizer = tokenizer
        self.recount_every_span = not _words_tokenize_alone(tokenizer)

    def count(self, start: int, end: int) -> int:
        """Count the tokens of the text of tokens [start, end)."""
        return self.count_many([(start, end)])[0]

    def count_many(self, spans: Sequence[tuple[int, int]]) -> list[int]:
        """Count the tokens of each span's text, tokenizing in one batch the spans that need it."""
        counts = [end - start for start, end in spans]
        risky = [index for index, (start, end) in enumerate(spans) if self._may_differ(start, end)]
        if risky:
            texts = [self.text[slice(*_char_range(self.text, self.tokens, *spans[index]))] for index in risky]
            encoded = self.tokenizer(
                texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
            )
            for index, ids in zip(risky, encoded["input_ids"]):
                counts[index] = len(ids)
        return counts

    def _may_differ(self, start: int, end: int) -> bool:
        """Tell whether the span's text alone might tokenize differently from the same tokens in context."""
        if self.recount_every_span or start in self.tokens.inside_word or end in self.tokens.inside_word:
            return True
        blind_cuts = self.tokens.blind_cuts
        return bisect_left(blind_cuts, start) != bisect_right(blind_cuts, end)


def _words_tokenize_alone(tokenizer) -> bool:
    """Tell whether each word's tokens are independent of its neighbours, as in BERT's WordPiece."""
    # Why: pre-tokenizers that split on whitespace and punctuation and drop the whitespace make
    # a slice cut between words tokenize exactly as in context; byte-level BPE ("Ġword") does not.
    pre_tokenizer = tokenizer.backend_tokenizer.pre_tokenizer
    return type(pre_tokenizer).__name__ in {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}


def _drafts(
    sections: Sequence[Section],
    section_starts: Sequence[int],
    text: str,
    tokens: _Tokens,
    spans: Sequence[tuple[int, int]],
    counter: _SpanCounter,
) -> list[ChunkDraft]:
    """Turn token spans into chunk drafts, counting each chunk's own text."""
    ranges = [_char_range(text, tokens, start, end) for start, end in spans]
    drafts = []
    for (char_start, char_end), token_count in zip(ranges, counter.count_many(spans)):
        if char_end <= char_start:
            continue
        first_section = bisect_right(section_starts, char_start) - 1
        drafts.append(
            ChunkDraft(
                text=text[char_start:char_end],
                char_start=char_start,
                char_end=char_end,
                token_count=token_count,
                page=sections[first_section].page,
                heading_path=_chunk_heading_path(sections, section_starts, first_section, char_end),
            )
        )
    return drafts


def _char_range(text: str, tokens: _Tokens, start: int, end: int) -> tuple[int, int]:
    """Return the character range of tokens [start, end), without surrounding whitespace."""
    char_start, char_end = tokens.starts[start], tokens.ends[end - 1]
    chunk_text = text[char_start:char_end]
    leading = len(chunk_text) - len(chunk_text.lstrip())
    trailing = len(chunk_text) - len(chunk_text.rstrip())
    return char_start + leading, char_end - trailing


def _chunk_heading_path(
    sections: Sequence[Section], section_starts: Sequence[int], index: int, char_end: int
) -> tuple[str, ...]:
    """Return the heading path of the section a chunk starts in."""
    # Why skip headings: a chunk that opens with a heading is about the text under it, and
    # that text's path names the heading, while the heading's own path names only its parents.
    while sections[index].is_heading and index + 1 < len(sections) and section_starts[index + 1] < char_end:
        index += 1
    return tuple(sections[index].heading_path)
