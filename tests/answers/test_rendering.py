"""Answers render as sanitised Markdown; only citations of passages sent become buttons."""

from html.parser import HTMLParser

from ragapp.answers.rendering import answer_html


def test_markdown_renders_and_valid_citations_become_buttons():
    html = answer_html("**Yes**, trains are reimbursed [1][2].\n\n- in second class [2]", sent=2)
    assert "<strong>Yes</strong>" in html and "<li>" in html
    assert html.count('class="citation"') == 3 and 'data-citation="2"' in html


def test_a_citation_of_a_passage_not_sent_stays_plain_text():
    html = answer_html("See [1] and [4] and [1, 9].", sent=3)
    assert html.count('class="citation"') == 1
    assert "[4]" in html and "[1, 9]" in html and 'data-citation="4"' not in html


class Elements(HTMLParser):
    def __init__(self, html: str):
        super().__init__()
        self.found: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


def test_html_and_scripts_in_an_answer_are_inert():
    html = answer_html('<script>alert(1)</script><img src=x onerror="alert(2)"> [x](javascript:alert(3)) '
                       '<a href="javascript:alert(4)">y</a> [ok](https://example.org)', sent=1)
    elements = Elements(html).found
    assert {tag for tag, _ in elements} <= {"p", "a"}
    links = [attrs for tag, attrs in elements if tag == "a"]
    assert [link["href"] for link in links] == ["https://example.org"]
    assert not any(name.startswith("on") for _, attrs in elements for name in attrs)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_private_marker_characters_in_an_answer_cannot_forge_a_button():
    html = answer_html("\ue0009\ue001 <b>[1]</b>", sent=1)
    assert 'data-citation="9"' not in html
