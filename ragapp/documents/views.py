from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404

from ragapp.documents.models import Document
from ragapp.documents.parsing import MARKDOWN, PDF, PLAIN_TEXT
from ragapp.documents.selectors import collection_readable_by

# What a browser may show in the page (citations link to PDF pages as #page=N); anything else,
# HTML and SVG included, is downloaded, so an uploaded page never runs in our origin.
INLINE_CONTENT_TYPES = {
    PDF: "application/pdf",
    PLAIN_TEXT: "text/plain; charset=utf-8",
    MARKDOWN: "text/plain; charset=utf-8",
}


@login_required
def document_file(request, document_id: int):
    """Serve an uploaded original to those who may read its collection (citations link here)."""
    document = get_object_or_404(Document, pk=document_id, collection__in=collection_readable_by(user=request.user))
    if not document.file:
        raise Http404("This document's file was not kept (it was refused at upload).")
    inline_type = INLINE_CONTENT_TYPES.get(document.content_type)
    response = FileResponse(
        document.file.open("rb"), as_attachment=inline_type is None, filename=document.original_filename,
        content_type=inline_type or "application/octet-stream",
    )
    # Even shown inline, the file is its own opaque origin: no scripts, no cookies, no API calls.
    response["Content-Security-Policy"] = "sandbox"
    response["X-Content-Type-Options"] = "nosniff"
    return response
