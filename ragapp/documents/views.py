from django.contrib.admin.views.decorators import staff_member_required
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404

from ragapp.documents.models import Document


@staff_member_required
def document_file(request, document_id: int):
    """Serve an uploaded original to staff (the embedded default has no separate file server)."""
    document = get_object_or_404(Document, pk=document_id)
    if not document.file:
        raise Http404("This document's file was not kept (it was refused at upload).")
    return FileResponse(document.file.open("rb"), as_attachment=False, filename=document.original_filename)
