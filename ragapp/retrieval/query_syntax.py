"""A search question -> the text to embed, the words to score and match, and those it excludes.

Pure functions: no I/O. As in web search engines, a `-` attached to the start of a word
(`-receipt`, `-β-catenin`) or of a closed quoted phrase (`-"lost luggage"`), at the start of the
question or after a blank, excludes it. Any other dash is text: `G - quadruplex`, `x-ray`,
`-5 degrees`, a dash inside quotes.

The matched text goes to PostgreSQL's websearch_to_tsquery, which reads as NOT every dash that
starts one of its words, attached or not; those dashes are removed from it, so no negation is
left there. Its rules (PostgreSQL 14 and later): a `"` opens a phrase that runs to the next `"`
or to the end; outside phrases, words end at blanks, quotes and the characters `!&|()<`. The
scored text keeps those dashes: to_tsvector reads `-5` as the number a chunk holds.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

# Blanks as PostgreSQL's tokenizer reads them: ASCII ones (a no-break space is part of a word).
BLANKS = " \t\n\r\f\v"
# A quoted phrase (running to the end when it is not closed), blanks, or a run of anything else.
PIECE = re.compile(f'"[^"]*"?|[{BLANKS}]+|[^{BLANKS}"]+')
EXCLUDED_WORD = re.compile(r"-(?P<word>[^\W\d_].*)", re.DOTALL)  # a letter first: `-5` is a number
# Inside a run, the dashes that start one of websearch_to_tsquery's words: its NOT.
NEGATION = re.compile(r"(^|[!&|()<])-+")


@dataclass(frozen=True)
class SearchQuery:
    embedded_text: str  # the question less its exclusions: what the dense side embeds
    scored_text: str  # the question's words less its exclusions, for to_tsvector and plainto_tsquery
    matched_text: str  # the scored text without negation: words and "phrases" for websearch_to_tsquery
    excluded: tuple[str, ...]  # each excluded word or "phrase", for websearch_to_tsquery


def search_query_parse(question: str, *, segment: Callable[[str], str] = str) -> SearchQuery:
    """Split `question` into what is embedded, scored, matched and excluded.

    `segment` prepares text for full-text search (Chinese word segmentation; default: none). It
    runs before negation is removed, because the blanks it inserts can make a dash start a word.
    """
    kept, excluded = _kept_and_excluded_pieces(question)
    scored_text = segment("".join(kept))
    return SearchQuery(
        embedded_text=" ".join("".join(kept).split()) if excluded else question,
        scored_text=scored_text,
        matched_text=without_negation(scored_text),
        excluded=tuple(without_negation(segment(part)) for part in excluded),
    )


def without_negation(text: str) -> str:
    """`text` less every dash that websearch_to_tsquery would read as NOT; quoted phrases untouched."""
    return "".join(piece if piece.startswith('"') else NEGATION.sub(r"\1", piece) for piece in PIECE.findall(text))


def _kept_and_excluded_pieces(question: str) -> tuple[list[str], list[str]]:
    pieces = PIECE.findall(question)
    kept, excluded = [], []
    index = 0
    while index < len(pieces):
        piece, following = pieces[index], pieces[index + 1] if index + 1 < len(pieces) else ""
        starts_a_word = index == 0 or pieces[index - 1][0] in BLANKS
        if starts_a_word and (word := EXCLUDED_WORD.fullmatch(piece)):
            excluded.append(word["word"])
        elif starts_a_word and piece == "-" and _is_closed_phrase(following):
            excluded.append(following)
            index += 1
        else:
            kept.append(piece)
        index += 1
    return kept, excluded


def _is_closed_phrase(piece: str) -> bool:
    return len(piece) >= 2 and piece.startswith('"') and piece.endswith('"')
