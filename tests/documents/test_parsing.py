"""Tests for ragapp.documents.parsing: type detection, each format's parser, and plain failure reasons."""

import logging
import random

import pytest

from ragapp.documents.errors import (
    ArchiveTooLarge,
    CorruptFile,
    EmptyDocument,
    EncryptedFile,
    FileTooLarge,
    TextEncodingError,
    UnsupportedFileType,
)
from ragapp.documents.parsing import (
    DOCX,
    HTML,
    MARKDOWN,
    PDF,
    PLAIN_TEXT,
    ParseLimits,
    detect_content_type,
    document_parse,
)

from tests.documents.files import (
    docx_bytes,
    docx_with_body,
    pdf_bytes,
    pdf_chinese,
    pdf_encrypted,
    pdf_image_only,
    zip_bytes,
)

LONG_PARAGRAPH = " ".join(["Retrieval augmented generation grounds answers in indexed documents."] * 6)


def section_summaries(document) -> list[tuple[str, int | None, tuple[str, ...], bool]]:
    """Return each section as (text with whitespace collapsed, page, heading_path, is_heading)."""
    return [(" ".join(s.text.split()), s.page, s.heading_path, s.is_heading) for s in document.sections]


HTML_PAGE = b"""<!DOCTYPE html>
<html><head><title>Support  guide</title><style>p { color: red }</style></head>
<body>
<nav><a href="/">Home</a></nav>
<script>var secret = "do not index";</script>
<h1>Accounts</h1>
<p>Reset your <b>password</b> from the
   login page.</p>
<h2>Billing</h2>
<ul><li>Invoices are monthly.</li><li>Refunds take 5 days.</li></ul>
<table><tr><th>Plan</th><th>Price</th></tr><tr><td>Pro</td><td>10 EUR</td></tr></table>
<h2>Limits</h2>
<div>Loose text in a div.</div>
<footer>Copyright</footer>
</body></html>"""

MARKDOWN_TEXT = b"""---
title: front matter is not text
---
Guide
=====

Intro with **bold** and a [link](https://example.com).

## Setup

- Install Python.
- Create a venv.

```
pip install ragapp
```

| Option | Default |
|--------|---------|
| k      | 5       |

Tuning
------

Lower the threshold.
"""


# Detection


@pytest.mark.parametrize(
    ("data", "filename", "expected_type"),
    [
        (b"%PDF-1.7\n...", "notes.txt", PDF),
        (b"<!doctype html><html><body><p>Hi</p></body></html>", "report.pdf", HTML),
        (b"<p>First</p>\n<p>Second</p>", "fragment.txt", HTML),
        (b"# Title\n\nBody", "notes.txt", MARKDOWN),
        (b"No structure at all.", "readme.md", MARKDOWN),
        (b"No structure at all.", "readme.markdown", MARKDOWN),
        (b"Just a sentence.", "notes.txt", PLAIN_TEXT),
        (b"Just a sentence.", "scan.pdf", PLAIN_TEXT),
        (b"Some text with <b>a little</b> inline markup.", "notes.txt", PLAIN_TEXT),
    ],
)
def test_detect_content_type_trusts_content_over_extension(data, filename, expected_type):
    assert detect_content_type(data, filename=filename) == expected_type


def test_detect_content_type_recognises_docx_by_its_main_part():
    assert detect_content_type(docx_bytes(), filename="upload.bin") == DOCX


def test_detect_content_type_keeps_html_fragments_in_a_markdown_file_as_markdown():
    data = b"<details>\n<summary>More</summary>\n\nHidden body.\n</details>\n"
    assert detect_content_type(data, filename="notes.md") == MARKDOWN


def test_detect_content_type_keeps_markdown_with_an_html_banner_as_markdown():
    readme = b'<p align="center"><img src="logo.png"></p>\n\n# Project\n\nText.'
    assert detect_content_type(readme, filename="README.md") == MARKDOWN


# PDF


def test_pdf_sections_carry_their_page_numbers_and_metadata_title():
    pages = [["Overview", LONG_PARAGRAPH, "Short closing line."], ["Appendix", "Page two text."]]
    data = pdf_bytes(pages, title="Manual")

    document = document_parse(data, filename="manual.pdf")

    assert document.content_type == PDF
    assert document.title == "Manual"
    assert section_summaries(document) == [
        ("Overview", 1, (), False),
        (LONG_PARAGRAPH, 1, (), False),
        ("Short closing line.", 1, (), False),
        ("Appendix", 2, (), False),
        ("Page two text.", 2, (), False),
    ]


def test_pdf_placeholder_metadata_title_is_ignored():
    document = document_parse(pdf_bytes([["Heading", "Body."]]))

    assert document.title == ""  # reportlab writes "untitled"


def test_pdf_named_txt_is_parsed_as_pdf():
    document = document_parse(pdf_bytes([["Heading", "Body."]]), filename="notes.txt")

    assert document.content_type == PDF


def test_pdf_with_empty_user_password_is_opened():
    data = pdf_encrypted(pdf_bytes([["Heading", "Readable body."]]), user_password="", owner_password="owner")

    document = document_parse(data)

    assert "Readable body." in document.text


def test_pdf_chinese_text_is_kept():
    document = document_parse(pdf_chinese())

    assert document.sections[0].text == "检索增强生成的中文文本"


@pytest.mark.parametrize("algorithm", [None, "AES-128", "AES-256"])
def test_pdf_encrypted_with_a_password_asks_for_an_unencrypted_copy(algorithm):
    data = pdf_encrypted(pdf_bytes([["Heading", "Secret body."]]), user_password="secret", algorithm=algorithm)

    with pytest.raises(EncryptedFile, match="encrypted.*upload an unencrypted copy"):
        document_parse(data)


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-256"])
def test_pdf_with_only_an_owner_password_is_read(algorithm):
    # Anyone may open it (the empty user password); the owner password only guards editing.
    data = pdf_encrypted(pdf_bytes([["Heading", "Open body."]]), user_password="", owner_password="owner",
                         algorithm=algorithm)

    assert "Open body." in document_parse(data).text


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"%PDF-1.4\n1 0 obj << /Type /Catalog garbage", id="garbage-after-header"),
        pytest.param(pdf_bytes([["Heading", LONG_PARAGRAPH]])[:1500], id="truncated"),
    ],
)
def test_pdf_damaged_asks_for_a_new_copy(data):
    with pytest.raises(CorruptFile, match="damaged or incomplete.*upload the new copy"):
        document_parse(data, filename="broken.pdf")


def test_pdf_damaged_does_not_log_pypdf_warnings(caplog):
    with pytest.raises(CorruptFile):
        document_parse(pdf_bytes([["Heading", LONG_PARAGRAPH]])[:1500])

    assert not [record for record in caplog.records if record.name.startswith("pypdf")]


def test_pdf_parsing_restores_the_pypdf_log_level():
    pypdf_logger = logging.getLogger("pypdf")
    pypdf_logger.setLevel(logging.INFO)
    try:
        document_parse(pdf_bytes([["Heading", "Body."]]))

        assert pypdf_logger.level == logging.INFO
    finally:
        pypdf_logger.setLevel(logging.NOTSET)


def test_pdf_with_only_images_asks_for_ocr():
    with pytest.raises(EmptyDocument, match="no text layer.*OCR"):
        document_parse(pdf_image_only(), filename="scan.pdf")


# DOCX


def test_docx_headings_build_heading_paths_and_tables_become_rows():
    document = document_parse(docx_bytes(), filename="guide.docx")

    assert document.content_type == DOCX
    assert section_summaries(document) == [
        ("Installation", None, ("Installation",), True),
        ("Run the installer as an administrator.", None, ("Installation",), False),
        ("Requirements", None, ("Installation", "Requirements"), True),
        ("A 64-bit operating system.", None, ("Installation", "Requirements"), False),
        ("Memory | 8 GB", None, ("Installation", "Requirements"), False),
        ("Disk | 20 GB", None, ("Installation", "Requirements"), False),
        ("Usage", None, ("Usage",), True),
        ("Open the app.", None, ("Usage",), False),
    ]


def test_docx_title_comes_from_core_properties():
    assert document_parse(docx_bytes(title="Admin Guide")).title == "Admin Guide"


def test_docx_title_falls_back_to_first_heading():
    assert document_parse(docx_bytes()).title == "Installation"


def test_docx_truncated_asks_to_save_again_as_docx():
    with pytest.raises(CorruptFile, match="damaged.*save it again as .docx"):
        document_parse(docx_bytes()[:3000], filename="guide.docx")


def test_docx_with_broken_xml_asks_to_save_again_as_docx():
    data = zip_bytes({"[Content_Types].xml": b"<Types", "word/document.xml": b"<not xml"})

    with pytest.raises(CorruptFile, match="Word document is damaged.*save it again as .docx"):
        document_parse(data, filename="guide.docx")


def test_zip_that_is_not_word_names_what_it_looks_like():
    data = zip_bytes({"xl/workbook.xml": b"<workbook/>"})

    with pytest.raises(UnsupportedFileType, match="Excel workbook.*Supported formats are PDF, Word"):
        document_parse(data, filename="budget.docx")


# HTML


def test_html_headings_build_heading_paths_and_blocks_become_sections():
    document = document_parse(HTML_PAGE, filename="guide.html")

    assert document.content_type == HTML
    assert document.title == "Support guide"
    assert section_summaries(document) == [
        ("Accounts", None, ("Accounts",), True),
        ("Reset your password from the login page.", None, ("Accounts",), False),
        ("Billing", None, ("Accounts", "Billing"), True),
        ("Invoices are monthly.", None, ("Accounts", "Billing"), False),
        ("Refunds take 5 days.", None, ("Accounts", "Billing"), False),
        ("Plan | Price", None, ("Accounts", "Billing"), False),
        ("Pro | 10 EUR", None, ("Accounts", "Billing"), False),
        ("Limits", None, ("Accounts", "Limits"), True),
        ("Loose text in a div.", None, ("Accounts", "Limits"), False),
    ]


def test_html_scripts_styles_navigation_and_footers_are_not_in_the_text():
    text = document_parse(HTML_PAGE).text

    for unseen in ("do not index", "color: red", "Home", "Copyright"):
        assert unseen not in text


def test_html_title_falls_back_to_first_h1():
    document = document_parse(b"<html><body><h2>Sub</h2><h1>Main</h1><p>Body.</p></body></html>")

    assert document.title == "Main"


def test_html_line_breaks_are_kept_and_inline_tags_do_not_split_words():
    document = document_parse(b"<html><body><p>Bold<b>face</b> word<br>next line</p></body></html>")

    assert document.sections[0].text == "Boldface word\nnext line"


def test_html_named_pdf_is_parsed_as_html():
    document = document_parse(HTML_PAGE, filename="guide.pdf")

    assert document.content_type == HTML


def test_html_nested_deeper_than_the_recursion_limit_is_parsed():
    data = b"<html><body>" + b"<div>" * 5000 + b"Deep text." + b"</div>" * 5000 + b"</body></html>"

    assert document_parse(data).text == "Deep text."


def test_html_with_only_a_script_has_no_text():
    with pytest.raises(EmptyDocument, match="no text to index"):
        document_parse(b"<html><body><script>alert(1)</script></body></html>")


# Markdown


def test_markdown_headings_build_heading_paths_and_blocks_become_sections():
    document = document_parse(MARKDOWN_TEXT, filename="guide.md")

    assert document.content_type == MARKDOWN
    assert document.title == "Guide"
    assert section_summaries(document) == [
        ("Guide", None, ("Guide",), True),
        ("Intro with bold and a link.", None, ("Guide",), False),
        ("Setup", None, ("Guide", "Setup"), True),
        ("Install Python.", None, ("Guide", "Setup"), False),
        ("Create a venv.", None, ("Guide", "Setup"), False),
        ("pip install ragapp", None, ("Guide", "Setup"), False),
        ("Option | Default", None, ("Guide", "Setup"), False),
        ("k | 5", None, ("Guide", "Setup"), False),
        ("Tuning", None, ("Guide", "Tuning"), True),
        ("Lower the threshold.", None, ("Guide", "Tuning"), False),
    ]


def test_markdown_front_matter_is_ignored():
    assert "front matter" not in document_parse(MARKDOWN_TEXT, filename="guide.md").text


def test_markdown_detected_from_atx_headings_in_a_txt_file():
    document = document_parse(b"# Notes\n\n## Today\n\nShip it.", filename="notes.txt")

    assert document.content_type == MARKDOWN
    assert document.sections[-1].heading_path == ("Notes", "Today")


# Plain text


def test_plain_text_splits_into_paragraphs_on_blank_lines():
    data = b"First   paragraph,\r\nsecond line.\r\n\r\n  \r\nSecond\tparagraph.\n"

    document = document_parse(data, filename="notes.txt")

    assert document.content_type == PLAIN_TEXT
    assert [section.text for section in document.sections] == [
        "First paragraph,\nsecond line.",
        "Second paragraph.",
    ]


def test_plain_text_chinese_is_kept_intact():
    data = "第一段：检索增强生成。\n\n第二段，没有空格的中文文本。".encode()

    document = document_parse(data, filename="中文.txt")

    assert [section.text for section in document.sections] == [
        "第一段：检索增强生成。",
        "第二段，没有空格的中文文本。",
    ]


def test_utf8_byte_order_mark_is_stripped():
    document = document_parse(b"\xef\xbb\xbfHello there.", filename="notes.txt")

    assert document.text == "Hello there."


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_with_byte_order_mark_is_accepted(encoding):
    data = ("\ufeff" if encoding == "utf-16-be" else "") + "Grüße aus 北京.\n\n# Not a heading"
    document = document_parse(data.encode(encoding), filename="notes.txt")

    assert document.sections[0].text == "Grüße aus 北京."


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1"])
def test_text_not_in_utf8_asks_to_save_as_utf8(encoding):
    data = "Café prices: 5€ – naïve façade".encode(encoding, errors="replace")

    with pytest.raises(TextEncodingError, match="not UTF-8 text.*save it as UTF-8 and upload again"):
        document_parse(data, filename="menu.txt")


# Sizes and empty files


MEGABYTE = 1024 * 1024


def limits(*, max_bytes: int = 50 * MEGABYTE, max_expanded_bytes: int = 200 * MEGABYTE,
           max_archive_members: int = 5000) -> ParseLimits:
    return ParseLimits(max_bytes=max_bytes, max_expanded_bytes=max_expanded_bytes,
                       max_archive_members=max_archive_members)


def test_oversize_file_reports_its_size_and_the_limit_in_mb():
    data = b"a" * (2 * MEGABYTE)

    expected_reason = r"The file is 2\.0 MB, over the 1 MB limit.*Split it into smaller files"
    with pytest.raises(FileTooLarge, match=expected_reason):
        document_parse(data, filename="big.txt", limits=limits(max_bytes=MEGABYTE))


def test_file_at_the_size_limit_is_accepted():
    assert document_parse(b"a" * 100, limits=limits(max_bytes=100)).text == "a" * 100


def test_docx_that_expands_past_the_limit_is_refused_unread():
    paragraph = b"<w:p><w:r><w:t>" + b"bomb " * 20 + b"</w:t></w:r></w:p>"
    data = docx_with_body(paragraph, repeats=20_000)  # about 2.7 MB of XML in a few kB

    with pytest.raises(ArchiveTooLarge, match=r"The file expands to more than 1 MB .*\(3 MB\).*MAX_EXPANDED_MB"):
        document_parse(data, filename="bomb.docx", limits=limits(max_expanded_bytes=MEGABYTE))
    assert "bomb" in document_parse(data, filename="bomb.docx", limits=limits()).text  # within the limit it reads


def test_archive_with_too_many_parts_is_refused_unread():
    data = zip_bytes({"word/document.xml": docx_bytes(), **{f"word/media/{n}.bin": b"" for n in range(30)}})

    with pytest.raises(ArchiveTooLarge, match="archive of 31 parts, more than the 20 allowed.*MAX_ARCHIVE_MEMBERS"):
        document_parse(data, filename="many.docx", limits=limits(max_archive_members=20))


def test_archive_whose_directory_understates_a_part_cannot_unpack_more_than_it_declares():
    # The sizes checked are the directory's; zipfile stops reading a part at its declared size.
    data = bytearray(zip_bytes({"word/document.xml": b"<w:document/>" + b" " * 1_000_000}))
    real_size = (1_000_013).to_bytes(4, "little")
    data = bytes(data.replace(real_size, (100).to_bytes(4, "little")))

    with pytest.raises(CorruptFile, match="damaged"):
        document_parse(data, filename="liar.docx", limits=limits(max_expanded_bytes=1000))


def test_empty_file_asks_for_a_copy_with_text():
    with pytest.raises(EmptyDocument, match="The file is empty: upload a copy that contains text"):
        document_parse(b"", filename="notes.txt")


def test_whitespace_only_file_has_no_text_to_index():
    with pytest.raises(EmptyDocument, match="no text to index: check that you uploaded the right file"):
        document_parse(b" \n\t\r\n  \n", filename="notes.txt")


# Unsupported binary files


@pytest.mark.parametrize(
    ("data", "filename", "looks_like"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "photo.pdf", "PNG image"),
        (b"\xff\xd8\xff\xe0" + bytes(64), "photo.txt", "JPEG image"),
        (b"GIF89a" + bytes(64), "anim.md", "GIF image"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64), "old.doc", "old-format Office file"),
        (b"MZ\x90\x00" + bytes(64), "setup.txt", "Windows program"),
        (b"\x7fELF" + bytes(64), "tool.txt", "Linux program"),
        (zip_bytes({"a.txt": b"hi"}), "archive.docx", "ZIP archive"),
    ],
)
def test_known_binary_format_is_named_and_supported_formats_listed(data, filename, looks_like):
    with pytest.raises(UnsupportedFileType, match=f"looks like an? {looks_like}.*Supported formats are PDF"):
        document_parse(data, filename=filename)


def test_random_binary_named_txt_is_unsupported():
    data = random.Random(7).randbytes(4096)

    with pytest.raises(UnsupportedFileType, match="binary data, not text.*Supported formats are PDF"):
        document_parse(data, filename="notes.txt")


def test_text_with_many_control_characters_is_treated_as_binary():
    data = b"ab\x01\x02\x03cd\x04\x05\x06" * 50

    with pytest.raises(UnsupportedFileType, match="binary data"):
        document_parse(data, filename="notes.txt")


def test_damaged_zip_that_is_not_word_asks_to_save_again():
    data = zip_bytes({"notes.txt": b"hello" * 200})[:60]

    with pytest.raises(CorruptFile, match="damaged ZIP archive.*save it again as .docx"):
        document_parse(data, filename="notes.docx")


# Sections


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (pdf_bytes([["Heading", LONG_PARAGRAPH], ["Second", "Page two."]]), "a.pdf"),
        (docx_bytes(), "a.docx"),
        (HTML_PAGE, "a.html"),
        (MARKDOWN_TEXT, "a.md"),
        (b"one  two\n\n\n\nthree\t\tfour", "a.txt"),
    ],
)
def test_every_section_is_non_empty_and_whitespace_normalised(data, filename):
    for section in document_parse(data, filename=filename).sections:
        assert section.text
        for line in section.text.split("\n"):
            assert line == " ".join(line.split())
