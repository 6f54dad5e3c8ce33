"""An answer's Markdown -> safe HTML, with its valid [n] markers turned into citation buttons.

Raw HTML in the answer is escaped by the Markdown parser and everything is sanitised again
with nh3 (Ammonia), so a `<script>` written by the model, or copied from a document by it,
stays inert text. Only numbers of passages actually sent become buttons; any other [n] stays
plain text.
"""

import re

import nh3
from markdown_it import MarkdownIt

from ragapp.answers.prompt import CITATION_MARKER

# Private-use characters mark the citations through Markdown and sanitising, which leave them be.
OPEN, CLOSE = "\ue000", "\ue001"
MARKED = re.compile(f"{OPEN}(\\d+){CLOSE}")
ALLOWED_TAGS = {"p", "br", "strong", "em", "code", "pre", "ul", "ol", "li", "blockquote", "h1", "h2", "h3", "h4",
                "table", "thead", "tbody", "tr", "th", "td", "a", "hr", "del"}

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table").enable("strikethrough")


def answer_html(text: str, *, sent: int) -> str:
    """`text` as sanitised HTML; [n] for n in 1..sent become buttons with data-citation="n"."""
    text = text.replace(OPEN, "").replace(CLOSE, "")
    marked = CITATION_MARKER.sub(lambda match: _mark(match, sent), text)
    html = nh3.clean(_markdown.render(marked), tags=ALLOWED_TAGS, attributes={"a": {"href", "title"}},
                     url_schemes={"http", "https", "mailto"}, link_rel="noopener noreferrer nofollow")
    return MARKED.sub(lambda match: _button(int(match.group(1))), html)


def _mark(match: re.Match, sent: int) -> str:
    numbers = [int(n) for n in re.split(r"\s*,\s*", match.group(1))]
    if not all(1 <= n <= sent for n in numbers):
        return match.group(0)  # not a passage that was sent: stays text, never a link
    return "".join(f"{OPEN}{n}{CLOSE}" for n in numbers)


def _button(number: int) -> str:
    return (f'<button type="button" class="citation" data-citation="{number}" '
            f'aria-label="Open passage {number}">[{number}]</button>')
