"""Turn an uploaded file's bytes into a ParsedDocument: detect what it really is, then parse it.

Pure: bytes in, ParsedDocument out, no I/O and no Django. Every failure is a DocumentError
whose message tells an administrator what is wrong and what to do about it.
"""

import codecs
import logging
import re
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO

import docx
import pypdf
from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from lxml.etree import XMLSyntaxError
from markdown_it import MarkdownIt
from markdown_it.token import Token
from pypdf.errors import DependencyError, PyPdfError

from ragapp.documents.content import ParsedDocument, Section
from ragapp.documents.errors import (
    CorruptFile,
    DocumentError,
    EmptyDocument,
    EncryptedFile,
    TextEncodingError,
    UnsupportedFileType,
    archive_too_large,
    file_too_large,
)

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
MARKDOWN = "text/markdown"
PLAIN_TEXT = "text/plain"
SUPPORTED_TYPES = (PDF, DOCX, HTML, MARKDOWN, PLAIN_TEXT)

SUPPORTED_FORMATS = "PDF, Word (.docx), HTML, Markdown and plain text"
MARKDOWN_EXTENSIONS = (".md", ".markdown")
SNIFF_BYTES = 64 * 1024

# (offset, magic bytes, what the file looks like), for binary formats we refuse by name.
BINARY_SIGNATURES = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (0, b"RIFF", "an audio, video or image file (RIFF)"),
    (4, b"ftyp", "a video or audio file (MP4/MOV)"),
    (0, b"ID3", "an MP3 audio file"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old-format Office file (.doc, .xls or .ppt)"),
    (0, b"{\\rtf", "an RTF document"),
    (0, b"%!PS", "a PostScript file"),
    (0, b"MZ\x90\x00", "a Windows program"),
    (0, b"\x7fELF", "a Linux program"),
    (0, b"\xcf\xfa\xed\xfe", "a macOS program"),
    (0, b"\xca\xfe\xba\xbe", "a macOS program or Java class file"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"BZh", "a bzip2 archive"),
    (0, b"\xfd7zXZ\x00", "an xz archive"),
    (0, b"Rar!\x1a\x07", "a RAR archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"SQLite format 3\x00", "an SQLite database"),
)
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
# Other ZIP-based formats, recognised by a part only they contain.
ZIP_MEMBER_FORMATS = (
    ("xl/workbook.xml", "an Excel workbook (.xlsx)"),
    ("ppt/presentation.xml", "a PowerPoint presentation (.pptx)"),
    ("content.xml", "an OpenDocument file (.odt, .ods or .odp)"),
)
DOCX_MAIN_PART = "word/document.xml"

# Longest first, so a UTF-32 BOM is not taken for the UTF-16 BOM it starts with.
TEXT_BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Their text is full of NUL bytes, so only text without them is checked for binary data.
WIDE_TEXT_CODECS = ("utf-16", "utf-32")
# ESC (\x1b) is left out: coloured log files use it in otherwise ordinary text.
CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
# Text has almost no control characters; random or packed binary data has about one byte in nine.
BINARY_CONTROL_SHARE = 0.05

HTML_DOCUMENT_START = re.compile(
    r"\A\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*(<!doctype\s+html|<html[\s>])", re.IGNORECASE | re.DOTALL
)
HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9-]*(\s[^<>]*)?/?>")
# A fragment without <html> is HTML only when markup dominates, so Markdown with inline HTML stays Markdown.
HTML_FRAGMENT_MARKUP_SHARE = 0.3
MARKDOWN_ATX_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+\S", re.MULTILINE)
MARKDOWN_FRONT_MATTER = re.compile(r"\A---[ \t]*\n.*?\n(---|\.\.\.)[ \t]*(\n|\Z)", re.DOTALL)

HTML_BLOCK_END = object()  # marks, on the HTML walk's stack, where a block-level element ends
HTML_DROPPED_TAGS = ("script", "style", "nav", "footer", "noscript", "template", "head", "svg", "iframe")
HTML_HEADING_TAGS = ("h1", "h2", "h3", "h4", "h5", "h6")
# Tags that flow inside a line of text; every other tag starts and ends a block.
HTML_INLINE_TAGS = frozenset(
    "a abbr b bdi bdo cite code data del dfn em font i ins kbd label mark q s samp small span "
    "strong sub sup time u var wbr".split()
)

DOCX_HEADING_STYLE = re.compile(r"^Heading (\d)$")
DOCX_TITLE_STYLE = "Title"
TABLE_CELL_SEPARATOR = " | "

# A PDF line well short of the page's longest line usually ends a paragraph (or is a heading).
PDF_SHORT_LINE_SHARE = 0.8
PDF_PLACEHOLDER_TITLES = frozenset({"untitled", "unspecified", "(unspecified)", "(anonymous)"})
# pypdf reports malformed input through its own errors and through whatever built-in
# error the broken structure happens to trip while it is being read.
PDF_READ_FAILURES = (
    PyPdfError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    AssertionError,
    RecursionError,
    NotImplementedError,  # a stream filter pypdf cannot decode, usually a damaged name
    struct.error,
    zlib.error,
)
DOCX_READ_FAILURES = (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError, XMLSyntaxError)


def detect_content_type(data: bytes, *, filename: str = "") -> str:
    """Return the MIME type from the content (magic bytes / structure), using the extension only to tell Markdown from plain text."""
    if data[:1024].lstrip().startswith(b"%PDF-"):
        return PDF
    if data.startswith(ZIP_SIGNATURES):
        return _zip_content_type(data)
    looks_like = _binary_format_name(data)
    if looks_like:
        raise UnsupportedFileType(_unsupported_message(looks_like))
    if _text_codec(data) not in WIDE_TEXT_CODECS and _looks_binary(data):
        raise UnsupportedFileType(
            "The file contains binary data, not text, so it cannot be indexed. "
            f"Supported formats are {SUPPORTED_FORMATS}: convert it to one of these "
            "(saving text as UTF-8) and upload again."
        )
    return _text_content_type(_text_sniff(data), filename=filename)


@dataclass(frozen=True)
class ParseLimits:
    """How much one file may hold: its own size, and what a ZIP-based file (DOCX) expands to."""

    max_bytes: int
    max_expanded_bytes: int
    max_archive_members: int


def document_parse(data: bytes, *, filename: str = "", limits: ParseLimits | None = None) -> ParsedDocument:
    """Detect the type and parse; raise a DocumentError subclass with a plain reason on bad input.

    With `limits`, a file over them is refused before any parser reads it."""
    if limits is not None:
        _limits_check(data, limits)
    if not data:
        raise EmptyDocument("The file is empty: upload a copy that contains text.")
    content_type = detect_content_type(data, filename=filename)
    document = PARSERS[content_type](data)
    if not document.sections:
        raise EmptyDocument("The file contains no text to index: check that you uploaded the right file.")
    return document


def _limits_check(data: bytes, limits: ParseLimits) -> None:
    """Refuse a file over the size limit, or an archive that would unpack to more than the limits allow."""
    if len(data) > limits.max_bytes:
        raise file_too_large(len(data), limits.max_bytes)  # the same words as the upload check in services
    if not data.startswith(ZIP_SIGNATURES):
        return
    try:
        with zipfile.ZipFile(BytesIO(data)) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile:
        return  # detection names the damage
    # Reading a member stops at its declared size (zipfile checks it), so the directory's
    # sizes bound what the parsers can unpack, whatever the compressed data really holds.
    expanded = sum(member.file_size for member in members)
    if expanded > limits.max_expanded_bytes or len(members) > limits.max_archive_members:
        raise archive_too_large(expanded_bytes=expanded, members=len(members), limits=limits)


# Detection


def _zip_content_type(data: bytes) -> str:
    """Return DOCX for a Word document, or raise naming the other ZIP-based format it is."""
    try:
        with zipfile.ZipFile(BytesIO(data)) as archive:
            member_names = set(archive.namelist())
    except zipfile.BadZipFile as error:
        # The local file headers name their parts in plain bytes, so even a
        # truncated Word document still says what it was.
        if DOCX_MAIN_PART.encode() in data:
            return DOCX
        raise CorruptFile(
            "The file is a damaged ZIP archive and cannot be read: if it is a Word document, "
            "open it in Word, save it again as .docx and upload the new copy."
        ) from error
    if DOCX_MAIN_PART in member_names:
        return DOCX
    looks_like = next((name for part, name in ZIP_MEMBER_FORMATS if part in member_names), "a ZIP archive")
    raise UnsupportedFileType(_unsupported_message(looks_like))


def _binary_format_name(data: bytes) -> str:
    """Name the known binary format the data starts with, or return ''."""
    for offset, magic, name in BINARY_SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    return ""


def _unsupported_message(looks_like: str) -> str:
    """Explain that a file of this kind cannot be indexed and what can."""
    return (
        f"The file looks like {looks_like}, which cannot be indexed. "
        f"Supported formats are {SUPPORTED_FORMATS}: convert it to one of these and upload again."
    )


def _looks_binary(data: bytes) -> bool:
    """Tell binary data from text without a byte order mark by its NUL and control bytes."""
    sample = data[:SNIFF_BYTES]
    if b"\x00" in sample:
        return True
    return len(CONTROL_BYTES.findall(sample)) > BINARY_CONTROL_SHARE * len(sample)


def _text_sniff(data: bytes) -> str:
    """Decode the start of the data leniently, enough to recognise HTML or Markdown."""
    return data[:SNIFF_BYTES].decode(_text_codec(data), errors="replace")


def _text_content_type(text: str, *, filename: str) -> str:
    """Tell HTML, Markdown and plain text apart from the text and the file name."""
    named_markdown = filename.lower().endswith(MARKDOWN_EXTENSIONS)
    # HTML fragments are valid Markdown, so only a whole HTML page overrides a Markdown name.
    if HTML_DOCUMENT_START.match(text) or (not named_markdown and _looks_like_html_fragment(text)):
        return HTML
    if named_markdown or MARKDOWN_ATX_HEADING.search(text):
        return MARKDOWN
    return PLAIN_TEXT


def _looks_like_html_fragment(text: str) -> bool:
    """Return whether the text starts with a tag and is mostly markup, with no Markdown headings."""
    if not HTML_TAG.match(text.lstrip()) or MARKDOWN_ATX_HEADING.search(text):
        return False
    markup_length = sum(len(match.group()) for match in HTML_TAG.finditer(text))
    visible_length = len("".join(text.split()))
    return markup_length >= HTML_FRAGMENT_MARKUP_SHARE * visible_length


# Text decoding and shared section building


def _text_codec(data: bytes) -> str:
    """Return the codec its byte order mark names, or UTF-8 when it has none."""
    return next((codec for mark, codec in TEXT_BYTE_ORDER_MARKS if data.startswith(mark)), "utf-8")


def _text_decode(data: bytes) -> str:
    """Decode UTF-8 (or BOM-marked UTF-16/32) text strictly, with newlines made uniform."""
    try:
        text = data.decode(_text_codec(data))
    except UnicodeDecodeError as error:
        # Guessing a legacy encoding such as cp1252 silently garbles other encodings' text.
        raise TextEncodingError(
            "The file is not UTF-8 text (it may use an older encoding such as Windows-1252 or "
            "Latin-1): open it in a text editor, save it as UTF-8 and upload again."
        ) from error
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _text_normalise(text: str) -> str:
    """Collapse whitespace within each line and drop control characters and blank lines."""
    text = CONTROL_CHARACTERS.sub("", text)
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


class _SectionBuilder:
    """Collect non-empty sections while tracking the headings that enclose them."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self._open_headings: list[tuple[int, str]] = []  # (level, text), outermost first
        self._first_outermost_heading: tuple[int, str] | None = None

    def heading(self, level: int, text: str) -> None:
        """Add a heading, closing any open headings at its level or deeper."""
        text = _text_normalise(text)
        if not text:
            return
        self._open_headings = [heading for heading in self._open_headings if heading[0] < level]
        self._open_headings.append((level, text))
        if self._first_outermost_heading is None or level < self._first_outermost_heading[0]:
            self._first_outermost_heading = (level, text)
        self.sections.append(Section(text=text, heading_path=self._heading_path(), is_heading=True))

    def block(self, text: str, *, page: int | None = None) -> None:
        """Add a block of body text under the open headings, unless it is blank."""
        text = _text_normalise(text)
        if text:
            self.sections.append(Section(text=text, page=page, heading_path=self._heading_path()))

    def title_from_headings(self) -> str:
        """Return the first of the outermost headings, the document's likely title."""
        return self._first_outermost_heading[1] if self._first_outermost_heading else ""

    def _heading_path(self) -> tuple[str, ...]:
        return tuple(text for _, text in self._open_headings)


@contextmanager
def _failures_reported_as(
    document_error: DocumentError, failures: tuple[type[BaseException], ...]
) -> Iterator[None]:
    """Turn a parsing library's failures into one plain DocumentError."""
    try:
        yield
    except failures as error:
        raise document_error from error


# PDF


def _pdf_parse(data: bytes) -> ParsedDocument:
    """Parse a PDF into one section per paragraph-ish block, each with its 1-based page."""
    corrupt = CorruptFile(
        "The PDF is damaged or incomplete and cannot be read: export or download it again "
        "and upload the new copy."
    )
    with PYPDF_LOGS_SILENCED, _failures_reported_as(corrupt, PDF_READ_FAILURES):
        reader = _pdf_open(data)
        builder = _SectionBuilder()
        for page_number, page in enumerate(reader.pages, start=1):
            for paragraph in _pdf_page_paragraphs(page.extract_text()):
                builder.block(paragraph, page=page_number)
        title = _pdf_title(reader)
    if not builder.sections:
        raise EmptyDocument(
            "The PDF has no text layer (it is probably scanned pages): run it through OCR "
            "and upload the searchable copy."
        )
    return ParsedDocument(content_type=PDF, sections=builder.sections, title=title)


class _LoggerSilenced:
    """Silence a logger while any thread is inside; overlapping uses restore its level only once."""

    def __init__(self, logger_name: str) -> None:
        self._logger = logging.getLogger(logger_name)
        self._lock = threading.Lock()
        self._users = 0
        self._level_before = logging.NOTSET

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._level_before = self._logger.level
                self._logger.setLevel(logging.CRITICAL)
            self._users += 1

    def __exit__(self, *exception_info: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._logger.setLevel(self._level_before)


# pypdf logs a warning for every flaw it works around, which a broken upload turns into a flood.
PYPDF_LOGS_SILENCED = _LoggerSilenced("pypdf")


def _pdf_open(data: bytes) -> pypdf.PdfReader:
    """Open a PDF, decrypting it when it only has an empty user password."""
    reader = pypdf.PdfReader(BytesIO(data))
    if not reader.is_encrypted:
        return reader
    encrypted = EncryptedFile("The PDF is encrypted with a password: upload an unencrypted copy.")
    try:
        decrypted = reader.decrypt("") != pypdf.PasswordType.NOT_DECRYPTED
    except DependencyError as error:
        # AES needs the optional cryptography package; without it the file is as good as locked.
        raise encrypted from error
    if not decrypted:
        raise encrypted
    return reader


def _pdf_page_paragraphs(page_text: str) -> list[str]:
    """Group a page's lines into paragraphs, breaking at blank lines and after short lines."""
    lines = [line.strip() for line in page_text.splitlines()]
    full_width = max((len(line) for line in lines), default=0)
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines:
        if line:
            current.append(line)
        if current and (not line or len(line) < PDF_SHORT_LINE_SHARE * full_width):
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


def _pdf_title(reader: pypdf.PdfReader) -> str:
    """Return the title from the PDF's metadata, ignoring tools' placeholders."""
    title = _text_normalise(str((reader.metadata and reader.metadata.title) or ""))
    return "" if title.lower() in PDF_PLACEHOLDER_TITLES else title


# DOCX


def _docx_parse(data: bytes) -> ParsedDocument:
    """Parse a Word document's paragraphs, headings and tables in document order."""
    corrupt = CorruptFile(
        "The Word document is damaged and cannot be read: open it in Word, save it again as .docx "
        "and upload the new copy."
    )
    with _failures_reported_as(corrupt, DOCX_READ_FAILURES):
        document = docx.Document(BytesIO(data))
        builder = _SectionBuilder()
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                _docx_table_add(block, builder)
            else:
                _docx_paragraph_add(block, builder)
        title = _text_normalise(document.core_properties.title or "")
    title = title or builder.title_from_headings()
    return ParsedDocument(content_type=DOCX, sections=builder.sections, title=title)


def _docx_paragraph_add(paragraph, builder: _SectionBuilder) -> None:
    """Add a paragraph as a heading when its style is Title or Heading N, else as body text."""
    style_name = paragraph.style.name if paragraph.style is not None else ""
    heading_match = DOCX_HEADING_STYLE.match(style_name or "")
    if heading_match:
        builder.heading(int(heading_match.group(1)), paragraph.text)
    elif style_name == DOCX_TITLE_STYLE:
        builder.heading(0, paragraph.text)  # above Heading 1
    else:
        builder.block(paragraph.text)


def _docx_table_add(table: Table, builder: _SectionBuilder) -> None:
    """Add each table row as a section of its cells' text."""
    for row in table.rows:
        builder.block(_table_row_text(_merged_cells_once([cell.text for cell in row.cells])))


def _merged_cells_once(cell_texts: list[str]) -> list[str]:
    """Drop the repeats python-docx returns for each column a merged cell spans."""
    return [text for index, text in enumerate(cell_texts) if index == 0 or cell_texts[index - 1] != text]


def _table_row_text(cell_texts: list[str]) -> str:
    """Join a table row's non-empty cells into one line."""
    normalised = (_text_normalise(text) for text in cell_texts)
    return TABLE_CELL_SEPARATOR.join(text for text in normalised if text)


# HTML


def _html_parse(data: bytes) -> ParsedDocument:
    """Parse HTML into heading and block sections, without scripts, styles or navigation."""
    soup = BeautifulSoup(_text_decode(data), "lxml")
    title_tag = soup.find("title")
    title = _text_normalise(title_tag.get_text()) if title_tag else ""
    _html_unseen_parts_drop(soup)
    builder = _SectionBuilder()
    _html_sections_add(soup, builder)
    title = title or builder.title_from_headings()
    return ParsedDocument(content_type=HTML, sections=builder.sections, title=title)


def _html_sections_add(root: Tag, builder: _SectionBuilder) -> None:
    """Add the text under root to the builder: a section per heading and per block-level element."""
    # An explicit stack rather than recursion: real pages can nest deeper than Python's recursion limit.
    pending_text: list[str] = []
    stack: list[object] = [root]
    while stack:
        node = stack.pop()
        if node is HTML_BLOCK_END:
            _html_pending_text_add(builder, pending_text)
        elif isinstance(node, NavigableString):
            if not isinstance(node, PreformattedString):  # comments, doctype, CDATA
                # Source whitespace, newlines included, is one space in HTML; only <br> breaks a line.
                pending_text.append(re.sub(r"\s+", " ", node))
        elif node.name == "br":
            pending_text.append("\n")
        elif node.name in HTML_INLINE_TAGS:
            stack.extend(reversed(node.contents))
        else:
            _html_pending_text_add(builder, pending_text)
            if not _html_whole_block_add(node, builder):
                stack.append(HTML_BLOCK_END)
                stack.extend(reversed(node.contents))
    _html_pending_text_add(builder, pending_text)


def _html_whole_block_add(element: Tag, builder: _SectionBuilder) -> bool:
    """Add a heading, preformatted block or table row as one section; return False for other elements."""
    if element.name in HTML_HEADING_TAGS:
        builder.heading(int(element.name[1]), element.get_text())
    elif element.name == "pre":
        builder.block(element.get_text())
    elif element.name == "tr":
        cells = element.find_all(("td", "th"), recursive=False)
        builder.block(_table_row_text([cell.get_text(" ") for cell in cells]))
    else:
        return False
    return True


def _html_pending_text_add(builder: _SectionBuilder, pending_text: list[str]) -> None:
    """Add the run of inline text gathered so far as one block, and start a new run."""
    builder.block("".join(pending_text))
    pending_text.clear()


def _html_fragment_text(fragment: str) -> str:
    """Return the visible text of an HTML fragment, such as raw HTML inside Markdown."""
    soup = BeautifulSoup(fragment, "lxml")
    _html_unseen_parts_drop(soup)
    return soup.get_text(" ")


def _html_unseen_parts_drop(soup: BeautifulSoup) -> None:
    """Remove scripts, styles, navigation and other parts that are not the page's text."""
    for unseen in soup.find_all(HTML_DROPPED_TAGS):
        unseen.decompose()


# Markdown


def _markdown_parse(data: bytes) -> ParsedDocument:
    """Parse Markdown tokens into heading, paragraph, list item, code and table-row sections."""
    text = MARKDOWN_FRONT_MATTER.sub("", _text_decode(data), count=1)
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    builder = _SectionBuilder()
    table_row: list[str] | None = None
    for index, token in enumerate(tokens):
        if token.type == "inline":
            inline_text = _markdown_inline_text(token)
            opener = tokens[index - 1]
            if opener.type == "heading_open":
                builder.heading(int(opener.tag[1]), inline_text)
            elif table_row is not None:
                table_row.append(inline_text)
            else:
                builder.block(inline_text)
        elif token.type == "tr_open":
            table_row = []
        elif token.type == "tr_close":
            builder.block(_table_row_text(table_row or []))
            table_row = None
        elif token.type in ("fence", "code_block"):
            builder.block(token.content)
        elif token.type == "html_block":
            builder.block(_html_fragment_text(token.content))
    title = builder.title_from_headings()
    return ParsedDocument(content_type=MARKDOWN, sections=builder.sections, title=title)


def _markdown_inline_text(token: Token) -> str:
    """Return an inline token's readable text, without Markdown markup or link targets."""
    pieces = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            pieces.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            pieces.append("\n")
        elif child.type == "image":
            pieces.append(_markdown_inline_text(child))  # its children are the alt text
    return "".join(pieces)


# Plain text


def _plain_text_parse(data: bytes) -> ParsedDocument:
    """Parse plain text into one section per blank-line-separated paragraph."""
    builder = _SectionBuilder()
    for paragraph in re.split(r"\n[^\S\n]*\n", _text_decode(data)):
        builder.block(paragraph)
    return ParsedDocument(content_type=PLAIN_TEXT, sections=builder.sections)


PARSERS = {
    PDF: _pdf_parse,
    DOCX: _docx_parse,
    HTML: _html_parse,
    MARKDOWN: _markdown_parse,
    PLAIN_TEXT: _plain_text_parse,
}
