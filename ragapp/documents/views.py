from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404

from ragapp.documents.models import Document
from ragapp.retrieval.selectors import readable_collections


@login_required
def document_file(request, document_id: int):
    """Serve an uploaded original to those who may read its collection (citations link here)."""
    document = get_object_or_404(Document, pk=document_id, collection__in=readable_collections(request.user))
    if not document.file:
        raise Http404("This document's file was not kept (it was refused at upload).")
    return FileResponse(document.file.open("rb"), as_attachment=False, filename=document.original_filename)
