"""Request bodies are bounded before anything reads them, with each client's own error shape."""

from django.conf import settings
from django.http import HttpResponse, JsonResponse

from ragapp.api.errors import api_error_body, openai_error_body


class RequestSizeLimitMiddleware:
    """Refuse a body over its limit from its Content-Length, before the CSRF check or a view reads it.

    Uploads (multipart) may hold MAX_REQUEST_BYTES, every other body DATA_UPLOAD_MAX_MEMORY_SIZE.
    A body sent without a length (chunked) is not read at all by Django's WSGI handler."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return error_response(request, 400, "The Content-Length header is not a number.", "bad_request")
        uploading = request.content_type == "multipart/form-data"
        limit = settings.MAX_REQUEST_BYTES if uploading else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if length > limit:
            advice = "Upload fewer or smaller files at a time, or raise MAX_REQUEST_MB." if uploading else "Send a smaller body."
            return error_response(request, 413, (
                f"The request body is {length / settings.MEGABYTE:.1f} MB, "
                f"over the {limit / settings.MEGABYTE:.0f} MB limit. {advice}"
            ), "request_too_large")
        return self.get_response(request)


def error_response(request, status: int, message: str, error_type: str) -> HttpResponse:
    """The error in the shape the caller reads: OpenAI's under /v1/, ours under /api/, plain text elsewhere."""
    if request.path.startswith("/v1/"):
        return JsonResponse(openai_error_body(message, status=status, code=error_type), status=status)
    if request.path.startswith("/api/"):
        return JsonResponse(api_error_body(message, error_type=error_type), status=status)
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
