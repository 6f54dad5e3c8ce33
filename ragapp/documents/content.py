"""The shapes parsed and chunked text takes between the pure steps of ingestion."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Section:
    """A run of text from one place in a document: a paragraph, heading, list or table cell block."""

    text: str
    page: int | None = None  # 1-based page number, for paged formats (PDF)
    heading_path: tuple[str, ...] = ()  # enclosing headings, outermost first
    is_heading: bool = False


@dataclass(frozen=True)
class ParsedDocument:
    content_type: str  # a MIME type, see ragapp.documents.parsing.SUPPORTED_TYPES
    sections: list[Section]
    title: str = ""  # from the document's own metadata or first heading, when it has one

    @property
    def text(self) -> str:
        """The document's text as chunk offsets count it: sections joined by blank lines."""
        return SECTION_SEPARATOR.join(section.text for section in self.sections)


SECTION_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class ChunkDraft:
    """A chunk before it is embedded and stored."""

    text: str
    char_start: int  # offsets into ParsedDocument.text
    char_end: int
    token_count: int
    page: int | None = None  # page where the chunk starts
    heading_path: tuple[str, ...] = field(default=())
