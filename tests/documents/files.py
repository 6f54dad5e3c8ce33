"""Files built in memory for the document tests: PDFs (plain, encrypted, scanned, Chinese), Word documents, ZIP archives."""

import io
import zipfile

import docx
from PIL import Image
from pypdf import PdfWriter
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate


def pdf_bytes(pages: list[list[str]], *, title: str | None = None) -> bytes:
    """Build a PDF with one page per list of paragraphs, the first paragraph styled as a heading."""
    styles = getSampleStyleSheet()
    story = []
    for page_number, paragraphs in enumerate(pages):
        if page_number:
            story.append(PageBreak())
        story.append(Paragraph(paragraphs[0], styles["Heading1"]))
        story.extend(Paragraph(text, styles["Normal"]) for text in paragraphs[1:])
    buffer = io.BytesIO()
    document_template = SimpleDocTemplate(buffer, pagesize=A4, **({"title": title} if title else {}))
    document_template.build(story)
    return buffer.getvalue()


def pdf_encrypted(data: bytes, *, user_password: str, owner_password: str | None = None,
                  algorithm: str | None = None) -> bytes:
    """Return a copy of a PDF encrypted with the given passwords (RC4 unless `algorithm` names another, e.g. AES-256)."""
    writer = PdfWriter(clone_from=io.BytesIO(data))
    writer.encrypt(user_password, owner_password=owner_password, algorithm=algorithm)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def pdf_image_only() -> bytes:
    """Build a PDF whose only page is a picture, like a scan without OCR."""
    image = Image.new("RGB", (60, 40), color=(200, 30, 30))
    buffer = io.BytesIO()
    page = canvas.Canvas(buffer)
    page.drawImage(ImageReader(image), 72, 600, width=300, height=200)
    page.showPage()
    page.save()
    return buffer.getvalue()


def pdf_chinese() -> bytes:
    """Build a one-page PDF of Chinese text in a CJK font."""
    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    buffer = io.BytesIO()
    page = canvas.Canvas(buffer)
    page.setFont("STSong-Light", 12)
    page.drawString(72, 720, "检索增强生成的中文文本")
    page.save()
    return buffer.getvalue()


def docx_bytes(*, title: str = "") -> bytes:
    """Build a Word document with nested headings, body text and a table."""
    document = docx.Document()
    document.core_properties.title = title
    document.add_heading("Installation", level=1)
    document.add_paragraph("Run   the installer\tas an administrator.")
    document.add_heading("Requirements", level=2)
    document.add_paragraph("A 64-bit operating system.")
    table = document.add_table(rows=2, cols=2)
    for row, (name, value) in zip(table.rows, [("Memory", "8 GB"), ("Disk", "20 GB")]):
        row.cells[0].text, row.cells[1].text = name, value
    document.add_heading("Usage", level=1)
    document.add_paragraph("Open the app.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """Build a ZIP archive holding the given members."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def docx_with_body(paragraph_xml: bytes, repeats: int) -> bytes:
    """A Word document whose main part holds `paragraph_xml` `repeats` times, written without holding it whole."""
    template = zipfile.ZipFile(io.BytesIO(docx_bytes()))
    main_part = template.read("word/document.xml")
    head, tail = main_part.split(b"<w:body>")[0] + b"<w:body>", b"</w:body>" + main_part.split(b"</w:body>")[1]
    per_block = max(1, 1024 * 1024 // len(paragraph_xml))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for member in template.infolist():
            if member.filename != "word/document.xml":
                archive.writestr(member, template.read(member))
        with archive.open("word/document.xml", "w", force_zip64=True) as part:
            part.write(head)
            for start in range(0, repeats, per_block):
                part.write(paragraph_xml * min(per_block, repeats - start))
            part.write(tail)
    return buffer.getvalue()
